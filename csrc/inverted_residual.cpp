// Schemas of fusedops::inverted_residual and its backward. Argument checks, the composed forward and the backward
// of every backend: csrc/shared/inverted_residual.cpp; kernels: csrc/cpu/inverted_residual.cpp,
// csrc/cuda/inverted_residual.cu; native autograd: csrc/autograd/inverted_residual.cpp; fake kernels and the
// Triton mirror's autograd: fusedops/ops/inverted_residual.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fusedops, m) {
  // The inverted-residual block of MobileNetV2/V3 and EfficientNet with its batch norms folded into the weights:
  //   hidden = act(conv1x1(input, expand_weight, expand_bias))   (hidden = input without expand_weight)
  //   mid    = act(depthwise_conv2d(hidden, dw_weight, dw_bias, stride, padding, dilation))
  //   mid    = mid * se_gate(conv1x1(se_activation(conv1x1(mean_hw(mid), se_reduce_weight, se_reduce_bias)),
  //                                  se_expand_weight, se_expand_bias))   (squeeze-excitation, with se_reduce_weight)
  //   output = conv1x1(mid, project_weight, project_bias) [+ input when residual]
  // with expand_weight (hidden, C, 1, 1), dw_weight (hidden, 1, kH, kW), se_reduce_weight (S, hidden, 1, 1),
  // se_expand_weight (hidden, S, 1, 1), project_weight (C_out, hidden, 1, 1); activation and se_activation
  // "none", "relu", "relu6", "hardswish" or "silu"; se_gate "hardsigmoid" or "sigmoid". The expanded and
  // depthwise maps are never written to memory (with a squeeze-excitation, the depthwise map of one image is,
  // as the gate needs all of it). The output takes the input's memory format. packed_weights, from
  // _inverted_residual_pack_weights on these weights, saves the CPU kernel packing them on every call (other
  // backends ignore it).
  m.def(
      "inverted_residual(Tensor input, Tensor? expand_weight, Tensor? expand_bias, Tensor dw_weight, "
      "Tensor? dw_bias, Tensor project_weight, Tensor? project_bias, Tensor? se_reduce_weight, "
      "Tensor? se_reduce_bias, Tensor? se_expand_weight, Tensor? se_expand_bias, int[2] stride, int[2] padding, "
      "int[2] dilation, str activation, bool residual, str se_activation, str se_gate, "
      "Tensor? packed_weights=None) -> Tensor");
  // The weights of an inverted_residual call (the same arguments) packed as the CPU kernel reads them: a 1-D
  // tensor of the accumulation dtype, valid for blocks of these channel counts, kernel size and dtype, in this
  // build. It holds a copy: later changes of the weights are not seen by calls that pass it.
  m.def(
      "_inverted_residual_pack_weights(Tensor input, Tensor? expand_weight, Tensor? expand_bias, Tensor dw_weight, "
      "Tensor? dw_bias, Tensor project_weight, Tensor? project_bias, Tensor? se_reduce_weight, "
      "Tensor? se_reduce_bias, Tensor? se_expand_weight, Tensor? se_expand_bias, int[2] stride, int[2] padding, "
      "int[2] dilation, str activation, bool residual, str se_activation, str se_gate) -> Tensor");
  // Gradients (input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
  // se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias) of inverted_residual; output_mask says
  // which are wanted, unwanted ones come back empty. Recomputes the expanded and depthwise maps from the input.
  m.def(
      "_inverted_residual_backward(Tensor grad_output, Tensor input, Tensor? expand_weight, Tensor? expand_bias, "
      "Tensor dw_weight, Tensor? dw_bias, Tensor project_weight, Tensor? project_bias, Tensor? se_reduce_weight, "
      "Tensor? se_reduce_bias, Tensor? se_expand_weight, Tensor? se_expand_bias, int[2] stride, int[2] padding, "
      "int[2] dilation, str activation, bool residual, str se_activation, str se_gate, bool[11] output_mask) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
