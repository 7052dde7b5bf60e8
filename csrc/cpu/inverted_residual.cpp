// CPU kernels of fusedops::inverted_residual (MobileNetV2's block: expand 1x1 -> act -> depthwise -> act ->
// project 1x1 [+ input]) and its backward.
//
// Forward, per work item (image n, band of R output rows), every stage on cache-resident tiles:
//   1. expand: the band's input rows, plus the depthwise halo, times the packed expand weights
//      (pointwise_gemm, bias and activation in its epilogue) into a per-thread tile of hidden rows
//      (the expanded map never reaches memory);
//   2. depthwise: the band's output rows from that tile (depthwise_nhwc_row, the tile standing for the
//      image: its geometry is the band's rows, the rows above it counted as padding that is never read),
//      bias and activation in the epilogue, into a second tile;
//   3. project: that tile times the packed project weights, bias in the epilogue, straight into a
//      channels-last output (NCHW outputs through a staging tile and a transposed store); the residual
//      is added to the band's outputs while they are in cache.
// Without an expand stage, step 2 reads the input itself. With a squeeze-excitation, whose gate pools the whole
// depthwise map before the project stage may start, rounds of images run in four parallel steps instead: their
// depthwise maps into per-image tiles (through the same strips, with channel sums), the SE's reduce rows, then
// its expand rows for every image of the round, then the project GEMM over the tiles, gating each pixel chunk on
// the way (see forward_cpu). Bands overlap by the depthwise halo, whose
// expanded rows are computed by both bands: the band height weighs that recomputation against load
// balance over the threads and the tile budget (band_plan). NCHW inputs are converted to channels-last
// once (a copy of the input, not of any intermediate).
//
// Backward: inverted_residual_backward_recomputed (csrc/shared/inverted_residual.cpp): the expanded map
// is recomputed, the depthwise and project stages go through the band-wise dwpw backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <torch/library.h>

#include "fusedops/cpu/activation.h"
#include "fusedops/cpu/cache_size.h"
#include "fusedops/cpu/finite.h"
#include "fusedops/cpu/depthwise_nhwc.h"
#include "fusedops/cpu/expanded_bands.h"
#include "fusedops/cpu/fused_weights.h"
#include "fusedops/cpu/inverted_residual_block.h"
#include "fusedops/cpu/pointwise_gemm.h"
#include "fusedops/cpu/scratch.h"
#include "fusedops/cpu/squeeze_excitation.h"
#include "fusedops/cpu/vec_io.h"
#include "fusedops/dwpw.h"
#include "fusedops/inverted_residual.h"
#include "fusedops/schema_str.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <exception>
#include <numeric>
#include <type_traits>

