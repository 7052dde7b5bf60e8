// Autograd of fusedops::ghost_module (every device): the forward runs the device kernel and keeps only the input
// (with the weights); the backward calls fusedops::_ghost_module_backward, which recomputes the rest. The residual's
// gradient is grad_output itself. The Triton mirror registers the same formula in Python
// (fusedops/ops/ghost_module.py).
#include <torch/library.h>

#include "fusedops/activation_ops.h"
#include "fusedops/autograd.h"
#include "fusedops/ghost_module.h"
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

struct GhostModuleFormula {
  using Op = ops::ghost_module;

  static void save(AutogradContext* ctx, const Tensor& /*output*/, const Tensor& input, const Tensor& primary_weight,
                   const OptionalTensor& primary_bias, const Tensor& cheap_weight, const OptionalTensor& cheap_bias,
                   const OptionalTensor& residual, int64_t out_channels, IntArrayRef stride,
                   c10::string_view activation, const OptionalTensor& /*packed_weights: a copy, no gradient*/) {
    ctx->save_for_backward(
        {input, primary_weight, primary_bias.value_or(Tensor()), cheap_weight, cheap_bias.value_or(Tensor())});
    ctx->saved_data["residual"] = residual.has_value() && residual->defined();
    ctx->saved_data["out_channels"] = out_channels;
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["activation"] = std::string(activation);
  }

  static std::array<Tensor, kGhostModuleGradients + 1> backward(AutogradContext* ctx,
                                                                const variable_list& grad_outputs) {
    const auto s = ctx->get_saved_variables();
    const bool residual = ctx->saved_data["residual"].toBool();
    const auto wanted = autograd::needs_grads<kGhostModuleGradients + 1>(
        ctx, {true, true, s[2].defined(), true, s[4].defined(), residual});
    std::array<bool, kGhostModuleGradients> mask;
    std::copy(wanted.begin(), wanted.begin() + kGhostModuleGradients, mask.begin());
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const auto grads = autograd::masked(
        mask, ops::call<ops::ghost_module_backward>(grad_outputs[0], s[0], s[1], present(s[2]), s[3], present(s[4]),
                                                    ctx->saved_data["out_channels"].toInt(),
                                                    ctx->saved_data["stride"].toIntVector(), activation, mask));
    std::array<Tensor, kGhostModuleGradients + 1> result;
    std::copy(grads.begin(), grads.end(), result.begin());
    if (wanted[kGhostModuleGradients]) result[kGhostModuleGradients] = grad_outputs[0];
    return result;
  }

  // ghost_module as differentiable ATen ops, after the same checks as the kernels.
  static Tensor composite(const Tensor& input, const Tensor& primary_weight, const OptionalTensor& primary_bias,
                          const Tensor& cheap_weight, const OptionalTensor& cheap_bias, const OptionalTensor& residual,
                          int64_t out_channels, IntArrayRef stride, c10::string_view activation,
                          const OptionalTensor& /*packed_weights*/) {
    const GhostModuleGeometry geo = ghost_module_geometry(input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                                          out_channels, stride, std_view(activation), residual);
    const ConvGeometry& g = geo.cheap;
    const Tensor x1 = activation_forward(at::conv2d(input, primary_weight, primary_bias, stride), geo.activation);
    const Tensor x2 = activation_forward(
        at::conv2d(x1, cheap_weight, cheap_bias, {1, 1}, {g.pad_h, g.pad_w}, {1, 1}, geo.init_channels),
        geo.activation);
    const Tensor out = at::cat({x1, x2.narrow(1, 0, geo.cheap_channels)}, 1);
    return geo.residual ? out + *residual : out;
  }
};

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, Autograd, m) {
  using namespace fusedops;
  autograd::register_kernels<GhostModuleFormula,
                             autograd::WithoutDerivative<ops::ghost_module_backward, ops::ghost_module>>(m);
}
