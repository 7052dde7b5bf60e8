// CPU kernel of fusedops::_conv2d_activation (schema: csrc/conv2d_activation.cpp): a direct convolution with the
// bias and activation applied before the output is stored.
//
// Why: a model's stem convolves an image of 3 channels. As a GEMM that is K = 27 per output pixel, too short for
// oneDNN's blocking: MobileNetV3's stem (3 -> 16, 3x3, stride 2, 224x224) ran at ~75 GFLOP/s on the 2-vCPU Xeon, a
// fifth of its SGEMM rate, and its activation was one more pass over the 112x112 output.
//
// How: each output row (image, oh) is one task. The output channels are vectors (AVX-512: 16 floats), taken up to
// kMaxVectors at a time; a block of P output pixels along the row keeps P x vectors accumulators in registers. For
// each tap (kh, kw, input channel) the block loads the tap's weight vectors once (packed [kh][kw][ci][channels],
// zero-padded to whole vectors) and adds each pixel's input value, broadcast, times them: the broadcast is the
// multiply-add's memory operand, so a block of one vector is one load per multiply-add, two a cycle. The input is
// read in place through its strides (any layout, no copy); the taps on rows outside the input are left out of the
// row's tap list, and the pixels whose taps cross the left or right edge run one at a time on their own list.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "fusedops/activation.h"
#include "fusedops/checks.h"
#include "fusedops/conv_geometry.h"
#include "fusedops/cpu/activation.h"
#include "fusedops/cpu/scratch.h"
#include "fusedops/cpu/vec_io.h"

#include <algorithm>
#include <type_traits>

namespace fusedops {
namespace cpu {
namespace {

using at::Tensor;

// Output-channel vectors a block holds at once (more are done in further passes over the row).
constexpr int kMaxVectors = 4;

// Accumulators a block keeps: at least 8 independent ones hide the multiply-add latency (4 cycles, 2 a cycle), and
// 12 leave registers for the weight vectors even with AVX2's 16. With 24 (AVX-512's 32 registers would hold them)
// GCC keeps the accumulator array in memory, loaded and stored around every multiply-add: 1.6x slower.
constexpr int kAccumulators = 12;

// Output rows below which one task is too little to wake a thread for (a row of the 3 -> 16 stem at 112 wide is
// ~48k multiply-add lanes, ~1.5 us).
constexpr int64_t kMinParallelLanes = 1 << 15;

// One tap of a pixel's receptive field: the input element's offset from the pixel's origin, the offset of its
// weight vectors in the packed weights, and its kernel column (which edge pixels leave it out).
struct Tap {
  int64_t input;
  int64_t weight;
  int64_t kw;
};

// Geometry of the call, in elements.
struct Plan {
  ConvGeometry g;
  int64_t in_stride_n, in_stride_c, in_stride_h, in_stride_w;
  int64_t vectors;  // output-channel vectors of the packed weights
  bool channels_last_output;
};

template <typename scalar_t>
inline AccVec<scalar_t> rounded_to_storage(const AccVec<scalar_t>& v) {
  if constexpr (kSameAsAcc<scalar_t>) {
    return v;
  } else {
    // The unfused sequence stores the convolution in scalar_t and applies the activation to that.
    scalar_t tmp[AccVec<scalar_t>::size()];
    store_acc(tmp, v);
    return load_acc(tmp);
  }
}

// P pixels (pixel_stride apart in the input; kPixelStride when that is not 0) x NV output-channel vectors,
// starting at channel vector `vector0`.
template <int P, int NV, int kPixelStride, typename scalar_t>
FUSEDOPS_ALWAYS_INLINE void conv_block(const scalar_t* origin, int64_t pixel_stride, const Tap* taps, int64_t n_taps,
                                       const acc_t<scalar_t>* packed, const acc_t<scalar_t>* bias, int64_t vector0,
                                       const Plan& plan, Activation act, scalar_t* out, int64_t out_pixel_stride,
                                       int64_t out_channel_stride) {
  using Vec = AccVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  Vec acc[P * NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const Vec b = Vec::loadu(bias + (vector0 + v) * V);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) acc[p * NV + v] = b;
  }
  const acc_t<scalar_t>* w0 = packed + vector0 * V;
  if constexpr (kPixelStride != 0) pixel_stride = kPixelStride;
  for (int64_t t = 0; t < n_taps; ++t) {
    const scalar_t* x = origin + taps[t].input;
#if defined(__GNUC__)
    // Opaque to the optimiser, so each pixel's load is x plus a constant offset: otherwise GCC keeps origin plus
    // each pixel's offset in its own register (spilled to vector registers) and adds the tap's offset per pixel.
    asm("" : "+r"(x));
#endif
    const acc_t<scalar_t>* w = w0 + taps[t].weight;
    Vec wv[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) wv[v] = Vec::loadu(w + v * V);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      const Vec xv(static_cast<acc_t<scalar_t>>(x[p * pixel_stride]));
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[p * NV + v] = at::vec::fmadd(xv, wv[v], acc[p * NV + v]);
    }
  }
  const int64_t channels = plan.g.out_channels;
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const int64_t c0 = (vector0 + v) * V;
    const int64_t count = std::min(V, channels - c0);
#pragma GCC unroll 16
    for (int p = 0; p < P; ++p) {
      const Vec y = apply_activation(act, rounded_to_storage<scalar_t>(acc[p * NV + v]));
      scalar_t* o = out + p * out_pixel_stride + c0 * out_channel_stride;
      if (out_channel_stride == 1) {
        if (count == V)
          store_acc(o, y);
        else
          store_acc(o, y, count);
      } else {
        acc_t<scalar_t> lanes[V];
        y.store(lanes);
        for (int64_t l = 0; l < count; ++l) o[l * out_channel_stride] = static_cast<scalar_t>(lanes[l]);
      }
    }
  }
}

