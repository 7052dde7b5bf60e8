// Autograd of fusedops::dwpw_conv2d (every device): the forward runs the device kernel, the backward calls
// fusedops::_dwpw_conv2d_backward for the gradients autograd asks for. The Triton mirror registers the same
// formula in Python (fusedops/ops/dwpw_conv2d.py).
#include <torch/library.h>

#include "fusedops/activation_ops.h"
#include "fusedops/autograd.h"
#include "fusedops/dwpw.h"
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

struct DwpwConv2dFormula {
  using Op = ops::dwpw_conv2d;

  static void save(AutogradContext* ctx, const Tensor& output, const Tensor& input, const Tensor& dw_weight,
                   const OptionalTensor& dw_bias, const Tensor& pw_weight, const OptionalTensor& pw_bias,
                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, c10::string_view mid,
                   c10::string_view out, const OptionalTensor& /*packed_weights: a copy of the weights, no gradient*/) {
    // The backward recomputes the depthwise output band by band from the input. Where dwpw_keeps_output it also
    // keeps the output (alive anyway as the next layer's input), whose zeros and sixes give the output
    // activation's derivative without recomputing the pointwise GEMM.
    const bool keep_output = dwpw_keeps_output(std_view(out), output.scalar_type());
    ctx->save_for_backward({input, dw_weight, dw_bias.value_or(Tensor()), pw_weight, pw_bias.value_or(Tensor()),
                            keep_output ? output : Tensor()});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["mid"] = std::string(mid);
    ctx->saved_data["out"] = std::string(out);
  }

  static std::array<Tensor, 5> backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool has_dw_bias = saved[2].defined(), has_pw_bias = saved[4].defined();
    const auto mask = autograd::needs_grads<5>(ctx, {true, true, has_dw_bias, true, has_pw_bias});
    const std::string mid = ctx->saved_data["mid"].toStringRef(), out = ctx->saved_data["out"].toStringRef();
    return autograd::masked(mask,
                            ops::call<ops::dwpw_conv2d_backward>(
                                grad_outputs[0], saved[0], saved[1], present(saved[2]), saved[3], present(saved[4]),
                                ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
                                ctx->saved_data["dilation"].toIntVector(), mid, out, mask, present(saved[5])));
  }

  // dwpw_conv2d as differentiable ATen ops, after the same checks as the kernels.
  static Tensor composite(const Tensor& input, const Tensor& dw_weight, const OptionalTensor& dw_bias,
                          const Tensor& pw_weight, const OptionalTensor& pw_bias, IntArrayRef stride,
                          IntArrayRef padding, IntArrayRef dilation, c10::string_view mid, c10::string_view out,
                          const OptionalTensor& /*packed_weights*/) {
    const DwpwGeometry g = dwpw_geometry(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
                                         std_view(mid), std_view(out));
    const Tensor depthwise = at::conv2d(input, dw_weight, dw_bias, stride, padding, dilation, g.dw.channels);
    return activation_forward(at::conv2d(activation_forward(depthwise, g.mid), pw_weight, pw_bias), g.out);
  }
};

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, Autograd, m) {
  using namespace fusedops;
  autograd::register_kernels<DwpwConv2dFormula,
                             autograd::WithoutDerivative<ops::dwpw_conv2d_backward, ops::dwpw_conv2d>>(m);
}
