"""fusedops.inverted_residual: the inverted-residual block of MobileNetV2/V3 and EfficientNet as one op. Public
wrapper, fake kernels, autograd.

Kernels: csrc/cpu/inverted_residual.cpp, csrc/cuda/inverted_residual.cu, fusedops/ops/_triton/inverted_residual.py;
checks, composed forward and backward (every native backend): csrc/shared/inverted_residual.cpp; native autograd:
csrc/autograd/inverted_residual.cpp; reference: fusedops/ops/_reference.py; schema: csrc/inverted_residual.cpp;
argument checks and output shape: fusedops/ops/_geometry.py.
"""

import torch

from .. import _backend
from . import _args, _geometry, _library, _reference
from .activations import activation_name

NAME = "inverted_residual"
BACKWARD_NAME = "_inverted_residual_backward"


def inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias=None,
                      stride=1, padding=None, dilation=1, activation="relu6", se=None, residual=None,
                      packed_weights=None):
    r"""The inverted-residual block of MobileNetV2/V3 and EfficientNet (MBConv) with eval-mode batch norms folded
    into the weights (:func:`fusedops.fuse_bn`):

    ``x = act(conv1x1(input, expand_weight, expand_bias))`` (skipped when ``expand_weight`` is ``None``),
    ``x = act(depthwise_conv2d(x, dw_weight, dw_bias, stride, padding, dilation))``,
    ``x = x * gate(conv1x1(se_act(conv1x1(mean_hw(x), reduce_weight, reduce_bias)), expand_weight, expand_bias))``
    (the squeeze-excitation, with ``se``),
    ``out = conv1x1(x, project_weight, project_bias)`` (linear), plus ``input`` when ``residual``.

    On CPU the block runs as one kernel over bands of output rows: the expanded and the depthwise maps live only
    in per-thread tiles that stay in cache, never in memory. A squeeze-excitation must pool the whole depthwise map
    before the project stage can start: blocks with one run image by image instead, the depthwise map of one image
    materialised in a per-thread tile (SE sits at the late, small maps: 7x7 to 28x28 in MobileNetV3, at most
    56x56 x 16 channels, and the expanded map still never reaches memory), its gate applied in place, then the
    project GEMM over the tile. On CUDA (and through Triton) the expand stage is a 1x1 convolution and the
    depthwise and project stages run as the fused :func:`fusedops.dwpw_conv2d` kernel (with a squeeze-excitation:
    depthwise kernel, gate, 1x1 convolution). The backward recomputes the expanded and depthwise maps from the
    input, so training keeps only the input alive.

    Args:
        input: ``Tensor[N, C_in, H, W]``, any layout (channels_last is the fast one on CPU).
        expand_weight: ``Tensor[C_hid, C_in, 1, 1]`` or ``None`` (no expansion: ``C_hid == C_in``).
        expand_bias: optional ``Tensor[C_hid]`` (only with ``expand_weight``).
        dw_weight: ``Tensor[C_hid, 1, kH, kW]``.
        dw_bias: optional ``Tensor[C_hid]``.
        project_weight: ``Tensor[C_out, C_hid, 1, 1]``.
        project_bias: optional ``Tensor[C_out]``.
        stride, dilation: of the depthwise stage, int or (int, int).
        padding: of the depthwise stage; default ``dilation * (k - 1) // 2`` per dimension.
        activation: ``None``, ``"relu"``, ``"relu6"``, ``"hardswish"`` or ``"silu"``, after the expansion and after the
            depthwise stage.
        se: optional squeeze-excitation after the depthwise stage (MobileNetV3, EfficientNet), a tuple
            ``(reduce_weight, reduce_bias, expand_weight, expand_bias, gate[, activation])``:
            ``reduce_weight`` ``Tensor[S, C_hid, 1, 1]``, ``expand_weight`` ``Tensor[C_hid, S, 1, 1]``, biases
            optional, ``gate`` ``"hardsigmoid"`` (MobileNetV3) or ``"sigmoid"`` (EfficientNet), ``activation``
            between the two 1x1 convolutions (default ``"relu"``; EfficientNet uses ``"silu"``).
        residual: add ``input`` to the output; default ``stride == 1 and C_in == C_out`` (and an output of the
            input's size). ``True`` where the shapes differ is an error.
        packed_weights: optional, :func:`pack_weights` of these weights: the CPU kernel then reads them as packed
            instead of packing them on every call (at batch 1 that packing can cost as much as the block's
            arithmetic). It is a copy: it must be made again after the weights change. Other backends ignore it.

    Returns:
        ``Tensor[N, C_out, H_out, W_out]`` in the input's memory format.
    """
    if padding is not None and residual is not None and (se is None or (type(se) is tuple and len(se) == 6)):
        rw, rb, ew, eb, gate, se_act = _NO_SQUEEZE_EXCITATION if se is None else se
        out = _library.call_native_eagerly(NAME, input, input, expand_weight, expand_bias, dw_weight, dw_bias,
                                           project_weight, project_bias, rw, rb, ew, eb, stride, padding, dilation,
                                           activation, residual, se_act, gate, packed_weights)
        if out is not NotImplemented:
            return out
    args = _normalize(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, stride,
                      padding, dilation, activation, se, residual) + (packed_weights,)
    return _library.call_op(NAME, args, tensor_args=11, check=_geometry.check_inverted_residual,
                            reference=_reference.inverted_residual)


