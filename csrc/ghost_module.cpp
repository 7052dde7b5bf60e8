// Schemas of fusedops::ghost_module and its backward. Argument checks, the composed forward and the backward of
// every backend: csrc/shared/ghost_module.cpp; kernels: csrc/cpu/ghost_module.cpp, csrc/cuda/ghost_module.cu; native
// autograd: csrc/autograd/ghost_module.cpp; fake kernels and the Triton mirror's autograd:
// fusedops/ops/ghost_module.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fusedops, m) {
  // GhostNet's Ghost module with its batch norms folded into the weights:
  //   x1     = act(conv1x1(input, primary_weight, primary_bias, stride))
  //   x2     = act(depthwise_conv2d(x1, cheap_weight, cheap_bias, padding = (kH // 2, kW // 2)))
  //   output = cat([x1, x2], 1)[:, :out_channels] [+ residual]
  // with primary_weight (init, C, 1, 1), cheap_weight (init * multiplier, 1, kH, kW) (kH, kW odd), init <=
  // out_channels <= init * (1 + multiplier); activation "none", "relu", "relu6", "hardswish" or "silu". Both halves
  // are written straight into their channels of the output (no concatenation, no slice); the output takes the
  // input's memory format. packed_weights, from _ghost_module_pack_weights on these weights, saves the CPU kernel
  // packing them on every call (other backends ignore it).
  m.def(
      "ghost_module(Tensor input, Tensor primary_weight, Tensor? primary_bias, Tensor cheap_weight, "
      "Tensor? cheap_bias, Tensor? residual, int out_channels, int[2] stride, str activation, "
      "Tensor? packed_weights=None) -> Tensor");
  // The weights of a ghost_module call (the same arguments) packed as the CPU kernel reads them: a 1-D tensor of
  // the accumulation dtype, valid for modules of these channel counts, kernel size and dtype, in this build. It
  // holds a copy: later changes of the weights are not seen by calls that pass it.
  m.def(
      "_ghost_module_pack_weights(Tensor input, Tensor primary_weight, Tensor? primary_bias, Tensor cheap_weight, "
      "Tensor? cheap_bias, Tensor? residual, int out_channels, int[2] stride, str activation) -> Tensor");
  // Gradients (input, primary_weight, primary_bias, cheap_weight, cheap_bias) of ghost_module (the residual's is
  // grad_output itself); output_mask says which are wanted, unwanted ones come back empty. Recomputes the primary
  // half from the input.
  m.def(
      "_ghost_module_backward(Tensor grad_output, Tensor input, Tensor primary_weight, Tensor? primary_bias, "
      "Tensor cheap_weight, Tensor? cheap_bias, int out_channels, int[2] stride, str activation, "
      "bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // ghost_module (no residual), then a depthwise convolution of its output: dw_weight (out_channels, 1, kH, kW),
  // odd kH and kW, padding (kH // 2, kW // 2), dw_stride, no activation (GhostNet's stride-2 bottleneck from its
  // first Ghost module through its depthwise stage, batch norms folded). Inference only (no autograd) and CPU only:
  // the module's output rows are computed into a per-thread tile and read there by the depthwise convolution,
  // never written to memory. fusedops.nn.GhostBottleneck calls it where it applies and runs ghost_module then
  // depthwise_conv2d elsewhere. packed_weights: _ghost_module_pack_weights of the module's arguments.
  m.def(
      "_ghost_module_depthwise(Tensor input, Tensor primary_weight, Tensor? primary_bias, Tensor cheap_weight, "
      "Tensor? cheap_bias, int out_channels, int[2] stride, str activation, Tensor dw_weight, Tensor? dw_bias, "
      "int[2] dw_stride, Tensor? packed_weights=None) -> Tensor");
  // ghost_module(input * gate, ...) with gate = se_gate(conv1x1(se_activation(conv1x1(mean over the input's pixels,
  // se_reduce_weight, se_reduce_bias)), se_expand_weight, se_expand_bias)) per image and channel: GhostNet's
  // squeeze-excitation and the Ghost module after it (se_reduce_weight (S, C, 1, 1), se_expand_weight (C, S, 1, 1),
  // se_activation one of the activations, se_gate "hardsigmoid" or "sigmoid"). Inference only (no autograd) and
  // CPU only: the gates scale the module's primary GEMM input on its way in, the gated input is never written.
  // fusedops.nn.GhostBottleneck calls it where it applies. packed_weights: _ghost_module_pack_weights of the
  // module's arguments.
  m.def(
      "_ghost_module_excited(Tensor input, Tensor se_reduce_weight, Tensor? se_reduce_bias, Tensor se_expand_weight, "
      "Tensor? se_expand_bias, str se_activation, str se_gate, Tensor primary_weight, Tensor? primary_bias, "
      "Tensor cheap_weight, Tensor? cheap_bias, Tensor? residual, int out_channels, int[2] stride, str activation, "
      "Tensor? packed_weights=None) -> Tensor");
  // GhostNet's bottleneck without squeeze-excitation, batch norms folded: ghost_module(x, second_primary_weight,
  // second_primary_bias, second_cheap_weight, second_cheap_bias, residual, out_channels, 1, second_activation) of
  // x = ghost_module(input, primary_weight, primary_bias, cheap_weight, cheap_bias, None, mid_channels, 1,
  // activation), then, where dw_weight is given, x = depthwise_conv2d(x, dw_weight (mid_channels, 1, kH, kW; odd kH
  // and kW), dw_bias, dw_stride, padding (kH // 2, kW // 2)) (no activation). The caller passes its shortcut as
  // residual (the input itself for an identity one). Inference only (no autograd), CPU and CUDA: on the CPU everything
  // between the input and the output is computed into per-thread tiles, never written to memory; on CUDA the
  // depthwise stage is computed inside the second module's kernel. fusedops.nn.GhostBottleneck calls it where it
  // applies. packed_weights, second_packed_weights: _ghost_module_pack_weights of each module's
  // arguments.
  m.def(
      "_ghost_bottleneck(Tensor input, Tensor primary_weight, Tensor? primary_bias, Tensor cheap_weight, "
      "Tensor? cheap_bias, int mid_channels, str activation, Tensor? dw_weight, Tensor? dw_bias, int[2] dw_stride, "
      "Tensor second_primary_weight, Tensor? second_primary_bias, Tensor second_cheap_weight, "
      "Tensor? second_cheap_bias, int out_channels, str second_activation, Tensor? residual, "
      "Tensor? packed_weights=None, Tensor? second_packed_weights=None) -> Tensor");
}
