// CPU kernel of fusedops::_linear_activation (schema: csrc/linear_activation.cpp): a product by a weight matrix for a
// few rows, with the bias and activation applied before the output is stored.
//
// Why: a classifier at batch 1 (MobileNetV3-Large's 960 -> 1280 -> 1000, 10 MB of weights) is a matrix-vector
// product, bound by reading the weights. PyTorch's F.linear ran it on one core: on the 2-vCPU AMD EPYC (Zen 3), 2
// threads, 960 -> 1280 took 196-227 us against 60 us for a sum over the same weights.
//
// How: the output features are split between the threads in ranges of whole groups of weight rows, so each thread
// streams its own rows of the weight once. The weight rows are read in vectors along the input features, each
// multiplied into accumulators of the input rows it meets (dot_block): a group's rows come from memory for the first
// pair of input rows, from L1 for the next. An output is the sum of its accumulators' lanes plus the features past
// the last whole vector, in a fixed order: the same bits whatever the batch, the row's place in it or the thread
// count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fusedops/activation.h"
#include "fusedops/checks.h"
#include "fusedops/conv_geometry.h"
#include "fusedops/cpu/activation.h"
#include "fusedops/cpu/vec_io.h"

#include <algorithm>

namespace fusedops {
namespace cpu {
namespace {

using at::Tensor;

// Weight rows a thread's range holds in whole groups (the last group of the matrix may be shorter).
constexpr int kRowsPerGroup = 4;

// Accumulators per output: each sums every other vector of the input features, so two chains of multiply-adds run
// per output. A block computes 4 weight rows x 1 input row or 2 x 2 (8 accumulators, with the loaded vectors within
// AVX2's 16 registers), both in the same order per output: an output's bits do not depend on the block, the batch
// or the thread count.
constexpr int kSplit = 2;

// Multiply-adds below which the product runs on one thread: waking the other costs more (~5 us).
constexpr int64_t kMinParallelMacs = 1 << 16;

// The sums of input rows [0, R) (ldx apart) times weight rows [0, W) (ldw apart) over k features, into
// sums[w * R + r] (the accumulation type).
template <int W, int R, typename scalar_t>
FUSEDOPS_ALWAYS_INLINE void dot_block(const scalar_t* x, int64_t ldx, const scalar_t* w, int64_t ldw, int64_t k,
                                      acc_t<scalar_t>* sums) {
  using acc = acc_t<scalar_t>;
  using Vec = AccVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  Vec part[W * R * kSplit];
#pragma GCC unroll 16
  for (int i = 0; i < W * R * kSplit; ++i) part[i] = Vec(acc(0));
  int64_t j = 0;
  for (; j + kSplit * V <= k; j += kSplit * V) {
    Vec xv[R * kSplit];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
      for (int h = 0; h < kSplit; ++h) xv[r * kSplit + h] = load_acc(x + r * ldx + j + h * V);
#pragma GCC unroll 4
    for (int o = 0; o < W; ++o) {
#pragma GCC unroll 2
      for (int h = 0; h < kSplit; ++h) {
        const Vec wv = load_acc(w + o * ldw + j + h * V);
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) {
          Vec& p = part[(o * R + r) * kSplit + h];
          p = at::vec::fmadd(wv, xv[r * kSplit + h], p);
        }
      }
    }
  }
  // A last whole vector goes to the first chain.
  if (j + V <= k) {
#pragma GCC unroll 4
    for (int o = 0; o < W; ++o) {
      const Vec wv = load_acc(w + o * ldw + j);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        Vec& p = part[(o * R + r) * kSplit];
        p = at::vec::fmadd(wv, load_acc(x + r * ldx + j), p);
      }
    }
    j += V;
  }
#pragma GCC unroll 4
  for (int o = 0; o < W; ++o) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      Vec total = part[(o * R + r) * kSplit];
#pragma GCC unroll 2
      for (int h = 1; h < kSplit; ++h) total = total + part[(o * R + r) * kSplit + h];
      acc sum = at::vec::vec_reduce_all<acc>([](const Vec& a, const Vec& b) { return a + b; }, total);
      for (int64_t t = j; t < k; ++t) sum += static_cast<acc>(x[r * ldx + t]) * static_cast<acc>(w[o * ldw + t]);
      sums[o * R + r] = sum;
    }
  }
}

// The activation of one value (the vector kernels' formulas, so the same bits as the unfused sequence's).
template <typename acc>
inline acc activate(Activation act, acc value) {
  acc lanes[at::vec::Vectorized<acc>::size()];
  apply_activation(act, at::vec::Vectorized<acc>(value)).store(lanes);
  return lanes[0];
}

