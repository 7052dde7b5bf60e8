// CPU kernels of fusedops::depthwise_conv2d and fusedops::_depthwise_conv2d_backward.
//
// Layouts are handled natively. Channels-last tensors run the NHWC row kernels (vectorised over channels,
// see cpu/depthwise_nhwc.h). NCHW float tensors on AVX-512 run through channels-last tiles
// (forward_nchw_tiled: groups of 16 channels transposed into cache-resident tiles for the row kernels, where
// nchw_tiles_apply) or as masked sweeps of each plane in place (cpu/masked_plane.h: stride 1 at the input's
// width, and stride 2); other NCHW calls run plane kernels vectorised along W over a padded,
// stride-phase-split copy of each plane (cpu/phase_plane.h). Stride-1 input gradients run as forward
// convolutions of grad_output with the rotated kernel (transposed_as_forward). Channels-last depth
// multipliers > 1 run a stride-generic scalar kernel. All accumulate in float (double for double inputs).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fusedops/activation.h"
#include "fusedops/conv_geometry.h"
#include "fusedops/cpu/batch_norm_rows.h"
#include "fusedops/cpu/depthwise_nhwc.h"
#include "fusedops/cpu/expanded_bands.h"
#include "fusedops/cpu/masked_plane.h"
#include "fusedops/cpu/phase_plane.h"
#include "fusedops/cpu/scratch.h"
#include "fusedops/cpu/finite.h"
#include "fusedops/cpu/streaming.h"
#include "fusedops/cpu/vec_io.h"

#include <functional>
#include <type_traits>
#include <vector>

namespace fusedops {
namespace cpu {
namespace {

using at::Tensor;

// Below this many multiply-adds a call runs on one thread: waking the pool costs more (~5-10 us).
constexpr int64_t kMinParallelMacs = 1 << 16;

int64_t grain_for(int64_t items, int64_t macs_per_item) {
  return std::max<int64_t>(1, kMinParallelMacs / std::max<int64_t>(1, macs_per_item));
}

int64_t taps(const ConvGeometry& g) {
  return g.kernel_h * g.kernel_w;
}

// Whether the channels-last gradient kernels below take whole cache lines of channels (two AVX2 vectors) where they
// would take one vector: float pixels a multiple of 2 KiB apart, whose rows and columns fall on a few L1 sets and evict
// each other before the second half of each line is read (whole_lines_apply in cpu/depthwise_nhwc.h, for the row
// kernels).
template <typename scalar_t>
inline bool depthwise_whole_lines_apply(int64_t channels) {
  return kWholeLineVecs<scalar_t, scalar_t, IdentityEpilogue> > 1 && rows_on_few_l1_sets<scalar_t>(channels);
}

// lay_out_taps of `weight` in the calling thread's scratch; read by all workers.
template <typename scalar_t>
const acc_t<scalar_t>* taps_by_channel(const Tensor& weight, const ConvGeometry& g, bool rotate) {
  using acc = acc_t<scalar_t>;
  const int64_t T = taps(g), OC = g.out_channels;
  acc* w = thread_scratch<acc>(T * OC + at::vec::Vectorized<acc>::size(), ScratchSlot::kWeights);
  const Tensor wc = weight.contiguous();
  lay_out_taps(wc.const_data_ptr<scalar_t>(), T, OC, rotate, w);
  return w;
}

// Stores `value` at `dst` unless it holds it already: the per-call bias below lives in the calling thread's scratch
// and is read by every worker (see forward_nhwc for what rewriting unchanged values costs).
template <typename T>
inline void store_if_changed(T* dst, T value) {
  if (*dst != value) *dst = value;
}

// Bias in the accumulation type (padded to whole vectors), or nullptr without one. Lives in the calling
// thread's scratch; read by all workers.
template <typename scalar_t>
const acc_t<scalar_t>* bias_as_acc(const c10::optional<Tensor>& bias, int64_t oc) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  using acc = acc_t<scalar_t>;
  acc* b = thread_scratch<acc>(oc + at::vec::Vectorized<acc>::size(), ScratchSlot::kBias);
  const Tensor bc = bias->contiguous();
  const scalar_t* p = bc.const_data_ptr<scalar_t>();
  for (int64_t i = 0; i < oc; ++i) store_if_changed(b + i, static_cast<acc>(p[i]));
  return b;
}

// ---------------------------------------------------------------------------------------------------
// Forward

// The row-kernel arguments for image n, channels [c_begin, c_end), of a multiplier-1 convolution between
// dense channels-last tensors `in` and `out` (weights as taps_by_channel lays them out), describing output
// row 0 (t.out, t.out_row_stride); `prefetch` and `prefetch_also` as in DwNhwcRow.
template <typename scalar_t>
inline DwNhwcRow<scalar_t, scalar_t> dense_nhwc_rows(const scalar_t* in, const acc_t<scalar_t>* w,
                                                     const acc_t<scalar_t>* bias, scalar_t* out, const ConvGeometry& g,
                                                     int64_t n, int64_t c_begin, int64_t c_end, bool prefetch = false,
                                                     const scalar_t* prefetch_also = nullptr) {
  const int64_t C = g.channels;
  DwNhwcRow<scalar_t, scalar_t> t =
      nhwc_rows<scalar_t, scalar_t>({in + n * g.in_h * g.in_w * C, g.in_w * C, C}, w, g.out_channels, bias,
                                    {out + n * g.out_h * g.out_w * C, g.out_w * C, C}, 0, c_begin, c_end);
  t.prefetch = prefetch;
  t.prefetch_also = prefetch_also;
  return t;
}

// Output row oh of image n (dense_nhwc_rows' arguments).
template <typename scalar_t>
inline void dense_nhwc_row(const scalar_t* in, const acc_t<scalar_t>* w, const acc_t<scalar_t>* bias, scalar_t* out,
                           const ConvGeometry& g, int64_t n, int64_t oh, int64_t c_begin, int64_t c_end,
                           bool prefetch = false, const scalar_t* prefetch_also = nullptr, bool stream_stores = false) {
  DwNhwcRow<scalar_t, scalar_t> t = dense_nhwc_rows(in, w, bias, out, g, n, c_begin, c_end, prefetch, prefetch_also);
  t.stream_stores = stream_stores;
  t.oh = oh;
  t.out += oh * t.out_row_stride;
  depthwise_nhwc_row(t, g);
}

// Also the stride-1 input gradient on its own (transposed geometry), which passes the backward's
// streaming threshold.
//
// `weight` (OC, 1, kH, kW), rotated by 180 degrees with `rotate` (the input gradient's transposed convolution), is
// laid out as taps (lay_out_taps) by each worker into its own scratch. Laid out once by the calling thread and read
// by every worker, the taps' cache lines moved between the cores on every call, and at batch 1 that traffic
// outweighed the second thread's work: C=1152 7x7 5x5 (115 KB of taps) took 73 us on 2 threads against 37 us on one
// (now 30 us, alternating two such layers as a model does), and 2 threads gained nothing up to batch 4.
template <typename scalar_t>
void forward_nhwc(const Tensor& input, const Tensor& weight, bool rotate, const acc_t<scalar_t>* bias, Tensor& out,
                  const ConvGeometry& g, int64_t streaming_bytes = forward_streaming_bytes()) {
  using acc = acc_t<scalar_t>;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const int64_t C = g.channels, T = taps(g);
  const Tensor weight_dense = weight.contiguous();
  const scalar_t* weight_data = weight_dense.const_data_ptr<scalar_t>();
  // Work items are (n, group of output rows (NhwcRowGroups: pairs of 3x3 rows), channel chunk).
  // Whole rows stream through memory best; with fewer than 4 groups per thread (the 7x7 maps of late
  // layers at batch 1), chunks of 64 channels balance the threads.
  const NhwcRowGroups row_groups(g);
  const int64_t row_items = g.batch * row_groups.count;
  const int64_t chunk = row_items >= 4 * at::get_num_threads() ? C : std::min<int64_t>(C, 64);
  const int64_t chunks = (C + chunk - 1) / chunk;
  const int64_t items = row_items * chunks;
  const int64_t macs = row_groups.rows_per_group() * g.out_w * chunk * taps(g);
  // Calls beyond the caches prefetch (whole rows in order: one channel chunk) and store past the caches
  // (streaming_stores_apply). Stride-2 rows do not prefetch: on the Intel Xeon (2 MiB L2) the prefetches made N=8
  // C=96 112x112 stride 2 0.81-0.89x of eager's time against 0.97x without them (hardware prefetchers follow its
  // two new input rows per output row); stride-1 rows gain (N=8 C=144 56x56: 467-516 us with, 558-596 without).
  const bool streams = streams_beyond_cache((input.numel() + out.numel()) * int64_t(sizeof(scalar_t)), streaming_bytes);
  const bool prefetch = chunks == 1 && streams && g.stride_h == 1;
  const bool stream_stores = streaming_stores_apply(o, C, g.out_w * C, streams);
  at::parallel_for(0, items, grain_for(items, macs), [&](int64_t begin, int64_t end) {
    acc* w = thread_scratch<acc>(T * g.out_channels + at::vec::Vectorized<acc>::size(), ScratchSlot::kWeights);
    lay_out_taps(weight_data, T, g.out_channels, rotate, w);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t item = i / chunks, n = item / row_groups.count;
      const int64_t c_begin = (i % chunks) * chunk;
      DwNhwcRow<scalar_t, scalar_t> t =
          dense_nhwc_rows<scalar_t>(in, w, bias, o, g, n, c_begin, std::min(C, c_begin + chunk), prefetch);
      t.stream_stores = stream_stores;
      depthwise_nhwc_row_group(t, g, row_groups, item % row_groups.count);
    }
    if (stream_stores) streaming_stores_fence();
  });
}

// kVecs vectors of outputs read from a phase plane starting at `src`: all taps accumulate in registers;
// tap offsets are precomputed so the loop holds no index arithmetic.
template <typename acc, typename out_t, int kVecs, bool kPartial>
inline void plane_run(const acc* src, const int64_t* offsets, int64_t taps, const acc* w, acc bias, out_t* out,
                      int64_t count) {
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  Vec sum[kVecs];
#pragma GCC unroll 8
  for (int v = 0; v < kVecs; ++v) sum[v] = Vec(bias);
  for (int64_t t = 0; t < taps; ++t) {
    const Vec wv(w[t]);
    const acc* tap = src + offsets[t];
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) sum[v] = at::vec::fmadd(Vec::loadu(tap + v * V), wv, sum[v]);
  }
#pragma GCC unroll 8
  for (int v = 0; v < kVecs; ++v) {
    if (kPartial && v == kVecs - 1)
      store_acc(out + v * V, sum[v], count);
    else
      store_acc(out + v * V, sum[v]);
  }
}

