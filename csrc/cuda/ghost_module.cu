// CUDA kernels of fusedops::ghost_module and its backward.
//
// Forward: one fused kernel. A block owns one image, a window of win_h x win_w pixels of the primary half
// (at most kWindowPixels: an interior tile of the output plus the cheap depthwise's halo of (kH // 2, kW // 2)
// on each side) and kTileC primary channels:
//   1. its threads compute the primary 1x1 convolution of the whole window, one window pixel per thread,
//      kTileC accumulators each, the input staged through shared memory kTileK channels at a time;
//   2. they apply the bias and activation, store the interior pixels into the output's primary channels, and
//      keep the window (zero outside the map: the depthwise's padding) in shared memory;
//   3. after a barrier, the same threads compute the cheap channels those kTileC primary channels feed (the
//      depth multiplier's filters of each), over the interior, from the window, and store them.
// The residual is added to both halves before their stores. The primary half never leaves the chip: the halo
// pixels are computed by the neighbouring blocks too, (win_h * win_w) / (tile_h * tile_w) primary GEMMs per
// output pixel (1.31x for 3x3 on a 16x16 window, 1.78x for 5x5). Windows that cannot hold an interior (cheap
// kernels larger than 15 along a side) take the composed path (ghost_module_composed,
// csrc/shared/ghost_module.cpp). Half and bfloat16 round where the composed sequence rounds (the primary
// convolution's output, each activation's output, the depthwise output, the residual sum), so the kernel
// matches it. Accumulation in at::opmath_type.
//
// _ghost_bottleneck (inference): the first module as above; the second with kDepthwiseInput, whose step 1 stages the
// outputs of the depthwise stage between the modules instead of the input's pixels, so the depthwise output never
// reaches global memory (recomputed for each channel block and for the halo, kH * kW multiply-adds per staged
// element against kTileC for the GEMM, as in the dwpw kernel).
//
// Backward: the recomputation shared with the CPU (ghost_module_backward_recomputed), running ATen ops and
// fusedops' CUDA kernels on the GPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fusedops/cuda/activation.cuh"
#include "fusedops/cuda/common.cuh"
#include "fusedops/cuda/conv_params.cuh"
#include "fusedops/ghost_module.h"
#include "fusedops/ops.h"
#include "fusedops/schema_str.h"

#include <climits>
#include <type_traits>

namespace fusedops {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 256;
constexpr int kWindowPixels = kThreads;          // one window pixel per thread in the primary GEMM
constexpr int kWindowPitch = kWindowPixels + 1;  // staged input rows: odd pitch, no bank conflicts on transposed stores
constexpr int kTileC = 16;                       // primary channels per block: 16 accumulators per thread
constexpr int kTileK = 16;                       // input channels staged per GEMM step
// Widest window: 16 columns keeps 3x3 and 5x5 windows square (16x16) on maps at least that large.
constexpr int kMaxWindowW = 16;

struct GhostParams {
  int64_t in_channels, init, out_channels, cheap_channels, multiplier;
  int out_h, out_w, stride_h, stride_w;
  int kernel_h, kernel_w, pad_h, pad_w;
  int win_h, win_w, tile_h, tile_w, tiles_w;
  int64_t tiles;                                  // per image
  Strides4 x;                                     // input strides (elements)
  Strides4 o;                                     // output strides
  Strides4 r;                                     // residual strides
  bool input_channels_inner, out_channels_inner;  // whether a pixel's channels are adjacent (channels_last)
  int activation;                                 // Activation
  // The depthwise stage the input goes through first (_ghost_bottleneck's between its modules; kernel template
  // argument kDepthwiseInput), on the input's map.
  DwParams dw;
};

// The value the composed sequence stores for an activated stage: its output rounded, activated, rounded again.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t stored_activation(acc_t v, int activation) {
  return static_cast<acc_t>(static_cast<scalar_t>(activate(static_cast<acc_t>(static_cast<scalar_t>(v)), activation)));
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t with_residual(at::opmath_type<scalar_t> v, const scalar_t* residual, int64_t at) {
  using acc_t = at::opmath_type<scalar_t>;
  return static_cast<scalar_t>(residual != nullptr ? v + static_cast<acc_t>(residual[at]) : v);
}

// Pixel (y, x) of channel k of the module's input: the input's own pixel under the primary stride, or with
// kDepthwiseInput the depthwise stage's output there, rounded as the unfused sequence stores it.
template <bool kDepthwiseInput, typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> module_input(const scalar_t* __restrict__ image,
                                                                  const scalar_t* __restrict__ dw_weight,
                                                                  const scalar_t* __restrict__ dw_bias, int64_t k,
                                                                  int y, int x, const GhostParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (!kDepthwiseInput) {
    return static_cast<acc_t>(
        image[k * p.x.c + static_cast<int64_t>(y) * p.stride_h * p.x.h + static_cast<int64_t>(x) * p.stride_w * p.x.w]);
  } else {
    const acc_t v = depthwise_point(image, p.x, dw_weight, dw_bias, k, y, x, p.dw);
    return static_cast<acc_t>(static_cast<scalar_t>(v));
  }
}

template <typename scalar_t, bool kDepthwiseInput>
__global__ void __launch_bounds__(kThreads)
    ghost_module_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ primary_weight,
                                const scalar_t* __restrict__ primary_bias, const scalar_t* __restrict__ cheap_weight,
                                const scalar_t* __restrict__ cheap_bias, const scalar_t* __restrict__ residual,
                                const scalar_t* __restrict__ dw_weight, const scalar_t* __restrict__ dw_bias,
                                scalar_t* __restrict__ out, const GhostParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  FUSEDOPS_DYNAMIC_SHARED(unsigned char, smem_raw);
  // Steps 1 (staged input, kTileK x kWindowPitch, then the weights, kTileK x kTileC) and 2-3 (the primary
  // window, kTileC x kWindowPixels) use the same memory.
  acc_t* staged = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* weights = staged + kTileK * kWindowPitch;
  acc_t* window = staged;

