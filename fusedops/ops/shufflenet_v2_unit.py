"""fusedops.shufflenet_v2_unit: ShuffleNetV2's unit (the stride-1 unit and the down-sampling unit) as one op. Public
wrapper, fake kernels, autograd.

Kernels: csrc/cpu/shufflenet_v2_unit.cpp, csrc/cuda/shufflenet_v2_unit.cu, fusedops/ops/_triton/shufflenet_v2_unit.py;
checks, composed forward and backward (every native backend): csrc/shared/shufflenet_v2_unit.cpp; native autograd:
csrc/autograd/shufflenet_v2_unit.cpp; reference: fusedops/ops/_reference.py; schema: csrc/shufflenet_v2_unit.cpp;
argument checks and output shape: fusedops/ops/_geometry.py.
"""

import torch

from .. import _backend
from . import _args, _geometry, _library, _reference
from .activations import activation_name

NAME = "shufflenet_v2_unit"
BACKWARD_NAME = "_shufflenet_v2_unit_backward"


def shufflenet_v2_unit(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias=None,
                       shortcut=None, stride=1, padding=None, dilation=1, activation="relu", packed_weights=None):
    r"""ShuffleNetV2's unit (torchvision's ``InvertedResidual`` of ``shufflenet_v2``) with eval-mode batch norms
    folded into the weights (:func:`fusedops.fuse_bn`):

    ``branch(x) = act(conv1x1(depthwise_conv2d(act(conv1x1(x, expand_weight, expand_bias)), dw_weight, dw_bias,
    stride, padding, dilation), project_weight, project_bias))`` (no activation after the depthwise stage),
    ``shortcut(x) = act(conv1x1(depthwise_conv2d(x, shortcut_dw_weight, shortcut_dw_bias, stride, padding,
    dilation), shortcut_pw_weight, shortcut_pw_bias))``;
    without ``shortcut`` (the stride-1 unit) ``x1, x2 = input.chunk(2, 1)`` and ``first, second = x1, branch(x2)``,
    with it (the down-sampling unit) ``first, second = shortcut(input), branch(input)``;
    ``out = channel_shuffle(cat([first, second], 1), 2)``: output channel ``2c`` is ``first``'s channel ``c``,
    ``2c + 1`` is ``second``'s.

    Both halves are written straight into their interleaved channels of the output: no concatenation, no shuffle.
    On CPU the branch runs as one kernel over bands of output rows: the expanded and the depthwise maps live only
    in per-thread tiles that stay in cache, never in memory, and the band's outputs are written straight into the
    odd channels of the output, while the other half (the input's first half, or the shortcut's output) goes into
    the even ones. On CUDA (and through Triton) the expand stage is a 1x1 convolution and the depthwise and project
    stages run as the fused :func:`fusedops.dwpw_conv2d` kernel, as do the shortcut's two stages. The backward
    recomputes the branch's maps from the input, so training keeps only the input alive.

    Args:
        input: ``Tensor[N, C, H, W]``, any layout (channels_last is the fast one on CPU); ``C`` even without
            ``shortcut``.
        expand_weight: ``Tensor[B, C_b, 1, 1]``: ``C_b = C / 2`` without ``shortcut`` (the branch reads the input's
            second half, and ``B = C / 2``), ``C_b = C`` with it.
        expand_bias: optional ``Tensor[B]``.
        dw_weight: ``Tensor[B, 1, kH, kW]``.
        dw_bias: optional ``Tensor[B]``.
        project_weight: ``Tensor[B, B, 1, 1]``.
        project_bias: optional ``Tensor[B]``.
        shortcut: ``None`` (the stride-1 unit) or the down-sampling unit's other branch, a tuple
            ``(dw_weight, dw_bias, pw_weight, pw_bias)``: ``dw_weight`` ``Tensor[C, 1, kH, kW]`` (the kernel size of
            ``dw_weight``), ``pw_weight`` ``Tensor[B, C, 1, 1]``, biases optional.
        stride, dilation: of both depthwise stages, int or (int, int); without ``shortcut`` the stride must keep
            the map's size (stride 1).
        padding: of both depthwise stages; default ``dilation * (k - 1) // 2`` per dimension.
        activation: ``None``, ``"relu"``, ``"relu6"``, ``"hardswish"`` or ``"silu"``, after the expansion, after
            the project stage and after the shortcut's 1x1 convolution (ShuffleNetV2: ``"relu"``).
        packed_weights: optional, :func:`pack_weights` of these weights: the CPU kernel then reads the branch's
            weights as packed instead of packing them on every call. It is a copy: it must be made again after the
            weights change. Other backends ignore it.

    Returns:
        ``Tensor[N, 2 * B, H_out, W_out]`` in the input's memory format.
    """
    if padding is not None and (shortcut is None or (type(shortcut) is tuple and len(shortcut) == 4)):
        sdw, sdb, spw, spb = _NO_SHORTCUT if shortcut is None else shortcut
        out = _library.call_native_eagerly(NAME, input, input, expand_weight, expand_bias, dw_weight, dw_bias,
                                           project_weight, project_bias, sdw, sdb, spw, spb, stride, padding, dilation,
                                           activation, packed_weights)
        if out is not NotImplemented:
            return out
    args = _normalize(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, shortcut,
                      stride, padding, dilation, activation) + (packed_weights,)
    return _library.call_op(NAME, args, tensor_args=11, check=_geometry.check_shufflenet_v2_unit,
                            reference=_reference.shufflenet_v2_unit)