// Output features [o0, o1) of every input row: per group of weight rows, the input rows in pairs (the group's
// weight rows read from memory by the first pair, from L1 by the next), then the odd one.
template <typename scalar_t>
void linear_rows(const scalar_t* x, const scalar_t* w, const scalar_t* bias, scalar_t* out, int64_t rows, int64_t k,
                 int64_t n, int64_t o0, int64_t o1, Activation act) {
  using acc = acc_t<scalar_t>;
  acc sums[kRowsPerGroup * 2];
  const auto store = [&](int64_t r, int64_t o, int64_t width, int64_t height) {
    for (int64_t i = 0; i < width; ++i) {
      for (int64_t h = 0; h < height; ++h) {
        acc value = sums[i * height + h] + (bias ? static_cast<acc>(bias[o + i]) : acc(0));
        // The unfused sequence stores the product in scalar_t and applies the activation to that.
        value = static_cast<acc>(static_cast<scalar_t>(value));
        out[(r + h) * n + o + i] = static_cast<scalar_t>(activate(act, value));
      }
    }
  };
  for (int64_t o = o0; o < o1; o += kRowsPerGroup) {
    const int64_t width = std::min<int64_t>(kRowsPerGroup, o1 - o);
    const scalar_t* wo = w + o * k;
    int64_t r = 0;
    for (; r + 2 <= rows; r += 2) {
      int64_t i = 0;
      for (; i + 2 <= width; i += 2) {
        dot_block<2, 2>(x + r * k, k, wo + i * k, k, k, sums);
        store(r, o + i, 2, 2);
      }
      if (i < width) {
        dot_block<1, 2>(x + r * k, k, wo + i * k, k, k, sums);
        store(r, o + i, 1, 2);
      }
    }
    if (r < rows) {
      if (width == kRowsPerGroup) {
        dot_block<kRowsPerGroup, 1>(x + r * k, k, wo, k, k, sums);
        store(r, o, kRowsPerGroup, 1);
      } else {
        for (int64_t i = 0; i < width; ++i) {
          dot_block<1, 1>(x + r * k, k, wo + i * k, k, k, sums);
          store(r, o + i, 1, 1);
        }
      }
    }
  }
}

Tensor linear_activation(const Tensor& input_, const Tensor& weight_, const c10::optional<Tensor>& bias_,
                         c10::string_view activation) {
  const Activation act = parse_activation(std::string_view(activation.data(), activation.size()), "activation");
  TORCH_CHECK(input_.dim() == 2, "fusedops: input must be a 2-D (rows, in_features) tensor, got ", input_.dim(), "-D");
  TORCH_CHECK(input_.is_floating_point(), "fusedops: input must be a floating-point tensor, got ",
              dtype_name(input_.scalar_type()));
  TORCH_CHECK(weight_.dim() == 2 && weight_.size(1) == input_.size(1),
              "fusedops: weight must have shape (out_features, ", input_.size(1), "), got ", weight_.sizes());
  check_weight_and_bias(input_, weight_, bias_, "weight", "bias");
  TORCH_CHECK(input_.device().is_cpu(), "fusedops: _linear_activation CPU kernel got input on ", input_.device());
  const Tensor input = input_.contiguous();
  const Tensor weight = weight_.contiguous();
  const Tensor bias = given(bias_) ? bias_->contiguous() : Tensor();
  const int64_t rows = input.size(0), k = input.size(1), n = weight.size(0);
  Tensor output = at::empty({rows, n}, input.options());
  // No input features (k = 0) is an empty sum: the bias (or zero), activated, as F.linear and the activation give.
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "_linear_activation", [&] {
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* w = weight.const_data_ptr<scalar_t>();
    const scalar_t* b = bias.defined() ? bias.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = output.mutable_data_ptr<scalar_t>();
    const int64_t groups = (n + kRowsPerGroup - 1) / kRowsPerGroup;
    const int64_t group_macs = std::max<int64_t>(1, kRowsPerGroup * k * rows);
    at::parallel_for(0, groups, std::max<int64_t>(1, kMinParallelMacs / group_macs), [&](int64_t g0, int64_t g1) {
      linear_rows<scalar_t>(x, w, b, o, rows, k, n, g0 * kRowsPerGroup, std::min(n, g1 * kRowsPerGroup), act);
    });
  });
  return output;
}

}  // namespace
}  // namespace cpu
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("_linear_activation", &fusedops::cpu::linear_activation);
}