namespace fusedops {
namespace cpu {
namespace {

using at::Tensor;

// Whole-image plan (band_plan): the largest image of depthwise outputs it keeps (in L2, shared by the threads: half
// of it), what its two pool wake-ups per image cost in multiply-adds of one thread (~10 us at ~50 GMAC/s), and the
// pixels of one project work item.
int64_t image_bytes() {
  return l2_cache_bytes() / 2;
}
constexpr double kImageSyncMacs = 5e5;
constexpr int64_t kImagePixelChunk = 64;
// The largest output (pixels x channels) of one image whose block runs as slices of its hidden channels, each
// thread's slice through every step (forward_cpu): each slice writes a partial output of this size, added up after
// on one thread. 7x7 x 160 channels (7840) is in; twice this limit took in MobileNetV2's 160->960->320 at 7x7 and
// V3-Large's 80->184->80 at 14x14 gained nothing (269-289 against 277-285 us, 87 against 87-88 us; Zen 3, 2
// threads, minima of 6 alternating runs).
constexpr int64_t kSplitHiddenOutputs = 8192;

// The whole-image plan's project step: its pixels cut into `chunks` chunks of `pixels` (the last may be shorter),
// each chunk a work item per project panel of each image.
struct ProjectChunks {
  int64_t chunks, pixels;
};

// Chunks of at most kImagePixelChunk pixels, as even as the pixels allow (196 pixels: 4 of 49, not 3 of 64 and one
// of 4, which left one thread a third of the other's work), and, where a few more chunks of at least a
// micro-kernel's height make it so, as many items as the threads share evenly: at::parallel_for gives each thread
// an equal count of consecutive items. With the project's items single vectors of output channels: MobileNetV2 at
// batch 1, 2 threads, alone, on the 2-vCPU Xeon (noisy host, ranges over runs): 96->576->96 at 14x14 252 ->
// 207-220 us, 160->960->160 at 7x7 (5 panels, 10 vectors) 179 -> 160-170 us; speedup over 1 thread 1.54 -> 1.70
// and 1.67 -> 1.72.
ProjectChunks project_chunks(int64_t pixels, int64_t items_per_chunk, int64_t threads) {
  constexpr int64_t kMinChunkPixels = 8;
  int64_t chunks = (pixels + kImagePixelChunk - 1) / kImagePixelChunk;
  for (int64_t more = chunks; more <= std::min(2 * chunks + threads, pixels / kMinChunkPixels); ++more) {
    if (more * items_per_chunk % threads == 0) {
      chunks = more;
      break;
    }
  }
  const int64_t chunk_pixels = (pixels + chunks - 1) / chunks;
  return {(pixels + chunk_pixels - 1) / chunk_pixels, chunk_pixels};
}

struct BandPlan {
  bool whole_images = false;     // whole images in two parallel steps instead of strips (see forward_cpu)
  int64_t rows = 1;              // output rows per band
  int64_t strip_rows = 1;        // output rows per strip: consecutive bands, one work item
  int64_t strips_per_image = 1;  // ceil(out_h / strip_rows)
  int64_t max_hidden_rows = 0;   // the most expanded rows a band's tile holds
};

// How a call's work is cut. A work item is a strip of consecutive output rows of one image, run as bands of `rows`
// rows whose expanded rows (halo included) fit a tile of band_tile_bytes() with their depthwise rows
// (for_each_expanded_band); the strip count is plan_strips' (cpu/expanded_bands.h).
// Whole images in two parallel steps replace the strips where they are estimated faster (batch 1, small maps).
BandPlan band_plan(const InvertedResidualGeometry& geo, int64_t acc_bytes, int64_t threads) {
  const ConvGeometry& g = geo.dw;
  const int64_t H = geo.hidden;
  const int64_t extent = dilated_extent(g.kernel_h, g.dilation_h);
  const int64_t expand_per_row = geo.expand ? g.in_w * geo.in_channels * H : 0;
  const int64_t out_per_row = g.out_w * H * (g.kernel_h * g.kernel_w + geo.out_channels);
  auto hidden_rows = [&](int64_t r) { return std::min(g.in_h, (r - 1) * g.stride_h + extent); };
  auto tile_bytes = [&](int64_t r) {
    return ((geo.expand ? hidden_rows(r) * g.in_w * H : 0) + r * g.out_w * H) * acc_bytes;
  };
  int64_t rows_fit = 1;
  while (rows_fit < g.out_h && tile_bytes(rows_fit + 1) <= band_tile_bytes()) ++rows_fit;
  // Input rows expanded again at each strip boundary.
  const int64_t boundary_rows = std::max<int64_t>(0, extent - g.stride_h);
  const double image_work = static_cast<double>(g.in_h * expand_per_row + g.out_h * out_per_row);
  const StripPlan strips = plan_strips(g.out_h, g.out_w, g.batch, threads, rows_fit, image_work,
                                       static_cast<double>(boundary_rows * expand_per_row));
  BandPlan best;
  best.rows = strips.rows;
  best.strip_rows = strips.strip_rows;
  best.strips_per_image = strips.strips_per_image;
  best.max_hidden_rows = hidden_rows(best.rows);  // bands of fewer rows, or clipped, hold fewer
  // Whole images: no row expanded twice, every thread busy on every image, at the cost of two pool wake-ups per
  // image; for blocks with an expand stage whose image of depthwise outputs stays in L2.
  const double image_time = static_cast<double>(g.batch) * (image_work / static_cast<double>(threads) + kImageSyncMacs);
  if (geo.expand && threads > 1 && g.out_h * g.out_w * H * acc_bytes <= image_bytes() && image_time < strips.time) {
    best.whole_images = true;
  }
  return best;
}

// The block's weights as the kernel reads them, in the accumulation type: a header (kHeader elements: the panel
// width and the block's channel counts and taps, which a packed tensor must match), then the expand and project
// weights packed into GEMM panels, the depthwise taps [T][hidden] and the depthwise bias, then the
// squeeze-excitation's weights as row-major matrices (reduce [S][hidden], expand [hidden][S]) and their biases
// (zeros where absent).
constexpr int64_t kHeader = 8;

template <typename acc>
struct BlockWeights {
  PackedPointwise<acc> expand, project;
  const acc* dw_taps = nullptr;
  const acc* dw_bias = nullptr;
  const acc* se_reduce = nullptr;
  const acc* se_reduce_bias = nullptr;
  const acc* se_expand = nullptr;
  const acc* se_expand_bias = nullptr;
};

template <typename acc>
int64_t block_weight_elements(const InvertedResidualGeometry& geo) {
  using P = PackedPointwise<acc>;
  constexpr int64_t V = at::vec::Vectorized<acc>::size();
  const int64_t T = geo.dw.kernel_h * geo.dw.kernel_w, S = geo.se_channels;
  return kHeader + (geo.expand ? P::packed_elements(geo.in_channels, geo.hidden) : 0) +
         P::packed_elements(geo.hidden, geo.out_channels) + T * geo.hidden + geo.hidden + V +
         (S > 0 ? 2 * S * geo.hidden + S + geo.hidden : 0);
}

template <typename acc>
std::array<acc, kHeader> block_weight_header(const InvertedResidualGeometry& geo) {
  return {acc(PackedPointwise<acc>::kNr), acc(geo.expand),      acc(geo.in_channels), acc(geo.hidden),
          acc(geo.out_channels),          acc(geo.dw.kernel_h), acc(geo.dw.kernel_w), acc(geo.se_channels)};
}

// Where each part lives in `base` (block_weight_elements of acc).
template <typename acc>
BlockWeights<acc> block_weight_layout(const InvertedResidualGeometry& geo, const acc* base) {
  using P = PackedPointwise<acc>;
  BlockWeights<acc> w;
  acc* p = const_cast<acc*>(base) + kHeader;
  if (geo.expand) {
    w.expand = packed_pointwise_layout<acc>(geo.in_channels, geo.hidden, p);
    p += P::packed_elements(geo.in_channels, geo.hidden);
  }
  w.project = packed_pointwise_layout<acc>(geo.hidden, geo.out_channels, p);
  p += P::packed_elements(geo.hidden, geo.out_channels);
  w.dw_taps = p;
  w.dw_bias = p + geo.dw.kernel_h * geo.dw.kernel_w * geo.hidden;
  p += geo.dw.kernel_h * geo.dw.kernel_w * geo.hidden + geo.hidden + at::vec::Vectorized<acc>::size();
  const int64_t S = geo.se_channels;
  w.se_reduce = p;
  w.se_reduce_bias = p + S * geo.hidden;
  w.se_expand = w.se_reduce_bias + S;
  w.se_expand_bias = w.se_expand + geo.hidden * S;
  return w;
}

// A 1x1 weight (rows, cols, 1, 1) as a row-major matrix of acc, and its optional bias (rows,) (zeros without).
template <typename scalar_t>
void lay_out_matrix(const Tensor& weight, const c10::optional<Tensor>& bias, int64_t rows, int64_t cols,
                    acc_t<scalar_t>* matrix, acc_t<scalar_t>* bias_out) {
  using acc = acc_t<scalar_t>;
  const Tensor wc = weight.contiguous();
  const scalar_t* src = wc.const_data_ptr<scalar_t>();
  std::transform(src, src + rows * cols, matrix, [](scalar_t v) { return static_cast<acc>(v); });
  const bool has_bias = bias.has_value() && bias->defined();
  const Tensor bc = has_bias ? bias->contiguous() : Tensor();
  for (int64_t r = 0; r < rows; ++r)
    bias_out[r] = has_bias ? static_cast<acc>(bc.const_data_ptr<scalar_t>()[r]) : acc(0);
}

// Packs the block's weights into `dst` (block_weight_elements of acc).
template <typename scalar_t>
BlockWeights<acc_t<scalar_t>> pack_block_weights(const InvertedResidualGeometry& geo,
                                                 const c10::optional<Tensor>& expand_weight,
                                                 const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                                                 const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                                                 const c10::optional<Tensor>& project_bias,
                                                 const SqueezeExcitationArgs& se, acc_t<scalar_t>* dst) {
  using acc = acc_t<scalar_t>;
  const auto header = block_weight_header<acc>(geo);
  std::copy(header.begin(), header.end(), dst);
  BlockWeights<acc> w = block_weight_layout<acc>(geo, dst);
  if (geo.expand) {
    pack_pointwise_weights<scalar_t>(*expand_weight, expand_bias, geo.in_channels, geo.hidden,
                                     const_cast<acc*>(w.expand.panels));
  }
  pack_pointwise_weights<scalar_t>(project_weight, project_bias, geo.hidden, geo.out_channels,
                                   const_cast<acc*>(w.project.panels));
  lay_out_depthwise_weights<scalar_t>(dw_weight, dw_bias, geo.hidden, geo.dw.kernel_h * geo.dw.kernel_w,
                                      const_cast<acc*>(w.dw_taps), const_cast<acc*>(w.dw_bias));
  if (geo.se_channels > 0) {
    lay_out_matrix<scalar_t>(*se.reduce_weight, se.reduce_bias, geo.se_channels, geo.hidden,
                             const_cast<acc*>(w.se_reduce), const_cast<acc*>(w.se_reduce_bias));
    lay_out_matrix<scalar_t>(*se.expand_weight, se.expand_bias, geo.hidden, geo.se_channels,
                             const_cast<acc*>(w.se_expand), const_cast<acc*>(w.se_expand_bias));
  }
  return w;
}

// The weights of a packed_weights tensor, after checking that it was packed for a block of this geometry and
// dtype by this build.
template <typename acc>
BlockWeights<acc> packed_block_weights(const InvertedResidualGeometry& geo, const Tensor& packed) {
  return block_weight_layout<acc>(
      geo, checked_packed_weights(packed, block_weight_header<acc>(geo), block_weight_elements<acc>(geo),
                                  "fusedops.ops.inverted_residual.pack_weights"));
}

// dst[2c] = even[c], dst[2c + 1] = odd[c] for c < n.
template <typename scalar_t, typename acc>
void interleave_channels(const scalar_t* even, const acc* odd, scalar_t* dst, int64_t n) {
  int64_t c = 0;
  if constexpr (kSameAsAcc<scalar_t>) {
    using Vec = at::vec::Vectorized<acc>;
    constexpr int64_t V = Vec::size();
    for (; c + V <= n; c += V) {
      const auto [lo, hi] = at::vec::interleave2(Vec::loadu(even + c), Vec::loadu(odd + c));
      lo.store(dst + 2 * c);
      hi.store(dst + 2 * c + V);
    }
    if (c < n) {
      const int64_t m = n - c;
      const auto [lo, hi] = at::vec::interleave2(Vec::loadu(even + c, m), Vec::loadu(odd + c, m));
      lo.store(dst + 2 * c, std::min(2 * m, V));
      if (2 * m > V) hi.store(dst + 2 * c + V, 2 * m - V);
    }
    return;
  }
  for (; c < n; ++c) {
    dst[2 * c] = even[c];
    dst[2 * c + 1] = static_cast<scalar_t>(odd[c]);
  }
}

template <typename scalar_t>
void forward_cpu(const Tensor& input /*channels-last*/, const c10::optional<Tensor>& expand_weight,
                 const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                 const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                 const c10::optional<Tensor>& project_bias, const SqueezeExcitationArgs& se,
                 const c10::optional<Tensor>& packed_weights, Tensor& out, const InvertedResidualGeometry& geo,
                 bool out_channels_last, const BlockActivations& acts, const BlockIo& io) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t V = at::vec::Vectorized<acc>::size();
  const ConvGeometry& g = geo.dw;
  const int64_t C = geo.in_channels, H = geo.hidden, OC = geo.out_channels;
  const int64_t project_vectors = (OC + V - 1) / V;  // output channels in vectors (pointwise_gemm_vectors)
  const int64_t T = g.kernel_h * g.kernel_w;