  const int tid = threadIdx.x;
  const int64_t n = blockIdx.x / p.tiles;
  const int tile = static_cast<int>(blockIdx.x % p.tiles);
  const int oy0 = (tile / p.tiles_w) * p.tile_h, ox0 = (tile % p.tiles_w) * p.tile_w;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kTileC;
  const int channels = static_cast<int>(std::min<int64_t>(kTileC, p.init - c0));
  const int pixels = p.win_h * p.win_w;
  // The window pixel of this thread, in map coordinates: the tile's origin less the halo.
  const int wy = tid / p.win_w, wx = tid % p.win_w;
  const int y = oy0 - p.pad_h + wy, x = ox0 - p.pad_w + wx;
  const bool in_map = tid < pixels && y >= 0 && y < p.out_h && x >= 0 && x < p.out_w;
  const scalar_t* image = input + n * p.x.n;

  // 1. The primary GEMM of the window.
  acc_t acc[kTileC];
#pragma unroll
  for (int c = 0; c < kTileC; ++c) acc[c] = acc_t(0);
  for (int64_t k0 = 0; k0 < p.in_channels; k0 += kTileK) {
    // Consecutive threads read consecutive addresses: along the channels in channels_last, along W otherwise.
    for (int e = tid; e < kTileK * kWindowPixels; e += kThreads) {
      const int k = p.input_channels_inner ? e % kTileK : e / kWindowPixels;
      const int q = p.input_channels_inner ? e / kTileK : e % kWindowPixels;
      const int qy = oy0 - p.pad_h + q / p.win_w, qx = ox0 - p.pad_w + q % p.win_w;
      acc_t v = acc_t(0);
      if (q < pixels && k0 + k < p.in_channels && qy >= 0 && qy < p.out_h && qx >= 0 && qx < p.out_w) {
        v = module_input<kDepthwiseInput>(image, dw_weight, dw_bias, k0 + k, qy, qx, p);
      }
      staged[k * kWindowPitch + q] = v;
    }
    for (int e = tid; e < kTileK * kTileC; e += kThreads) {
      const int c = e / kTileK, k = e % kTileK;
      weights[k * kTileC + c] = (c < channels && k0 + k < p.in_channels)
                                    ? static_cast<acc_t>(primary_weight[(c0 + c) * p.in_channels + k0 + k])
                                    : acc_t(0);
    }
    __syncthreads();
#pragma unroll 4
    for (int k = 0; k < kTileK; ++k) {
      const acc_t a = staged[k * kWindowPitch + tid];
#pragma unroll
      for (int c = 0; c < kTileC; ++c) acc[c] += a * weights[k * kTileC + c];  // a broadcast across the block
    }
    __syncthreads();  // before the next chunk (or the window) overwrites what was read
  }