// The pixels [ow_begin, ow_end) of one output row, all of whose taps are in `taps`, NV vectors from `vector0`.
template <int NV, int kPixelStride, typename scalar_t>
void conv_run(const scalar_t* row_origin, const Tap* taps, int64_t n_taps, int64_t ow_begin, int64_t ow_end,
              const acc_t<scalar_t>* packed, const acc_t<scalar_t>* bias, int64_t vector0, const Plan& plan,
              Activation act, scalar_t* out_row, int64_t out_pixel_stride, int64_t out_channel_stride) {
  constexpr int P = kAccumulators / NV;
  const int64_t pixel_stride = plan.g.stride_w * plan.in_stride_w;
  int64_t ow = ow_begin;
  const auto blocks = [&](auto pixels) {
    constexpr int Q = decltype(pixels)::value;
    for (; ow + Q <= ow_end; ow += Q) {
      conv_block<Q, NV, kPixelStride>(row_origin + ow * pixel_stride, pixel_stride, taps, n_taps, packed, bias, vector0,
                                      plan, act, out_row + ow * out_pixel_stride, out_pixel_stride, out_channel_stride);
    }
  };
  // Whole blocks, then the row's last pixels in blocks of 8, 4, 2 and 1.
  blocks(std::integral_constant<int, P>());
  if constexpr (P > 8) blocks(std::integral_constant<int, 8>());
  if constexpr (P > 4) blocks(std::integral_constant<int, 4>());
  if constexpr (P > 2) blocks(std::integral_constant<int, 2>());
  blocks(std::integral_constant<int, 1>());
}

// The input elements between neighbouring output pixels' taps, as a compile-time constant for the strides of the
// stems (1 or 2, an input of 1 to 4 channels in either layout), so that each pixel's load is the tap's address plus
// a constant displacement (with the opaque tap address in conv_block). 1 thread, 3 -> 16 stride 2 224x224, no
// activation, on the 2-vCPU Xeon: 176 us with a run-time stride, 160 with the constant, 115 with both.
template <int NV, typename scalar_t>
void conv_run_strided(const scalar_t* row_origin, const Tap* taps, int64_t n_taps, int64_t ow_begin, int64_t ow_end,
                      const acc_t<scalar_t>* packed, const acc_t<scalar_t>* bias, int64_t vector0, const Plan& plan,
                      Activation act, scalar_t* out_row, int64_t out_pixel_stride, int64_t out_channel_stride) {
#define FUSEDOPS_CONV_RUN(kStride)                                                                                    \
  return conv_run<NV, kStride>(row_origin, taps, n_taps, ow_begin, ow_end, packed, bias, vector0, plan, act, out_row, \
                               out_pixel_stride, out_channel_stride)
  if constexpr (kSameAsAcc<scalar_t>) {
    switch (plan.g.stride_w * plan.in_stride_w) {
      case 1: FUSEDOPS_CONV_RUN(1);
      case 2: FUSEDOPS_CONV_RUN(2);
      case 3: FUSEDOPS_CONV_RUN(3);
      case 4: FUSEDOPS_CONV_RUN(4);
      case 6: FUSEDOPS_CONV_RUN(6);
      case 8: FUSEDOPS_CONV_RUN(8);
      default: break;
    }
  }
  FUSEDOPS_CONV_RUN(0);
#undef FUSEDOPS_CONV_RUN
}

