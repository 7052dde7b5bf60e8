// The pointwise (1x1 convolution) GEMM of the fused kernels: C[P x N] = act(A[P x K] @ B[K x N] + bias).
//
// A is a cache-resident tile (pixels x channels, row-major, any leading dimension), typically written
// just before by a depthwise epilogue; B (the 1x1 weights) is packed once per call into panels of
// kNr = 2 vectors of columns, [panel][K][kNr], zero-padded, so the micro-kernel streams it with unit
// stride. The micro-kernel holds an kMr x kNr block of C in registers (6 x 2 vectors: 12 accumulators,
// 2 B vectors and one broadcast fit AVX2's 16 registers as well as AVX-512's 32), loops over K with
// one broadcast of A and kNr/V loads of B per step, then adds the bias, applies the activation and
// stores straight into the destination (any storage type; the last panel's columns beyond N are
// never stored).
#pragma once

#include "fusedops/activation.h"
#include "fusedops/cpu/activation.h"
#include "fusedops/cpu/vec_io.h"

#include <algorithm>
#include <cstdint>

namespace fusedops {
namespace cpu {

template <typename acc>
struct PackedPointwise {
  static constexpr int64_t kVec = at::vec::Vectorized<acc>::size();
  static constexpr int64_t kNr = 2 * kVec;  // columns per panel
  static constexpr int64_t kMr = 6;         // rows per micro-kernel call

  const acc* panels = nullptr;  // [panels][K][kNr]
  const acc* bias = nullptr;    // [panels * kNr], zero-padded
  int64_t k = 0, n = 0;

  int64_t num_panels() const { return (n + kNr - 1) / kNr; }
  static int64_t panel_elements(int64_t k) { return k * kNr; }
  static int64_t packed_elements(int64_t k, int64_t n) { return ((n + kNr - 1) / kNr) * (k * kNr + kNr); }
};

// Packs weight (N, K) (any storage type, rows contiguous with leading dimension `ld`) and an optional
// bias (N) into `dst` (PackedPointwise::packed_elements(K, N) elements of acc).
template <typename acc, typename scalar_t>
PackedPointwise<acc> pack_pointwise(const scalar_t* weight, int64_t ld, const scalar_t* bias, int64_t k, int64_t n,
                                    acc* dst) {
  using P = PackedPointwise<acc>;
  P p;
  p.k = k;
  p.n = n;
  const int64_t panels = p.num_panels();
  acc* w = dst;
  acc* b = dst + panels * k * P::kNr;
  for (int64_t j = 0; j < panels; ++j) {
    acc* panel = w + j * k * P::kNr;
    for (int64_t kk = 0; kk < k; ++kk) {
      for (int64_t c = 0; c < P::kNr; ++c) {
        const int64_t col = j * P::kNr + c;
        panel[kk * P::kNr + c] = col < n ? static_cast<acc>(weight[col * ld + kk]) : acc(0);
      }
    }
  }
  for (int64_t col = 0; col < panels * P::kNr; ++col)
    b[col] = (bias != nullptr && col < n) ? static_cast<acc>(bias[col]) : acc(0);
  p.panels = w;
  p.bias = b;
  return p;
}

namespace detail {

template <int kRows, typename acc, typename out_t>
inline void pointwise_micro(int64_t k, const acc* a, int64_t lda, const acc* panel, const acc* bias, out_t* c,
                            int64_t ldc, int64_t cols, Activation act) {
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  constexpr int64_t NR = 2 * V;
  Vec c0[kRows], c1[kRows];
  const Vec bias0 = Vec::loadu(bias), bias1 = Vec::loadu(bias + V);
#pragma GCC unroll 6
  for (int r = 0; r < kRows; ++r) {
    c0[r] = bias0;
    c1[r] = bias1;
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const Vec b0 = Vec::loadu(panel + kk * NR), b1 = Vec::loadu(panel + kk * NR + V);
#pragma GCC unroll 6
    for (int r = 0; r < kRows; ++r) {
      const Vec ar(a[r * lda + kk]);
      c0[r] = at::vec::fmadd(ar, b0, c0[r]);
      c1[r] = at::vec::fmadd(ar, b1, c1[r]);
    }
  }
  if (cols >= NR) {
#pragma GCC unroll 6
    for (int r = 0; r < kRows; ++r) {
      store_acc(c + r * ldc, apply_activation(act, c0[r]));
      store_acc(c + r * ldc + V, apply_activation(act, c1[r]));
    }
  } else {
    for (int r = 0; r < kRows; ++r) {
      if (cols >= V) {
        store_acc(c + r * ldc, apply_activation(act, c0[r]));
        if (cols > V) store_acc(c + r * ldc + V, apply_activation(act, c1[r]), cols - V);
      } else {
        store_acc(c + r * ldc, apply_activation(act, c0[r]), cols);
      }
    }
  }
}

}  // namespace detail

// Columns of panels [panel_begin, panel_end) of C = act(A @ B + bias). A is rows x K (leading dimension
// lda); c points at column 0 of C (leading dimension ldc); only columns below p.n are written.
template <typename acc, typename out_t>
void pointwise_gemm(const PackedPointwise<acc>& p, int64_t panel_begin, int64_t panel_end, const acc* a, int64_t lda,
                    int64_t rows, out_t* c, int64_t ldc, Activation act) {
  using P = PackedPointwise<acc>;
  for (int64_t j = panel_begin; j < panel_end; ++j) {
    const acc* panel = p.panels + j * p.k * P::kNr;
    const acc* bias = p.bias + j * P::kNr;
    const int64_t col = j * P::kNr;
    const int64_t cols = std::min(P::kNr, p.n - col);
    int64_t r = 0;
    for (; r + P::kMr <= rows; r += P::kMr)
      detail::pointwise_micro<P::kMr>(p.k, a + r * lda, lda, panel, bias, c + r * ldc + col, ldc, cols, act);
    const acc* ar = a + r * lda;
    out_t* cr = c + r * ldc + col;
    switch (rows - r) {
      case 5: detail::pointwise_micro<5>(p.k, ar, lda, panel, bias, cr, ldc, cols, act); break;
      case 4: detail::pointwise_micro<4>(p.k, ar, lda, panel, bias, cr, ldc, cols, act); break;
      case 3: detail::pointwise_micro<3>(p.k, ar, lda, panel, bias, cr, ldc, cols, act); break;
      case 2: detail::pointwise_micro<2>(p.k, ar, lda, panel, bias, cr, ldc, cols, act); break;
      case 1: detail::pointwise_micro<1>(p.k, ar, lda, panel, bias, cr, ldc, cols, act); break;
      default: break;
    }
  }
}

}  // namespace cpu
}  // namespace fusedops
