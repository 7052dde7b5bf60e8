// Autograd kernel of fusedops::depthwise_conv2d (every device): the forward runs the device kernel, the
// backward calls fusedops::_depthwise_conv2d_backward for the gradients autograd asks for. The Triton
// mirror registers the same formula in Python (fusedops/ops/depthwise_conv2d.py).
#include <torch/library.h>

#include "fusedops/autograd.h"
#include "fusedops/conv_geometry.h"

namespace fusedops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  static const auto op = autograd::find_op<at::Tensor(const at::Tensor&, const at::Tensor&,
                                                      const std::optional<at::Tensor>&, c10::IntArrayRef,
                                                      c10::IntArrayRef, c10::IntArrayRef)>(
      "fusedops::depthwise_conv2d");
  return op.call(input, weight, bias, stride, padding, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                             const at::Tensor& weight, c10::IntArrayRef stride,
                                                             c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                                             std::array<bool, 3> output_mask) {
  static const auto op = autograd::find_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef,
      c10::IntArrayRef, std::array<bool, 3>)>("fusedops::_depthwise_conv2d_backward");
  return op.call(grad_output, input, weight, stride, padding, dilation, output_mask);
}

class DepthwiseConv2dFunction : public torch::autograd::Function<DepthwiseConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                            c10::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    // The input is kept even when only grad_input is wanted: the backward op reads its shape and layout.
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    return call_forward(input, weight, bias, stride, padding, dilation);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const std::array<bool, 3> mask = {autograd::needs_grad(ctx, {true, true, has_bias}, 0),
                                      autograd::needs_grad(ctx, {true, true, has_bias}, 1),
                                      autograd::needs_grad(ctx, {true, true, has_bias}, 2)};
    auto [grad_input, grad_weight, grad_bias] =
        call_backward(grad_outputs[0], saved[0], saved[1], ctx->saved_data["stride"].toIntVector(),
                      ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(), mask);
    // One entry per forward argument; unwanted gradients (and those of stride/padding/dilation) undefined.
    return {mask[0] ? grad_input : at::Tensor(), mask[1] ? grad_weight : at::Tensor(),
            mask[2] ? grad_bias : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The backward op's own Autograd kernel: no derivative (a clear error if one is asked for), and no Python
// on the way from the C++ backward above to the kernel.
class DepthwiseConv2dBackwardFunction : public torch::autograd::Function<DepthwiseConv2dBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& weight, c10::IntArrayRef stride, c10::IntArrayRef padding,
                               c10::IntArrayRef dilation, std::array<bool, 3> output_mask) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_input, grad_weight, grad_bias] =
        call_backward(grad_output, input, weight, stride, padding, dilation, output_mask);
    return {grad_input, grad_weight, grad_bias};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    autograd::double_backward_unsupported("depthwise_conv2d");
  }
};

at::Tensor depthwise_conv2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                                     const std::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                     c10::IntArrayRef padding, c10::IntArrayRef dilation) {
  if (!autograd::records_graph(input, weight, bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_forward(input, weight, bias, stride, padding, dilation);
  }
  if (autograd::inside_functorch_transform()) {  // the same convolution, differentiable by functorch
    const ConvGeometry g = depthwise_geometry(input, weight, bias, stride, padding, dilation);
    return at::conv2d(input, weight, bias, stride, padding, dilation, g.channels);
  }
  return DepthwiseConv2dFunction::apply(input, weight, bias, stride, padding, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_conv2d_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef dilation, std::array<bool, 3> output_mask) {
  if (!autograd::records_graph(grad_output, input, weight)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_backward(grad_output, input, weight, stride, padding, dilation, output_mask);
  }
  auto grads = DepthwiseConv2dBackwardFunction::apply(grad_output, input, weight, stride, padding, dilation,
                                                      output_mask);
  return {grads[0], grads[1], grads[2]};
}

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, Autograd, m) {
  m.impl("depthwise_conv2d", &fusedops::depthwise_conv2d_autograd);
  m.impl("_depthwise_conv2d_backward", &fusedops::depthwise_conv2d_backward_autograd);
}
