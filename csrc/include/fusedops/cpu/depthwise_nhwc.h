// The channels-last depthwise micro-kernel: one output row for a range of channels.
//
// This is the tile unit the fused kernels build on: a caller picks an output row and a channel range,
// and says where the results go (the real output, or a cache-resident tile that a pointwise GEMM
// consumes next) and which epilogue (bias is applied here; activation through `epilogue`) runs before
// the store.
//
// Vectorised over channels, register-blocked over output columns (3x3, 5x5 and 7x7 kernels, stride 1 or 2,
// dilation 1 along W): blocks of kDwBlock outputs (then halves for the row's remainder; blocks of 7 for rows
// 7 or 14 wide, kSevenBlockMinKernel), a kernel row's weights held in registers, each input column loaded
// once per kernel row and reused by every output of the block that reads it. Interior blocks run without
// bounds checks; border blocks read out-of-range columns as zero. Rows never need checks: kernel rows
// outside the input are skipped. 3x3 rows (stride 1 or 2) inside the input run two at a time (row pairs, whose
// input rows are loaded once for both). Other kernel sizes / dilations run a per-pixel loop.
//
// The public entry points compute whole output rows (depthwise_nhwc_row, _row_pair, _rows, _row_group);
// the detail:: functions they run compute register blocks of outputs (register_block*, row_pair_register_block*)
// or single pixels (single_pixel).
#pragma once

#include "fusedops/conv_geometry.h"
#include "fusedops/cpu/vec_io.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace fusedops {
namespace cpu {

// Outputs computed at once by the interior kernel: 8 on AVX-512 (8 accumulators + 7 weights + temps
// fit its 32 registers), 4 on AVX2 (16 registers).
template <typename acc_type>
constexpr int kDwBlock = at::vec::Vectorized<acc_type>::size() >= 16 ? 8 : 4;

// Vector registers of the instruction set the kernels are compiled for.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kVectorRegisters = 32;
#else
constexpr int kVectorRegisters = 16;
#endif

struct IdentityEpilogue {
  template <typename V>
  V operator()(const V& v) const {
    return v;
  }
};

template <typename in_t, typename out_t>
struct DwNhwcRow {
  const in_t* image;  // input image of this batch element: pixel (ih, iw), channel c at
                      // image + ih * in_row_stride + iw * in_pix_stride + c
  int64_t in_row_stride;
  int64_t in_pix_stride;
  const acc_t<in_t>* weight;  // taps [kH][kW] x channels: tap t, channel c at weight + t * weight_ld + c
  int64_t weight_ld;
  const acc_t<in_t>* bias;  // per channel, or nullptr
  out_t* out;               // output row: pixel ow, channel c at out + ow * out_pix_stride + c
  int64_t out_pix_stride;
  int64_t out_row_stride = 0;  // depthwise_nhwc_row_pair only: row oh + 1 at out + out_row_stride
  int64_t oh;
  int64_t c_begin, c_end;
  // For calls whose tensors stream from beyond the caches (streams_beyond_cache): prefetch, ahead of the
  // loads, the input rows this output row is the first to read, the output (its stores otherwise wait
  // on each line's read-for-ownership), and `prefetch_also`, a row laid out like the input's (pixel iw
  // at prefetch_also + iw * in_pix_stride) that the caller reads next. Rows must run in order. The
  // prefetches fill L2, not L1: at N=8, C=144 56x56 0.72x of the time of L1 prefetches (which evict the
  // block's own input rows from the 32 KiB L1).
  bool prefetch = false;
  const in_t* prefetch_also = nullptr;
  // depthwise_nhwc_row_pair only: it also prefetches the row at prefetch_also + prefetch_also_row_stride.
  int64_t prefetch_also_row_stride = 0;
  // For calls whose output streams past the caches (streaming_stores_apply): whole-vector stores bypass the caches,
  // so that no output line is read for ownership before it is overwritten. The caller fences
  // (streaming_stores_fence) before other threads read the output.
  bool stream_stores = false;
};

// Weights (OC, 1, kH, kW) -> acc-type taps [kH*kW][OC], the layout the row kernels read, optionally rotated by 180
// degrees (for the transposed convolution of the input gradient), at `w`.
template <typename scalar_t>
void lay_out_taps(const scalar_t* src, int64_t T, int64_t OC, bool rotate, acc_t<scalar_t>* w) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (!rotate) {
      // A transpose of (OC x T): in-register 16x16 block transposes, ~3x faster than the element loop below.
      at::vec::transpose_mxn<float>(src, T, w, OC, static_cast<int>(OC), static_cast<int>(T));
      return;
    }
  }
  for (int64_t oc = 0; oc < OC; ++oc)
    for (int64_t t = 0; t < T; ++t)
      w[(rotate ? T - 1 - t : t) * OC + oc] = static_cast<acc_t<scalar_t>>(src[oc * T + t]);
}