// Up to kMaxRunVecs vectors; `count` is the number of valid lanes of the last one when `partial`.
constexpr int64_t kMaxRunVecs = 8;  // 8 accumulators + weight + load fit even AVX2's 16 registers

template <typename acc, typename out_t>
inline void plane_run_vectors(int64_t vecs, bool partial, const acc* src, const int64_t* offsets, int64_t taps,
                              const acc* w, acc bias, out_t* out, int64_t count) {
#define FUSEDOPS_RUN_CASE(N)                                                                     \
  case N:                                                                                        \
    if (partial) return plane_run<acc, out_t, N, true>(src, offsets, taps, w, bias, out, count); \
    return plane_run<acc, out_t, N, false>(src, offsets, taps, w, bias, out, count);
  switch (vecs) {
    FUSEDOPS_RUN_CASE(1)
    FUSEDOPS_RUN_CASE(2)
    FUSEDOPS_RUN_CASE(3)
    FUSEDOPS_RUN_CASE(4)
    FUSEDOPS_RUN_CASE(5)
    FUSEDOPS_RUN_CASE(6)
    FUSEDOPS_RUN_CASE(7)
    FUSEDOPS_RUN_CASE(8)
    default: TORCH_INTERNAL_ASSERT(false, "plane_run_vectors: ", vecs, " vectors");
  }
#undef FUSEDOPS_RUN_CASE
}

// One output plane from a phase plane, row by row (any stride).
template <typename scalar_t>
void plane_forward_rows(const PhasePlane<acc_t<scalar_t>>& p, const ConvGeometry& g, const int64_t* offsets,
                        const acc_t<scalar_t>* w, acc_t<scalar_t> bias, scalar_t* out) {
  constexpr int64_t V = at::vec::Vectorized<acc_t<scalar_t>>::size();
  const int64_t row_vecs = (g.out_w + V - 1) / V;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    const acc_t<scalar_t>* row = p.data + oh * g.stride_h * p.pitch;
    scalar_t* out_row = out + oh * g.out_w;
    for (int64_t v0 = 0; v0 < row_vecs; v0 += kMaxRunVecs) {
      const int64_t vecs = std::min(kMaxRunVecs, row_vecs - v0);
      const int64_t last = g.out_w - (v0 + vecs - 1) * V;  // valid lanes of the run's last vector
      plane_run_vectors<acc_t<scalar_t>, scalar_t>(vecs, last < V, row + v0 * V, offsets, taps(g), w, bias,
                                                   out_row + v0 * V, last);
    }
  }
}

// Copies the out_w valid columns of each row of a flat run (row pitch `pitch`) into a dense plane.
template <typename scalar_t>
void compact_flat_run(const acc_t<scalar_t>* run, int64_t pitch, const ConvGeometry& g, scalar_t* out) {
  using Vec = at::vec::Vectorized<acc_t<scalar_t>>;
  constexpr int64_t V = Vec::size();
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    const acc_t<scalar_t>* src = run + oh * pitch;
    scalar_t* dst = out + oh * g.out_w;
    int64_t ow = 0;
    for (; ow + V <= g.out_w; ow += V) store_acc(dst + ow, Vec::loadu(src + ow));
    if (ow < g.out_w) store_acc(dst + ow, Vec::loadu(src + ow, g.out_w - ow), g.out_w - ow);
  }
}

// One output plane from a flat plane (stride 1): a single run over the whole plane, then compaction.
template <typename scalar_t>
void plane_forward_flat(const PhasePlane<acc_t<scalar_t>>& p, const ConvGeometry& g, const int64_t* offsets,
                        const acc_t<scalar_t>* w, acc_t<scalar_t> bias, acc_t<scalar_t>* run, scalar_t* out) {
  constexpr int64_t V = at::vec::Vectorized<acc_t<scalar_t>>::size();
  const int64_t vecs = (flat_run_length(g, p.pitch) + V - 1) / V;
  for (int64_t v0 = 0; v0 < vecs; v0 += kMaxRunVecs) {
    plane_run_vectors<acc_t<scalar_t>, acc_t<scalar_t>>(std::min(kMaxRunVecs, vecs - v0), false, p.data + v0 * V,
                                                        offsets, taps(g), w, bias, run + v0 * V, V);
  }
  compact_flat_run<scalar_t>(run, p.pitch, g, out);
}

// Runs plane(input plane, output channel, output plane) for every output plane of an NCHW depthwise
// convolution; the (n, c) input planes are split across threads.
template <typename scalar_t, typename PlaneFn>
void for_each_output_plane(const scalar_t* in, scalar_t* out, const ConvGeometry& g, int64_t macs_per_plane,
                           const PlaneFn& plane) {
  const int64_t items = g.batch * g.channels;
  at::parallel_for(0, items, grain_for(items, macs_per_plane), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / g.channels, c = i % g.channels;
      for (int64_t j = 0; j < g.multiplier; ++j) {
        const int64_t oc = c * g.multiplier + j;
        plane(in + i * g.in_h * g.in_w, oc, out + (n * g.out_channels + oc) * g.out_h * g.out_w);
      }
    }
  });
}

#if defined(CPU_CAPABILITY_AVX512)
// Whether an NCHW float convolution runs through channels-last tiles (forward_nchw_tiled) rather than the
// masked in-place sweeps. Measured against them (2 threads, batch 1 and 8, MobileNet/MnasNet layers):
// 5x5 and 7x7 kernels 1.1-2.2x faster through tiles except on 7x7 maps (0.8x); 3x3 stride 2 1.4-2.9x on
// maps up to 56x56 (0.86-1.4x on 112x112 maps, whose tiles outgrow L2); 3x3 stride 1 0.65-1.1x (with
// the tiles' rows in pairs, depthwise_nhwc_row_pair: 0.8-1.1x).
// Maps above 112x112 (not measured; their tiles, 16 x 4 bytes a pixel, outgrow L2 and stay in the
// per-thread scratch) keep the in-place sweeps.
bool nchw_tiles_apply(const ConvGeometry& g) {
  if (g.multiplier != 1 || g.dilation_h != 1 || g.dilation_w != 1 || g.in_h * g.in_w > 112 * 112) return false;
  // Only geometries the row micro-kernel register-blocks (kernel widths 3/5/7, strides 1/2).
  if (g.stride_w > 2 || g.kernel_w > 7) return false;
  if (g.kernel_h >= 5 && g.kernel_w >= 5) return g.in_h >= 2 * g.kernel_h - 1 && g.in_w >= 2 * g.kernel_w - 1;
  return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 2 && g.stride_w == 2 && g.in_h * g.in_w <= 56 * 56;
}

// NCHW float planes through the channels-last row micro-kernel: each (image, group of 16 channels) is
// transposed into a cache-resident channels-last tile (16x16 in-register transposes), computed row by row
// with aligned channel-vector loads, and transposed back into its 16 output planes. The masked sweeps
// instead load each tap's shifted window of a plane unaligned, nearly every load splitting a cache line.
void forward_nchw_tiled(const float* in, const float* w, const float* bias, float* out, const ConvGeometry& g) {
  constexpr int64_t V = at::vec::Vectorized<float>::size();
  const int64_t C = g.channels, in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  const int64_t groups = (C + V - 1) / V, items = g.batch * groups;
  const NhwcRowGroups row_groups(g);
  at::parallel_for(0, items, grain_for(items, out_plane * V * taps(g)), [&](int64_t begin, int64_t end) {
    float* tile_in = thread_scratch<float>(in_plane * V, ScratchSlot::kTile);
    float* tile_out = thread_scratch<float>(out_plane * V, ScratchSlot::kTileOut);
    // Lanes past the last channel compute on zeros and are not stored back; the taps and bias are set per group.
    DwNhwcRow<float, float> t = nhwc_rows<float, float>({tile_in, g.in_w * V, V}, nullptr, g.out_channels, nullptr,
                                                        {tile_out, g.out_w * V, V}, 0, 0, V);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / groups, c0 = (i % groups) * V, count = std::min(V, C - c0);
      if (count < V) std::fill(tile_in, tile_in + in_plane * V, 0.0f);
      at::vec::transpose_mxn<float>(in + (n * C + c0) * in_plane, in_plane, tile_in, V, static_cast<int>(count),
                                    static_cast<int>(in_plane));
      // taps_by_channel and bias_as_acc pad their buffers by a vector, so the lanes past C read in bounds.
      t.weight = w + c0;
      t.bias = bias ? bias + c0 : nullptr;
      for (int64_t j = 0; j < row_groups.count; ++j) depthwise_nhwc_row_group(t, g, row_groups, j);
      at::vec::transpose_mxn<float>(tile_out, V, out + (n * C + c0) * out_plane, out_plane, static_cast<int>(out_plane),
                                    static_cast<int>(count));
    }
  });
}
#endif

// NCHW forward, also of stride-1 input gradients (geometry from transposed_as_forward, rotated weights):
// float on AVX-512 through channels-last tiles (nchw_tiles_apply) or masked in-place sweeps; otherwise per
// (n, c) a padded plane of the input channel, then each of its `multiplier` output planes.
template <typename scalar_t>
void forward_nchw(const Tensor& input, const Tensor& weight, const acc_t<scalar_t>* bias, Tensor& out,
                  const ConvGeometry& g) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t V = at::vec::Vectorized<acc>::size();
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const Tensor wc = weight.contiguous();
  const scalar_t* wsrc = wc.const_data_ptr<scalar_t>();
  const int64_t T = taps(g), m = g.multiplier;
  const bool flat = flat_plane_applies(g);
  const int64_t items = g.batch * g.channels;
  const int64_t macs = g.out_h * g.out_w * T * m;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (nchw_tiles_apply(g)) {
      forward_nchw_tiled(in, taps_by_channel<float>(weight, g, false), bias, o, g);
      return;
    }
    if (masked_plane_applies(g)) {
      const MaskedPlaneTable& table = masked_plane_table(g);
      for_each_output_plane(in, o, g, macs, [&](const float* src, int64_t oc, float* dst) {
        masked_plane_forward(src, table, wsrc + oc * T, bias ? bias[oc] : 0.0f, dst);
      });
      return;
    }
    if (masked_stride2_applies(g)) {
      for_each_output_plane(in, o, g, macs, [&](const float* src, int64_t oc, float* dst) {
        masked_stride2_forward(src, g, wsrc + oc * T, bias ? bias[oc] : 0.0f, dst);
      });
      return;
    }
  }
