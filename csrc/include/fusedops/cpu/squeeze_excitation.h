// The squeeze-excitation pieces of the fused CPU kernels (inverted_residual's, and ghost_module's gated form): the
// gates of a batch of images from their channel sums, and the vector helpers they and the gating use.
#pragma once

#include "fusedops/activation.h"
#include "fusedops/cpu/activation.h"
#include "fusedops/cpu/expanded_bands.h"
#include "fusedops/inverted_residual.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace fusedops {
namespace cpu {

// sum_i a[i] * b[i] over n elements. Four partial sums, so that the multiply-adds need not wait for each other.
template <typename acc>
acc dot(const acc* a, const acc* b, int64_t n) {
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  Vec s0(acc(0)), s1(acc(0)), s2(acc(0)), s3(acc(0));
  int64_t i = 0;
  for (; i + 4 * V <= n; i += 4 * V) {
    s0 = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), s0);
    s1 = at::vec::fmadd(Vec::loadu(a + i + V), Vec::loadu(b + i + V), s1);
    s2 = at::vec::fmadd(Vec::loadu(a + i + 2 * V), Vec::loadu(b + i + 2 * V), s2);
    s3 = at::vec::fmadd(Vec::loadu(a + i + 3 * V), Vec::loadu(b + i + 3 * V), s3);
  }
  for (; i + V <= n; i += V) s0 = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), s0);
  if (i < n) s1 = at::vec::fmadd(Vec::loadu(a + i, n - i), Vec::loadu(b + i, n - i), s1);  // zero-filled tails
  const Vec sum = (s0 + s1) + (s2 + s3);
  return at::vec::vec_reduce_all<acc>([](Vec& x, Vec& y) { return x + y; }, sum);
}

// out[r] = dot(rows + r * ld, x, n) for the `count` (at most 4) rows r: four rows at once read each vector of x once
// for the four (5 loads per 4 multiply-adds instead of 8), with two partial sums a row; fewer rows one at a time.
// The squeeze-excitation's matrix-vector products of one image streamed their weights 1.3-1.9x faster than with
// dot on the 2-vCPU Xeon (the gates of 672 -> 168 -> 672: 15.0 -> 8.8 us on 1 thread, 9.1 -> 6.9 us on 2; of
// 960 -> 240 -> 960 on 2: 12.7 -> 9.5 us).
template <typename acc>
void dot_rows(const acc* rows, int64_t ld, int64_t count, const acc* x, int64_t n, acc* out) {
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  if (count < 4) {
    for (int64_t r = 0; r < count; ++r) out[r] = dot(rows + r * ld, x, n);
    return;
  }
  const acc *r0 = rows, *r1 = rows + ld, *r2 = rows + 2 * ld, *r3 = rows + 3 * ld;
  Vec a0(acc(0)), a1(acc(0)), a2(acc(0)), a3(acc(0)), b0(acc(0)), b1(acc(0)), b2(acc(0)), b3(acc(0));
  int64_t i = 0;
  for (; i + 2 * V <= n; i += 2 * V) {
    const Vec x0 = Vec::loadu(x + i), x1 = Vec::loadu(x + i + V);
    a0 = at::vec::fmadd(Vec::loadu(r0 + i), x0, a0);
    b0 = at::vec::fmadd(Vec::loadu(r0 + i + V), x1, b0);
    a1 = at::vec::fmadd(Vec::loadu(r1 + i), x0, a1);
    b1 = at::vec::fmadd(Vec::loadu(r1 + i + V), x1, b1);
    a2 = at::vec::fmadd(Vec::loadu(r2 + i), x0, a2);
    b2 = at::vec::fmadd(Vec::loadu(r2 + i + V), x1, b2);
    a3 = at::vec::fmadd(Vec::loadu(r3 + i), x0, a3);
    b3 = at::vec::fmadd(Vec::loadu(r3 + i + V), x1, b3);
  }
  for (; i < n; i += V) {  // zero-filled tails
    const int64_t m = std::min(V, n - i);
    const Vec x0 = Vec::loadu(x + i, m);
    a0 = at::vec::fmadd(Vec::loadu(r0 + i, m), x0, a0);
    a1 = at::vec::fmadd(Vec::loadu(r1 + i, m), x0, a1);
    a2 = at::vec::fmadd(Vec::loadu(r2 + i, m), x0, a2);
    a3 = at::vec::fmadd(Vec::loadu(r3 + i, m), x0, a3);
  }
  const auto add = [](Vec& p, Vec& q) { return p + q; };
  out[0] = at::vec::vec_reduce_all<acc>(add, a0 + b0);
  out[1] = at::vec::vec_reduce_all<acc>(add, a1 + b1);
  out[2] = at::vec::vec_reduce_all<acc>(add, a2 + b2);
  out[3] = at::vec::vec_reduce_all<acc>(add, a3 + b3);
}

// f(v) on x[0, n) in place, a vector at a time.
template <typename acc, typename F>
void map_in_place(acc* x, int64_t n, const F& f) {
  constexpr int64_t V = at::vec::Vectorized<acc>::size();
  for (int64_t i = 0; i < n; i += V) {
    const int64_t m = std::min(V, n - i);
    f(at::vec::Vectorized<acc>::loadu(x + i, m)).store(x + i, m);
  }
}