// Pixels laid out in rows: pixel (row, col), channel c at data + row * row_stride + col * pixel_stride + c.
template <typename T>
struct PixelRows {
  T* data;
  int64_t row_stride, pixel_stride;
};

// The row-kernel arguments of the output rows from `oh` on, channels [c_begin, c_end): the input image and the output
// (its row 0 at out.data) as pixel rows, the taps [kH * kW][taps_ld] and the optional bias. The prefetch and
// streaming-store options keep their defaults.
template <typename in_t, typename out_t>
DwNhwcRow<in_t, out_t> nhwc_rows(PixelRows<const in_t> in, const acc_t<in_t>* taps, int64_t taps_ld,
                                 const acc_t<in_t>* bias, PixelRows<out_t> out, int64_t oh, int64_t c_begin,
                                 int64_t c_end) {
  DwNhwcRow<in_t, out_t> t;
  t.image = in.data;
  t.in_row_stride = in.row_stride;
  t.in_pix_stride = in.pixel_stride;
  t.weight = taps;
  t.weight_ld = taps_ld;
  t.bias = bias;
  t.out = out.data;
  t.out_pix_stride = out.pixel_stride;
  t.out_row_stride = out.row_stride;
  t.oh = oh;
  t.c_begin = c_begin;
  t.c_end = c_end;
  return t;
}

// How far ahead (output columns) prefetches run: 2 blocks of 8. Measured on the forward at N=8, C=144
// 56x56 (2 threads): 16 and 24 columns ahead equally fast.
constexpr int64_t kDwPrefetchColumns = 16;

// Stores v at p (aligned to the vector's size) with a non-temporal store: straight to memory through the
// write-combining buffers, without reading the line first. Other threads see the stores only after
// streaming_stores_fence().
FUSEDOPS_ALWAYS_INLINE void stream_store(float* p, const at::vec::Vectorized<float>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  _mm512_stream_ps(p, v);
#elif defined(CPU_CAPABILITY_AVX2)
  _mm256_stream_ps(p, v);
#else
  v.store(p);
#endif
}

inline void streaming_stores_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// Whether the row kernels may store `out` (channels-last, `channels` per pixel, output rows `row_stride` elements
// apart, element type out_t) with streaming stores: float, every whole-vector store aligned, the call's traffic
// beyond the caches, and none of the two layouts that defeat the write-combining buffers, which send a line on
// whole only when all of it was written while they held it. Measured on the AMD EPYC (Zen 3, AVX2: 32-byte
// vectors), forward, N=8, 2 threads, time with streaming stores / without:
// - Pixels that do not start on a cache line and are short (kMinStraddlingPixelBytes): the line a pixel shares with
//   the next is written a whole channel sweep apart. 56x56: C=56 2.5x, C=72 1.9-2.2x, C=88 1.27x, C=120 1.0x;
//   112x112 stride 2: C=72 1.48x, C=120 0.63x.
// - Output rows a multiple of 4 KiB apart (the row pair's two rows, and at stride 1 its input rows, fall on the
//   same 4 KiB offsets): C=128 56x56 1.6x, C=256 1.25x, C=384 1.47x, C=128 112x112 stride 2 1.24x, C=512 28x28
//   stride 2 1.2-1.6x, and the input gradient of C=64 112x112 1-2.3x.
// Elsewhere streaming stores take 0.75-0.95x of the time (56x56: C=144 0.88x, C=240 0.78x; 112x112 stride 2: C=96
// 0.80x). AVX-512's 64-byte vectors start every pixel on a line.
constexpr int64_t kMinStraddlingPixelBytes = 448;
constexpr int64_t kCacheLineBytes = 64;

template <typename out_t>
inline bool streaming_stores_apply(const out_t* out, int64_t channels, int64_t row_stride, bool streams) {
  constexpr int64_t kVecBytes = at::vec::Vectorized<float>::size() * int64_t(sizeof(float));
  constexpr int64_t kPageBytes = 4096;
  const int64_t pixel_bytes = channels * int64_t(sizeof(float));
  return std::is_same_v<out_t, float> && streams && kVecBytes >= 32 && pixel_bytes % kVecBytes == 0 &&
         reinterpret_cast<uintptr_t>(out) % kVecBytes == 0 &&
         (pixel_bytes % kCacheLineBytes == 0 || pixel_bytes >= kMinStraddlingPixelBytes) &&
         (row_stride * int64_t(sizeof(float))) % kPageBytes != 0;
}