#endif
  at::parallel_for(0, items, grain_for(items, macs), [&](int64_t begin, int64_t end) {
    PhasePlane<acc> p = phase_plane_shape<acc>(g, V, flat);
    p.data = thread_scratch<acc>(p.size, ScratchSlot::kPlane);
    acc* run = flat ? thread_scratch<acc>((flat_run_length(g, p.pitch) + V - 1) / V * V, ScratchSlot::kRun) : nullptr;
    acc* w = thread_scratch<acc>(T, ScratchSlot::kTapWeights);
    int64_t* offsets = thread_scratch<int64_t>(T, ScratchSlot::kOffsets);
    phase_plane_tap_offsets(p, g, offsets);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / g.channels, c = i % g.channels;
      fill_phase_plane(p, g, in + i * g.in_h * g.in_w, g.in_w);
      for (int64_t j = 0; j < m; ++j) {
        const int64_t oc = c * m + j;
        for (int64_t t = 0; t < T; ++t) w[t] = static_cast<acc>(wsrc[oc * T + t]);
        scalar_t* dst = o + (n * g.out_channels + oc) * g.out_h * g.out_w;
        if (flat)
          plane_forward_flat<scalar_t>(p, g, offsets, w, bias ? bias[oc] : acc(0), run, dst);
        else
          plane_forward_rows<scalar_t>(p, g, offsets, w, bias ? bias[oc] : acc(0), dst);
      }
    }
  });
}

// Any layout, any multiplier: direct loops over strided tensors. Used for channels-last with multiplier > 1.
template <typename scalar_t>
void forward_generic(const Tensor& input, const Tensor& weight, const acc_t<scalar_t>* bias, Tensor& out,
                     const ConvGeometry& g) {
  using acc = acc_t<scalar_t>;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const Tensor wc = weight.contiguous();
  const scalar_t* wsrc = wc.const_data_ptr<scalar_t>();
  const auto is = input.strides();
  const auto os = out.strides();
  const int64_t T = taps(g);
  const int64_t items = g.batch * g.out_channels;
  at::parallel_for(0, items, grain_for(items, g.out_h * g.out_w * T), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / g.out_channels, oc = i % g.out_channels, c = oc / g.multiplier;
      const scalar_t* ip = in + n * is[0] + c * is[1];
      const scalar_t* wp = wsrc + oc * T;
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          acc sum = bias ? bias[oc] : acc(0);
          for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
            const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dilation_h;
            if (ih < 0 || ih >= g.in_h) continue;
            for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
              const int64_t iw = ow * g.stride_w - g.pad_w + kw * g.dilation_w;
              if (iw < 0 || iw >= g.in_w) continue;
              sum += static_cast<acc>(ip[ih * is[2] + iw * is[3]]) * static_cast<acc>(wp[kh * g.kernel_w + kw]);
            }
          }
          o[n * os[0] + oc * os[1] + oh * os[2] + ow * os[3]] = static_cast<scalar_t>(sum);
        }
      }
    }
  });
}