# shortcut=None as the tuple (dw_weight, dw_bias, pw_weight, pw_bias).
_NO_SHORTCUT = (None, None, None, None)


def _shortcut(shortcut):
    """The `shortcut` argument -> (dw_weight, dw_bias, pw_weight, pw_bias)."""
    if shortcut is None:
        return _NO_SHORTCUT
    if not isinstance(shortcut, (tuple, list)) or len(shortcut) != 4:
        raise TypeError("fusedops: shortcut must be None or a tuple (dw_weight, dw_bias, pw_weight, pw_bias), got "
                        f"{type(shortcut).__name__}"
                        + (f" of {len(shortcut)} elements" if isinstance(shortcut, (tuple, list)) else ""))
    dw_weight, dw_bias, pw_weight, pw_bias = shortcut
    for t, name in ((dw_weight, "shortcut_dw_weight"), (pw_weight, "shortcut_pw_weight")):
        if t is not None:
            _args.check_tensor(t, name, rank=4)
    for t, name in ((dw_bias, "shortcut_dw_bias"), (pw_bias, "shortcut_pw_bias")):
        if t is not None:
            _args.check_tensor(t, name, rank=1)
    return dw_weight, dw_bias, pw_weight, pw_bias


def _normalize(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, shortcut, stride,
               padding, dilation, activation):
    _args.check_tensor(input, "input", rank=4)
    _args.check_tensor(expand_weight, "expand_weight", rank=4)
    _args.check_tensor(dw_weight, "dw_weight", rank=4)
    _args.check_tensor(project_weight, "project_weight", rank=4)
    for t, name in ((expand_bias, "expand_bias"), (dw_bias, "dw_bias"), (project_bias, "project_bias")):
        if t is not None:
            _args.check_tensor(t, name, rank=1)
    sdw, sdb, spw, spb = _shortcut(shortcut)
    stride = _args.pair(stride, "stride")
    dilation = _args.pair(dilation, "dilation")
    if padding is None:
        kh, kw = dw_weight.shape[-2:]
        padding = (dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2)
    else:
        padding = _args.pair(padding, "padding")
    return (input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, sdw, sdb, spw, spb,
            stride, padding, dilation, activation_name(activation, "activation"))


def pack_weights(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias=None,
                 shortcut=None, stride=1, padding=None, dilation=1, activation="relu"):
    """The branch's weights of a :func:`shufflenet_v2_unit` call (same arguments) packed as the CPU kernel reads
    them, to pass as its ``packed_weights``: valid for every later call with weights of these values (a copy is
    taken), channel counts, kernel size and dtype, whatever the input's size. ``None`` where the call would not run
    the native CPU kernel (tensors on another device, another backend, a build without the extension), whose
    implementations take no packed weights."""
    if input.device.type != "cpu" or _backend.resolve_for(input, NAME) != _backend.NATIVE:
        return None
    args = _normalize(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, shortcut,
                      stride, padding, dilation, activation)
    return torch.ops.fusedops._shufflenet_v2_unit_pack_weights(*args)


def _fake(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, shortcut_dw_weight,
          shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias, stride, padding, dilation, activation,
          packed_weights=None):
    _geometry.check_shufflenet_v2_unit(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                       project_bias, shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight,
                                       shortcut_pw_bias, stride, padding, dilation, activation)
    return _args.empty_like_format(input, _geometry.shufflenet_v2_unit_output_shape(input, dw_weight, project_weight,
                                                                                    stride, padding, dilation))


def _fake_backward(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                   shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias, stride, padding,
                   dilation, activation, output_mask):
    _geometry.check_shufflenet_v2_unit_backward(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias,
                                                project_weight, project_bias, shortcut_dw_weight, shortcut_dw_bias,
                                                shortcut_pw_weight, shortcut_pw_bias, stride, padding, dilation,
                                                activation)

    def like(t, wanted):
        if not wanted or t is None:
            return input.new_empty(0)
        return t.new_empty(t.shape)

    grad_input = _args.empty_like_format(input, input.shape) if output_mask[0] else input.new_empty(0)
    weights = (expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, shortcut_dw_weight,
               shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias)
    return (grad_input,) + tuple(like(t, wanted) for t, wanted in zip(weights, output_mask[1:]))


# Tensor arguments of the schema (input and the ten weights and biases), the gradients of its backward.
_TENSORS = 11


def _setup_context(ctx, inputs, output):
    # The backward recomputes the branch's maps from the input: only the input and the weights are kept (not
    # packed_weights, a copy of the weights without a gradient).
    ctx.save_for_backward(*inputs[:_TENSORS])
    ctx.unit_args = inputs[_TENSORS:_TENSORS + 4]  # stride, padding, dilation, activation


def _make_backward(ops):
    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mask = [needs[i] and (saved[i] is not None) for i in range(_TENSORS)]
        grads = ops._shufflenet_v2_unit_backward(grad_output, *saved, *ctx.unit_args, mask)
        return tuple(g if m else None for g, m in zip(grads, mask)) + (None,) * 5

    return backward


# The native op's autograd is C++ (csrc/autograd/shufflenet_v2_unit.cpp, the same formula as _make_backward).
_library.register_op_with_backward_op(NAME, BACKWARD_NAME, "shufflenet_v2_unit", _fake, _fake_backward,
                                      _make_backward, _setup_context)
