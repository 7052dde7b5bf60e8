// CPU kernels of fusedops::ghost_module (GhostNet's Ghost module: primary 1x1 -> act, cheap depthwise of that ->
// act, both halves concatenated and cut to out_channels [+ residual]) and its backward.
//
// Forward, per work item (image n, strip of output rows; or, where strips would leave threads idle, image n and a
// slice of channels, the whole image at once), band by band (for_each_expanded_band,
// cpu/expanded_bands.h, the same tile engine as inverted_residual's expand and depthwise stages):
//   1. primary: the band's rows plus the depthwise halo, times the packed primary weights (pointwise_gemm, bias
//      and activation in its epilogue), into a per-thread tile (rows shared with the previous band are kept);
//   2. the band's own rows of that tile are stored into the output's first init channels;
//   3. cheap: the band's depthwise rows read the tile (with a depth multiplier m > 1, a copy of it whose channel i
//      is repeated m times, so that cheap channel j reads its source j / m at j), bias and activation in the
//      epilogue, and are stored straight into the output's channels [init, out_channels): only the channels the
//      output keeps are computed;
//   4. the residual, when given, is added to the band's outputs while they are in cache.
// There is no concatenation and no slice copy; the primary half is read by the depthwise stage from the tile, in
// cache, before it is rounded to the storage type. Channels-last outputs are written directly; NCHW outputs through
// a per-band staging tile and a transposed store. NCHW inputs are converted to channels-last once (a copy of the
// input), and a primary stride s > 1 reads every s-th pixel (a 1x1 convolution at stride s is one at stride 1 on
// those).
//
// Backward: ghost_module_backward_recomputed (csrc/shared/ghost_module.cpp).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fusedops/cpu/activation.h"
#include "fusedops/cpu/depthwise_nhwc.h"
#include "fusedops/cpu/expanded_bands.h"
#include "fusedops/cpu/finite.h"
#include "fusedops/cpu/fused_weights.h"
#include "fusedops/cpu/pointwise_gemm.h"
#include "fusedops/cpu/scratch.h"
#include "fusedops/cpu/squeeze_excitation.h"
#include "fusedops/cpu/vec_io.h"
#include "fusedops/ghost_module.h"
#include "fusedops/inverted_residual.h"
#include "fusedops/ops.h"
#include "fusedops/schema_str.h"

#include <algorithm>
#include <array>
#include <numeric>
#include <string_view>
#include <type_traits>

namespace fusedops {
namespace cpu {
namespace {

using at::Tensor;

// The module's weights as the kernel reads them, in the accumulation type: a header (the panel width, channel
// counts and taps, which a packed tensor must match), the primary weights packed into GEMM panels, then the
// depthwise taps [T][init * multiplier] and the depthwise bias (zero-padded).
constexpr int64_t kHeader = 6;

template <typename acc>
struct GhostWeights {
  PackedPointwise<acc> primary;
  const acc* cheap_taps = nullptr;
  const acc* cheap_bias = nullptr;
};

template <typename acc>
int64_t ghost_weight_elements(const GhostModuleGeometry& geo) {
  const ConvGeometry& g = geo.cheap;
  return kHeader + PackedPointwise<acc>::packed_elements(geo.in_channels, geo.init_channels) +
         g.kernel_h * g.kernel_w * g.out_channels + g.out_channels + at::vec::Vectorized<acc>::size();
}

template <typename acc>
std::array<acc, kHeader> ghost_weight_header(const GhostModuleGeometry& geo) {
  return {acc(PackedPointwise<acc>::kNr), acc(geo.in_channels),    acc(geo.init_channels),
          acc(geo.cheap.out_channels),    acc(geo.cheap.kernel_h), acc(geo.cheap.kernel_w)};
}

template <typename acc>
GhostWeights<acc> ghost_weight_layout(const GhostModuleGeometry& geo, const acc* base) {
  GhostWeights<acc> w;
  acc* p = const_cast<acc*>(base) + kHeader;
  w.primary = packed_pointwise_layout<acc>(geo.in_channels, geo.init_channels, p);
  p += PackedPointwise<acc>::packed_elements(geo.in_channels, geo.init_channels);
  w.cheap_taps = p;
  w.cheap_bias = p + geo.cheap.kernel_h * geo.cheap.kernel_w * geo.cheap.out_channels;
  return w;
}

template <typename scalar_t>
GhostWeights<acc_t<scalar_t>> pack_ghost_weights(const GhostModuleGeometry& geo, const Tensor& primary_weight,
                                                 const c10::optional<Tensor>& primary_bias, const Tensor& cheap_weight,
                                                 const c10::optional<Tensor>& cheap_bias, acc_t<scalar_t>* dst) {
  using acc = acc_t<scalar_t>;
  const auto header = ghost_weight_header<acc>(geo);
  std::copy(header.begin(), header.end(), dst);
  GhostWeights<acc> w = ghost_weight_layout<acc>(geo, dst);
  pack_pointwise_weights<scalar_t>(primary_weight, primary_bias, geo.in_channels, geo.init_channels,
                                   const_cast<acc*>(w.primary.panels));
  lay_out_depthwise_weights<scalar_t>(cheap_weight, cheap_bias, geo.cheap.out_channels,
                                      geo.cheap.kernel_h * geo.cheap.kernel_w, const_cast<acc*>(w.cheap_taps),
                                      const_cast<acc*>(w.cheap_bias));
  return w;
}

// dst[q * dst_ld + c] = src[q * src_ld + c] for pixels q < pixels, channels c < channels (rounded to out_t).
template <typename acc, typename out_t>
void copy_pixels(const acc* src, int64_t src_ld, out_t* dst, int64_t dst_ld, int64_t pixels, int64_t channels) {
  constexpr int64_t V = at::vec::Vectorized<acc>::size();
  for (int64_t q = 0; q < pixels; ++q) {
    for (int64_t c = 0; c < channels; c += V) {
      const int64_t m = std::min(V, channels - c);
      store_acc(dst + q * dst_ld + c, at::vec::Vectorized<acc>::loadu(src + q * src_ld + c, m), m);
    }
  }
}

// The depthwise convolution that _ghost_module_depthwise runs on the module's output: its geometry (input: the
// module's output map, out_channels channels) and its taps [T][out_channels] and bias (zero-padded), in the
// accumulation type.
template <typename acc>
struct FollowingDepthwise {
  ConvGeometry geometry;
  const acc* taps = nullptr;
  const acc* bias = nullptr;

