// Argument checks of fusedops::inverted_residual, its composed forward (backends without a fused kernel of the
// whole block) and its backward on every backend. Declared in fusedops/inverted_residual.h.
#include "fusedops/inverted_residual.h"

#include "fusedops/activation_ops.h"
#include "fusedops/dwpw.h"
#include "fusedops/ops.h"
#include "fusedops/schema_str.h"

#include <ATen/OpMathType.h>

namespace fusedops {

using at::Tensor;

Gate parse_gate(std::string_view name, const char* argument) {
  if (name == "hardsigmoid") return Gate::kHardsigmoid;
  TORCH_CHECK(name == "sigmoid", "fusedops: ", argument, " must be 'hardsigmoid' or 'sigmoid'; got '",
              std::string(name), "'");
  return Gate::kSigmoid;
}

SqueezeExcitationGeometry squeeze_excitation_geometry(const Tensor& input, const SqueezeExcitationArgs& se,
                                                      int64_t channels, const char* gated) {
  SqueezeExcitationGeometry r;
  if (given(se.reduce_weight)) {
    check_pointwise(input, *se.reduce_weight, se.reduce_bias, channels, "se_reduce_weight", "se_reduce_bias", gated);
    r.channels = se.reduce_weight->size(0);
    TORCH_CHECK(given(se.expand_weight),
                "fusedops: se_expand_weight must be given with se_reduce_weight (the squeeze-excitation's second 1x1 "
                "convolution)");
    check_pointwise(input, *se.expand_weight, se.expand_bias, r.channels, "se_expand_weight", "se_expand_bias",
                    "se_reduce_weight's output channels");
    TORCH_CHECK(se.expand_weight->size(0) == channels, "fusedops: se_expand_weight must have shape (", channels, ", ",
                r.channels, ", 1, 1) (", channels, " = ", gated, ", which it gates), got ", se.expand_weight->sizes());
  } else {
    for (const auto& [t, name] :
         {std::pair{&se.reduce_bias, "se_reduce_bias"}, std::pair{&se.expand_weight, "se_expand_weight"},
          std::pair{&se.expand_bias, "se_expand_bias"}}) {
      TORCH_CHECK(!given(*t), "fusedops: ", name,
                  " is given without se_reduce_weight (a block without a squeeze-excitation has none)");
    }
  }
  r.activation = parse_activation(se.activation, "se_activation");
  r.gate = parse_gate(se.gate, "se_gate");
  return r;
}

const SqueezeExcitationArgs& no_squeeze_excitation() {
  static const c10::optional<Tensor> none;
  static const SqueezeExcitationArgs se{none, none, none, none, "relu", "hardsigmoid"};
  return se;
}

InvertedResidualGeometry inverted_residual_geometry(const Tensor& input, const c10::optional<Tensor>& expand_weight,
                                                    const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                                                    const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                                                    const c10::optional<Tensor>& project_bias,
                                                    const SqueezeExcitationArgs& se, at::IntArrayRef stride,
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
  const SqueezeExcitationGeometry excitation =
      squeeze_excitation_geometry(input, se, r.hidden, "the depthwise stage's channels");
  r.se_channels = excitation.channels;
  r.se_activation = excitation.activation;
  r.se_gate = excitation.gate;
  TORCH_CHECK(r.se_channels == 0 || (r.dw.out_h > 0 && r.dw.out_w > 0),
              "fusedops: the squeeze-excitation needs a non-empty depthwise output to pool, but it is ", r.dw.out_h,
              "x", r.dw.out_w);
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

Tensor squeeze_excitation_gate(const Tensor& mid, const SqueezeExcitationArgs& se,
                               const InvertedResidualGeometry& geo) {
  const Tensor squeezed =
      activation_forward(at::linear(mid.mean({2, 3}), se.reduce_weight->flatten(1), se.reduce_bias), geo.se_activation);
  const Tensor excited = at::linear(squeezed, se.expand_weight->flatten(1), se.expand_bias);
  return geo.se_gate == Gate::kSigmoid ? at::sigmoid(excited) : at::hardsigmoid(excited);
}

Tensor inverted_residual_composed(const Tensor& input, const c10::optional<Tensor>& expand_weight,
                                  const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                                  const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                                  const c10::optional<Tensor>& project_bias, const SqueezeExcitationArgs& se,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  std::string_view activation, bool residual) {
  const InvertedResidualGeometry geo =
      inverted_residual_geometry(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                 se, stride, padding, dilation, activation, residual);
  Tensor out = block_composed(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, se,
                              stride, padding, dilation, geo, inverted_residual_activations(geo));
  if (geo.residual) out.add_(input);
  return out;
}

Tensor block_composed(const Tensor& input, const c10::optional<Tensor>& expand_weight,
                      const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                      const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                      const c10::optional<Tensor>& project_bias, const SqueezeExcitationArgs& se,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                      const InvertedResidualGeometry& geo, const BlockActivations& acts) {
  const Tensor hidden = geo.expand ? inverted_residual_expand(input, *expand_weight, expand_bias, acts.expand) : input;
  if (geo.se_channels > 0) {
    Tensor mid = ops::call<ops::depthwise_conv2d>(hidden, dw_weight, dw_bias, stride, padding, dilation);
    activation_forward_(mid, acts.depthwise);
    mid.mul_(squeeze_excitation_gate(mid, se, geo).unsqueeze(-1).unsqueeze(-1));
    Tensor out = at::conv2d(mid, project_weight, project_bias).contiguous(output_memory_format(input));
    activation_forward_(out, acts.project);
    return out;
  }
  return ops::call<ops::dwpw_conv2d>(hidden, dw_weight, dw_bias, project_weight, project_bias, stride, padding,
                                     dilation, schema_str(activation_name(acts.depthwise)),
                                     schema_str(activation_name(acts.project)), c10::nullopt);
}

namespace {

// Gradients of the depthwise, squeeze-excitation and project stages of a block with a squeeze-excitation, from
// its expanded map `hidden`: (grad_hidden, dw_weight, dw_bias, project_weight, project_bias, se_reduce_weight,
// se_reduce_bias, se_expand_weight, se_expand_bias), each only where its `wanted` flag is set. The depthwise
// output is recomputed whole (the gate pools all of it); the gate's (N, S) and (N, hidden) intermediates are
// kept.
std::array<Tensor, 9> squeeze_excited_stages_backward(const Tensor& grad_output, const Tensor& hidden,
                                                      const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
                                                      const Tensor& project_weight, const SqueezeExcitationArgs& se,
                                                      const InvertedResidualGeometry& geo, Activation dw_activation,
                                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                                      at::IntArrayRef dilation, std::array<bool, 9> wanted) {
  const ConvGeometry& g = geo.dw;
  std::array<Tensor, 9> grads;
  Tensor z = ops::call<ops::depthwise_conv2d>(hidden, dw_weight, dw_bias, stride, padding, dilation);
  const bool grad_reads_mid = activation_grad_reads_output(dw_activation);
  Tensor mid = grad_reads_mid ? activation_forward_(z, dw_activation) : activation_forward(z, dw_activation);
  const Tensor pooled = mid.mean({2, 3});
  const Tensor reduce_w = se.reduce_weight->flatten(1), expand_w = se.expand_weight->flatten(1);
  const Tensor squeezed_z = at::linear(pooled, reduce_w, se.reduce_bias);
  const Tensor squeezed = activation_forward(squeezed_z, geo.se_activation);
  const Tensor excited = at::linear(squeezed, expand_w, se.expand_bias);
  const Tensor gate = geo.se_gate == Gate::kSigmoid ? at::sigmoid(excited) : at::hardsigmoid(excited);
  const Tensor gate_map = gate.view({g.batch, geo.hidden, 1, 1});
  const bool need_mid = wanted[0] || wanted[1] || wanted[2] || wanted[5] || wanted[6] || wanted[7] || wanted[8];
  auto [grad_gated, grad_pw, grad_pb] =
      at::convolution_backward(grad_output, mid * gate_map, project_weight, at::IntArrayRef{geo.out_channels}, {1, 1},
                               {0, 0}, {1, 1}, false, {0, 0}, 1, {need_mid, wanted[3], wanted[4]});
  grads[3] = std::move(grad_pw);
  grads[4] = std::move(grad_pb);
  if (!need_mid) return grads;
  // Through the gate: d(mid * gate) = grad * gate on mid, sum_hw(grad * mid) on the gate.
  const Tensor grad_gate = (grad_gated * mid).sum({2, 3});
  Tensor grad_mid = grad_gated.mul_(gate_map);
  const Tensor grad_excited = geo.se_gate == Gate::kSigmoid ? at::sigmoid_backward(grad_gate, gate)
                                                            : at::hardsigmoid_backward(grad_gate, excited);
  if (wanted[7]) grads[7] = grad_excited.t().mm(squeezed).view_as(*se.expand_weight);
  if (wanted[8]) grads[8] = grad_excited.sum(0);
  const Tensor grad_squeezed_z =
      activation_backward_into(at::empty_like(squeezed_z), grad_excited.mm(expand_w), squeezed_z, geo.se_activation);
  if (wanted[5]) grads[5] = grad_squeezed_z.t().mm(pooled).view_as(*se.reduce_weight);
  if (wanted[6]) grads[6] = grad_squeezed_z.sum(0);
  if (!(wanted[0] || wanted[1] || wanted[2])) return grads;
  // The mean's gradient reaches every pixel of its channel.
  grad_mid.add_(grad_squeezed_z.mm(reduce_w).div_(static_cast<double>(g.out_h * g.out_w)).view_as(gate_map));
  activation_backward_into(grad_mid, grad_mid, grad_reads_mid ? mid : z, dw_activation);
  z.reset();
  mid.reset();
  auto [grad_hidden, grad_dw, grad_db] = ops::call<ops::depthwise_conv2d_backward>(
      grad_mid, hidden, dw_weight, stride, padding, dilation, std::array<bool, 3>{wanted[0], wanted[1], wanted[2]});
  grads[0] = std::move(grad_hidden);
  grads[1] = std::move(grad_dw);
  grads[2] = std::move(grad_db);
  return grads;
}

}  // namespace

InvertedResidualGrads inverted_residual_backward_recomputed(
    const Tensor& grad_output, const Tensor& input, const c10::optional<Tensor>& expand_weight,
    const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
    const Tensor& project_weight, const c10::optional<Tensor>& project_bias, const SqueezeExcitationArgs& se,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view activation,
    bool residual, std::array<bool, kInvertedResidualGradients> output_mask, int64_t band_elements) {
  const InvertedResidualGeometry geo =
      inverted_residual_geometry(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                 se, stride, padding, dilation, activation, residual);
  return block_backward_recomputed(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                   project_bias, se, stride, padding, dilation, geo, inverted_residual_activations(geo),
                                   output_mask, band_elements);
}

InvertedResidualGrads block_backward_recomputed(
    const Tensor& grad_output, const Tensor& input, const c10::optional<Tensor>& expand_weight,
    const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
    const Tensor& project_weight, const c10::optional<Tensor>& project_bias, const SqueezeExcitationArgs& se,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, const InvertedResidualGeometry& geo,
    const BlockActivations& acts, std::array<bool, kInvertedResidualGradients> output_mask, int64_t band_elements) {
  TORCH_CHECK(geo.se_channels == 0 || acts.project == Activation::kNone,
              "fusedops: internal: a block with a squeeze-excitation has no activation after its project stage");
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
    const c10::optional<Tensor> se_rw = up(se.reduce_weight), se_rb = up(se.reduce_bias), se_ew = up(se.expand_weight),
                                se_eb = up(se.expand_bias);
    InvertedResidualGrads grads = block_backward_recomputed(
        grad_output.to(op), input.to(op), up(expand_weight), up(expand_bias), dw_weight.to(op), up(dw_bias),
        project_weight.to(op), up(project_bias), {se_rw, se_rb, se_ew, se_eb, se.activation, se.gate}, stride, padding,
        dilation, geo, acts, output_mask, band_elements);
    auto down = [&](Tensor& t) { t = t.to(dtype); };
    std::apply([&](auto&... t) { (down(t), ...); }, grads);
    return grads;
  }

  // The expanded map, recomputed whole: its pre-activation z is what the expand stage's backward reads (relu and
  // relu6 read the same from the activation, computed in place then).
  Tensor z, hidden = input;
  if (geo.expand) {
    z = at::conv2d(input, *expand_weight, expand_bias);
    hidden = activation_grad_reads_output(acts.expand) ? activation_forward_(z, acts.expand)
                                                       : activation_forward(z, acts.expand);
  }
  const bool need_hidden = output_mask[0] || (geo.expand && (output_mask[1] || output_mask[2]));
  // Gradients of the depthwise stage on: hidden, dw_weight, dw_bias, project_weight, project_bias, then the
  // squeeze-excitation's.
  std::array<Tensor, 9> stage_grads;
  if (geo.se_channels > 0) {
    stage_grads = squeeze_excited_stages_backward(
        grad_output, hidden, dw_weight, dw_bias, project_weight, se, geo, acts.depthwise, stride, padding, dilation,
        {need_hidden, output_mask[3], output_mask[4] && given(dw_bias), output_mask[5],
         output_mask[6] && given(project_bias), output_mask[7], output_mask[8] && given(se.reduce_bias), output_mask[9],
         output_mask[10] && given(se.expand_bias)});
  } else {
    std::tie(stage_grads[0], stage_grads[1], stage_grads[2], stage_grads[3], stage_grads[4]) =
        dwpw_conv2d_backward_banded(grad_output, hidden, dw_weight, dw_bias, project_weight, project_bias, stride,
                                    padding, dilation, activation_name(acts.depthwise), activation_name(acts.project),
                                    {need_hidden, output_mask[3], output_mask[4], output_mask[5], output_mask[6]},
                                    c10::nullopt, band_elements);
  }
  Tensor& grad_hidden = stage_grads[0];
  Tensor grad_input, grad_ew, grad_eb;
  if (geo.expand && need_hidden) {
    hidden.reset();
    activation_backward_into(grad_hidden, grad_hidden, z, acts.expand);
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
  // Gradients nobody asked for come back empty.
  auto or_empty = [&](const Tensor& t) { return t.defined() ? t : at::empty({0}, input.options()); };
  return {or_empty(grad_input),     or_empty(grad_ew).contiguous(), or_empty(grad_eb),        or_empty(stage_grads[1]),
          or_empty(stage_grads[2]), or_empty(stage_grads[3]),       or_empty(stage_grads[4]), or_empty(stage_grads[5]),
          or_empty(stage_grads[6]), or_empty(stage_grads[7]),       or_empty(stage_grads[8])};
}

}  // namespace fusedops
