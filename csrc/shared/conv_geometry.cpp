// Argument checks and geometry of the depthwise convolutions, declared in fusedops/conv_geometry.h.
#include "fusedops/conv_geometry.h"

#include <algorithm>

namespace fusedops {

void check_pair(at::IntArrayRef values, const char* name) {
  TORCH_CHECK(values.size() == 2, "fusedops: ", name, " must have 2 elements (height, width), got ", values.size());
}

void check_same_device(const at::Tensor& t, const at::Tensor& reference, const char* what, const char* reference_name) {
  TORCH_CHECK(t.device() == reference.device(), "fusedops: ", what, " is on ", t.device(), " but ", reference_name,
              " is on ", reference.device(), "; both must be on the same device");
}

void check_weight_and_bias(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                           const char* weight_name, const char* bias_name) {
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "fusedops: ", weight_name, " dtype ",
              dtype_name(weight.scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
  check_same_device(weight, input, weight_name, "input");
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "fusedops: ", bias_name, " must have shape (",
                weight.size(0), ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "fusedops: ", bias_name, " dtype ",
                dtype_name(bias->scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
    check_same_device(*bias, input, bias_name, "input");
  }
}

void check_pointwise(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                     int64_t in, const char* weight_name, const char* bias_name, const char* in_meaning) {
  TORCH_CHECK(
      weight.dim() == 4 && weight.size(1) == in && weight.size(2) == 1 && weight.size(3) == 1 && weight.size(0) > 0,
      "fusedops: ", weight_name, " must have shape (out_channels, ", in, ", 1, 1) (", in, " = ", in_meaning, "), got ",
      weight.sizes());
  check_weight_and_bias(input, weight, bias, weight_name, bias_name);
}

void check_conv_options(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_pair(stride, "stride");
  check_pair(padding, "padding");
  check_pair(dilation, "dilation");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "fusedops: stride must be positive, got ", stride);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "fusedops: padding must be non-negative, got ", padding);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "fusedops: dilation must be positive, got ", dilation);
}

void set_conv_window(ConvGeometry& g, at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  const int64_t extent_h = dilated_extent(g.kernel_h, g.dilation_h);
  const int64_t extent_w = dilated_extent(g.kernel_w, g.dilation_w);
  TORCH_CHECK(g.in_h + 2 * g.pad_h >= extent_h, "fusedops: padded input height (", g.in_h + 2 * g.pad_h,
              ") is smaller than the dilated kernel height (", extent_h, ")");
  TORCH_CHECK(g.in_w + 2 * g.pad_w >= extent_w, "fusedops: padded input width (", g.in_w + 2 * g.pad_w,
              ") is smaller than the dilated kernel width (", extent_w, ")");
  g.out_h = conv_output_size(g.in_h, g.kernel_h, g.stride_h, g.pad_h, g.dilation_h);
  g.out_w = conv_output_size(g.in_w, g.kernel_w, g.stride_w, g.pad_w, g.dilation_w);
}

