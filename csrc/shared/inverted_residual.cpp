// Argument checks of fusedops::inverted_residual, its composed forward (backends without a fused kernel of the
// whole block) and its backward on every backend. Declared in fusedops/inverted_residual.h.
#include "fusedops/inverted_residual.h"

#include "fusedops/activation_ops.h"
#include "fusedops/dwpw.h"
#include "fusedops/ops.h"

#include <ATen/OpMathType.h>

namespace fusedops {

using at::Tensor;

namespace {

bool given(const c10::optional<Tensor>& t) {
  return t.has_value() && t->defined();
}

// A 1x1 weight (out, in, 1, 1) and its optional bias (out,): shapes, dtype and device against the input.
void check_pointwise(const Tensor& input, const Tensor& weight, const c10::optional<Tensor>& bias, int64_t in,
                     const char* weight_name, const char* bias_name, const char* in_meaning) {
  TORCH_CHECK(
      weight.dim() == 4 && weight.size(1) == in && weight.size(2) == 1 && weight.size(3) == 1 && weight.size(0) > 0,
      "fusedops: ", weight_name, " must have shape (out_channels, ", in, ", 1, 1) (", in, " = ", in_meaning, "), got ",
      weight.sizes());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "fusedops: ", weight_name, " dtype ",
              dtype_name(weight.scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
  check_same_device(weight, input, weight_name, "input");
  if (given(bias)) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "fusedops: ", bias_name, " must have shape (",
                weight.size(0), ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "fusedops: ", bias_name, " dtype ",
                dtype_name(bias->scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
    check_same_device(*bias, input, bias_name, "input");
  }
}

}  // namespace

InvertedResidualGeometry inverted_residual_geometry(const Tensor& input, const c10::optional<Tensor>& expand_weight,
                                                    const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                                                    const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                                                    const c10::optional<Tensor>& project_bias, at::IntArrayRef stride,
                                                    at::IntArrayRef padding, at::IntArrayRef dilation,
                                                    std::string_view activation, bool residual) {
  TORCH_CHECK(input.dim() == 4, "fusedops: input must be a 4-D (N, C, H, W) tensor, got ", input.dim(), "-D");
  TORCH_CHECK(input.is_floating_point(), "fusedops: input must be a floating-point tensor, got ",
              dtype_name(input.scalar_type()));
  InvertedResidualGeometry r;
  r.in_channels = input.size(1);
  TORCH_CHECK(r.in_channels > 0, "fusedops: input must have at least one channel, got shape ", input.sizes());
  r.expand = given(expand_weight);
  TORCH_CHECK(r.expand || !given(expand_bias),
              "fusedops: expand_bias is given without expand_weight (a block without an expand stage has no expand "
              "bias)");
  if (r.expand) {
    check_pointwise(input, *expand_weight, expand_bias, r.in_channels, "expand_weight", "expand_bias",
                    "the input channels");
    TORCH_CHECK(input.size(2) > 0 && input.size(3) > 0, "fusedops: input has an empty map (shape ", input.sizes(),
                "), which the expand stage's 1x1 convolution cannot take (as F.conv2d)");
  }
  r.hidden = r.expand ? expand_weight->size(0) : r.in_channels;
  TORCH_CHECK(dw_weight.dim() == 4 && dw_weight.size(0) == r.hidden, "fusedops: dw_weight must have shape (", r.hidden,
              ", 1, kH, kW) (", r.hidden, " = the ",
              r.expand ? "expand stage's output channels" : "input channels, without an expand stage", "), got ",
              dw_weight.sizes());
  r.dw = depthwise_geometry(input, dw_weight, dw_bias, stride, padding, dilation, "dw_weight", "dw_bias", r.hidden);
  check_pointwise(input, project_weight, project_bias, r.hidden, "project_weight", "project_bias",
                  "the depthwise stage's channels");
  r.out_channels = project_weight.size(0);
  r.activation = parse_activation(activation, "activation");
  r.residual = residual;
  if (residual) {
    const ConvGeometry& g = r.dw;
    TORCH_CHECK(r.out_channels == r.in_channels && g.out_h == g.in_h && g.out_w == g.in_w,
                "fusedops: residual needs the block's output to have the input's shape ", input.sizes(),
                ", but it has shape [", g.batch, ", ", r.out_channels, ", ", g.out_h, ", ", g.out_w,
                "] (the residual add needs stride 1, size-preserving padding and as many project_weight output "
                "channels as input channels)");
  }
  return r;
}

Tensor inverted_residual_expand(const Tensor& input, const Tensor& expand_weight,
                                const c10::optional<Tensor>& expand_bias, Activation activation) {
  return activation_forward(at::conv2d(input, expand_weight, expand_bias), activation);
}

Tensor inverted_residual_composed(const Tensor& input, const c10::optional<Tensor>& expand_weight,
                                  const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                                  const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                                  const c10::optional<Tensor>& project_bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view activation,
                                  bool residual) {
  const InvertedResidualGeometry geo =
      inverted_residual_geometry(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                 stride, padding, dilation, activation, residual);
  const Tensor hidden =
      geo.expand ? inverted_residual_expand(input, *expand_weight, expand_bias, geo.activation) : input;
  const std::string_view act = activation_name(geo.activation);
  Tensor out = ops::call<ops::dwpw_conv2d>(hidden, dw_weight, dw_bias, project_weight, project_bias, stride, padding,
                                           dilation, c10::string_view(act.data(), act.size()), "none");
  if (geo.residual) out.add_(input);
  return out;
}

InvertedResidualGrads inverted_residual_backward_recomputed(
    const Tensor& grad_output, const Tensor& input, const c10::optional<Tensor>& expand_weight,
    const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
    const Tensor& project_weight, const c10::optional<Tensor>& project_bias, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view activation, bool residual,
    std::array<bool, 7> output_mask, int64_t band_elements) {
  const InvertedResidualGeometry geo =
      inverted_residual_geometry(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                 stride, padding, dilation, activation, residual);
  const ConvGeometry& g = geo.dw;
  check_same_device(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "fusedops: grad_output dtype ",
              dtype_name(grad_output.scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({g.batch, geo.out_channels, g.out_h, g.out_w}),
              "fusedops: grad_output has shape ", grad_output.sizes(), " but the output has shape (", g.batch, ", ",
              geo.out_channels, ", ", g.out_h, ", ", g.out_w, ")");
  const at::MemoryFormat fmt = output_memory_format(input);
  const at::ScalarType dtype = input.scalar_type(), op = at::toOpMathType(dtype);
  if (op != dtype) {
    // Half and bfloat16 recompute in float, as the forward kernels compute (its expanded and depthwise maps are
    // never rounded to the input's dtype), then round the gradients once.
    auto up = [&](const c10::optional<Tensor>& t) { return given(t) ? c10::optional<Tensor>(t->to(op)) : t; };
    InvertedResidualGrads grads = inverted_residual_backward_recomputed(
        grad_output.to(op), input.to(op), up(expand_weight), up(expand_bias), dw_weight.to(op), up(dw_bias),
        project_weight.to(op), up(project_bias), stride, padding, dilation, activation, residual, output_mask,
        band_elements);
    auto down = [&](Tensor& t) { t = t.to(dtype); };
    std::apply([&](auto&... t) { (down(t), ...); }, grads);
    return grads;
  }

  // The expanded map, recomputed whole: its pre-activation z is what the expand stage's backward reads (relu and
  // relu6 read the same from the activation, computed in place then).
  Tensor z, hidden = input;
  if (geo.expand) {
    z = at::conv2d(input, *expand_weight, expand_bias);
    hidden = geo.activation == Activation::kHardswish ? activation_forward(z, geo.activation)
                                                      : activation_forward_(z, geo.activation);
  }
  const bool need_hidden = output_mask[0] || (geo.expand && (output_mask[1] || output_mask[2]));
  const std::string_view act = activation_name(geo.activation);
  auto [grad_hidden, grad_dw, grad_dwb, grad_pw, grad_pwb] = dwpw_conv2d_backward_banded(
      grad_output, hidden, dw_weight, dw_bias, project_weight, project_bias, stride, padding, dilation, act, "none",
      {need_hidden, output_mask[3], output_mask[4], output_mask[5], output_mask[6]}, c10::nullopt, band_elements);
  Tensor grad_input, grad_ew, grad_eb;
  if (geo.expand && need_hidden) {
    hidden.reset();
    activation_backward_into(grad_hidden, grad_hidden, z, geo.activation);
    z.reset();
    auto [gi, gw, gb] = at::convolution_backward(
        grad_hidden, input, *expand_weight, at::IntArrayRef{geo.hidden}, {1, 1}, {0, 0}, {1, 1}, false, {0, 0}, 1,
        {output_mask[0], output_mask[1], output_mask[2] && given(expand_bias)});
    grad_input = std::move(gi);
    grad_ew = std::move(gw);
    grad_eb = std::move(gb);
  } else if (!geo.expand && output_mask[0]) {
    grad_input = std::move(grad_hidden);
  }
  if (output_mask[0]) {
    if (geo.residual) grad_input.add_(grad_output);
    grad_input = grad_input.contiguous(fmt);
  }
  // Gradients nobody asked for come back empty (the dwpw backward returns those of its own already).
  auto or_empty = [&](const Tensor& t) { return t.defined() ? t : at::empty({0}, input.options()); };
  return {
      or_empty(grad_input), or_empty(grad_ew).contiguous(), or_empty(grad_eb), grad_dw, grad_dwb, grad_pw, grad_pwb};
}

}  // namespace fusedops
