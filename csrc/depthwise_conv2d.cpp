// Schemas of fusedops::depthwise_conv2d and its backward. Argument checks: csrc/shared/conv_geometry.cpp;
// kernels: csrc/cpu/depthwise_conv2d.cpp, csrc/cuda/depthwise_conv2d.cu; native autograd:
// csrc/autograd/depthwise_conv2d.cpp; fake kernels and the Triton mirror's autograd:
// fusedops/ops/depthwise_conv2d.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fusedops, m) {
  // Exactly F.conv2d(input, weight, bias, stride, padding, dilation, groups=input.size(1)), with
  // weight (C*multiplier, 1, kH, kW). The output takes the input's memory format.
  m.def(
      "depthwise_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation) -> Tensor");
  // Gradients (input, weight, bias) of depthwise_conv2d; output_mask says which are wanted. Unwanted
  // gradients come back as empty tensors.
  m.def(
      "_depthwise_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[2] padding, int[2] dilation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}