ConvGeometry depthwise_geometry(const at::Tensor& input, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias, at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, const char* weight_name, const char* bias_name,
                                int64_t channels) {
  TORCH_CHECK(input.dim() == 4, "fusedops: input must be a 4-D (N, C, H, W) tensor, got ", input.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4, "fusedops: ", weight_name, " must be a 4-D (C*multiplier, 1, kH, kW) tensor, got ",
              weight.dim(), "-D");
  TORCH_CHECK(input.is_floating_point(), "fusedops: input must be a floating-point tensor, got ",
              dtype_name(input.scalar_type()));
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "fusedops: ", weight_name, " dtype ",
              dtype_name(weight.scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
  check_same_device(weight, input, weight_name, "input");
  check_conv_options(stride, padding, dilation);

  ConvGeometry g;
  g.batch = input.size(0);
  g.channels = channels < 0 ? input.size(1) : channels;
  g.in_h = input.size(2);
  g.in_w = input.size(3);
  g.out_channels = weight.size(0);
  g.kernel_h = weight.size(2);
  g.kernel_w = weight.size(3);
  TORCH_CHECK(g.channels > 0, "fusedops: input must have at least one channel, got shape ", input.sizes());
  TORCH_CHECK(weight.size(1) == 1, "fusedops: ", weight_name,
              " must have shape (C*multiplier, 1, kH, kW) for a depthwise convolution, got ", weight.sizes());
  TORCH_CHECK(g.out_channels > 0 && g.out_channels % g.channels == 0, "fusedops: ", weight_name, " has ",
              g.out_channels, " output channels, which is not a positive multiple of the input's ", g.channels,
              " channels");
  TORCH_CHECK(g.kernel_h > 0 && g.kernel_w > 0, "fusedops: ", weight_name, " kernel size must be positive, got ",
              weight.sizes());
  g.multiplier = g.out_channels / g.channels;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == g.out_channels, "fusedops: ", bias_name, " must have shape (",
                g.out_channels, ",), got ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), "fusedops: ", bias_name, " dtype ",
                dtype_name(bias->scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
    check_same_device(*bias, input, bias_name, "input");
  }
  set_conv_window(g, stride, padding, dilation);
  return g;
}

ConvGeometry depthwise_backward_geometry(const at::Tensor& grad_output, const at::Tensor& input,
                                         const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                                         at::IntArrayRef dilation) {
  const ConvGeometry g = depthwise_geometry(input, weight, c10::nullopt, stride, padding, dilation);
  check_same_device(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type(), "fusedops: grad_output dtype ",
              dtype_name(grad_output.scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({g.batch, g.out_channels, g.out_h, g.out_w}),
              "fusedops: grad_output has shape ", grad_output.sizes(), " but the convolution's output has shape (",
              g.batch, ", ", g.out_channels, ", ", g.out_h, ", ", g.out_w, ")");
  return g;
}

bool transposed_as_forward(const ConvGeometry& g, ConvGeometry* transposed) {
  if (g.stride_h != 1 || g.stride_w != 1 || g.multiplier != 1) return false;
  const int64_t ph = dilated_extent(g.kernel_h, g.dilation_h) - 1 - g.pad_h;
  const int64_t pw = dilated_extent(g.kernel_w, g.dilation_w) - 1 - g.pad_w;
  if (ph < 0 || pw < 0) return false;
  ConvGeometry& t = *transposed;
  t = g;
  t.in_h = g.out_h;
  t.in_w = g.out_w;
  t.pad_h = ph;
  t.pad_w = pw;
  // g's input size again: grad_output padded by `extent - 1 - pad` on each side, at stride 1.
  t.out_h = conv_output_size(t.in_h, t.kernel_h, 1, t.pad_h, t.dilation_h);
  t.out_w = conv_output_size(t.in_w, t.kernel_w, 1, t.pad_w, t.dilation_w);
  return true;
}

DepthwiseGrads::DepthwiseGrads(const at::Tensor& input_, const at::Tensor& weight_, const ConvGeometry& g,
                               at::MemoryFormat fmt, std::array<bool, 3> output_mask) {
  if (output_mask[0]) input = at::empty(input_.sizes(), input_.options().memory_format(fmt));
  if (output_mask[1]) weight = at::empty(weight_.sizes(), weight_.options());
  if (output_mask[2]) bias = at::empty({g.out_channels}, weight_.options());
}

void DepthwiseGrads::zero() {
  for (at::Tensor* t : {&input, &weight, &bias})
    if (t->defined()) t->zero_();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> DepthwiseGrads::result(const at::TensorOptions& options) const {
  auto or_empty = [&](const at::Tensor& t) { return t.defined() ? t : at::empty({0}, options); };
  return {or_empty(input), or_empty(weight), or_empty(bias)};
}

}  // namespace fusedops