  // Shared read-only weights: packed once by pack_weights, or here by the calling thread (expand and project
  // weights packed into panels, depthwise taps [T][H] and bias).
  const BlockWeights<acc> weights =
      (packed_weights.has_value() && packed_weights->defined())
          ? packed_block_weights<acc>(geo, *packed_weights)
          : pack_block_weights<scalar_t>(geo, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                         project_bias, se,
                                         thread_scratch<acc>(block_weight_elements<acc>(geo), ScratchSlot::kPacked));
  const PackedPointwise<acc>& expand = weights.expand;
  const PackedPointwise<acc>& project = weights.project;
  const acc* dw_taps = weights.dw_taps;
  const acc* dw_b = weights.dw_bias;

  const int64_t threads = at::get_num_threads();
  const BandPlan plan = band_plan(geo, sizeof(acc), threads);
  const int64_t out_pixels = g.out_h * g.out_w;
  const scalar_t* in = input.const_data_ptr<scalar_t>();
  const int64_t in_stride = io.input_pixel_stride;  // C for a whole input, more for a channel slice
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const scalar_t* partner = static_cast<const scalar_t*>(io.partner);
  const int64_t out_channels = partner != nullptr ? 2 * OC : OC;  // the output tensor's
  const ActivationEpilogue epilogue{acts.depthwise};