// Whether the row kernels run register blocks of whole cache lines (two 32-byte vectors of channels, half as many
// outputs) instead of one vector: AVX2, float, the standalone depthwise (identity epilogue), 3x3, and input pixels a
// multiple of 2 KiB apart (512, 1024, 1536... channels). There a block's input rows and columns, and its taps, fall
// on a few L1 sets and evict each other before the second half of each line is read. Measured on the AMD EPYC (Zen
// 3, AVX2), forward, N=8, 2 threads, one vector / whole lines / eager, us: C=1024 7x7 349-379 / 177-198 / 193-203,
// C=1024 14x14 stride 2 415-602 / 218-239 / 225-258, C=512 14x14 286-419 / 197-198 / 303-304, C=512 28x28 stride 2
// 420-469 / 354-413 / 401-449. At 1 KiB (C=256 28x28) and 3 KiB (C=768 14x14) the two ran equally fast.
template <typename in_t, typename out_t, typename Epilogue>
constexpr int kWholeLineVecs =
    std::is_same_v<in_t, float> && std::is_same_v<out_t, float> && std::is_same_v<Epilogue, IdentityEpilogue> &&
            at::vec::Vectorized<float>::size() == 8
        ? 2
        : 1;

// Whether rows of `stride` elements of T (pixels, or rows of per-channel sums) fall on a few L1 sets: a multiple
// of 2 KiB apart.
template <typename T>
inline bool rows_on_few_l1_sets(int64_t stride) {
  return (stride * int64_t(sizeof(T))) % 2048 == 0;
}

template <typename in_t, typename out_t>
inline bool whole_lines_apply(const DwNhwcRow<in_t, out_t>& t) {
  return rows_on_few_l1_sets<in_t>(t.in_pix_stride);
}