# se=None as the tuple (reduce_weight, reduce_bias, expand_weight, expand_bias, gate, activation).
_NO_SQUEEZE_EXCITATION = (None, None, None, None, "hardsigmoid", "relu")


def _squeeze_excitation(se):
    """The `se` argument -> (reduce_weight, reduce_bias, expand_weight, expand_bias, activation, gate)."""
    if se is None:
        se = _NO_SQUEEZE_EXCITATION
    if not isinstance(se, (tuple, list)) or len(se) not in (5, 6):
        raise TypeError("fusedops: se must be None or a tuple (reduce_weight, reduce_bias, expand_weight, "
                        f"expand_bias, gate[, activation]), got {type(se).__name__}"
                        + (f" of {len(se)} elements" if isinstance(se, (tuple, list)) else ""))
    reduce_weight, reduce_bias, expand_weight, expand_bias, gate = se[:5]
    for t, name in ((reduce_weight, "se_reduce_weight"), (expand_weight, "se_expand_weight")):
        if t is not None:
            _args.check_tensor(t, name, rank=4)
    for t, name in ((reduce_bias, "se_reduce_bias"), (expand_bias, "se_expand_bias")):
        if t is not None:
            _args.check_tensor(t, name, rank=1)
    if not isinstance(gate, str):
        raise TypeError(f"fusedops: se's gate must be 'hardsigmoid' or 'sigmoid', got {gate!r}")
    se_activation = activation_name(se[5] if len(se) == 6 else "relu", "se_activation")
    return reduce_weight, reduce_bias, expand_weight, expand_bias, se_activation, gate


