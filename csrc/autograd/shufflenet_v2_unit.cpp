// Autograd of fusedops::shufflenet_v2_unit (every device): the forward runs the device kernel and keeps only the
// input (with the weights); the backward calls fusedops::_shufflenet_v2_unit_backward, which recomputes the rest.
// The Triton mirror registers the same formula in Python (fusedops/ops/shufflenet_v2_unit.py).
#include <torch/library.h>

#include "fusedops/activation_ops.h"
#include "fusedops/autograd.h"
#include "fusedops/schema_str.h"
#include "fusedops/shufflenet_v2_unit.h"

#include <string>

namespace fusedops {
namespace {

using autograd::AutogradContext;
using autograd::present;
using autograd::variable_list;
using ops::IntArrayRef;
using ops::OptionalTensor;
using ops::Tensor;

// act(conv1x1(depthwise(x, dw_weight, dw_bias), pw_weight, pw_bias)) as differentiable ATen ops.
Tensor depthwise_pointwise(const Tensor& x, const Tensor& dw_weight, const OptionalTensor& dw_bias,
                           const Tensor& pw_weight, const OptionalTensor& pw_bias, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, Activation activation) {
  return activation_forward(
      at::conv2d(at::conv2d(x, dw_weight, dw_bias, stride, padding, dilation, x.size(1)), pw_weight, pw_bias),
      activation);
}

struct ShuffleUnitFormula {
  using Op = ops::shufflenet_v2_unit;

  static void save(AutogradContext* ctx, const Tensor& /*output*/, const Tensor& input, const Tensor& expand_weight,
                   const OptionalTensor& expand_bias, const Tensor& dw_weight, const OptionalTensor& dw_bias,
                   const Tensor& project_weight, const OptionalTensor& project_bias,
                   const OptionalTensor& shortcut_dw_weight, const OptionalTensor& shortcut_dw_bias,
                   const OptionalTensor& shortcut_pw_weight, const OptionalTensor& shortcut_pw_bias, IntArrayRef stride,
                   IntArrayRef padding, IntArrayRef dilation, c10::string_view activation,
                   const OptionalTensor& /*packed_weights: a copy of the weights, no gradient*/) {
    ctx->save_for_backward({input, expand_weight, expand_bias.value_or(Tensor()), dw_weight, dw_bias.value_or(Tensor()),
                            project_weight, project_bias.value_or(Tensor()), shortcut_dw_weight.value_or(Tensor()),
                            shortcut_dw_bias.value_or(Tensor()), shortcut_pw_weight.value_or(Tensor()),
                            shortcut_pw_bias.value_or(Tensor())});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["activation"] = std::string(activation);
  }

  static std::array<Tensor, kShuffleUnitGradients> backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto s = ctx->get_saved_variables();
    const auto mask = autograd::needs_grads<kShuffleUnitGradients>(
        ctx, {true, true, s[2].defined(), true, s[4].defined(), true, s[6].defined(), s[7].defined(), s[8].defined(),
              s[9].defined(), s[10].defined()});
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    return autograd::masked(mask, ops::call<ops::shufflenet_v2_unit_backward>(
                                      grad_outputs[0], s[0], s[1], present(s[2]), s[3], present(s[4]), s[5],
                                      present(s[6]), present(s[7]), present(s[8]), present(s[9]), present(s[10]),
                                      ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
                                      ctx->saved_data["dilation"].toIntVector(), activation, mask));
  }

  // shufflenet_v2_unit as differentiable ATen ops, after the same checks as the kernels.
  static Tensor composite(const Tensor& input, const Tensor& expand_weight, const OptionalTensor& expand_bias,
                          const Tensor& dw_weight, const OptionalTensor& dw_bias, const Tensor& project_weight,
                          const OptionalTensor& project_bias, const OptionalTensor& shortcut_dw_weight,
                          const OptionalTensor& shortcut_dw_bias, const OptionalTensor& shortcut_pw_weight,
                          const OptionalTensor& shortcut_pw_bias, IntArrayRef stride, IntArrayRef padding,
                          IntArrayRef dilation, c10::string_view activation, const OptionalTensor& /*packed_weights*/) {
    const ShuffleUnitGeometry g =
        shufflenet_v2_unit_geometry(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                    {shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias},
                                    stride, padding, dilation, std_view(activation));
    const Tensor hidden = inverted_residual_expand(branch_input(input, g), expand_weight, expand_bias, g.activation);
    const Tensor second = depthwise_pointwise(hidden, dw_weight, dw_bias, project_weight, project_bias, stride, padding,
                                              dilation, g.activation);
    const Tensor first = g.shortcut
                             ? depthwise_pointwise(input, *shortcut_dw_weight, shortcut_dw_bias, *shortcut_pw_weight,
                                                   shortcut_pw_bias, stride, padding, dilation, g.activation)
                             : input.narrow(1, 0, g.branch_channels);
    return at::stack({first, second}, 2).flatten(1, 2).contiguous(output_memory_format(input));
  }
};

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, Autograd, m) {
  using namespace fusedops;
  autograd::register_kernels<ShuffleUnitFormula,
                             autograd::WithoutDerivative<ops::shufflenet_v2_unit_backward, ops::shufflenet_v2_unit>>(m);
}
