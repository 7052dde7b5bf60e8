// Depthwise planes computed in place with AVX-512 masked loads (float, NCHW): stride 1 as flat sweeps of
// the plane, stride 2 row by row (at the end of this file).
//
// When the output has the input's width (stride 1, "same" padding along W: every MobileNet layer and
// every stride-1 input gradient), output pixel p = oh * W + ow reads tap t at input flat index
// p + offset[t] with one offset per tap for the whole plane. A plane is then swept as one flat run of
// 16-lane vectors straight from the input (no padded copy, no compaction, full vectors even on 7x7
// maps): lanes whose tap falls in the padding, in another row, or past the plane are masked off, and
// masked-off lanes are never read, so nothing is read outside the plane. The masks depend only on the
// geometry, so they are built once per geometry (MaskedPlaneTable, cached) and shared by every plane and
// thread; vectors whose taps are all inside (most of a large map) take unmasked loads.
//
// Three kernel columns (3x3 and every k x 3 kernel): on maps whose rows are not a multiple of 16 wide,
// nearly every vector has a lane at a row's first or last column, so almost no vector is "full". Those
// whose taps only leave the row sideways (every vector but the first and last rows') instead take
// unmasked loads into one accumulator per kernel column and merge the three with masked adds, 2-3
// adds per vector instead of 9 mask loads and masked loads. Measured on MobileNet's stride-1 maps
// (2 threads, N=8): C=192 28x28 1.23x, C=144 56x56 1.17x, C=32 112x112 1.18x, C=384 14x14 1.06x faster.
//
// 3x3 kernels with adjacent columns (every MobileNet layer) go further (shifted_rows_forward): one load per
// kernel row, its side taps shifted out of it in registers, every vector of the plane alike. Measured
// against the three-column sweeps on one thread: 1.36-1.5x on 5x5 to 112x112 maps, in L2 or not.
#pragma once

#include "fusedops/conv_geometry.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace fusedops {
namespace cpu {

// Whether the masked flat sweep applies to geometry g (and is compiled in).
inline bool masked_plane_applies(const ConvGeometry& g) {
#if defined(CPU_CAPABILITY_AVX512)
  // The lane -> (row, column) split runs in float, exact below 2^22 pixels per plane.
  return g.stride_h == 1 && g.stride_w == 1 && g.out_w == g.in_w && g.out_h * g.out_w < (int64_t{1} << 22) &&
         g.in_h * g.in_w < (int64_t{1} << 22);
#else
  (void)g;
  return false;
#endif
}

#if defined(CPU_CAPABILITY_AVX512)

// Whether shifted_rows_forward applies to a masked-plane geometry g: 3x3 kernels whose kernel columns are
// adjacent (dilation_w 1; any dilation_h).
inline bool shifted_rows_apply(const ConvGeometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.dilation_w == 1;
}

// Lanes j of a 16-element load starting at flat index q that lie inside [0, size).
inline __mmask16 lanes_inside(int64_t q, int64_t size) {
  const int64_t lo = std::max<int64_t>(0, -q), hi = std::min<int64_t>(16, size - q);
  if (hi <= lo) return 0;
  return static_cast<__mmask16>(((uint32_t{1} << hi) - 1u) & ~((uint32_t{1} << lo) - 1u));
}

// Per output vector v (lanes 16v .. 16v + 15 of the flat output plane): one 16-bit load mask per tap,
// and whether all of them are full.
struct MaskedPlaneTable {
  int64_t vectors = 0;
  int64_t taps = 0;
  std::vector<int64_t> offsets;  // per tap: input flat index minus output flat index
  std::vector<uint16_t> masks;   // [vectors][taps]
  std::vector<uint8_t> full;     // [vectors]: every tap's mask is 0xffff
  int64_t out_size = 0;          // out_h * out_w
  // Kernels three columns wide: per vector, the lanes whose column kw falls inside the row
  // ([vectors][3]), and whether the vector's taps only leave the row sideways (all 16 lanes in the
  // plane, every kernel row inside, every unmasked read inside the input plane).
  std::vector<uint16_t> column_masks;
  std::vector<uint8_t> sideways_only;
  // 3x3 kernels with dilation_w 1 (shifted_rows_forward): per vector v in [-1, vectors] and kernel row
  // kh, the lanes of the kernel row's centre-tap load (from 16v + offsets[3kh + 1]) that lie inside the
  // input plane ([vectors + 2][3]).
  std::vector<uint16_t> row_load_masks;