  // Its output rows [r0, r1) of `band` (for_each_expanded_band's) from `image` (the band's input rows: rows of
  // in_row elements, pixels of `channels`), written at out (output row r0; rows of out_row elements).
  template <typename scalar_t>
  void rows(const scalar_t* image, int64_t in_row, int64_t channels, scalar_t* out, int64_t out_row,
            const ConvGeometry& band, int64_t r0, int64_t r1) const {
    depthwise_nhwc_rows(nhwc_rows<scalar_t, scalar_t>({image, in_row, channels}, taps, channels, bias,
                                                      {out, out_row, channels}, r0, 0, channels),
                        band, r1);
  }
};

// The depthwise stage of geometry d as the kernels read it: its taps and bias laid out in the accumulation type, in
// the calling thread's scratch.
template <typename scalar_t>
FollowingDepthwise<acc_t<scalar_t>> laid_out_depthwise(const ConvGeometry& d, const Tensor& dw_weight,
                                                       const c10::optional<Tensor>& dw_bias) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t V = at::vec::Vectorized<acc>::size();
  const int64_t T = d.kernel_h * d.kernel_w, channels = dw_weight.size(0);
  acc* taps = thread_scratch<acc>(T * channels + channels + V, ScratchSlot::kBias);
  lay_out_depthwise_weights<scalar_t>(dw_weight, dw_bias, channels, T, taps, taps + T * channels);
  FollowingDepthwise<acc> f;
  f.geometry = d;
  f.taps = taps;
  f.bias = taps + T * channels;
  return f;
}

// One module's band stages on its tiles, as forward_cpu and _ghost_bottleneck's kernel run them: the primary GEMM
// into a tile of I-channel rows, then both halves of a band's output rows from that tile.
template <typename scalar_t>
struct ModuleBands {
  using acc = acc_t<scalar_t>;
  const GhostWeights<acc>& w;
  const ConvGeometry& g;  // the cheap depthwise stage (its map: the primary half's)
  int64_t C, I, OC, K;    // input, primary, output and contributed cheap channels
  int64_t m, sources;     // the depth multiplier, the primary channels the cheap ones read
  int64_t dw_ld;          // channels per pixel of the depthwise stage's image: the tile (m == 1) or its copy
  int64_t row_elems;      // elements of one tile row
  ActivationEpilogue epilogue;

  ModuleBands(const GhostWeights<acc>& weights, const GhostModuleGeometry& geo)
      : w(weights),
        g(geo.cheap),
        C(geo.in_channels),
        I(geo.init_channels),
        OC(geo.out_channels),
        K(geo.cheap_channels),
        m(geo.cheap.multiplier),
        sources(geo.cheap_sources()),
        dw_ld(m == 1 ? I : sources * m),
        row_elems(geo.cheap.in_w * I),
        epilogue{geo.activation} {}

  // Primary rows a band of r output rows reads (its halo included).
  int64_t tile_rows(int64_t r) const {
    return std::min(g.in_h, r - 1 + g.kernel_h);
  }
  // Bytes of the primary tile and its repeated copy for `rows` primary rows.
  int64_t tile_bytes(int64_t rows) const {
    return rows * g.in_w * (I + (m == 1 ? 0 : dw_ld)) * static_cast<int64_t>(sizeof(acc));
  }
  // Multiply-adds of one row of the primary half, and of one output row of the module.
  double primary_row_macs() const {
    return static_cast<double>(g.in_w * C * I);
  }
  double row_macs() const {
    return primary_row_macs() + static_cast<double>(g.out_w * K * g.kernel_h * g.kernel_w);
  }

  // The primary half of `count` pixels (rows of C channels at operand) into dst (pixels of I channels).
  void primary(const acc* operand, int64_t count, acc* dst) const {
    primary(w.primary, operand, count, dst);
  }
  // The same with other weights of its layout (gated copies of w.primary).
  void primary(const PackedPointwise<acc>& weights, const acc* operand, int64_t count, acc* dst) const {
    pointwise_gemm<acc, acc>(weights, 0, weights.num_panels(), operand, C, count, dst, I, epilogue.kind);
  }

  // Cheap channels [k0, k1) of output rows [r0, r1) of `geometry` (the image's, or a band's), cheap channel j from
  // local channel j - k0 of dw_image (pixels of image_ld channels), written at dst (output row r0, pixels of OC
  // channels: cheap channel j at dst[I + j]).
  template <typename out_t>
  void cheap_rows(out_t* dst, const acc* dw_image, int64_t image_ld, const ConvGeometry& geometry, int64_t r0,
                  int64_t r1, int64_t k0, int64_t k1) const {
    const auto t = nhwc_rows<acc, out_t>({dw_image - k0, g.in_w * image_ld, image_ld}, w.cheap_taps, g.out_channels,
                                         w.cheap_bias, {dst + I, g.out_w * OC, OC}, r0, k0, k1);
    depthwise_nhwc_rows(t, geometry, r1, epilogue);
  }

  // With a depth multiplier m > 1: `count` pixels of `tile` (ld channels), each of its first `channels` channels
  // repeated m times at dst (channels * m per pixel), so that cheap channel j reads its source j / m at j.
  void repeat_sources(const acc* tile, int64_t ld, int64_t channels, int64_t count, acc* dst) const {
    for (int64_t q = 0; q < count; ++q)
      for (int64_t i = 0; i < channels; ++i) std::fill_n(dst + (q * channels + i) * m, m, tile[q * ld + i]);
  }

  // Both halves of output rows [r0, r1) at dst (pixel r0 * W first, pixels of OC channels), from `tile` holding the
  // primary rows `need` of for_each_expanded_band's `band` (`repeated`: room for their copy when m > 1).
  template <typename out_t>
  void write_halves(out_t* dst, const acc* tile, acc* repeated, const ConvGeometry& band, const RowRange& need,
                    int64_t r0, int64_t r1) const {
    copy_pixels(tile + (r0 - need.begin) * row_elems, I, dst, OC, (r1 - r0) * g.in_w, I);
    if (K == 0) return;
    const acc* dw_image = tile;
    if (m > 1) {
      repeat_sources(tile, I, sources, (need.end - need.begin) * g.in_w, repeated);
      dw_image = repeated;
    }
    cheap_rows(dst, dw_image, dw_ld, band, r0, r1, 0, K);
  }

