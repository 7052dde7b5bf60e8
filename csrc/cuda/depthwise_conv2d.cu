// CUDA kernels of fusedops::depthwise_conv2d and fusedops::_depthwise_conv2d_backward.
//
// Layouts are handled natively (the CPU kernels' rules: the input is made contiguous in its suggested
// memory format, outputs take that format):
//
// * channels-last (NHWC): consecutive threads take consecutive channels, so every tap is one coalesced
//   read of a pixel's channel vector; with multiplier 1 and a channel count that is a multiple of 4,
//   each thread handles 4 channels with one 8/16-byte load per tap, and on the fast paths 4 neighbouring
//   output columns, whose overlapping input columns are loaded once.
// * NCHW: a block computes a 32x32 output tile of one plane from a shared-memory copy of its input
//   window (with halo and zero padding), threads along W; planes narrower than the tile run a direct
//   one-thread-per-output kernel, where a tile would leave most threads idle.
//
// Fast paths (3x3, 5x5, 7x7, stride 1 or 2, dilation 1) are template instantiations of the same
// kernels as the generic path (K = 0: sizes read at run time), which handles any kernel size, stride,
// dilation and depth multiplier. float64 runs only the generic path (it exists for gradcheck).
//
// Backward: the input gradient of a stride-1 convolution (multiplier 1) is the forward convolution of
// grad_output with the flipped kernel and runs the forward kernels; other strides gather, per input
// element, the outputs its taps reach. The weight and bias gradients are deterministic two-stage
// reductions: each block reduces one channel (NCHW) or 32 channels (NHWC) over a slice of N*H*W into a
// partial sum per tap, and a second kernel adds the slices in a fixed order. No atomics.
//
// All kernels accumulate in at::opmath_type (float for half/bfloat16).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "fusedops/conv_geometry.h"
#include "fusedops/cuda/common.cuh"
#include "fusedops/cuda/conv_params.cuh"
#include "fusedops/cuda/reduce.cuh"
#include "fusedops/cuda/tile.cuh"
#include "fusedops/cuda/vec_io.cuh"

#include <array>
#include <climits>
#include <tuple>
#include <type_traits>