namespace detail {

// v stored at p (aligned to its vector size), bypassing the caches where `stream`.
template <bool kPartial, typename out_t, typename V>
FUSEDOPS_ALWAYS_INLINE void store_output(out_t* p, const V& v, int64_t count, bool stream) {
  if constexpr (!kPartial && std::is_same_v<out_t, float>) {
    if (stream) return stream_store(p, v);
  }
  store_n<kPartial>(p, v, count);
}

// The input column iw of a block (at colp): border blocks (kChecked) read columns outside [0, in_w) as
// zero.
template <bool kPartial, bool kChecked, typename in_t>
FUSEDOPS_ALWAYS_INLINE AccVec<in_t> load_column(const in_t* colp, int64_t iw, int64_t in_w, int64_t count) {
  if constexpr (kChecked) {
    if (iw < 0 || iw >= in_w) return AccVec<in_t>(acc_t<in_t>(0));
  }
  return load_n<kPartial>(colp, count);
}

// kB outputs (ow .. ow + kB - 1) of kVecs channel vectors (c, c + V, ...; more than one only whole). kChecked: some
// taps fall outside the input along W and read as zero (border blocks); otherwise no checks at all.
template <typename in_t, typename out_t, int KW, int SW, int kB, bool kPartial, bool kChecked, typename Epilogue,
          int kVecs = 1>
FUSEDOPS_ALWAYS_INLINE void register_block(const DwNhwcRow<in_t, out_t>& t, const ConvGeometry& g, int kh_begin,
                                           int kh_end, int64_t ow, int64_t c, int64_t count, const Epilogue& epilogue) {
  using acc = acc_t<in_t>;
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  static_assert(kVecs == 1 || !kPartial, "only whole vectors run several at a time");
  Vec sum[kB][kVecs];
#pragma GCC unroll 2
  for (int j = 0; j < kVecs; ++j) {
    const Vec bias = t.bias ? load_buf<kPartial>(t.bias + c + j * V, count) : Vec(acc(0));
#pragma GCC unroll 8
    for (int b = 0; b < kB; ++b) sum[b][j] = bias;
  }
  const int64_t iw0 = ow * SW - g.pad_w;
  for (int kh = kh_begin; kh < kh_end; ++kh) {
    const int64_t ih = t.oh * g.stride_h - g.pad_h + kh * g.dilation_h;
    // Pointers advance by a stride instead of being indexed by col * stride: with runtime strides the
    // indexed form needs one register per column and spilled the loop's pointers (measured ~1.3x slower).
    const in_t* colp = t.image + ih * t.in_row_stride + iw0 * t.in_pix_stride + c;
    const acc* wp = t.weight + kh * KW * t.weight_ld + c;
    if (t.prefetch && kh >= g.kernel_h - g.stride_h) {
      // A row the previous output row did not read: the columns of the block kDwPrefetchColumns ahead
      // (past the row's end they run on into the next row, which the next output row reads first).
      const in_t* ahead = colp + kDwPrefetchColumns * SW * t.in_pix_stride;
#pragma GCC unroll 16
      for (int col = 0; col < kB * SW; ++col) __builtin_prefetch(ahead + col * t.in_pix_stride, 0, 2);
    }
    Vec w[KW][kVecs];
#pragma GCC unroll 8
    for (int kw = 0; kw < KW; ++kw, wp += t.weight_ld) {
#pragma GCC unroll 2
      for (int j = 0; j < kVecs; ++j) w[kw][j] = load_buf<kPartial>(wp + j * V, count);
    }
    // Each input column is loaded once and feeds every output of the block that reads it.
    constexpr int kCols = (kB - 1) * SW + KW;
#pragma GCC unroll 32
    for (int col = 0; col < kCols; ++col, colp += t.in_pix_stride) {
#pragma GCC unroll 2
      for (int j = 0; j < kVecs; ++j) {
        const Vec v = load_column<kPartial, kChecked>(colp + j * V, iw0 + col, g.in_w, count);
#pragma GCC unroll 8
        for (int kw = 0; kw < KW; ++kw) {
          const int d = col - kw;
          if (d >= 0 && d % SW == 0 && d / SW < kB) sum[d / SW][j] = at::vec::fmadd(v, w[kw][j], sum[d / SW][j]);
        }
      }
    }
  }
  out_t* outp = t.out + ow * t.out_pix_stride + c;
  if (t.prefetch) {
#pragma GCC unroll 8
    for (int b = 0; b < kB; ++b) {
      if (!t.stream_stores) __builtin_prefetch(outp + (kDwPrefetchColumns + b) * t.out_pix_stride, 1, 2);
      if (t.prefetch_also)
        __builtin_prefetch(t.prefetch_also + (ow + kDwPrefetchColumns + b) * t.in_pix_stride + c, 0, 2);
    }
  }
#pragma GCC unroll 8
  for (int b = 0; b < kB; ++b, outp += t.out_pix_stride) {
#pragma GCC unroll 2
    for (int j = 0; j < kVecs; ++j) store_output<kPartial>(outp + j * V, epilogue(sum[b][j]), count, t.stream_stores);
  }
}

// kB outputs (ow .. ow + kB - 1) of output rows oh and oh + 1 for one channel vector, 3x3 stride S (1 or 2,
// both dimensions; dilation 1), both rows' kernel rows inside the input: the 3 + S input rows are each loaded
// once and feed both output rows (row oh reads input rows d = 0..2 of the block, row oh + 1 rows d = S..S+2).
template <typename in_t, typename out_t, int S, int kB, bool kPartial, bool kChecked, typename Epilogue, int kVecs = 1>
FUSEDOPS_ALWAYS_INLINE void row_pair_register_block(const DwNhwcRow<in_t, out_t>& t, const ConvGeometry& g, int64_t ow,
                                                    int64_t c, int64_t count, const Epilogue& epilogue) {
  using acc = acc_t<in_t>;
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  static_assert(kVecs == 1 || !kPartial, "only whole vectors run several at a time");
  constexpr int KH = 3, KW = 3, kCols = (kB - 1) * S + KW;
  Vec sum[2][kB][kVecs];
#pragma GCC unroll 2
  for (int j = 0; j < kVecs; ++j) {
    const Vec bias = t.bias ? load_buf<kPartial>(t.bias + c + j * V, count) : Vec(acc(0));
#pragma GCC unroll 8
    for (int b = 0; b < kB; ++b) sum[0][b][j] = sum[1][b][j] = bias;
  }
  // The kernel's taps: all nine in registers for the whole block where they fit beside the accumulators (AVX-512's
  // 32 registers), else each input row's kernel rows loaded as the row comes. Measured on the row kernel alone
  // (Intel Xeon, 2 threads, N=8 stride 1): C=32 112x112 403-405 us against 416-435 with per-row loads, C=144 56x56
  // 444-474 against 435-473.
  constexpr bool kAllTaps = (2 * kB + KH * KW) * kVecs + 2 <= kVectorRegisters;
  Vec w[KH][KW][kVecs];
  if constexpr (kAllTaps) {
#pragma GCC unroll 3
    for (int kh = 0; kh < KH; ++kh)
#pragma GCC unroll 3
      for (int kw = 0; kw < KW; ++kw)
#pragma GCC unroll 2
        for (int j = 0; j < kVecs; ++j)
          w[kh][kw][j] = load_buf<kPartial>(t.weight + (kh * KW + kw) * t.weight_ld + c + j * V, count);
  }
  const int64_t iw0 = ow * S - g.pad_w;
  const in_t* first_row = t.image + (t.oh * S - g.pad_h) * t.in_row_stride + iw0 * t.in_pix_stride + c;
#pragma GCC unroll 5
  for (int d = 0; d < KH + S; ++d) {
    const in_t* colp = first_row + d * t.in_row_stride;
    if (t.prefetch && d >= KH - S) {
      // The rows the previous pair did not read.
      const in_t* ahead = colp + kDwPrefetchColumns * S * t.in_pix_stride;
#pragma GCC unroll 8
      for (int col = 0; col < kB * S; ++col) __builtin_prefetch(ahead + col * t.in_pix_stride, 0, 2);
    }
    // Output row r reads this input row through kernel row d - r * S.
    if constexpr (!kAllTaps) {
#pragma GCC unroll 2
      for (int r = 0; r < 2; ++r) {
        const int kh = d - r * S;
        if (kh < 0 || kh >= KH) continue;
#pragma GCC unroll 3
        for (int kw = 0; kw < KW; ++kw)
#pragma GCC unroll 2
          for (int j = 0; j < kVecs; ++j)
            w[kh][kw][j] = load_buf<kPartial>(t.weight + (kh * KW + kw) * t.weight_ld + c + j * V, count);
      }
    }
#pragma GCC unroll 16
    for (int col = 0; col < kCols; ++col, colp += t.in_pix_stride) {
#pragma GCC unroll 2
      for (int j = 0; j < kVecs; ++j) {
        const Vec v = load_column<kPartial, kChecked>(colp + j * V, iw0 + col, g.in_w, count);
#pragma GCC unroll 2
        for (int r = 0; r < 2; ++r) {
          const int kh = d - r * S;
          if (kh < 0 || kh >= KH) continue;
#pragma GCC unroll 3
          for (int kw = 0; kw < KW; ++kw) {
            const int e = col - kw;
            if (e >= 0 && e % S == 0 && e / S < kB)
              sum[r][e / S][j] = at::vec::fmadd(v, w[kh][kw][j], sum[r][e / S][j]);
          }
        }
      }
    }
  }
#pragma GCC unroll 2
  for (int r = 0; r < 2; ++r) {
    out_t* outp = t.out + r * t.out_row_stride + ow * t.out_pix_stride + c;
    if (t.prefetch) {
#pragma GCC unroll 8
      for (int b = 0; b < kB; ++b) {
        if (!t.stream_stores) __builtin_prefetch(outp + (kDwPrefetchColumns + b) * t.out_pix_stride, 1, 2);
        if (t.prefetch_also) {
          __builtin_prefetch(
              t.prefetch_also + r * t.prefetch_also_row_stride + (ow + kDwPrefetchColumns + b) * t.in_pix_stride + c, 0,
              2);
        }
      }
    }
#pragma GCC unroll 8
    for (int b = 0; b < kB; ++b, outp += t.out_pix_stride) {
#pragma GCC unroll 2
      for (int j = 0; j < kVecs; ++j)
        store_output<kPartial>(outp + j * V, epilogue(sum[r][b][j]), count, t.stream_stores);
    }
  }
}

// Blocks of kB outputs of a row pair, halving kB for the rows' remainder, channels innermost (kVecs vectors at a
// time, then single ones).
template <typename in_t, typename out_t, int S, int kB, typename Epilogue, int kVecs = 1>
FUSEDOPS_ALWAYS_INLINE void row_pair_register_blocks(const DwNhwcRow<in_t, out_t>& t, const ConvGeometry& g, int64_t ow,
                                                     int64_t interior_begin, int64_t interior_end,
                                                     const Epilogue& epilogue) {
  constexpr int64_t V = at::vec::Vectorized<acc_t<in_t>>::size();
  for (; ow + kB <= g.out_w; ow += kB) {
    const bool checked = ow < interior_begin || ow + kB > interior_end;
    int64_t c = t.c_begin;
    if constexpr (kVecs > 1) {
      for (; c + kVecs * V <= t.c_end; c += kVecs * V) {
        if (checked)
          row_pair_register_block<in_t, out_t, S, kB, false, true, Epilogue, kVecs>(t, g, ow, c, V, epilogue);
        else
          row_pair_register_block<in_t, out_t, S, kB, false, false, Epilogue, kVecs>(t, g, ow, c, V, epilogue);
      }
    }
    for (; c + V <= t.c_end; c += V) {
      if (checked)
        row_pair_register_block<in_t, out_t, S, kB, false, true>(t, g, ow, c, V, epilogue);
      else
        row_pair_register_block<in_t, out_t, S, kB, false, false>(t, g, ow, c, V, epilogue);
    }
    if (c < t.c_end) row_pair_register_block<in_t, out_t, S, kB, true, true>(t, g, ow, c, t.c_end - c, epilogue);
  }
  if constexpr (kB > 1)
    row_pair_register_blocks<in_t, out_t, S, kB / 2, Epilogue, kVecs>(t, g, ow, interior_begin, interior_end, epilogue);
}

// One output pixel for one channel vector, any kernel/stride/dilation, with bounds checks along W.
template <typename in_t, typename out_t, bool kPartial, typename Epilogue>
FUSEDOPS_ALWAYS_INLINE void single_pixel(const DwNhwcRow<in_t, out_t>& t, const ConvGeometry& g, int kh_begin,
                                         int kh_end, int64_t ow, int64_t c, int64_t count, const Epilogue& epilogue) {
  using acc = acc_t<in_t>;
  using Vec = at::vec::Vectorized<acc>;
  Vec sum = t.bias ? load_buf<kPartial>(t.bias + c, count) : Vec(acc(0));
  const int64_t iw0 = ow * g.stride_w - g.pad_w;
  for (int kh = kh_begin; kh < kh_end; ++kh) {
    const int64_t ih = t.oh * g.stride_h - g.pad_h + kh * g.dilation_h;
    const in_t* row = t.image + ih * t.in_row_stride + c;
    const acc* wrow = t.weight + kh * g.kernel_w * t.weight_ld + c;
    for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
      const int64_t iw = iw0 + kw * g.dilation_w;
      if (iw < 0 || iw >= g.in_w) continue;
      sum = at::vec::fmadd(load_n<kPartial>(row + iw * t.in_pix_stride, count),
                           load_buf<kPartial>(wrow + kw * t.weight_ld, count), sum);
    }
  }
  store_n<kPartial>(t.out + ow * t.out_pix_stride + c, epilogue(sum), count);
}