Tensor depthwise_conv2d_cpu(const Tensor& input_, const Tensor& weight, const c10::optional<Tensor>& bias,
                            at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const ConvGeometry g = depthwise_geometry(input_, weight, bias, stride, padding, dilation);
  TORCH_CHECK(input_.device().is_cpu(), "fusedops: depthwise_conv2d CPU kernel got input on ", input_.device());
  const at::MemoryFormat fmt = output_memory_format(input_);
  const Tensor input = input_.contiguous(fmt);
  Tensor out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "depthwise_conv2d_cpu", [&] {
    const acc_t<scalar_t>* bp = bias_as_acc<scalar_t>(bias, g.out_channels);
    if (!all_finite(weight)) {
      // The row and plane kernels read the padding as zeros (cpu/finite.h): the direct loops skip it.
      forward_generic<scalar_t>(input, weight, bp, out, g);
    } else if (fmt == at::MemoryFormat::ChannelsLast && g.multiplier == 1) {
      forward_nhwc<scalar_t>(input, weight, false, bp, out, g);
    } else if (fmt == at::MemoryFormat::Contiguous) {
      forward_nchw<scalar_t>(input, weight, bp, out, g);
    } else {
      forward_generic<scalar_t>(input, weight, bp, out, g);
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Backward

// For each input index i along one dimension, the (kernel index, output index) pairs that read it:
// o * stride - pad + k * dilation == i with 0 <= o < out. Stored CSR-style: pairs of i in
// [start[i], start[i + 1]).
struct TapLists {
  std::vector<int64_t> start, kernel, output;

  TapLists(int64_t in, int64_t out, int64_t kernel_size, int64_t stride, int64_t pad, int64_t dilation) {
    start.assign(in + 1, 0);
    for (int64_t i = 0; i < in; ++i) {
      for (int64_t k = 0; k < kernel_size; ++k) {
        const int64_t y = i + pad - k * dilation;
        if (y < 0 || y % stride || y / stride >= out) continue;
        kernel.push_back(k);
        output.push_back(y / stride);
      }
      start[i + 1] = static_cast<int64_t>(kernel.size());
    }
  }
};

// kVecs channel vectors (from c) of one input pixel's gradient: the taps that read the pixel come from
// the row list [r0, r1) and column list [q0, q1); accumulators stay in registers across taps.
template <typename scalar_t, int kVecs, bool kPartial>
inline void gi_nhwc_pixel(const scalar_t* go_n, const acc_t<scalar_t>* w, const TapLists& rows, int64_t r0, int64_t r1,
                          const TapLists& cols, int64_t q0, int64_t q1, const ConvGeometry& g, int64_t c, int64_t count,
                          scalar_t* dst) {
  using Vec = AccVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  const int64_t C = g.channels;
  Vec sum[kVecs];
#pragma GCC unroll 8
  for (int v = 0; v < kVecs; ++v) sum[v] = Vec(0);
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* go_row = go_n + rows.output[r] * g.out_w * C + c;
    const acc_t<scalar_t>* w_row = w + rows.kernel[r] * g.kernel_w * C + c;
    for (int64_t q = q0; q < q1; ++q) {
      const scalar_t* src = go_row + cols.output[q] * C;
      const acc_t<scalar_t>* wp = w_row + cols.kernel[q] * C;
#pragma GCC unroll 8
      for (int v = 0; v < kVecs; ++v) {
        const bool part = kPartial && v == kVecs - 1;
        sum[v] = at::vec::fmadd(part ? load_acc(src + v * V, count) : load_acc(src + v * V),
                                part ? Vec::loadu(wp + v * V, count) : Vec::loadu(wp + v * V), sum[v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < kVecs; ++v) {
    if (kPartial && v == kVecs - 1)
      store_acc(dst + c + v * V, sum[v], count);
    else
      store_acc(dst + c + v * V, sum[v]);
  }
}

// 3x3, stride 2, dilation 1 (every stride-2 MobileNet layer): input row ih is read by kernel rows kh with
// ih + pad - kh even, i.e. one kernel row (kh = 1) or two (kh = 0 and 2), and likewise along W. Per
// channel vector the (up to) six weights of the row's kernel rows stay in registers while the row is
// swept; each pixel is one or two grad_output loads per kernel row, so the input gradient costs about
// the forward (the general gather walks tap lists per pixel and reloads weights: ~3.4x the forward).
bool grad_input_is_3x3_stride2(const ConvGeometry& g) {
  return g.kernel_h == 3 && g.kernel_w == 3 && g.stride_h == 2 && g.stride_w == 2 && g.dilation_h == 1 &&
         g.dilation_w == 1 && g.multiplier == 1;
}

// One input column iw of the row, any position (bounds-checked): columns with iw + pad odd read kernel
// column 1 of output column (iw + pad - 1) / 2; even ones kernel columns 0 and 2 of output columns
// (iw + pad) / 2 and the one before.
template <typename scalar_t, int kRows, bool kPartial>
inline void input_grad_3x3_stride2_column(const scalar_t* const* go_rows, const AccVec<scalar_t> (*w)[3],
                                          const ConvGeometry& g, int64_t iw, int64_t c, int64_t count,
                                          scalar_t* gi_row) {
  using Vec = AccVec<scalar_t>;
  const int64_t C = g.channels, u = iw + g.pad_w;
  Vec sum(acc_t<scalar_t>(0));
  const int64_t ow = u / 2;
  if (u & 1) {
    if (ow < g.out_w) {
      for (int r = 0; r < kRows; ++r)
        sum = at::vec::fmadd(load_n<kPartial>(go_rows[r] + ow * C + c, count), w[r][1], sum);
    }
  } else {
    if (ow < g.out_w) {
      for (int r = 0; r < kRows; ++r)
        sum = at::vec::fmadd(load_n<kPartial>(go_rows[r] + ow * C + c, count), w[r][0], sum);
    }
    if (ow >= 1 && ow - 1 < g.out_w) {
      for (int r = 0; r < kRows; ++r)
        sum = at::vec::fmadd(load_n<kPartial>(go_rows[r] + (ow - 1) * C + c, count), w[r][2], sum);
    }
  }
  store_n<kPartial>(gi_row + iw * C + c, sum, count);
}

// kVecs channel vectors (c, c + V, ...; more than one only whole) of one input row; w holds each vector's kRows
// kernel rows of taps, vector v's at w[v * kRows]. Interior columns go in pairs (iw with iw + pad odd, then iw + 1),
// which read output columns a and a + 1 only: gi[iw] = g[a] w1, gi[iw + 1] = g[a + 1] w0 + g[a] w2 per
// kernel row, with g[a + 1] carried over as the next pair's g[a]. Edges take the checked column.
// `prefetch` (streaming calls, see streams_beyond_cache): the grad_output and input-gradient lines
// kDwPrefetchColumns output columns ahead are prefetched into L2.
template <typename scalar_t, int kRows, bool kPartial, int kVecs = 1>
inline void input_grad_3x3_stride2_row(const scalar_t* const* go_rows, const AccVec<scalar_t> (*w)[3],
                                       const ConvGeometry& g, int64_t c, int64_t count, scalar_t* gi_row,
                                       bool prefetch) {
  using Vec = AccVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  static_assert(kVecs == 1 || !kPartial, "only whole vectors run several at a time");
  const int64_t C = g.channels;
  int64_t iw = 0;
  if (((iw + g.pad_w) & 1) == 0) {
    for (int v = 0; v < kVecs; ++v)
      input_grad_3x3_stride2_column<scalar_t, kRows, kPartial>(go_rows, w + v * kRows, g, iw, c + v * V, count, gi_row);
    ++iw;
  }
  int64_t a = (iw + g.pad_w - 1) / 2;
  if (iw + 1 < g.in_w && a + 1 < g.out_w) {
    Vec ga[kVecs][kRows];
#pragma GCC unroll 2
    for (int v = 0; v < kVecs; ++v)
      for (int r = 0; r < kRows; ++r) ga[v][r] = load_n<kPartial>(go_rows[r] + a * C + c + v * V, count);
    for (; iw + 1 < g.in_w && a + 1 < g.out_w; iw += 2, ++a) {
      if (prefetch) {
        for (int r = 0; r < kRows; ++r) __builtin_prefetch(go_rows[r] + (a + 1 + kDwPrefetchColumns) * C + c, 0, 2);
        __builtin_prefetch(gi_row + (iw + 2 * kDwPrefetchColumns) * C + c, 1, 2);
        __builtin_prefetch(gi_row + (iw + 2 * kDwPrefetchColumns + 1) * C + c, 1, 2);
      }
#pragma GCC unroll 2
      for (int v = 0; v < kVecs; ++v) {
        Vec odd(acc_t<scalar_t>(0)), even(acc_t<scalar_t>(0));
#pragma GCC unroll 2
        for (int r = 0; r < kRows; ++r) {
          const Vec gb = load_n<kPartial>(go_rows[r] + (a + 1) * C + c + v * V, count);
          odd = at::vec::fmadd(ga[v][r], w[v * kRows + r][1], odd);
          even = at::vec::fmadd(gb, w[v * kRows + r][0], at::vec::fmadd(ga[v][r], w[v * kRows + r][2], even));
          ga[v][r] = gb;
        }
        store_n<kPartial>(gi_row + iw * C + c + v * V, odd, count);
        store_n<kPartial>(gi_row + (iw + 1) * C + c + v * V, even, count);
      }
    }
  }
  for (; iw < g.in_w; ++iw) {
    for (int v = 0; v < kVecs; ++v)
      input_grad_3x3_stride2_column<scalar_t, kRows, kPartial>(go_rows, w + v * kRows, g, iw, c + v * V, count, gi_row);
  }
}

template <typename scalar_t, int kRows>
inline void input_grad_3x3_stride2_rows(const scalar_t* const* go_rows, const int64_t* kernel_rows,
                                        const acc_t<scalar_t>* w, const ConvGeometry& g, scalar_t* gi_row,
                                        bool prefetch) {
  using Vec = AccVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  const int64_t C = g.channels;
  int64_t c = 0;
  if (depthwise_whole_lines_apply<scalar_t>(C)) {
    for (; c + 2 * V <= C; c += 2 * V) {
      Vec wv[2 * kRows][3];
      for (int v = 0; v < 2; ++v)
        for (int r = 0; r < kRows; ++r)
          for (int kw = 0; kw < 3; ++kw)
            wv[v * kRows + r][kw] = Vec::loadu(w + (kernel_rows[r] * 3 + kw) * C + c + v * V);
      input_grad_3x3_stride2_row<scalar_t, kRows, false, 2>(go_rows, wv, g, c, V, gi_row, prefetch);
    }
  }
  for (; c < C; c += V) {
    const int64_t count = std::min(V, C - c);
    Vec wv[kRows][3];
    for (int r = 0; r < kRows; ++r)
      for (int kw = 0; kw < 3; ++kw) wv[r][kw] = Vec::loadu(w + (kernel_rows[r] * 3 + kw) * C + c, count);
    if (count < V)
      input_grad_3x3_stride2_row<scalar_t, kRows, true>(go_rows, wv, g, c, count, gi_row, prefetch);
    else
      input_grad_3x3_stride2_row<scalar_t, kRows, false>(go_rows, wv, g, c, count, gi_row, prefetch);
  }
}

template <typename scalar_t>
void grad_input_nhwc_3x3_stride2(const Tensor& grad_out, const acc_t<scalar_t>* w, Tensor& grad_in,
                                 const ConvGeometry& g) {
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_in.mutable_data_ptr<scalar_t>();
  const int64_t C = g.channels;
  const int64_t items = g.batch * g.in_h;
  // Plain stores: streaming ones (as the row kernels') took N=8 C=96 112x112 from ~1000 to ~1500 us, this
  // sweep writing one vector per pixel across the row before the next channel vector.
  const bool prefetch = streams_beyond_cache((grad_out.numel() + grad_in.numel()) * int64_t(sizeof(scalar_t)),
                                             backward_streaming_bytes());
  at::parallel_for(0, items, grain_for(items, g.in_w * C * 4), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.in_h, ih = item % g.in_h;
      // The kernel rows that read input row ih, and the grad_output rows they come from.
      const scalar_t* go_rows[2];
      int64_t kernel_rows[2];
      int rows = 0;
      for (int64_t kh = 0; kh < 3; ++kh) {
        const int64_t t = ih + g.pad_h - kh;
        if (t >= 0 && t % 2 == 0 && t / 2 < g.out_h) {
          go_rows[rows] = go + (n * g.out_h + t / 2) * g.out_w * C;
          kernel_rows[rows++] = kh;
        }
      }
      scalar_t* gi_row = gi + (n * g.in_h + ih) * g.in_w * C;
      if (rows == 2)
        input_grad_3x3_stride2_rows<scalar_t, 2>(go_rows, kernel_rows, w, g, gi_row, prefetch);
      else if (rows == 1)
        input_grad_3x3_stride2_rows<scalar_t, 1>(go_rows, kernel_rows, w, g, gi_row, prefetch);
      else
        std::fill(gi_row, gi_row + g.in_w * C, scalar_t(0));  // no output row reads this input row
    }
  });
}

// Input gradient by gathering, for any stride (the stride-1 case runs as a forward convolution):
// per input pixel, the taps that read it (precomputed per row and column), channel vectors innermost.
template <typename scalar_t>
void grad_input_nhwc_gather(const Tensor& grad_out, const acc_t<scalar_t>* w, Tensor& grad_in, const ConvGeometry& g) {
  constexpr int64_t V = AccVec<scalar_t>::size();
  constexpr int64_t kMaxVecs = 8;
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_in.mutable_data_ptr<scalar_t>();
  const int64_t C = g.channels, T = taps(g);
  const TapLists rows(g.in_h, g.out_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
  const TapLists cols(g.in_w, g.out_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
  const int64_t items = g.batch * g.in_h;
  at::parallel_for(0, items, grain_for(items, g.in_w * C * T), [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.in_h, ih = item % g.in_h;
      const scalar_t* go_n = go + n * g.out_h * g.out_w * C;
      const int64_t r0 = rows.start[ih], r1 = rows.start[ih + 1];
      for (int64_t iw = 0; iw < g.in_w; ++iw) {
        scalar_t* dst = gi + ((n * g.in_h + ih) * g.in_w + iw) * C;
        const int64_t q0 = cols.start[iw], q1 = cols.start[iw + 1];
        for (int64_t c = 0; c < C; c += kMaxVecs * V) {
          const int64_t vecs = std::min(kMaxVecs, (C - c + V - 1) / V);
          const int64_t last = C - c - (vecs - 1) * V;
#define FUSEDOPS_GI_CASE(N)                                                                    \
  case N:                                                                                      \
    if (last < V)                                                                              \
      gi_nhwc_pixel<scalar_t, N, true>(go_n, w, rows, r0, r1, cols, q0, q1, g, c, last, dst);  \
    else                                                                                       \
      gi_nhwc_pixel<scalar_t, N, false>(go_n, w, rows, r0, r1, cols, q0, q1, g, c, last, dst); \
    break;
          switch (vecs) {
            FUSEDOPS_GI_CASE(1)
            FUSEDOPS_GI_CASE(2)
            FUSEDOPS_GI_CASE(3)
            FUSEDOPS_GI_CASE(4)
            FUSEDOPS_GI_CASE(5)
            FUSEDOPS_GI_CASE(6)
            FUSEDOPS_GI_CASE(7)
            FUSEDOPS_GI_CASE(8)
          }
#undef FUSEDOPS_GI_CASE
        }
      }
    }
  });
}

// Adds `v` to the accumulation-type vector at p (buffers padded to whole vectors).
template <typename acc>
inline void add_into(acc* p, const at::vec::Vectorized<acc>& v) {
  (at::vec::Vectorized<acc>::loadu(p) + v).store(p);
}

// Weight-gradient contributions of G consecutive kernel rows for one output row and one channel vector:
// dst[(r * KW + kw) * ld] += sum over ow of grad_out[ow] * irows[r][ow*stride - pad + kw]. One grad load
// feeds G*KW independent accumulators (enough to hide FMA latency); interior columns slide a window of
// input vectors per kernel row (SW new loads per output instead of KW); border columns, after them, are
// bounds-checked. The accumulators are never addressed through a pointer or a reference (a border lambda
// capturing them made GCC keep them in memory and store all of them back every column: ~1.6x slower).
// `prefetch` (streaming calls): the interior sweep prefetches into L2 the grad_output and input
// columns kDwPrefetchColumns output columns ahead. kVecs channel vectors at a time (more than one only whole:
// gw_whole_lines_apply).
template <typename scalar_t, int KW, int SW, int G, bool kPartial, int kVecs = 1>
FUSEDOPS_ALWAYS_INLINE void gw_nhwc_kernel_rows(const scalar_t* gorow, const scalar_t* const* irows, int64_t pix,
                                                const ConvGeometry& g, int64_t ib, int64_t ie, int64_t count,
                                                acc_t<scalar_t>* dst, int64_t ld, bool prefetch) {
  using Vec = AccVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  static_assert(kVecs == 1 || !kPartial, "only whole vectors run several at a time");
  Vec acc[G][KW][kVecs];  // local accumulators, so they live in registers
#pragma GCC unroll 8
  for (int r = 0; r < G; ++r)
#pragma GCC unroll 8
    for (int kw = 0; kw < KW; ++kw)
#pragma GCC unroll 2
      for (int v = 0; v < kVecs; ++v) acc[r][kw][v] = Vec(0);
  if (ib < ie) {
    Vec win[G][KW][kVecs];
    const int64_t start = (ib * SW - g.pad_w) * pix;
#pragma GCC unroll 8
    for (int r = 0; r < G; ++r)
#pragma GCC unroll 8
      for (int j = 0; j < KW; ++j)
#pragma GCC unroll 2
        for (int v = 0; v < kVecs; ++v) win[r][j][v] = load_n<kPartial>(irows[r] + start + j * pix + v * V, count);
    for (int64_t ow = ib, offset = start;; ++ow) {
      if (prefetch) {
        __builtin_prefetch(gorow + (ow + kDwPrefetchColumns) * pix, 0, 2);
#pragma GCC unroll 8
        for (int r = 0; r < G; ++r)
#pragma GCC unroll 2
          for (int q = 0; q < SW; ++q)
            __builtin_prefetch(irows[r] + offset + (kDwPrefetchColumns * SW + q) * pix, 0, 2);
      }
#pragma GCC unroll 2
      for (int v = 0; v < kVecs; ++v) {
        const Vec gv = load_n<kPartial>(gorow + ow * pix + v * V, count);
#pragma GCC unroll 8
        for (int r = 0; r < G; ++r)
#pragma GCC unroll 8
          for (int kw = 0; kw < KW; ++kw) acc[r][kw][v] = at::vec::fmadd(gv, win[r][kw][v], acc[r][kw][v]);
      }
      if (ow + 1 >= ie) break;
      offset += SW * pix;
#pragma GCC unroll 8
      for (int r = 0; r < G; ++r)
#pragma GCC unroll 8
        for (int j = 0; j < KW; ++j)
#pragma GCC unroll 2
          for (int v = 0; v < kVecs; ++v)
            win[r][j][v] =
                j + SW < KW ? win[r][j + SW][v] : load_n<kPartial>(irows[r] + offset + j * pix + v * V, count);
    }
  }
  // Border columns: [0, ib) and [max(ie, ib), out_w).
  const int64_t left_end = std::min(ib, g.out_w);
  for (int64_t ow = 0; ow < g.out_w; ++ow) {
    if (ow == left_end) ow = std::max({ie, ib, left_end});
    if (ow >= g.out_w) break;
#pragma GCC unroll 2
    for (int v = 0; v < kVecs; ++v) {
      const Vec gv = load_n<kPartial>(gorow + ow * pix + v * V, count);
#pragma GCC unroll 8
      for (int kw = 0; kw < KW; ++kw) {
        const int64_t iw = ow * SW - g.pad_w + kw;
        if (iw < 0 || iw >= g.in_w) continue;
#pragma GCC unroll 8
        for (int r = 0; r < G; ++r)
          acc[r][kw][v] = at::vec::fmadd(gv, load_n<kPartial>(irows[r] + iw * pix + v * V, count), acc[r][kw][v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < G; ++r)
#pragma GCC unroll 8
    for (int kw = 0; kw < KW; ++kw)
#pragma GCC unroll 2
      for (int v = 0; v < kVecs; ++v) add_into(dst + (r * KW + kw) * ld + v * V, acc[r][kw][v]);
}

// Kernel rows [0, rows) in register groups: G * KW accumulators plus G * KW window vectors must fit the
// register file, so 3 rows at a time for 3-wide kernels, 2 for 5-wide, 1 for 7-wide (and for whole lines, kVecs 2).
template <typename scalar_t, int KW, int SW, bool kPartial, int kVecs = 1>
inline void gw_nhwc_kernel_row_groups(const scalar_t* gorow, const scalar_t* const* irows, int64_t rows, int64_t pix,
                                      const ConvGeometry& g, int64_t ib, int64_t ie, int64_t count,
                                      acc_t<scalar_t>* dst, int64_t ld, bool prefetch) {
  constexpr int kMaxG = kVecs > 1 ? 1 : (KW <= 3 ? 3 : (KW <= 5 ? 2 : 1));
  int64_t r = 0;
  for (; r + kMaxG <= rows; r += kMaxG)
    gw_nhwc_kernel_rows<scalar_t, KW, SW, kMaxG, kPartial, kVecs>(gorow, irows + r, pix, g, ib, ie, count,
                                                                  dst + r * KW * ld, ld, prefetch);
  for (; r < rows; ++r)
    gw_nhwc_kernel_rows<scalar_t, KW, SW, 1, kPartial, kVecs>(gorow, irows + r, pix, g, ib, ie, count,
                                                              dst + r * KW * ld, ld, prefetch);
}

// Same contributions for any kernel width, stride and dilation, one kernel row at a time.
template <typename scalar_t, bool kPartial>
inline void gw_nhwc_kernel_row_generic(const scalar_t* gorow, const scalar_t* irow, int64_t pix, const ConvGeometry& g,
                                       int64_t count, acc_t<scalar_t>* dst, int64_t ld) {
  for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
    AccVec<scalar_t> sum(0);
    const int64_t off = kw * g.dilation_w - g.pad_w;
    const int64_t ow0 = off >= 0 ? 0 : (-off + g.stride_w - 1) / g.stride_w;
    const int64_t ow1 = g.in_w - 1 - off < 0 ? 0 : std::min(g.out_w, (g.in_w - 1 - off) / g.stride_w + 1);
    for (int64_t ow = ow0; ow < ow1; ++ow)
      sum = at::vec::fmadd(load_n<kPartial>(gorow + ow * pix, count),
                           load_n<kPartial>(irow + (ow * g.stride_w + off) * pix, count), sum);
    add_into(dst + kw * ld, sum);
  }
}

// Contributions of the kernel rows whose input rows are irows[0 .. rows) (consecutive kernel rows;
// dst points at the first one's taps).
template <typename scalar_t, bool kPartial>
inline void gw_nhwc_rows(const scalar_t* gorow, const scalar_t* const* irows, int64_t rows, int64_t pix,
                         const ConvGeometry& g, int64_t ib, int64_t ie, int64_t count, acc_t<scalar_t>* dst, int64_t ld,
                         bool prefetch) {
  if (g.dilation_w == 1) {
#define FUSEDOPS_GW_CASE(KW, SW)                                                                                     \
  if (g.kernel_w == KW && g.stride_w == SW)                                                                          \
    return gw_nhwc_kernel_row_groups<scalar_t, KW, SW, kPartial>(gorow, irows, rows, pix, g, ib, ie, count, dst, ld, \
                                                                 prefetch);
    FUSEDOPS_GW_CASE(3, 1)
    FUSEDOPS_GW_CASE(3, 2)
    FUSEDOPS_GW_CASE(5, 1)
    FUSEDOPS_GW_CASE(5, 2)
    FUSEDOPS_GW_CASE(7, 1)
    FUSEDOPS_GW_CASE(7, 2)
#undef FUSEDOPS_GW_CASE
  }
  for (int64_t r = 0; r < rows; ++r)
    gw_nhwc_kernel_row_generic<scalar_t, kPartial>(gorow, irows[r], pix, g, count, dst + r * g.kernel_w * ld, ld);
}

// Whether grad_weight_nhwc_row takes the weight gradient of whole cache lines (two AVX2 vectors of channels, one
// kernel row at a time) instead of one vector of three kernel rows: depthwise_whole_lines_apply (512, 1024...
// channels), 3x3, stride 1 or 2 along W, dilation 1.
template <typename scalar_t>
inline bool gw_whole_lines_apply(const ConvGeometry& g) {
  return depthwise_whole_lines_apply<scalar_t>(g.channels) && g.kernel_h == 3 && g.kernel_w == 3 &&
         (g.stride_w == 1 || g.stride_w == 2) && g.dilation_w == 1;
}

// Weight (and bias) gradient contributions of output row r (= n * out_h + oh), channels-last, added to
// `part` ([taps + 1][ld], the last row the bias); `prefetch` as in gw_nhwc_kernel_rows.
template <typename scalar_t>
void grad_weight_nhwc_row(const scalar_t* go, const scalar_t* in, int64_t r, bool with_weight, bool with_bias,
                          const ConvGeometry& g, acc_t<scalar_t>* part, int64_t ld, bool prefetch = false) {
  using acc = acc_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  const int64_t C = g.channels, T = taps(g);
  const int64_t ib = g.interior_ow_begin(), ie = g.interior_ow_end();
  const int64_t n = r / g.out_h, oh = r % g.out_h;
  const scalar_t* gorow = go + r * g.out_w * C;
  // Kernel rows whose input row exists for this output row: a contiguous range [kh_begin, kh_end).
  const int64_t ih0 = oh * g.stride_h - g.pad_h;
  int64_t kh_begin = 0, kh_end = g.kernel_h;
  while (kh_begin < kh_end && ih0 + kh_begin * g.dilation_h < 0) ++kh_begin;
  while (kh_end > kh_begin && ih0 + (kh_end - 1) * g.dilation_h >= g.in_h) --kh_end;
  constexpr int64_t kMaxKernelRows = 16;
  const scalar_t* irows_stack[kMaxKernelRows];
  std::vector<const scalar_t*> irows_heap(g.kernel_h > kMaxKernelRows ? g.kernel_h : 0);
  const scalar_t** irows = g.kernel_h > kMaxKernelRows ? irows_heap.data() : irows_stack;
  const bool whole_lines = gw_whole_lines_apply<scalar_t>(g);
  for (int64_t c = 0; c < C; c += V) {
    const int64_t count = std::min(V, C - c);
    const bool full = count == V;
    // The second vector of a whole line: its weight gradient came with the first one's.
    const bool second_half = whole_lines && (c / V) % 2 == 1;
    if (with_bias) {
      // Four partial sums, so the adds do not wait on each other.
      Vec b0(acc(0)), b1(acc(0)), b2(acc(0)), b3(acc(0));
      int64_t ow = 0;
      auto load = [&](int64_t x) { return full ? load_acc(gorow + x * C + c) : load_acc(gorow + x * C + c, count); };
      for (; ow + 4 <= g.out_w; ow += 4) {
        b0 += load(ow);
        b1 += load(ow + 1);
        b2 += load(ow + 2);
        b3 += load(ow + 3);
      }
      for (; ow < g.out_w; ++ow) b0 += load(ow);
      add_into(part + T * ld + c, (b0 + b1) + (b2 + b3));
    }
    if (!with_weight || second_half) continue;
    for (int64_t kh = kh_begin; kh < kh_end; ++kh)
      irows[kh - kh_begin] = in + (n * g.in_h + ih0 + kh * g.dilation_h) * g.in_w * C + c;
    acc* dst = part + kh_begin * g.kernel_w * ld + c;
    const int64_t nrows = kh_end - kh_begin;
    if (whole_lines && g.stride_w == 1)
      gw_nhwc_kernel_row_groups<scalar_t, 3, 1, false, 2>(gorow + c, irows, nrows, C, g, ib, ie, V, dst, ld, prefetch);
    else if (whole_lines)
      gw_nhwc_kernel_row_groups<scalar_t, 3, 2, false, 2>(gorow + c, irows, nrows, C, g, ib, ie, V, dst, ld, prefetch);
    else if (full)
      gw_nhwc_rows<scalar_t, false>(gorow + c, irows, nrows, C, g, ib, ie, count, dst, ld, prefetch);
    else
      gw_nhwc_rows<scalar_t, true>(gorow + c, irows, nrows, C, g, ib, ie, count, dst, ld, prefetch);
  }
}

// Per-worker [taps + 1][ld] partial sums of the channels-last weight and bias gradients, zeroed; in
// the calling thread's scratch, reduced by finish_grad_weight_nhwc.
template <typename scalar_t>
struct WeightGradPartials {
  acc_t<scalar_t>* data;
  int64_t workers, ld, size;  // size: elements of one worker's partials

  WeightGradPartials(const ConvGeometry& g, int64_t rows) {
    constexpr int64_t V = AccVec<scalar_t>::size();
    workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
    ld = (g.channels + V - 1) / V * V;  // padded so full-vector accumulation never overruns
    // A line more where the taps' rows would all fall on the same few L1 sets.
    if (rows_on_few_l1_sets<acc_t<scalar_t>>(ld)) ld += kCacheLineBytes / int64_t(sizeof(acc_t<scalar_t>));
    size = (taps(g) + 1) * ld;
    data = thread_scratch<acc_t<scalar_t>>(workers * size, ScratchSlot::kReduce);
    std::fill(data, data + workers * size, acc_t<scalar_t>(0));
  }
  acc_t<scalar_t>* worker(int64_t w) const {
    return data + w * size;
  }

  // Sums the workers' partials into grad_weight (C, 1, kH, kW) and grad_bias (C).
  void finish(const ConvGeometry& g, Tensor* grad_weight, Tensor* grad_bias) const {
    const int64_t C = g.channels, T = taps(g);
    for (int64_t w = 1; w < workers; ++w)
      for (int64_t i = 0; i < size; ++i) data[i] += data[w * size + i];
    if (grad_weight) {
      scalar_t* gw = grad_weight->mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c)
        for (int64_t t = 0; t < T; ++t) gw[c * T + t] = static_cast<scalar_t>(data[t * ld + c]);
    }
    if (grad_bias) {
      scalar_t* gb = grad_bias->mutable_data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) gb[c] = static_cast<scalar_t>(data[T * ld + c]);
    }
  }
};

// Weight (and bias) gradient, channels-last: rows are split across threads, each accumulating into its
// own partial sums, which are then reduced.
template <typename scalar_t>
void grad_weight_nhwc(const Tensor& grad_out, const Tensor& input, Tensor* grad_weight, Tensor* grad_bias,
                      const ConvGeometry& g) {
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const int64_t rows = g.batch * g.out_h;
  const WeightGradPartials<scalar_t> partials(g, rows);
  const bool prefetch =
      streams_beyond_cache((grad_out.numel() + input.numel()) * int64_t(sizeof(scalar_t)), backward_streaming_bytes());
  at::parallel_for(0, partials.workers, 1, [&](int64_t wbegin, int64_t wend) {
    for (int64_t worker = wbegin; worker < wend; ++worker) {
      const int64_t r0 = rows * worker / partials.workers, r1 = rows * (worker + 1) / partials.workers;
      for (int64_t r = r0; r < r1; ++r)
        grad_weight_nhwc_row<scalar_t>(go, in, r, grad_weight != nullptr, grad_bias != nullptr, g,
                                       partials.worker(worker), partials.ld, prefetch);
    }
  });
  partials.finish(g, grad_weight, grad_bias);
}

// All gradients of a stride-1 channels-last convolution in one pass: per row, the input-gradient row (a
// forward row of the geometry `transposed` over grad_output) and then the weight/bias contributions of
// the same grad_output row, while the grad_output rows both read are still in L1/L2. Saves a pass over
// grad_output and a parallel region against computing them one after the other.
template <typename scalar_t>
void grads_nhwc_fused(const Tensor& grad_out, const Tensor& input, const acc_t<scalar_t>* w_rotated, Tensor& grad_in,
                      Tensor* grad_weight, Tensor* grad_bias, const ConvGeometry& g, const ConvGeometry& transposed) {
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_in.mutable_data_ptr<scalar_t>();
  const int64_t C = g.channels;
  // Rows of one image: input-gradient rows (transposed.out_h == g.in_h) and grad_output rows (g.out_h).
  const int64_t per_image = std::max(transposed.out_h, g.out_h);
  const int64_t rows = g.batch * per_image;
  const WeightGradPartials<scalar_t> partials(g, rows);
  // Streaming calls prefetch and store the input gradient past the caches (streaming_stores_apply): on the Intel
  // Xeon N=8 C=144 56x56 811-815 us against 949-993 with plain stores, C=192 28x28 349 against 398.
  const bool prefetch = streams_beyond_cache((grad_out.numel() + 2 * input.numel()) * int64_t(sizeof(scalar_t)),
                                             backward_streaming_bytes());
  const bool stream = streaming_stores_apply(gi, C, g.in_w * C, prefetch);
  at::parallel_for(0, partials.workers, 1, [&](int64_t wbegin, int64_t wend) {
    for (int64_t worker = wbegin; worker < wend; ++worker) {
      const int64_t r0 = rows * worker / partials.workers, r1 = rows * (worker + 1) / partials.workers;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t n = r / per_image, row = r % per_image;
        // Input-gradient rows in pairs (depthwise_nhwc_row_pair) where the pair applies and both rows are
        // this worker's; then the weight gradients of the same rows.
        const bool pair = r + 1 < r1 && row + 1 < per_image && nhwc_row_pair_applies(transposed, row);
        // The input-gradient sweep also prefetches the input rows that these rows' weight gradients are
        // the first to read (in a pair, rows next_ih and next_ih + 1: stride 1).
        const int64_t next_ih = row * g.stride_h - g.pad_h + (g.kernel_h - 1) * g.dilation_h;
        const scalar_t* also =
            prefetch && row + (pair ? 1 : 0) < g.out_h && next_ih >= 0 && next_ih + (pair ? 1 : 0) < g.in_h
                ? in + (n * g.in_h + next_ih) * g.in_w * C
                : nullptr;
        if (pair) {
          DwNhwcRow<scalar_t, scalar_t> rows2 =
              dense_nhwc_rows<scalar_t>(go, w_rotated, nullptr, gi, transposed, n, 0, C, prefetch, also);
          rows2.oh = row;
          rows2.out += row * rows2.out_row_stride;
          rows2.prefetch_also_row_stride = g.in_w * C;
          rows2.stream_stores = stream;
          depthwise_nhwc_row_pair(rows2, transposed);
        } else if (row < transposed.out_h) {
          dense_nhwc_row<scalar_t>(go, w_rotated, nullptr, gi, transposed, n, row, 0, C, prefetch, also, stream);
        }
        for (int64_t k = 0; k < (pair ? 2 : 1); ++k) {
          if (row + k < g.out_h) {
            grad_weight_nhwc_row<scalar_t>(go, in, n * g.out_h + row + k, grad_weight != nullptr, grad_bias != nullptr,
                                           g, partials.worker(worker), partials.ld);
          }
        }
        if (pair) ++r;
      }
    }
    if (stream) streaming_stores_fence();
  });
  partials.finish(g, grad_weight, grad_bias);
}

// NCHW input gradient for any stride/dilation: grad_output rows are scattered into a phase plane of
// the padded input gradient (contiguous vector adds), which is then cropped into grad_input.
// (Stride-1 input gradients take the faster gather form: forward_nchw with the rotated kernel.)
template <typename scalar_t>
void grad_input_nchw_scatter(const Tensor& grad_out, const Tensor& weight, Tensor& grad_in, const ConvGeometry& g) {
  using acc = acc_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_in.mutable_data_ptr<scalar_t>();
  const Tensor wc = weight.contiguous();
  const scalar_t* wsrc = wc.const_data_ptr<scalar_t>();
  const int64_t T = taps(g), m = g.multiplier;
  const int64_t items = g.batch * g.channels;
  at::parallel_for(0, items, grain_for(items, g.out_h * g.out_w * T * m), [&](int64_t begin, int64_t end) {
    PhasePlane<acc> p = phase_plane_shape<acc>(g, V, false);
    p.data = thread_scratch<acc>(p.size, ScratchSlot::kPlane);
    acc* gorow = thread_scratch<acc>((g.out_w + V - 1) / V * V, ScratchSlot::kRun);
    int64_t* offsets = thread_scratch<int64_t>(T, ScratchSlot::kOffsets);
    phase_plane_tap_offsets(p, g, offsets);
    const int64_t vecs = (g.out_w + V - 1) / V;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / g.channels, c = i % g.channels;
      std::memset(p.data, 0, sizeof(acc) * p.size);
      for (int64_t j = 0; j < m; ++j) {
        const int64_t oc = c * m + j;
        const scalar_t* plane = go + (n * g.out_channels + oc) * g.out_h * g.out_w;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          // Stage the row zero-padded to whole vectors, so the scatter adds zeros past out_w.
          int64_t ow = 0;
          for (; ow + V <= g.out_w; ow += V) load_acc(plane + oh * g.out_w + ow).store(gorow + ow);
          if (ow < g.out_w) load_acc(plane + oh * g.out_w + ow, g.out_w - ow).store(gorow + ow);
          acc* row = p.data + oh * g.stride_h * p.pitch;
          for (int64_t t = 0; t < T; ++t) {
            const Vec wv(static_cast<acc>(wsrc[oc * T + t]));
            acc* dst = row + offsets[t];
            for (int64_t v = 0; v < vecs; ++v)
              at::vec::fmadd(Vec::loadu(gorow + v * V), wv, Vec::loadu(dst + v * V)).store(dst + v * V);
          }
        }
      }
      // Crop: input column iw sits at padded column iw + pad_w, i.e. phase (iw + pad_w) % sw.
      scalar_t* dst = gi + i * g.in_h * g.in_w;
      for (int64_t ih = 0; ih < g.in_h; ++ih) {
        const int64_t y = ih + g.pad_h;
        scalar_t* drow = dst + ih * g.in_w;
        if (y >= p.rows) {
          std::fill(drow, drow + g.in_w, scalar_t(0));
          continue;
        }
        read_phase_plane_row(p, g, y, drow);
      }
    }
  });
}

// Weight-gradient dot products of kTaps taps: sums[t] += sum over runs r of
// <grad + r * grad_pitch, plane + r * plane_pitch + offsets[t]>, each run `vecs` vectors long. The grad
// vector is loaded once for all kTaps taps held in registers; one horizontal reduction per tap at the end.
template <typename acc, int kTaps>
inline void tap_dots(const acc* grad, int64_t grad_pitch, const acc* plane, int64_t plane_pitch, int64_t runs,
                     int64_t vecs, const int64_t* offsets, acc* sums) {
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  Vec sum[kTaps];
#pragma GCC unroll 12
  for (int t = 0; t < kTaps; ++t) sum[t] = Vec(acc(0));
  for (int64_t r = 0; r < runs; ++r) {
    const acc* gr = grad + r * grad_pitch;
    const acc* pr = plane + r * plane_pitch;
    for (int64_t v = 0; v < vecs; ++v) {
      const Vec gv = Vec::loadu(gr + v * V);
#pragma GCC unroll 12
      for (int t = 0; t < kTaps; ++t) sum[t] = at::vec::fmadd(gv, Vec::loadu(pr + offsets[t] + v * V), sum[t]);
    }
  }
#pragma GCC unroll 12
  for (int t = 0; t < kTaps; ++t) sums[t] += at::vec::vec_reduce_all<acc>(std::plus<Vec>(), sum[t]);
}

// All taps, in register groups: 12 accumulators + the grad vector + a load fit AVX2's 16 registers.
template <typename acc>
inline void all_tap_dots(const acc* grad, int64_t grad_pitch, const acc* plane, int64_t plane_pitch, int64_t runs,
                         int64_t vecs, const int64_t* offsets, int64_t taps, acc* sums) {
  int64_t t = 0;
  for (; t + 12 <= taps; t += 12)
    tap_dots<acc, 12>(grad, grad_pitch, plane, plane_pitch, runs, vecs, offsets + t, sums + t);
  for (; t + 9 <= taps; t += 9)
    tap_dots<acc, 9>(grad, grad_pitch, plane, plane_pitch, runs, vecs, offsets + t, sums + t);
  for (; t + 4 <= taps; t += 4)
    tap_dots<acc, 4>(grad, grad_pitch, plane, plane_pitch, runs, vecs, offsets + t, sums + t);
  for (; t < taps; ++t) tap_dots<acc, 1>(grad, grad_pitch, plane, plane_pitch, runs, vecs, offsets + t, sums + t);
}

// NCHW weight (and bias) gradient: output channels are split across threads, so no reduction is needed.
// Per (n, oc): a padded plane of the input channel and the grad_output plane staged with the same row
// pitch (zeros in the junk columns); stride 1 then needs one flat dot product per tap over the whole
// plane, other strides one per tap and output row.
template <typename scalar_t>
void grad_weight_nchw(const Tensor& grad_out, const Tensor& input, Tensor* grad_weight, Tensor* grad_bias,
                      const ConvGeometry& g) {
  using acc = acc_t<scalar_t>;
  using Vec = at::vec::Vectorized<acc>;
  constexpr int64_t V = Vec::size();
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const int64_t T = taps(g);
  scalar_t* gw = grad_weight ? grad_weight->mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* gb = grad_bias ? grad_bias->mutable_data_ptr<scalar_t>() : nullptr;
  const bool flat = flat_plane_applies(g);
  at::parallel_for(0, g.out_channels, grain_for(g.out_channels, g.batch * g.out_h * g.out_w * T),
                   [&](int64_t begin, int64_t end) {
                     PhasePlane<acc> p = phase_plane_shape<acc>(g, V, flat);
                     p.data = thread_scratch<acc>(p.size, ScratchSlot::kPlane);
                     // Staged grad_output: flat → rows of the plane's pitch; otherwise rows padded to whole vectors.
                     const int64_t grad_pitch = flat ? p.pitch : (g.out_w + V - 1) / V * V;
                     const int64_t grad_vecs = flat ? (flat_run_length(g, p.pitch) + V - 1) / V : grad_pitch / V;
                     const int64_t grad_size = flat ? grad_vecs * V : g.out_h * grad_pitch;
                     acc* staged = thread_scratch<acc>(grad_size, ScratchSlot::kRun);
                     int64_t* offsets = thread_scratch<int64_t>(T, ScratchSlot::kOffsets);
                     phase_plane_tap_offsets(p, g, offsets);
                     std::vector<acc> wsum(T);
                     for (int64_t oc = begin; oc < end; ++oc) {
                       const int64_t c = oc / g.multiplier;
                       std::fill(wsum.begin(), wsum.end(), acc(0));
                       Vec bsum(acc(0));
                       for (int64_t n = 0; n < g.batch; ++n) {
                         const scalar_t* gp = go + (n * g.out_channels + oc) * g.out_h * g.out_w;
                         std::memset(staged, 0, sizeof(acc) * grad_size);
                         for (int64_t oh = 0; oh < g.out_h; ++oh) {
                           acc* d = staged + oh * grad_pitch;
                           int64_t ow = 0;
                           for (; ow + V <= g.out_w; ow += V) {
                             const Vec v = load_acc(gp + oh * g.out_w + ow);
                             v.store(d + ow);
                             bsum += v;
                           }
                           if (ow < g.out_w) {
                             const Vec v = load_acc(gp + oh * g.out_w + ow, g.out_w - ow);
                             v.store(d + ow, g.out_w - ow);
                             bsum += v;
                           }
                         }
                         if (!gw) continue;
                         fill_phase_plane(p, g, in + (n * g.channels + c) * g.in_h * g.in_w, g.in_w);
                         // Flat: one run over the whole plane; otherwise one run per output row.
                         all_tap_dots<acc>(staged, grad_pitch, p.data, g.stride_h * p.pitch, flat ? 1 : g.out_h,
                                           grad_vecs, offsets, T, wsum.data());
                       }
                       if (gw)
                         for (int64_t t = 0; t < T; ++t) gw[oc * T + t] = static_cast<scalar_t>(wsum[t]);
                       if (gb) gb[oc] = static_cast<scalar_t>(at::vec::vec_reduce_all<acc>(std::plus<Vec>(), bsum));
                     }
                   });
}

// Any layout, any multiplier.
template <typename scalar_t>
void grad_input_generic(const Tensor& grad_out, const Tensor& weight, Tensor& grad_in, const ConvGeometry& g) {
  using acc = acc_t<scalar_t>;
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  scalar_t* gi = grad_in.mutable_data_ptr<scalar_t>();
  const Tensor wc = weight.contiguous();
  const scalar_t* wsrc = wc.const_data_ptr<scalar_t>();
  const auto gs = grad_out.strides();
  const auto is = grad_in.strides();
  const int64_t T = taps(g), m = g.multiplier;
  const int64_t items = g.batch * g.channels;
  at::parallel_for(0, items, grain_for(items, g.in_h * g.in_w * T * m), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / g.channels, c = i % g.channels;
      for (int64_t ih = 0; ih < g.in_h; ++ih) {
        for (int64_t iw = 0; iw < g.in_w; ++iw) {
          acc sum(0);
          for (int64_t j = 0; j < m; ++j) {
            const int64_t oc = c * m + j;
            for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
              const int64_t y = ih + g.pad_h - kh * g.dilation_h;
              if (y < 0 || y % g.stride_h || y / g.stride_h >= g.out_h) continue;
              for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
                const int64_t x = iw + g.pad_w - kw * g.dilation_w;
                if (x < 0 || x % g.stride_w || x / g.stride_w >= g.out_w) continue;
                sum +=
                    static_cast<acc>(go[n * gs[0] + oc * gs[1] + (y / g.stride_h) * gs[2] + (x / g.stride_w) * gs[3]]) *
                    static_cast<acc>(wsrc[oc * T + kh * g.kernel_w + kw]);
              }
            }
          }
          gi[n * is[0] + c * is[1] + ih * is[2] + iw * is[3]] = static_cast<scalar_t>(sum);
        }
      }
    }
  });
}

