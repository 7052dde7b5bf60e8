// Autograd of fusedops::depthwise_conv2d (every device): the forward runs the device kernel, the backward
// calls fusedops::_depthwise_conv2d_backward for the gradients autograd asks for. The Triton mirror
// registers the same formula in Python (fusedops/ops/depthwise_conv2d.py).
#include <torch/library.h>

#include "fusedops/autograd.h"
#include "fusedops/conv_geometry.h"

namespace fusedops {
namespace {

using autograd::AutogradContext;
using autograd::variable_list;
using ops::IntArrayRef;
using ops::OptionalTensor;
using ops::Tensor;

struct DepthwiseConv2dFormula {
  using Op = ops::depthwise_conv2d;

  static void save(AutogradContext* ctx, const Tensor& /*output*/, const Tensor& input, const Tensor& weight,
                   const OptionalTensor& bias, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
    // The input is kept even when only grad_input is wanted: the backward op reads its shape and layout.
    ctx->save_for_backward({input, weight});
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
  }

  static std::array<Tensor, 3> backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto mask = autograd::needs_grads<3>(ctx, {true, true, ctx->saved_data["has_bias"].toBool()});
    return autograd::masked(
        mask, ops::call<ops::depthwise_conv2d_backward>(
                  grad_outputs[0], saved[0], saved[1], ctx->saved_data["stride"].toIntVector(),
                  ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(), mask));
  }

  // The same convolution, differentiable by functorch.
  static Tensor composite(const Tensor& input, const Tensor& weight, const OptionalTensor& bias, IntArrayRef stride,
                          IntArrayRef padding, IntArrayRef dilation) {
    const ConvGeometry g = depthwise_geometry(input, weight, bias, stride, padding, dilation);
    return at::conv2d(input, weight, bias, stride, padding, dilation, g.channels);
  }
};

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, Autograd, m) {
  using namespace fusedops;
  autograd::register_kernels<DepthwiseConv2dFormula,
                             autograd::WithoutDerivative<ops::depthwise_conv2d_backward, ops::depthwise_conv2d>>(m);
}