// All channel vectors of one block of kB outputs, channels innermost so that the block's input pixels
// are read as contiguous runs (streams the prefetchers follow) rather than one vector per pixel at a time.
template <typename in_t, typename out_t, int KW, int SW, int kB, bool kChecked, typename Epilogue, int kVecs = 1>
FUSEDOPS_ALWAYS_INLINE void register_block_all_channels(const DwNhwcRow<in_t, out_t>& t, const ConvGeometry& g,
                                                        int kh_begin, int kh_end, int64_t ow,
                                                        const Epilogue& epilogue) {
  constexpr int64_t V = at::vec::Vectorized<acc_t<in_t>>::size();
  int64_t c = t.c_begin;
  if constexpr (kVecs > 1) {
    for (; c + kVecs * V <= t.c_end; c += kVecs * V)
      register_block<in_t, out_t, KW, SW, kB, false, kChecked, Epilogue, kVecs>(t, g, kh_begin, kh_end, ow, c, V,
                                                                                epilogue);
  }
  for (; c + V <= t.c_end; c += V)
    register_block<in_t, out_t, KW, SW, kB, false, kChecked>(t, g, kh_begin, kh_end, ow, c, V, epilogue);
  if (c < t.c_end)
    register_block<in_t, out_t, KW, SW, kB, true, kChecked>(t, g, kh_begin, kh_end, ow, c, t.c_end - c, epilogue);
}

