"""Triton launchers of fusedops_triton::inverted_residual and fusedops_triton::_inverted_residual_backward.

Semantics: ``conv1x1(act(depthwise(act(conv1x1(input, expand_weight) + expand_bias), dw_weight) + dw_bias),
project_weight) + project_bias [+ input]``.

Forward: the expand stage as a 1x1 convolution (cuBLAS/cuDNN through PyTorch) with its activation, then the
fused dwpw Triton kernel (``_dwpw_fwd_kernel``) for the depthwise and project stages, whose depthwise output
never leaves the chip, then the residual add. The expanded map makes one round trip through memory.

Backward: the expanded map is recomputed from the input, the depthwise and project stages go through the dwpw
Triton backward (which recomputes the depthwise output band by band), the expand stage through PyTorch's 1x1
convolution backward: the native backward's formula (csrc/shared/inverted_residual.cpp).
"""

import torch
import torch.nn.functional as F

from .. import _geometry
from ..activations import activation
from .dwpw_conv2d import dwpw_conv2d_backward, dwpw_conv2d_forward

_ACTIVATION_BACKWARD = {
    "relu": lambda grad, z: torch.ops.aten.threshold_backward(grad, z, 0),
    "relu6": lambda grad, z: torch.ops.aten.hardtanh_backward(grad, z, 0, 6),
    "hardswish": lambda grad, z: torch.ops.aten.hardswish_backward(grad, z),
}


def inverted_residual_forward(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                              stride, padding, dilation, act, residual, packed_weights=None):
    # packed_weights is the CPU kernel's copy of the weights: not needed here.
    # The op's own checks, so that a direct call fails as on every other backend.
    _geometry.check_inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                      project_bias, stride, padding, dilation, act, residual)
    hidden = input if expand_weight is None else activation(F.conv2d(input, expand_weight, expand_bias), act)
    out = dwpw_conv2d_forward(hidden, dw_weight, dw_bias, project_weight, project_bias, stride, padding, dilation, act,
                              "none")
    if residual:
        out += input
    return out


def inverted_residual_backward(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                               project_bias, stride, padding, dilation, act, residual, output_mask):
    _geometry.check_inverted_residual_backward(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias,
                                               project_weight, project_bias, stride, padding, dilation, act, residual)
    if input.dtype in (torch.float16, torch.bfloat16):
        acc = torch.float32
        # Half and bfloat16 recompute in float, as the forward computes (its expanded map is not rounded to the
        # input's dtype before the depthwise stage), then round the gradients once.
        up = [None if t is None else t.to(acc) for t in (grad_output, input, expand_weight, expand_bias, dw_weight,
                                                          dw_bias, project_weight, project_bias)]
        grads = inverted_residual_backward(*up, stride, padding, dilation, act, residual, output_mask)
        return tuple(g.to(input.dtype) for g in grads)
    expand = expand_weight is not None
    z = F.conv2d(input, expand_weight, expand_bias) if expand else None
    hidden = activation(z, act) if expand else input
    need_hidden = output_mask[0] or (expand and (output_mask[1] or output_mask[2]))
    grad_hidden, gdw, gdwb, gpw, gpb = dwpw_conv2d_backward(
        grad_output, hidden, dw_weight, dw_bias, project_weight, project_bias, stride, padding, dilation, act, "none",
        [need_hidden, output_mask[3], output_mask[4], output_mask[5], output_mask[6]])
    del hidden
    empty = input.new_empty(0)
    grad_input, gew, geb = empty, empty, empty
    if expand and need_hidden:
        grad_z = _ACTIVATION_BACKWARD[act](grad_hidden, z) if act != "none" else grad_hidden
        del z, grad_hidden
        gi, gw, gb = torch.ops.aten.convolution_backward(
            grad_z, input, expand_weight, [expand_weight.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [output_mask[0], output_mask[1], output_mask[2] and expand_bias is not None])
        grad_input = gi if output_mask[0] else empty
        gew = gw if output_mask[1] else empty
        geb = gb if output_mask[2] and expand_bias is not None else empty
    elif output_mask[0]:
        grad_input = grad_hidden
    if output_mask[0] and residual:
        grad_input = grad_input + grad_output
    if output_mask[0]:
        grad_input = grad_input.contiguous(memory_format=torch._prims_common.suggest_memory_format(input))
    return grad_input, gew, geb, gdw, gdwb, gpw, gpb