// Weight (and bias) gradient for any layout and multiplier: direct loops over strided tensors. Used for
// channels-last with multiplier > 1.
template <typename scalar_t>
void grad_weight_generic(const Tensor& grad_out, const Tensor& input, Tensor* grad_weight, Tensor* grad_bias,
                         const ConvGeometry& g) {
  using acc = acc_t<scalar_t>;
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const auto gs = grad_out.strides();
  const auto is = input.strides();
  const int64_t T = taps(g);
  scalar_t* gw = grad_weight ? grad_weight->mutable_data_ptr<scalar_t>() : nullptr;
  scalar_t* gb = grad_bias ? grad_bias->mutable_data_ptr<scalar_t>() : nullptr;
  at::parallel_for(0, g.out_channels, grain_for(g.out_channels, g.batch * g.out_h * g.out_w * T),
                   [&](int64_t begin, int64_t end) {
                     for (int64_t oc = begin; oc < end; ++oc) {
                       const int64_t c = oc / g.multiplier;
                       acc bsum(0);
                       std::vector<acc> wsum(T, acc(0));
                       for (int64_t n = 0; n < g.batch; ++n) {
                         for (int64_t oh = 0; oh < g.out_h; ++oh) {
                           for (int64_t ow = 0; ow < g.out_w; ++ow) {
                             const acc d = static_cast<acc>(go[n * gs[0] + oc * gs[1] + oh * gs[2] + ow * gs[3]]);
                             bsum += d;
                             for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
                               const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dilation_h;
                               if (ih < 0 || ih >= g.in_h) continue;
                               for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
                                 const int64_t iw = ow * g.stride_w - g.pad_w + kw * g.dilation_w;
                                 if (iw < 0 || iw >= g.in_w) continue;
                                 wsum[kh * g.kernel_w + kw] +=
                                     d * static_cast<acc>(in[n * is[0] + c * is[1] + ih * is[2] + iw * is[3]]);
                               }
                             }
                           }
                         }
                       }
                       if (gw)
                         for (int64_t t = 0; t < T; ++t) gw[oc * T + t] = static_cast<scalar_t>(wsum[t]);
                       if (gb) gb[oc] = static_cast<scalar_t>(bsum);
                     }
                   });
}