  // 2. The primary half: stored for the interior, kept (zero outside the map) for the depthwise.
  const bool interior = in_map && wy >= p.pad_h && wy < p.pad_h + p.tile_h && wx >= p.pad_w && wx < p.pad_w + p.tile_w;
#pragma unroll
  for (int c = 0; c < kTileC; ++c) {  // unrolled so that acc stays in registers
    if (c >= channels) break;
    const acc_t bias = primary_bias != nullptr ? static_cast<acc_t>(primary_bias[c0 + c]) : acc_t(0);
    const acc_t v = in_map ? stored_activation<scalar_t>(acc[c] + bias, p.activation) : acc_t(0);
    if (tid < pixels) window[c * kWindowPixels + tid] = v;
    if (interior) {
      out[n * p.o.n + (c0 + c) * p.o.c + y * p.o.h + x * p.o.w] =
          with_residual(v, residual, n * p.r.n + (c0 + c) * p.r.c + y * p.r.h + x * p.r.w);
    }
  }
  const int64_t first = c0 * p.multiplier;  // the first cheap channel these primary channels feed
  const int cheap = static_cast<int>(std::min<int64_t>(channels * p.multiplier, p.cheap_channels - first));
  if (cheap <= 0) return;  // uniform across the block: no barrier is skipped by some threads only
  __syncthreads();

  // 3. The cheap channels fed by this block's primary channels, over the interior.
  const int tile_h = std::min(p.tile_h, p.out_h - oy0), tile_w = std::min(p.tile_w, p.out_w - ox0);
  const int interior_pixels = tile_h * tile_w;
  const int taps = p.kernel_h * p.kernel_w;
  for (int e = tid; e < cheap * interior_pixels; e += kThreads) {
    const int j = p.out_channels_inner ? e % cheap : e / interior_pixels;
    const int q = p.out_channels_inner ? e / cheap : e % interior_pixels;
    const int ty = q / tile_w, tx = q % tile_w;
    const int64_t oc = first + j;  // cheap channel, reading primary channel oc / multiplier
    const acc_t* src = window + (j / p.multiplier) * kWindowPixels + ty * p.win_w + tx;
    const scalar_t* w = cheap_weight + oc * taps;
    acc_t v = cheap_bias != nullptr ? static_cast<acc_t>(cheap_bias[oc]) : acc_t(0);
    // Taps on the map's zero padding are skipped, not added as 0 * w: that is NaN for a NaN or infinite weight, as
    // in fusedops' depthwise kernels.
    for (int kh = 0; kh < p.kernel_h; ++kh) {
      const int y = oy0 + ty + kh - p.pad_h;
      if (y < 0 || y >= p.out_h) continue;
      for (int kw = 0; kw < p.kernel_w; ++kw) {
        const int x = ox0 + tx + kw - p.pad_w;
        if (x >= 0 && x < p.out_w) v += src[kh * p.win_w + kw] * static_cast<acc_t>(w[kh * p.kernel_w + kw]);
      }
    }
    const int64_t oy = oy0 + ty, ox = ox0 + tx, c = p.init + oc;
    out[n * p.o.n + c * p.o.c + oy * p.o.h + ox * p.o.w] = with_residual(
        stored_activation<scalar_t>(v, p.activation), residual, n * p.r.n + c * p.r.c + oy * p.r.h + ox * p.r.w);
  }
}

// The window (win_h x win_w, halo included) of a map of out_h x out_w for a cheap kernel's halo (pad_h, pad_w):
// square where the map allows, at most kWindowPixels. {0, 0} when no interior fits.
std::pair<int, int> window_shape(int out_h, int out_w, int pad_h, int pad_w) {
  const int win_w = std::min(out_w + 2 * pad_w, std::max(kMaxWindowW, 2 * pad_w + 1));
  const int win_h = std::min(out_h + 2 * pad_h, kWindowPixels / win_w);
  if (win_w <= 2 * pad_w || win_h <= 2 * pad_h) return {0, 0};
  return {win_h, win_w};
}