  // Expanded pixels [first, first + count) of `image`, the channels of expand panels [p0, p1), into `dst` (pixels
  // of `ld` channels, the first channel of panel p0 first), activation applied.
  auto expand_pixels = [&](const scalar_t* image, int64_t first, int64_t count, int64_t p0, int64_t p1, acc* dst,
                           int64_t ld) {
    const scalar_t* src = image + first * in_stride;
    const acc* a = nullptr;
    int64_t lda = in_stride;
    if constexpr (kSameAsAcc<scalar_t>) {
      a = src;
    } else {
      acc* converted = thread_scratch<acc>(count * C, ScratchSlot::kTilePacked);
      for (int64_t q = 0; q < count; ++q)
        for (int64_t e = 0; e < C; ++e) converted[q * C + e] = static_cast<acc>(src[q * in_stride + e]);
      a = converted;
      lda = C;
    }
    pointwise_gemm<acc, acc>(expand, p0, p1, a, lda, count, dst - p0 * PackedPointwise<acc>::kNr, ld, acts.expand);
  };
  // Depthwise output rows [r0, r1), channels [c0, c1), of `image` (channel c of pixel q at image + q * pixel_stride
  // + c, geometry `geom`) into `dst` (output row r0 first; pixels of H channels), activation applied.
  auto depthwise_rows = [&](const auto* image, int64_t pixel_stride, const ConvGeometry& geom, int64_t r0, int64_t r1,
                            int64_t c0, int64_t c1, acc* dst) {
    using in_t = std::remove_const_t<std::remove_pointer_t<decltype(image)>>;
    const auto t = nhwc_rows<in_t, acc>({image, geom.in_w * pixel_stride, pixel_stride}, dw_taps, H, dw_b,
                                        {dst, g.out_w * H, H}, r0, c0, c1);
    depthwise_nhwc_rows(t, geom, r1, epilogue);
  };
  // NCHW output: pixels [first, first + count) of image n, channels [c0, c1), from `staged` (count x ldc, channel
  // c0 first), rounded to scalar_t before the residual is added, as the unfused sequence rounds.
  auto store_planes = [&](int64_t n, int64_t first, int64_t count, int64_t c0, int64_t c1, const acc* staged,
                          int64_t ldc) {
    const scalar_t* residual = geo.residual ? in + (n * out_pixels + first) * in_stride : nullptr;
    scalar_t* plane = o + n * OC * out_pixels + first;
    for (int64_t c = c0; c < c1; ++c) {
      scalar_t* dst = plane + c * out_pixels;
      const acc* src = staged + (c - c0);
      if (residual != nullptr) {
        for (int64_t q = 0; q < count; ++q)
          dst[q] = static_cast<scalar_t>(static_cast<acc>(static_cast<scalar_t>(src[q * ldc])) +
                                         static_cast<acc>(residual[q * in_stride + c]));
      } else {
        for (int64_t q = 0; q < count; ++q) dst[q] = static_cast<scalar_t>(src[q * ldc]);
      }
    }
  };
  // Output pixels [first, first + count) of image n, the channels of project panels [p0, p1), from `mid` (those
  // pixels' depthwise outputs), then the residual: the output's pixels are the input's (stride 1, same size).
  // With a partner, its channels and the block's are interleaved on the way out, from a staging tile.
  // Output pixels [first, first + count) of image n, channels [v0 * V, v1 * V) (clipped at OC), from the depthwise
  // outputs `mid` (count x H).
  auto project_pixels = [&](int64_t n, int64_t first, int64_t count, int64_t v0, int64_t v1, const acc* mid) {
    const scalar_t* residual = geo.residual ? in + (n * out_pixels + first) * in_stride : nullptr;
    const int64_t c0 = v0 * V, c1 = std::min(OC, v1 * V);
    if (partner != nullptr) {
      const int64_t width = c1 - c0, ldc = width + V;
      acc* staged = thread_scratch<acc>(count * ldc + V, ScratchSlot::kTileOut);
      pointwise_gemm_vectors<acc, acc>(project, v0, v1, mid, H, count, staged - c0, ldc, acts.project);
      const scalar_t* pair = partner + (n * out_pixels + first) * io.partner_pixel_stride + c0;
      if (out_channels_last) {
        scalar_t* dst = o + (n * out_pixels + first) * out_channels + 2 * c0;
        for (int64_t q = 0; q < count; ++q)
          interleave_channels(pair + q * io.partner_pixel_stride, staged + q * ldc, dst + q * out_channels, width);
        return;
      }
      scalar_t* plane = o + n * out_channels * out_pixels + first;
      for (int64_t c = c0; c < c1; ++c) {
        scalar_t* even = plane + 2 * c * out_pixels;
        scalar_t* odd = even + out_pixels;
        for (int64_t q = 0; q < count; ++q) {
          even[q] = pair[q * io.partner_pixel_stride + (c - c0)];
          odd[q] = static_cast<scalar_t>(staged[q * ldc + (c - c0)]);
        }
      }
      return;
    }
    if (out_channels_last) {
      scalar_t* dst = o + (n * out_pixels + first) * OC;
      pointwise_gemm_vectors<acc, scalar_t>(project, v0, v1, mid, H, count, dst, OC, acts.project);
      if (residual != nullptr && c1 - c0 == OC) {
        add_residual(dst, residual, count * OC);
      } else if (residual != nullptr) {
        for (int64_t q = 0; q < count; ++q) add_residual(dst + q * OC + c0, residual + q * in_stride + c0, c1 - c0);
      }
      return;
    }
    const int64_t ldc = c1 - c0 + V;
    acc* staged = thread_scratch<acc>(count * ldc + V, ScratchSlot::kTileOut);
    pointwise_gemm_vectors<acc, acc>(project, v0, v1, mid, H, count, staged - c0, ldc, acts.project);
    store_planes(n, first, count, c0, c1, staged, ldc);
  };