  explicit MaskedPlaneTable(const ConvGeometry& g) {
    const int64_t W = g.in_w, KH = g.kernel_h, KW = g.kernel_w;
    taps = KH * KW;
    out_size = g.out_h * g.out_w;
    vectors = (out_size + 15) / 16;
    offsets.resize(taps);
    for (int64_t kh = 0; kh < KH; ++kh)
      for (int64_t kw = 0; kw < KW; ++kw)
        offsets[kh * KW + kw] = (kh * g.dilation_h - g.pad_h) * W + (kw * g.dilation_w - g.pad_w);
    masks.resize(vectors * taps);
    full.resize(vectors);
    const bool three_columns = KW == 3;
    if (three_columns) {
      column_masks.resize(vectors * 3);
      sideways_only.resize(vectors);
    }
    const int64_t in_size = g.in_h * W;
    // A plane of one vector (maps up to 4x4) gains nothing from the shifts: they cost their set-up
    // (0.9-0.95x measured on 1x1 and 3x3 maps).
    if (shifted_rows_apply(g) && vectors >= 2) {
      row_load_masks.resize((vectors + 2) * 3);
      for (int64_t v = -1; v <= vectors; ++v)
        for (int64_t kh = 0; kh < 3; ++kh)
          row_load_masks[(v + 1) * 3 + kh] = lanes_inside(v * 16 + offsets[kh * 3 + 1], in_size);
    }
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 inv_w = _mm512_set1_ps(1.0f / static_cast<float>(W));
    const __m512i width = _mm512_set1_epi32(static_cast<int32_t>(W));
    const __m512i height = _mm512_set1_epi32(static_cast<int32_t>(g.in_h));
    const __m512i size = _mm512_set1_epi32(static_cast<int32_t>(out_size));
    std::vector<__mmask16> row_ok(KH), col_ok(KW);
    for (int64_t v = 0; v < vectors; ++v) {
      const __m512i p = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(v * 16)), iota);
      // oh = p / W: (p + 0.5) / W is at least 0.5 / W away from an integer, far above float's rounding here.
      const __m512i oh =
          _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(0.5f)), inv_w));
      const __m512i ow = _mm512_sub_epi32(p, _mm512_mullo_epi32(oh, width));
      const __mmask16 inside = _mm512_cmplt_epi32_mask(p, size);
      // Unsigned compares: a negative row or column is a huge unsigned one, so one compare checks both ends.
      for (int64_t kh = 0; kh < KH; ++kh) {
        const __m512i r = _mm512_add_epi32(oh, _mm512_set1_epi32(static_cast<int32_t>(kh * g.dilation_h - g.pad_h)));
        row_ok[kh] = _mm512_cmplt_epu32_mask(r, height);
      }
      for (int64_t kw = 0; kw < KW; ++kw) {
        const __m512i c = _mm512_add_epi32(ow, _mm512_set1_epi32(static_cast<int32_t>(kw * g.dilation_w - g.pad_w)));
        col_ok[kw] = _mm512_cmplt_epu32_mask(c, width);
      }
      bool all = true;
      for (int64_t kh = 0; kh < KH; ++kh) {
        for (int64_t kw = 0; kw < KW; ++kw) {
          const __mmask16 m = row_ok[kh] & col_ok[kw] & inside;
          masks[v * taps + kh * KW + kw] = m;
          all = all && m == 0xffff;
        }
      }
      full[v] = all;
      if (three_columns) {
        bool rows_inside = inside == 0xffff;
        for (int64_t kh = 0; kh < KH; ++kh) rows_inside = rows_inside && row_ok[kh] == 0xffff;
        bool reads_inside = true;
        for (int64_t t = 0; t < taps; ++t)
          reads_inside = reads_inside && v * 16 + offsets[t] >= 0 && v * 16 + 15 + offsets[t] < in_size;
        for (int64_t kw = 0; kw < 3; ++kw) column_masks[v * 3 + kw] = col_ok[kw];
        sideways_only[v] = rows_inside && reads_inside;
      }
    }
  }
};

