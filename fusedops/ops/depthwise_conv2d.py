"""fusedops.depthwise_conv2d: public wrapper, fake kernels and autograd.

Kernels: csrc/cpu/depthwise_conv2d.cpp, csrc/cuda/depthwise_conv2d.cu, fusedops/ops/_triton/depthwise_conv2d.py;
native autograd: csrc/autograd/depthwise_conv2d.cpp; reference: fusedops/ops/_reference.py;
schema: csrc/depthwise_conv2d.cpp;
argument checks and output shape: fusedops/ops/_geometry.py.
"""

import torch
import torch.nn.functional as F

from . import _args, _geometry, _library, _reference

NAME = "depthwise_conv2d"
BACKWARD_NAME = "_depthwise_conv2d_backward"


def depthwise_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1):
    r"""Depthwise 2-D convolution: ``F.conv2d(input, weight, bias, stride, padding, dilation, groups=C)``.

    Args:
        input: ``Tensor[N, C, H, W]``, NCHW-contiguous, channels_last or any strided view.
        weight: ``Tensor[C * multiplier, 1, kH, kW]``; output channel ``o`` reads input channel ``o // multiplier``.
        bias: optional ``Tensor[C * multiplier]``.
        stride, dilation: int or (int, int), positive.
        padding: int, (int, int), ``"valid"`` or ``"same"`` (stride 1 only; asymmetric as in PyTorch).

    Returns:
        ``Tensor[N, C * multiplier, H_out, W_out]`` in the input's memory format.

    Examples::

        >>> x = torch.randn(8, 32, 56, 56).to(memory_format=torch.channels_last)
        >>> w = torch.randn(32, 1, 3, 3)
        >>> y = fusedops.depthwise_conv2d(x, w, padding=1)
    """
    if type(padding) is not str:  # "same"/"valid" are resolved below
        out = _library.call_native_eagerly(NAME, input, input, weight, bias, stride, padding, dilation)
        if out is not NotImplemented:
            return out
    return _library.call_op(NAME, _normalize(input, weight, bias, stride, padding, dilation),
                            tensor_args=3, check=_geometry.check_depthwise, reference=_reference.depthwise_conv2d)


def _normalize(input, weight, bias, stride, padding, dilation):
    """Checks the argument types and resolves padding="same"/"valid" to explicit symmetric padding."""
    _args.check_tensor(input, "input", rank=4)
    _args.check_tensor(weight, "weight", rank=4)
    if bias is not None:
        _args.check_tensor(bias, "bias", rank=1)
    stride = _args.pair(stride, "stride")
    dilation = _args.pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"fusedops: padding must be an int, a pair, 'same' or 'valid'; got {padding!r}")
        if padding == "valid":
            padding = (0, 0)
        else:
            if stride != (1, 1):
                raise ValueError("fusedops: padding='same' is not supported for strided convolutions "
                                 f"(stride={stride}), as in torch.nn.functional.conv2d")
            # Total padding d*(k-1) per dim; when it is odd the extra row/column goes after, as in PyTorch.
            totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
            padding = (totals[0] // 2, totals[1] // 2)
            extra_h, extra_w = totals[0] % 2, totals[1] % 2
            if extra_h or extra_w:
                input = F.pad(input, (0, extra_w, 0, extra_h))
    else:
        padding = _args.pair(padding, "padding")
    return input, weight, bias, stride, padding, dilation


def _fake(input, weight, bias, stride, padding, dilation):
    _geometry.check_depthwise(input, weight, bias, stride, padding, dilation)
    return _args.empty_like_format(input, _geometry.depthwise_output_shape(input, weight, stride, padding, dilation))


def _fake_backward(grad_output, input, weight, stride, padding, dilation, output_mask):
    # The same checks as the C++ backward: tensors on different devices dispatch here (Meta wins), so
    # without them a meta grad_output with CPU input and weight would pass silently.
    _geometry.check_depthwise_backward(grad_output, input, weight, stride, padding, dilation)
    grad_input = _args.empty_like_format(input, input.shape) if output_mask[0] else input.new_empty(0)
    grad_weight = (torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1]
                   else input.new_empty(0))
    grad_bias = weight.new_empty(weight.shape[0]) if output_mask[2] else input.new_empty(0)
    return grad_input, grad_weight, grad_bias


def _setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation = inputs
    # The input is kept even when only grad_input is wanted: the backward op needs its shape and layout.
    ctx.save_for_backward(input, weight)
    ctx.has_bias = bias is not None
    ctx.conv_args = (stride, padding, dilation)


def _make_backward(ops):
    def backward(ctx, grad_output):
        input, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        grad_input, grad_weight, grad_bias = ops._depthwise_conv2d_backward(
            grad_output, input, weight, *ctx.conv_args, mask
        )
        return (
            grad_input if mask[0] else None,
            grad_weight if mask[1] else None,
            grad_bias if mask[2] else None,
            None,
            None,
            None,
        )

    return backward


# The native op's autograd is C++ (csrc/autograd/depthwise_conv2d.cpp, the same formula as _make_backward).
_library.register_op_with_backward_op(NAME, BACKWARD_NAME, "depthwise_conv2d", _fake, _fake_backward, _make_backward,
                                      _setup_context)
