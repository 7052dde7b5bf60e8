// Argument checks of fusedops::shufflenet_v2_unit, its composed forward (backends without a fused kernel of the
// whole unit) and its backward on every backend. Declared in fusedops/shufflenet_v2_unit.h.
#include "fusedops/shufflenet_v2_unit.h"

#include "fusedops/checks.h"
#include "fusedops/dwpw.h"
#include "fusedops/ops.h"
#include "fusedops/schema_str.h"

#include <ATen/OpMathType.h>

namespace fusedops {

using at::Tensor;

namespace {

// The output (N, 2B, H, W) in `fmt` with first's channel c at 2c and second's at 2c + 1.
Tensor interleave_halves(const Tensor& first, const Tensor& second, at::MemoryFormat fmt) {
  Tensor out =
      at::empty({first.size(0), 2 * first.size(1), first.size(2), first.size(3)}, first.options().memory_format(fmt));
  const Tensor pairs = out.view({first.size(0), first.size(1), 2, first.size(2), first.size(3)});
  pairs.select(2, 0).copy_(first);
  pairs.select(2, 1).copy_(second);
  return out;
}

}  // namespace

Tensor branch_input(const Tensor& input, const ShuffleUnitGeometry& geo) {
  return geo.shortcut ? input : input.narrow(1, geo.branch_first_channel(), geo.branch.in_channels);
}

ShuffleUnitGeometry shufflenet_v2_unit_geometry(const Tensor& input, const Tensor& expand_weight,
                                                const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                                                const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                                                const c10::optional<Tensor>& project_bias,
                                                const ShuffleShortcutArgs& shortcut, at::IntArrayRef stride,
                                                at::IntArrayRef padding, at::IntArrayRef dilation,
                                                std::string_view activation) {
  TORCH_CHECK(input.dim() == 4, "fusedops: input must be a 4-D (N, C, H, W) tensor, got ", input.dim(), "-D");
  ShuffleUnitGeometry r;
  r.in_channels = input.size(1);
  r.shortcut = given(shortcut.dw_weight);
  TORCH_CHECK(r.shortcut == given(shortcut.pw_weight),
              "fusedops: shortcut_dw_weight and shortcut_pw_weight must be given together (the down-sampling unit's "
              "shortcut) or not at all, got only ",
              r.shortcut ? "shortcut_dw_weight" : "shortcut_pw_weight");
  if (!r.shortcut) {
    for (const auto& [t, name] :
         {std::pair{&shortcut.dw_bias, "shortcut_dw_bias"}, std::pair{&shortcut.pw_bias, "shortcut_pw_bias"}}) {
      TORCH_CHECK(!given(*t), "fusedops: ", name, " is given without the shortcut's weights");
    }
    TORCH_CHECK(r.in_channels % 2 == 0,
                "fusedops: input must have an even number of channels without the shortcut's weights (its second half "
                "is the branch's input), got ",
                r.in_channels);
  }
  r.activation = parse_activation(activation, "activation");
  r.branch_activations = {r.activation, Activation::kNone, r.activation};
  const Tensor x = r.shortcut ? input : input.narrow(1, r.in_channels / 2, r.in_channels / 2);
  r.branch = inverted_residual_geometry(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                        no_squeeze_excitation(), stride, padding, dilation, activation, false);
  r.branch_channels = r.branch.out_channels;
  const ConvGeometry& g = r.branch.dw;
  if (!r.shortcut) {
    TORCH_CHECK(r.branch_channels == r.in_channels / 2, "fusedops: project_weight must have ", r.in_channels / 2,
                " output channels (as many as the input's first half, which the output interleaves with the branch's), "
                "got ",
                r.branch_channels);
    TORCH_CHECK(g.out_h == g.in_h && g.out_w == g.in_w,
                "fusedops: without the shortcut's weights the branch must keep the map's size (stride 1 and "
                "size-preserving padding: the output interleaves it with the input's first half), but it maps ",
                g.in_h, "x", g.in_w, " to ", g.out_h, "x", g.out_w);
    return r;
  }
  TORCH_CHECK(shortcut.dw_weight->dim() == 4 && shortcut.dw_weight->size(0) == r.in_channels &&
                  shortcut.dw_weight->size(2) == g.kernel_h && shortcut.dw_weight->size(3) == g.kernel_w,
              "fusedops: shortcut_dw_weight must have shape (", r.in_channels, ", 1, ", g.kernel_h, ", ", g.kernel_w,
              ") (the input channels, dw_weight's kernel size), got ", shortcut.dw_weight->sizes());
  depthwise_geometry(input, *shortcut.dw_weight, shortcut.dw_bias, stride, padding, dilation, "shortcut_dw_weight",
                     "shortcut_dw_bias", r.in_channels);
  check_pointwise(input, *shortcut.pw_weight, shortcut.pw_bias, r.in_channels, "shortcut_pw_weight", "shortcut_pw_bias",
                  "the input channels");
  TORCH_CHECK(shortcut.pw_weight->size(0) == r.branch_channels, "fusedops: shortcut_pw_weight must have ",
              r.branch_channels,
              " output channels (as many as project_weight: the output interleaves the two halves), got ",
              shortcut.pw_weight->size(0));
  return r;
}

Tensor shuffle_shortcut(const Tensor& input, const ShuffleShortcutArgs& shortcut, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, const ShuffleUnitGeometry& geo) {
  return ops::call<ops::dwpw_conv2d>(input, *shortcut.dw_weight, shortcut.dw_bias, *shortcut.pw_weight,
                                     shortcut.pw_bias, stride, padding, dilation, "none",
                                     schema_str(activation_name(geo.activation)), c10::nullopt);
}

Tensor shufflenet_v2_unit_composed(const Tensor& input, const Tensor& expand_weight,
                                   const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight,
                                   const c10::optional<Tensor>& dw_bias, const Tensor& project_weight,
                                   const c10::optional<Tensor>& project_bias, const ShuffleShortcutArgs& shortcut,
                                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                   std::string_view activation) {
  const ShuffleUnitGeometry geo =
      shufflenet_v2_unit_geometry(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                  shortcut, stride, padding, dilation, activation);
  const Tensor second = block_composed(branch_input(input, geo), expand_weight, expand_bias, dw_weight, dw_bias,
                                       project_weight, project_bias, no_squeeze_excitation(), stride, padding, dilation,
                                       geo.branch, geo.branch_activations);
  const Tensor first = geo.shortcut ? shuffle_shortcut(input, shortcut, stride, padding, dilation, geo)
                                    : input.narrow(1, 0, geo.branch_channels);
  return interleave_halves(first, second, output_memory_format(input));
}

ShuffleUnitGrads shufflenet_v2_unit_backward_recomputed(
    const Tensor& grad_output, const Tensor& input, const Tensor& expand_weight,
    const c10::optional<Tensor>& expand_bias, const Tensor& dw_weight, const c10::optional<Tensor>& dw_bias,
    const Tensor& project_weight, const c10::optional<Tensor>& project_bias, const ShuffleShortcutArgs& shortcut,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, std::string_view activation,
    std::array<bool, kShuffleUnitGradients> output_mask, int64_t band_elements) {
  const ShuffleUnitGeometry geo =
      shufflenet_v2_unit_geometry(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                  shortcut, stride, padding, dilation, activation);
  const ConvGeometry& g = geo.branch.dw;
  const int64_t B = geo.branch_channels;
  check_same_device(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "fusedops: grad_output dtype ",
              dtype_name(grad_output.scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({g.batch, 2 * B, g.out_h, g.out_w}),
              "fusedops: grad_output has shape ", grad_output.sizes(), " but the output has shape (", g.batch, ", ",
              2 * B, ", ", g.out_h, ", ", g.out_w, ")");
  const at::ScalarType dtype = input.scalar_type(), op = at::toOpMathType(dtype);
  if (op != dtype) {
    // Half and bfloat16 recompute in float, as the forward kernels compute, then round the gradients once.
    auto up = [&](const c10::optional<Tensor>& t) { return given(t) ? c10::optional<Tensor>(t->to(op)) : t; };
    const c10::optional<Tensor> sdw = up(shortcut.dw_weight), sdb = up(shortcut.dw_bias), spw = up(shortcut.pw_weight),
                                spb = up(shortcut.pw_bias);
    ShuffleUnitGrads grads = shufflenet_v2_unit_backward_recomputed(
        grad_output.to(op), input.to(op), expand_weight.to(op), up(expand_bias), dw_weight.to(op), up(dw_bias),
        project_weight.to(op), up(project_bias), {sdw, sdb, spw, spb}, stride, padding, dilation, activation,
        output_mask, band_elements);
    auto down = [&](Tensor& t) { t = t.to(dtype); };
    std::apply([&](auto&... t) { (down(t), ...); }, grads);
    return grads;
  }

  const at::MemoryFormat fmt = output_memory_format(input);
  const Tensor pairs = grad_output.reshape({g.batch, B, 2, g.out_h, g.out_w});
  const Tensor grad_first = pairs.select(2, 0), grad_second = pairs.select(2, 1);
  ShuffleUnitGrads grads;
  auto& [grad_input, grad_ew, grad_eb, grad_dw, grad_db, grad_pw, grad_pb, grad_sdw, grad_sdb, grad_spw, grad_spb] =
      grads;
  Tensor grad_branch_input;
  if (output_mask[0] || output_mask[1] || output_mask[2] || output_mask[3] || output_mask[4] || output_mask[5] ||
      output_mask[6]) {
    const c10::optional<Tensor> ew(expand_weight);
    std::tie(grad_branch_input, grad_ew, grad_eb, grad_dw, grad_db, grad_pw, grad_pb, std::ignore, std::ignore,
             std::ignore, std::ignore) =
        block_backward_recomputed(grad_second.contiguous(fmt), branch_input(input, geo), ew, expand_bias, dw_weight,
                                  dw_bias, project_weight, project_bias, no_squeeze_excitation(), stride, padding,
                                  dilation, geo.branch, geo.branch_activations,
                                  {output_mask[0], output_mask[1], output_mask[2] && given(expand_bias), output_mask[3],
                                   output_mask[4] && given(dw_bias), output_mask[5],
                                   output_mask[6] && given(project_bias), false, false, false, false},
                                  band_elements);
  }
  if (geo.shortcut && (output_mask[0] || output_mask[7] || output_mask[8] || output_mask[9] || output_mask[10])) {
    Tensor grad_shortcut_input;
    std::tie(grad_shortcut_input, grad_sdw, grad_sdb, grad_spw, grad_spb) = dwpw_conv2d_backward_banded(
        grad_first.contiguous(fmt), input, *shortcut.dw_weight, shortcut.dw_bias, *shortcut.pw_weight, shortcut.pw_bias,
        stride, padding, dilation, "none", activation_name(geo.activation),
        {output_mask[0], output_mask[7], output_mask[8] && given(shortcut.dw_bias), output_mask[9],
         output_mask[10] && given(shortcut.pw_bias)},
        c10::nullopt, band_elements);
    if (output_mask[0]) grad_input = grad_shortcut_input.add_(grad_branch_input).contiguous(fmt);
  } else if (output_mask[0]) {
    grad_input = at::empty(input.sizes(), input.options().memory_format(fmt));
    grad_input.narrow(1, 0, B).copy_(grad_first);
    grad_input.narrow(1, B, B).copy_(grad_branch_input);
  }
  // Gradients nobody asked for come back empty.
  auto or_empty = [&](Tensor& t) {
    if (!t.defined()) t = at::empty({0}, input.options());
  };
  std::apply([&](auto&... t) { (or_empty(t), ...); }, grads);
  return grads;
}

}  // namespace fusedops
