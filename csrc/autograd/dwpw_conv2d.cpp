// Autograd kernel of fusedops::dwpw_conv2d (every device): the forward runs the device kernel, the backward
// calls fusedops::_dwpw_conv2d_backward for the gradients autograd asks for. The Triton mirror registers
// the same formula in Python (fusedops/ops/dwpw_conv2d.py).
#include <torch/library.h>

#include <string>

#include "fusedops/autograd.h"
#include "fusedops/dwpw.h"

namespace fusedops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = std::optional<at::Tensor>;
using Grads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

at::Tensor call_forward(const at::Tensor& input, const at::Tensor& dw_weight, const OptionalTensor& dw_bias,
                        const at::Tensor& pw_weight, const OptionalTensor& pw_bias, c10::IntArrayRef stride,
                        c10::IntArrayRef padding, c10::IntArrayRef dilation, c10::string_view mid,
                        c10::string_view out) {
  static const auto op = autograd::find_op<at::Tensor(
      const at::Tensor&, const at::Tensor&, const OptionalTensor&, const at::Tensor&, const OptionalTensor&,
      c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, c10::string_view, c10::string_view)>(
      "fusedops::dwpw_conv2d");
  return op.call(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out);
}

Grads call_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& dw_weight,
                    const OptionalTensor& dw_bias, const at::Tensor& pw_weight, const OptionalTensor& pw_bias,
                    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                    c10::string_view mid, c10::string_view out, std::array<bool, 5> output_mask,
                    const OptionalTensor& output) {
  static const auto op = autograd::find_op<Grads(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptionalTensor&, const at::Tensor&,
      const OptionalTensor&, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, c10::string_view,
      c10::string_view, std::array<bool, 5>, const OptionalTensor&)>("fusedops::_dwpw_conv2d_backward");
  return op.call(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out,
                 output_mask, output);
}

OptionalTensor present(const at::Tensor& t) {
  return t.defined() ? OptionalTensor(t) : std::nullopt;
}

class DwpwConv2dFunction : public torch::autograd::Function<DwpwConv2dFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& dw_weight,
                            const OptionalTensor& dw_bias, const at::Tensor& pw_weight, const OptionalTensor& pw_bias,
                            c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                            c10::string_view mid, c10::string_view out) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor output = call_forward(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
                                     mid, out);
    // The backward recomputes the depthwise output band by band from the input. With a relu/relu6 output
    // activation in float/double it also keeps the output (alive anyway as the next layer's input), whose
    // zeros and sixes give that activation's derivative without recomputing the pointwise GEMM.
    const bool keep_output = (out == "relu" || out == "relu6") &&
                             (output.scalar_type() == at::kFloat || output.scalar_type() == at::kDouble);
    ctx->save_for_backward({input, dw_weight, dw_bias.value_or(at::Tensor()), pw_weight,
                            pw_bias.value_or(at::Tensor()), keep_output ? output : at::Tensor()});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["mid"] = std::string(mid);
    ctx->saved_data["out"] = std::string(out);
    return output;
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool has_dw_bias = saved[2].defined(), has_pw_bias = saved[4].defined();
    std::array<bool, 5> mask{};
    for (size_t i = 0; i < mask.size(); ++i) {
      mask[i] = autograd::needs_grad(ctx, {true, true, has_dw_bias, true, has_pw_bias}, i);
    }
    const std::string mid = ctx->saved_data["mid"].toStringRef(), out = ctx->saved_data["out"].toStringRef();
    auto [grad_input, grad_dw_weight, grad_dw_bias, grad_pw_weight, grad_pw_bias] = call_backward(
        grad_outputs[0], saved[0], saved[1], present(saved[2]), saved[3], present(saved[4]),
        ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
        ctx->saved_data["dilation"].toIntVector(), mid, out, mask, present(saved[5]));
    const at::Tensor none;
    // One entry per forward argument; unwanted gradients (and those of the non-tensor arguments) undefined.
    return {mask[0] ? grad_input : none, mask[1] ? grad_dw_weight : none, mask[2] ? grad_dw_bias : none,
            mask[3] ? grad_pw_weight : none, mask[4] ? grad_pw_bias : none, none, none, none, none, none};
  }
};

// The backward op's own Autograd kernel: no derivative (a clear error if one is asked for), and no Python
// on the way from the C++ backward above to the kernel.
class DwpwConv2dBackwardFunction : public torch::autograd::Function<DwpwConv2dBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& dw_weight, const OptionalTensor& dw_bias, const at::Tensor& pw_weight,
                               const OptionalTensor& pw_bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                               c10::IntArrayRef dilation, c10::string_view mid, c10::string_view out,
                               std::array<bool, 5> output_mask, const OptionalTensor& output) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [g0, g1, g2, g3, g4] = call_backward(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride,
                                              padding, dilation, mid, out, output_mask, output);
    return {g0, g1, g2, g3, g4};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    autograd::double_backward_unsupported("dwpw_conv2d");
  }
};

Grads dwpw_conv2d_backward_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                                    const at::Tensor& dw_weight, const OptionalTensor& dw_bias,
                                    const at::Tensor& pw_weight, const OptionalTensor& pw_bias,
                                    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                    c10::string_view mid, c10::string_view out, std::array<bool, 5> output_mask,
                                    const OptionalTensor& output) {
  if (!autograd::records_graph(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, output)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_backward(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
                         mid, out, output_mask, output);
  }
  auto g = DwpwConv2dBackwardFunction::apply(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride,
                                             padding, dilation, mid, out, output_mask, output);
  return {g[0], g[1], g[2], g[3], g[4]};
}

at::Tensor dwpw_conv2d_autograd(const at::Tensor& input, const at::Tensor& dw_weight, const OptionalTensor& dw_bias,
                                const at::Tensor& pw_weight, const OptionalTensor& pw_bias, c10::IntArrayRef stride,
                                c10::IntArrayRef padding, c10::IntArrayRef dilation, c10::string_view mid,
                                c10::string_view out) {
  if (!autograd::records_graph(input, dw_weight, dw_bias, pw_weight, pw_bias)) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_forward(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out);
  }
  if (autograd::inside_functorch_transform()) {
    return dwpw_conv2d_composite(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation,
                                 std::string_view(mid.data(), mid.size()), std::string_view(out.data(), out.size()));
  }
  return DwpwConv2dFunction::apply(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid,
                                   out);
}

}  // namespace
}  // namespace fusedops

TORCH_LIBRARY_IMPL(fusedops, Autograd, m) {
  m.impl("dwpw_conv2d", &fusedops::dwpw_conv2d_autograd);
  m.impl("_dwpw_conv2d_backward", &fusedops::dwpw_conv2d_backward_autograd);
}
