// Argument checks and the device-independent pieces of fusedops::ghost_module, GhostNet's Ghost module with its batch
// norms folded in (implemented in csrc/shared/ghost_module.cpp):
//
//   x1     = act(conv1x1(input, primary_weight, stride) + primary_bias)           (init channels)
//   x2     = act(depthwise(x1, cheap_weight, padding k // 2) + cheap_bias)        (init * multiplier channels)
//   output = cat([x1, x2], 1)[:, :out_channels]  [+ residual]
#pragma once

#include "fusedops/activation.h"
#include "fusedops/conv_geometry.h"

#include <ATen/ATen.h>

#include <array>
#include <string_view>
#include <tuple>

namespace fusedops {

// Gradients of input, primary_weight, primary_bias, cheap_weight, cheap_bias (the residual's is grad_output).
using GhostModuleGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
inline constexpr size_t kGhostModuleGradients = 5;

struct GhostModuleGeometry {
  ConvGeometry cheap;  // the depthwise stage, on the primary half (cheap.channels = init, stride 1, same size)
  int64_t in_channels = 0, init_channels = 0, out_channels = 0;
  int64_t stride_h = 1, stride_w = 1;  // of the primary 1x1 convolution
  int64_t cheap_channels = 0;          // the output channels the depthwise stage contributes (out - init)
  bool residual = false;               // a residual tensor is added to the output
  Activation activation = Activation::kNone;

  // The primary half's channels that the contributed cheap channels read: ceil(cheap_channels / multiplier).
  int64_t cheap_sources() const {
    return (cheap_channels + cheap.multiplier - 1) / cheap.multiplier;
  }
};

// Validates a ghost_module call; errors name the offending argument (primary_weight, out_channels, ...).
GhostModuleGeometry ghost_module_geometry(const at::Tensor& input, const at::Tensor& primary_weight,
                                          const c10::optional<at::Tensor>& primary_bias, const at::Tensor& cheap_weight,
                                          const c10::optional<at::Tensor>& cheap_bias, int64_t out_channels,
                                          at::IntArrayRef stride, std::string_view activation,
                                          const c10::optional<at::Tensor>& residual);

// The depthwise stage after a module (_ghost_module_depthwise's; _ghost_bottleneck's between its modules): checks
// dw_weight ((channels, 1, kH, kW) with odd kH and kW: padding k // 2) and dw_stride (checked for two elements by the
// caller), and returns its geometry on `module_map` (a tensor of the module's input or output shape, dtype and device;
// it reads `channels` of them). `channels_name`: what the errors call the channel count.
ConvGeometry following_depthwise_geometry(const at::Tensor& module_map, const at::Tensor& dw_weight,
                                          const c10::optional<at::Tensor>& dw_bias, at::IntArrayRef dw_stride,
                                          int64_t channels, const char* channels_name);

// A _ghost_bottleneck call's geometry: each module's (the second's map is the output's) and the depthwise stage's
// between them where dw_weight is given.
struct GhostBottleneckGeometry {
  GhostModuleGeometry first, second;
  bool has_depthwise = false;
  ConvGeometry depthwise;  // on the first module's output, where has_depthwise
};

// Validates a _ghost_bottleneck call on every backend; errors name the module and the offending argument.
GhostBottleneckGeometry ghost_bottleneck_geometry(
    const at::Tensor& input, const at::Tensor& primary_weight, const c10::optional<at::Tensor>& primary_bias,
    const at::Tensor& cheap_weight, const c10::optional<at::Tensor>& cheap_bias, int64_t mid_channels,
    std::string_view activation, const c10::optional<at::Tensor>& dw_weight, const c10::optional<at::Tensor>& dw_bias,
    at::IntArrayRef dw_stride, const at::Tensor& second_primary_weight,
    const c10::optional<at::Tensor>& second_primary_bias, const at::Tensor& second_cheap_weight,
    const c10::optional<at::Tensor>& second_cheap_bias, int64_t out_channels, std::string_view second_activation,
    const c10::optional<at::Tensor>& residual);

// The forward as ATen's 1x1 convolution for the primary half and fusedops::depthwise_conv2d for the contributed
// channels of the cheap half, each copied into its channels of the output: the path of backends without a fused
// kernel.
at::Tensor ghost_module_composed(const at::Tensor& input, const at::Tensor& primary_weight,
                                 const c10::optional<at::Tensor>& primary_bias, const at::Tensor& cheap_weight,
                                 const c10::optional<at::Tensor>& cheap_bias, int64_t out_channels,
                                 at::IntArrayRef stride, std::string_view activation,
                                 const c10::optional<at::Tensor>& residual);

// Gradients (GhostModuleGrads' order) of ghost_module on any device: the primary half is recomputed from the input
// (the forward keeps nothing else), and the cheap half's pre-activation for the channels the output keeps; the
// depthwise stage's backward is fusedops::_depthwise_conv2d_backward, the primary's ATen's 1x1 convolution
// backward. Unwanted gradients are empty tensors.
GhostModuleGrads ghost_module_backward_recomputed(const at::Tensor& grad_output, const at::Tensor& input,
                                                  const at::Tensor& primary_weight,
                                                  const c10::optional<at::Tensor>& primary_bias,
                                                  const at::Tensor& cheap_weight,
                                                  const c10::optional<at::Tensor>& cheap_bias, int64_t out_channels,
                                                  at::IntArrayRef stride, std::string_view activation,
                                                  std::array<bool, kGhostModuleGradients> output_mask);

}  // namespace fusedops
