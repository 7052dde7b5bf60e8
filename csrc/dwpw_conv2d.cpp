// Schemas of fusedops::dwpw_conv2d and its backward. Argument checks: csrc/shared/dwpw.cpp; kernels:
// csrc/cpu/dwpw_conv2d.cpp, csrc/cuda/dwpw_conv2d.cu, the backward of both csrc/shared/dwpw_banded_backward.cpp;
// native autograd: csrc/autograd/dwpw_conv2d.cpp; fake kernels and the Triton mirror's autograd:
// fusedops/ops/dwpw_conv2d.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fusedops, m) {
  // act_out(F.conv2d(act_mid(depthwise_conv2d(input, dw_weight, dw_bias, stride, padding, dilation)),
  //                  pw_weight, pw_bias)) with dw_weight (C*multiplier, 1, kH, kW), pw_weight
  // (out_channels, C*multiplier, 1, 1); activations "none", "relu", "relu6", "hardswish" or "silu". The depthwise
  // output is never written to memory. The output takes the input's memory format. packed_weights, from
  // _dwpw_conv2d_pack_weights on these weights, saves the CPU kernel laying them out on every call (other backends
  // ignore it).
  m.def(
      "dwpw_conv2d(Tensor input, Tensor dw_weight, Tensor? dw_bias, Tensor pw_weight, Tensor? pw_bias, "
      "int[2] stride, int[2] padding, int[2] dilation, str mid_activation, str out_activation, "
      "Tensor? packed_weights=None) -> Tensor");
  // The weights of a dwpw_conv2d call (the same arguments) laid out as the CPU kernel reads them: a 1-D tensor of
  // the accumulation dtype, valid for convolutions of these channel counts, kernel size and dtype, in this build.
  // It holds a copy: later changes of the weights are not seen by calls that pass it.
  m.def(
      "_dwpw_conv2d_pack_weights(Tensor input, Tensor dw_weight, Tensor? dw_bias, Tensor pw_weight, "
      "Tensor? pw_bias, int[2] stride, int[2] padding, int[2] dilation, str mid_activation, str out_activation) "
      "-> Tensor");
  // Gradients (input, dw_weight, dw_bias, pw_weight, pw_bias) of dwpw_conv2d; output_mask says which are
  // wanted, unwanted ones come back empty. Recomputes the depthwise output band by band. `output`, the
  // forward's result, is optional: given (relu/relu6 output activations), the kernels may read the output
  // activation's derivative from it instead of recomputing the pointwise GEMM.
  m.def(
      "_dwpw_conv2d_backward(Tensor grad_output, Tensor input, Tensor dw_weight, Tensor? dw_bias, "
      "Tensor pw_weight, Tensor? pw_bias, int[2] stride, int[2] padding, int[2] dilation, str mid_activation, "
      "str out_activation, bool[5] output_mask, Tensor? output=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