  // Strip `strip` of image n, band by band (expanded rows, halo included -> depthwise rows; for_each_expanded_band
  // keeps the rows consecutive bands share). Each band's depthwise rows go to `image_tile` (the image's depthwise
  // outputs, projected later) when given, else to `band_tile`, which the project GEMM then writes out.
  const int64_t row_elems = g.in_w * H;
  auto run_strip = [&](int64_t n, int64_t strip, acc* band_tile, acc* image_tile) {
    acc* hidden =
        geo.expand ? thread_scratch<acc>(plan.max_hidden_rows * row_elems + V, ScratchSlot::kTileHidden) : nullptr;
    const int64_t strip_begin = strip * plan.strip_rows, strip_end = std::min(g.out_h, strip_begin + plan.strip_rows);
    const scalar_t* image = in + n * g.in_h * g.in_w * in_stride;
    auto tile_of = [&](int64_t r0) { return image_tile != nullptr ? image_tile + r0 * g.out_w * H : band_tile; };
    auto project_band = [&](acc* dst, int64_t r0, int64_t r1) {
      if (image_tile == nullptr) project_pixels(n, r0 * g.out_w, (r1 - r0) * g.out_w, 0, project_vectors, dst);
    };
    if (!geo.expand) {
      for (int64_t r0 = strip_begin; r0 < strip_end; r0 += plan.rows) {
        const int64_t r1 = std::min(strip_end, r0 + plan.rows);
        depthwise_rows(image, in_stride, g, r0, r1, 0, H, tile_of(r0));
        project_band(tile_of(r0), r0, r1);
      }
      return;
    }
    for_each_expanded_band(
        g, row_elems, strip_begin, strip_end, plan.rows, hidden,
        [&](int64_t first_row, int64_t rows, acc* dst) {
          expand_pixels(image, first_row * g.in_w, rows * g.in_w, 0, expand.num_panels(), dst, H);
        },
        [&](const ConvGeometry& band, const RowRange& /*need*/, int64_t r0, int64_t r1) {
          depthwise_rows(hidden, H, band, r0, r1, 0, H, tile_of(r0));
          project_band(tile_of(r0), r0, r1);
        });
  };
  // out[c] = sum over pixels [p0, p1) of tile[p * H + c], for channels [c0, c1).
  auto channel_sums = [&](const acc* tile, int64_t p0, int64_t p1, int64_t c0, int64_t c1, acc* out) {
    for (int64_t c = c0; c < c1; c += V) {
      const int64_t m = std::min(V, c1 - c);
      at::vec::Vectorized<acc> sum(acc(0));
      for (int64_t q = p0; q < p1; ++q) sum += at::vec::Vectorized<acc>::loadu(tile + q * H + c, m);
      sum.store(out + c, m);
    }
  };