  // Output rows [first, first + count) of one image at dst (rows of g.out_w * OC elements), as one band through
  // `tile` (and `repeated` when m > 1), room for tile_rows(count) primary rows: primary_rows(first_row, rows, dst)
  // computes the image's primary rows.
  template <typename out_t, typename PrimaryRows>
  void output_rows(int64_t first, int64_t count, out_t* dst, acc* tile, acc* repeated,
                   const PrimaryRows& primary_rows) const {
    for_each_expanded_band(g, row_elems, first, first + count, count, tile, primary_rows,
                           [&](const ConvGeometry& band, const RowRange& need, int64_t r0, int64_t r1) {
                             write_halves(dst + (r0 - first) * g.out_w * OC, tile, repeated, band, need, r0, r1);
                           });
  }
};

// `count` pixels of C channels at src as a GEMM operand in the accumulation type: src itself, or its conversion in
// the calling thread's scratch.
template <typename scalar_t>
const acc_t<scalar_t>* as_acc_operand(const scalar_t* src, int64_t count, int64_t C) {
  using acc = acc_t<scalar_t>;
  if constexpr (kSameAsAcc<scalar_t>) {
    return src;
  } else {
    acc* converted = thread_scratch<acc>(count * C, ScratchSlot::kTilePacked);
    for (int64_t e = 0; e < count * C; ++e) converted[e] = static_cast<acc>(src[e]);
    return converted;
  }
}

template <typename scalar_t>
void forward_cpu(const Tensor& input /*channels-last, at the primary stride*/, const GhostWeights<acc_t<scalar_t>>& w,
                 const Tensor& residual /*in out's format, or undefined*/, Tensor& out, const GhostModuleGeometry& geo,
                 bool out_channels_last, const FollowingDepthwise<acc_t<scalar_t>>* following = nullptr,
                 const acc_t<scalar_t>* input_scale = nullptr) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t V = at::vec::Vectorized<acc>::size();
  const ModuleBands<scalar_t> module(w, geo);
  const ConvGeometry& g = geo.cheap;
  const int64_t C = geo.in_channels, I = geo.init_channels, OC = geo.out_channels, K = geo.cheap_channels;
  const int64_t m = g.multiplier;
  const int64_t pixels = g.in_h * g.in_w, T = g.kernel_h * g.kernel_w;
  const int64_t dw_ld = module.dw_ld, row_elems = module.row_elems;

  const int64_t threads = at::get_num_threads();
  auto tile_bytes = [&](int64_t r) {
    return module.tile_bytes(module.tile_rows(r)) +
           (out_channels_last ? 0 : r * g.in_w * OC * static_cast<int64_t>(sizeof(acc)));
  };
  int64_t rows_fit = 1;
  while (rows_fit < g.out_h && tile_bytes(rows_fit + 1) <= band_tile_bytes()) ++rows_fit;
  const double primary_per_row = static_cast<double>(g.in_w * C * I);
  const StripPlan plan =
      plan_strips(g.out_h, g.out_w, g.batch, threads, rows_fit,
                  static_cast<double>(g.in_h) * primary_per_row + static_cast<double>(g.out_h * g.out_w * K * T),
                  static_cast<double>(g.kernel_h - 1) * primary_per_row);
  const int64_t max_tile_rows = module.tile_rows(plan.rows);
  const int64_t strip_macs = plan.strip_rows * g.in_w * (C * I + K * T);
  const int64_t grain = std::max<int64_t>(1, kMinWorkItemMacs / std::max<int64_t>(1, strip_macs));

  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* res = residual.defined() ? residual.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  // The image's pixels as the primary GEMM's A operand (rows of C channels from `src`), in the accumulation type.
  // With an input_scale (_ghost_module_excited's gates), `count` pixels of image n scaled per channel, rounded to the
  // storage type as the unfused sequence stores input * gate.
  auto primary_operand = [&](int64_t n, const scalar_t* src, int64_t count) -> const acc* {
    if (input_scale == nullptr) return as_acc_operand(src, count, C);
    acc* scaled = thread_scratch<acc>(count * C + V, ScratchSlot::kTilePacked);
    const acc* scale = input_scale + n * C;
    for (int64_t q = 0; q < count; ++q) {
      for (int64_t c = 0; c < C; c += V) {
        const int64_t k = std::min(V, C - c);
        const auto v = load_acc(src + q * C + c, k) * at::vec::Vectorized<acc>::loadu(scale + c, k);
        if constexpr (kSameAsAcc<scalar_t>) {
          v.store(scaled + q * C + c, k);
        } else {
          scalar_t rounded[V];
          store_acc(rounded, v, k);
          for (int64_t i = 0; i < k; ++i) scaled[q * C + c + i] = static_cast<acc>(rounded[i]);
        }
      }
    }
    return scaled;
  };
  // Primary rows [first_row, first_row + rows) of image n into dst (pixels of I channels), activation applied.
  auto primary_rows = [&](int64_t n, int64_t first_row, int64_t rows, acc* dst) {
    const int64_t count = rows * g.in_w;
    module.primary(primary_operand(n, in + (n * pixels + first_row * g.in_w) * C, count), count, dst);
  };
  if (following != nullptr) {
    // _ghost_module_depthwise: the module's output rows never reach memory. A work item is a strip of the
    // depthwise convolution's output rows, run as bands (for_each_expanded_band on its geometry d): a band's tile
    // (`rows_tile`, in the storage type, as the unfused sequence stores the module's output) holds the module's
    // output rows the band reads, each new run of them computed by the module's own bands (for_each_expanded_band
    // on g, through a second tile of primary rows); the depthwise rows then read it. Only the rows at strip
    // boundaries (kernel - stride of them) are computed twice; channels-last output.
    const FollowingDepthwise<acc>& f = *following;
    const ConvGeometry& d = f.geometry;
    const int64_t module_row = g.out_w * OC;
    auto module_rows = [&](int64_t r) { return std::min(d.in_h, (r - 1) * d.stride_h + d.kernel_h); };
    auto band_bytes = [&](int64_t r) {
      const int64_t held = module_rows(r);
      return held * module_row * static_cast<int64_t>(sizeof(scalar_t)) + module.tile_bytes(module.tile_rows(held));
    };
    int64_t band_fit = 1;
    while (band_fit < d.out_h && band_bytes(band_fit + 1) <= band_tile_bytes()) ++band_fit;
    const double module_row_macs = primary_per_row + static_cast<double>(g.out_w * K * T);
    const double depthwise_row_macs = static_cast<double>(d.out_w * OC * d.kernel_h * d.kernel_w);
    const StripPlan strips =
        plan_strips(d.out_h, d.out_w, g.batch, threads, band_fit,
                    static_cast<double>(g.in_h) * module_row_macs + static_cast<double>(d.out_h) * depthwise_row_macs,
                    static_cast<double>(std::max<int64_t>(0, d.kernel_h - d.stride_h)) * module_row_macs);
    const int64_t max_module_rows = module_rows(strips.rows);
    const int64_t out_pixels = d.out_h * d.out_w;
    const int64_t item_macs = strips.strip_rows * (d.stride_h * static_cast<int64_t>(module_row_macs) +
                                                   static_cast<int64_t>(depthwise_row_macs));
    const int64_t item_grain = std::max<int64_t>(1, kMinWorkItemMacs / std::max<int64_t>(1, item_macs));
    at::parallel_for(0, g.batch * strips.strips_per_image, item_grain, [&](int64_t begin, int64_t end) {
      scalar_t* rows_tile = thread_scratch<scalar_t>(max_module_rows * module_row + V, ScratchSlot::kTileOut);
      acc* tile = thread_scratch<acc>(module.tile_rows(max_module_rows) * row_elems + V, ScratchSlot::kTileHidden);
      acc* repeated =
          m == 1 ? nullptr
                 : thread_scratch<acc>(module.tile_rows(max_module_rows) * g.in_w * dw_ld + V, ScratchSlot::kTile);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / strips.strips_per_image, strip = item % strips.strips_per_image;
        const int64_t strip_begin = strip * strips.strip_rows;
        const int64_t strip_end = std::min(d.out_h, strip_begin + strips.strip_rows);
        auto module_output_rows = [&](int64_t first, int64_t count, scalar_t* dst) {
          module.output_rows(first, count, dst, tile, repeated, [&](int64_t first_row, int64_t rows, acc* primary) {
            primary_rows(n, first_row, rows, primary);
          });
        };
        for_each_expanded_band(d, module_row, strip_begin, strip_end, strips.rows, rows_tile, module_output_rows,
                               [&](const ConvGeometry& band, const RowRange& /*need*/, int64_t r0, int64_t r1) {
                                 f.rows(rows_tile, module_row, OC, o + (n * out_pixels + r0 * d.out_w) * OC,
                                        d.out_w * OC, band, r0, r1);
                               });
      }
    });
    return;
  }

