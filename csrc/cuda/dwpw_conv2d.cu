// CUDA kernels of fusedops::dwpw_conv2d (the fused depthwise-separable convolution) and its backward.
//
// Forward: a block owns a tile of kTileP output pixels (consecutive in (oh, ow) order, one image) times
// kTileN output channels, and loops over the depthwise channels K in chunks of kTileK:
//   1. its 256 threads compute the depthwise outputs of the tile's pixels for the chunk (bias and middle
//      activation applied) into shared memory, reading the input through its strides (NCHW or NHWC);
//   2. the chunk of 1x1 weights (kTileK x kTileN) is staged in shared memory;
//   3. each thread accumulates a 2-pixel x 4-channel block of the pointwise GEMM in registers.
// After the last chunk the pointwise bias and output activation are applied and the block stores its
// tile. The depthwise output never reaches global memory; each output-channel tile recomputes it
// (kH*kW multiply-adds per element against kTileN for the GEMM). Accumulation in at::opmath_type.
//
// Backward: the band-wise recomputation shared with the CPU (csrc/shared/dwpw_banded_backward.cpp), running ATen ops on
// the GPU with larger bands.
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
#include "fusedops/dwpw.h"

namespace fusedops {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 256;
constexpr int kTileP = 32;  // output pixels per block
constexpr int kTileN = 64;  // output channels per block
constexpr int kTileK = 32;  // depthwise channels per chunk
constexpr int kPixPerThread = 2;
constexpr int kChPerThread = 4;
static_assert((kTileP / kPixPerThread) * (kTileN / kChPerThread) == kThreads, "thread layout");

struct DwpwParams {
  DwParams dw;           // the depthwise stage (dw.out_channels = K, the GEMM's reduction size)
  int64_t out_channels;  // of the pointwise stage
  Strides4 x;            // input strides (elements)
  Strides4 o;            // output strides
  int mid, out;          // Activation
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    dwpw_forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ dw_weight,
                        const scalar_t* __restrict__ dw_bias, const scalar_t* __restrict__ pw_weight,
                        const scalar_t* __restrict__ pw_bias, scalar_t* __restrict__ out, DwpwParams p,
                        int64_t tiles_p) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t a_tile[kTileP][kTileK + 1];
  __shared__ acc_t w_tile[kTileK][kTileN];

  const int tid = threadIdx.x;
  const int64_t n = blockIdx.x / tiles_p;
  const int64_t p0 = (blockIdx.x % tiles_p) * kTileP;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const int64_t K = p.dw.out_channels;  // depthwise channels: the GEMM's reduction size
  const int64_t pixels = static_cast<int64_t>(p.dw.out_h) * p.dw.out_w;
  const scalar_t* image = input + n * p.x.n;

  const int tn = tid % (kTileN / kChPerThread);  // channel group
  const int tp = tid / (kTileN / kChPerThread);  // pixel group
  acc_t acc[kPixPerThread][kChPerThread];
#pragma unroll
  for (int i = 0; i < kPixPerThread; ++i)
#pragma unroll
    for (int j = 0; j < kChPerThread; ++j) acc[i][j] = acc_t(0);

  for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
    // 1. Depthwise outputs of the tile for channels [k0, k0 + kTileK).
    for (int e = tid; e < kTileP * kTileK; e += kThreads) {
      const int pi = e / kTileK, ki = e % kTileK;
      const int64_t pix = p0 + pi, k = k0 + ki;
      acc_t v = acc_t(0);
      if (pix < pixels && k < K) {
        v = activate(depthwise_point(image, p.x, dw_weight, dw_bias, k, pix / p.dw.out_w, pix % p.dw.out_w, p.dw),
                     p.mid);
      }
      a_tile[pi][ki] = v;
    }
    // 2. The chunk of 1x1 weights: w_tile[k][oc] = pw_weight[oc][k].
    for (int e = tid; e < kTileK * kTileN; e += kThreads) {
      const int ni = e / kTileK, ki = e % kTileK;
      const int64_t oc = c0 + ni, k = k0 + ki;
      w_tile[ki][ni] = (oc < p.out_channels && k < K) ? static_cast<acc_t>(pw_weight[oc * K + k]) : acc_t(0);
    }
    __syncthreads();
    // 3. The pointwise GEMM of the chunk.
#pragma unroll 8
    for (int ki = 0; ki < kTileK; ++ki) {
      acc_t av[kPixPerThread], wv[kChPerThread];
#pragma unroll
      for (int i = 0; i < kPixPerThread; ++i) av[i] = a_tile[tp * kPixPerThread + i][ki];
#pragma unroll
      for (int j = 0; j < kChPerThread; ++j) wv[j] = w_tile[ki][tn * kChPerThread + j];
#pragma unroll
      for (int i = 0; i < kPixPerThread; ++i)
#pragma unroll
        for (int j = 0; j < kChPerThread; ++j) acc[i][j] += av[i] * wv[j];
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kPixPerThread; ++i) {
    const int64_t pix = p0 + tp * kPixPerThread + i;
    if (pix >= pixels) continue;
    const int64_t oh = pix / p.dw.out_w, ow = pix % p.dw.out_w;
    scalar_t* dst = out + n * p.o.n + oh * p.o.h + ow * p.o.w;
#pragma unroll
    for (int j = 0; j < kChPerThread; ++j) {
      const int64_t oc = c0 + tn * kChPerThread + j;
      if (oc >= p.out_channels) continue;
      acc_t v = acc[i][j] + (pw_bias != nullptr ? static_cast<acc_t>(pw_bias[oc]) : acc_t(0));
      dst[oc * p.o.c] = static_cast<scalar_t>(activate(v, p.out));
    }
  }
}

