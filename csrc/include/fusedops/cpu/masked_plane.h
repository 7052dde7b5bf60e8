// Stride-1 depthwise planes computed in place with AVX-512 masked loads (float, NCHW).
//
// When the output has the input's width (stride 1, "same" padding along W: every MobileNet layer and
// every stride-1 input gradient), output pixel p = oh * W + ow reads tap t at input flat index
// p + offset[t] with one offset per tap for the whole plane. A plane is then swept as one flat run of
// 16-lane vectors straight from the input (no padded copy, no compaction, full vectors even on 7x7
// maps): lanes whose tap falls in the padding, in another row, or past the plane are masked off, and
// masked-off lanes are never read, so nothing is read outside the plane. The masks depend only on the
// geometry, so they are built once per geometry (MaskedPlaneTable, cached) and shared by every plane and
// thread;
// vectors whose taps are all inside (most of a large map) take unmasked loads.
#pragma once

#include "fusedops/conv_geometry.h"

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

// Per output vector v (lanes 16v .. 16v + 15 of the flat output plane): one 16-bit load mask per tap,
// and whether all of them are full.
struct MaskedPlaneTable {
  int64_t vectors = 0;
  int64_t taps = 0;
  std::vector<int64_t> offsets;  // per tap: input flat index minus output flat index
  std::vector<uint16_t> masks;   // [vectors][taps]
  std::vector<uint8_t> full;     // [vectors]: every tap's mask is 0xffff
  int64_t out_size = 0;          // out_h * out_w

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
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 inv_w = _mm512_set1_ps(1.0f / static_cast<float>(W));
    const __m512i width = _mm512_set1_epi32(static_cast<int32_t>(W));
    const __m512i height = _mm512_set1_epi32(static_cast<int32_t>(g.in_h));
    const __m512i size = _mm512_set1_epi32(static_cast<int32_t>(out_size));
    std::vector<__mmask16> row_ok(KH), col_ok(KW);
    for (int64_t v = 0; v < vectors; ++v) {
      const __m512i p = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(v * 16)), iota);
      // oh = p / W: (p + 0.5) / W is at least 0.5 / W away from an integer, far above float's rounding here.
      const __m512i oh = _mm512_cvttps_epi32(
          _mm512_mul_ps(_mm512_add_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(0.5f)), inv_w));
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
  const std::array<int64_t, 9> key = {g.in_h,     g.in_w,       g.out_h,      g.kernel_h, g.kernel_w,
                                      g.pad_h,    g.pad_w,      g.dilation_h, g.dilation_w};
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

// kVecs consecutive output vectors from v: every tap accumulates in registers, one weight broadcast per
// tap feeding kVecs FMAs. Masked loads only where a vector's taps leave the plane; the last vector's
// lanes past the plane are not stored.
template <int kVecs>
inline void masked_plane_block(const float* in, const MaskedPlaneTable& table, int64_t v, const float* w,
                               float bias, float* out) {
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
  for (int j = 0; j < kVecs; ++j) {
    const int64_t p = (v + j) * 16;
    if (p + 16 <= table.out_size) {
      _mm512_storeu_ps(out + p, sum[j]);
    } else {
      _mm512_mask_storeu_ps(out + p, static_cast<__mmask16>((1u << (table.out_size - p)) - 1u), sum[j]);
    }
  }
}

// One output plane (out_h x out_w, dense) from one input plane (in_h x in_w, dense); w holds the taps.
inline void masked_plane_forward(const float* in, const MaskedPlaneTable& table, const float* w, float bias,
                                 float* out) {
  // 4 accumulators hide the FMA latency; with a weight and a load that leaves room in 32 registers.
  constexpr int64_t kBlock = 4;
  int64_t v = 0;
  for (; v + kBlock <= table.vectors; v += kBlock) masked_plane_block<kBlock>(in, table, v, w, bias, out);
  for (; v < table.vectors; ++v) masked_plane_block<1>(in, table, v, w, bias, out);
}

#endif  // CPU_CAPABILITY_AVX512

}  // namespace cpu
}  // namespace fusedops