// The table of geometry g, kept in a small per-thread cache: building one costs ~5 us for a 112x112
// map (as much as computing 10 of its planes), and a network calls the same few geometries over and
// over (a stride-1 layer's input gradient has its forward's geometry). The calling thread builds it and
// keeps it alive while its workers read it.
inline const MaskedPlaneTable& masked_plane_table(const ConvGeometry& g) {
  struct Entry {
    std::array<int64_t, 9> key;
    std::unique_ptr<MaskedPlaneTable> table;
  };
  constexpr size_t kEntries = 16;  // MobileNetV2 has 9 distinct depthwise geometries
  thread_local std::vector<Entry> cache;
  thread_local size_t next = 0;
  const std::array<int64_t, 9> key = {g.in_h,  g.in_w,  g.out_h,      g.kernel_h,  g.kernel_w,
                                      g.pad_h, g.pad_w, g.dilation_h, g.dilation_w};
  for (const Entry& e : cache) {
    if (e.key == key) return *e.table;
  }
  auto table = std::make_unique<MaskedPlaneTable>(g);
  if (cache.size() < kEntries) {
    cache.push_back({key, std::move(table)});
    return *cache.back().table;
  }
  Entry& victim = cache[next];
  next = (next + 1) % kEntries;
  victim = {key, std::move(table)};
  return *victim.table;
}

// The sweeps run blocks of kPlaneBlock output vectors: 4 accumulators hide the FMA latency, with the
// weights and loads still inside 32 registers.
constexpr int kPlaneBlock = 4;

// Prefetch distance past the furthest tap, in floats (planes run on into the next one): the hardware
// prefetchers follow masked loads poorly; measured at N=8, C=144 56x56 took 1300-1630 us without and
// ~600 us with, C=576 14x14 195-231 us without and ~180 us with.
constexpr int64_t kPlaneAhead = 256;

// Prefetches the input lines kPlaneAhead floats past the furthest tap of the block at output vector v.
inline void prefetch_plane_block(const float* in, const MaskedPlaneTable& table, int64_t v) {
  const char* ahead = reinterpret_cast<const char*>(in + v * 16 + table.offsets[table.taps - 1] + kPlaneAhead);
#pragma GCC unroll 4
  for (int j = 0; j < kPlaneBlock; ++j) _mm_prefetch(ahead + 64 * j, _MM_HINT_T0);
}

// Stores output vector v of a plane, without the lanes past its end.
inline void store_plane_vector(const MaskedPlaneTable& table, int64_t v, __m512 x, float* out) {
  const int64_t p = v * 16;
  if (p + 16 <= table.out_size) {
    _mm512_storeu_ps(out + p, x);
  } else {
    _mm512_mask_storeu_ps(out + p, static_cast<__mmask16>((1u << (table.out_size - p)) - 1u), x);
  }
}

