// Schemas of the training path's batch norm + activation: batch statistics, normalisation and activation in one
// op, its backward, and the normalisation of saved statistics (the backward's recomputation of a stage's output).
// Kernels: csrc/cpu/batch_norm_activation.cpp; fake kernels, the other devices' implementation (ATen's batch norm
// and activation) and the blocks' training path that uses them: fusedops/ops/batch_norm_activation.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fusedops, m) {
  // activation(batch_norm(input, training=True)) for a 4-D input, and (save_mean, save_invstd) as
  // torch.ops.aten.native_batch_norm returns them: per-channel mean and 1 / sqrt(biased variance + eps) over
  // (N, H, W). running_mean / running_var (both or neither) move by `momentum` towards the mean and the unbiased
  // variance, exactly once. The output takes the input's memory format.
  m.def(
      "_batch_norm_activation(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float momentum, float eps, str activation) -> (Tensor, Tensor, Tensor)");
  // The output of _batch_norm_activation from its saved statistics: the same arithmetic, so the same bits.
  m.def(
      "_batch_norm_activation_apply(Tensor input, Tensor? weight, Tensor? bias, Tensor mean, Tensor invstd, "
      "str activation) -> Tensor");
  // (grad_input, grad_weight, grad_bias) of _batch_norm_activation, those of output_mask; the activation's
  // derivative is taken at the normalised input, recomputed from `input` and the saved statistics.
  m.def(
      "_batch_norm_activation_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, Tensor mean, "
      "Tensor invstd, str activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  // In place, for the training path's intermediates that nothing else reads: _batch_norm_activation writing its
  // output over its input (returns the statistics), and the backward writing grad_input over grad_output (returns
  // grad_weight and grad_bias). Overwriting the line just read spares the store's read of the destination from
  // memory. Both tensors must be dense (contiguous or channels_last), grad_output in the input's layout.
  m.def(
      "_batch_norm_activation_(Tensor(a!) input, Tensor? weight, Tensor? bias, Tensor(b!)? running_mean, "
      "Tensor(c!)? running_var, float momentum, float eps, str activation) -> (Tensor, Tensor)");
  m.def(
      "_batch_norm_activation_backward_(Tensor(a!) grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor mean, Tensor invstd, str activation, bool[2] output_mask) -> (Tensor, Tensor)");
  // _batch_norm_activation followed by fusedops::depthwise_conv2d (no bias) of its output, which is never written:
  // (depthwise output, save_mean, save_invstd). The training path's expansion -> batch norm -> activation ->
  // depthwise. The output is channels_last.
  m.def(
      "_batch_norm_activation_depthwise(Tensor input, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, float momentum, float eps, str activation, Tensor dw_weight, int[2] stride, "
      "int[2] padding, int[2] dilation) -> (Tensor, Tensor, Tensor)");
  // (grad of the depthwise convolution's input, grad of dw_weight) of _batch_norm_activation_depthwise, those of
  // output_mask: the depthwise backward, its input activation(batch_norm(input)) recomputed from the saved statistics
  // (the same bits) band by band, never written. The batch norm's own backward is _batch_norm_activation_backward's.
  // Kernel: csrc/cpu/depthwise_conv2d.cpp.
  m.def(
      "_batch_norm_activation_depthwise_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor mean, Tensor invstd, str activation, Tensor dw_weight, int[2] stride, int[2] padding, int[2] dilation, "
      "bool[2] output_mask) -> (Tensor, Tensor)");
}
