"""Triton launchers of fusedops_triton::ghost_module and fusedops_triton::_ghost_module_backward.

Semantics: ``cat([x1, act(depthwise(x1, cheap_weight) + cheap_bias)], 1)[:, :out_channels] [+ residual]`` with
``x1 = act(conv1x1(input, primary_weight, stride) + primary_bias)``.

Forward: the primary half as a 1x1 convolution (cuBLAS/cuDNN through PyTorch) with its activation, stored into the
output's first channels; the cheap half's contributed channels through the depthwise Triton kernel
(``_depthwise_fwd_kernel``) on the primary half's source channels, activated and stored into the output's other
channels. Backward: the native formula (ghost_module_backward_recomputed, csrc/shared/ghost_module.cpp), with the
depthwise Triton backward.
"""

import torch
import torch.nn.functional as F

from torch._prims_common import suggest_memory_format

from .. import _geometry
from ..activations import activation, activation_backward
from .depthwise_conv2d import depthwise_conv2d_backward, depthwise_conv2d_forward


def _cheap_sources(primary_weight, cheap_weight, out_channels):
    """(channels of the primary half the kept cheap channels read, the depthwise filters that compute them)."""
    init = primary_weight.shape[0]
    multiplier = cheap_weight.shape[0] // init
    sources = -(-(out_channels - init) // multiplier)
    return sources, sources * multiplier


def ghost_module_forward(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels,
                         stride, act, packed_weights=None):
    # packed_weights is the CPU kernel's copy of the weights: not needed here.
    # The op's own checks, so that a direct call fails as on every other backend.
    _geometry.check_ghost_module(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels,
                                 stride, act)
    init = primary_weight.shape[0]
    shape = _geometry.ghost_module_output_shape(input, out_channels, stride)
    out = torch.empty(shape, dtype=input.dtype, device=input.device,
                      memory_format=suggest_memory_format(input))
    if out.numel() == 0:
        return out
    x1 = activation(F.conv2d(input, primary_weight, primary_bias, tuple(stride)), act)
    out[:, :init] = x1
    if out_channels > init:
        sources, filters = _cheap_sources(primary_weight, cheap_weight, out_channels)
        kh, kw = cheap_weight.shape[2:]
        x2 = depthwise_conv2d_forward(x1[:, :sources], cheap_weight[:filters],
                                      None if cheap_bias is None else cheap_bias[:filters], (1, 1),
                                      (kh // 2, kw // 2), (1, 1))
        out[:, init:] = activation(x2[:, :out_channels - init], act)
    if residual is not None:
        out += residual
    return out


def ghost_module_backward(grad_output, input, primary_weight, primary_bias, cheap_weight, cheap_bias, out_channels,
                          stride, act, output_mask):
    _geometry.check_ghost_module_backward(grad_output, input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                          out_channels, stride, act)
    if input.dtype in (torch.float16, torch.bfloat16):
        # Half and bfloat16 recompute in float, as the native backward, then round the gradients once.
        up = [None if t is None else t.float() for t in (grad_output, input, primary_weight, primary_bias,
                                                         cheap_weight, cheap_bias)]
        grads = ghost_module_backward(*up, out_channels, stride, act, output_mask)
        return tuple(g.to(input.dtype) for g in grads)
    empty = input.new_empty(0)
    init = primary_weight.shape[0]
    want_primary = any(output_mask[:3])
    z1 = F.conv2d(input, primary_weight, primary_bias, tuple(stride))
    x1 = activation(z1, act)
    grad_x1 = grad_output[:, :init].clone(memory_format=suggest_memory_format(input)) if want_primary else None
    grad_cw = torch.zeros_like(cheap_weight) if output_mask[3] else empty
    grad_cb = torch.zeros_like(cheap_bias) if output_mask[4] and cheap_bias is not None else empty
    if out_channels > init and (want_primary or output_mask[3] or output_mask[4]):
        sources, filters = _cheap_sources(primary_weight, cheap_weight, out_channels)
        kh, kw = cheap_weight.shape[2:]
        padding = (kh // 2, kw // 2)
        weight = cheap_weight[:filters]
        z2 = depthwise_conv2d_forward(x1[:, :sources], weight, None if cheap_bias is None else cheap_bias[:filters],
                                      (1, 1), padding, (1, 1))
        # The filters past the output's last channel (at most multiplier - 1) get no gradient: zeros.
        grad_x2 = torch.zeros_like(z2)
        grad_x2[:, :out_channels - init] = grad_output[:, init:]
        grad_z2 = activation_backward(grad_x2, z2, act)
        gs, gw, gb = depthwise_conv2d_backward(grad_z2, x1[:, :sources], weight, (1, 1), padding, (1, 1),
                                               [want_primary, output_mask[3],
                                                output_mask[4] and cheap_bias is not None])
        if want_primary:
            grad_x1[:, :sources] += gs
        if output_mask[3]:
            grad_cw[:filters] = gw
        if output_mask[4] and cheap_bias is not None:
            grad_cb[:filters] = gb
    grad_input, grad_pw, grad_pb = empty, empty, empty
    if want_primary:
        grad_z1 = activation_backward(grad_x1, z1, act)
        gi, gw, gb = torch.ops.aten.convolution_backward(
            grad_z1, input, primary_weight, [init], list(stride), [0, 0], [1, 1], False, [0, 0], 1,
            [output_mask[0], output_mask[1], output_mask[2] and primary_bias is not None])
        grad_input = gi.contiguous(memory_format=suggest_memory_format(input)) if output_mask[0] else empty
        grad_pw = gw.contiguous() if output_mask[1] else empty
        grad_pb = gb if output_mask[2] and primary_bias is not None else empty
    return grad_input, grad_pw, grad_pb, grad_cw, grad_cb