// kVecs consecutive output vectors from v: every tap accumulates in registers, one weight broadcast per
// tap feeding kVecs FMAs. Masked loads only where a vector's taps leave the plane; the last vector's
// lanes past the plane are not stored.
template <int kVecs>
inline void masked_plane_block(const float* in, const MaskedPlaneTable& table, int64_t v, const float* w, float bias,
                               float* out) {
  __m512 sum[kVecs];
#pragma GCC unroll 8
  for (int j = 0; j < kVecs; ++j) sum[j] = _mm512_set1_ps(bias);
  const int64_t T = table.taps;
  const int64_t* offsets = table.offsets.data();
  bool all_full = true;
#pragma GCC unroll 8
  for (int j = 0; j < kVecs; ++j) all_full = all_full && table.full[v + j];
  const float* base = in + v * 16;
  if (all_full) {
    for (int64_t t = 0; t < T; ++t) {
      const __m512 wv = _mm512_set1_ps(w[t]);
      const float* src = base + offsets[t];
#pragma GCC unroll 8
      for (int j = 0; j < kVecs; ++j) sum[j] = _mm512_fmadd_ps(_mm512_loadu_ps(src + 16 * j), wv, sum[j]);
    }
  } else {
    const uint16_t* masks = table.masks.data() + v * T;
    for (int64_t t = 0; t < T; ++t) {
      const __m512 wv = _mm512_set1_ps(w[t]);
      const float* src = base + offsets[t];
#pragma GCC unroll 8
      for (int j = 0; j < kVecs; ++j) {
        sum[j] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(masks[j * T + t], src + 16 * j), wv, sum[j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < kVecs; ++j) store_plane_vector(table, v + j, sum[j], out);
}

// kVecs consecutive output vectors from v, all sideways_only, of a kernel three columns wide: unmasked
// loads, one accumulator per kernel column, merged through each column's lane mask (lanes whose tap
// left the row read the neighbouring row's pixel, which the merge drops).
template <int kVecs>
inline void masked_plane_columns_block(const float* in, const MaskedPlaneTable& table, int64_t v, const float* w,
                                       float bias, float* out) {
  __m512 acc[3][kVecs];
#pragma GCC unroll 3
  for (int kw = 0; kw < 3; ++kw) {
#pragma GCC unroll 8
    for (int j = 0; j < kVecs; ++j) acc[kw][j] = _mm512_setzero_ps();
  }
  const int64_t KH = table.taps / 3;
  const float* base = in + v * 16;
  for (int64_t kh = 0; kh < KH; ++kh) {
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) {
      const int64_t t = kh * 3 + kw;
      const __m512 wv = _mm512_set1_ps(w[t]);
      const float* src = base + table.offsets[t];
#pragma GCC unroll 8
      for (int j = 0; j < kVecs; ++j) acc[kw][j] = _mm512_fmadd_ps(_mm512_loadu_ps(src + 16 * j), wv, acc[kw][j]);
    }
  }
  const uint16_t* column_masks = table.column_masks.data() + v * 3;
#pragma GCC unroll 8
  for (int j = 0; j < kVecs; ++j) {
    __m512 sum = _mm512_set1_ps(bias);
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; ++kw) sum = _mm512_mask_add_ps(sum, column_masks[j * 3 + kw], sum, acc[kw][j]);
    _mm512_storeu_ps(out + (v + j) * 16, sum);
  }
}

// 3x3 kernels, dilation_w 1 (shifted_rows_apply): each kernel row loads only its centre tap, once per
// vector; the left and right taps are that load shifted by one lane (valignd with the previous and next
// vectors, carried along the sweep), zeroed where the tap's column leaves the row. 3 loads, 6 shifts and
// 9 FMAs per vector instead of 9 loads, nearly all of them splitting a cache line: on this Zen 4 host
// unaligned 512-bit loads issue at ~1 per 1.8 cycles, FMAs and shifts at ~1.3 per cycle, so the 9-load
// sweep is load-bound. Every vector of the plane takes this path (the loads' lane masks keep them inside
// the plane and zero the padding rows).
struct ShiftedRowsCarry {
  __m512 prev[3];  // per kernel row, the centre-tap load of the vector before the next block
};

template <int kVecs>
inline void shifted_rows_block(const float* in, const MaskedPlaneTable& table, int64_t v, const __m512 (&wv)[3][3],
                               __m512 bias, ShiftedRowsCarry& carry, float* out) {
  __m512 acc[kVecs];
#pragma GCC unroll 4
  for (int j = 0; j < kVecs; ++j) acc[j] = bias;
  const uint16_t* row_masks = table.row_load_masks.data() + (v + 1) * 3;  // of vector v
  const uint16_t* column_masks = table.column_masks.data() + v * 3;
#pragma GCC unroll 3
  for (int kh = 0; kh < 3; ++kh) {
    const float* centre = in + v * 16 + table.offsets[kh * 3 + 1];
    __m512i x[kVecs + 2];  // vectors v - 1 .. v + kVecs of this kernel row's centre taps
    x[0] = _mm512_castps_si512(carry.prev[kh]);
#pragma GCC unroll 5
    for (int j = 0; j <= kVecs; ++j)
      x[j + 1] = _mm512_castps_si512(_mm512_maskz_loadu_ps(row_masks[j * 3 + kh], centre + 16 * j));
#pragma GCC unroll 4
    for (int j = 0; j < kVecs; ++j) {
      const __m512 left = _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(column_masks[j * 3], x[j + 1], x[j], 15));
      const __m512 right =
          _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(column_masks[j * 3 + 2], x[j + 2], x[j + 1], 1));
      acc[j] = _mm512_fmadd_ps(left, wv[kh][0], acc[j]);
      acc[j] = _mm512_fmadd_ps(_mm512_castsi512_ps(x[j + 1]), wv[kh][1], acc[j]);
      acc[j] = _mm512_fmadd_ps(right, wv[kh][2], acc[j]);
    }
    carry.prev[kh] = _mm512_castsi512_ps(x[kVecs]);
  }