  const int64_t strip_macs =
      plan.strip_rows * g.stride_h * (geo.expand ? g.in_w * C * H : 0) + plan.strip_rows * g.out_w * H * (T + OC);
  const int64_t grain = std::max<int64_t>(1, kMinWorkItemMacs / std::max<int64_t>(1, strip_macs));
  if (geo.se_channels > 0 || plan.whole_images) {
    // Whole images, a round of them at a time, in parallel steps: (1) expand + depthwise into one tile per image
    // of its depthwise outputs, split over images and slices of the hidden channels (no halo is expanded twice);
    // with a squeeze-excitation (2) its reduce rows and (3) its expand rows for every image of the round, each
    // weight row read once for all of them, the gate then scaling its channels of the tiles; (4) the project GEMM
    // over the tiles, split over images, pixels and output channels.
    constexpr int64_t kNr = PackedPointwise<acc>::kNr;
    const bool se = geo.se_channels > 0;
    const int64_t S = geo.se_channels;
    const int64_t hidden_panels = (H + kNr - 1) / kNr;
    const int64_t in_pixels = g.in_h * g.in_w, image_elems = out_pixels * H;
    // Hidden panels expanded at once: the expanded slice of the image stays within a band's tile budget.
    const int64_t group_panels = std::max<int64_t>(
        1, band_tile_bytes() / std::max<int64_t>(1, in_pixels * kNr * static_cast<int64_t>(sizeof(acc))));
    // Images per round: as many as keep their tiles within image_bytes(), a multiple of the threads (at least one
    // per thread), or the whole batch.
    const int64_t fitting = image_bytes() / std::max<int64_t>(1, image_elems * static_cast<int64_t>(sizeof(acc)));
    const int64_t round_images = std::min(g.batch, std::max(fitting / threads * threads, threads));
    // Per image of the round: its depthwise channel sums, the squeeze-excitation's reduced vector and its gate.
    // Without the whole-image plan, step (1) runs the strips of the plan (their sums added up afterwards).
    const int64_t sums_ld = H + V, squeezed_ld = S + V;
    const int64_t strip_sums = plan.whole_images ? 0 : plan.strips_per_image;
    acc* mids = thread_scratch<acc>(round_images * image_elems + V, ScratchSlot::kRun);
    acc* sums =
        se ? thread_scratch<acc>(round_images * ((2 + strip_sums) * sums_ld + squeezed_ld), ScratchSlot::kReduce)
           : nullptr;
    acc* squeezed = se ? sums + round_images * sums_ld : nullptr;
    acc* gates = se ? squeezed + round_images * squeezed_ld : nullptr;
    acc* partial_sums = se ? gates + round_images * sums_ld : nullptr;
    // Step (1) for image n, hidden panels [p0, p1), into `mid`, and with a squeeze-excitation the sums of those
    // channels over the pixels into image_sums.
    auto depthwise_image = [&](int64_t n, int64_t p0, int64_t p1, acc* mid, acc* image_sums) {
      const scalar_t* image = in + n * in_pixels * in_stride;
      for (int64_t q0 = p0; q0 < p1; q0 += group_panels) {
        const int64_t q1 = std::min(p1, q0 + group_panels);
        const int64_t h0 = q0 * kNr, h1 = std::min(H, q1 * kNr), width = h1 - h0;
        if (geo.expand) {
          acc* hidden = thread_scratch<acc>(in_pixels * width + V, ScratchSlot::kTileHidden);
          expand_pixels(image, 0, in_pixels, q0, q1, hidden, width);
          depthwise_rows(hidden - h0, width, g, 0, g.out_h, h0, h1, mid);
        } else {
          depthwise_rows(image, in_stride, g, 0, g.out_h, h0, h1, mid);
        }
        if (se) channel_sums(mid, 0, out_pixels, h0, h1, image_sums);
      }
    };
    // One image on a small map (the late blocks at batch 1): one parallel step, each thread carrying a slice of the
    // hidden channels through the whole block instead of waking the pool for each step.
    if (kConcurrentChunks && g.batch == 1 && partner == nullptr && out_pixels * OC <= kSplitHiddenOutputs) {
      const int64_t block_macs =
          (geo.expand ? in_pixels * C * H : 0) + out_pixels * H * (T + OC) + (se ? 2 * S * H : 0);
      const int64_t slices = work_items(block_macs, std::min(threads, hidden_panels));
      const int64_t out_elems = out_pixels * OC, bias_elems = project.num_panels() * kNr;
      // Per slice: its partial output and (squeeze-excitation) its partial reduced vector and the reduced vector;
      // then zeros, the bias of every slice's partial output but the first.
      acc* partial_out =
          thread_scratch<acc>(slices * (out_elems + 2 * squeezed_ld) + bias_elems + V, ScratchSlot::kTileOut);
      acc* partial_squeezed = partial_out + slices * out_elems;
      acc* slice_squeezed = partial_squeezed + slices * squeezed_ld;
      acc* zero_bias = slice_squeezed + slices * squeezed_ld;
      std::fill(zero_bias, zero_bias + bias_elems, acc(0));
      auto panel_of = [&](int64_t slice) { return slice * hidden_panels / slices; };  // its first hidden panel
      auto hidden_of = [&](int64_t slice) { return std::min(H, panel_of(slice) * kNr); };
      ItemBarrier squeezed_ready(slices);
      at::parallel_for(0, slices, 1, [&](int64_t s0, int64_t s1) {
        // (1) expand + depthwise of the slice's channels; with a squeeze-excitation their sums and the reduce
        // rows' products with them (the reduce GEMV split over its columns).
        // A step that throws (a scratch buffer not allocated) still arrives, so that no thread waits forever; the
        // exception then leaves the region (at::parallel_for rethrows it on the calling thread).
        std::exception_ptr failure;
        try {
          for (int64_t slice = s0; slice < s1; ++slice) {
            const int64_t h0 = hidden_of(slice), h1 = hidden_of(slice + 1);
            depthwise_image(0, panel_of(slice), panel_of(slice + 1), mids, sums);
            if (se) {
              matrix_rows_times_vectors<acc>(weights.se_reduce + h0, H, h1 - h0, 0, S, nullptr, acc(1), sums + h0,
                                             sums_ld, 1, partial_squeezed + slice * squeezed_ld, squeezed_ld);
            }
          }
        } catch (...) {
          failure = std::current_exception();
        }
        if (se) squeezed_ready.arrive_and_wait(s1 - s0);
        if (failure) std::rethrow_exception(failure);
        for (int64_t slice = s0; slice < s1; ++slice) {
          const int64_t h0 = hidden_of(slice), h1 = hidden_of(slice + 1);
          if (se) {
            // (2) the reduced vector (the slices' products added in slice order, the same in every thread), the
            // gates of the slice's channels, and those channels of the depthwise outputs scaled by them.
            acc* squeezed_vector = slice_squeezed + slice * squeezed_ld;
            const acc inverse_pixels = acc(1) / static_cast<acc>(out_pixels);
            for (int64_t j = 0; j < S; ++j) {
              acc product = partial_squeezed[j];
              for (int64_t t = 1; t < slices; ++t) product += partial_squeezed[t * squeezed_ld + j];
              squeezed_vector[j] =
                  (weights.se_reduce_bias ? weights.se_reduce_bias[j] : acc(0)) + inverse_pixels * product;
            }
            map_in_place(squeezed_vector, S,
                         [&](const at::vec::Vectorized<acc>& v) { return apply_activation(geo.se_activation, v); });
            matrix_rows_times_vectors<acc>(weights.se_expand, S, S, h0, h1, weights.se_expand_bias, acc(1),
                                           squeezed_vector, squeezed_ld, 1, gates, sums_ld);
            apply_gate(geo.se_gate, gates + h0, h1 - h0);
            for (int64_t q = 0; q < out_pixels; ++q)
              scale_channels(mids + q * H + h0, mids + q * H + h0, 1, h1 - h0, gates + h0);
          }
          // (3) the project GEMM of the slice's channels (the bias in the first slice's).
          const PackedPointwise<acc> part = project.k_range(h0, h1, slice == 0 ? project.bias : zero_bias);
          pointwise_gemm<acc, acc>(part, 0, part.num_panels(), mids + h0, H, out_pixels,
                                   partial_out + slice * out_elems, OC, Activation::kNone);
        }
      });
      // The partial outputs added up in slice order, the activation, then the residual: channels-last straight into
      // the output, NCHW staged in the first slice's partial output.
      for (int64_t e = 0; e < out_elems; e += V) {
        const int64_t m = std::min(V, out_elems - e);
        auto sum = at::vec::Vectorized<acc>::loadu(partial_out + e, m);
        for (int64_t slice = 1; slice < slices; ++slice)
          sum += at::vec::Vectorized<acc>::loadu(partial_out + slice * out_elems + e, m);
        sum = apply_activation(acts.project, sum);
        if (out_channels_last) {
          store_acc(o + e, sum, m);
        } else {
          sum.store(partial_out + e, m);
        }
      }
      if (!out_channels_last) {
        store_planes(0, 0, out_pixels, 0, OC, partial_out, OC);
        return;
      }
      if (geo.residual) {
        for (int64_t q = 0; q < out_pixels; ++q) add_residual(o + q * OC, in + q * in_stride, OC);
      }
      return;
    }
    for (int64_t n0 = 0; n0 < g.batch; n0 += round_images) {
      const int64_t images = std::min(round_images, g.batch - n0);
      if (plan.whole_images) {
        // (1): each image's hidden panels split into as many slices as share the round evenly between the threads,
        // where each slice is worth a work item.
        const int64_t image_macs = (geo.expand ? in_pixels * C * H : 0) + out_pixels * H * T;
        const int64_t slices = work_items(image_macs, std::min(hidden_panels, threads / std::gcd(images, threads)));
        const int64_t slice_grain = std::max<int64_t>(1, kMinWorkItemMacs / (image_macs / slices + 1));
        at::parallel_for(0, images * slices, slice_grain, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const int64_t k = i / slices, slice = i % slices;
            depthwise_image(n0 + k, slice * hidden_panels / slices, (slice + 1) * hidden_panels / slices,
                            mids + k * image_elems, se ? sums + k * sums_ld : nullptr);
          }
        });
      } else {
        // (1) as the strips of the plan, their rows written into the image's tile, each with its own sums.
        const int64_t strips = plan.strips_per_image;
        at::parallel_for(0, images * strips, grain, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) {
            const int64_t k = i / strips, strip = i % strips;
            run_strip(n0 + k, strip, nullptr, mids + k * image_elems);
            const int64_t r0 = strip * plan.strip_rows, r1 = std::min(g.out_h, r0 + plan.strip_rows);
            channel_sums(mids + k * image_elems, r0 * g.out_w, r1 * g.out_w, 0, H, partial_sums + i * sums_ld);
          }
        });
        for (int64_t k = 0; k < images; ++k) {
          acc* total = sums + k * sums_ld;
          std::copy(partial_sums + k * strips * sums_ld, partial_sums + k * strips * sums_ld + H, total);
          for (int64_t strip = 1; strip < strips; ++strip) {
            const acc* part = partial_sums + (k * strips + strip) * sums_ld;
            for (int64_t h = 0; h < H; ++h) total[h] += part[h];
          }
        }
      }
      if (se) {
        // (2) and (3): the reduced vectors, then the gates.
        squeeze_excitation_gates<acc>(
            {weights.se_reduce, weights.se_reduce_bias, weights.se_expand, weights.se_expand_bias}, H, S,
            geo.se_activation, geo.se_gate, sums, sums_ld, acc(1) / static_cast<acc>(out_pixels), images, squeezed,
            squeezed_ld, gates, sums_ld);
      }
      // (4), with a squeeze-excitation on the chunk's depthwise outputs scaled by the gate into a per-thread tile
      // (count x H multiplies before count x H x kNr multiply-adds a panel; consecutive panels of one chunk share
      // it): no step of its own, and no pool wake-up, for the scaling.
      // Items are vectors of output channels (pointwise_gemm_vectors), so that an odd count of panels is shared
      // evenly; a thread's consecutive vectors of one chunk are one call.
      const ProjectChunks split = project_chunks(out_pixels, images * project_vectors, threads);
      const int64_t chunks = split.chunks, chunk_pixels = split.pixels;
      const int64_t items = images * chunks * project_vectors;
      const int64_t project_item_macs = chunk_pixels * H * V;
      at::parallel_for(
          0, items, std::max<int64_t>(1, kMinWorkItemMacs / project_item_macs), [&](int64_t begin, int64_t end) {
            acc* gated = se ? thread_scratch<acc>(chunk_pixels * H + V, ScratchSlot::kTile) : nullptr;
            int64_t gated_chunk = -1;  // (image, chunk) whose outputs `gated` holds
            for (int64_t i = begin; i < end;) {
              const int64_t image_chunk = i / project_vectors;
              const int64_t k = image_chunk / chunks, chunk = image_chunk % chunks;
              const int64_t v0 = i % project_vectors, v1 = std::min(project_vectors, v0 + (end - i));
              const int64_t first = chunk * chunk_pixels, count = std::min(chunk_pixels, out_pixels - first);
              const acc* mid = mids + k * image_elems + first * H;
              if (se) {
                if (gated_chunk != image_chunk) {
                  scale_channels(mid, gated, count, H, gates + k * sums_ld);
                  gated_chunk = image_chunk;
                }
                mid = gated;
              }
              project_pixels(n0 + k, first, count, v0, v1, mid);
              i += v1 - v0;
            }
          });
    }
    return;
  }

  // Strips of output rows, each a work item, run band by band: expanded rows (halo included) -> depthwise rows ->
  // project. Consecutive bands share input rows: those stay in the tile, moved to its top, and only the band's
  // new rows are expanded.
  at::parallel_for(0, g.batch * plan.strips_per_image, grain, [&](int64_t begin, int64_t end) {
    acc* mid = thread_scratch<acc>(plan.rows * g.out_w * H + V, ScratchSlot::kTile);
    for (int64_t i = begin; i < end; ++i) run_strip(i / plan.strips_per_image, i % plan.strips_per_image, mid, nullptr);
  });
}

}  // namespace

