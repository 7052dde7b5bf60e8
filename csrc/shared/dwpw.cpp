// Argument checks of fusedops::dwpw_conv2d (dwpw_geometry), shared by its schema's backends. Declared in
// fusedops/dwpw.h.
#include "fusedops/dwpw.h"

#include <ATen/ATen.h>

namespace fusedops {

DwpwGeometry dwpw_geometry(const at::Tensor& input, const at::Tensor& dw_weight,
                           const c10::optional<at::Tensor>& dw_bias, const at::Tensor& pw_weight,
                           const c10::optional<at::Tensor>& pw_bias, at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation, std::string_view mid_activation, std::string_view out_activation) {
  DwpwGeometry g;
  g.dw = depthwise_geometry(input, dw_weight, dw_bias, stride, padding, dilation, "dw_weight", "dw_bias");
  const int64_t k = g.dw.out_channels;
  TORCH_CHECK(pw_weight.dim() == 4 && pw_weight.size(1) == k && pw_weight.size(2) == 1 && pw_weight.size(3) == 1 &&
                  pw_weight.size(0) > 0,
              "fusedops: pw_weight must have shape (out_channels, ", k, ", 1, 1) (", k,
              " = the depthwise output channels), got ", pw_weight.sizes());
  TORCH_CHECK(pw_weight.scalar_type() == input.scalar_type(), "fusedops: pw_weight dtype ",
              dtype_name(pw_weight.scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
  check_same_device(pw_weight, input, "pw_weight", "input");
  g.out_channels = pw_weight.size(0);
  if (pw_bias.has_value() && pw_bias->defined()) {
    TORCH_CHECK(pw_bias->dim() == 1 && pw_bias->size(0) == g.out_channels, "fusedops: pw_bias must have shape (",
                g.out_channels, ",), got ", pw_bias->sizes());
    TORCH_CHECK(pw_bias->scalar_type() == input.scalar_type(), "fusedops: pw_bias dtype ",
                dtype_name(pw_bias->scalar_type()), " does not match input dtype ", dtype_name(input.scalar_type()));
    check_same_device(*pw_bias, input, "pw_bias", "input");
  }
  g.mid = parse_activation(mid_activation, "mid_activation");
  g.out = parse_activation(out_activation, "out_activation");
  return g;
}

}  // namespace fusedops