namespace fusedops {
namespace cuda {
namespace {

using at::Tensor;

constexpr const char* kOpName = "depthwise_conv2d";  // in the errors of make_dw_params

// Kernel shape of an instantiation: K x K taps, stride S, dilation 1 when K > 0; everything from
// DwParams when K == 0 (the generic path). With K > 0 the tap loops unroll and the taps' weights and
// indices become constants.
#define FUSEDOPS_DW_SHAPE(p)                                        \
  const int KH = K > 0 ? K : (p).kernel_h;                          \
  const int KW = K > 0 ? K : (p).kernel_w;                          \
  const int SH = K > 0 ? (S > 0 ? S : (p).stride_h) : (p).stride_h; \
  const int SW = K > 0 ? (S > 0 ? S : (p).stride_w) : (p).stride_w; \
  const int DH = K > 0 ? 1 : (p).dilation_h;                        \
  const int DW = K > 0 ? 1 : (p).dilation_w;                        \
  (void)KH, (void)KW, (void)SH, (void)SW, (void)DH, (void)DW;

// Calls f(std::integral_constant<int, K>, std::integral_constant<int, S>) for the fast path matching p,
// else f(0, 0). Only the listed combinations are instantiated (compile time): kernel sizes 3, 5, 7 with
// the strides allowed by kStride1 / kStride2; kFast false (float64) instantiates only the generic path.
template <bool kFast, bool kStride1, bool kStride2, typename F>
void with_shape(const DwParams& p, F&& f) {
  using I0 = std::integral_constant<int, 0>;
  if constexpr (kFast) {
    const bool square = p.kernel_h == p.kernel_w && p.stride_h == p.stride_w && p.dilation_h == 1 && p.dilation_w == 1;
    if (square) {
      const int k = p.kernel_h, s = p.stride_h;
#define FUSEDOPS_DW_CASE(KK, SS)                                             \
  if (k == KK && s == SS) {                                                  \
    f(std::integral_constant<int, KK>{}, std::integral_constant<int, SS>{}); \
    return;                                                                  \
  }
      if constexpr (kStride1) {
        FUSEDOPS_DW_CASE(3, 1)
        FUSEDOPS_DW_CASE(5, 1)
        FUSEDOPS_DW_CASE(7, 1)
      }
      if constexpr (kStride2) {
        FUSEDOPS_DW_CASE(3, 2)
        FUSEDOPS_DW_CASE(5, 2)
        FUSEDOPS_DW_CASE(7, 2)
      }
#undef FUSEDOPS_DW_CASE
    }
  }
  f(I0{}, I0{});
}

// Same, for kernels specialised on the kernel size only (stride read at run time).
template <bool kFast, typename F>
void with_kernel_size(const DwParams& p, F&& f) {
  using I0 = std::integral_constant<int, 0>;
  if constexpr (kFast) {
    if (p.kernel_h == p.kernel_w && p.dilation_h == 1 && p.dilation_w == 1) {
      switch (p.kernel_h) {
        case 3: f(std::integral_constant<int, 3>{}, I0{}); return;
        case 5: f(std::integral_constant<int, 5>{}, I0{}); return;
        case 7: f(std::integral_constant<int, 7>{}, I0{}); return;
        default: break;
      }
    }
  }
  f(I0{}, I0{});
}

template <typename scalar_t>
constexpr bool kHasFastPaths = !std::is_same_v<scalar_t, double>;

// ---------------------------------------------------------------------------------------------------
// Forward, channels-last

constexpr int kNhwcThreads = 256;
// Output columns per thread on the fast paths: neighbouring outputs share K - S input columns of every
// row, so 4 outputs load (3*S + K) columns instead of 4*K (3x3 stride 1: 6 instead of 12), while the
// register tile of the largest case (7x7 stride 2: 13 columns x 4 channels) stays well inside the
// 255-register budget on sm_90.
constexpr int kNhwcColsPerThread = 4;
// Channels per thread when vectorised: 16-byte loads for float, 8-byte for half/bfloat16.
constexpr int kNhwcVec = 4;

// wt: weights as opmath [kH*kW][OC] (taps-major, so a thread's VEC channels are one aligned load);
// bias: opmath [OC] or null. Multiplier > 1 requires VEC == 1 (output channel oc reads input oc / m).
template <typename scalar_t, int K, int S, int VEC>
__global__ void __launch_bounds__(kNhwcThreads)
    dw_forward_nhwc_kernel(const scalar_t* __restrict__ in, const at::opmath_type<scalar_t>* __restrict__ wt,
                           const at::opmath_type<scalar_t>* __restrict__ bias, scalar_t* __restrict__ out,
                           const DwParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  FUSEDOPS_DW_SHAPE(p)
  constexpr int P = K > 0 ? kNhwcColsPerThread : 1;
  const int64_t C = p.channels, OC = p.out_channels;
  const int64_t cvecs = OC / VEC;
  const int64_t col_groups = ceil_div<int64_t>(p.out_w, P);
  const int64_t total = p.batch * p.out_h * col_groups * cvecs;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t oc = (idx % cvecs) * VEC;
    int64_t t = idx / cvecs;
    const int ow0 = static_cast<int>(t % col_groups) * P;
    t /= col_groups;
    const int oh = static_cast<int>(t % p.out_h);
    const int64_t n = t / p.out_h;
    const int64_t ic = VEC == 1 ? oc / p.multiplier : oc;

    acc_t sum[P][VEC];
#pragma unroll
    for (int q = 0; q < P; ++q)
#pragma unroll
      for (int v = 0; v < VEC; ++v) sum[q][v] = bias ? bias[oc + v] : acc_t(0);

    const scalar_t* img = in + n * p.in_h * p.in_w * C + ic;
#pragma unroll
    for (int kh = 0; kh < KH; ++kh) {
      const int ih = oh * SH - p.pad_h + kh * DH;
      if (ih < 0 || ih >= p.in_h) continue;
      const scalar_t* row = img + int64_t(ih) * p.in_w * C;
      if constexpr (K > 0) {
        // The input columns of all P outputs for this row, loaded once. Columns in the padding are skipped,
        // not read as zeros: a NaN or Inf weight times a zero is NaN, where PyTorch's result has none.
        constexpr int kSeg = (P - 1) * S + K;
        acc_t x[kSeg][VEC];
        bool inside[kSeg];
        const int iw0 = ow0 * S - p.pad_w;
#pragma unroll
        for (int s = 0; s < kSeg; ++s) {
          const int iw = iw0 + s;
          inside[s] = iw >= 0 && iw < p.in_w;
          if (inside[s])
            load_acc<VEC>(row + int64_t(iw) * C, x[s]);
          else
            fill<VEC>(x[s], acc_t(0));
        }
#pragma unroll
        for (int kw = 0; kw < K; ++kw) {
          acc_t w[VEC];
          load_acc<VEC>(wt + (kh * K + kw) * OC + oc, w);
#pragma unroll
          for (int q = 0; q < P; ++q) {
            if (!inside[q * S + kw]) continue;
#pragma unroll
            for (int v = 0; v < VEC; ++v) sum[q][v] += x[q * S + kw][v] * w[v];
          }
        }
      } else {
        for (int kw = 0; kw < KW; ++kw) {
          const int iw = ow0 * SW - p.pad_w + kw * DW;
          if (iw < 0 || iw >= p.in_w) continue;
          acc_t x[VEC], w[VEC];
          load_acc<VEC>(row + int64_t(iw) * C, x);
          load_acc<VEC>(wt + (kh * KW + kw) * OC + oc, w);
#pragma unroll
          for (int v = 0; v < VEC; ++v) sum[0][v] += x[v] * w[v];
        }
      }
    }
    scalar_t* dst = out + ((n * p.out_h + oh) * p.out_w + ow0) * OC + oc;
#pragma unroll
    for (int q = 0; q < P; ++q)
      if (ow0 + q < p.out_w) store_from_acc<VEC>(dst + q * OC, sum[q]);
  }
}

template <typename scalar_t, int K, int S, int VEC>
void launch_forward_nhwc(const Tensor& input, const Tensor& wt, const Tensor& bias, Tensor& out, const DwParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int P = K > 0 ? kNhwcColsPerThread : 1;
  const int64_t items = p.batch * p.out_h * ceil_div<int64_t>(p.out_w, P) * (p.out_channels / VEC);
  FUSEDOPS_LAUNCH(grid_for(items, kNhwcThreads), kNhwcThreads, 0, c10::cuda::getCurrentCUDAStream(),
                  dw_forward_nhwc_kernel<scalar_t, K, S, VEC>)(
      input.const_data_ptr<scalar_t>(), wt.const_data_ptr<acc_t>(),
      bias.defined() ? bias.const_data_ptr<acc_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void forward_nhwc(const Tensor& input, const Tensor& wt, const Tensor& bias, Tensor& out, const DwParams& p) {
  const bool vec = p.multiplier == 1 && p.channels % kNhwcVec == 0 &&
                   is_aligned<scalar_t, kNhwcVec>(input.const_data_ptr()) &&
                   is_aligned<scalar_t, kNhwcVec>(out.const_data_ptr());
  if constexpr (kHasFastPaths<scalar_t>) {
    if (vec) {
      with_shape<true, true, true>(p, [&](auto k, auto s) {
        launch_forward_nhwc<scalar_t, decltype(k)::value, decltype(s)::value, kNhwcVec>(input, wt, bias, out, p);
      });
      return;
    }
  }
  // Unvectorisable channel counts, multipliers > 1 and float64: generic, one channel per thread.
  launch_forward_nhwc<scalar_t, 0, 0, 1>(input, wt, bias, out, p);
}

// ---------------------------------------------------------------------------------------------------
// Forward, NCHW

// 32 x 8 threads, 4 output rows each: a 32 x 32 output tile. A warp reads a shared-memory row, and
// the input window (e.g. 34 x 34 for 3x3 stride 1) is loaded once for 1024 outputs.
constexpr int kTileW = 32;
constexpr int kTileThreadsY = 8;
constexpr int kTileRowsPerThread = 4;
constexpr int kTileH = kTileThreadsY * kTileRowsPerThread;
constexpr int kTileThreads = kTileW * kTileThreadsY;
// Windows larger than this (large dilations / kernels) run the direct kernel: staying under the default
// 48 KiB dynamic shared memory limit keeps several blocks resident per SM.
constexpr int64_t kMaxTileBytes = 48 * 1024;
// Planes narrower than this run the direct kernel (a 32-wide tile would idle most of its threads).
constexpr int kMinTiledWidth = 16;
constexpr int kMinTiledHeight = 8;

template <typename scalar_t, int K, int S>
__global__ void __launch_bounds__(kTileThreads)
    dw_forward_nchw_tile_kernel(const scalar_t* __restrict__ in, const at::opmath_type<scalar_t>* __restrict__ wt,
                                const at::opmath_type<scalar_t>* __restrict__ bias, scalar_t* __restrict__ out,
                                const DwParams p, int tiles_w, int64_t tiles_per_plane, int64_t blocks, int win_h,
                                int win_w) {
  using acc_t = at::opmath_type<scalar_t>;
  FUSEDOPS_DW_SHAPE(p)
  FUSEDOPS_DYNAMIC_SHARED(unsigned char, smem_raw);
  acc_t* win = reinterpret_cast<acc_t*>(smem_raw);
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTileW + tx;
  const int64_t OC = p.out_channels;
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const int64_t plane = b / tiles_per_plane;  // n * OC + oc
    const int tile = static_cast<int>(b % tiles_per_plane);
    const int64_t n = plane / OC, oc = plane % OC, c = oc / p.multiplier;
    const int oh0 = (tile / tiles_w) * kTileH, ow0 = (tile % tiles_w) * kTileW;

    __syncthreads();  // the previous tile's readers are done with the window
    load_tile_zero_padded(win, win_w, win_h, win_w, in + (n * p.channels + c) * p.in_h * p.in_w, p.in_h, p.in_w,
                          oh0 * SH - p.pad_h, ow0 * SW - p.pad_w, tid, kTileThreads);
    __syncthreads();

    const acc_t b0 = bias ? bias[oc] : acc_t(0);
    acc_t sum[kTileRowsPerThread];
#pragma unroll
    for (int r = 0; r < kTileRowsPerThread; ++r) sum[r] = b0;
#pragma unroll
    for (int kh = 0; kh < KH; ++kh) {
#pragma unroll
      for (int kw = 0; kw < KW; ++kw) {
        const acc_t w = wt[(kh * KW + kw) * OC + oc];  // uniform across the block: a broadcast
        const acc_t* src = win + (ty * SH + kh * DH) * win_w + tx * SW + kw * DW;
#pragma unroll
        for (int r = 0; r < kTileRowsPerThread; ++r) sum[r] += src[r * kTileThreadsY * SH * win_w] * w;
      }
    }
    const int ow = ow0 + tx;
    if (ow < p.out_w) {
      scalar_t* dst = out + plane * p.out_h * p.out_w + ow;
#pragma unroll
      for (int r = 0; r < kTileRowsPerThread; ++r) {
        const int oh = oh0 + ty + r * kTileThreadsY;
        if (oh < p.out_h) dst[oh * p.out_w] = static_cast<scalar_t>(sum[r]);
      }
    }
  }
}

// One thread per output; taps read through the L1 cache. For small planes and oversized windows.
template <typename scalar_t>
__global__ void __launch_bounds__(kNhwcThreads)
    dw_forward_nchw_direct_kernel(const scalar_t* __restrict__ in, const at::opmath_type<scalar_t>* __restrict__ wt,
                                  const at::opmath_type<scalar_t>* __restrict__ bias, scalar_t* __restrict__ out,
                                  const DwParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t OC = p.out_channels;
  const int64_t total = p.batch * OC * p.out_h * p.out_w;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int ow = static_cast<int>(idx % p.out_w);
    const int64_t t = idx / p.out_w;
    const int oh = static_cast<int>(t % p.out_h);
    const int64_t plane = t / p.out_h;
    const int64_t n = plane / OC, oc = plane % OC, c = oc / p.multiplier;
    const scalar_t* src = in + (n * p.channels + c) * p.in_h * p.in_w;
    acc_t sum = bias ? bias[oc] : acc_t(0);
    for (int kh = 0; kh < p.kernel_h; ++kh) {
      const int ih = oh * p.stride_h - p.pad_h + kh * p.dilation_h;
      if (ih < 0 || ih >= p.in_h) continue;
      for (int kw = 0; kw < p.kernel_w; ++kw) {
        const int iw = ow * p.stride_w - p.pad_w + kw * p.dilation_w;
        if (iw < 0 || iw >= p.in_w) continue;
        sum += static_cast<acc_t>(src[ih * p.in_w + iw]) * wt[(kh * p.kernel_w + kw) * OC + oc];
      }
    }
    out[idx] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t>
void forward_nchw(const Tensor& input, const Tensor& wt, const Tensor& bias, Tensor& out, const DwParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const acc_t* bp = bias.defined() ? bias.const_data_ptr<acc_t>() : nullptr;
  const int win_h = (kTileH - 1) * p.stride_h + (p.kernel_h - 1) * p.dilation_h + 1;
  const int win_w = (kTileW - 1) * p.stride_w + (p.kernel_w - 1) * p.dilation_w + 1;
  const int64_t win_bytes = int64_t(win_h) * win_w * sizeof(acc_t);
  if (p.out_w >= kMinTiledWidth && p.out_h >= kMinTiledHeight && win_bytes <= kMaxTileBytes) {
    const int tiles_w = ceil_div(p.out_w, kTileW);
    const int64_t tiles_per_plane = int64_t(tiles_w) * ceil_div(p.out_h, kTileH);
    const int64_t blocks = p.batch * p.out_channels * tiles_per_plane;
    const unsigned int grid = static_cast<unsigned int>(std::min<int64_t>(blocks, INT_MAX));
    with_shape<kHasFastPaths<scalar_t>, true, true>(p, [&](auto k, auto s) {
      FUSEDOPS_LAUNCH(grid, dim3(kTileW, kTileThreadsY), win_bytes, stream,
                      dw_forward_nchw_tile_kernel<scalar_t, decltype(k)::value, decltype(s)::value>)(
          input.const_data_ptr<scalar_t>(), wt.const_data_ptr<acc_t>(), bp, out.mutable_data_ptr<scalar_t>(), p,
          tiles_w, tiles_per_plane, blocks, win_h, win_w);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  } else {
    const int64_t items = p.batch * p.out_channels * p.out_h * p.out_w;
    FUSEDOPS_LAUNCH(grid_for(items, kNhwcThreads), kNhwcThreads, 0, stream, dw_forward_nchw_direct_kernel<scalar_t>)(
        input.const_data_ptr<scalar_t>(), wt.const_data_ptr<acc_t>(), bp, out.mutable_data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

// ---------------------------------------------------------------------------------------------------
// Host-side preparation

// Weights (OC, 1, kH, kW) -> opmath [kH*kW][OC], optionally flipped 180 degrees (the input gradient's
// transposed convolution). A few KiB: the copy costs one tiny kernel.
Tensor taps_by_channel(const Tensor& weight, bool flip) {
  Tensor w =
      weight.reshape({weight.size(0), weight.size(2) * weight.size(3)}).to(at::toOpMathType(weight.scalar_type()));
  if (flip) w = w.flip({1});
  return w.t().contiguous();
}

template <typename scalar_t>
void forward(const Tensor& input, const Tensor& wt, const Tensor& bias, Tensor& out, const DwParams& p, bool cl) {
  if (cl)
    forward_nhwc<scalar_t>(input, wt, bias, out, p);
  else
    forward_nchw<scalar_t>(input, wt, bias, out, p);
}

void check_cuda(const Tensor& input, const char* op) {
  TORCH_CHECK(on_kernel_device(input), "fusedops: ", op, " CUDA kernel got input on ", input.device());
}

Tensor depthwise_conv2d_cuda(const Tensor& input_, const Tensor& weight, const c10::optional<Tensor>& bias,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const ConvGeometry g = depthwise_geometry(input_, weight, bias, stride, padding, dilation);
  check_cuda(input_, "depthwise_conv2d");
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::MemoryFormat fmt = output_memory_format(input_);
  const Tensor input = input_.contiguous(fmt);
  Tensor out = at::empty({g.batch, g.out_channels, g.out_h, g.out_w}, input.options().memory_format(fmt));
  if (out.numel() == 0) return out;
  const DwParams p = make_dw_params(g, kOpName);
  const Tensor wt = taps_by_channel(weight, false);
  const Tensor b =
      bias.has_value() && bias->defined() ? bias->to(at::toOpMathType(bias->scalar_type())).contiguous() : Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_cuda", [&] {
    forward<scalar_t>(input, wt, b, out, p, fmt == at::MemoryFormat::ChannelsLast);
  });
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Input gradient

// One thread per input-gradient element: gathers the outputs its taps reached (any stride/dilation/
// multiplier). Threads are laid out like the tensor (channels fastest for NHWC, W fastest for NCHW), so
// writes are coalesced and grad_output reads are coalesced along the same dimension.
template <typename scalar_t, bool CL, int K, int S>
__global__ void __launch_bounds__(kNhwcThreads)
    dw_grad_input_kernel(const scalar_t* __restrict__ go, const at::opmath_type<scalar_t>* __restrict__ wt,
                         scalar_t* __restrict__ gi, const DwParams p) {
  using acc_t = at::opmath_type<scalar_t>;
  FUSEDOPS_DW_SHAPE(p)
  const int64_t C = p.channels, OC = p.out_channels, m = p.multiplier;
  const int64_t total = p.batch * C * p.in_h * p.in_w;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    int64_t n, c;
    int ih, iw;
    if constexpr (CL) {
      c = idx % C;
      int64_t t = idx / C;
      iw = static_cast<int>(t % p.in_w);
      t /= p.in_w;
      ih = static_cast<int>(t % p.in_h);
      n = t / p.in_h;
    } else {
      iw = static_cast<int>(idx % p.in_w);
      int64_t t = idx / p.in_w;
      ih = static_cast<int>(t % p.in_h);
      t /= p.in_h;
      c = t % C;
      n = t / C;
    }
    acc_t sum = acc_t(0);
    for (int64_t j = 0; j < m; ++j) {
      const int64_t oc = c * m + j;
      const scalar_t* plane = CL ? go + n * p.out_h * p.out_w * OC + oc : go + (n * OC + oc) * p.out_h * p.out_w;
#pragma unroll
      for (int kh = 0; kh < KH; ++kh) {
        const int y = ih + p.pad_h - kh * DH;
        if (y < 0 || y % SH != 0) continue;
        const int oh = y / SH;
        if (oh >= p.out_h) continue;
#pragma unroll
        for (int kw = 0; kw < KW; ++kw) {
          const int x = iw + p.pad_w - kw * DW;
          if (x < 0 || x % SW != 0) continue;
          const int ow = x / SW;
          if (ow >= p.out_w) continue;
          const int64_t pix = int64_t(oh) * p.out_w + ow;
          sum += static_cast<acc_t>(plane[CL ? pix * OC : pix]) * wt[(kh * KW + kw) * OC + oc];
        }
      }
    }
    gi[idx] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t>
void compute_grad_input(const Tensor& grad_output, const Tensor& weight, Tensor& grad_in, const ConvGeometry& g,
                        bool cl) {
  using acc_t = at::opmath_type<scalar_t>;
  ConvGeometry t;
  if (transposed_as_forward(g, &t)) {
    forward<scalar_t>(grad_output, taps_by_channel(weight, true), Tensor(), grad_in, make_dw_params(t, kOpName), cl);
    return;
  }
  const DwParams p = make_dw_params(g, kOpName);
  const Tensor wt = taps_by_channel(weight, false);
  const int64_t items = grad_in.numel();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  auto launch = [&](auto layout, auto k, auto s) {
    FUSEDOPS_LAUNCH(grid_for(items, kNhwcThreads), kNhwcThreads, 0, stream,
                    dw_grad_input_kernel<scalar_t, decltype(layout)::value, decltype(k)::value, decltype(s)::value>)(
        grad_output.const_data_ptr<scalar_t>(), wt.const_data_ptr<acc_t>(), grad_in.mutable_data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  // Stride 1 (multiplier 1) runs the forward kernels above, so only stride 2 gets fast gathers here.
  with_shape<kHasFastPaths<scalar_t>, false, true>(p, [&](auto k, auto s) {
    if (cl)
      launch(std::true_type{}, k, s);
    else
      launch(std::false_type{}, k, s);
  });
}

// ---------------------------------------------------------------------------------------------------
// Weight and bias gradients

constexpr int kGwThreads = 256;
// Taps accumulated per pass on the generic path (run-time kernel size): 8 registers per thread; a 3x3
// dilated kernel takes 2 passes over grad_output. Fast paths hold all K*K taps in one pass.
constexpr int kGenericTapChunk = 8;
// NHWC blocks: 32 channels (one warp, coalesced) x 8 pixel rows.
constexpr int kGwNhwcChannels = kWarpSize;
constexpr int kGwNhwcRows = kGwThreads / kGwNhwcChannels;
// Blocks to aim for (per SM) so that the reduction fills the GPU even when channels are few.
constexpr int kGwBlocksPerSm = 4;
// Minimum grad_output elements per block: below this the per-block reduction is no longer amortised.
constexpr int64_t kGwMinElementsPerBlock = 4096;
// NHWC blocks cover 32 channels at once, so fewer pixels give them a comparable share.
constexpr int64_t kGwNhwcMinPixelsPerBlock = 512;
constexpr int kGwMaxSplits = 1024;

// Output (n, oh, ow) of flat index e into the planes of grad_output.
struct Pixel {
  int64_t n;
  int oh, ow;
};
__device__ __forceinline__ Pixel pixel_of(int64_t e, const DwParams& p) {
  const int64_t plane = int64_t(p.out_h) * p.out_w;
  const int r = static_cast<int>(e % plane);
  return {e / plane, r / p.out_w, r % p.out_w};
}

// Adds g * input(tap) to a[u] for the taps t0 + u (u < TC) of output pixel px. `src` is the input
// plane of the channel (NCHW: pixel stride 1; NHWC: pixel stride C).
template <int K, int S, int TC, typename acc_t, typename scalar_t>
__device__ __forceinline__ void accumulate_taps(acc_t (&a)[TC + 1], acc_t g, const scalar_t* __restrict__ src,
                                                int64_t pixel_stride, const Pixel& px, int t0, const DwParams& p) {
  FUSEDOPS_DW_SHAPE(p)
  const int T = KH * KW;
  const int ih0 = px.oh * SH - p.pad_h, iw0 = px.ow * SW - p.pad_w;
#pragma unroll
  for (int u = 0; u < TC; ++u) {
    const int t = t0 + u;
    if (K == 0 && t >= T) break;
    const int kh = t / KW, kw = t - kh * KW;
    const int ih = ih0 + kh * DH, iw = iw0 + kw * DW;
    if (ih >= 0 && ih < p.in_h && iw >= 0 && iw < p.in_w)
      a[u] += g * static_cast<acc_t>(src[(int64_t(ih) * p.in_w + iw) * pixel_stride]);
  }
}

// partial[split][oc][T + 1]: per-slice sums of each tap's gradient, and of the bias gradient at [T].
template <typename scalar_t, int K, int S>
__global__ void __launch_bounds__(kGwThreads)
    dw_grad_weight_nchw_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ in,
                               at::opmath_type<scalar_t>* __restrict__ partial, const DwParams p, int splits,
                               bool need_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int TC = K > 0 ? K * K : kGenericTapChunk;
  __shared__ acc_t red[(TC + 1) * (kGwThreads / kWarpSize)];
  const int64_t OC = p.out_channels;
  const int64_t oc = blockIdx.x % OC;
  const int split = static_cast<int>(blockIdx.x / OC);
  const int64_t c = oc / p.multiplier;
  const int T = (K > 0 ? K * K : p.kernel_h * p.kernel_w);
  const int64_t plane_out = int64_t(p.out_h) * p.out_w, plane_in = int64_t(p.in_h) * p.in_w;
  const int64_t elements = p.batch * plane_out;
  const int64_t e0 = elements * split / splits, e1 = elements * (split + 1) / splits;
  acc_t* dst = partial + (int64_t(split) * OC + oc) * (T + 1);
  for (int t0 = 0; t0 < T; t0 += TC) {
    acc_t a[TC + 1];
    fill<TC + 1>(a, acc_t(0));
    for (int64_t e = e0 + threadIdx.x; e < e1; e += kGwThreads) {
      const Pixel px = pixel_of(e, p);
      const int64_t r = e - px.n * plane_out;
      const acc_t g = static_cast<acc_t>(go[(px.n * OC + oc) * plane_out + r]);
      a[TC] += g;
      if (need_weight) accumulate_taps<K, S, TC>(a, g, in + (px.n * p.channels + c) * plane_in, 1, px, t0, p);
    }
    block_sum_n<TC + 1>(a, red);
    const int u = threadIdx.x;
    if (u < TC && t0 + u < T) dst[t0 + u] = red[u];
    if (u == TC && t0 == 0) dst[T] = red[TC];
    if (!need_weight) break;  // the bias only needs the first pass
    __syncthreads();          // red is rewritten by the next pass
  }
}

template <typename scalar_t, int K, int S>
__global__ void __launch_bounds__(kGwThreads)
    dw_grad_weight_nhwc_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ in,
                               at::opmath_type<scalar_t>* __restrict__ partial, const DwParams p, int splits,
                               bool need_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int TC = K > 0 ? K * K : kGenericTapChunk;
  __shared__ acc_t red[kGwNhwcRows * kGwNhwcChannels];
  const int64_t OC = p.out_channels;
  const int64_t groups = ceil_div<int64_t>(OC, kGwNhwcChannels);
  const int64_t group = blockIdx.x % groups;
  const int split = static_cast<int>(blockIdx.x / groups);
  const int64_t oc = group * kGwNhwcChannels + threadIdx.x;
  const bool valid = oc < OC;
  const int64_t ic = oc / p.multiplier;
  const int T = (K > 0 ? K * K : p.kernel_h * p.kernel_w);
  const int64_t elements = p.batch * p.out_h * p.out_w;
  const int64_t e0 = elements * split / splits, e1 = elements * (split + 1) / splits;
  acc_t* dst = partial + (int64_t(split) * OC + oc) * (T + 1);
  for (int t0 = 0; t0 < T; t0 += TC) {
    acc_t a[TC + 1];
    fill<TC + 1>(a, acc_t(0));
    if (valid) {
      for (int64_t e = e0 + threadIdx.y; e < e1; e += kGwNhwcRows) {
        const Pixel px = pixel_of(e, p);
        const acc_t g = static_cast<acc_t>(go[e * OC + oc]);  // pixel e of grad_output is at e * OC
        a[TC] += g;
        if (need_weight)
          accumulate_taps<K, S, TC>(a, g, in + px.n * p.in_h * p.in_w * p.channels + ic, p.channels, px, t0, p);
      }
    }
    // Warps span channels here, so the sums run across warps, through shared memory.
#pragma unroll
    for (int u = 0; u <= TC; ++u) {
      const acc_t s = sum_over_y(a[u], red);
      if (threadIdx.y == 0 && valid) {
        if (u < TC && t0 + u < T) dst[t0 + u] = s;
        if (u == TC && t0 == 0) dst[T] = s;
      }
    }
    if (!need_weight) break;
  }
}

// grad_weight[oc][t] / grad_bias[oc] = sum over slices of partial, in slice order (deterministic).
template <typename scalar_t>
__global__ void __launch_bounds__(kNhwcThreads)
    dw_grad_weight_finalize_kernel(const at::opmath_type<scalar_t>* __restrict__ partial, int splits, int64_t OC, int T,
                                   scalar_t* __restrict__ gw, scalar_t* __restrict__ gb) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = OC * (T + 1);
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    acc_t s = acc_t(0);
    for (int k = 0; k < splits; ++k) s += partial[int64_t(k) * total + idx];
    const int64_t oc = idx / (T + 1);
    const int t = static_cast<int>(idx % (T + 1));
    if (t < T) {
      if (gw) gw[oc * T + t] = static_cast<scalar_t>(s);
    } else if (gb) {
      gb[oc] = static_cast<scalar_t>(s);
    }
  }
}

// Slices of N*H*W per channel (group) block: enough blocks to fill the GPU, each still with a
// substantial share of the work.
int grad_weight_splits(int64_t channel_blocks, int64_t elements, int64_t min_elements) {
  const int64_t sms = multiprocessor_count();
  int64_t splits = ceil_div<int64_t>(sms * kGwBlocksPerSm, channel_blocks);
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, elements / min_elements));
  splits = std::min<int64_t>(splits, kGwMaxSplits);
  // The grid is one-dimensional: channel_blocks * splits must fit gridDim.x.
  splits = std::min<int64_t>(splits, std::max<int64_t>(1, INT_MAX / channel_blocks));
  return static_cast<int>(std::max<int64_t>(1, splits));
}

template <typename scalar_t>
void compute_grad_weight_bias(const Tensor& grad_output, const Tensor& input, Tensor* grad_weight, Tensor* grad_bias,
                              const DwParams& p, bool cl) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int T = p.kernel_h * p.kernel_w;
  const int64_t OC = p.out_channels;
  const int64_t elements = p.batch * p.out_h * p.out_w;
  const int64_t channel_blocks = cl ? ceil_div<int64_t>(OC, kGwNhwcChannels) : OC;
  TORCH_CHECK(channel_blocks < INT_MAX, "fusedops: too many channels for the CUDA depthwise_conv2d backward");
  const int splits =
      grad_weight_splits(channel_blocks, elements, cl ? kGwNhwcMinPixelsPerBlock : kGwMinElementsPerBlock);
  Tensor partial = at::empty({splits, OC, T + 1}, input.options().dtype(at::toOpMathType(input.scalar_type())));
  const bool need_weight = grad_weight != nullptr;
  const unsigned int grid = static_cast<unsigned int>(channel_blocks * splits);
  // Specialised on the kernel size only: the stride costs a multiply here, not a division.
  with_kernel_size<kHasFastPaths<scalar_t>>(p, [&](auto k, auto s) {
    constexpr int K = decltype(k)::value, S = decltype(s)::value;
    if (cl) {
      FUSEDOPS_LAUNCH(grid, dim3(kGwNhwcChannels, kGwNhwcRows), 0, stream, dw_grad_weight_nhwc_kernel<scalar_t, K, S>)(
          grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(),
          p, splits, need_weight);
    } else {
      FUSEDOPS_LAUNCH(grid, kGwThreads, 0, stream, dw_grad_weight_nchw_kernel<scalar_t, K, S>)(
          grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(),
          p, splits, need_weight);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  FUSEDOPS_LAUNCH(grid_for(OC * (T + 1), kNhwcThreads), kNhwcThreads, 0, stream,
                  dw_grad_weight_finalize_kernel<scalar_t>)(
      partial.const_data_ptr<acc_t>(), splits, OC, T, grad_weight ? grad_weight->mutable_data_ptr<scalar_t>() : nullptr,
      grad_bias ? grad_bias->mutable_data_ptr<scalar_t>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<Tensor, Tensor, Tensor> depthwise_conv2d_backward_cuda(const Tensor& grad_output_, const Tensor& input_,
                                                                  const Tensor& weight, at::IntArrayRef stride,
                                                                  at::IntArrayRef padding, at::IntArrayRef dilation,
                                                                  std::array<bool, 3> output_mask) {
  const ConvGeometry g = depthwise_backward_geometry(grad_output_, input_, weight, stride, padding, dilation);
  check_cuda(input_, "depthwise_conv2d backward");
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::MemoryFormat fmt = output_memory_format(input_);
  const Tensor input = input_.contiguous(fmt);
  const Tensor grad_output = grad_output_.contiguous(fmt);
  DepthwiseGrads grads(input, weight, g, fmt, output_mask);
  if (grad_output.numel() == 0) {
    grads.zero();
    return grads.result(input.options());
  }
  const bool cl = fmt == at::MemoryFormat::ChannelsLast;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_backward_cuda", [&] {
    if (grads.input.defined()) compute_grad_input<scalar_t>(grad_output, weight, grads.input, g, cl);
    if (grads.weight.defined() || grads.bias.defined())
      compute_grad_weight_bias<scalar_t>(grad_output, input, grads.weight.defined() ? &grads.weight : nullptr,
                                         grads.bias.defined() ? &grads.bias : nullptr, make_dw_params(g, kOpName), cl);
  });
  return grads.result(input.options());
}

}  // namespace
}  // namespace cuda
}  // namespace fusedops

FUSEDOPS_REGISTER_CUDA_KERNELS(m) {
  m.impl("depthwise_conv2d", &fusedops::cuda::depthwise_conv2d_cuda);
  m.impl("_depthwise_conv2d_backward", &fusedops::cuda::depthwise_conv2d_backward_cuda);
}