// gate(x) on x[0, n) in place, with PyTorch's CPU formulas: sigmoid 1 / (1 + exp(-x)), hardsigmoid
// min(max(x + 3, 0), 6) / 6.
template <typename acc>
void apply_gate(Gate gate, acc* x, int64_t n) {
  using Vec = at::vec::Vectorized<acc>;
  if (gate == Gate::kSigmoid) {
    map_in_place(x, n, [](const Vec& v) { return (Vec(acc(1)) + v.neg().exp()).reciprocal(); });
  } else {
    map_in_place(x, n, [](const Vec& v) {
      return at::vec::minimum(at::vec::maximum(v + Vec(acc(3)), Vec(acc(0))), Vec(acc(6))) / Vec(acc(6));
    });
  }
}

// dst[q * channels + c] = src[q * channels + c] * scale[c] for pixels q < pixels.
template <typename acc>
void scale_channels(const acc* src, acc* dst, int64_t pixels, int64_t channels, const acc* scale) {
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  for (int64_t q = 0; q < pixels; ++q) {
    for (int64_t c = 0; c < channels; c += V) {
      const int64_t m = std::min(V, channels - c);
      (Vec::loadu(src + q * channels + c, m) * Vec::loadu(scale + c, m)).store(dst + q * channels + c, m);
    }
  }
}

// A squeeze-excitation's weights in the accumulation type, row-major: reduce [S][C] and expand [C][S] (its two 1x1
// convolutions' weights as stored), and their biases (nullptr: none).
template <typename acc>
struct SqueezeExcitationWeights {
  const acc* reduce = nullptr;
  const acc* reduce_bias = nullptr;
  const acc* expand = nullptr;
  const acc* expand_bias = nullptr;
};

// out[k * out_ld + r] = bias[r] + scale * (row r of `matrix` . x_k) for rows [r0, r1) of the row-major matrix (rows
// of n values, ld apart: n < ld dots the first n columns) and the vectors x_k = x + k * x_ld, k < images (bias may be
// null: zeros). Rows go four at a time (dot_rows), each group dotted with every image's vector while it is in L1.
template <typename acc>
void matrix_rows_times_vectors(const acc* matrix, int64_t ld, int64_t n, int64_t r0, int64_t r1, const acc* bias,
                               acc scale, const acc* x, int64_t x_ld, int64_t images, acc* out, int64_t out_ld) {
  for (int64_t j = r0; j < r1; j += 4) {
    const int64_t rows = std::min<int64_t>(4, r1 - j);
    for (int64_t k = 0; k < images; ++k) {
      acc dots[4];
      dot_rows(matrix + j * ld, ld, rows, x + k * x_ld, n, dots);
      for (int64_t r = 0; r < rows; ++r) out[k * out_ld + j + r] = (bias ? bias[j + r] : acc(0)) + scale * dots[r];
    }
  }
}

// gates[k * gates_ld + c] = gate(expand . act(reduce . mean_k + reduce_bias) + expand_bias)[c] for images k < images
// and channels c < C, with mean_k = sums[k * sums_ld + .] * inverse_pixels; squeezed: room for images * squeezed_ld
// (>= S + vector size) reduced values. The weight rows are spread over the threads, and each row is dotted with
// every image's vector while it is in L1: the weights are read once, not once per image. (At 960 channels and batch
// 8 the gates cost ~80-110 us either way: reading the two 0.9 MiB matrices from memory dominates.)
template <typename acc>
void squeeze_excitation_gates(const SqueezeExcitationWeights<acc>& w, int64_t C, int64_t S, Activation activation,
                              Gate gate, const acc* sums, int64_t sums_ld, acc inverse_pixels, int64_t images,
                              acc* squeezed, int64_t squeezed_ld, acc* gates, int64_t gates_ld) {
  // squeezed = activation(reduce . mean + reduce_bias), a range of its S rows per thread.
  at::parallel_for(0, S, std::max<int64_t>(1, kMinWorkItemMacs / (C * images)), [&](int64_t j0, int64_t j1) {
    matrix_rows_times_vectors(w.reduce, C, C, j0, j1, w.reduce_bias, inverse_pixels, sums, sums_ld, images, squeezed,
                              squeezed_ld);
    for (int64_t k = 0; k < images; ++k) {
      map_in_place(squeezed + k * squeezed_ld + j0, j1 - j0,
                   [&](const at::vec::Vectorized<acc>& v) { return apply_activation(activation, v); });
    }
  });
  // gate = gate(expand . squeezed + expand_bias), a range of the C channels per thread.
  at::parallel_for(0, C, std::max<int64_t>(1, kMinWorkItemMacs / (S * images)), [&](int64_t c0, int64_t c1) {
    matrix_rows_times_vectors(w.expand, S, S, c0, c1, w.expand_bias, acc(1), squeezed, squeezed_ld, images, gates,
                              gates_ld);
    for (int64_t k = 0; k < images; ++k) apply_gate(gate, gates + k * gates_ld + c0, c1 - c0);
  });
}

}  // namespace cpu
}  // namespace fusedops