void inverted_residual_block_cpu(const Tensor& input, const c10::optional<Tensor>& expand_weight,
                                 const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                                 const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                                 const c10::optional<Tensor>& project_bias, const SqueezeExcitationArgs& se,
                                 const c10::optional<Tensor>& packed_weights, const InvertedResidualGeometry& geo,
                                 const BlockActivations& acts, const BlockIo& io, bool out_channels_last, Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "inverted_residual_cpu", [&] {
    forward_cpu<scalar_t>(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, se,
                          packed_weights, out, geo, out_channels_last, acts, io);
  });
}

Tensor pack_inverted_residual_block_cpu(const Tensor& input, const c10::optional<Tensor>& expand_weight,
                                        const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                                        const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                                        const c10::optional<Tensor>& project_bias, const SqueezeExcitationArgs& se,
                                        const InvertedResidualGeometry& geo) {
  Tensor packed;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "inverted_residual_pack", [&] {
    using acc = acc_t<scalar_t>;
    packed = at::empty(
        {block_weight_elements<acc>(geo)},
        input.options().dtype(c10::CppTypeToScalarType<acc>::value).memory_format(at::MemoryFormat::Contiguous));
    pack_block_weights<scalar_t>(geo, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, se,
                                 packed.mutable_data_ptr<acc>());
  });
  return packed;
}

