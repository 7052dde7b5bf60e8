// CPU kernels of fusedops::dwpw_conv2d (the fused depthwise-separable convolution) and its backward.
//
// Forward, per work item (image n, band of R output rows, range of output-channel panels):
//   1. the depthwise rows of the band, all C*m channels, go into a per-thread float tile
//      (R*OW pixels x C*m channels, at most ~256 KiB so it stays in L2), with bias and the middle
//      activation applied in the depthwise epilogue (depthwise_nhwc_row, cpu/depthwise_nhwc.h);
//   2. the pointwise stage is a GEMM of that tile with the 1x1 weights, packed once per call into
//      panels (cpu/pointwise_gemm.h), whose micro-kernel adds the bias, applies the output activation
//      and stores straight into a channels-last output (NCHW outputs go through a staging tile and a
//      transposed store).
// The depthwise output is never written to memory. When there are fewer bands than threads (small maps,
// batch 1), output channels are split across work items as well; each recomputes its band's tile,
// which costs kH*kW / panels-per-item of the pointwise work.
//
// NCHW inputs are converted to channels-last once (a copy of the input, not of the intermediate).
// Depth multipliers > 1 fill the tile with a per-pixel scalar loop.
//
// Backward: the band-wise recomputation of csrc/shared/dwpw_banded_backward.cpp (dwpw_conv2d_backward_banded).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fusedops/activation_ops.h"
#include "fusedops/cpu/activation.h"
#include "fusedops/cpu/cache_size.h"
#include "fusedops/cpu/depthwise_nhwc.h"
#include "fusedops/cpu/finite.h"
#include "fusedops/cpu/fused_weights.h"
#include "fusedops/cpu/pointwise_gemm.h"
#include "fusedops/cpu/scratch.h"
#include "fusedops/cpu/vec_io.h"
#include "fusedops/dwpw.h"
#include "fusedops/ops.h"

#include <algorithm>
#include <array>

