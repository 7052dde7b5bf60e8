// Schemas of fusedops::shufflenet_v2_unit and its backward. Argument checks, the composed forward and the backward
// of every backend: csrc/shared/shufflenet_v2_unit.cpp; kernels: csrc/cpu/shufflenet_v2_unit.cpp,
// csrc/cuda/shufflenet_v2_unit.cu; native autograd: csrc/autograd/shufflenet_v2_unit.cpp; fake kernels and the
// Triton mirror's autograd: fusedops/ops/shufflenet_v2_unit.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fusedops, m) {
  // ShuffleNetV2's unit with its batch norms folded into the weights:
  //   branch(x)   = act(conv1x1(depthwise_conv2d(act(conv1x1(x, expand_weight, expand_bias)), dw_weight, dw_bias,
  //                             stride, padding, dilation), project_weight, project_bias))
  //   shortcut(x) = act(conv1x1(depthwise_conv2d(x, shortcut_dw_weight, shortcut_dw_bias, stride, padding,
  //                             dilation), shortcut_pw_weight, shortcut_pw_bias))
  //   without the shortcut's weights (the stride-1 unit): x1, x2 = input.chunk(2, 1); first, second = x1, branch(x2)
  //   with them (the down-sampling unit):                  first, second = shortcut(input), branch(input)
  //   output      = channel_shuffle(cat([first, second], 1), 2): output channel 2c is first's channel c, 2c + 1
  //                 second's
  // with expand_weight (M, C_b, 1, 1) (C_b = C / 2 without the shortcut, C with it), dw_weight (M, 1, kH, kW),
  // project_weight (B, M, 1, 1), shortcut_dw_weight (C, 1, kH, kW), shortcut_pw_weight (B, C, 1, 1); without the
  // shortcut B = C / 2 and the depthwise stage keeps the map's size (ShuffleNetV2 has M = B). No activation follows a
  // depthwise stage (as in ShuffleNetV2); activation is "none", "relu", "relu6", "hardswish" or "silu". Both halves are
  // written straight into their interleaved channels of the output (no concatenation, no shuffle; the branch's expanded
  // and depthwise maps never reach memory on the CPU); the output takes the input's memory format. packed_weights, from
  // _shufflenet_v2_unit_pack_weights on these weights, saves the CPU kernel packing the branch's weights on every call
  // (other backends ignore it).
  m.def(
      "shufflenet_v2_unit(Tensor input, Tensor expand_weight, Tensor? expand_bias, Tensor dw_weight, "
      "Tensor? dw_bias, Tensor project_weight, Tensor? project_bias, Tensor? shortcut_dw_weight, "
      "Tensor? shortcut_dw_bias, Tensor? shortcut_pw_weight, Tensor? shortcut_pw_bias, int[2] stride, "
      "int[2] padding, int[2] dilation, str activation, Tensor? packed_weights=None) -> Tensor");
  // The branch's weights of a shufflenet_v2_unit call (the same arguments) packed as the CPU kernel reads them: a
  // 1-D tensor of the accumulation dtype, valid for units of these channel counts, kernel size and dtype, in this
  // build. It holds a copy: later changes of the weights are not seen by calls that pass it.
  m.def(
      "_shufflenet_v2_unit_pack_weights(Tensor input, Tensor expand_weight, Tensor? expand_bias, Tensor dw_weight, "
      "Tensor? dw_bias, Tensor project_weight, Tensor? project_bias, Tensor? shortcut_dw_weight, "
      "Tensor? shortcut_dw_bias, Tensor? shortcut_pw_weight, Tensor? shortcut_pw_bias, int[2] stride, "
      "int[2] padding, int[2] dilation, str activation) -> Tensor");
  // Gradients (input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
  // shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias) of shufflenet_v2_unit;
  // output_mask says which are wanted, unwanted ones come back empty. Recomputes the branch's maps from the input.
  m.def(
      "_shufflenet_v2_unit_backward(Tensor grad_output, Tensor input, Tensor expand_weight, Tensor? expand_bias, "
      "Tensor dw_weight, Tensor? dw_bias, Tensor project_weight, Tensor? project_bias, Tensor? shortcut_dw_weight, "
      "Tensor? shortcut_dw_bias, Tensor? shortcut_pw_weight, Tensor? shortcut_pw_bias, int[2] stride, "
      "int[2] padding, int[2] dilation, str activation, bool[11] output_mask) -> "
      "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