def _normalize(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, stride, padding,
               dilation, activation, se, residual):
    _args.check_tensor(input, "input", rank=4)
    if expand_weight is not None:
        _args.check_tensor(expand_weight, "expand_weight", rank=4)
    _args.check_tensor(dw_weight, "dw_weight", rank=4)
    _args.check_tensor(project_weight, "project_weight", rank=4)
    for t, name in ((expand_bias, "expand_bias"), (dw_bias, "dw_bias"), (project_bias, "project_bias")):
        if t is not None:
            _args.check_tensor(t, name, rank=1)
    se_rw, se_rb, se_ew, se_eb, se_act, se_gate = _squeeze_excitation(se)
    stride = _args.pair(stride, "stride")
    dilation = _args.pair(dilation, "dilation")
    if padding is None:
        kh, kw = dw_weight.shape[-2:]
        padding = (dilation[0] * (kh - 1) // 2, dilation[1] * (kw - 1) // 2)
    else:
        padding = _args.pair(padding, "padding")
    act = activation_name(activation, "activation")
    if residual is None:
        # Stride 1 and an output of the input's size (a bad stride is left to the op's checks, which name it).
        residual = stride == (1, 1)
        if residual:
            _, out_channels, out_h, out_w = _geometry.inverted_residual_output_shape(input, dw_weight, project_weight,
                                                                                   stride, padding, dilation)
            residual = out_channels == input.shape[1] and (out_h, out_w) == tuple(input.shape[2:])
    elif not isinstance(residual, bool):
        raise TypeError(f"fusedops: residual must be None, True or False, got {residual!r}")
    return (input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, se_rw, se_rb, se_ew,
            se_eb, stride, padding, dilation, act, residual, se_act, se_gate)


def pack_weights(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias=None, stride=1,
                 padding=None, dilation=1, activation="relu6", se=None, residual=None):
    """The weights of an :func:`inverted_residual` call (same arguments) packed as the CPU kernel reads them, to
    pass as its ``packed_weights``: valid for every later call with weights of these values (a copy is taken),
    channel counts, kernel size and dtype, whatever the input's size. ``None`` where the call would not run the
    native CPU kernel (tensors on another device, another backend, a build without the extension), whose
    implementations take no packed weights."""
    if input.device.type != "cpu" or _backend.resolve_for(input, NAME) != _backend.NATIVE:
        return None
    args = _normalize(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, stride,
                      padding, dilation, activation, se, residual)
    return torch.ops.fusedops._inverted_residual_pack_weights(*args)


def _fake(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, se_reduce_weight,
          se_reduce_bias, se_expand_weight, se_expand_bias, stride, padding, dilation, activation, residual,
          se_activation, se_gate, packed_weights=None):
    _geometry.check_inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight,
                                      project_bias, se_reduce_weight, se_reduce_bias, se_expand_weight,
                                      se_expand_bias, stride, padding, dilation, activation, residual, se_activation,
                                      se_gate)
    return _args.empty_like_format(input, _geometry.inverted_residual_output_shape(input, dw_weight, project_weight,
                                                                                   stride, padding, dilation))


def _fake_backward(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                   se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, stride, padding, dilation,
                   activation, residual, se_activation, se_gate, output_mask):
    _geometry.check_inverted_residual_backward(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias,
                                               project_weight, project_bias, se_reduce_weight, se_reduce_bias,
                                               se_expand_weight, se_expand_bias, stride, padding, dilation,
                                               activation, residual, se_activation, se_gate)

    def like(t, wanted):
        if not wanted or t is None:
            return input.new_empty(0)
        return t.new_empty(t.shape)

    grad_input = _args.empty_like_format(input, input.shape) if output_mask[0] else input.new_empty(0)
    weights = (expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, se_reduce_weight,
               se_reduce_bias, se_expand_weight, se_expand_bias)
    return (grad_input,) + tuple(like(t, wanted) for t, wanted in zip(weights, output_mask[1:]))


# Tensor arguments of the schema (input and the ten weights and biases), the gradients of its backward.
_TENSORS = 11


def _setup_context(ctx, inputs, output):
    # The backward recomputes the expanded and depthwise maps from the input: only the input and the weights are
    # kept (not packed_weights, a copy of the weights without a gradient).
    ctx.save_for_backward(*inputs[:_TENSORS])
    ctx.block_args = inputs[_TENSORS:_TENSORS + 7]  # stride ... se_gate


def _make_backward(ops):
    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mask = [needs[i] and (saved[i] is not None) for i in range(_TENSORS)]
        grads = ops._inverted_residual_backward(grad_output, *saved, *ctx.block_args, mask)
        return tuple(g if m else None for g, m in zip(grads, mask)) + (None,) * 8

    return backward


# The native op's autograd is C++ (csrc/autograd/inverted_residual.cpp, the same formula as _make_backward).
_library.register_op_with_backward_op(NAME, BACKWARD_NAME, "inverted_residual", _fake, _fake_backward,
                                      _make_backward, _setup_context)
