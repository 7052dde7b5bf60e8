// Autograd of fusedops::inverted_residual (every device): the forward runs the device kernel and keeps only the
// input (with the weights); the backward calls fusedops::_inverted_residual_backward, which recomputes the rest.
// The Triton mirror registers the same formula in Python (fusedops/ops/inverted_residual.py).
#include <torch/library.h>

#include "fusedops/activation_ops.h"
#include "fusedops/autograd.h"
#include "fusedops/inverted_residual.h"
#include "fusedops/schema_str.h"

#include <string>
#include <string_view>

namespace fusedops {
namespace {

using autograd::AutogradContext;
using autograd::present;
using autograd::variable_list;
using ops::IntArrayRef;
using ops::OptionalTensor;
using ops::Tensor;

struct InvertedResidualFormula {
  using Op = ops::inverted_residual;

  static void save(AutogradContext* ctx, const Tensor& /*output*/, const Tensor& input,
                   const OptionalTensor& expand_weight, const OptionalTensor& expand_bias, const Tensor& dw_weight,
                   const OptionalTensor& dw_bias, const Tensor& project_weight, const OptionalTensor& project_bias,
                   const OptionalTensor& se_reduce_weight, const OptionalTensor& se_reduce_bias,
                   const OptionalTensor& se_expand_weight, const OptionalTensor& se_expand_bias, IntArrayRef stride,
                   IntArrayRef padding, IntArrayRef dilation, c10::string_view activation, bool residual,
                   c10::string_view se_activation, c10::string_view se_gate,
                   const OptionalTensor& /*packed_weights: a copy of the weights, no gradient*/) {
    ctx->save_for_backward({input, expand_weight.value_or(Tensor()), expand_bias.value_or(Tensor()), dw_weight,
                            dw_bias.value_or(Tensor()), project_weight, project_bias.value_or(Tensor()),
                            se_reduce_weight.value_or(Tensor()), se_reduce_bias.value_or(Tensor()),
                            se_expand_weight.value_or(Tensor()), se_expand_bias.value_or(Tensor())});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["residual"] = residual;
    ctx->saved_data["se_activation"] = std::string(se_activation);
    ctx->saved_data["se_gate"] = std::string(se_gate);
  }

  static std::array<Tensor, kInvertedResidualGradients> backward(AutogradContext* ctx,
                                                                 const variable_list& grad_outputs) {
    const auto s = ctx->get_saved_variables();
    const auto mask = autograd::needs_grads<kInvertedResidualGradients>(
        ctx, {true, s[1].defined(), s[2].defined(), true, s[4].defined(), true, s[6].defined(), s[7].defined(),
              s[8].defined(), s[9].defined(), s[10].defined()});
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const std::string se_activation = ctx->saved_data["se_activation"].toStringRef();
    const std::string se_gate = ctx->saved_data["se_gate"].toStringRef();
    return autograd::masked(
        mask, ops::call<ops::inverted_residual_backward>(
                  grad_outputs[0], s[0], present(s[1]), present(s[2]), s[3], present(s[4]), s[5], present(s[6]),
                  present(s[7]), present(s[8]), present(s[9]), present(s[10]), ctx->saved_data["stride"].toIntVector(),
                  ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector(), activation,
                  ctx->saved_data["residual"].toBool(), se_activation, se_gate, mask));
  }

  // inverted_residual as differentiable ATen ops, after the same checks as the kernels.
  static Tensor composite(const Tensor& input, const OptionalTensor& expand_weight, const OptionalTensor& expand_bias,
                          const Tensor& dw_weight, const OptionalTensor& dw_bias, const Tensor& project_weight,
                          const OptionalTensor& project_bias, const OptionalTensor& se_reduce_weight,
                          const OptionalTensor& se_reduce_bias, const OptionalTensor& se_expand_weight,
                          const OptionalTensor& se_expand_bias, IntArrayRef stride, IntArrayRef padding,
                          IntArrayRef dilation, c10::string_view activation, bool residual,
                          c10::string_view se_activation, c10::string_view se_gate,
                          const OptionalTensor& /*packed_weights*/) {
    const SqueezeExcitationArgs se = squeeze_excitation_args(se_reduce_weight, se_reduce_bias, se_expand_weight,
                                                             se_expand_bias, se_activation, se_gate);
    const InvertedResidualGeometry g =
        inverted_residual_geometry(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                   se, stride, padding, dilation, std_view(activation), residual);
    const Tensor hidden = g.expand ? inverted_residual_expand(input, *expand_weight, expand_bias, g.activation) : input;
    Tensor mid =
        activation_forward(at::conv2d(hidden, dw_weight, dw_bias, stride, padding, dilation, g.hidden), g.activation);
    if (g.se_channels > 0) mid = mid * squeeze_excitation_gate(mid, se, g).unsqueeze(-1).unsqueeze(-1);
    const Tensor out = at::conv2d(mid, project_weight, project_bias);
    return g.residual ? out + input : out;
  }
};

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, Autograd, m) {
  using namespace fusedops;
  autograd::register_kernels<InvertedResidualFormula,
                             autograd::WithoutDerivative<ops::inverted_residual_backward, ops::inverted_residual>>(m);
}
