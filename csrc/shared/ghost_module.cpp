// Argument checks of fusedops::ghost_module, its composed forward (backends without a fused kernel) and its
// backward on every backend. Declared in fusedops/ghost_module.h.
#include "fusedops/ghost_module.h"

#include "fusedops/activation_ops.h"
#include "fusedops/ops.h"

#include <ATen/OpMathType.h>

namespace fusedops {

using at::Tensor;

GhostModuleGeometry ghost_module_geometry(const Tensor& input, const Tensor& primary_weight,
                                          const c10::optional<Tensor>& primary_bias, const Tensor& cheap_weight,
                                          const c10::optional<Tensor>& cheap_bias, int64_t out_channels,
                                          at::IntArrayRef stride, std::string_view activation,
                                          const c10::optional<Tensor>& residual) {
  TORCH_CHECK(input.dim() == 4, "fusedops: input must be a 4-D (N, C, H, W) tensor, got ", input.dim(), "-D");
  TORCH_CHECK(input.is_floating_point(), "fusedops: input must be a floating-point tensor, got ",
              dtype_name(input.scalar_type()));
  GhostModuleGeometry r;
  r.in_channels = input.size(1);
  TORCH_CHECK(r.in_channels > 0, "fusedops: input must have at least one channel, got shape ", input.sizes());
  check_pointwise(input, primary_weight, primary_bias, r.in_channels, "primary_weight", "primary_bias",
                  "the input channels");
  TORCH_CHECK(input.size(2) > 0 && input.size(3) > 0, "fusedops: input has an empty map (shape ", input.sizes(),
              "), which the primary 1x1 convolution cannot take (as F.conv2d)");
  check_pair(stride, "stride");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "fusedops: stride must be positive, got ", stride);
  r.stride_h = stride[0];
  r.stride_w = stride[1];
  r.init_channels = primary_weight.size(0);
  TORCH_CHECK(cheap_weight.dim() == 4, "fusedops: cheap_weight must be a 4-D (C*multiplier, 1, kH, kW) tensor, got ",
              cheap_weight.dim(), "-D");
  TORCH_CHECK(cheap_weight.size(2) % 2 == 1 && cheap_weight.size(3) % 2 == 1,
              "fusedops: cheap_weight must have an odd kernel size (its padding k // 2 keeps the primary half's size, "
              "which the two halves share), got ",
              cheap_weight.sizes());
  // The depthwise stage reads the primary half: its size is the primary convolution's output.
  r.cheap =
      depthwise_geometry(input, cheap_weight, cheap_bias, {1, 1}, {cheap_weight.size(2) / 2, cheap_weight.size(3) / 2},
                         {1, 1}, "cheap_weight", "cheap_bias", r.init_channels);
  ConvGeometry& g = r.cheap;
  g.in_h = g.out_h = conv_output_size(input.size(2), 1, r.stride_h, 0, 1);
  g.in_w = g.out_w = conv_output_size(input.size(3), 1, r.stride_w, 0, 1);
  const int64_t most = r.init_channels + g.out_channels;
  TORCH_CHECK(out_channels >= r.init_channels && out_channels <= most, "fusedops: out_channels must be between ",
              r.init_channels, " (primary_weight's output channels) and ", most, " (those plus cheap_weight's), got ",
              out_channels);
  r.out_channels = out_channels;
  r.cheap_channels = out_channels - r.init_channels;
  r.activation = parse_activation(activation, "activation");
  r.residual = given(residual);
  if (r.residual) {
    TORCH_CHECK(residual->sizes() == at::IntArrayRef({g.batch, out_channels, g.out_h, g.out_w}),
                "fusedops: residual must have the output's shape [", g.batch, ", ", out_channels, ", ", g.out_h, ", ",
                g.out_w, "], got ", residual->sizes());
    TORCH_CHECK(residual->scalar_type() == input.scalar_type(), "fusedops: residual dtype ",
                dtype_name(residual->scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
    check_same_device(*residual, input, "residual", "input");
  }
  return r;
}

namespace {

// The primary convolution's pre-activation (N, init, H', W'): a 1x1 convolution at the module's stride.
Tensor primary_convolution(const Tensor& input, const Tensor& primary_weight, const c10::optional<Tensor>& primary_bias,
                           at::IntArrayRef stride) {
  return at::conv2d(input, primary_weight, primary_bias, stride);
}

// The cheap half's contributed channels need the first `sources` channels of the primary half, and the
// `sources * multiplier` first depthwise filters (the others feed channels the output drops).
std::pair<Tensor, c10::optional<Tensor>> contributing_cheap_weights(const GhostModuleGeometry& geo,
                                                                    const Tensor& cheap_weight,
                                                                    const c10::optional<Tensor>& cheap_bias) {
  const int64_t filters = geo.cheap_sources() * geo.cheap.multiplier;
  return {cheap_weight.narrow(0, 0, filters),
          given(cheap_bias) ? c10::optional<Tensor>(cheap_bias->narrow(0, 0, filters)) : c10::nullopt};
}

}  // namespace

ConvGeometry following_depthwise_geometry(const Tensor& module_map, const Tensor& dw_weight,
                                          const c10::optional<Tensor>& dw_bias, at::IntArrayRef dw_stride,
                                          int64_t channels, const char* channels_name) {
  TORCH_CHECK(dw_stride[0] > 0 && dw_stride[1] > 0, "fusedops: dw_stride must be positive, got ", dw_stride);
  TORCH_CHECK(dw_weight.dim() == 4 && dw_weight.size(0) == channels && dw_weight.size(1) == 1 &&
                  dw_weight.size(2) % 2 == 1 && dw_weight.size(3) % 2 == 1,
              "fusedops: dw_weight must have shape (", channels_name, "=", channels,
              ", 1, kH, kW) with odd kH and kW (padding k // 2), got ", dw_weight.sizes());
  const std::array<int64_t, 2> padding{dw_weight.size(2) / 2, dw_weight.size(3) / 2}, unit{1, 1};
  return depthwise_geometry(module_map, dw_weight, dw_bias, dw_stride, padding, unit, "dw_weight", "dw_bias", channels);
}

GhostBottleneckGeometry ghost_bottleneck_geometry(
    const Tensor& input, const Tensor& primary_weight, const c10::optional<Tensor>& primary_bias,
    const Tensor& cheap_weight, const c10::optional<Tensor>& cheap_bias, int64_t mid_channels,
    std::string_view activation, const c10::optional<Tensor>& dw_weight, const c10::optional<Tensor>& dw_bias,
    at::IntArrayRef dw_stride, const Tensor& second_primary_weight, const c10::optional<Tensor>& second_primary_bias,
    const Tensor& second_cheap_weight, const c10::optional<Tensor>& second_cheap_bias, int64_t out_channels,
    std::string_view second_activation, const c10::optional<Tensor>& residual) {
  const std::array<int64_t, 2> unit{1, 1};
  // Each module's checks, their errors saying which module and what its out_channels stand for.
  auto module_geometry = [&](const char* which, const Tensor& module_input, const Tensor& pw,
                             const c10::optional<Tensor>& pb, const Tensor& cw, const c10::optional<Tensor>& cb,
                             int64_t channels, std::string_view act, const c10::optional<Tensor>& added) {
    try {
      return ghost_module_geometry(module_input, pw, pb, cw, cb, channels, unit, act, added);
    } catch (const c10::Error& e) {
      // The module's message without its own "fusedops: " prefix.
      std::string_view message = e.what_without_backtrace();
      constexpr std::string_view prefix = "fusedops: ";
      if (message.substr(0, prefix.size()) == prefix) message.remove_prefix(prefix.size());
      TORCH_CHECK(false, "fusedops: _ghost_bottleneck's ", which, ": ", message);
    }
  };
  GhostBottleneckGeometry r;
  r.first = module_geometry("first module (out_channels: mid_channels)", input, primary_weight, primary_bias,
                            cheap_weight, cheap_bias, mid_channels, activation, c10::nullopt);
  const int64_t N = input.size(0);
  int64_t H = input.size(2), W = input.size(3);
  // The depthwise stage between the modules: its geometry on the first module's output (stride 1).
  r.has_depthwise = given(dw_weight);
  check_pair(dw_stride, "dw_stride");
  if (r.has_depthwise) {
    const Tensor module_shape = at::empty_strided({N, mid_channels, H, W}, {0, 0, 0, 0}, input.options());
    r.depthwise =
        following_depthwise_geometry(module_shape, *dw_weight, dw_bias, dw_stride, mid_channels, "mid_channels");
    H = r.depthwise.out_h;
    W = r.depthwise.out_w;
  } else {
    TORCH_CHECK(!given(dw_bias), "fusedops: dw_bias is given without dw_weight");
  }
  // Stands for the second module's input in its checks (shape, dtype, device); no data behind it.
  const Tensor mid_shape = at::empty_strided({N, mid_channels, H, W}, {0, 0, 0, 0}, input.options());
  r.second = module_geometry(
      "second module (second_primary_weight, second_primary_bias, second_cheap_weight, second_cheap_bias, "
      "out_channels, second_activation, residual; its input: the first module's output, after the depthwise stage "
      "where there is one)",
      mid_shape, second_primary_weight, second_primary_bias, second_cheap_weight, second_cheap_bias, out_channels,
      second_activation, residual);
  return r;
}

Tensor ghost_module_composed(const Tensor& input, const Tensor& primary_weight,
                             const c10::optional<Tensor>& primary_bias, const Tensor& cheap_weight,
                             const c10::optional<Tensor>& cheap_bias, int64_t out_channels, at::IntArrayRef stride,
                             std::string_view activation, const c10::optional<Tensor>& residual) {
  const GhostModuleGeometry geo = ghost_module_geometry(input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                                        out_channels, stride, activation, residual);
  const ConvGeometry& g = geo.cheap;
  Tensor out =
      at::empty({g.batch, out_channels, g.out_h, g.out_w}, input.options().memory_format(output_memory_format(input)));
  if (out.numel() == 0) return out;
  Tensor x1 = primary_convolution(input, primary_weight, primary_bias, stride);
  activation_forward_(x1, geo.activation);
  out.narrow(1, 0, geo.init_channels).copy_(x1);
  if (geo.cheap_channels > 0) {
    const auto [weight, bias] = contributing_cheap_weights(geo, cheap_weight, cheap_bias);
    const std::array<int64_t, 2> unit{1, 1}, padding{g.pad_h, g.pad_w};
    Tensor x2 =
        ops::call<ops::depthwise_conv2d>(x1.narrow(1, 0, geo.cheap_sources()), weight, bias, unit, padding, unit);
    activation_forward_(x2, geo.activation);
    out.narrow(1, geo.init_channels, geo.cheap_channels).copy_(x2.narrow(1, 0, geo.cheap_channels));
  }
  if (geo.residual) out.add_(*residual);
  return out;
}

GhostModuleGrads ghost_module_backward_recomputed(const Tensor& grad_output, const Tensor& input,
                                                  const Tensor& primary_weight,
                                                  const c10::optional<Tensor>& primary_bias, const Tensor& cheap_weight,
                                                  const c10::optional<Tensor>& cheap_bias, int64_t out_channels,
                                                  at::IntArrayRef stride, std::string_view activation,
                                                  std::array<bool, kGhostModuleGradients> output_mask) {
  const GhostModuleGeometry geo = ghost_module_geometry(input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                                        out_channels, stride, activation, c10::nullopt);
  const ConvGeometry& g = geo.cheap;
  check_same_device(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "fusedops: grad_output dtype ",
              dtype_name(grad_output.scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({g.batch, out_channels, g.out_h, g.out_w}),
              "fusedops: grad_output has shape ", grad_output.sizes(), " but the output has shape (", g.batch, ", ",
              out_channels, ", ", g.out_h, ", ", g.out_w, ")");
  const at::ScalarType dtype = input.scalar_type(), op = at::toOpMathType(dtype);
  if (op != dtype) {
    // Half and bfloat16 recompute in float, as the forward kernels compute (the CPU kernel's depthwise stage reads
    // the primary half before it is rounded), then round the gradients once.
    auto up = [&](const c10::optional<Tensor>& t) { return given(t) ? c10::optional<Tensor>(t->to(op)) : t; };
    GhostModuleGrads grads = ghost_module_backward_recomputed(grad_output.to(op), input.to(op), primary_weight.to(op),
                                                              up(primary_bias), cheap_weight.to(op), up(cheap_bias),
                                                              out_channels, stride, activation, output_mask);
    auto down = [&](Tensor& t) { t = t.to(dtype); };
    std::apply([&](auto&... t) { (down(t), ...); }, grads);
    return grads;
  }
  const bool want_cheap = output_mask[3] || output_mask[4];
  const bool want_primary = output_mask[0] || output_mask[1] || output_mask[2];
  auto or_empty = [&](const Tensor& t) { return t.defined() ? t : at::empty({0}, input.options()); };
  Tensor z1 = primary_convolution(input, primary_weight, primary_bias, stride);
  const bool grad_reads_x1 = activation_grad_reads_output(geo.activation);
  const Tensor x1 = grad_reads_x1 ? activation_forward_(z1, geo.activation) : activation_forward(z1, geo.activation);
  // The primary half's gradient: the output's first channels, plus what the cheap half sends back.
  Tensor grad_x1 =
      want_primary ? grad_output.narrow(1, 0, geo.init_channels).clone(output_memory_format(input)) : Tensor();
  Tensor grad_cheap_weight, grad_cheap_bias;
  if (geo.cheap_channels > 0 && (want_cheap || want_primary)) {
    const int64_t sources = geo.cheap_sources(), filters = sources * g.multiplier;
    const auto [weight, bias] = contributing_cheap_weights(geo, cheap_weight, cheap_bias);
    const Tensor x1_sources = x1.narrow(1, 0, sources);
    // Arrays, not IntArrayRefs of braced lists (which would outlive their temporaries).
    const std::array<int64_t, 2> unit{1, 1}, padding{g.pad_h, g.pad_w};
    const Tensor z2 = ops::call<ops::depthwise_conv2d>(x1_sources, weight, bias, unit, padding, unit);
    // The filters past the output's last channel (at most multiplier - 1) get no gradient: zeros.
    Tensor grad_x2 = at::zeros_like(z2);
    grad_x2.narrow(1, 0, geo.cheap_channels).copy_(grad_output.narrow(1, geo.init_channels, geo.cheap_channels));
    activation_backward_into(grad_x2, grad_x2, z2, geo.activation);
    auto [grad_sources, grad_w, grad_b] = ops::call<ops::depthwise_conv2d_backward>(
        grad_x2, x1_sources, weight, unit, padding, unit,
        std::array<bool, 3>{want_primary, output_mask[3], output_mask[4] && given(cheap_bias)});
    if (want_primary) grad_x1.narrow(1, 0, sources).add_(grad_sources);
    if (output_mask[3]) {
      grad_cheap_weight = at::zeros_like(cheap_weight);
      grad_cheap_weight.narrow(0, 0, filters).copy_(grad_w);
    }
    if (output_mask[4] && given(cheap_bias)) {
      grad_cheap_bias = at::zeros_like(*cheap_bias);
      grad_cheap_bias.narrow(0, 0, filters).copy_(grad_b);
    }
  } else {
    if (output_mask[3]) grad_cheap_weight = at::zeros_like(cheap_weight);
    if (output_mask[4] && given(cheap_bias)) grad_cheap_bias = at::zeros_like(*cheap_bias);
  }
  Tensor grad_input, grad_pw, grad_pb;
  if (want_primary) {
    activation_backward_into(grad_x1, grad_x1, grad_reads_x1 ? x1 : z1, geo.activation);
    std::tie(grad_input, grad_pw, grad_pb) = at::convolution_backward(
        grad_x1, input, primary_weight, at::IntArrayRef{geo.init_channels}, stride, {0, 0}, {1, 1}, false, {0, 0}, 1,
        {output_mask[0], output_mask[1], output_mask[2] && given(primary_bias)});
    if (output_mask[0]) grad_input = grad_input.contiguous(output_memory_format(input));
  }
  return {or_empty(grad_input), or_empty(grad_pw).contiguous(), or_empty(grad_pb), or_empty(grad_cheap_weight),
          or_empty(grad_cheap_bias)};
}

}  // namespace fusedops