// Blocks of kB outputs, halving kB for the row's remainder; border blocks take the checked variant.
template <typename in_t, typename out_t, int KW, int SW, int kB, typename Epilogue, int kVecs = 1>
FUSEDOPS_ALWAYS_INLINE void register_blocks(const DwNhwcRow<in_t, out_t>& t, const ConvGeometry& g, int kh_begin,
                                            int kh_end, int64_t ow, int64_t interior_begin, int64_t interior_end,
                                            const Epilogue& epilogue) {
  for (; ow + kB <= g.out_w; ow += kB) {
    if (ow >= interior_begin && ow + kB <= interior_end)
      register_block_all_channels<in_t, out_t, KW, SW, kB, false, Epilogue, kVecs>(t, g, kh_begin, kh_end, ow,
                                                                                   epilogue);
    else
      register_block_all_channels<in_t, out_t, KW, SW, kB, true, Epilogue, kVecs>(t, g, kh_begin, kh_end, ow, epilogue);
  }
  if constexpr (kB > 1)
    register_blocks<in_t, out_t, KW, SW, kB / 2, Epilogue, kVecs>(t, g, kh_begin, kh_end, ow, interior_begin,
                                                                  interior_end, epilogue);
}

// Rows 7 or 14 outputs wide (the 7x7 and 14x14 maps of late layers) run as blocks of 7 for kernels at
// least this wide, instead of 8 + 4 + 2 (or 4 + 2 + 1): per kernel row each block loads its kernel row's
// weights and its columns once, and the small blocks' few accumulators left the FMAs waiting on each
// other. Measured on the row kernel alone (one thread, 16 and 240 channels): 5x5 1.2-1.35x and 7x7
// 1.65-1.7x faster on 14-wide rows, 1.6x and 2.1x on 7-wide ones (on 28-wide rows 5x5 gained 1.3-1.6x but
// 7x7 lost, 0.9x, so wider rows keep blocks of 8). 3x3 rows keep 8 + 4 + 2 (their pairs take most rows).
constexpr int kSevenBlockMinKernel = 5;