// The weight-gradient kernels multiply the input's zero padding by grad_output (and the NCHW ones grad_output's
// padding by the input), so a NaN or Inf there reaches taps PyTorch's kernels skip. Only a non-finite weight
// gradient can have met one (0 times a finite value is 0): it is recomputed by the direct loops, which skip the
// padding.
template <typename scalar_t>
void recompute_nonfinite_weight_grad(const Tensor& grad_out, const Tensor& input, Tensor* grad_weight,
                                     const ConvGeometry& g) {
  if (grad_weight && !all_finite(*grad_weight)) grad_weight_generic<scalar_t>(grad_out, input, grad_weight, nullptr, g);
}

std::tuple<Tensor, Tensor, Tensor> depthwise_conv2d_backward_cpu(const Tensor& grad_output_, const Tensor& input_,
                                                                 const Tensor& weight, at::IntArrayRef stride,
                                                                 at::IntArrayRef padding, at::IntArrayRef dilation,
                                                                 std::array<bool, 3> output_mask) {
  const ConvGeometry g = depthwise_backward_geometry(grad_output_, input_, weight, stride, padding, dilation);
  TORCH_CHECK(input_.device().is_cpu(), "fusedops: depthwise_conv2d CPU backward got input on ", input_.device());
  const at::MemoryFormat fmt = output_memory_format(input_);
  const Tensor input = input_.contiguous(fmt);
  const Tensor grad_output = grad_output_.contiguous(fmt);
  DepthwiseGrads grads(input, weight, g, fmt, output_mask);
  if (grad_output.numel() == 0) {
    grads.zero();
    return grads.result(input.options());
  }
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "depthwise_conv2d_backward_cpu", [&] {
    ConvGeometry transposed;
    const bool parameter_grads = grads.weight.defined() || grads.bias.defined();
    Tensor* gw = grads.weight.defined() ? &grads.weight : nullptr;
    Tensor* gb = grads.bias.defined() ? &grads.bias : nullptr;
    // A NaN or Inf weight would meet grad_output's zero padding in the input-gradient kernels (cpu/finite.h).
    const bool finite_weight = !grads.input.defined() || all_finite(weight);
    if (cl && g.multiplier == 1 && grads.input.defined() && parameter_grads && finite_weight &&
        transposed_as_forward(g, &transposed)) {
      grads_nhwc_fused<scalar_t>(grad_output, input, taps_by_channel<scalar_t>(weight, g, true), grads.input, gw, gb, g,
                                 transposed);
      recompute_nonfinite_weight_grad<scalar_t>(grad_output, input, gw, g);
      return;
    }
    if (grads.input.defined()) {
      if (!finite_weight) {
        grad_input_generic<scalar_t>(grad_output, weight, grads.input, g);
      } else if (cl && transposed_as_forward(g, &transposed)) {
        forward_nhwc<scalar_t>(grad_output, weight, true, nullptr, grads.input, transposed, backward_streaming_bytes());
      } else if (!cl && transposed_as_forward(g, &transposed)) {
        forward_nchw<scalar_t>(grad_output, weight.flip({2, 3}), nullptr, grads.input, transposed);
      } else if (cl && grad_input_is_3x3_stride2(g)) {
        grad_input_nhwc_3x3_stride2<scalar_t>(grad_output, taps_by_channel<scalar_t>(weight, g, false), grads.input, g);
      } else if (cl && g.multiplier == 1) {
        grad_input_nhwc_gather<scalar_t>(grad_output, taps_by_channel<scalar_t>(weight, g, false), grads.input, g);
      } else if (!cl) {
        grad_input_nchw_scatter<scalar_t>(grad_output, weight, grads.input, g);
      } else {
        grad_input_generic<scalar_t>(grad_output, weight, grads.input, g);
      }
    }
    if (parameter_grads) {
      if (cl && g.multiplier == 1)
        grad_weight_nhwc<scalar_t>(grad_output, input, gw, gb, g);
      else if (!cl)
        grad_weight_nchw<scalar_t>(grad_output, input, gw, gb, g);
      else
        grad_weight_generic<scalar_t>(grad_output, input, gw, gb, g);
      recompute_nonfinite_weight_grad<scalar_t>(grad_output, input, gw, g);
    }
  });
  return grads.result(input.options());
}