#pragma GCC unroll 4
  for (int j = 0; j < kVecs; ++j) store_plane_vector(table, v + j, acc[j], out);
}

inline void shifted_rows_forward(const float* in, const MaskedPlaneTable& table, const float* w, float bias_value,
                                 float* out) {
  __m512 wv[3][3];
  for (int kh = 0; kh < 3; ++kh)
    for (int kw = 0; kw < 3; ++kw) wv[kh][kw] = _mm512_set1_ps(w[kh * 3 + kw]);
  const __m512 bias = _mm512_set1_ps(bias_value);
  ShiftedRowsCarry carry;
  for (int kh = 0; kh < 3; ++kh)
    carry.prev[kh] = _mm512_maskz_loadu_ps(table.row_load_masks[kh], in - 16 + table.offsets[kh * 3 + 1]);
  int64_t v = 0;
  for (; v + kPlaneBlock <= table.vectors; v += kPlaneBlock) {
    prefetch_plane_block(in, table, v);
    shifted_rows_block<kPlaneBlock>(in, table, v, wv, bias, carry, out);
  }
  for (; v < table.vectors; ++v) shifted_rows_block<1>(in, table, v, wv, bias, carry, out);
}

// One output plane (out_h x out_w, dense) from one input plane (in_h x in_w, dense); w holds the taps.
// Through shifted_rows_forward where the table holds its masks, else the masked or three-column sweeps.
inline void masked_plane_forward(const float* in, const MaskedPlaneTable& table, const float* w, float bias,
                                 float* out) {
  if (!table.row_load_masks.empty()) {
    shifted_rows_forward(in, table, w, bias, out);
    return;
  }
  int64_t v = 0;
  for (; v + kPlaneBlock <= table.vectors; v += kPlaneBlock) {
    prefetch_plane_block(in, table, v);
    // sideways_only runs in one stretch per plane, so its first and last vectors decide the block.
    if (!table.sideways_only.empty() && table.sideways_only[v] && table.sideways_only[v + kPlaneBlock - 1])
      masked_plane_columns_block<kPlaneBlock>(in, table, v, w, bias, out);
    else
      masked_plane_block<kPlaneBlock>(in, table, v, w, bias, out);
  }
  for (; v < table.vectors; ++v) masked_plane_block<1>(in, table, v, w, bias, out);
}

// Stride 2 (dilation 1, kernels up to 8 wide): output row oh, 16 outputs from ow0 read input columns
// 2 * (ow0 + l) - pad + kw. Two masked loads of 32 consecutive input columns from 2 * ow0 - pad + kw
// give kernel columns kw (even lanes) and kw + 1 (odd lanes) through one permute each, so each input
// element is loaded once per kernel row instead of being gathered; the masks zero the padding columns.
constexpr int kStride2MaxPairs = 4;            // kernels up to 8 wide
constexpr int64_t kStride2MaxRowVectors = 64;  // output rows up to 1024 wide take the masked path

// Load masks of one output vector: [pair][low 16 columns, high 16 columns].
using Stride2Masks = __mmask16[kStride2MaxPairs][2];

// kVecs vectors (64 outputs at most) of output row oh from ow0, whose load masks are masks[0 .. kVecs);
// `last` valid lanes in the last vector.
template <int kVecs>
inline void masked_stride2_block(const float* plane, const ConvGeometry& g, int64_t kh_begin, int64_t kh_end,
                                 int64_t oh, int64_t ow0, const float* w, float bias, const Stride2Masks* masks,
                                 float* out_row, int64_t last) {
  const int64_t KW = g.kernel_w, pairs = (KW + 1) / 2, W = g.in_w;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  __m512 sum[kVecs];
#pragma GCC unroll 4
  for (int v = 0; v < kVecs; ++v) sum[v] = _mm512_set1_ps(bias);
  for (int64_t kh = kh_begin; kh < kh_end; ++kh) {
    const float* row = plane + (oh * 2 - g.pad_h + kh) * W;
    const float* wk = w + kh * KW;
    for (int64_t p = 0; p < pairs; ++p) {
      const __m512 w_even = _mm512_set1_ps(wk[2 * p]);
      const __m512 w_odd = _mm512_set1_ps(2 * p + 1 < KW ? wk[2 * p + 1] : 0.0f);
#pragma GCC unroll 4
      for (int v = 0; v < kVecs; ++v) {
        const float* src = row + 2 * (ow0 + 16 * v) - g.pad_w + 2 * p;  // masked lanes are never read
        const __m512 lo = _mm512_maskz_loadu_ps(masks[v][p][0], src);
        const __m512 hi = _mm512_maskz_loadu_ps(masks[v][p][1], src + 16);
        sum[v] = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, even, hi), w_even, sum[v]);
        if (2 * p + 1 < KW) sum[v] = _mm512_fmadd_ps(_mm512_permutex2var_ps(lo, odd, hi), w_odd, sum[v]);
      }
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < kVecs; ++v) {
    if (v < kVecs - 1 || last == 16) {
      _mm512_storeu_ps(out_row + ow0 + 16 * v, sum[v]);
    } else {
      _mm512_mask_storeu_ps(out_row + ow0 + 16 * v, static_cast<__mmask16>((1u << last) - 1u), sum[v]);
    }
  }
}

