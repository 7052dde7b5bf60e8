"""fusedops.dwpw_conv2d: the fused depthwise-separable convolution. Public wrapper, fake kernels, autograd.

Kernels: csrc/cpu/dwpw_conv2d.cpp, csrc/cuda/dwpw_conv2d.cu, fusedops/ops/_triton/dwpw_conv2d.py;
backward (every native backend): dwpw_conv2d_backward_banded in csrc/shared/dwpw_banded_backward.cpp; native autograd:
csrc/autograd/dwpw_conv2d.cpp;
reference: fusedops/ops/_reference.py; schema: csrc/dwpw_conv2d.cpp; argument checks and output shape:
fusedops/ops/_geometry.py.
"""

import torch

from .. import _backend
from . import _args, _geometry, _library, _reference
from .activations import activation_name

NAME = "dwpw_conv2d"
BACKWARD_NAME = "_dwpw_conv2d_backward"


def dwpw_conv2d(input, dw_weight, dw_bias, pw_weight, pw_bias=None, stride=1, padding=1, dilation=1,
                mid_activation="relu6", out_activation="relu6", packed_weights=None):
    r"""Fused depthwise-separable convolution:

    ``act_out(F.conv2d(act_mid(depthwise_conv2d(input, dw_weight, dw_bias, stride, padding, dilation)),
    pw_weight, pw_bias))``

    with eval-mode batch norms folded into the weights and biases (see :func:`fusedops.fuse_bn`). The
    depthwise output is never written to memory: the kernels compute it tile by tile and feed each tile
    to the 1x1 convolution; the backward recomputes it, so training keeps only the input alive (and,
    with a ``"relu"``/``"relu6"`` output activation in float32/float64, the output, like ``F.relu``: an
    in-place change of the output before backward then raises autograd's usual error).

    Args:
        input: ``Tensor[N, C, H, W]``, any layout (channels_last is the fast one on CPU).
        dw_weight: ``Tensor[C * m, 1, kH, kW]`` (depth multiplier ``m``).
        dw_bias: optional ``Tensor[C * m]``.
        pw_weight: ``Tensor[C_out, C * m, 1, 1]``.
        pw_bias: optional ``Tensor[C_out]``.
        stride, padding, dilation: of the depthwise stage, int or (int, int).
        mid_activation, out_activation: ``None``, ``"relu"``, ``"relu6"``, ``"hardswish"`` or ``"silu"``.
        packed_weights: optional, :func:`pack_weights` of these weights: the CPU kernel then reads them as laid
            out instead of laying them out on every call (and takes its faster GEMM orientation on small maps,
            where laying out the 1x1 weights would cost more than it saves). A copy: it must be made again after
            the weights change. Other backends ignore it.

    Returns:
        ``Tensor[N, C_out, H_out, W_out]`` in the input's memory format.
    """
    # None activations are not the schema's strings: those calls take the regular path.
    out = _library.call_native_eagerly(NAME, input, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                                       dilation, mid_activation, out_activation, packed_weights)
    if out is not NotImplemented:
        return out
    args = _normalize(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid_activation,
                      out_activation) + (packed_weights,)
    return _library.call_op(NAME, args, tensor_args=5, check=_geometry.check_dwpw, reference=_reference.dwpw_conv2d)


def pack_weights(input, dw_weight, dw_bias, pw_weight, pw_bias=None, stride=1, padding=1, dilation=1,
                 mid_activation="relu6", out_activation="relu6"):
    """The weights of a :func:`dwpw_conv2d` call (same arguments) laid out as the CPU kernel reads them, to pass as
    its ``packed_weights``: valid for every later call with weights of these values (a copy is taken), channel
    counts, kernel size and dtype, whatever the input's size. ``None`` where the call would not run the native CPU
    kernel (tensors on another device, another backend, a build without the extension), whose implementations
    take no packed weights."""
    if input.device.type != "cpu" or _backend.resolve_for(input, NAME) != _backend.NATIVE:
        return None
    args = _normalize(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid_activation,
                      out_activation)
    return torch.ops.fusedops._dwpw_conv2d_pack_weights(*args)


def _normalize(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid_activation,
               out_activation):
    _args.check_tensor(input, "input", rank=4)
    _args.check_tensor(dw_weight, "dw_weight", rank=4)
    _args.check_tensor(pw_weight, "pw_weight", rank=4)
    if dw_bias is not None:
        _args.check_tensor(dw_bias, "dw_bias", rank=1)
    if pw_bias is not None:
        _args.check_tensor(pw_bias, "pw_bias", rank=1)
    stride = _args.pair(stride, "stride")
    padding = _args.pair(padding, "padding")
    dilation = _args.pair(dilation, "dilation")
    mid = activation_name(mid_activation, "mid_activation")
    out = activation_name(out_activation, "out_activation")
    return input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out


def _fake(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out, packed_weights=None):
    _geometry.check_dwpw(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out)
    return _args.empty_like_format(input, _geometry.dwpw_output_shape(input, dw_weight, pw_weight, stride, padding,
                                                                      dilation))


def _fake_backward(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out,
                   output_mask, output=None):
    _geometry.check_dwpw_backward(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                                  dilation, mid, out, output)

    def like(t, wanted):
        if not wanted:
            return input.new_empty(0)
        return torch.empty_like(t, memory_format=torch.contiguous_format)

    grad_input = _args.empty_like_format(input, input.shape) if output_mask[0] else input.new_empty(0)
    grad_dw_bias = dw_weight.new_empty(dw_weight.shape[0]) if output_mask[2] else input.new_empty(0)
    grad_pw_bias = pw_weight.new_empty(pw_weight.shape[0]) if output_mask[4] else input.new_empty(0)
    return grad_input, like(dw_weight, output_mask[1]), grad_dw_bias, like(pw_weight, output_mask[3]), grad_pw_bias


def _setup_context(ctx, inputs, output):
    # packed_weights (inputs[10]) is a copy of the weights without a gradient: not kept.
    input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out = inputs[:10]
    # The backward recomputes the depthwise output band by band from the input. With a relu/relu6 output
    # activation in float/double it also keeps the output (alive anyway as the next layer's input), whose
    # zeros and sixes give that activation's derivative without recomputing the pointwise GEMM.
    keep_output = _geometry.dwpw_uses_saved_output(out, output.dtype)
    ctx.save_for_backward(input, dw_weight, dw_bias, pw_weight, pw_bias, output if keep_output else None)
    ctx.conv_args = (stride, padding, dilation, mid, out)


def _make_backward(ops):
    def backward(ctx, grad_output):
        input, dw_weight, dw_bias, pw_weight, pw_bias, output = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mask = [needs[0], needs[1], dw_bias is not None and needs[2], needs[3], pw_bias is not None and needs[4]]
        grads = ops._dwpw_conv2d_backward(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias,
                                          *ctx.conv_args, mask, output)
        return tuple(g if m else None for g, m in zip(grads, mask)) + (None,) * 6

    return backward


# The native op's autograd is C++ (csrc/autograd/dwpw_conv2d.cpp, the same formula as _make_backward).
_library.register_op_with_backward_op(NAME, BACKWARD_NAME, "dwpw_conv2d", _fake, _fake_backward, _make_backward,
                                      _setup_context)
