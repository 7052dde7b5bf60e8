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

from torch._prims_common import suggest_memory_format

from .. import _geometry
from ..activations import activation, activation_backward, gate
from .depthwise_conv2d import depthwise_conv2d_backward, depthwise_conv2d_forward
from .dwpw_conv2d import dwpw_conv2d_backward, dwpw_conv2d_forward

def inverted_residual_forward(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                              se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, stride, padding,
                              dilation, act, residual, se_act, se_gate, packed_weights=None):
    # packed_weights is the CPU kernel's copy of the weights: not needed here.
    # The op's own checks, so that a direct call fails as on every other backend.
    _geometry.check_inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                      project_bias, se_reduce_weight, se_reduce_bias, se_expand_weight,
                                      se_expand_bias, stride, padding, dilation, act, residual, se_act, se_gate)
    hidden = input if expand_weight is None else activation(F.conv2d(input, expand_weight, expand_bias), act)
    if se_reduce_weight is None:
        out = dwpw_conv2d_forward(hidden, dw_weight, dw_bias, project_weight, project_bias, stride, padding, dilation,
                                  act, "none")
    else:
        mid = activation(depthwise_conv2d_forward(hidden, dw_weight, dw_bias, stride, padding, dilation), act)
        mid = mid * _squeeze_excitation_gate(mid, se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias,
                                             se_act, se_gate)[:, :, None, None]
        out = F.conv2d(mid, project_weight, project_bias).contiguous(memory_format=suggest_memory_format(input))
    if residual:
        out += input
    return out


def _squeeze_excitation_gate(mid, reduce_weight, reduce_bias, expand_weight, expand_bias, se_act, se_gate):
    """The gate (N, C_hid) of the depthwise output `mid`: the native formula (squeeze_excitation_gate,
    csrc/shared/inverted_residual.cpp)."""
    squeezed = activation(F.linear(mid.mean((2, 3)), reduce_weight.flatten(1), reduce_bias), se_act)
    return gate(F.linear(squeezed, expand_weight.flatten(1), expand_bias), se_gate)


def inverted_residual_backward(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                               project_bias, se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias,
                               stride, padding, dilation, act, residual, se_act, se_gate, output_mask):
    _geometry.check_inverted_residual_backward(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias,
                                               project_weight, project_bias, se_reduce_weight, se_reduce_bias,
                                               se_expand_weight, se_expand_bias, stride, padding, dilation, act,
                                               residual, se_act, se_gate)
    weights = (expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, se_reduce_weight,
               se_reduce_bias, se_expand_weight, se_expand_bias)
    if input.dtype in (torch.float16, torch.bfloat16):
        acc = torch.float32
        # Half and bfloat16 recompute in float, as the forward computes (its expanded map is not rounded to the
        # input's dtype before the depthwise stage), then round the gradients once.
        up = [None if t is None else t.to(acc) for t in (grad_output, input) + weights]
        grads = inverted_residual_backward(*up, stride, padding, dilation, act, residual, se_act, se_gate,
                                           output_mask)
        return tuple(g.to(input.dtype) for g in grads)
    expand = expand_weight is not None
    z = F.conv2d(input, expand_weight, expand_bias) if expand else None
    hidden = activation(z, act) if expand else input
    need_hidden = output_mask[0] or (expand and (output_mask[1] or output_mask[2]))
    empty = input.new_empty(0)
    se_grads = (empty,) * 4
    if se_reduce_weight is None:
        grad_hidden, gdw, gdwb, gpw, gpb = dwpw_conv2d_backward(
            grad_output, hidden, dw_weight, dw_bias, project_weight, project_bias, stride, padding, dilation, act,
            "none", [need_hidden, output_mask[3], output_mask[4], output_mask[5], output_mask[6]])
    else:
        grad_hidden, gdw, gdwb, gpw, gpb, *se_grads = _squeeze_excited_stages_backward(
            grad_output, hidden, dw_weight, dw_bias, project_weight, project_bias, se_reduce_weight, se_reduce_bias,
            se_expand_weight, se_expand_bias, stride, padding, dilation, act, se_act, se_gate,
            [need_hidden] + list(output_mask[3:]))
    del hidden
    grad_input, gew, geb = empty, empty, empty
    if expand and need_hidden:
        grad_z = activation_backward(grad_hidden, z, act)
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
        grad_input = grad_input.contiguous(memory_format=suggest_memory_format(input))
    return (grad_input, gew, geb, gdw, gdwb, gpw, gpb, *se_grads)


