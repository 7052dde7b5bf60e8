// The depthwise geometry as the CUDA kernels see it, shared by every kernel that runs a depthwise stage.
#pragma once

#include <c10/util/Exception.h>

#include "fusedops/conv_geometry.h"

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

}  // namespace cuda
}  // namespace fusedops