  // Slices of channels instead of strips of rows where the strips would leave threads idle or recompute much halo:
  // a 7x7 map at batch 1 is one strip, on one thread (1 and 2 threads timed the same, 62 us for 160->960). A work
  // item (image n, slice of the primary's GEMM panels) runs the primary for the whole image into a tile of its
  // channels, stores them, and runs the cheap depthwise of their cheap channels (channel j reads source j / m, so
  // slices share nothing and need no halo). Channels-last outputs, whose channels a slice writes in place.
  constexpr int64_t kNr = PackedPointwise<acc>::kNr;
  const int64_t panels = w.primary.num_panels();
  const int64_t slices = work_items(static_cast<int64_t>(g.in_h * primary_per_row) + g.out_h * g.out_w * K * T,
                                    std::min(panels, threads / std::gcd(g.batch, threads)));
  const int64_t slice_width = (panels + slices - 1) / slices * kNr;
  const bool slice_fits =
      pixels * slice_width * (m == 1 ? 1 : 1 + m) * static_cast<int64_t>(sizeof(acc)) <= band_tile_bytes();
  const double slice_time =
      static_cast<double>((g.batch * slices + threads - 1) / threads) *
      (static_cast<double>(g.in_h) * primary_per_row + static_cast<double>(g.out_h * g.out_w * K * T)) /
      static_cast<double>(slices) / std::min(1.0, static_cast<double>(pixels) / 48.0);
  // The margin: the slices' whole-image GEMM streams its input once per panel from L2 where a band's rows stay in
  // L1. At 14x14, batch 1, strips of 7 rows (estimated at 0.57 of the image's work against the slices' 0.5) ran
  // faster: 80->240 in 24.5 us against 37.2 us as slices, 672->112 73 against 77 us; at 7x7 (1.0 against 0.5) the
  // slices ran 160->960 in 37 us against 62 us, 960->160 in 48 against 72 us.
  if (out_channels_last && slices > 1 && slice_fits && slice_time < 0.75 * plan.time) {
    at::parallel_for(0, g.batch * slices, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / slices, slice = item % slices;
        const int64_t p0 = slice * panels / slices, p1 = (slice + 1) * panels / slices;
        const int64_t c0 = p0 * kNr, c1 = std::min(I, p1 * kNr), width = c1 - c0;
        if (width <= 0) continue;
        acc* tile = thread_scratch<acc>(pixels * width + V, ScratchSlot::kTileHidden);
        pointwise_gemm<acc, acc>(w.primary, p0, p1, primary_operand(n, in + n * pixels * C, pixels), C, pixels,
                                 tile - c0, width, geo.activation);
        scalar_t* dst = o + n * pixels * OC;
        copy_pixels(tile, width, dst + c0, OC, pixels, width);
        const int64_t k0 = c0 * m, k1 = std::min(K, c1 * m);
        if (k1 > k0) {
          const acc* dw_image = tile;
          if (m > 1) {
            acc* repeated = thread_scratch<acc>(pixels * width * m + V, ScratchSlot::kTile);
            module.repeat_sources(tile, width, width, pixels, repeated);
            dw_image = repeated;
          }
          module.cheap_rows(dst, dw_image, width * m, g, 0, g.out_h, k0, k1);
        }
        if (res != nullptr) {
          const scalar_t* r = res + n * pixels * OC;
          for (int64_t q = 0; q < pixels; ++q) {
            add_residual(dst + q * OC + c0, r + q * OC + c0, width);
            if (k1 > k0) add_residual(dst + q * OC + I + k0, r + q * OC + I + k0, k1 - k0);
          }
        }
      }
    });
    return;
  }

  // _ghost_module_excited's gates applied to a per-thread copy of the primary weights (row k of each panel times
  // gate k of the image) instead of to the input pixels, where that copy is the smaller: x * g through W is x through
  // W diag(g). GhostNet at batch 8, 2 threads: the gated input copy cost 120 us of 408 at 120->40 28x28 and 180 of
  // 813 at 672->112 14x14, whose weight copies are 1/25 and 1/3 the size; at 960->160 7x7 (49 pixels against 96
  // columns) the input stays the smaller. Float and double only: the unfused sequence rounds input * gate to a
  // reduced-precision storage type before its convolution.
  const int64_t panel_elements = panels * kNr * C;
  const bool gate_weights =
      input_scale != nullptr && kSameAsAcc<scalar_t> && panel_elements < module.tile_rows(plan.strip_rows) * g.in_w * C;
  at::parallel_for(0, g.batch * plan.strips_per_image, grain, [&](int64_t begin, int64_t end) {
    acc* tile = thread_scratch<acc>(max_tile_rows * row_elems + V, ScratchSlot::kTileHidden);
    acc* repeated = m == 1 ? nullptr : thread_scratch<acc>(max_tile_rows * g.in_w * dw_ld + V, ScratchSlot::kTile);
    acc* staged = out_channels_last ? nullptr : thread_scratch<acc>(plan.rows * g.in_w * OC + V, ScratchSlot::kTileOut);
    PackedPointwise<acc> gated = w.primary;
    int64_t gated_image = -1;
    if (gate_weights) gated.panels = thread_scratch<acc>(panel_elements, ScratchSlot::kTilePacked);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / plan.strips_per_image, strip = item % plan.strips_per_image;
      const int64_t strip_begin = strip * plan.strip_rows, strip_end = std::min(g.out_h, strip_begin + plan.strip_rows);
      if (gate_weights && gated_image != n) {
        const acc* gate = input_scale + n * C;
        acc* dst = const_cast<acc*>(gated.panels);
        for (int64_t row = 0; row < panels * C; ++row) {
          const at::vec::Vectorized<acc> scale(gate[row % C]);
          for (int64_t j = 0; j < kNr; j += V)
            (at::vec::Vectorized<acc>::loadu(w.primary.panels + row * kNr + j) * scale).store(dst + row * kNr + j);
        }
        gated_image = n;
      }
      for_each_expanded_band(
          g, row_elems, strip_begin, strip_end, plan.rows, tile,
          [&](int64_t first_row, int64_t rows, acc* dst) {
            if (!gate_weights) return primary_rows(n, first_row, rows, dst);
            const int64_t count = rows * g.in_w;
            module.primary(gated, as_acc_operand(in + (n * pixels + first_row * g.in_w) * C, count, C), count, dst);
          },
          [&](const ConvGeometry& band, const RowRange& need, int64_t r0, int64_t r1) {
            const int64_t first = r0 * g.out_w, count = (r1 - r0) * g.out_w;
            if (out_channels_last) {
              scalar_t* dst = o + (n * pixels + first) * OC;
              module.write_halves(dst, tile, repeated, band, need, r0, r1);
              if (res != nullptr) add_residual(dst, res + (n * pixels + first) * OC, count * OC);
              return;
            }
            module.write_halves(staged, tile, repeated, band, need, r0, r1);
            for (int64_t c = 0; c < OC; ++c) {
              scalar_t* plane = o + (n * OC + c) * pixels + first;
              const acc* src = staged + c;
              const scalar_t* res_plane = res ? res + (n * OC + c) * pixels + first : nullptr;
              for (int64_t q = 0; q < count; ++q) {
                const scalar_t rounded = static_cast<scalar_t>(src[q * OC]);
                plane[q] = res_plane ? static_cast<scalar_t>(static_cast<acc>(rounded) + static_cast<acc>(res_plane[q]))
                                     : rounded;
              }
            }
          });
    }
  });
}