def _squeeze_excited_stages_backward(grad_output, hidden, dw_weight, dw_bias, project_weight, project_bias,
                                     se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, stride,
                                     padding, dilation, act, se_act, se_gate, wanted):
    """Gradients (hidden, dw_weight, dw_bias, project_weight, project_bias, se_reduce_weight, se_reduce_bias,
    se_expand_weight, se_expand_bias) where `wanted` says (else empty), as the native formula
    (squeeze_excited_stages_backward, csrc/shared/inverted_residual.cpp): the depthwise output recomputed whole
    (the gate pools all of it), the gate's small (N, S) and (N, C_hid) intermediates kept."""
    empty = hidden.new_empty(0)
    grads = [empty] * 9
    z = depthwise_conv2d_forward(hidden, dw_weight, dw_bias, stride, padding, dilation)
    mid = activation(z, act)
    pooled = mid.mean((2, 3))
    reduce_w, expand_w = se_reduce_weight.flatten(1), se_expand_weight.flatten(1)
    squeezed_z = F.linear(pooled, reduce_w, se_reduce_bias)
    squeezed = activation(squeezed_z, se_act)
    excited = F.linear(squeezed, expand_w, se_expand_bias)
    gate_value = gate(excited, se_gate)
    gate_map = gate_value[:, :, None, None]
    need_mid = any(wanted[i] for i in (0, 1, 2, 5, 6, 7, 8))
    grad_gated, grads[3], grads[4] = torch.ops.aten.convolution_backward(
        grad_output, mid * gate_map, project_weight, [project_weight.shape[0]], [1, 1], [0, 0], [1, 1], False,
        [0, 0], 1, [need_mid, wanted[3], wanted[4] and project_bias is not None])
    grads[3] = grads[3] if wanted[3] else empty
    grads[4] = grads[4] if wanted[4] and project_bias is not None else empty
    if not need_mid:
        return tuple(grads)
    grad_gate = (grad_gated * mid).sum((2, 3))
    grad_mid = grad_gated * gate_map
    grad_excited = (torch.ops.aten.sigmoid_backward(grad_gate, gate_value) if se_gate == "sigmoid"
                    else torch.ops.aten.hardsigmoid_backward(grad_gate, excited))
    if wanted[7]:
        grads[7] = (grad_excited.t() @ squeezed).view_as(se_expand_weight)
    if wanted[8] and se_expand_bias is not None:
        grads[8] = grad_excited.sum(0)
    grad_squeezed_z = grad_excited @ expand_w
    grad_squeezed_z = activation_backward(grad_squeezed_z, squeezed_z, se_act)
    if wanted[5]:
        grads[5] = (grad_squeezed_z.t() @ pooled).view_as(se_reduce_weight)
    if wanted[6] and se_reduce_bias is not None:
        grads[6] = grad_squeezed_z.sum(0)
    if wanted[0] or wanted[1] or wanted[2]:
        # The mean's gradient reaches every pixel of its channel.
        grad_mid = grad_mid + (grad_squeezed_z @ reduce_w)[:, :, None, None] / (mid.shape[2] * mid.shape[3])
        grad_z = activation_backward(grad_mid, z, act)
        gh, gw, gb = depthwise_conv2d_backward(grad_z, hidden, dw_weight, stride, padding, dilation,
                                               [wanted[0], wanted[1], wanted[2] and dw_bias is not None])
        grads[0] = gh if wanted[0] else empty
        grads[1] = gw if wanted[1] else empty
        grads[2] = gb if wanted[2] and dw_bias is not None else empty
    return tuple(grads)
