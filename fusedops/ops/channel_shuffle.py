"""fusedops.channel_shuffle and fusedops.concat_shuffle: public wrappers, fake kernels and autograd.

Kernels: csrc/cpu/channel_shuffle.cpp, csrc/cuda/channel_shuffle.cu, fusedops/ops/_triton/channel_shuffle.py;
native autograd: csrc/autograd/channel_shuffle.cpp; reference: fusedops/ops/_reference.py; schemas:
csrc/channel_shuffle.cpp; argument checks: fusedops/ops/_geometry.py.

Both ops are pure data movement, so their gradients are shuffles too: the gradient of
``channel_shuffle(x, g)`` is ``channel_shuffle(grad, C // g)``, and that of ``concat_shuffle(a, b, g)`` is
``_concat_shuffle_backward(grad, a.shape[1], g)``, whose own gradient is ``concat_shuffle`` again, so
gradients of every order are supported.
"""

import torch

from . import _args, _geometry, _library, _reference

NAME = "channel_shuffle"
CONCAT_NAME = "concat_shuffle"
CONCAT_BACKWARD_NAME = "_concat_shuffle_backward"


def channel_shuffle(input, groups):
    r"""Channel shuffle: exactly ``torch.nn.functional.channel_shuffle(input, groups)``.

    Output channel ``j * groups + i`` is input channel ``i * (C // groups) + j``, i.e. the channels viewed as
    a ``(groups, C // groups)`` matrix are transposed (ShuffleNet's shuffle).

    Args:
        input: ``Tensor[N, C, H, W]``, NCHW-contiguous, channels_last or a strided view (read in place when
            each channel plane, resp. each pixel's channels, is dense, e.g. a ``chunk`` along channels).
        groups: positive int dividing ``C``.

    Returns:
        ``Tensor[N, C, H, W]`` in the input's memory format.

    Examples::

        >>> x = torch.randn(8, 240, 28, 28)
        >>> y = fusedops.channel_shuffle(x, 3)
    """
    out = _library.call_native_eagerly(NAME, input, input, groups)
    if out is not NotImplemented:
        return out
    _args.check_tensor(input, "input")
    _check_groups_type(groups)
    return _library.call_op(NAME, (input, groups), tensor_args=1, check=_geometry.check_channel_shuffle,
                            reference=_reference.channel_shuffle)


def concat_shuffle(a, b, groups=2):
    r"""``channel_shuffle(torch.cat([a, b], 1), groups)`` without building the concatenation.

    Each input is written straight to its shuffled place in the output; the backward splits the incoming
    gradient into ``(grad_a, grad_b)`` the same way. This is ShuffleNetV2's data movement: stride 1,
    ``x1, x2 = x.chunk(2, 1); concat_shuffle(x1, branch2(x2))`` (``x1`` is read in place); stride 2,
    ``concat_shuffle(branch1(x), branch2(x))``.

    Args:
        a: ``Tensor[N, Ca, H, W]``.
        b: ``Tensor[N, Cb, H, W]``, same dtype and device as ``a``.
        groups: positive int dividing ``Ca + Cb``.

    Returns:
        ``Tensor[N, Ca + Cb, H, W]``, channels_last when ``a`` and ``b`` both are, else NCHW (as ``torch.cat``).
    """
    out = _library.call_native_eagerly(CONCAT_NAME, a, a, b, groups)
    if out is not NotImplemented:
        return out
    _args.check_tensor(a, "a")
    _args.check_tensor(b, "b")
    _check_groups_type(groups)
    return _library.call_op(CONCAT_NAME, (a, b, groups), tensor_args=2, check=_geometry.check_concat_shuffle,
                            reference=_reference.concat_shuffle)


def _check_groups_type(groups):
    if isinstance(groups, bool) or not isinstance(groups, int):
        raise TypeError(f"fusedops: groups must be an int, got {groups!r}")


# ---------------------------------------------------------------------------------------------------
# Fake kernels


def _fake(input, groups):
    _geometry.check_channel_shuffle(input, groups)
    return _args.empty_like_format(input, input.shape)


def _fake_concat(a, b, groups):
    _geometry.check_concat_shuffle(a, b, groups)
    n, _, h, w = a.shape
    return torch.empty((n, a.shape[1] + b.shape[1], h, w), dtype=a.dtype, device=a.device,
                       memory_format=_geometry.concat_memory_format(a, b))


def _fake_concat_backward(grad, channels_a, groups):
    _geometry.check_concat_shuffle_backward(grad, channels_a, groups)
    n, c, h, w = grad.shape
    return (_args.empty_like_format(grad, (n, channels_a, h, w)),
            _args.empty_like_format(grad, (n, c - channels_a, h, w)))


# ---------------------------------------------------------------------------------------------------
# Autograd: every gradient is another shuffle.


def _setup_shuffle(ctx, inputs, output):
    input, groups = inputs
    ctx.inverse_groups = input.shape[1] // groups if input.shape[1] else 1


def _make_shuffle_backward(ops):
    def backward(ctx, grad):
        return ops.channel_shuffle(grad, ctx.inverse_groups), None

    return backward


def _setup_concat(ctx, inputs, output):
    a, b, groups = inputs
    ctx.channels_a = a.shape[1]
    ctx.groups = groups


def _make_concat_backward(ops):
    def backward(ctx, grad):
        grad_a, grad_b = ops._concat_shuffle_backward(grad, ctx.channels_a, ctx.groups)
        return grad_a, grad_b, None

    return backward


def _setup_concat_backward(ctx, inputs, output):
    _, _, groups = inputs
    ctx.groups = groups


def _make_concat_double_backward(ops):
    def backward(ctx, grad_grad_a, grad_grad_b):
        return ops.concat_shuffle(grad_grad_a, grad_grad_b, ctx.groups), None, None

    return backward


_library.define_triton_mirror(NAME, "channel_shuffle", "channel_shuffle")
_library.define_triton_mirror(CONCAT_NAME, "channel_shuffle", "concat_shuffle")
_library.define_triton_mirror(CONCAT_BACKWARD_NAME, "channel_shuffle", "concat_shuffle_backward")
_library.register_fake(NAME, _fake)
_library.register_fake(CONCAT_NAME, _fake_concat)
_library.register_fake(CONCAT_BACKWARD_NAME, _fake_concat_backward)
# The native ops' autograd is C++ (csrc/autograd/channel_shuffle.cpp, the same formulas).
_library.register_triton_autograd(NAME, _make_shuffle_backward, _setup_shuffle)
_library.register_triton_autograd(CONCAT_NAME, _make_concat_backward, _setup_concat)
_library.register_triton_autograd(CONCAT_BACKWARD_NAME, _make_concat_double_backward, _setup_concat_backward)