template <typename scalar_t>
void conv_pixels(int64_t nv, const scalar_t* row_origin, const Tap* taps, int64_t n_taps, int64_t ow_begin,
                 int64_t ow_end, const acc_t<scalar_t>* packed, const acc_t<scalar_t>* bias, int64_t vector0,
                 const Plan& plan, Activation act, scalar_t* out_row, int64_t out_pixel_stride,
                 int64_t out_channel_stride) {
  switch (nv) {
    case 1:
      return conv_run_strided<1>(row_origin, taps, n_taps, ow_begin, ow_end, packed, bias, vector0, plan, act, out_row,
                                 out_pixel_stride, out_channel_stride);
    case 2:
      return conv_run_strided<2>(row_origin, taps, n_taps, ow_begin, ow_end, packed, bias, vector0, plan, act, out_row,
                                 out_pixel_stride, out_channel_stride);
    case 3:
      return conv_run_strided<3>(row_origin, taps, n_taps, ow_begin, ow_end, packed, bias, vector0, plan, act, out_row,
                                 out_pixel_stride, out_channel_stride);
    default:
      return conv_run_strided<4>(row_origin, taps, n_taps, ow_begin, ow_end, packed, bias, vector0, plan, act, out_row,
                                 out_pixel_stride, out_channel_stride);
  }
}

template <typename scalar_t>
void conv2d_activation_kernel(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias,
                              const Plan& plan, Activation act, Tensor& output) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t V = AccVec<scalar_t>::size();
  const ConvGeometry& g = plan.g;
  const int64_t taps_per_pixel = g.kernel_h * g.kernel_w * g.channels;
  const int64_t row = plan.vectors * V;

  // Weights [kh][kw][ci][vectors * V] and the bias, zero-padded, in the accumulation type: made by the calling
  // thread, read by every worker.
  acc* packed = thread_scratch<acc>(taps_per_pixel * row + row, ScratchSlot::kWeights);
  acc* packed_bias = packed + taps_per_pixel * row;
  std::fill(packed, packed + taps_per_pixel * row + row, acc(0));
  const Tensor w = weight.contiguous();
  const scalar_t* wp = w.const_data_ptr<scalar_t>();
  for (int64_t co = 0; co < g.out_channels; ++co) {
    for (int64_t ci = 0; ci < g.channels; ++ci) {
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
          const int64_t tap = (kh * g.kernel_w + kw) * g.channels + ci;
          packed[tap * row + co] = static_cast<acc>(wp[((co * g.channels + ci) * g.kernel_h + kh) * g.kernel_w + kw]);
        }
      }
    }
  }
  if (given(bias)) {
    const Tensor b = bias->contiguous();
    const scalar_t* bp = b.const_data_ptr<scalar_t>();
    for (int64_t co = 0; co < g.out_channels; ++co) packed_bias[co] = static_cast<acc>(bp[co]);
  }

  const scalar_t* in = input.const_data_ptr<scalar_t>();
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const int64_t out_plane = g.out_h * g.out_w;
  const int64_t out_pixel_stride = plan.channels_last_output ? g.out_channels : 1;
  const int64_t out_channel_stride = plan.channels_last_output ? 1 : out_plane;
  const int64_t ow_begin = g.interior_ow_begin(), ow_end = g.interior_ow_end();
  const int64_t rows = g.batch * g.out_h;
  const int64_t lanes_per_row = std::max<int64_t>(1, g.out_w * row * taps_per_pixel);
  const int64_t grain = std::max<int64_t>(1, kMinParallelLanes / lanes_per_row);

  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    Tap* row_taps = thread_scratch<Tap>(2 * taps_per_pixel, ScratchSlot::kOffsets);
    Tap* pixel_taps = row_taps + taps_per_pixel;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / g.out_h, oh = r % g.out_h;
      // The row's taps, relative to input column ow * stride_w - pad_w of row oh * stride_h - pad_h.
      int64_t n_taps = 0;
      for (int64_t kh = 0; kh < g.kernel_h; ++kh) {
        const int64_t ih = oh * g.stride_h - g.pad_h + kh * g.dilation_h;
        if (ih < 0 || ih >= g.in_h) continue;
        for (int64_t kw = 0; kw < g.kernel_w; ++kw) {
          for (int64_t ci = 0; ci < g.channels; ++ci) {
            row_taps[n_taps++] = {
                ih * plan.in_stride_h + (kw * g.dilation_w - g.pad_w) * plan.in_stride_w + ci * plan.in_stride_c,
                ((kh * g.kernel_w + kw) * g.channels + ci) * row, kw};
          }
        }
      }
      const scalar_t* row_origin = in + n * plan.in_stride_n;
      scalar_t* out_row = plan.channels_last_output ? out + r * g.out_w * g.out_channels
                                                    : out + n * g.out_channels * out_plane + oh * g.out_w;
      for (int64_t v0 = 0; v0 < plan.vectors; v0 += kMaxVectors) {
        conv_pixels(std::min<int64_t>(kMaxVectors, plan.vectors - v0), row_origin, row_taps, n_taps, ow_begin, ow_end,
                    packed, packed_bias, v0, plan, act, out_row, out_pixel_stride, out_channel_stride);
      }
      // The edge pixels, each with the taps of its row's list that fall inside the input (filtered once for all
      // the passes over the output channels).
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        if (ow == ow_begin) ow = std::max(ow_begin, ow_end);
        if (ow >= g.out_w) break;
        int64_t n_pixel_taps = 0;
        for (int64_t t = 0; t < n_taps; ++t) {
          const int64_t iw = ow * g.stride_w - g.pad_w + row_taps[t].kw * g.dilation_w;
          if (iw >= 0 && iw < g.in_w) pixel_taps[n_pixel_taps++] = row_taps[t];
        }
        for (int64_t v0 = 0; v0 < plan.vectors; v0 += kMaxVectors) {
          conv_pixels(std::min<int64_t>(kMaxVectors, plan.vectors - v0), row_origin, pixel_taps, n_pixel_taps, ow,
                      ow + 1, packed, packed_bias, v0, plan, act, out_row, out_pixel_stride, out_channel_stride);
        }
      }
    }
  });
}