namespace fusedops {
namespace cpu {
namespace {

using at::Tensor;

// Upper bound of a depthwise tile, in bytes: a quarter of the L2 (256 KiB on the 1 MiB L2 it was measured on),
// leaving room for the B panel and the input rows streaming past.
int64_t tile_bytes() {
  return l2_cache_bytes() / 4;
}
// Below this many multiply-adds per work item, items are merged (waking the pool costs ~5-10 us).
constexpr int64_t kMinItemMacs = 1 << 15;

// Depth multiplier > 1: one output row, all C*m channels, scalar over taps.
template <typename scalar_t>
void depthwise_row_generic(const scalar_t* image, const acc_t<scalar_t>* w /*[T][K]*/, const acc_t<scalar_t>* bias,
                           acc_t<scalar_t>* out, int64_t ld, int64_t oh, const ConvGeometry& g, Activation act) {
  using acc = acc_t<scalar_t>;
  const int64_t C = g.channels, K = g.out_channels, m = g.multiplier;
  // The row's sums, in this thread's scratch (no allocation per row).
  acc* sum = thread_scratch<acc>(K, ScratchSlot::kRun);
  for (int64_t ow = 0; ow < g.out_w; ++ow) {
    for (int64_t k = 0; k < K; ++k) sum[k] = bias ? bias[k] : acc(0);
    for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
      const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dilation_h;
      if (ih < 0 || ih >= g.in_h) continue;
      for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
        const int64_t iw = ow * g.stride_w - g.pad_w + kw * g.dilation_w;
        if (iw < 0 || iw >= g.in_w) continue;
        const scalar_t* px = image + (ih * g.in_w + iw) * C;
        const acc* wt = w + (kh * g.kernel_w + kw) * K;
        for (int64_t k = 0; k < K; ++k) sum[k] += static_cast<acc>(px[k / m]) * wt[k];
      }
    }
    using Vec = at::vec::Vectorized<acc>;
    constexpr int64_t V = Vec::size();
    acc* dst = out + ow * ld;
    int64_t k = 0;
    for (; k + V <= K; k += V) apply_activation(act, Vec::loadu(sum + k)).store(dst + k);
    if (k < K) apply_activation(act, Vec::loadu(sum + k, K - k)).store(dst + k, K - k);
  }
}

// The weights as packed_weights holds them, in the accumulation type: a header (kHeader elements: the panel width,
// the channel counts and the taps, which a packed tensor must match), the depthwise taps [T][K] and bias (K + V),
// then the 1x1 weights packed into GEMM panels (the usual orientation).
constexpr int64_t kHeader = 8;

template <typename acc>
int64_t packed_elements(const DwpwGeometry& geo) {
  const ConvGeometry& g = geo.dw;
  return kHeader + g.kernel_h * g.kernel_w * g.out_channels + g.out_channels + at::vec::Vectorized<acc>::size() +
         PackedPointwise<acc>::packed_elements(g.out_channels, geo.out_channels);
}

template <typename acc>
std::array<acc, kHeader> packed_header(const DwpwGeometry& geo) {
  const ConvGeometry& g = geo.dw;
  return {acc(PackedPointwise<acc>::kNr),
          acc(g.channels),
          acc(g.out_channels),
          acc(geo.out_channels),
          acc(g.kernel_h),
          acc(g.kernel_w),
          acc(0),
          acc(0)};
}

// Lays the weights out in `dst` (packed_elements of acc).
template <typename scalar_t>
void pack_weights(const DwpwGeometry& geo, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
                  const Tensor& pw_weight, const c10::optional<Tensor>& pw_bias, acc_t<scalar_t>* dst) {
  using acc = acc_t<scalar_t>;
  const ConvGeometry& g = geo.dw;
  const int64_t K = g.out_channels, T = g.kernel_h * g.kernel_w;
  const auto header = packed_header<acc>(geo);
  std::copy(header.begin(), header.end(), dst);
  acc* taps = dst + kHeader;
  lay_out_depthwise_weights<scalar_t>(dw_weight, dw_bias, K, T, taps, taps + T * K);
  pack_pointwise_weights<scalar_t>(pw_weight, pw_bias, K, geo.out_channels,
                                   taps + T * K + K + at::vec::Vectorized<acc>::size());
}

template <typename scalar_t>
void forward_cpu(const Tensor& input /*channels-last*/, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
                 const Tensor& pw_weight, const c10::optional<Tensor>& pw_bias,
                 const c10::optional<Tensor>& packed_weights, Tensor& out, const DwpwGeometry& geo,
                 bool out_channels_last) {
  using acc = acc_t<scalar_t>;
  using P = PackedPointwise<acc>;
  const ConvGeometry& g = geo.dw;
  const int64_t C = g.channels, K = g.out_channels, OC = geo.out_channels;
  const int64_t T = g.kernel_h * g.kernel_w;
  constexpr int64_t V = at::vec::Vectorized<acc>::size();

  // Small problems (late layers, batch 1) use the transposed GEMM orientation, which reads the 1x1 weights
  // in place and packs the tiles instead: packing weights costs K*OC per call, packing tiles
  // N*OH*OW*K (plus a transposed store of the output). Weights packed once (packed_weights) take the usual
  // orientation: N=1 1024->1024 7x7 481 -> ~420 us, 512->512 14x14 432 -> ~400 us.
  const bool prepacked = packed_weights.has_value() && packed_weights->defined();
  const int64_t pixels_total = g.batch * g.out_h * g.out_w;
  const bool transposed = !prepacked && pixels_total * (K + OC) < K * OC;

  // Shared read-only weights, prepared by the calling thread (or packed_weights): depthwise taps [T][K] + bias,
  // and the 1x1 weights packed into panels (usual orientation) or as acc-type rows (transposed; float uses them
  // as is).
  const bool pw_in_place = transposed && kSameAsAcc<scalar_t>;
  const int64_t pw_elems = transposed ? (pw_in_place ? 0 : K * OC) + OC + V : P::packed_elements(K, OC);
  acc* shared =
      prepacked
          ? const_cast<acc*>(checked_packed_weights(*packed_weights, packed_header<acc>(geo), packed_elements<acc>(geo),
                                                    "fusedops.ops.dwpw_conv2d.pack_weights")) +
                kHeader
          : thread_scratch<acc>(T * K + 2 * (K + V) + pw_elems, ScratchSlot::kPacked);
  const acc* dw_taps = shared;
  const acc* dw_b = shared + T * K;
  acc* pw_packed = shared + T * K + K + V;
  if (!prepacked) lay_out_depthwise_weights<scalar_t>(dw_weight, dw_bias, K, T, shared, shared + T * K);
  const Tensor pwc = pw_weight.contiguous();
  const Tensor pbc = (pw_bias.has_value() && pw_bias->defined()) ? pw_bias->contiguous() : Tensor();
  const scalar_t* wsrc = pwc.const_data_ptr<scalar_t>();
  const scalar_t* bsrc = pbc.defined() ? pbc.const_data_ptr<scalar_t>() : nullptr;
  P pw;
  const acc* pw_rows = nullptr;  // transposed: (OC, K) in acc
  acc* pw_row_bias = nullptr;    // transposed: OC
  if (transposed) {
    pw_row_bias = pw_packed;
    for (int64_t c = 0; c < OC + V; ++c)
      pw_row_bias[c] = (bsrc != nullptr && c < OC) ? static_cast<acc>(bsrc[c]) : acc(0);
    if constexpr (kSameAsAcc<scalar_t>) {
      pw_rows = wsrc;
    } else {
      acc* rows = pw_packed + OC + V;
      for (int64_t i = 0; i < K * OC; ++i) rows[i] = static_cast<acc>(wsrc[i]);
      pw_rows = rows;
    }
  } else if (prepacked) {
    pw = packed_pointwise_layout<acc>(K, OC, pw_packed);
  } else {
    pw = pack_pointwise_weights<scalar_t>(pw_weight, pw_bias, K, OC, pw_packed);
  }

  // Work items are (image, band of `rows` output rows, range of output-channel panels). The band height
  // is the one, among those whose tile fits tile_bytes(), that best balances the items over the threads;
  // bands under ~48 pixels (short GEMMs) and pixels lost to GEMM blocking are penalised, ties go to
  // taller bands. When there are fewer
  // bands than threads, output channels are split too: by panels of kNr columns, or (transposed) by
  // blocks of kMr rows.
  const int64_t threads = at::get_num_threads();
  const int64_t row_elems = g.out_w * K;
  const int64_t max_rows =
      std::clamp<int64_t>(tile_bytes() / static_cast<int64_t>(sizeof(acc)) / row_elems, 1, g.out_h);
  const int64_t panels = transposed ? (OC + P::kMr - 1) / P::kMr : pw.num_panels();
  const int64_t panel_width = transposed ? P::kMr : P::kNr;
  // Splitting output channels recomputes the band's depthwise tile once per split: only worth it when
  // there are fewer bands than threads.
  auto splits_for = [&](int64_t bands) {
    return (threads > 1 && bands < threads) ? std::min(panels, (threads + bands - 1) / bands) : int64_t(1);
  };
  // Band heights are equalised (ceil(OH / bands)), so the bands of an image differ by at most one row.
  auto equalised = [&](int64_t r) {
    const int64_t per_image = (g.out_h + r - 1) / r;
    return (g.out_h + per_image - 1) / per_image;
  };
  int64_t rows = max_rows;
  double best = -1.0;
  for (int64_t r0 = 1; r0 <= max_rows; ++r0) {
    const int64_t r = equalised(r0);
    const int64_t b = g.batch * ((g.out_h + r - 1) / r);
    const int64_t it = b * splits_for(b);
    const double balance = static_cast<double>(it) / static_cast<double>(((it + threads - 1) / threads) * threads);
    // GEMM blocking pads a band's pixels to whole panels (transposed: kNr pixels) or row blocks (kMr).
    const int64_t pix = r * g.out_w, unit = transposed ? P::kNr : P::kMr;
    const double padding = static_cast<double>(pix) / static_cast<double>((pix + unit - 1) / unit * unit);
    const double score = balance * padding * std::min(1.0, static_cast<double>(pix) / 48.0);
    if (score >= best - 1e-9) {
      best = score;
      rows = r;
    }
  }
  const int64_t bands_per_image = (g.out_h + rows - 1) / rows;
  const int64_t bands = g.batch * bands_per_image;
  int64_t splits = splits_for(bands);
  const int64_t panels_per_split = (panels + splits - 1) / splits;
  splits = (panels + panels_per_split - 1) / panels_per_split;
  const int64_t items = bands * splits;
  const int64_t item_macs = rows * g.out_w * K * (T + panels_per_split * panel_width);
  const int64_t grain = std::max<int64_t>(1, kMinItemMacs / std::max<int64_t>(1, item_macs));

  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  const bool fast_dw = g.multiplier == 1;
  const ActivationEpilogue mid{geo.mid};
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    acc* tile = thread_scratch<acc>(rows * row_elems + V, ScratchSlot::kTile);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t split = i % splits, band = i / splits;
      const int64_t n = band / bands_per_image, r0 = (band % bands_per_image) * rows;
      const int64_t r1 = std::min(g.out_h, r0 + rows), pix = (r1 - r0) * g.out_w;
      const scalar_t* image = in + n * g.in_h * g.in_w * C;
      if (fast_dw) {
        const auto t =
            nhwc_rows<scalar_t, acc>({image, g.in_w * C, C}, dw_taps, K, dw_b, {tile, row_elems, K}, r0, 0, K);
        depthwise_nhwc_rows(t, g, r1, mid);
      } else {
        for (int64_t oh = r0; oh < r1; ++oh)
          depthwise_row_generic<scalar_t>(image, dw_taps, dw_b, tile + (oh - r0) * row_elems, K, oh, g, geo.mid);
      }
      const int64_t p0 = split * panels_per_split, p1 = std::min(panels, p0 + panels_per_split);
      if (transposed) {
        const int64_t oc0 = p0 * P::kMr, oc1 = std::min(OC, p1 * P::kMr);
        acc* tile_panels = thread_scratch<acc>(((pix + P::kNr - 1) / P::kNr) * P::kNr * K, ScratchSlot::kTilePacked);
        pack_tile_panels<acc>(tile, K, pix, K, tile_panels);
        if (!out_channels_last) {
          // Rows of C^T are output channels, columns pixels: straight into the NCHW planes.
          scalar_t* plane = o + n * OC * g.out_h * g.out_w + r0 * g.out_w;
          pointwise_gemm_transposed<acc, scalar_t>(pw_rows, K, pw_row_bias, oc0, oc1, tile_panels, K, pix, plane,
                                                   g.out_h * g.out_w, geo.out);
        } else {
          const int64_t ldc = pix + V;
          acc* staged = thread_scratch<acc>((oc1 - oc0) * ldc + V, ScratchSlot::kTileOut);
          pointwise_gemm_transposed<acc, acc>(pw_rows, K, pw_row_bias, oc0, oc1, tile_panels, K, pix,
                                              staged - oc0 * ldc, ldc, geo.out);
          scalar_t* dst = o + (n * g.out_h + r0) * g.out_w * OC;
          for (int64_t p = 0; p < pix; ++p)
            for (int64_t c = oc0; c < oc1; ++c) dst[p * OC + c] = static_cast<scalar_t>(staged[(c - oc0) * ldc + p]);
        }
      } else if (out_channels_last) {
        scalar_t* dst = o + (n * g.out_h + r0) * g.out_w * OC;
        pointwise_gemm<acc, scalar_t>(pw, p0, p1, tile, K, pix, dst, OC, geo.out);
      } else {
        // Stage the band's outputs (pixels x channels of these panels), then store them transposed.
        const int64_t c0 = p0 * P::kNr, c1 = std::min(OC, p1 * P::kNr), ldc = c1 - c0 + V;
        acc* staged = thread_scratch<acc>(pix * ldc + V, ScratchSlot::kTileOut);
        pointwise_gemm<acc, acc>(pw, p0, p1, tile, K, pix, staged - c0, ldc, geo.out);
        scalar_t* plane = o + n * OC * g.out_h * g.out_w + r0 * g.out_w;
        for (int64_t c = c0; c < c1; ++c) {
          scalar_t* dst = plane + c * g.out_h * g.out_w;
          const acc* src = staged + (c - c0);
          for (int64_t p = 0; p < pix; ++p) dst[p] = static_cast<scalar_t>(src[p * ldc]);
        }
      }
    }
  });
}