// _ghost_bottleneck's kernel: out = second(depthwise(first(input))) [+ residual], the depthwise stage optional
// (`between`: GhostNet's stride-2 stage), channels-last. A work item is a strip of output rows of one image, run as
// bands of the second module (for_each_expanded_band on its geometry): each new run of the second module's primary
// rows is the GEMM of its input rows, computed just before into a per-thread tile in the storage type (as the
// unfused sequence stores them): the first module's output rows (ModuleBands::output_rows) or, with a depthwise
// stage, that stage's output rows, each new run of its own input rows computed by the first module's bands through
// one more tile (as _ghost_module_depthwise's kernel). Then the band's two halves are written and the residual rows
// added. Nothing between the input and the output reaches memory. Computed twice: the rows at strip boundaries, and
// each band's halos of the stages before it.
template <typename scalar_t>
bool bottleneck_forward_cpu(const Tensor& input /*channels-last*/, const GhostWeights<acc_t<scalar_t>>& w1,
                            const GhostModuleGeometry& geo1, const FollowingDepthwise<acc_t<scalar_t>>* between,
                            const GhostWeights<acc_t<scalar_t>>& w2, const GhostModuleGeometry& geo2,
                            const Tensor& residual /*channels-last, or undefined*/, Tensor& out /*channels-last*/) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t V = at::vec::Vectorized<acc>::size();
  const ModuleBands<scalar_t> first(w1, geo1), second(w2, geo2);
  const ConvGeometry& g1 = geo1.cheap;  // the first module's map (the input's: stride 1)
  const ConvGeometry& g = geo2.cheap;   // the second module's map, the output's
  const int64_t H = g.out_h, W = g.out_w, pixels = H * W, in_pixels = g1.in_h * g1.in_w;
  const int64_t C = geo1.in_channels, M = geo1.out_channels, OC = geo2.out_channels;
  const int64_t mid_row = W * M, module_row = g1.out_w * M;
  // The first module's output rows a run of r depthwise output rows reads (all r rows without a depthwise stage).
  auto module_rows = [&](int64_t r) {
    return between == nullptr ? r
                              : std::min(g1.out_h, (r - 1) * between->geometry.stride_h + between->geometry.kernel_h);
  };
  // A band of r output rows holds the second module's primary rows it reads, its input rows under them (the first
  // band computes them all), with a depthwise stage the first module's output rows those read, and the first
  // module's primary rows under those.
  auto band_bytes = [&](int64_t r) {
    const int64_t held = second.tile_rows(r), module_held = module_rows(held);
    return second.tile_bytes(held) + held * mid_row * static_cast<int64_t>(sizeof(scalar_t)) +
           (between == nullptr ? 0 : module_held * module_row * static_cast<int64_t>(sizeof(scalar_t))) +
           first.tile_bytes(first.tile_rows(module_held));
  };
  int64_t rows_fit = 1;
  while (rows_fit < H && band_bytes(rows_fit + 1) <= band_tile_bytes()) ++rows_fit;
  const double depthwise_row_macs =
      between == nullptr ? 0.0 : static_cast<double>(W * M * between->geometry.kernel_h * between->geometry.kernel_w);
  const double stride = between == nullptr ? 1.0 : static_cast<double>(between->geometry.stride_h);
  const double row_macs = stride * first.row_macs() + depthwise_row_macs + second.row_macs();
  const int64_t threads = at::get_num_threads();
  const StripPlan plan = plan_strips(
      H, W, g.batch, threads, rows_fit, static_cast<double>(H) * row_macs,
      static_cast<double>(g.kernel_h - 1) * row_macs + static_cast<double>(g1.kernel_h - 1) * first.primary_row_macs());
  // Fewer strips than threads (small maps, fewer images than threads: 7x7 at batch 1) leave threads idle where each
  // module alone would split its channels between them: 160->960->160 at 7x7, batch 1, 2 threads, took 153 us
  // here against 118 us as the two modules.
  if (g.batch * plan.strips_per_image < threads) return false;
  const int64_t max_held = second.tile_rows(plan.rows), max_module_rows = module_rows(max_held);
  const int64_t strip_macs = plan.strip_rows * static_cast<int64_t>(row_macs);
  const int64_t grain = std::max<int64_t>(1, kMinWorkItemMacs / std::max<int64_t>(1, strip_macs));
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const scalar_t* res = residual.defined() ? residual.const_data_ptr<scalar_t>() : nullptr;
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, g.batch * plan.strips_per_image, grain, [&](int64_t begin, int64_t end) {
    const int64_t first_rows = first.tile_rows(max_module_rows);
    acc* tile1 = thread_scratch<acc>(first_rows * first.row_elems + V, ScratchSlot::kTileHidden);
    acc* repeated1 =
        first.m == 1 ? nullptr : thread_scratch<acc>(first_rows * g1.in_w * first.dw_ld + V, ScratchSlot::kTile);
    // The second module's input rows, then (with a depthwise stage) the first module's output rows.
    const int64_t mid_elems = max_held * mid_row + V;
    scalar_t* mid = thread_scratch<scalar_t>(mid_elems + (between == nullptr ? 0 : max_module_rows * module_row + V),
                                             ScratchSlot::kTileOut);
    scalar_t* module_tile = mid + mid_elems;
    // The second module's primary tile, then room for its repeated copy.
    const int64_t tile2_elems = max_held * second.row_elems + V;
    acc* tile2 = thread_scratch<acc>(tile2_elems + (second.m == 1 ? 0 : max_held * W * second.dw_ld + V),
                                     ScratchSlot::kTileSecond);
    acc* repeated2 = second.m == 1 ? nullptr : tile2 + tile2_elems;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / plan.strips_per_image, strip = item % plan.strips_per_image;
      const int64_t strip_begin = strip * plan.strip_rows, strip_end = std::min(H, strip_begin + plan.strip_rows);
      const scalar_t* image = in + n * in_pixels * C;
      auto primary1 = [&](int64_t row, int64_t count, acc* primary) {
        const int64_t count_pixels = count * g1.in_w;
        first.primary(as_acc_operand(image + row * g1.in_w * C, count_pixels, C), count_pixels, primary);
      };
      // The first module's output rows [first_row, first_row + count) at dst.
      auto module_output_rows = [&](int64_t first_row, int64_t count, scalar_t* dst) {
        first.output_rows(first_row, count, dst, tile1, repeated1, primary1);
      };
      for_each_expanded_band(
          g, second.row_elems, strip_begin, strip_end, plan.rows, tile2,
          [&](int64_t first_row, int64_t rows, acc* dst) {
            if (between == nullptr) {
              module_output_rows(first_row, rows, mid);
            } else {
              const FollowingDepthwise<acc>& f = *between;
              for_each_expanded_band(
                  f.geometry, module_row, first_row, first_row + rows, rows, module_tile, module_output_rows,
                  [&](const ConvGeometry& band, const RowRange& /*need*/, int64_t r0, int64_t r1) {
                    f.rows(module_tile, module_row, M, mid + (r0 - first_row) * mid_row, mid_row, band, r0, r1);
                  });
            }
            second.primary(as_acc_operand(mid, rows * W, M), rows * W, dst);
          },
          [&](const ConvGeometry& band, const RowRange& need, int64_t r0, int64_t r1) {
            scalar_t* dst = o + (n * pixels + r0 * W) * OC;
            second.write_halves(dst, tile2, repeated2, band, need, r0, r1);
            if (res != nullptr) add_residual(dst, res + (n * pixels + r0 * W) * OC, (r1 - r0) * W * OC);
          });
    }
  });
  return true;
}

