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
// Without an expand stage, step 2 reads the input itself. Bands overlap by the depthwise halo, whose
// expanded rows are computed by both bands: the band height weighs that recomputation against load
// balance over the threads and the tile budget (band_plan). NCHW inputs are converted to channels-last
// once (a copy of the input, not of any intermediate).
//
// Backward: inverted_residual_backward_recomputed (csrc/shared/inverted_residual.cpp): the expanded map
// is recomputed, the depthwise and project stages go through the band-wise dwpw backward.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fusedops/cpu/activation.h"
#include "fusedops/cpu/depthwise_nhwc.h"
#include "fusedops/cpu/fused_weights.h"
#include "fusedops/cpu/pointwise_gemm.h"
#include "fusedops/cpu/scratch.h"
#include "fusedops/cpu/vec_io.h"
#include "fusedops/dwpw.h"
#include "fusedops/inverted_residual.h"

#include <algorithm>
#include <type_traits>

namespace fusedops {
namespace cpu {
namespace {

using at::Tensor;

// Upper bound of a band's two tiles (expanded rows and depthwise rows) in bytes: half of a 512 KiB-1 MiB L2,
// as the dwpw kernel's tile, leaving room for the weight panels streaming past.
constexpr int64_t kBandBytes = 256 * 1024;
// Below this many multiply-adds per work item, items are merged (waking the pool costs ~5-10 us).
constexpr int64_t kMinItemMacs = 1 << 15;

// Input rows [begin, end) a band of output rows [r0, r1) reads, clipped to the image.
struct RowRange {
  int64_t begin, end;
};
RowRange input_rows(const ConvGeometry& g, int64_t r0, int64_t r1) {
  const int64_t lo = r0 * g.stride_h - g.pad_h;
  const int64_t hi = (r1 - 1) * g.stride_h - g.pad_h + dilated_extent(g.kernel_h, g.dilation_h);
  const int64_t begin = std::clamp<int64_t>(lo, 0, g.in_h);
  return {begin, std::clamp<int64_t>(hi, begin, g.in_h)};
}

struct BandPlan {
  int64_t rows = 1;             // output rows per band (the last band of an image may have fewer)
  int64_t bands_per_image = 1;  // ceil(out_h / rows)
  int64_t max_hidden_rows = 0;  // the most expanded rows a band computes
};

// The band height: among those whose tiles fit kBandBytes, the one with the least estimated time per thread,
// counting the work of each band (its expanded rows, halo included, and its depthwise + project outputs) and
// how the bands fall on the threads. Bands under ~48 pixels (short GEMMs) are penalised; ties go to taller bands.
BandPlan band_plan(const InvertedResidualGeometry& geo, int64_t acc_bytes, int64_t threads) {
  const ConvGeometry& g = geo.dw;
  const int64_t H = geo.hidden;
  const int64_t expand_per_row = geo.expand ? g.in_w * geo.in_channels * H : 0;
  const int64_t out_per_row = g.out_w * H * (g.kernel_h * g.kernel_w + geo.out_channels);
  auto plan_for = [&](int64_t r) {
    BandPlan p;
    p.bands_per_image = (g.out_h + r - 1) / r;
    p.rows = (g.out_h + p.bands_per_image - 1) / p.bands_per_image;  // equal heights, the last not a sliver
    p.bands_per_image = (g.out_h + p.rows - 1) / p.rows;
    for (int64_t r0 = 0; r0 < g.out_h; r0 += p.rows) {
      const RowRange in = input_rows(g, r0, std::min(g.out_h, r0 + p.rows));
      p.max_hidden_rows = std::max(p.max_hidden_rows, in.end - in.begin);
    }
    return p;
  };
  auto tile_bytes = [&](const BandPlan& p) {
    return ((geo.expand ? p.max_hidden_rows * g.in_w * H : 0) + p.rows * g.out_w * H) * acc_bytes;
  };
  BandPlan best = plan_for(1);
  double best_time = -1.0;
  for (int64_t r = 1; r <= g.out_h; ++r) {
    const BandPlan p = plan_for(r);
    if (r > 1 && tile_bytes(p) > kBandBytes) break;
    int64_t hidden_rows = 0;  // per image, halos included
    for (int64_t r0 = 0; r0 < g.out_h; r0 += p.rows) {
      const RowRange in = input_rows(g, r0, std::min(g.out_h, r0 + p.rows));
      hidden_rows += in.end - in.begin;
    }
    const double work = static_cast<double>(hidden_rows * expand_per_row + g.out_h * out_per_row);
    const int64_t bands = g.batch * p.bands_per_image;
    const int64_t rounds = (bands + threads - 1) / threads;
    const double short_gemm = std::min(1.0, static_cast<double>(p.rows * g.out_w) / 48.0);
    // Time per thread ~ the rounds of bands it runs, each of the average band's work.
    const double time = static_cast<double>(rounds) * work / static_cast<double>(p.bands_per_image) / short_gemm;
    if (best_time < 0 || time <= best_time * (1 + 1e-9)) {
      best = p;
      best_time = time;
    }
  }
  return best;
}

// dst[i] += residual[i] for i < count, in the accumulation type (the output was rounded to scalar_t first, as the
// unfused sequence rounds the project convolution's output before the add).
template <typename scalar_t>
void add_residual(scalar_t* dst, const scalar_t* residual, int64_t count) {
  constexpr int64_t V = AccVec<scalar_t>::size();
  int64_t i = 0;
  for (; i + V <= count; i += V) store_acc(dst + i, load_acc(dst + i) + load_acc(residual + i));
  if (i < count) store_acc(dst + i, load_acc(dst + i, count - i) + load_acc(residual + i, count - i), count - i);
}

template <typename scalar_t>
void forward_cpu(const Tensor& input /*channels-last*/, const c10::optional<Tensor>& expand_weight,
                 const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                 const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                 const c10::optional<Tensor>& project_bias, Tensor& out, const InvertedResidualGeometry& geo,
                 bool out_channels_last) {
  using acc = acc_t<scalar_t>;
  using P = PackedPointwise<acc>;
  constexpr int64_t V = at::vec::Vectorized<acc>::size();
  const ConvGeometry& g = geo.dw;
  const int64_t C = geo.in_channels, H = geo.hidden, OC = geo.out_channels;
  const int64_t T = g.kernel_h * g.kernel_w;

  // Shared read-only weights, prepared by the calling thread: expand and project weights packed into panels,
  // depthwise taps [T][H] and bias.
  const int64_t expand_elems = geo.expand ? P::packed_elements(C, H) : 0;
  const int64_t project_elems = P::packed_elements(H, OC);
  acc* shared = thread_scratch<acc>(expand_elems + project_elems + T * H + H + V, ScratchSlot::kPacked);
  P expand, project;
  if (geo.expand) expand = pack_pointwise_weights<scalar_t>(*expand_weight, expand_bias, C, H, shared);
  project = pack_pointwise_weights<scalar_t>(project_weight, project_bias, H, OC, shared + expand_elems);
  acc* dw_taps = shared + expand_elems + project_elems;
  acc* dw_b = dw_taps + T * H;
  lay_out_depthwise_weights<scalar_t>(dw_weight, dw_bias, H, T, dw_taps, dw_b);

  const int64_t threads = at::get_num_threads();
  const BandPlan plan = band_plan(geo, sizeof(acc), threads);
  const int64_t rows = plan.rows, items = g.batch * plan.bands_per_image;
  const int64_t item_macs = plan.max_hidden_rows * (geo.expand ? g.in_w * C * H : 0) + rows * g.out_w * H * (T + OC);
  const int64_t grain = std::max<int64_t>(1, kMinItemMacs / std::max<int64_t>(1, item_macs));

  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const Activation act = geo.activation;
  const ActivationEpilogue epilogue{act};
  // Depthwise output rows [r0, r1) of `image` (channels-last rows of `pixel_stride` elements, geometry `geom`)
  // into the tile `out` (rows of out_w pixels of H channels), activation applied.
  auto depthwise_band = [&](const auto* image, int64_t pixel_stride, const ConvGeometry& geom, int64_t r0, int64_t r1,
                            acc* out) {
    using in_t = std::remove_const_t<std::remove_pointer_t<decltype(image)>>;
    DwNhwcRow<in_t, acc> t;
    t.image = image;
    t.in_row_stride = geom.in_w * pixel_stride;
    t.in_pix_stride = pixel_stride;
    t.weight = dw_taps;
    t.weight_ld = H;
    t.bias = dw_b;
    t.out = out;
    t.out_pix_stride = H;
    t.out_row_stride = g.out_w * H;
    t.oh = r0;
    t.c_begin = 0;
    t.c_end = H;
    depthwise_nhwc_rows(t, geom, r1, epilogue);
  };
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    acc* mid = thread_scratch<acc>(rows * g.out_w * H + V, ScratchSlot::kTile);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / plan.bands_per_image, r0 = (i % plan.bands_per_image) * rows;
      const int64_t r1 = std::min(g.out_h, r0 + rows), pix = (r1 - r0) * g.out_w;
      const scalar_t* image = in + n * g.in_h * g.in_w * C;
      // 1-2. Expanded rows, then the depthwise rows of the band into `mid`.
      if (geo.expand) {
        const RowRange in_rows = input_rows(g, r0, r1);
        const int64_t hidden_pix = (in_rows.end - in_rows.begin) * g.in_w;
        acc* hidden = thread_scratch<acc>(hidden_pix * H + V, ScratchSlot::kTileHidden);
        if (hidden_pix > 0) {
          const scalar_t* rows_in = image + in_rows.begin * g.in_w * C;
          const acc* a = nullptr;
          if constexpr (kSameAsAcc<scalar_t>) {
            a = rows_in;
          } else {
            acc* converted = thread_scratch<acc>(hidden_pix * C, ScratchSlot::kTilePacked);
            for (int64_t e = 0; e < hidden_pix * C; ++e) converted[e] = static_cast<acc>(rows_in[e]);
            a = converted;
          }
          pointwise_gemm<acc, acc>(expand, 0, expand.num_panels(), a, C, hidden_pix, hidden, H, act);
        }
        // The tile is the image for the depthwise stage: its rows are input rows [begin, end), the rows above
        // count as padding (never read by this band's outputs).
        ConvGeometry band = g;
        band.in_h = in_rows.end - in_rows.begin;
        band.pad_h = g.pad_h + in_rows.begin;
        depthwise_band(hidden, H, band, r0, r1, mid);
      } else {
        depthwise_band(image, C, g, r0, r1, mid);
      }
      // 3. Project (linear), then the residual: the output's pixels are the input's (stride 1, same size).
      const scalar_t* residual = geo.residual ? image + r0 * g.in_w * C : nullptr;
      if (out_channels_last) {
        scalar_t* dst = o + (n * g.out_h + r0) * g.out_w * OC;
        pointwise_gemm<acc, scalar_t>(project, 0, project.num_panels(), mid, H, pix, dst, OC, Activation::kNone);
        if (residual != nullptr) add_residual(dst, residual, pix * OC);
      } else {
        const int64_t ldc = OC + V;
        acc* staged = thread_scratch<acc>(pix * ldc + V, ScratchSlot::kTileOut);
        pointwise_gemm<acc, acc>(project, 0, project.num_panels(), mid, H, pix, staged, ldc, Activation::kNone);
        scalar_t* plane = o + n * OC * g.out_h * g.out_w + r0 * g.out_w;
        for (int64_t c = 0; c < OC; ++c) {
          scalar_t* dst = plane + c * g.out_h * g.out_w;
          const acc* src = staged + c;
          if (residual != nullptr) {
            for (int64_t p = 0; p < pix; ++p)
              dst[p] = static_cast<scalar_t>(static_cast<acc>(static_cast<scalar_t>(src[p * ldc])) +
                                             static_cast<acc>(residual[p * C + c]));
          } else {
            for (int64_t p = 0; p < pix; ++p) dst[p] = static_cast<scalar_t>(src[p * ldc]);
          }
        }
      }
    }
  });
}

