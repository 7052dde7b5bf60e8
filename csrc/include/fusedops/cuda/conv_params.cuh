// The depthwise geometry as the CUDA kernels see it, shared by every kernel that runs a depthwise stage.
#pragma once

#include <c10/util/Exception.h>

#include "fusedops/conv_geometry.h"
#include "fusedops/cuda/common.cuh"

#include <ATen/OpMathType.h>

#include <climits>
#include <cstdint>

namespace fusedops {
namespace cuda {

// Spatial sizes are int (checked on the host, together with the plane sizes, so in-plane offsets fit
// int); offsets across batch and channels are int64.
struct DwParams {
  int64_t batch, channels, multiplier, out_channels;
  int in_h, in_w, out_h, out_w;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

// `op` names the op in the error raised when the geometry does not fit the kernels' int arithmetic.
inline DwParams make_dw_params(const ConvGeometry& g, const char* op) {
  constexpr int64_t kMax = INT_MAX / 4;
  TORCH_CHECK(g.in_h * g.in_w < INT_MAX && g.out_h * g.out_w < INT_MAX && g.in_h + 2 * g.pad_h < kMax &&
                  g.in_w + 2 * g.pad_w < kMax && g.kernel_h * g.kernel_w < kMax && g.stride_h < kMax &&
                  g.stride_w < kMax && g.dilation_h * g.kernel_h < kMax && g.dilation_w * g.kernel_w < kMax,
              "fusedops: ", op,
              " CUDA kernels support image planes of fewer than 2^31 elements and "
              "kernel/stride/padding/dilation values below 2^29");
  DwParams p;
  p.batch = g.batch;
  p.channels = g.channels;
  p.multiplier = g.multiplier;
  p.out_channels = g.out_channels;
  p.in_h = static_cast<int>(g.in_h);
  p.in_w = static_cast<int>(g.in_w);
  p.out_h = static_cast<int>(g.out_h);
  p.out_w = static_cast<int>(g.out_w);
  p.kernel_h = static_cast<int>(g.kernel_h);
  p.kernel_w = static_cast<int>(g.kernel_w);
  p.stride_h = static_cast<int>(g.stride_h);
  p.stride_w = static_cast<int>(g.stride_w);
  p.pad_h = static_cast<int>(g.pad_h);
  p.pad_w = static_cast<int>(g.pad_w);
  p.dilation_h = static_cast<int>(g.dilation_h);
  p.dilation_w = static_cast<int>(g.dilation_w);
  return p;
}

// Depthwise output pixel (oh, ow) of filter `k` of geometry d: its bias (nullptr: none) plus the taps inside the
// input map, reading input channel k / multiplier of `image` (one image; channel, row and column strides s), in
// at::opmath_type. Taps on the zero padding are skipped, not added as 0 * w (NaN for a NaN or infinite weight), as in
// fusedops' depthwise kernels.
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> depthwise_point(const scalar_t* __restrict__ image,
                                                                     const Strides4& s,
                                                                     const scalar_t* __restrict__ weight,
                                                                     const scalar_t* __restrict__ bias, int64_t k,
                                                                     int64_t oh, int64_t ow, const DwParams& d) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* plane = image + (k / d.multiplier) * s.c;
  const scalar_t* w = weight + k * d.kernel_h * d.kernel_w;
  acc_t v = bias != nullptr ? static_cast<acc_t>(bias[k]) : acc_t(0);
  for (int kh = 0; kh < d.kernel_h; ++kh) {
    const int64_t ih = oh * d.stride_h - d.pad_h + kh * d.dilation_h;
    if (ih < 0 || ih >= d.in_h) continue;
    for (int kw = 0; kw < d.kernel_w; ++kw) {
      const int64_t iw = ow * d.stride_w - d.pad_w + kw * d.dilation_w;
      if (iw < 0 || iw >= d.in_w) continue;
      v += static_cast<acc_t>(plane[ih * s.h + iw * s.w]) * static_cast<acc_t>(w[kh * d.kernel_w + kw]);
    }
  }
  return v;
}

}  // namespace cuda
}  // namespace fusedops