// The module's weights as forward_cpu reads them: packed_weights (checked against this call) or packed now.
template <typename scalar_t>
GhostWeights<acc_t<scalar_t>> module_weights(const GhostModuleGeometry& geo,
                                             const c10::optional<Tensor>& packed_weights, const Tensor& primary_weight,
                                             const c10::optional<Tensor>& primary_bias, const Tensor& cheap_weight,
                                             const c10::optional<Tensor>& cheap_bias,
                                             ScratchSlot slot = ScratchSlot::kPacked) {
  using acc = acc_t<scalar_t>;
  if (packed_weights.has_value() && packed_weights->defined()) {
    return ghost_weight_layout<acc>(
        geo, checked_packed_weights(*packed_weights, ghost_weight_header<acc>(geo), ghost_weight_elements<acc>(geo),
                                    "fusedops.ops.ghost_module.pack_weights"));
  }
  return pack_ghost_weights<scalar_t>(geo, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                      thread_scratch<acc>(ghost_weight_elements<acc>(geo), slot));
}

// The pixels the primary 1x1 convolution reads (every stride-th), channels-last: a 1x1 convolution at stride s is
// one at stride 1 on those.
Tensor primary_pixels(const Tensor& input, const GhostModuleGeometry& geo) {
  Tensor picked = input;
  if (geo.stride_h > 1 || geo.stride_w > 1) {
    picked = picked.slice(2, 0, c10::nullopt, geo.stride_h).slice(3, 0, c10::nullopt, geo.stride_w);
  }
  return picked.contiguous(at::MemoryFormat::ChannelsLast);
}

Tensor ghost_module_cpu(const Tensor& input_, const Tensor& primary_weight, const c10::optional<Tensor>& primary_bias,
                        const Tensor& cheap_weight, const c10::optional<Tensor>& cheap_bias,
                        const c10::optional<Tensor>& residual, int64_t out_channels, at::IntArrayRef stride,
                        c10::string_view activation, const c10::optional<Tensor>& packed_weights) {
  const GhostModuleGeometry geo = ghost_module_geometry(input_, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                                        out_channels, stride, std_view(activation), residual);
  const ConvGeometry& g = geo.cheap;
  TORCH_CHECK(input_.device().is_cpu(), "fusedops: ghost_module CPU kernel got input on ", input_.device());
  if (!all_finite(cheap_weight)) {
    // A NaN or Inf depthwise weight would meet the tiles' zero padding (cpu/finite.h).
    return ghost_module_composed(input_, primary_weight, primary_bias, cheap_weight, cheap_bias, out_channels, stride,
                                 std_view(activation), residual);
  }
  const at::MemoryFormat fmt = output_memory_format(input_);
  Tensor out = at::empty({g.batch, out_channels, g.out_h, g.out_w}, input_.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const Tensor input = primary_pixels(input_, geo);
  const Tensor res = geo.residual ? residual->contiguous(fmt) : Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "ghost_module_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const GhostWeights<acc> weights =
        module_weights<scalar_t>(geo, packed_weights, primary_weight, primary_bias, cheap_weight, cheap_bias);
    forward_cpu<scalar_t>(input, weights, res, out, geo, fmt == at::MemoryFormat::ChannelsLast);
  });
  return out;
}

// _ghost_module_depthwise: ghost_module (no residual), then a depthwise convolution of its output with dw_weight
// (out_channels, 1, kH, kW), dw_bias, dw_stride and padding (kH // 2, kW // 2), no activation: GhostNet's stride-2
// bottleneck from its first Ghost module to its depthwise stage, batch norms folded. One kernel (forward_cpu with
// a FollowingDepthwise); the output takes the input's memory format.
Tensor ghost_module_depthwise_cpu(const Tensor& input_, const Tensor& primary_weight,
                                  const c10::optional<Tensor>& primary_bias, const Tensor& cheap_weight,
                                  const c10::optional<Tensor>& cheap_bias, int64_t out_channels, at::IntArrayRef stride,
                                  c10::string_view activation, const Tensor& dw_weight,
                                  const c10::optional<Tensor>& dw_bias, at::IntArrayRef dw_stride,
                                  const c10::optional<Tensor>& packed_weights) {
  const GhostModuleGeometry geo = ghost_module_geometry(input_, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                                        out_channels, stride, std_view(activation), c10::nullopt);
  TORCH_CHECK(input_.device().is_cpu(), "fusedops: _ghost_module_depthwise CPU kernel got input on ", input_.device());
  check_pair(dw_stride, "dw_stride");
  // The module's output map (the primary convolution's) is what the depthwise convolution reads.
  const Tensor input = primary_pixels(input_, geo);
  const ConvGeometry d =
      following_depthwise_geometry(input, dw_weight, dw_bias, dw_stride, out_channels, "out_channels");
  const at::MemoryFormat fmt = output_memory_format(input_);
  Tensor out = at::empty({d.batch, out_channels, d.out_h, d.out_w},
                         input_.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (out.numel() == 0) return out.contiguous(fmt);
  if (!all_finite(cheap_weight) || !all_finite(dw_weight)) {
    // A NaN or Inf depthwise weight would meet the tiles' zero padding (cpu/finite.h): the two ops.
    const Tensor module = ghost_module_cpu(input_, primary_weight, primary_bias, cheap_weight, cheap_bias, c10::nullopt,
                                           out_channels, stride, activation, packed_weights);
    const std::array<int64_t, 2> padding{d.pad_h, d.pad_w}, unit{1, 1};
    return ops::call<ops::depthwise_conv2d>(module, dw_weight, dw_bias, dw_stride, padding, unit);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "ghost_module_depthwise_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const GhostWeights<acc> weights =
        module_weights<scalar_t>(geo, packed_weights, primary_weight, primary_bias, cheap_weight, cheap_bias);
    const FollowingDepthwise<acc> following = laid_out_depthwise<scalar_t>(d, dw_weight, dw_bias);
    forward_cpu<scalar_t>(input, weights, Tensor(), out, geo, true, &following);
  });
  return out.contiguous(fmt);
}

