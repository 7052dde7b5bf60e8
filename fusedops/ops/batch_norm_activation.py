"""The training path's batch norm + activation: fake kernels of its three internal ops.

Schemas: csrc/batch_norm_activation.cpp; CPU kernels: csrc/cpu/batch_norm_activation.cpp. The blocks' fused training
path (fusedops/nn/training.py) calls them on CPU tensors; on other devices the blocks train through their
submodules, i.e. through ATen's batch norm.

* ``_batch_norm_activation(input, weight, bias, running_mean, running_var, momentum, eps, activation)`` ->
  ``(activation(batch_norm(input)), save_mean, save_invstd)`` with batch statistics, the running statistics moved
  once (as ``torch.ops.aten.native_batch_norm`` in training);
* ``_batch_norm_activation_apply(input, weight, bias, mean, invstd, activation)``: the same output from saved
  statistics, bit for bit (the backward's recomputation);
* ``_batch_norm_activation_backward(grad_output, input, weight, bias, mean, invstd, activation, output_mask)`` ->
  ``(grad_input, grad_weight, grad_bias)``;
* ``_batch_norm_activation_`` and ``_batch_norm_activation_backward_``: the same in place, over the input (returns the
  statistics) and over grad_output (returns grad_weight and grad_bias);
* ``_batch_norm_activation_depthwise(input, weight, bias, running_mean, running_var, momentum, eps, activation,
  dw_weight, stride, padding, dilation)`` -> ``(depthwise_conv2d(activation(batch_norm(input)), dw_weight), save_mean,
  save_invstd)``: the normalised map never written (channels-last output);
* ``_batch_norm_activation_depthwise_backward(grad_output, input, weight, bias, mean, invstd, activation, dw_weight,
  stride, padding, dilation, output_mask)`` -> ``(grad of the depthwise input, grad_dw_weight)``, those of
  output_mask: the normalised map recomputed band by band, never written.
"""

import torch

from .. import _extension
from . import _geometry
from ._args import empty_like_format

NAME = "_batch_norm_activation"
APPLY_NAME = "_batch_norm_activation_apply"
BACKWARD_NAME = "_batch_norm_activation_backward"
IN_PLACE_NAME = "_batch_norm_activation_"
IN_PLACE_BACKWARD_NAME = "_batch_norm_activation_backward_"
DEPTHWISE_NAME = "_batch_norm_activation_depthwise"
DEPTHWISE_BACKWARD_NAME = "_batch_norm_activation_depthwise_backward"


def _statistics_dtype(input):
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _like(input):
    return empty_like_format(input, input.shape)


def _fake(input, weight, bias, running_mean, running_var, momentum, eps, activation):
    C = input.shape[1]
    stats = input.new_empty(C, dtype=_statistics_dtype(input))
    return _like(input), stats, torch.empty_like(stats)


def _fake_apply(input, weight, bias, mean, invstd, activation):
    return _like(input)


def _fake_backward(grad_output, input, weight, bias, mean, invstd, activation, output_mask):
    grad_input = _like(input) if output_mask[0] else None
    grad_weight = torch.empty_like(weight) if output_mask[1] and weight is not None else None
    grad_bias = torch.empty_like(bias) if output_mask[2] and bias is not None else None
    return grad_input, grad_weight, grad_bias


def _fake_in_place(input, weight, bias, running_mean, running_var, momentum, eps, activation):
    return _fake(input, weight, bias, running_mean, running_var, momentum, eps, activation)[1:]


def _fake_backward_in_place(grad_output, input, weight, bias, mean, invstd, activation, output_mask):
    return _fake_backward(grad_output, input, weight, bias, mean, invstd, activation, [False, *output_mask])[1:]


def _fake_depthwise(input, weight, bias, running_mean, running_var, momentum, eps, activation, dw_weight, stride,
                    padding, dilation):
    _geometry.check_depthwise(input, dw_weight, None, stride, padding, dilation, weight_name="dw_weight")
    shape = _geometry.depthwise_output_shape(input, dw_weight, stride, padding, dilation)
    out = input.new_empty(shape).contiguous(memory_format=torch.channels_last)
    return (out, *_fake(input, weight, bias, running_mean, running_var, momentum, eps, activation)[1:])


def _fake_depthwise_backward(grad_output, input, weight, bias, mean, invstd, activation, dw_weight, stride, padding,
                             dilation, output_mask):
    _geometry.check_depthwise_backward(grad_output, input, dw_weight, stride, padding, dilation)
    grad_input = input.new_empty(input.shape).contiguous(memory_format=torch.channels_last) if output_mask[0] else None
    grad_weight = torch.empty_like(dw_weight, memory_format=torch.contiguous_format) if output_mask[1] else None
    return grad_input, grad_weight


if _extension.has_ops():
    for _name, _fn in ((NAME, _fake), (APPLY_NAME, _fake_apply), (BACKWARD_NAME, _fake_backward),
                       (IN_PLACE_NAME, _fake_in_place), (IN_PLACE_BACKWARD_NAME, _fake_backward_in_place),
                       (DEPTHWISE_NAME, _fake_depthwise), (DEPTHWISE_BACKWARD_NAME, _fake_depthwise_backward)):
        torch.library.register_fake(f"fusedops::{_name}")(_fn)