Tensor dwpw_conv2d_cpu(const Tensor& input_, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
                       const Tensor& pw_weight, const c10::optional<Tensor>& pw_bias, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view mid_activation,
                       c10::string_view out_activation, const c10::optional<Tensor>& packed_weights) {
  const DwpwGeometry geo = dwpw_geometry(input_, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
                                         mid_activation, out_activation);
  const ConvGeometry& g = geo.dw;
  TORCH_CHECK(input_.device().is_cpu(), "fusedops: dwpw_conv2d CPU kernel got input on ", input_.device());
  const at::MemoryFormat fmt = output_memory_format(input_);
  if (!all_finite(dw_weight)) {
    // A NaN or Inf depthwise weight would meet the tiles' zero padding (cpu/finite.h): the depthwise convolution
    // on its own, which skips the padding's taps, then the pointwise one.
    Tensor mid = ops::call<ops::depthwise_conv2d>(input_, dw_weight, dw_bias, stride, padding, dilation);
    activation_forward_(mid, geo.mid);
    Tensor out = at::conv2d(mid, pw_weight, pw_bias);
    activation_forward_(out, geo.out);
    return out.contiguous(fmt);
  }
  const Tensor input = input_.contiguous(at::MemoryFormat::ChannelsLast);
  Tensor out = at::empty({g.batch, geo.out_channels, g.out_h, g.out_w}, input.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "dwpw_conv2d_cpu", [&] {
    forward_cpu<scalar_t>(input, dw_weight, dw_bias, pw_weight, pw_bias, packed_weights, out, geo,
                          fmt == at::MemoryFormat::ChannelsLast);
  });
  return out;
}