Tensor inverted_residual_cpu(const Tensor& input_, const c10::optional<Tensor>& expand_weight,
                             const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                             const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                             const c10::optional<Tensor>& project_bias, at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, c10::string_view activation, bool residual) {
  const InvertedResidualGeometry geo = inverted_residual_geometry(
      input_, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, stride, padding, dilation,
      std::string_view(activation.data(), activation.size()), residual);
  const ConvGeometry& g = geo.dw;
  TORCH_CHECK(input_.device().is_cpu(), "fusedops: inverted_residual CPU kernel got input on ", input_.device());
  const at::MemoryFormat fmt = output_memory_format(input_);
  const Tensor input = input_.contiguous(at::MemoryFormat::ChannelsLast);
  Tensor out = at::empty({g.batch, geo.out_channels, g.out_h, g.out_w}, input.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "inverted_residual_cpu", [&] {
    forward_cpu<scalar_t>(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, out, geo,
                          fmt == at::MemoryFormat::ChannelsLast);
  });
  return out;
}

InvertedResidualGrads inverted_residual_backward_cpu(const Tensor& grad_output, const Tensor& input,
                                                     const c10::optional<Tensor>& expand_weight,
                                                     const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                                                     const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                                                     const c10::optional<Tensor>& project_bias, at::IntArrayRef stride,
                                                     at::IntArrayRef padding, at::IntArrayRef dilation,
                                                     c10::string_view activation, bool residual,
                                                     std::array<bool, 7> output_mask) {
  TORCH_CHECK(input.device().is_cpu(), "fusedops: inverted_residual CPU backward got input on ", input.device());
  return inverted_residual_backward_recomputed(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias,
                                               project_weight, project_bias, stride, padding, dilation,
                                               std::string_view(activation.data(), activation.size()), residual,
                                               output_mask, kCpuBackwardBandElements);
}

}  // namespace
}  // namespace cpu
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("inverted_residual", &fusedops::cpu::inverted_residual_cpu);
  m.impl("_inverted_residual_backward", &fusedops::cpu::inverted_residual_backward_cpu);
}