// _ghost_module_excited: ghost_module(input * gate) with gate = se_gate(se_expand(se_activation(se_reduce(mean over
// the input's pixels)))) per image and channel: GhostNet's squeeze-excitation and the Ghost module after it. The
// channel sums and the gates are computed first (squeeze_excitation_gates); the module's kernel then scales its
// primary GEMM's input rows by the gates on their way into the GEMM (forward_cpu's input_scale), so the gated
// input is never written.
Tensor ghost_module_excited_cpu(const Tensor& input_, const Tensor& se_reduce_weight,
                                const c10::optional<Tensor>& se_reduce_bias, const Tensor& se_expand_weight,
                                const c10::optional<Tensor>& se_expand_bias, c10::string_view se_activation,
                                c10::string_view se_gate, const Tensor& primary_weight,
                                const c10::optional<Tensor>& primary_bias, const Tensor& cheap_weight,
                                const c10::optional<Tensor>& cheap_bias, const c10::optional<Tensor>& residual,
                                int64_t out_channels, at::IntArrayRef stride, c10::string_view activation,
                                const c10::optional<Tensor>& packed_weights) {
  const GhostModuleGeometry geo = ghost_module_geometry(input_, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                                        out_channels, stride, std_view(activation), residual);
  TORCH_CHECK(input_.device().is_cpu(), "fusedops: _ghost_module_excited CPU kernel got input on ", input_.device());
  const c10::optional<Tensor> reduce_weight(se_reduce_weight), expand_weight(se_expand_weight);
  const SqueezeExcitationGeometry se = squeeze_excitation_geometry(
      input_,
      squeeze_excitation_args(reduce_weight, se_reduce_bias, expand_weight, se_expand_bias, se_activation, se_gate),
      geo.in_channels, "the input channels");
  const ConvGeometry& g = geo.cheap;
  const at::MemoryFormat fmt = output_memory_format(input_);
  Tensor out = at::empty({g.batch, out_channels, g.out_h, g.out_w}, input_.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  // The squeeze-excitation pools the whole input, before the primary convolution's stride picks its pixels.
  const Tensor full = input_.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor input = primary_pixels(full, geo);
  const Tensor res = geo.residual ? residual->contiguous(fmt) : Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "ghost_module_excited_cpu", [&] {
    using acc = acc_t<scalar_t>;
    constexpr int64_t V = at::vec::Vectorized<acc>::size();
    const int64_t N = g.batch, C = geo.in_channels, S = se.channels;
    const int64_t full_pixels = full.size(2) * full.size(3);
    // The squeeze-excitation's weights as row-major matrices of acc: the tensors themselves where they already are.
    const auto as_acc = [](const Tensor& t) {
      return t.to(c10::CppTypeToScalarType<acc>::value).contiguous();  // no copy where it is both already
    };
    const Tensor rw = as_acc(se_reduce_weight), ew = as_acc(se_expand_weight);
    const Tensor rb = given(se_reduce_bias) ? as_acc(*se_reduce_bias) : Tensor();
    const Tensor eb = given(se_expand_bias) ? as_acc(*se_expand_bias) : Tensor();
    // Channel sums of each image, its pixels cut into chunks where there are fewer images than threads.
    const int64_t threads = at::get_num_threads();
    const int64_t chunks = std::clamp<int64_t>(threads / N, 1, std::max<int64_t>(1, full_pixels / 64));
    const int64_t ld = C + V, squeezed_ld = S + V;
    // Gates of C per image, as forward_cpu reads them.
    acc* partial = thread_scratch<acc>((N * chunks + N) * ld + N * squeezed_ld + N * C, ScratchSlot::kReduce);
    acc* sums = partial + N * chunks * ld;
    acc* squeezed = sums + N * ld;
    acc* gates = squeezed + N * squeezed_ld;
    const scalar_t* x = full.const_data_ptr<scalar_t>();
    at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / chunks, chunk = item % chunks;
        const int64_t q0 = chunk * full_pixels / chunks, q1 = (chunk + 1) * full_pixels / chunks;
        acc* total = partial + item * ld;
        std::fill(total, total + C, acc(0));
        const scalar_t* image = x + n * full_pixels * C;
        for (int64_t q = q0; q < q1; ++q) {
          for (int64_t c = 0; c < C; c += V) {
            const int64_t k = std::min(V, C - c);
            (at::vec::Vectorized<acc>::loadu(total + c, k) + load_acc(image + q * C + c, k)).store(total + c, k);
          }
        }
      }
    });
    for (int64_t n = 0; n < N; ++n) {
      std::copy(partial + n * chunks * ld, partial + n * chunks * ld + C, sums + n * ld);
      for (int64_t chunk = 1; chunk < chunks; ++chunk) {
        const acc* part = partial + (n * chunks + chunk) * ld;
        for (int64_t c = 0; c < C; ++c) sums[n * ld + c] += part[c];
      }
    }
    squeeze_excitation_gates<acc>({rw.const_data_ptr<acc>(), rb.defined() ? rb.const_data_ptr<acc>() : nullptr,
                                   ew.const_data_ptr<acc>(), eb.defined() ? eb.const_data_ptr<acc>() : nullptr},
                                  C, S, se.activation, se.gate, sums, ld, acc(1) / static_cast<acc>(full_pixels), N,
                                  squeezed, squeezed_ld, gates, C);
    if (!all_finite(cheap_weight)) {
      // A NaN or Inf depthwise weight would meet the tiles' zero padding (cpu/finite.h): the module's own path on
      // the gated input.
      Tensor scale = at::empty({N, C, 1, 1}, full.options().dtype(c10::CppTypeToScalarType<acc>::value));
      std::copy(gates, gates + N * C, scale.mutable_data_ptr<acc>());
      out = ghost_module_cpu(full * scale.to(full.scalar_type()), primary_weight, primary_bias, cheap_weight,
                             cheap_bias, residual, out_channels, stride, activation, packed_weights);
      return;
    }
    const GhostWeights<acc> weights =
        module_weights<scalar_t>(geo, packed_weights, primary_weight, primary_bias, cheap_weight, cheap_bias);
    forward_cpu<scalar_t>(input, weights, res, out, geo, fmt == at::MemoryFormat::ChannelsLast, nullptr, gates);
  });
  return out;
}

