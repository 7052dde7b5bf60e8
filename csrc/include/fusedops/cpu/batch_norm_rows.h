// The normalisation of the training path's batch norm + activation (csrc/cpu/batch_norm_activation.cpp), shared with
// the depthwise kernels that read a normalised map without its being written (_batch_norm_activation_depthwise and
// its backward): the per-channel parameters as vectors, and the arithmetic, so that every op gives the same bits.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>

#include "fusedops/checks.h"
#include "fusedops/cpu/activation.h"
#include "fusedops/cpu/vec_io.h"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace fusedops {
namespace cpu {

// Checks a per-channel tensor argument `name` of op `op` (absent is fine): C values, on the CPU.
inline void check_channels(const c10::optional<at::Tensor>& t, int64_t C, const char* name, const char* op) {
  if (!given(t)) return;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == C, "fusedops: ", op, ": ", name, " must have shape (", C,
              ",) (the input's channels), got ", t->sizes());
  TORCH_CHECK(t->device().is_cpu(), "fusedops: ", op, ": ", name, " must be on the input's device (cpu), got ",
              t->device());
}

// A parameter of C channels as an array of the accumulation type, padded to whole vectors (`fill` where absent).
template <typename Acc>
std::vector<Acc> channel_array(const c10::optional<at::Tensor>& t, int64_t C, Acc fill) {
  constexpr int64_t V = at::vec::Vectorized<Acc>::size();
  std::vector<Acc> out((C + V - 1) / V * V, fill);
  if (given(t)) {
    const at::Tensor values = t->to(at::CPU(c10::CppTypeToScalarType<Acc>::value)).contiguous();
    std::copy(values.data_ptr<Acc>(), values.data_ptr<Acc>() + C, out.begin());
  }
  return out;
}

// The normalisation (x - mean) * scale + bias with scale = invstd * weight: a subtraction and a multiply-add per
// element. (The one multiply-add of x * scale + (bias - mean * scale) loses to cancellation where the mean is large
// against the deviation: ~10 ulps per batch norm in float64, which a deep network in train mode amplified to 5e-10
// of a gradient.)
template <typename Acc>
std::vector<Acc> scales(const std::vector<Acc>& invstd, const std::vector<Acc>& weight) {
  std::vector<Acc> scale(invstd.size());
  for (size_t c = 0; c < invstd.size(); ++c) scale[c] = invstd[c] * weight[c];
  return scale;
}

template <typename T>
inline at::vec::Vectorized<T> normalize(const at::vec::Vectorized<T>& x, const at::vec::Vectorized<T>& mean,
                                        const at::vec::Vectorized<T>& scale, const at::vec::Vectorized<T>& bias) {
  return at::vec::fmadd(x - mean, scale, bias);
}

// activation(batch_norm(x)) for the image rows [first_row, first_row + rows) of a channels-last `image` (rows of
// in_w pixels of C channels) at dst, as apply_into computes it (the same bits, rounded to scalar_t).
template <typename scalar_t, typename Kind>
void normalized_rows(const scalar_t* image, int64_t first_row, int64_t rows, int64_t in_w, int64_t C, Kind kind,
                     const at::opmath_type<scalar_t>* mean, const at::opmath_type<scalar_t>* scale,
                     const at::opmath_type<scalar_t>* bias, scalar_t* dst) {
  using Acc = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<Acc>;
  constexpr int64_t V = Vec::size();
  const scalar_t* src = image + first_row * in_w * C;
  for (int64_t q = 0; q < rows * in_w; ++q, src += C, dst += C) {
    int64_t c = 0;
    for (; c + V <= C; c += V) {
      const Vec y = normalize(load_acc(src + c), Vec::loadu(mean + c), Vec::loadu(scale + c), Vec::loadu(bias + c));
      store_acc(dst + c, apply_activation(Kind::value, y));
    }
    if (c < C) {
      const int64_t m = C - c;
      const Vec y = normalize(load_acc(src + c, m), Vec::loadu(mean + c), Vec::loadu(scale + c), Vec::loadu(bias + c));
      store_acc(dst + c, apply_activation(Kind::value, y), m);
    }
  }
  (void)kind;
}

// The normalisation by saved statistics (mean, invstd) and the affine parameters, as vectors padded to whole vectors:
// (x - mean) * scale + bias.
template <typename Acc>
struct Normalization {
  std::vector<Acc> mean, scale, bias;

  // From the statistics as padded arrays (batch_statistics').
  Normalization(std::vector<Acc> mean_, const std::vector<Acc>& invstd, const c10::optional<at::Tensor>& weight,
                const c10::optional<at::Tensor>& bias_t, int64_t C)
      : mean(std::move(mean_)),
        scale(scales(invstd, channel_array<Acc>(weight, C, Acc(1)))),
        bias(channel_array<Acc>(bias_t, C, Acc(0))) {}
  // From the saved statistics' tensors.
  Normalization(const at::Tensor& mean_t, const at::Tensor& invstd_t, const c10::optional<at::Tensor>& weight,
                const c10::optional<at::Tensor>& bias_t, int64_t C)
      : Normalization(channel_array<Acc>(mean_t, C, Acc(0)), channel_array<Acc>(invstd_t, C, Acc(0)), weight, bias_t,
                      C) {}

  // normalized_rows with these parameters.
  template <typename scalar_t, typename Kind>
  void rows(const scalar_t* image, int64_t first_row, int64_t rows, int64_t in_w, int64_t C, Kind kind,
            scalar_t* dst) const {
    normalized_rows(image, first_row, rows, in_w, C, kind, mean.data(), scale.data(), bias.data(), dst);
  }
};

}  // namespace cpu
}  // namespace fusedops