Tensor dwpw_conv2d_cuda(const Tensor& input_, const Tensor& dw_weight_, const c10::optional<Tensor>& dw_bias,
                        const Tensor& pw_weight_, const c10::optional<Tensor>& pw_bias, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, c10::string_view mid_activation,
                        c10::string_view out_activation,
                        const c10::optional<Tensor>& /*packed_weights: for the CPU kernel*/) {
  const DwpwGeometry geo = dwpw_geometry(input_, dw_weight_, dw_bias, pw_weight_, pw_bias, stride, padding, dilation,
                                         mid_activation, out_activation);
  const ConvGeometry& g = geo.dw;
  TORCH_CHECK(on_kernel_device(input_), "fusedops: dwpw_conv2d CUDA kernel got input on ", input_.device());
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::MemoryFormat fmt = output_memory_format(input_);
  const Tensor input = input_.contiguous(fmt);
  const Tensor dw_weight = dw_weight_.contiguous();
  const Tensor pw_weight = pw_weight_.contiguous();
  const Tensor dwb = (dw_bias.has_value() && dw_bias->defined()) ? dw_bias->contiguous() : Tensor();
  const Tensor pwb = (pw_bias.has_value() && pw_bias->defined()) ? pw_bias->contiguous() : Tensor();
  Tensor out = at::empty({g.batch, geo.out_channels, g.out_h, g.out_w}, input.options().memory_format(fmt));
  if (out.numel() == 0) return out;

  DwpwParams p;
  p.dw = make_dw_params(g, "dwpw_conv2d");
  p.out_channels = geo.out_channels;
  p.x = strides4(input);
  p.o = strides4(out);
  p.mid = static_cast<int>(geo.mid);
  p.out = static_cast<int>(geo.out);

  const int64_t tiles_p = ceil_div<int64_t>(g.out_h * g.out_w, kTileP);
  const int64_t tiles_n = ceil_div<int64_t>(geo.out_channels, kTileN);
  TORCH_CHECK(g.batch * tiles_p < (int64_t(1) << 31) && tiles_n < 65536,
              "fusedops: dwpw_conv2d CUDA kernel: the problem is too large for one launch");
  const dim3 grid(static_cast<unsigned>(g.batch * tiles_p), static_cast<unsigned>(tiles_n));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(), "dwpw_conv2d_cuda", [&] {
    FUSEDOPS_LAUNCH(grid, kThreads, 0, stream, dwpw_forward_kernel<scalar_t>)(
        input.const_data_ptr<scalar_t>(), dw_weight.const_data_ptr<scalar_t>(),
        dwb.defined() ? dwb.const_data_ptr<scalar_t>() : nullptr, pw_weight.const_data_ptr<scalar_t>(),
        pwb.defined() ? pwb.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), p, tiles_p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> dwpw_conv2d_backward_cuda(
    const Tensor& grad_output, const Tensor& input, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
    const Tensor& pw_weight, const c10::optional<Tensor>& pw_bias, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, c10::string_view mid_activation, c10::string_view out_activation,
    std::array<bool, 5> output_mask, const c10::optional<Tensor>& output) {
  TORCH_CHECK(on_kernel_device(input), "fusedops: dwpw_conv2d CUDA backward got input on ", input.device());
  const c10::cuda::CUDAGuard guard(input.device());
  return dwpw_conv2d_backward_banded(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                                     dilation, mid_activation, out_activation, output_mask, output,
                                     kCudaBackwardBandElements);
}

}  // namespace
}  // namespace cuda
}  // namespace fusedops

FUSEDOPS_REGISTER_CUDA_KERNELS(m) {
  m.impl("dwpw_conv2d", &fusedops::cuda::dwpw_conv2d_cuda);
  m.impl("_dwpw_conv2d_backward", &fusedops::cuda::dwpw_conv2d_backward_cuda);
}