// The fused kernel on `input` for a module of geometry `geo` (stride 1 when `depthwise` is given): with
// `depthwise`, the module's input is the depthwise stage dw_weight, dw_bias of that geometry on `input`. Undefined
// where the window holds no interior (the caller composes).
Tensor ghost_module_fused(const Tensor& input, const GhostModuleGeometry& geo, const Tensor& primary_weight_,
                          const c10::optional<Tensor>& primary_bias, const Tensor& cheap_weight_,
                          const c10::optional<Tensor>& cheap_bias, const c10::optional<Tensor>& residual,
                          const ConvGeometry* depthwise, const Tensor& dw_weight_,
                          const c10::optional<Tensor>& dw_bias) {
  const ConvGeometry& g = geo.cheap;
  const auto [win_h, win_w] = window_shape(static_cast<int>(std::min<int64_t>(g.out_h, INT_MAX / 4)),
                                           static_cast<int>(std::min<int64_t>(g.out_w, INT_MAX / 4)),
                                           static_cast<int>(g.pad_h), static_cast<int>(g.pad_w));
  if (win_h == 0 || input.size(2) * input.size(3) >= INT_MAX / 4 || g.out_h * g.out_w >= INT_MAX) return Tensor();
  Tensor out = at::empty({g.batch, geo.out_channels, g.out_h, g.out_w},
                         input.options().memory_format(output_memory_format(input)));
  if (out.numel() == 0) return out;
  const Tensor primary_weight = primary_weight_.contiguous(), cheap_weight = cheap_weight_.contiguous();
  const Tensor pb = given(primary_bias) ? primary_bias->contiguous() : Tensor();
  const Tensor cb = given(cheap_bias) ? cheap_bias->contiguous() : Tensor();
  const Tensor res = geo.residual ? *residual : Tensor();
  const Tensor dw_weight = depthwise != nullptr ? dw_weight_.contiguous() : Tensor();
  const Tensor dwb = depthwise != nullptr && given(dw_bias) ? dw_bias->contiguous() : Tensor();

  GhostParams p;
  p.in_channels = geo.in_channels;
  p.init = geo.init_channels;
  p.out_channels = geo.out_channels;
  p.cheap_channels = geo.cheap_channels;
  p.multiplier = g.multiplier;
  p.out_h = static_cast<int>(g.out_h);
  p.out_w = static_cast<int>(g.out_w);
  p.stride_h = static_cast<int>(geo.stride_h);
  p.stride_w = static_cast<int>(geo.stride_w);
  p.kernel_h = static_cast<int>(g.kernel_h);
  p.kernel_w = static_cast<int>(g.kernel_w);
  p.pad_h = static_cast<int>(g.pad_h);
  p.pad_w = static_cast<int>(g.pad_w);
  p.win_h = win_h;
  p.win_w = win_w;
  p.tile_h = win_h - 2 * p.pad_h;
  p.tile_w = win_w - 2 * p.pad_w;
  p.tiles_w = ceil_div(p.out_w, p.tile_w);
  p.tiles = int64_t(p.tiles_w) * ceil_div(p.out_h, p.tile_h);
  p.x = strides4(input);
  p.o = strides4(out);
  p.r = strides4(res);
  p.input_channels_inner = input.stride(1) == 1 && geo.in_channels > 1;
  p.out_channels_inner = out.stride(1) == 1;
  p.activation = static_cast<int>(geo.activation);
  p.dw = depthwise != nullptr ? make_dw_params(*depthwise, "_ghost_bottleneck") : DwParams{};

  const int64_t chunks = ceil_div<int64_t>(geo.init_channels, kTileC);
  TORCH_CHECK(g.batch * p.tiles < (int64_t(1) << 31) && chunks < 65536,
              "fusedops: ghost_module CUDA kernel: the problem is too large for one launch");
  const dim3 grid(static_cast<unsigned>(g.batch * p.tiles), static_cast<unsigned>(chunks));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "ghost_module_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = std::max<size_t>(kTileK * kWindowPitch + kTileK * kTileC, kTileC * kWindowPixels) *
                        sizeof(acc_t);  // 34 KiB for double, under the 48 KiB a launch gets without opting in
    auto data = [](const Tensor& t) { return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr; };
    auto launch = [&](auto with_depthwise) {
      FUSEDOPS_LAUNCH(grid, kThreads, smem, stream,
                      ghost_module_forward_kernel<scalar_t, decltype(with_depthwise)::value>)(
          input.const_data_ptr<scalar_t>(), primary_weight.const_data_ptr<scalar_t>(), data(pb),
          cheap_weight.const_data_ptr<scalar_t>(), data(cb), data(res), data(dw_weight), data(dwb),
          out.mutable_data_ptr<scalar_t>(), p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (depthwise != nullptr) {
      launch(std::true_type{});
    } else {
      launch(std::false_type{});
    }
  });
  return out;
}