Plan plan_conv(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias, at::IntArrayRef stride,
               at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(input.dim() == 4, "fusedops: input must be a 4-D (N, C, H, W) tensor, got ", input.dim(), "-D");
  TORCH_CHECK(input.is_floating_point(), "fusedops: input must be a floating-point tensor, got ",
              dtype_name(input.scalar_type()));
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == input.size(1) && weight.size(0) > 0 && weight.size(2) > 0 &&
                  weight.size(3) > 0,
              "fusedops: weight must have shape (out_channels, ", input.size(1),
              ", kH, kW) (groups 1: all of the input's channels), got ", weight.sizes());
  check_weight_and_bias(input, weight, bias, "weight", "bias");
  check_conv_options(stride, padding, dilation);
  TORCH_CHECK(input.size(1) > 0, "fusedops: input must have at least one channel, got shape ", input.sizes());

  Plan plan;
  ConvGeometry& g = plan.g;
  g.batch = input.size(0);
  g.channels = input.size(1);
  g.out_channels = weight.size(0);
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  set_conv_window(g, stride, padding, dilation);
  plan.in_stride_n = input.stride(0);
  plan.in_stride_c = input.stride(1);
  plan.in_stride_h = input.stride(2);
  plan.in_stride_w = input.stride(3);
  // torch.nn.functional.conv2d's rule: channels-last output when the input or the weight is channels-last.
  plan.channels_last_output = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                              weight.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  return plan;
}

Tensor conv2d_activation(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                         c10::string_view activation) {
  const Activation act = parse_activation(std::string_view(activation.data(), activation.size()), "activation");
  Plan plan = plan_conv(input, weight, bias, stride, padding, dilation);
  const ConvGeometry& g = plan.g;
  Tensor output = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options(),
                            plan.channels_last_output ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  if (output.numel() == 0) return output;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "_conv2d_activation", [&] {
    plan.vectors = (g.out_channels + AccVec<scalar_t>::size() - 1) / AccVec<scalar_t>::size();
    conv2d_activation_kernel<scalar_t>(input, weight, bias, plan, act, output);
  });
  return output;
}

}  // namespace
}  // namespace cpu
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("_conv2d_activation", &fusedops::cpu::conv2d_activation);
}