// _ghost_bottleneck: ghost_module(x, <second module>, out_channels, stride 1, residual) of x = ghost_module(input,
// <first module>, mid_channels, stride 1), then, with a dw_weight, x = depthwise_conv2d(x, dw_weight, dw_bias,
// dw_stride, padding k // 2): GhostNet's bottleneck without squeeze-excitation, batch norms folded, its shortcut
// given as residual. One kernel (bottleneck_forward_cpu); the output takes the input's memory format.
Tensor ghost_bottleneck_cpu(const Tensor& input_, const Tensor& primary_weight,
                            const c10::optional<Tensor>& primary_bias, const Tensor& cheap_weight,
                            const c10::optional<Tensor>& cheap_bias, int64_t mid_channels, c10::string_view activation,
                            const c10::optional<Tensor>& dw_weight, const c10::optional<Tensor>& dw_bias,
                            at::IntArrayRef dw_stride, const Tensor& second_primary_weight,
                            const c10::optional<Tensor>& second_primary_bias, const Tensor& second_cheap_weight,
                            const c10::optional<Tensor>& second_cheap_bias, int64_t out_channels,
                            c10::string_view second_activation, const c10::optional<Tensor>& residual,
                            const c10::optional<Tensor>& packed_weights,
                            const c10::optional<Tensor>& second_packed_weights) {
  const std::array<int64_t, 2> unit{1, 1};
  const GhostBottleneckGeometry geo = ghost_bottleneck_geometry(
      input_, primary_weight, primary_bias, cheap_weight, cheap_bias, mid_channels, std_view(activation), dw_weight,
      dw_bias, dw_stride, second_primary_weight, second_primary_bias, second_cheap_weight, second_cheap_bias,
      out_channels, std_view(second_activation), residual);
  TORCH_CHECK(input_.device().is_cpu(), "fusedops: _ghost_bottleneck CPU kernel got input on ", input_.device());
  const GhostModuleGeometry &geo1 = geo.first, &geo2 = geo.second;
  const ConvGeometry& depthwise = geo.depthwise;
  const bool has_depthwise = geo.has_depthwise;
  const int64_t N = input_.size(0), H = geo2.cheap.out_h, W = geo2.cheap.out_w;
  const at::MemoryFormat fmt = output_memory_format(input_);
  if (N == 0) return at::empty({0, out_channels, H, W}, input_.options().memory_format(fmt));
  // The ops the kernel stands for, one after another: where a NaN or Inf depthwise weight would meet the tiles' zero
  // padding (cpu/finite.h), and where bottleneck_forward_cpu declines.
  auto op_by_op = [&]() {
    const Tensor x = has_depthwise ? ghost_module_depthwise_cpu(input_, primary_weight, primary_bias, cheap_weight,
                                                                cheap_bias, mid_channels, unit, activation, *dw_weight,
                                                                dw_bias, dw_stride, packed_weights)
                                   : ghost_module_cpu(input_, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                                      c10::nullopt, mid_channels, unit, activation, packed_weights);
    return ghost_module_cpu(x, second_primary_weight, second_primary_bias, second_cheap_weight, second_cheap_bias,
                            residual, out_channels, unit, second_activation, second_packed_weights);
  };
  if (!all_finite(cheap_weight) || !all_finite(second_cheap_weight) || (has_depthwise && !all_finite(*dw_weight))) {
    return op_by_op();
  }
  const Tensor input = input_.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor res = given(residual) ? residual->contiguous(at::MemoryFormat::ChannelsLast) : Tensor();
  Tensor out = at::empty({N, out_channels, H, W}, input.options().memory_format(at::MemoryFormat::ChannelsLast));
  bool ran = false;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "ghost_bottleneck_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const GhostWeights<acc> first =
        module_weights<scalar_t>(geo1, packed_weights, primary_weight, primary_bias, cheap_weight, cheap_bias);
    const GhostWeights<acc> second =
        module_weights<scalar_t>(geo2, second_packed_weights, second_primary_weight, second_primary_bias,
                                 second_cheap_weight, second_cheap_bias, ScratchSlot::kWeights);
    FollowingDepthwise<acc> between;
    if (has_depthwise) between = laid_out_depthwise<scalar_t>(depthwise, *dw_weight, dw_bias);
    ran = bottleneck_forward_cpu<scalar_t>(input, first, geo1, has_depthwise ? &between : nullptr, second, geo2, res,
                                           out);
  });
  return ran ? out.contiguous(fmt) : op_by_op();
}

Tensor ghost_module_pack_weights_cpu(const Tensor& input, const Tensor& primary_weight,
                                     const c10::optional<Tensor>& primary_bias, const Tensor& cheap_weight,
                                     const c10::optional<Tensor>& cheap_bias, const c10::optional<Tensor>& residual,
                                     int64_t out_channels, at::IntArrayRef stride, c10::string_view activation) {
  const GhostModuleGeometry geo = ghost_module_geometry(input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                                        out_channels, stride, std_view(activation), residual);
  Tensor packed;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "ghost_module_pack", [&] {
    using acc = acc_t<scalar_t>;
    packed = at::empty(
        {ghost_weight_elements<acc>(geo)},
        input.options().dtype(c10::CppTypeToScalarType<acc>::value).memory_format(at::MemoryFormat::Contiguous));
    pack_ghost_weights<scalar_t>(geo, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                 packed.mutable_data_ptr<acc>());
  });
  return packed;
}

GhostModuleGrads ghost_module_backward_cpu(const Tensor& grad_output, const Tensor& input, const Tensor& primary_weight,
                                           const c10::optional<Tensor>& primary_bias, const Tensor& cheap_weight,
                                           const c10::optional<Tensor>& cheap_bias, int64_t out_channels,
                                           at::IntArrayRef stride, c10::string_view activation,
                                           std::array<bool, kGhostModuleGradients> output_mask) {
  TORCH_CHECK(input.device().is_cpu(), "fusedops: ghost_module CPU backward got input on ", input.device());
  return ghost_module_backward_recomputed(grad_output, input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                          out_channels, stride, std_view(activation), output_mask);
}

}  // namespace
}  // namespace cpu
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("ghost_module", &fusedops::cpu::ghost_module_cpu);
  m.impl("_ghost_module_backward", &fusedops::cpu::ghost_module_backward_cpu);
  m.impl("_ghost_module_pack_weights", &fusedops::cpu::ghost_module_pack_weights_cpu);
  m.impl("_ghost_module_depthwise", &fusedops::cpu::ghost_module_depthwise_cpu);
  m.impl("_ghost_module_excited", &fusedops::cpu::ghost_module_excited_cpu);
  m.impl("_ghost_bottleneck", &fusedops::cpu::ghost_bottleneck_cpu);
}