// ---------------------------------------------------------------------------------------------------
// The backward of _batch_norm_activation_depthwise (csrc/cpu/batch_norm_activation.cpp): the depthwise
// convolution's, its input activation(batch_norm(x)) never written.

// The weight gradient (channels-last, multiplier 1) of the depthwise convolution g of activation(batch_norm(x)):
// each worker's output rows run as bands (for_each_expanded_band) whose normalised input rows (`norm`, `act`) a
// per-thread tile holds while grad_weight_nhwc_row reads them.
template <typename scalar_t>
void grad_weight_nhwc_normalized(const Tensor& grad_out, const Tensor& x, const Normalization<acc_t<scalar_t>>& norm,
                                 Activation act, Tensor* grad_weight, const ConvGeometry& g) {
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* in = x.const_data_ptr<scalar_t>();
  const int64_t C = g.channels, row_elems = g.in_w * C;
  const int64_t rows = g.batch * g.out_h;
  const WeightGradPartials<scalar_t> partials(g, rows);
  const int64_t band_rows = band_rows_fitting(g, row_elems * static_cast<int64_t>(sizeof(scalar_t)));
  const int64_t tile_elems = band_input_rows(g, band_rows) * row_elems;
  at::parallel_for(0, partials.workers, 1, [&](int64_t wbegin, int64_t wend) {
    scalar_t* tile = thread_scratch<scalar_t>(tile_elems, ScratchSlot::kTileHidden);
    with_activation(act, [&](auto kind) {
      for (int64_t worker = wbegin; worker < wend; ++worker) {
        const int64_t r0 = rows * worker / partials.workers, r1 = rows * (worker + 1) / partials.workers;
        for (int64_t r = r0; r < r1;) {
          // The worker's rows of image n: [first, last).
          const int64_t n = r / g.out_h, first = r % g.out_h, last = std::min(g.out_h, first + (r1 - r));
          const scalar_t* image = in + n * g.in_h * row_elems;
          const scalar_t* go_image = go + n * g.out_h * g.out_w * C;
          for_each_expanded_band(
              g, row_elems, first, last, band_rows, tile,
              [&](int64_t first_row, int64_t count, scalar_t* dst) {
                norm.rows(image, first_row, count, g.in_w, C, kind, dst);
              },
              [&](const ConvGeometry& band, const RowRange& /*need*/, int64_t b0, int64_t b1) {
                for (int64_t oh = b0; oh < b1; ++oh) {
                  grad_weight_nhwc_row<scalar_t>(go_image, tile, oh, true, false, band, partials.worker(worker),
                                                 partials.ld);
                }
              });
          r += last - first;
        }
      }
    });
  });
  partials.finish(g, grad_weight, nullptr);
}