inline bool masked_stride2_applies(const ConvGeometry& g) {
  return g.stride_h == 2 && g.stride_w == 2 && g.dilation_h == 1 && g.dilation_w == 1 &&
         g.kernel_w <= 2 * kStride2MaxPairs && (g.out_w + 15) / 16 <= kStride2MaxRowVectors;
}

// One output plane of a stride-2 convolution from one dense input plane.
inline void masked_stride2_forward(const float* plane, const ConvGeometry& g, const float* w, float bias, float* out) {
  // The column masks are the same for every row.
  const int64_t vectors = (g.out_w + 15) / 16, pairs = (g.kernel_w + 1) / 2;
  Stride2Masks masks[kStride2MaxRowVectors];
  for (int64_t v = 0; v < vectors; ++v) {
    for (int64_t p = 0; p < pairs; ++p) {
      const int64_t c0 = 2 * 16 * v - g.pad_w + 2 * p;
      masks[v][p][0] = lanes_inside(c0, g.in_w);
      masks[v][p][1] = lanes_inside(c0 + 16, g.in_w);
    }
  }
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    // Kernel rows that fall inside the input for this output row.
    const int64_t ih0 = oh * 2 - g.pad_h;
    const int64_t kh_begin = std::max<int64_t>(0, -ih0), kh_end = std::min<int64_t>(g.kernel_h, g.in_h - ih0);
    float* out_row = out + oh * g.out_w;
    // The next output row's new input rows, ahead of the masked loads (which the hardware prefetchers
    // follow poorly: without this, N=8 C=96 112x112 maps from DRAM took 3.9x as long).
    for (int64_t r = ih0 + g.kernel_h; r < std::min(ih0 + g.kernel_h + 2, g.in_h); ++r) {
      const char* p = reinterpret_cast<const char*>(plane + r * g.in_w);
      for (int64_t b = 0; b < g.in_w * int64_t(sizeof(float)); b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
    }
    // 4 vectors (4 accumulators) hide the FMA latency; the row's remainder takes 1-3.
    int64_t v = 0;
    for (; v + 4 <= vectors && (v + 4) * 16 <= g.out_w; v += 4)
      masked_stride2_block<4>(plane, g, kh_begin, kh_end, oh, v * 16, w, bias, masks + v, out_row, 16);
    const int64_t rest = vectors - v;
    if (rest > 0) {
      const int64_t last = g.out_w - (vectors - 1) * 16;
      const int64_t ow0 = v * 16;
      const Stride2Masks* m = masks + v;
      if (rest == 1)
        masked_stride2_block<1>(plane, g, kh_begin, kh_end, oh, ow0, w, bias, m, out_row, last);
      else if (rest == 2)
        masked_stride2_block<2>(plane, g, kh_begin, kh_end, oh, ow0, w, bias, m, out_row, last);
      else if (rest == 3)
        masked_stride2_block<3>(plane, g, kh_begin, kh_end, oh, ow0, w, bias, m, out_row, last);
      else
        masked_stride2_block<4>(plane, g, kh_begin, kh_end, oh, ow0, w, bias, m, out_row, last);
    }
  }
}

#endif  // CPU_CAPABILITY_AVX512

}  // namespace cpu
}  // namespace fusedops