template <typename in_t, typename out_t, int KW, int SW, typename Epilogue>
FUSEDOPS_NOINLINE void row_for_kernel_width(const DwNhwcRow<in_t, out_t>& t, const ConvGeometry& g,
                                            const Epilogue& epilogue) {
  constexpr int64_t V = at::vec::Vectorized<acc_t<in_t>>::size();
  // Kernel rows that fall inside the input for this output row.
  const int64_t ih0 = t.oh * g.stride_h - g.pad_h;
  int kh_begin = 0, kh_end = static_cast<int>(g.kernel_h);
  while (kh_begin < kh_end && ih0 + kh_begin * g.dilation_h < 0) ++kh_begin;
  while (kh_end > kh_begin && ih0 + (kh_end - 1) * g.dilation_h >= g.in_h) --kh_end;
  if constexpr (KW > 0) {
    if constexpr (KW >= kSevenBlockMinKernel && kDwBlock<acc_t<in_t>> == 8) {
      if (g.out_w % 7 == 0 && g.out_w < 16) {
        for (int64_t ow = 0; ow < g.out_w; ow += 7) {
          if (ow >= g.interior_ow_begin() && ow + 7 <= g.interior_ow_end())
            register_block_all_channels<in_t, out_t, KW, SW, 7, false>(t, g, kh_begin, kh_end, ow, epilogue);
          else
            register_block_all_channels<in_t, out_t, KW, SW, 7, true>(t, g, kh_begin, kh_end, ow, epilogue);
        }
        return;
      }
    }
    constexpr int kLine = kWholeLineVecs<in_t, out_t, Epilogue>;
    if constexpr (KW == 3 && kLine > 1) {
      if (whole_lines_apply(t)) {
        return register_blocks<in_t, out_t, KW, SW, kDwBlock<acc_t<in_t>> / kLine, Epilogue, kLine>(
            t, g, kh_begin, kh_end, 0, g.interior_ow_begin(), g.interior_ow_end(), epilogue);
      }
    }
    register_blocks<in_t, out_t, KW, SW, kDwBlock<acc_t<in_t>>>(t, g, kh_begin, kh_end, 0, g.interior_ow_begin(),
                                                                g.interior_ow_end(), epilogue);
  } else {
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      int64_t c = t.c_begin;
      for (; c + V <= t.c_end; c += V) single_pixel<in_t, out_t, false>(t, g, kh_begin, kh_end, ow, c, V, epilogue);
      if (c < t.c_end) single_pixel<in_t, out_t, true>(t, g, kh_begin, kh_end, ow, c, t.c_end - c, epilogue);
    }
  }
}

}  // namespace detail

// Computes output row t.oh, channels [t.c_begin, t.c_end), of a depthwise convolution with multiplier 1.
template <typename in_t, typename out_t, typename Epilogue = IdentityEpilogue>
FUSEDOPS_ALWAYS_INLINE void depthwise_nhwc_row(const DwNhwcRow<in_t, out_t>& t, const ConvGeometry& g,
                                               const Epilogue& epilogue = Epilogue()) {
  // Register-blocked interior kernels for the shapes mobile CNNs use; anything else runs the
  // per-pixel loop (still vectorised over channels).
  if (g.dilation_w == 1) {
    const int64_t kw = g.kernel_w, sw = g.stride_w;
#define FUSEDOPS_DW_CASE(KW, SW) \
  if (kw == KW && sw == SW) return detail::row_for_kernel_width<in_t, out_t, KW, SW>(t, g, epilogue);
    FUSEDOPS_DW_CASE(3, 1)
    FUSEDOPS_DW_CASE(3, 2)
    FUSEDOPS_DW_CASE(5, 1)
    FUSEDOPS_DW_CASE(5, 2)
    FUSEDOPS_DW_CASE(7, 1)
    FUSEDOPS_DW_CASE(7, 2)
#undef FUSEDOPS_DW_CASE
  }
  detail::row_for_kernel_width<in_t, out_t, 0, 1>(t, g, epilogue);
}

// Whether depthwise_nhwc_row_pair computes output rows oh and oh + 1 of g: 3x3, stride 1 or 2 (the same along
// H and W), dilation 1, both rows' kernel rows inside the input.
inline bool nhwc_row_pair_applies(const ConvGeometry& g, int64_t oh) {
  return g.kernel_h == 3 && g.kernel_w == 3 && (g.stride_h == 1 || g.stride_h == 2) && g.stride_w == g.stride_h &&
         g.dilation_h == 1 && g.dilation_w == 1 && oh >= g.interior_oh_begin() && oh + 2 <= g.interior_oh_end();
}

// The row pair's register blocks (depthwise_nhwc_row_pair), for one channel vector at a time.
// Stride 1: blocks of 4 outputs x 2 rows, 8 accumulators (a single row's blocks of 8 read 10 columns of 3 rows
// for 8 outputs, and their ~36 KiB per block of 192 channels outgrow the 32 KiB L1). Measured on the row kernels
// alone (2 threads, N=8): 1.19-1.25x faster than two single rows on MobileNet's stride-1 maps in cache (C=192
// 28x28, C=384/576 14x14, C=960 7x7; N=1 C=192 28x28 1.19x), 1.07-1.16x on streaming calls (C=32 112x112, C=96
// 56x56), 0.95-1.05x on C=144 56x56.
// Stride 2: blocks of 2 outputs x 2 rows (5 columns of 5 rows). Intel Xeon (2 MiB L2), N=8 C=96 112x112, 2
// threads: 660-760 us against 800-900 for single rows in blocks of 8 (4 x 2: 675-750, 8 x 2: 715; 2 x 1
// alone 944, 2 x 3 and 2 x 4 rows 760-930); 1 thread 1.29-1.51 ms against 1.54-1.71.
template <int S>
constexpr int kRowPairBlock = S == 1 ? 4 : 2;