std::tuple<Tensor, Tensor> batch_norm_activation_depthwise_backward_cpu(
    const Tensor& grad_output_, const Tensor& input_, const c10::optional<Tensor>& weight,
    const c10::optional<Tensor>& bias, const Tensor& mean, const Tensor& invstd, c10::string_view activation,
    const Tensor& dw_weight, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
    std::array<bool, 2> output_mask) {
  constexpr const char* op = "_batch_norm_activation_depthwise_backward";
  const ConvGeometry g = depthwise_backward_geometry(grad_output_, input_, dw_weight, stride, padding, dilation);
  const int64_t C = g.channels;
  TORCH_CHECK(g.multiplier == 1, "fusedops: ", op, ": dw_weight must have shape (", C, ", 1, kH, kW) (one filter per ",
              "input channel), got ", dw_weight.sizes());
  const Activation act = parse_activation(activation, "activation");
  check_channels(mean, C, "mean", op);
  check_channels(invstd, C, "invstd", op);
  check_channels(weight, C, "weight", op);
  check_channels(bias, C, "bias", op);
  const Tensor input = input_.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor grad_output = grad_output_.contiguous(at::MemoryFormat::ChannelsLast);
  Tensor grad_input, grad_weight;
  if (output_mask[0]) {
    // The depthwise input gradient reads only grad_output and the taps (the input gives its shape).
    grad_input = std::get<0>(
        depthwise_conv2d_backward_cpu(grad_output, input, dw_weight, stride, padding, dilation, {true, false, false}));
  }
  if (output_mask[1]) {
    grad_weight = at::empty_like(dw_weight, at::MemoryFormat::Contiguous);
    if (grad_output.numel() == 0) {
      grad_weight.zero_();
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), op, [&] {
        const Normalization<acc_t<scalar_t>> norm(mean, invstd, weight, bias, C);
        grad_weight_nhwc_normalized<scalar_t>(grad_output, input, norm, act, &grad_weight, g);
        if (!all_finite(grad_weight)) {
          // recompute_nonfinite_weight_grad's case, on the normalised input written out.
          Tensor normalized = at::empty_like(input);
          with_activation(act, [&](auto kind) {
            norm.rows(input.const_data_ptr<scalar_t>(), 0, g.batch * g.in_h, g.in_w, C, kind,
                      normalized.mutable_data_ptr<scalar_t>());
          });
          grad_weight_generic<scalar_t>(grad_output, normalized, &grad_weight, nullptr, g);
        }
      });
    }
  }
  return {grad_input, grad_weight};
}

}  // namespace
}  // namespace cpu
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("depthwise_conv2d", &fusedops::cpu::depthwise_conv2d_cpu);
  m.impl("_depthwise_conv2d_backward", &fusedops::cpu::depthwise_conv2d_backward_cpu);
  m.impl("_batch_norm_activation_depthwise_backward", &fusedops::cpu::batch_norm_activation_depthwise_backward_cpu);
}
