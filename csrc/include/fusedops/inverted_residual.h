// Argument checks and the device-independent pieces of fusedops::inverted_residual, MobileNetV2's block with
// its batch norms folded in (implemented in csrc/shared/inverted_residual.cpp):
//
//   hidden = act(conv1x1(input, expand_weight) + expand_bias)         (input itself without expand_weight)
//   mid    = act(depthwise(hidden, dw_weight, stride, padding, dilation) + dw_bias)
//   output = conv1x1(mid, project_weight) + project_bias  [+ input when residual]
#pragma once

#include "fusedops/activation.h"
#include "fusedops/conv_geometry.h"

#include <ATen/ATen.h>

#include <array>
#include <string_view>
#include <tuple>

namespace fusedops {

using InvertedResidualGrads =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

struct InvertedResidualGeometry {
  ConvGeometry dw;  // the depthwise stage, on the expanded map (dw.channels = dw.out_channels = hidden)
  int64_t in_channels = 0, hidden = 0, out_channels = 0;
  bool expand = false;    // expand_weight given
  bool residual = false;  // the input is added to the output
  Activation activation = Activation::kNone;
};

// Validates an inverted_residual call; errors name the offending argument (expand_weight, residual, ...).
InvertedResidualGeometry inverted_residual_geometry(
    const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
    const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
    const at::Tensor& project_weight, const c10::optional<at::Tensor>& project_bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view activation, bool residual);

// The expanded map act(conv1x1(input, expand_weight) + expand_bias) as ATen ops (any device), in the input's
// memory format.
at::Tensor inverted_residual_expand(const at::Tensor& input, const at::Tensor& expand_weight,
                                    const c10::optional<at::Tensor>& expand_bias, Activation activation);

// The forward as the expand stage (ATen's 1x1 convolution) followed by fusedops::dwpw_conv2d for the depthwise and
// project stages, then the residual add: the path of backends without a fused kernel of the whole block.
at::Tensor inverted_residual_composed(const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
                                      const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight,
                                      const c10::optional<at::Tensor>& dw_bias, const at::Tensor& project_weight,
                                      const c10::optional<at::Tensor>& project_bias, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view activation,
                                      bool residual);

// Gradients (input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias) of
// inverted_residual on any device: the expanded map is recomputed from the input (the forward keeps nothing
// else), the depthwise and project stages go through the band-wise dwpw backward (which recomputes the
// depthwise output band by band), the expand stage through ATen's 1x1 convolution backward. Unwanted gradients
// are empty tensors.
InvertedResidualGrads inverted_residual_backward_recomputed(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& expand_weight,
    const c10::optional<at::Tensor>& expand_bias, const at::Tensor& dw_weight, const c10::optional<at::Tensor>& dw_bias,
    const at::Tensor& project_weight, const c10::optional<at::Tensor>& project_bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view activation, bool residual,
    std::array<bool, 7> output_mask, int64_t band_elements);

}  // namespace fusedops
