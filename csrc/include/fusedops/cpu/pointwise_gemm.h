// The pointwise (1x1 convolution) GEMM of the fused kernels: C[P x N] = act(A[P x K] @ B[K x N] + bias).
//
// A is a cache-resident tile (pixels x channels, row-major, any leading dimension), typically written
// just before by a depthwise epilogue; B (the 1x1 weights) is packed once per call into panels of
// kNr = 2 vectors of columns, [panel][K][kNr], zero-padded, so the micro-kernel streams it with unit
// stride. The micro-kernel holds a kMr x kNr block of C in registers (AVX-512: 8 x 2 vectors, 16
// accumulators; AVX2: 6 x 2, whose 12 accumulators, 2 B vectors and one broadcast fit its 16
// registers), loops over K with one broadcast of A and kNr/V loads of B per step, then adds the bias,
// applies the activation and stores straight into the destination (any storage type; the last panel's
// columns beyond N are never stored).
#pragma once

#include "fusedops/activation.h"
#include "fusedops/cpu/activation.h"
#include "fusedops/cpu/vec_io.h"

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace fusedops {
namespace cpu {

template <typename acc>
struct PackedPointwise {
  static constexpr int64_t kVec = at::vec::Vectorized<acc>::size();
  static constexpr int64_t kNr = 2 * kVec;  // columns per panel
  // Rows per micro-kernel call: 8 x 2 vectors = 16 accumulators with AVX-512's 32 registers, 6 x 2 = 12
  // with AVX2's 16.
  static constexpr int64_t kMr = kVec >= 16 ? 8 : 6;

  const acc* panels = nullptr;  // [panels][K][kNr]
  const acc* bias = nullptr;    // [panels * kNr], zero-padded
  int64_t k = 0, n = 0;
  int64_t k_stride = 0;  // K of the packed panels: more than k in a k_range view

  int64_t num_panels() const {
    return (n + kNr - 1) / kNr;
  }
  // Elements from one panel to the next.
  int64_t panel_stride() const {
    return (k_stride > 0 ? k_stride : k) * kNr;
  }
  // The rows [k0, k1) of K, read in place, with `range_bias` ([panels * kNr]) for bias: the GEMM of the input
  // channels [k0, k1) alone (a K-split GEMM's partial product).
  PackedPointwise k_range(int64_t k0, int64_t k1, const acc* range_bias) const {
    PackedPointwise view = *this;
    view.panels = panels + k0 * kNr;
    view.bias = range_bias;
    view.k = k1 - k0;
    view.k_stride = k_stride > 0 ? k_stride : k;
    return view;
  }
  static int64_t panel_elements(int64_t k) {
    return k * kNr;
  }
  static int64_t packed_elements(int64_t k, int64_t n) {
    return ((n + kNr - 1) / kNr) * (k * kNr + kNr);
  }
};

// Describes the packed layout in `dst` (PackedPointwise::packed_elements(K, N) elements of acc); the
// panels are filled by pack_pointwise_panels.
template <typename acc>
PackedPointwise<acc> packed_pointwise_layout(int64_t k, int64_t n, acc* dst) {
  PackedPointwise<acc> p;
  p.k = k;
  p.n = n;
  p.panels = dst;
  p.bias = dst + p.num_panels() * k * PackedPointwise<acc>::kNr;
  return p;
}

// Packs panels [panel_begin, panel_end) of weight (N, K) (any storage type, row `col` at weight + col * ld)
// and of the optional bias (N). Reads the weight rows contiguously; independent panels can be packed
// by different threads.
template <typename acc, typename scalar_t>
void pack_pointwise_panels(const PackedPointwise<acc>& p, const scalar_t* weight, int64_t ld, const scalar_t* bias,
                           int64_t panel_begin, int64_t panel_end) {
  using P = PackedPointwise<acc>;
  acc* w = const_cast<acc*>(p.panels);
  acc* b = const_cast<acc*>(p.bias);
  if constexpr (std::is_same_v<acc, float> && std::is_same_v<scalar_t, float>) {
    // A panel is the transpose of kNr weight rows: in-register 16x16 block transposes pack it ~3x faster
    // than the element loop below (88 of 813 us of a 1-thread 960->160 7x7 batch-8 call went to packing).
    for (int64_t j = panel_begin; j < panel_end; ++j) {
      acc* panel = w + j * p.k * P::kNr;
      const int64_t col = j * P::kNr, cols = std::min(P::kNr, p.n - col);
      if (cols < P::kNr) std::fill(panel, panel + p.k * P::kNr, acc(0));
      at::vec::transpose_mxn<float>(weight + col * ld, ld, panel, P::kNr, static_cast<int>(cols),
                                    static_cast<int>(p.k));
      for (int64_t c = 0; c < P::kNr; ++c) b[col + c] = (bias != nullptr && c < cols) ? bias[col + c] : acc(0);
    }
    return;
  }
  for (int64_t j = panel_begin; j < panel_end; ++j) {
    acc* panel = w + j * p.k * P::kNr;
    for (int64_t c = 0; c < P::kNr; ++c) {
      const int64_t col = j * P::kNr + c;
      if (col < p.n) {
        const scalar_t* row = weight + col * ld;
        for (int64_t kk = 0; kk < p.k; ++kk) panel[kk * P::kNr + c] = static_cast<acc>(row[kk]);
      } else {
        for (int64_t kk = 0; kk < p.k; ++kk) panel[kk * P::kNr + c] = acc(0);
      }
      b[col] = (bias != nullptr && col < p.n) ? static_cast<acc>(bias[col]) : acc(0);
    }
  }
}

namespace detail {

template <typename acc, typename out_t>
inline void store_row(out_t* c, at::vec::Vectorized<acc> v0, at::vec::Vectorized<acc> v1, int64_t cols,
                      Activation act) {
  constexpr int64_t V = at::vec::Vectorized<acc>::size();
  v0 = apply_activation(act, v0);
  v1 = apply_activation(act, v1);
  if (cols >= 2 * V) {
    store_acc(c, v0);
    store_acc(c + V, v1);
  } else if (cols >= V) {
    store_acc(c, v0);
    if (cols > V) store_acc(c + V, v1, cols - V);
  } else {
    store_acc(c, v0, cols);
  }
}

// MR (at most kMr: 8 or 6) rows x 2 vectors of C. The accumulators are named variables, not an array: GCC does
// not scalarise arrays of this size and would spill every accumulator to the stack on every K step. Rows of the
// block beyond `rows` (the last block of a tile) point at row 0 and are discarded; accumulators of rows beyond MR
// are compiled out, so a kernel of fewer rows does proportionally fewer multiply-adds (pointwise_rows chooses MR).
template <typename acc, typename out_t, int64_t MR = PackedPointwise<acc>::kMr, int64_t NV = 2>
inline void pointwise_micro(int64_t k, const acc* a, int64_t lda, int64_t rows, const acc* panel, const acc* bias,
                            out_t* c, int64_t ldc, int64_t cols, Activation act, const acc* row_bias = nullptr) {
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  constexpr int64_t NR = 2 * V;
  static_assert(MR >= 1 && MR <= 8 && MR <= PackedPointwise<acc>::kMr, "pointwise_micro: 1 to kMr rows");
  static_assert(NV == 1 || NV == 2, "pointwise_micro: one or two vectors of columns");
  const acc* a0 = a;
  const acc* a1 = rows > 1 ? a + lda : a;
  const acc* a2 = rows > 2 ? a + 2 * lda : a;
  const acc* a3 = rows > 3 ? a + 3 * lda : a;
  const acc* a4 = rows > 4 ? a + 4 * lda : a;
  const acc* a5 = rows > 5 ? a + 5 * lda : a;
  const acc* a6 = rows > 6 ? a + 6 * lda : a;
  const acc* a7 = rows > 7 ? a + 7 * lda : a;
  // Column bias (per output channel of the usual orientation) or row bias (the transposed one).
  const Vec bias0 = bias ? Vec::loadu(bias) : Vec(acc(0)), bias1 = bias ? Vec::loadu(bias + V) : Vec(acc(0));
  Vec c00 = bias0, c01 = bias1, c10 = bias0, c11 = bias1, c20 = bias0, c21 = bias1;
  Vec c30 = bias0, c31 = bias1, c40 = bias0, c41 = bias1, c50 = bias0, c51 = bias1;
  Vec c60 = bias0, c61 = bias1, c70 = bias0, c71 = bias1;
  if (row_bias != nullptr) {
    const Vec r0(row_bias[0]), r1(row_bias[rows > 1 ? 1 : 0]), r2(row_bias[rows > 2 ? 2 : 0]);
    const Vec r3(row_bias[rows > 3 ? 3 : 0]), r4(row_bias[rows > 4 ? 4 : 0]), r5(row_bias[rows > 5 ? 5 : 0]);
    const Vec r6(row_bias[rows > 6 ? 6 : 0]), r7(row_bias[rows > 7 ? 7 : 0]);
    c00 = c00 + r0;
    c01 = c01 + r0;
    c10 = c10 + r1;
    c11 = c11 + r1;
    c20 = c20 + r2;
    c21 = c21 + r2;
    c30 = c30 + r3;
    c31 = c31 + r3;
    c40 = c40 + r4;
    c41 = c41 + r4;
    c50 = c50 + r5;
    c51 = c51 + r5;
    c60 = c60 + r6;
    c61 = c61 + r6;
    c70 = c70 + r7;
    c71 = c71 + r7;
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const Vec b0 = Vec::loadu(panel + kk * NR);
    // With one vector of columns (a panel's first V columns hold them all) the second is neither loaded nor
    // multiplied: half the multiply-adds for outputs of at most V channels.
    [[maybe_unused]] const Vec b1 = NV > 1 ? Vec::loadu(panel + kk * NR + V) : b0;
    Vec x(a0[kk]);
    c00 = at::vec::fmadd(x, b0, c00);
    if constexpr (NV > 1) c01 = at::vec::fmadd(x, b1, c01);
    if constexpr (MR > 1) {
      x = Vec(a1[kk]);
      c10 = at::vec::fmadd(x, b0, c10);
      if constexpr (NV > 1) c11 = at::vec::fmadd(x, b1, c11);
    }
    if constexpr (MR > 2) {
      x = Vec(a2[kk]);
      c20 = at::vec::fmadd(x, b0, c20);
      if constexpr (NV > 1) c21 = at::vec::fmadd(x, b1, c21);
    }
    if constexpr (MR > 3) {
      x = Vec(a3[kk]);
      c30 = at::vec::fmadd(x, b0, c30);
      if constexpr (NV > 1) c31 = at::vec::fmadd(x, b1, c31);
    }
    if constexpr (MR > 4) {
      x = Vec(a4[kk]);
      c40 = at::vec::fmadd(x, b0, c40);
      if constexpr (NV > 1) c41 = at::vec::fmadd(x, b1, c41);
    }
    if constexpr (MR > 5) {
      x = Vec(a5[kk]);
      c50 = at::vec::fmadd(x, b0, c50);
      if constexpr (NV > 1) c51 = at::vec::fmadd(x, b1, c51);
    }
    if constexpr (MR > 6) {
      x = Vec(a6[kk]);
      c60 = at::vec::fmadd(x, b0, c60);
      if constexpr (NV > 1) c61 = at::vec::fmadd(x, b1, c61);
    }
    if constexpr (MR > 7) {
      x = Vec(a7[kk]);
      c70 = at::vec::fmadd(x, b0, c70);
      if constexpr (NV > 1) c71 = at::vec::fmadd(x, b1, c71);
    }
  }
  store_row(c, c00, c01, cols, act);
  if (MR > 1 && rows > 1) store_row(c + ldc, c10, c11, cols, act);
  if (MR > 2 && rows > 2) store_row(c + 2 * ldc, c20, c21, cols, act);
  if (MR > 3 && rows > 3) store_row(c + 3 * ldc, c30, c31, cols, act);
  if (MR > 4 && rows > 4) store_row(c + 4 * ldc, c40, c41, cols, act);
  if (MR > 5 && rows > 5) store_row(c + 5 * ldc, c50, c51, cols, act);
  if (MR > 6 && rows > 6) store_row(c + 6 * ldc, c60, c61, cols, act);
  if (MR > 7 && rows > 7) store_row(c + 7 * ldc, c70, c71, cols, act);
}

// The micro-kernel blocks of a tile of `rows` rows: as many as kMr-row blocks would take, of heights that differ by
// at most one (the first rows % count blocks one row higher), each run by the kernel of its height. A kernel
// computes all its rows, so blocks of kMr and a short last one waste multiply-adds. 49 pixels (a 7x7 map) run on
// AVX-512 as 7 blocks of 7 rows, not 6 of 8 and one of 1 (12.5% of the multiply-adds wasted); on AVX2 as 4 of 6 and
// 5 of 5, not 8 of 6 and one of 1 (10%); 28 pixels as 3 of 6 and 2 of 5, not 4 of 6 and one of 4 (7%).
template <typename acc>
struct PointwiseRowBlocks {
  int64_t count = 0, base = 0, extra = 0;
  explicit PointwiseRowBlocks(int64_t rows) {
    constexpr int64_t M = PackedPointwise<acc>::kMr;
    count = (rows + M - 1) / M;
    if (count > 0) {
      base = rows / count;
      extra = rows % count;
    }
  }
  int64_t begin(int64_t b) const {
    return b * base + std::min(b, extra);
  }
  int64_t height(int64_t b) const {
    return base + (b < extra ? 1 : 0);
  }
};

// pointwise_micro for a block of `rows` (at most `height`, a PointwiseRowBlocks block's) rows, through the kernel of
// `height` rows: the heights of kMr down to kMr - 3 have their own kernels, lower ones share the kernel of kMr / 2
// rows (enough for the last blocks of small tiles; fewer variants keep the code and its compile time small).
template <typename acc, typename out_t, int64_t NV>
inline void pointwise_rows_of(int64_t height, int64_t k, const acc* a, int64_t lda, int64_t rows, const acc* panel,
                              const acc* bias, out_t* c, int64_t ldc, int64_t cols, Activation act,
                              const acc* row_bias) {
  constexpr int64_t M = PackedPointwise<acc>::kMr;
  if (height >= M) {
    pointwise_micro<acc, out_t, M, NV>(k, a, lda, rows, panel, bias, c, ldc, cols, act, row_bias);
  } else if (height == M - 1) {
    pointwise_micro<acc, out_t, M - 1, NV>(k, a, lda, rows, panel, bias, c, ldc, cols, act, row_bias);
  } else if (height == M - 2) {
    pointwise_micro<acc, out_t, M - 2, NV>(k, a, lda, rows, panel, bias, c, ldc, cols, act, row_bias);
  } else if (height == M - 3) {
    pointwise_micro<acc, out_t, M - 3, NV>(k, a, lda, rows, panel, bias, c, ldc, cols, act, row_bias);
  } else {
    pointwise_micro<acc, out_t, M / 2, NV>(k, a, lda, rows, panel, bias, c, ldc, cols, act, row_bias);
  }
}

// A panel of at most one vector of columns (a narrow output, or the last panel's remainder) runs the one-vector
// kernels: GhostNet's 16->16 Ghost module at 112x112 (8 primary channels) computed 4x the multiply-adds it needed.
template <typename acc, typename out_t>
inline void pointwise_rows(int64_t height, int64_t k, const acc* a, int64_t lda, int64_t rows, const acc* panel,
                           const acc* bias, out_t* c, int64_t ldc, int64_t cols, Activation act,
                           const acc* row_bias = nullptr) {
  if (cols <= at::vec::Vectorized<acc>::size()) {
    pointwise_rows_of<acc, out_t, 1>(height, k, a, lda, rows, panel, bias, c, ldc, cols, act, row_bias);
  } else {
    pointwise_rows_of<acc, out_t, 2>(height, k, a, lda, rows, panel, bias, c, ldc, cols, act, row_bias);
  }
}

// A block of one or two rows spanning several panels, for the tiles of one or two pixels (a 1x1 map: the GEMV of
// a late block at batch 1). pointwise_micro's block of one row keeps 2 chains of dependent multiply-adds in flight,
// too few to cover the multiply-add latency, and streamed the weights at ~16 B a cycle; this one keeps 2 * NP * MR
// (one row: 2 to 4 panels, the panels a thread has left; two rows: 2 panels). Each accumulator adds its terms in
// pointwise_micro's order, so the results are the same bits. Columns beyond `cols` (counted from the first panel's
// first column) are not stored.
template <typename acc, typename out_t, int64_t MR, int64_t NP>
inline void pointwise_micro_panels(int64_t k, const acc* a, int64_t lda, const acc* panels, int64_t panel_stride,
                                   const acc* bias, out_t* c, int64_t ldc, int64_t cols, Activation act) {
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  constexpr int64_t NR = 2 * V;
  static_assert((MR == 1 && NP >= 2 && NP <= 4) || (MR == 2 && NP == 2),
                "pointwise_micro_panels: one row of 2 to 4 panels, or two rows of 2");
  const acc* q0 = panels;
  const acc* q1 = panels + panel_stride;
  const acc* q2 = NP > 2 ? panels + 2 * panel_stride : q0;
  const acc* q3 = NP > 3 ? panels + 3 * panel_stride : q0;
  const acc* a1 = MR > 1 ? a + lda : a;
  // c0..c3: row 0 of panels 0 and 1; c4..c7: row 0 of panels 2 and 3 (one row) or row 1 of panels 0 and 1 (two).
  Vec c0 = Vec::loadu(bias), c1 = Vec::loadu(bias + V), c2 = Vec::loadu(bias + NR), c3 = Vec::loadu(bias + NR + V);
  Vec c4 = c0, c5 = c1, c6 = c2, c7 = c3;
  if constexpr (MR == 1 && NP > 2) {
    c4 = Vec::loadu(bias + 2 * NR);
    c5 = Vec::loadu(bias + 2 * NR + V);
  }
  if constexpr (MR == 1 && NP > 3) {
    c6 = Vec::loadu(bias + 3 * NR);
    c7 = Vec::loadu(bias + 3 * NR + V);
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const int64_t o = kk * NR;
    const Vec x(a[kk]);
    c0 = at::vec::fmadd(x, Vec::loadu(q0 + o), c0);
    c1 = at::vec::fmadd(x, Vec::loadu(q0 + o + V), c1);
    c2 = at::vec::fmadd(x, Vec::loadu(q1 + o), c2);
    c3 = at::vec::fmadd(x, Vec::loadu(q1 + o + V), c3);
    if constexpr (MR == 1 && NP > 2) {
      c4 = at::vec::fmadd(x, Vec::loadu(q2 + o), c4);
      c5 = at::vec::fmadd(x, Vec::loadu(q2 + o + V), c5);
    }
    if constexpr (MR == 1 && NP > 3) {
      c6 = at::vec::fmadd(x, Vec::loadu(q3 + o), c6);
      c7 = at::vec::fmadd(x, Vec::loadu(q3 + o + V), c7);
    }
    if constexpr (MR == 2) {
      const Vec y(a1[kk]);
      c4 = at::vec::fmadd(y, Vec::loadu(q0 + o), c4);
      c5 = at::vec::fmadd(y, Vec::loadu(q0 + o + V), c5);
      c6 = at::vec::fmadd(y, Vec::loadu(q1 + o), c6);
      c7 = at::vec::fmadd(y, Vec::loadu(q1 + o + V), c7);
    }
  }
  auto store_panel = [&](out_t* row, int64_t j, Vec v0, Vec v1) {
    const int64_t left = cols - j * NR;
    if (left > 0) store_row(row + j * NR, v0, v1, std::min(NR, left), act);
  };
  store_panel(c, 0, c0, c1);
  store_panel(c, 1, c2, c3);
  if constexpr (MR == 1 && NP > 2) store_panel(c, 2, c4, c5);
  if constexpr (MR == 1 && NP > 3) store_panel(c, 3, c6, c7);
  if constexpr (MR == 2) {
    store_panel(c + ldc, 0, c4, c5);
    store_panel(c + ldc, 1, c6, c7);
  }
}

}  // namespace detail

// Columns of panels [panel_begin, panel_end) of C = act(A @ B + bias). A is rows x K (leading dimension
// lda); c points at column 0 of C (leading dimension ldc); only columns below p.n are written.
template <typename acc, typename out_t>
void pointwise_gemm(const PackedPointwise<acc>& p, int64_t panel_begin, int64_t panel_end, const acc* a, int64_t lda,
                    int64_t rows, out_t* c, int64_t ldc, Activation act) {
  using P = PackedPointwise<acc>;
  const detail::PointwiseRowBlocks<acc> blocks(rows);
  const int64_t panel_stride = p.panel_stride();
  for (int64_t j = panel_begin; j < panel_end; ++j) {
    // One or two rows: several panels a block (pointwise_micro_panels).
    const int64_t left = panel_end - j;
    if ((rows == 1 || rows == 2) && left >= 2) {
      const acc* panels = p.panels + j * panel_stride;
      const acc* bias = p.bias + j * P::kNr;
      out_t* dst = c + j * P::kNr;
      const int64_t cols = p.n - j * P::kNr;
      if (rows == 2) {
        detail::pointwise_micro_panels<acc, out_t, 2, 2>(p.k, a, lda, panels, panel_stride, bias, dst, ldc, cols, act);
        j += 1;
      } else if (left >= 4 && left != 5) {  // 5 panels: 3 + 2, not 4 + one of the one-panel kernel's 2 chains
        detail::pointwise_micro_panels<acc, out_t, 1, 4>(p.k, a, lda, panels, panel_stride, bias, dst, ldc, cols, act);
        j += 3;
      } else if (left >= 3) {
        detail::pointwise_micro_panels<acc, out_t, 1, 3>(p.k, a, lda, panels, panel_stride, bias, dst, ldc, cols, act);
        j += 2;
      } else {
        detail::pointwise_micro_panels<acc, out_t, 1, 2>(p.k, a, lda, panels, panel_stride, bias, dst, ldc, cols, act);
        j += 1;
      }
      continue;
    }
    const acc* panel = p.panels + j * panel_stride;
    const acc* bias = p.bias + j * P::kNr;
    const int64_t col = j * P::kNr;
    const int64_t cols = std::min(P::kNr, p.n - col);
    for (int64_t b = 0; b < blocks.count; ++b) {
      const int64_t r = blocks.begin(b), h = blocks.height(b);
      detail::pointwise_rows<acc, out_t>(h, p.k, a + r * lda, lda, h, panel, bias, c + r * ldc + col, ldc, cols, act);
    }
  }
}

// Columns [vector_begin * V, vector_end * V) of C (V = one vector of acc; clipped at p.n), as pointwise_gemm: the
// whole panels in that range with the two-vector kernels, a panel's single vector at either end of it with the
// one-vector kernels (a panel's second vector read in place: its panel pointer advanced by V). Lets threads share a
// GEMM of an odd count of panels evenly.
template <typename acc, typename out_t>
void pointwise_gemm_vectors(const PackedPointwise<acc>& p, int64_t vector_begin, int64_t vector_end, const acc* a,
                            int64_t lda, int64_t rows, out_t* c, int64_t ldc, Activation act) {
  using P = PackedPointwise<acc>;
  constexpr int64_t V = P::kVec;
  const detail::PointwiseRowBlocks<acc> blocks(rows);
  auto lone_vector = [&](int64_t v) {
    const int64_t col = v * V;
    const int64_t cols = std::min(V, p.n - col);
    if (cols <= 0) return;
    const acc* panel = p.panels + (v / 2) * p.panel_stride() + (v % 2) * V;  // a second vector read in place
    for (int64_t b = 0; b < blocks.count; ++b) {
      const int64_t r = blocks.begin(b), h = blocks.height(b);
      detail::pointwise_rows<acc, out_t>(h, p.k, a + r * lda, lda, h, panel, p.bias + col, c + r * ldc + col, ldc, cols,
                                         act);
    }
  };
  int64_t v = vector_begin;
  if (v % 2 == 1 && v < vector_end) lone_vector(v++);
  const int64_t whole_end = v + (vector_end - v) / 2 * 2;
  pointwise_gemm(p, v / 2, whole_end / 2, a, lda, rows, c, ldc, act);
  if (whole_end < vector_end) lone_vector(whole_end);
}

// The transposed orientation, for small tiles whose weights would cost more to pack than the tile itself:
// C^T[N x P] = act(W[N x K] @ A^T + bias), with W the 1x1 weights used in place (rows of K, leading
// dimension ldw) and A^T the tile packed by pack_tile_panels into pixel panels [P / kNr][K][kNr]. Row r
// of C^T (output channel) gets bias[r]; its pixels are columns, stored with leading dimension ldc.
template <typename acc>
void pack_tile_panels(const acc* tile, int64_t ld, int64_t pixels, int64_t k, acc* dst) {
  using P = PackedPointwise<acc>;
  const int64_t panels = (pixels + P::kNr - 1) / P::kNr;
  for (int64_t q = 0; q < panels; ++q) {
    acc* panel = dst + q * k * P::kNr;
    for (int64_t j = 0; j < P::kNr; ++j) {
      const int64_t pix = q * P::kNr + j;
      if (pix < pixels) {
        const acc* row = tile + pix * ld;
        for (int64_t kk = 0; kk < k; ++kk) panel[kk * P::kNr + j] = row[kk];
      } else {
        for (int64_t kk = 0; kk < k; ++kk) panel[kk * P::kNr + j] = acc(0);
      }
    }
  }
}

template <typename acc, typename out_t>
void pointwise_gemm_transposed(const acc* w, int64_t ldw, const acc* bias, int64_t row_begin, int64_t row_end,
                               const acc* tile_panels, int64_t k, int64_t pixels, out_t* c, int64_t ldc,
                               Activation act) {
  using P = PackedPointwise<acc>;
  const int64_t panels = (pixels + P::kNr - 1) / P::kNr;
  // Row blocks outer: a block's weight rows (kMr x K) stay in L1 while the tile's panels (one tile, in L2)
  // stream past them; the weights are read from memory once.
  const detail::PointwiseRowBlocks<acc> blocks(row_end - row_begin);
  for (int64_t b = 0; b < blocks.count; ++b) {
    const int64_t r = row_begin + blocks.begin(b), h = blocks.height(b);
    for (int64_t q = 0; q < panels; ++q) {
      const int64_t col = q * P::kNr, cols = std::min(P::kNr, pixels - col);
      detail::pointwise_rows<acc, out_t>(h, k, w + r * ldw, ldw, h, tile_panels + q * k * P::kNr, nullptr,
                                         c + r * ldc + col, ldc, cols, act, bias ? bias + r : nullptr);
    }
  }
}

}  // namespace cpu
}  // namespace fusedops
