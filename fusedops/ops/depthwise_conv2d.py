"""fusedops.depthwise_conv2d: public wrapper, fake kernels and autograd.

Kernels: csrc/cpu/depthwise_conv2d.cpp, csrc/cuda/depthwise_conv2d.cu, fusedops/ops/_triton/depthwise_conv2d.py;
native autograd: csrc/autograd/depthwise_conv2d.cpp; reference: fusedops/ops/_reference.py; schema: csrc/depthwise_conv2d.cpp.
"""

import torch
import torch.nn.functional as F

from .. import _backend
from . import _args, _library, _reference

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
    input, weight, bias, stride, padding, dilation = _normalize(input, weight, bias, stride, padding, dilation)
    impl = _backend.resolve_for(input, NAME)
    if impl == _backend.NATIVE:
        # The C++ op validates its arguments itself (same messages), so eager calls skip the Python checks:
        # they would cost more than the kernel on small maps. Traced calls still check in the fake kernel.
        return _library.call(impl, NAME, (input, weight, bias), input, weight, bias, stride, padding, dilation)
    if not torch.compiler.is_dynamo_compiling():
        # Dynamo refuses torch._check messages that close over tensors or symbolic sizes. While it traces,
        # the fake kernel (_fake) runs these same checks on the traced tensors, with the same messages.
        _check(input, weight, bias, stride, padding, dilation)
    if impl == _backend.REFERENCE:
        return _reference.depthwise_conv2d(input, weight, bias, stride, padding, dilation)
    return _library.call(impl, NAME, (input, weight, bias), input, weight, bias, stride, padding, dilation)


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


def _check(input, weight, bias, stride, padding, dilation, weight_name="weight", bias_name="bias"):
    torch._check(input.dim() == 4, lambda: f"fusedops: input must be a 4-D (N, C, H, W) tensor, got {input.dim()}-D")
    torch._check(weight.dim() == 4, lambda: f"fusedops: {weight_name} must be a 4-D (C*multiplier, 1, kH, kW) "
                 "tensor, "
                 f"got {weight.dim()}-D")
    _args.check_floating(input, "input")
    _args.check_same(weight, input, weight_name, "input")
    if bias is not None:
        _args.check_same(bias, input, bias_name, "input")
    torch._check(all(s > 0 for s in stride), lambda: f"fusedops: stride must be positive, got {stride}")
    torch._check(all(p >= 0 for p in padding), lambda: f"fusedops: padding must be non-negative, got {padding}")
    torch._check(all(d > 0 for d in dilation), lambda: f"fusedops: dilation must be positive, got {dilation}")
    channels, out_channels = input.shape[1], weight.shape[0]
    torch._check(channels > 0, lambda: f"fusedops: input must have at least one channel, got shape {tuple(input.shape)}")
    torch._check(weight.shape[1] == 1, lambda: f"fusedops: {weight_name} must have shape (C*multiplier, 1, kH, kW) "
                 f"for a depthwise convolution, got {tuple(weight.shape)}")
    torch._check(out_channels > 0 and out_channels % channels == 0,
                 lambda: f"fusedops: {weight_name} has {out_channels} output channels, which is not a positive "
                 f"multiple of the input's {channels} channels")
    torch._check(weight.shape[2] > 0 and weight.shape[3] > 0,
                 lambda: f"fusedops: {weight_name} kernel size must be positive, got {tuple(weight.shape)}")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == out_channels,
                     lambda: f"fusedops: {bias_name} must have shape ({out_channels},), got {tuple(bias.shape)}")
    for i, side in ((0, "height"), (1, "width")):
        extent = dilation[i] * (weight.shape[2 + i] - 1) + 1
        padded = input.shape[2 + i] + 2 * padding[i]
        torch._check(padded >= extent, lambda: f"fusedops: padded input {side} ({padded}) is smaller than the "
                     f"dilated kernel {side} ({extent})")


def output_shape(input, weight, stride, padding, dilation):
    n, _, h, w = input.shape
    kh, kw = weight.shape[2], weight.shape[3]
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return (n, weight.shape[0], out_h, out_w)


def _fake(input, weight, bias, stride, padding, dilation):
    _check(input, weight, bias, stride, padding, dilation)
    return _args.empty_like_format(input, output_shape(input, weight, stride, padding, dilation))


def _fake_backward(grad_output, input, weight, stride, padding, dilation, output_mask):
    # The same checks as the C++ backward: tensors on different devices dispatch here (Meta wins), so
    # without them a meta grad_output with CPU input and weight would pass silently.
    _check(input, weight, None, stride, padding, dilation)
    _args.check_same(grad_output, input, "grad_output", "input")
    torch._check(tuple(grad_output.shape) == output_shape(input, weight, stride, padding, dilation),
                 lambda: f"fusedops: grad_output has shape {tuple(grad_output.shape)}, not the convolution's output "
                 "shape")
    grad_input = _args.empty_like_format(input, input.shape) if output_mask[0] else input.new_empty(0)
    grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1] else input.new_empty(0)
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
