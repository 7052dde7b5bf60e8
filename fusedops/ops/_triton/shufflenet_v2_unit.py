"""Triton launchers of fusedops_triton::shufflenet_v2_unit and fusedops_triton::_shufflenet_v2_unit_backward.

Semantics: ``first, second = x1, branch(x2)`` (``x1, x2 = input.chunk(2, 1)``) or ``shortcut(input), branch(input)``
(with the shortcut's weights), interleaved: output channel ``2c`` is ``first``'s channel ``c``, ``2c + 1``
``second``'s; ``branch(x) = act(conv1x1(depthwise(act(conv1x1(x, expand_weight) + expand_bias), dw_weight) + dw_bias,
project_weight) + project_bias)``, ``shortcut(x) = act(conv1x1(depthwise(x, shortcut_dw_weight) + shortcut_dw_bias,
shortcut_pw_weight) + shortcut_pw_bias)``.

Forward: the branch's expand stage as a 1x1 convolution (cuBLAS/cuDNN through PyTorch) with its activation, then
the fused dwpw Triton kernel (``_dwpw_fwd_kernel``) for the depthwise and project stages, whose depthwise output
never leaves the chip; the shortcut through the same dwpw kernel. Each half is copied into its interleaved
channels of the output.

Backward: the output gradient's even channels are the input's first half's gradient (or go through the shortcut's
dwpw Triton backward), its odd channels go through the branch: the expanded map recomputed from the input, the
depthwise and project stages through the dwpw Triton backward (which recomputes the depthwise output band by
band), the expand stage through PyTorch's 1x1 convolution backward: the native backward's formula
(csrc/shared/shufflenet_v2_unit.cpp).
"""

import torch
import torch.nn.functional as F

from .. import _args, _geometry
from ..activations import activation, activation_backward
from .dwpw_conv2d import dwpw_conv2d_backward, dwpw_conv2d_forward


def shufflenet_v2_unit_forward(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                               shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias, stride,
                               padding, dilation, act, packed_weights=None):
    # packed_weights is the CPU kernel's copy of the weights: not needed here.
    # The op's own checks, so that a direct call fails as on every other backend.
    _geometry.check_shufflenet_v2_unit(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                       project_bias, shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight,
                                       shortcut_pw_bias, stride, padding, dilation, act)
    n, _, out_h, out_w = shape = _geometry.shufflenet_v2_unit_output_shape(input, dw_weight, project_weight, stride,
                                                                           padding, dilation)
    out = _args.empty_like_format(input, shape)
    if out.numel() == 0:
        return out
    if shortcut_dw_weight is None:
        first, x = input.chunk(2, 1)
    else:
        x = input
        first = dwpw_conv2d_forward(input, shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias,
                                    stride, padding, dilation, "none", act)
    hidden = activation(F.conv2d(x, expand_weight, expand_bias), act)
    second = dwpw_conv2d_forward(hidden, dw_weight, dw_bias, project_weight, project_bias, stride, padding, dilation,
                                 "none", act)
    # Channel 2c of the output is first's channel c, 2c + 1 second's.
    halves = out.view(n, shape[1] // 2, 2, out_h, out_w)
    halves[:, :, 0].copy_(first)
    halves[:, :, 1].copy_(second)
    return out


def shufflenet_v2_unit_backward(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                project_bias, shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight,
                                shortcut_pw_bias, stride, padding, dilation, act, output_mask):
    _geometry.check_shufflenet_v2_unit_backward(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias,
                                                project_weight, project_bias, shortcut_dw_weight, shortcut_dw_bias,
                                                shortcut_pw_weight, shortcut_pw_bias, stride, padding, dilation, act)
    weights = (expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, shortcut_dw_weight,
               shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias)
    # Biases not given have no gradient: empty, as the native backward returns them.
    mask = [bool(m) and (i == 0 or weights[i - 1] is not None) for i, m in enumerate(output_mask)]
    if input.dtype in (torch.float16, torch.bfloat16):
        acc = torch.float32
        # Half and bfloat16 recompute in float, as the forward computes (its expanded map is not rounded to the
        # input's dtype before the depthwise stage), then round the gradients once.
        up = [None if t is None else t.to(acc) for t in (grad_output, input) + weights]
        grads = shufflenet_v2_unit_backward(*up, stride, padding, dilation, act, mask)
        return tuple(g.to(input.dtype) for g in grads)
    empty = input.new_empty(0)
    shortcut = shortcut_dw_weight is not None
    channels = input.shape[1]
    grad_first, grad_second = grad_output[:, 0::2], grad_output[:, 1::2]

    # The branch: its expanded map recomputed from its input, the depthwise and project stages through the dwpw
    # backward, the expand stage through the 1x1 convolution's.
    x = input if shortcut else input[:, channels // 2:]
    need_hidden = mask[0] or mask[1] or mask[2]
    grad_x = None
    gew, geb, gdw, gdwb, gpw, gpb = (empty,) * 6
    if any(mask[:7]):
        z = F.conv2d(x, expand_weight, expand_bias)
        hidden = activation(z, act)
        grad_hidden, gdw, gdwb, gpw, gpb = dwpw_conv2d_backward(
            grad_second, hidden, dw_weight, dw_bias, project_weight, project_bias, stride, padding, dilation, "none",
            act, [need_hidden, mask[3], mask[4], mask[5], mask[6]])
        del hidden
        if need_hidden:
            grad_z = activation_backward(grad_hidden, z, act)
            del z, grad_hidden
            gi, gw, gb = torch.ops.aten.convolution_backward(
                grad_z, x, expand_weight, [expand_weight.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                [mask[0], mask[1], mask[2]])
            grad_x = gi if mask[0] else None
            gew = gw if mask[1] else empty
            geb = gb if mask[2] else empty

    # The other half: the input's first half, or the shortcut.
    shortcut_grads = (empty,) * 4
    grad_input = empty
    if shortcut:
        gsx, *shortcut_grads = dwpw_conv2d_backward(
            grad_first, input, shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias, stride,
            padding, dilation, "none", act, mask[:1] + mask[7:])
        if mask[0]:
            grad_input = _args.empty_like_format(input, input.shape)
            torch.add(gsx, grad_x, out=grad_input)
    elif mask[0]:
        grad_input = _args.empty_like_format(input, input.shape)
        grad_input[:, :channels // 2].copy_(grad_first)
        grad_input[:, channels // 2:].copy_(grad_x)
    return (grad_input, gew, geb, gdw, gdwb, gpw, gpb, *shortcut_grads)