namespace detail {

// The row pair's blocks for its stride, kVecs channel vectors at a time (kRowPairBlock / kVecs outputs).
template <int kVecs, typename in_t, typename out_t, typename Epilogue>
FUSEDOPS_ALWAYS_INLINE void row_pair_blocks(const DwNhwcRow<in_t, out_t>& t, const ConvGeometry& g,
                                            const Epilogue& epilogue) {
  if (g.stride_w == 2) {
    row_pair_register_blocks<in_t, out_t, 2, kRowPairBlock<2> / kVecs, Epilogue, kVecs>(t, g, 0, g.interior_ow_begin(),
                                                                                        g.interior_ow_end(), epilogue);
  } else {
    row_pair_register_blocks<in_t, out_t, 1, kRowPairBlock<1> / kVecs, Epilogue, kVecs>(t, g, 0, g.interior_ow_begin(),
                                                                                        g.interior_ow_end(), epilogue);
  }
}

}  // namespace detail

// Computes output rows t.oh and t.oh + 1 (at t.out and t.out + t.out_row_stride), channels
// [t.c_begin, t.c_end), where nhwc_row_pair_applies; prefetches (streaming calls) cover both rows, and
// prefetch_also (stride 1 only) two rows. Each of the block's 3 + stride input rows is loaded once for both
// output rows.
template <typename in_t, typename out_t, typename Epilogue = IdentityEpilogue>
FUSEDOPS_NOINLINE void depthwise_nhwc_row_pair(const DwNhwcRow<in_t, out_t>& t, const ConvGeometry& g,
                                               const Epilogue& epilogue = Epilogue()) {
  constexpr int kLine = kWholeLineVecs<in_t, out_t, Epilogue>;
  if constexpr (kLine > 1) {
    if (whole_lines_apply(t)) return detail::row_pair_blocks<kLine>(t, g, epilogue);
  }
  detail::row_pair_blocks<1>(t, g, epilogue);
}

// The output rows of an image in the groups the row kernels compute: pairs (depthwise_nhwc_row_pair)
// wherever 3x3 rows allow them, starting at the first row that allows one, the rows around
// them alone. Group j covers rows [2j - shift, 2j - shift + 2) clipped to the map when paired, row j
// otherwise. Groups are independent: callers may run them in any order or in parallel.
struct NhwcRowGroups {
  bool pairs = false;
  int64_t shift = 0;
  int64_t count = 0;
  int64_t out_h = 0;

  explicit NhwcRowGroups(const ConvGeometry& g)
      : pairs(nhwc_row_pair_applies(g, g.interior_oh_begin())),
        shift(pairs ? g.interior_oh_begin() % 2 : 0),
        count(pairs ? (g.out_h + shift + 1) / 2 : g.out_h),
        out_h(g.out_h) {}
  int64_t begin(int64_t j) const {
    return pairs ? std::max<int64_t>(2 * j - shift, 0) : j;
  }
  int64_t end(int64_t j) const {
    return pairs ? std::min(2 * j - shift + 2, out_h) : j + 1;
  }
  int64_t rows_per_group() const {
    return pairs ? 2 : 1;
  }
};

// Output rows [t.oh, end), row t.oh at t.out and each next one t.out_row_stride further: two at a time
// (depthwise_nhwc_row_pair) wherever the pair applies, the others one at a time.
template <typename in_t, typename out_t, typename Epilogue = IdentityEpilogue>
FUSEDOPS_ALWAYS_INLINE void depthwise_nhwc_rows(DwNhwcRow<in_t, out_t> t, const ConvGeometry& g, int64_t end,
                                                const Epilogue& epilogue = Epilogue()) {
  while (t.oh < end) {
    const bool pair = t.oh + 1 < end && nhwc_row_pair_applies(g, t.oh);
    if (pair)
      depthwise_nhwc_row_pair(t, g, epilogue);
    else
      depthwise_nhwc_row(t, g, epilogue);
    const int64_t done = pair ? 2 : 1;
    t.oh += done;
    t.out += done * t.out_row_stride;
  }
}

// Output rows of group j: t describes row 0 of the image's output (t.out, t.out_row_stride; t.oh is
// ignored).
template <typename in_t, typename out_t, typename Epilogue = IdentityEpilogue>
FUSEDOPS_ALWAYS_INLINE void depthwise_nhwc_row_group(DwNhwcRow<in_t, out_t> t, const ConvGeometry& g,
                                                     const NhwcRowGroups& groups, int64_t j,
                                                     const Epilogue& epilogue = Epilogue()) {
  t.oh = groups.begin(j);
  t.out += t.oh * t.out_row_stride;
  depthwise_nhwc_rows(t, g, groups.end(j), epilogue);
}

}  // namespace cpu
}  // namespace fusedops