Tensor dwpw_conv2d_pack_weights_cpu(const Tensor& input, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
                                    const Tensor& pw_weight, const c10::optional<Tensor>& pw_bias,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    c10::string_view mid_activation, c10::string_view out_activation) {
  const DwpwGeometry geo = dwpw_geometry(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
                                         mid_activation, out_activation);
  Tensor packed;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "dwpw_conv2d_pack", [&] {
    using acc = acc_t<scalar_t>;
    packed = at::empty(
        {packed_elements<acc>(geo)},
        input.options().dtype(c10::CppTypeToScalarType<acc>::value).memory_format(at::MemoryFormat::Contiguous));
    pack_weights<scalar_t>(geo, dw_weight, dw_bias, pw_weight, pw_bias, packed.mutable_data_ptr<acc>());
  });
  return packed;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> dwpw_conv2d_backward_cpu(
    const Tensor& grad_output, const Tensor& input, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
    const Tensor& pw_weight, const c10::optional<Tensor>& pw_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view mid_activation, c10::string_view out_activation,
    std::array<bool, 5> output_mask, const c10::optional<Tensor>& output) {
  TORCH_CHECK(input.device().is_cpu(), "fusedops: dwpw_conv2d CPU backward got input on ", input.device());
  // Band size: fusedops/dwpw.h says why.
  return dwpw_conv2d_backward_banded(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                                     dilation, mid_activation, out_activation, output_mask, output,
                                     kCpuBackwardBandElements);
}

}  // namespace
}  // namespace cpu
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("dwpw_conv2d", &fusedops::cpu::dwpw_conv2d_cpu);
  m.impl("_dwpw_conv2d_pack_weights", &fusedops::cpu::dwpw_conv2d_pack_weights_cpu);
  m.impl("_dwpw_conv2d_backward", &fusedops::cpu::dwpw_conv2d_backward_cpu);
}