namespace {

Tensor inverted_residual_cpu(const Tensor& input_, const c10::optional<Tensor>& expand_weight,
                             const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                             const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                             const c10::optional<Tensor>& project_bias, const c10::optional<Tensor>& se_reduce_weight,
                             const c10::optional<Tensor>& se_reduce_bias, const c10::optional<Tensor>& se_expand_weight,
                             const c10::optional<Tensor>& se_expand_bias, at::IntArrayRef stride,
                             at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation,
                             bool residual, c10::string_view se_activation, c10::string_view se_gate,
                             const c10::optional<Tensor>& packed_weights) {
  const SqueezeExcitationArgs se = squeeze_excitation_args(se_reduce_weight, se_reduce_bias, se_expand_weight,
                                                           se_expand_bias, se_activation, se_gate);
  const InvertedResidualGeometry geo =
      inverted_residual_geometry(input_, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                 se, stride, padding, dilation, std_view(activation), residual);
  const ConvGeometry& g = geo.dw;
  TORCH_CHECK(input_.device().is_cpu(), "fusedops: inverted_residual CPU kernel got input on ", input_.device());
  if (!all_finite(dw_weight)) {
    // A NaN or Inf depthwise weight would meet the tiles' zero padding (cpu/finite.h).
    return inverted_residual_composed(input_, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                      project_bias, se, stride, padding, dilation, std_view(activation), residual);
  }
  const at::MemoryFormat fmt = output_memory_format(input_);
  const Tensor input = input_.contiguous(at::MemoryFormat::ChannelsLast);
  Tensor out = at::empty({g.batch, geo.out_channels, g.out_h, g.out_w}, input.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  inverted_residual_block_cpu(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, se,
                              packed_weights, geo, inverted_residual_activations(geo), BlockIo{geo.in_channels},
                              fmt == at::MemoryFormat::ChannelsLast, out);
  return out;
}

Tensor inverted_residual_pack_weights_cpu(
    const Tensor& input, const c10::optional<Tensor>& expand_weight, const c10::optional<Tensor>& expand_bias,
    const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
    const c10::optional<Tensor>& project_bias, const c10::optional<Tensor>& se_reduce_weight,
    const c10::optional<Tensor>& se_reduce_bias, const c10::optional<Tensor>& se_expand_weight,
    const c10::optional<Tensor>& se_expand_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view activation, bool residual, c10::string_view se_activation,
    c10::string_view se_gate) {
  const SqueezeExcitationArgs se = squeeze_excitation_args(se_reduce_weight, se_reduce_bias, se_expand_weight,
                                                           se_expand_bias, se_activation, se_gate);
  const InvertedResidualGeometry geo =
      inverted_residual_geometry(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                 se, stride, padding, dilation, std_view(activation), residual);
  return pack_inverted_residual_block_cpu(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                          project_bias, se, geo);
}

InvertedResidualGrads inverted_residual_backward_cpu(
    const Tensor& grad_output, const Tensor& input, const c10::optional<Tensor>& expand_weight,
    const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
    const Tensor& project_weight, const c10::optional<Tensor>& project_bias,
    const c10::optional<Tensor>& se_reduce_weight, const c10::optional<Tensor>& se_reduce_bias,
    const c10::optional<Tensor>& se_expand_weight, const c10::optional<Tensor>& se_expand_bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view activation, bool residual,
    c10::string_view se_activation, c10::string_view se_gate,
    std::array<bool, kInvertedResidualGradients> output_mask) {
  TORCH_CHECK(input.device().is_cpu(), "fusedops: inverted_residual CPU backward got input on ", input.device());
  return inverted_residual_backward_recomputed(
      grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
      squeeze_excitation_args(se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, se_activation,
                              se_gate),
      stride, padding, dilation, std_view(activation), residual, output_mask, kCpuBackwardBandElements);
}

}  // namespace
}  // namespace cpu
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("inverted_residual", &fusedops::cpu::inverted_residual_cpu);
  m.impl("_inverted_residual_backward", &fusedops::cpu::inverted_residual_backward_cpu);
  m.impl("_inverted_residual_pack_weights", &fusedops::cpu::inverted_residual_pack_weights_cpu);
}
