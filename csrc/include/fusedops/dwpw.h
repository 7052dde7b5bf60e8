// Argument checks and the band-wise backward shared by the backends of fusedops::dwpw_conv2d, the fused
// depthwise-separable convolution
//
//   act_out(conv1x1(act_mid(depthwise(input, dw_weight) + dw_bias), pw_weight) + pw_bias).
#pragma once

#include "fusedops/activation.h"
#include "fusedops/conv_geometry.h"

#include <ATen/ATen.h>

#include <array>
#include <string_view>
#include <tuple>

namespace fusedops {

struct DwpwGeometry {
  ConvGeometry dw;             // the depthwise stage (dw.out_channels = C * multiplier = pointwise K)
  int64_t out_channels = 0;    // of the pointwise stage
  Activation mid = Activation::kNone, out = Activation::kNone;
};

// Validates a dwpw_conv2d call; errors name the offending argument (dw_weight, pw_bias, ...).
DwpwGeometry dwpw_geometry(const at::Tensor& input, const at::Tensor& dw_weight,
                           const c10::optional<at::Tensor>& dw_bias, const at::Tensor& pw_weight,
                           const c10::optional<at::Tensor>& pw_bias, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, std::string_view mid_activation, std::string_view out_activation);

// act(z) as a differentiable ATen op.
at::Tensor activation_forward(const at::Tensor& z, Activation a);

// dwpw_conv2d as differentiable ATen ops, after the same checks as the kernels: what the Autograd kernel
// runs inside functorch transforms (autograd::inside_functorch_transform).
at::Tensor dwpw_conv2d_composite(const at::Tensor& input, const at::Tensor& dw_weight,
                                 const c10::optional<at::Tensor>& dw_bias, const at::Tensor& pw_weight,
                                 const c10::optional<at::Tensor>& pw_bias, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view mid_activation,
                                 std::string_view out_activation);

// Gradients (input, dw_weight, dw_bias, pw_weight, pw_bias) of dwpw_conv2d, computed band by band with
// ATen ops on any device: per band of output rows the depthwise output is recomputed from the input
// (never stored for the whole map), so training keeps only the input alive. Unwanted gradients are
// empty tensors. With the forward's `output` (relu/relu6 output activation, input dtype float/double) the
// output activation's derivative is read from it, which saves recomputing the pointwise GEMM.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dwpw_conv2d_backward_banded(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& dw_weight,
    const c10::optional<at::Tensor>& dw_bias, const at::Tensor& pw_weight, const c10::optional<at::Tensor>& pw_bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view mid_activation,
    std::string_view out_activation, std::array<bool, 5> output_mask, const c10::optional<at::Tensor>& output,
    int64_t band_elements);

}  // namespace fusedops