Tensor ghost_module_cuda(const Tensor& input, const Tensor& primary_weight, const c10::optional<Tensor>& primary_bias,
                         const Tensor& cheap_weight, const c10::optional<Tensor>& cheap_bias,
                         const c10::optional<Tensor>& residual, int64_t out_channels, at::IntArrayRef stride,
                         c10::string_view activation, const c10::optional<Tensor>& /*packed_weights: for the CPU*/) {
  TORCH_CHECK(on_kernel_device(input), "fusedops: ghost_module CUDA kernel got input on ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  const GhostModuleGeometry geo = ghost_module_geometry(input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                                        out_channels, stride, std_view(activation), residual);
  Tensor out = ghost_module_fused(input, geo, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, nullptr,
                                  Tensor(), c10::nullopt);
  if (!out.defined()) {
    out = ghost_module_composed(input, primary_weight, primary_bias, cheap_weight, cheap_bias, out_channels, stride,
                                std_view(activation), residual);
  }
  return out;
}

// _ghost_bottleneck: the first module as ghost_module_cuda; the second module as the fused kernel with the depthwise
// stage (where there is one) computed as it stages its input, so that the depthwise output never reaches global
// memory. The first module's output makes one round trip: its consumers' windows need a halo of it that another
// block computes.
Tensor ghost_bottleneck_cuda(const Tensor& input, const Tensor& primary_weight,
                             const c10::optional<Tensor>& primary_bias, const Tensor& cheap_weight,
                             const c10::optional<Tensor>& cheap_bias, int64_t mid_channels, c10::string_view activation,
                             const c10::optional<Tensor>& dw_weight, const c10::optional<Tensor>& dw_bias,
                             at::IntArrayRef dw_stride, const Tensor& second_primary_weight,
                             const c10::optional<Tensor>& second_primary_bias, const Tensor& second_cheap_weight,
                             const c10::optional<Tensor>& second_cheap_bias, int64_t out_channels,
                             c10::string_view second_activation, const c10::optional<Tensor>& residual,
                             const c10::optional<Tensor>& /*packed_weights*/,
                             const c10::optional<Tensor>& /*second_packed_weights: for the CPU*/) {
  const GhostBottleneckGeometry geo = ghost_bottleneck_geometry(
      input, primary_weight, primary_bias, cheap_weight, cheap_bias, mid_channels, std_view(activation), dw_weight,
      dw_bias, dw_stride, second_primary_weight, second_primary_bias, second_cheap_weight, second_cheap_bias,
      out_channels, std_view(second_activation), residual);
  TORCH_CHECK(on_kernel_device(input), "fusedops: _ghost_bottleneck CUDA kernel got input on ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  const std::array<int64_t, 2> unit{1, 1};
  Tensor x = ghost_module_cuda(input, primary_weight, primary_bias, cheap_weight, cheap_bias, c10::nullopt,
                               mid_channels, unit, activation, c10::nullopt);
  if (geo.has_depthwise) {
    Tensor out = ghost_module_fused(x, geo.second, second_primary_weight, second_primary_bias, second_cheap_weight,
                                    second_cheap_bias, residual, &geo.depthwise, *dw_weight, dw_bias);
    if (out.defined()) return out;
    const std::array<int64_t, 2> padding{geo.depthwise.pad_h, geo.depthwise.pad_w};
    x = ops::call<ops::depthwise_conv2d>(x, *dw_weight, dw_bias, dw_stride, padding, unit);
  }
  return ghost_module_cuda(x, second_primary_weight, second_primary_bias, second_cheap_weight, second_cheap_bias,
                           residual, out_channels, unit, second_activation, c10::nullopt);
}

GhostModuleGrads ghost_module_backward_cuda(const Tensor& grad_output, const Tensor& input,
                                            const Tensor& primary_weight, const c10::optional<Tensor>& primary_bias,
                                            const Tensor& cheap_weight, const c10::optional<Tensor>& cheap_bias,
                                            int64_t out_channels, at::IntArrayRef stride, c10::string_view activation,
                                            std::array<bool, kGhostModuleGradients> output_mask) {
  TORCH_CHECK(on_kernel_device(input), "fusedops: ghost_module CUDA backward got input on ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  return ghost_module_backward_recomputed(grad_output, input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                          out_channels, stride, std_view(activation), output_mask);
}

}  // namespace
}  // namespace cuda
}  // namespace fusedops

FUSEDOPS_REGISTER_CUDA_KERNELS(m) {
  m.impl("ghost_module", &fusedops::cuda::ghost_module_cuda);
  m.impl("_ghost_module_backward", &fusedops::cuda::ghost_module_backward_cuda);
  m.impl("_ghost_bottleneck", &fusedops::cuda::ghost_bottleneck_cuda);
}
