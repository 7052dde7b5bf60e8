"""Argument checks and output shapes of every op, written once in Python.

They are the Python copy of the C++ checks (``depthwise_geometry`` in csrc/shared/conv_geometry.cpp, ``dwpw_geometry``
in csrc/shared/dwpw.cpp, csrc/include/fusedops/shuffle_geometry.h and activation.h): same order, same words,
shapes printed as C++ prints them (``[2, 4, 6, 6]``), so that the fake kernels (traced calls), the reference
backend and the Triton launchers report an error exactly as the native kernels do. tests/test_argument_checks.py
holds the two copies together. They use ``torch._check`` where a size may be symbolic.
"""

import torch
from torch._prims_common import suggest_memory_format

from .. import _extension
from . import _args
from .activations import ACTIVATIONS, GATES


def _sizes(shape):
    return list(shape)


def check_pair(values, name: str) -> None:
    torch._check(len(values) == 2, lambda: f"fusedops: {name} must have 2 elements (height, width), got {len(values)}")


# ---------------------------------------------------------------------------------------------------
# depthwise_conv2d


def check_depthwise(input, weight, bias, stride, padding, dilation, weight_name="weight", bias_name="bias",
                    channels=None):
    """`channels`: those the depthwise stage reads when they are not the input's (a fused op's expanded map)."""
    torch._check(input.dim() == 4, lambda: f"fusedops: input must be a 4-D (N, C, H, W) tensor, got {input.dim()}-D")
    torch._check(weight.dim() == 4, lambda: f"fusedops: {weight_name} must be a 4-D (C*multiplier, 1, kH, kW) tensor, "
                 f"got {weight.dim()}-D")
    _args.check_floating(input, "input")
    _args.check_same(weight, input, weight_name, "input")
    check_pair(stride, "stride")
    check_pair(padding, "padding")
    check_pair(dilation, "dilation")
    torch._check(stride[0] > 0 and stride[1] > 0, lambda: f"fusedops: stride must be positive, got {_sizes(stride)}")
    torch._check(padding[0] >= 0 and padding[1] >= 0,
                 lambda: f"fusedops: padding must be non-negative, got {_sizes(padding)}")
    torch._check(dilation[0] > 0 and dilation[1] > 0,
                 lambda: f"fusedops: dilation must be positive, got {_sizes(dilation)}")
    channels = input.shape[1] if channels is None else channels
    out_channels = weight.shape[0]
    torch._check(channels > 0, lambda: f"fusedops: input must have at least one channel, got shape "
                 f"{_sizes(input.shape)}")
    torch._check(weight.shape[1] == 1, lambda: f"fusedops: {weight_name} must have shape (C*multiplier, 1, kH, kW) "
                 f"for a depthwise convolution, got {_sizes(weight.shape)}")
    torch._check(out_channels > 0 and out_channels % channels == 0,
                 lambda: f"fusedops: {weight_name} has {out_channels} output channels, which is not a positive "
                 f"multiple of the input's {channels} channels")
    torch._check(weight.shape[2] > 0 and weight.shape[3] > 0,
                 lambda: f"fusedops: {weight_name} kernel size must be positive, got {_sizes(weight.shape)}")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == out_channels,
                     lambda: f"fusedops: {bias_name} must have shape ({out_channels},), got {_sizes(bias.shape)}")
        _args.check_same(bias, input, bias_name, "input")
    for i, side in ((0, "height"), (1, "width")):
        extent = dilation[i] * (weight.shape[2 + i] - 1) + 1
        padded = input.shape[2 + i] + 2 * padding[i]
        torch._check(padded >= extent, lambda: f"fusedops: padded input {side} ({padded}) is smaller than the "
                     f"dilated kernel {side} ({extent})")


def depthwise_output_shape(input, weight, stride, padding, dilation):
    """(N, C*multiplier, H_out, W_out): the one Python copy of the convolution's output size."""
    n, _, h, w = input.shape
    kh, kw = weight.shape[2], weight.shape[3]
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return (n, weight.shape[0], out_h, out_w)


def _check_grad_output(grad_output, input, expected_shape, shape_message):
    _args.check_same_device(grad_output, input, "grad_output", "input")
    _args.check_same_dtype(grad_output, input, "grad_output", "input")
    torch._check(tuple(grad_output.shape) == tuple(expected_shape), shape_message)


def check_depthwise_backward(grad_output, input, weight, stride, padding, dilation):
    check_depthwise(input, weight, None, stride, padding, dilation)
    expected = depthwise_output_shape(input, weight, stride, padding, dilation)
    _check_grad_output(grad_output, input, expected, lambda: f"fusedops: grad_output has shape "
                       f"{_sizes(grad_output.shape)} but the convolution's output has shape "
                       f"({', '.join(map(str, expected))})")


# ---------------------------------------------------------------------------------------------------
# dwpw_conv2d


def check_activation(name, argument: str) -> None:
    torch._check(name in ACTIVATIONS, lambda: f"fusedops: {argument} must be one of None, 'relu', 'relu6', "
                 f"'hardswish', 'silu'; got '{name}'")


def check_dwpw(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out, packed_weights=None):
    """packed_weights is checked by the CPU kernel that reads it; the other implementations do not read it."""
    check_depthwise(input, dw_weight, dw_bias, stride, padding, dilation, weight_name="dw_weight", bias_name="dw_bias")
    k = dw_weight.shape[0]
    torch._check(pw_weight.dim() == 4 and pw_weight.shape[1] == k and pw_weight.shape[2] == 1
                 and pw_weight.shape[3] == 1 and pw_weight.shape[0] > 0,
                 lambda: f"fusedops: pw_weight must have shape (out_channels, {k}, 1, 1) ({k} = the depthwise "
                 f"output channels), got {_sizes(pw_weight.shape)}")
    _args.check_same(pw_weight, input, "pw_weight", "input")
    if pw_bias is not None:
        torch._check(pw_bias.dim() == 1 and pw_bias.shape[0] == pw_weight.shape[0],
                     lambda: f"fusedops: pw_bias must have shape ({pw_weight.shape[0]},), got {_sizes(pw_bias.shape)}")
        _args.check_same(pw_bias, input, "pw_bias", "input")
    check_activation(mid, "mid_activation")
    check_activation(out, "out_activation")


def dwpw_output_shape(input, dw_weight, pw_weight, stride, padding, dilation):
    n, _, oh, ow = depthwise_output_shape(input, dw_weight, stride, padding, dilation)
    return (n, pw_weight.shape[0], oh, ow)


def dwpw_uses_saved_output(out, dtype) -> bool:
    """Whether autograd saves the forward's output for the backward, which then reads it (``keep_output`` in
    csrc/autograd/dwpw_conv2d.cpp; the rule is C++'s, read through ``_extension.shared_facts``)."""
    facts = _extension.shared_facts()
    return (out in facts["dwpw_saved_output_activations"]
            and str(dtype).removeprefix("torch.") in facts["dwpw_saved_output_dtypes"])


def check_dwpw_backward(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid,
                        out, output=None):
    check_dwpw(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out)
    expected = dwpw_output_shape(input, dw_weight, pw_weight, stride, padding, dilation)
    _check_grad_output(grad_output, input, expected, lambda: f"fusedops: grad_output has shape "
                       f"{_sizes(grad_output.shape)} but the output has shape ({', '.join(map(str, expected))})")
    if output is not None and dwpw_uses_saved_output(out, input.dtype):
        _args.check_same_device(output, input, "output", "input")
        if output.dtype != input.dtype or tuple(output.shape) != tuple(grad_output.shape):
            raise RuntimeError(f"fusedops: output must be the forward's result, of shape {_sizes(grad_output.shape)} "
                               f"and dtype {input.dtype}; got shape {_sizes(output.shape)} and dtype {output.dtype}")


# ---------------------------------------------------------------------------------------------------
# inverted_residual


def _check_pointwise(input, weight, bias, inputs, weight_name, bias_name, meaning):
    torch._check(weight.dim() == 4 and weight.shape[1] == inputs and weight.shape[2] == 1 and weight.shape[3] == 1
                 and weight.shape[0] > 0,
                 lambda: f"fusedops: {weight_name} must have shape (out_channels, {inputs}, 1, 1) ({inputs} = "
                 f"{meaning}), got {_sizes(weight.shape)}")
    _args.check_same(weight, input, weight_name, "input")
    if bias is not None:
        torch._check(bias.dim() == 1 and bias.shape[0] == weight.shape[0],
                     lambda: f"fusedops: {bias_name} must have shape ({weight.shape[0]},), got {_sizes(bias.shape)}")
        _args.check_same(bias, input, bias_name, "input")


def check_gate(name, argument: str) -> None:
    torch._check(name in GATES, lambda: f"fusedops: {argument} must be 'hardsigmoid' or 'sigmoid'; got '{name}'")


def check_inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                            se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, stride, padding,
                            dilation, activation, residual, se_activation, se_gate, packed_weights=None):
    """packed_weights is checked by the CPU kernel that reads it (against the block's channels, kernel and dtype);
    the other implementations do not read it."""
    torch._check(input.dim() == 4, lambda: f"fusedops: input must be a 4-D (N, C, H, W) tensor, got {input.dim()}-D")
    _args.check_floating(input, "input")
    channels = input.shape[1]
    torch._check(channels > 0, lambda: f"fusedops: input must have at least one channel, got shape "
                 f"{_sizes(input.shape)}")
    if expand_weight is None and expand_bias is not None:
        raise RuntimeError("fusedops: expand_bias is given without expand_weight (a block without an expand stage "
                           "has no expand bias)")
    if expand_weight is not None:
        _check_pointwise(input, expand_weight, expand_bias, channels, "expand_weight", "expand_bias",
                         "the input channels")
        torch._check(input.shape[2] > 0 and input.shape[3] > 0, lambda: f"fusedops: input has an empty map (shape "
                     f"{_sizes(input.shape)}), which the expand stage's 1x1 convolution cannot take (as F.conv2d)")
    hidden = channels if expand_weight is None else expand_weight.shape[0]
    meaning = "the expand stage's output channels" if expand_weight is not None else \
        "the input channels, without an expand stage"
    torch._check(dw_weight.dim() == 4 and dw_weight.shape[0] == hidden,
                 lambda: f"fusedops: dw_weight must have shape ({hidden}, 1, kH, kW) ({hidden} = {meaning}), got "
                 f"{_sizes(dw_weight.shape)}")
    check_depthwise(input, dw_weight, dw_bias, stride, padding, dilation, weight_name="dw_weight", bias_name="dw_bias",
                    channels=hidden)
    _check_pointwise(input, project_weight, project_bias, hidden, "project_weight", "project_bias",
                     "the depthwise stage's channels")
    check_activation(activation, "activation")
    if se_reduce_weight is not None:
        _check_pointwise(input, se_reduce_weight, se_reduce_bias, hidden, "se_reduce_weight", "se_reduce_bias",
                         "the depthwise stage's channels")
        squeezed = se_reduce_weight.shape[0]
        if se_expand_weight is None:
            raise RuntimeError("fusedops: se_expand_weight must be given with se_reduce_weight (the "
                               "squeeze-excitation's second 1x1 convolution)")
        _check_pointwise(input, se_expand_weight, se_expand_bias, squeezed, "se_expand_weight", "se_expand_bias",
                         "se_reduce_weight's output channels")
        torch._check(se_expand_weight.shape[0] == hidden, lambda: f"fusedops: se_expand_weight must have shape "
                     f"({hidden}, {squeezed}, 1, 1) ({hidden} = the depthwise stage's channels, which it gates), got "
                     f"{_sizes(se_expand_weight.shape)}")
        _, _, out_h, out_w = depthwise_output_shape(input, dw_weight, stride, padding, dilation)
        torch._check(out_h > 0 and out_w > 0, lambda: "fusedops: the squeeze-excitation needs a non-empty depthwise "
                     f"output to pool, but it is {out_h}x{out_w}")
    else:
        for t, name in ((se_reduce_bias, "se_reduce_bias"), (se_expand_weight, "se_expand_weight"),
                        (se_expand_bias, "se_expand_bias")):
            if t is not None:
                raise RuntimeError(f"fusedops: {name} is given without se_reduce_weight (a block without a "
                                   "squeeze-excitation has none)")
    check_activation(se_activation, "se_activation")
    check_gate(se_gate, "se_gate")
    if residual:
        n, _, out_h, out_w = depthwise_output_shape(input, dw_weight, stride, padding, dilation)
        out_channels = project_weight.shape[0]
        torch._check(out_channels == channels and out_h == input.shape[2] and out_w == input.shape[3],
                     lambda: f"fusedops: residual needs the block's output to have the input's shape "
                     f"{_sizes(input.shape)}, but it has shape [{n}, {out_channels}, {out_h}, {out_w}] (the residual "
                     "add needs stride 1, size-preserving padding and as many project_weight output channels as "
                     "input channels)")


def inverted_residual_output_shape(input, dw_weight, project_weight, stride, padding, dilation):
    n, _, out_h, out_w = depthwise_output_shape(input, dw_weight, stride, padding, dilation)
    return (n, project_weight.shape[0], out_h, out_w)


def check_inverted_residual_backward(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias,
                                     project_weight, project_bias, se_reduce_weight, se_reduce_bias, se_expand_weight,
                                     se_expand_bias, stride, padding, dilation, activation, residual, se_activation,
                                     se_gate):
    check_inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                            se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, stride, padding,
                            dilation, activation, residual, se_activation, se_gate)
    expected = inverted_residual_output_shape(input, dw_weight, project_weight, stride, padding, dilation)
    _check_grad_output(grad_output, input, expected, lambda: f"fusedops: grad_output has shape "
                       f"{_sizes(grad_output.shape)} but the output has shape ({', '.join(map(str, expected))})")


# ---------------------------------------------------------------------------------------------------
# ghost_module


def check_ghost_module(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels, stride,
                       activation, packed_weights=None):
    """packed_weights is checked by the CPU kernel that reads it; the other implementations do not read it."""
    torch._check(input.dim() == 4, lambda: f"fusedops: input must be a 4-D (N, C, H, W) tensor, got {input.dim()}-D")
    _args.check_floating(input, "input")
    channels = input.shape[1]
    torch._check(channels > 0, lambda: f"fusedops: input must have at least one channel, got shape "
                 f"{_sizes(input.shape)}")
    _check_pointwise(input, primary_weight, primary_bias, channels, "primary_weight", "primary_bias",
                     "the input channels")
    torch._check(input.shape[2] > 0 and input.shape[3] > 0, lambda: f"fusedops: input has an empty map (shape "
                 f"{_sizes(input.shape)}), which the primary 1x1 convolution cannot take (as F.conv2d)")
    check_pair(stride, "stride")
    torch._check(stride[0] > 0 and stride[1] > 0, lambda: f"fusedops: stride must be positive, got {_sizes(stride)}")
    init = primary_weight.shape[0]
    torch._check(cheap_weight.dim() == 4, lambda: "fusedops: cheap_weight must be a 4-D (C*multiplier, 1, kH, kW) "
                 f"tensor, got {cheap_weight.dim()}-D")
    torch._check(cheap_weight.shape[2] % 2 == 1 and cheap_weight.shape[3] % 2 == 1,
                 lambda: "fusedops: cheap_weight must have an odd kernel size (its padding k // 2 keeps the primary "
                 f"half's size, which the two halves share), got {_sizes(cheap_weight.shape)}")
    check_depthwise(input, cheap_weight, cheap_bias, (1, 1), (cheap_weight.shape[2] // 2, cheap_weight.shape[3] // 2),
                    (1, 1), weight_name="cheap_weight", bias_name="cheap_bias", channels=init)
    most = init + cheap_weight.shape[0]
    torch._check(init <= out_channels <= most, lambda: f"fusedops: out_channels must be between {init} "
                 f"(primary_weight's output channels) and {most} (those plus cheap_weight's), got {out_channels}")
    check_activation(activation, "activation")
    if residual is not None:
        expected = ghost_module_output_shape(input, out_channels, stride)
        torch._check(tuple(residual.shape) == expected, lambda: f"fusedops: residual must have the output's shape "
                     f"{_sizes(expected)}, got {_sizes(residual.shape)}")
        _args.check_same(residual, input, "residual", "input")


def ghost_module_output_shape(input, out_channels, stride):
    n, _, h, w = input.shape
    return (n, out_channels, (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1)


def check_ghost_module_backward(grad_output, input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                out_channels, stride, activation):
    check_ghost_module(input, primary_weight, primary_bias, cheap_weight, cheap_bias, None, out_channels, stride,
                       activation)
    expected = ghost_module_output_shape(input, out_channels, stride)
    _check_grad_output(grad_output, input, expected, lambda: f"fusedops: grad_output has shape "
                       f"{_sizes(grad_output.shape)} but the output has shape ({', '.join(map(str, expected))})")


# ---------------------------------------------------------------------------------------------------
# shufflenet_v2_unit


def check_shufflenet_v2_unit(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                             shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias, stride,
                             padding, dilation, activation, packed_weights=None):
    """The branch is checked as an inverted residual (without a residual or a squeeze-excitation) of its input: the
    input's second half of channels without the shortcut's weights, the whole input with them. packed_weights is
    checked by the CPU kernel that reads it; the other implementations do not read it."""
    torch._check(input.dim() == 4, lambda: f"fusedops: input must be a 4-D (N, C, H, W) tensor, got {input.dim()}-D")
    channels = input.shape[1]
    shortcut = shortcut_dw_weight is not None
    if shortcut != (shortcut_pw_weight is not None):
        raise RuntimeError("fusedops: shortcut_dw_weight and shortcut_pw_weight must be given together (the "
                           "down-sampling unit's shortcut) or not at all, got only "
                           + ("shortcut_dw_weight" if shortcut else "shortcut_pw_weight"))
    if not shortcut:
        for t, name in ((shortcut_dw_bias, "shortcut_dw_bias"), (shortcut_pw_bias, "shortcut_pw_bias")):
            if t is not None:
                raise RuntimeError(f"fusedops: {name} is given without the shortcut's weights")
        torch._check(channels % 2 == 0, lambda: "fusedops: input must have an even number of channels without the "
                     f"shortcut's weights (its second half is the branch's input), got {channels}")
    check_activation(activation, "activation")
    branch_input = input if shortcut else input[:, channels // 2:]
    check_inverted_residual(branch_input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                            None, None, None, None, stride, padding, dilation, activation, False, "relu",
                            "hardsigmoid")
    branch_channels = project_weight.shape[0]
    _, _, out_h, out_w = depthwise_output_shape(branch_input, dw_weight, stride, padding, dilation)
    if not shortcut:
        half = channels // 2
        torch._check(branch_channels == half, lambda: f"fusedops: project_weight must have {half} output channels (as "
                     "many as the input's first half, which the output interleaves with the branch's), got "
                     f"{branch_channels}")
        h, w = input.shape[2], input.shape[3]
        torch._check(out_h == h and out_w == w, lambda: "fusedops: without the shortcut's weights the branch must keep "
                     "the map's size (stride 1 and size-preserving padding: the output interleaves it with the input's "
                     f"first half), but it maps {h}x{w} to {out_h}x{out_w}")
        return
    kh, kw = dw_weight.shape[2], dw_weight.shape[3]
    torch._check(shortcut_dw_weight.dim() == 4 and shortcut_dw_weight.shape[0] == channels
                 and shortcut_dw_weight.shape[2] == kh and shortcut_dw_weight.shape[3] == kw,
                 lambda: f"fusedops: shortcut_dw_weight must have shape ({channels}, 1, {kh}, {kw}) (the input "
                 f"channels, dw_weight's kernel size), got {_sizes(shortcut_dw_weight.shape)}")
    check_depthwise(input, shortcut_dw_weight, shortcut_dw_bias, stride, padding, dilation,
                    weight_name="shortcut_dw_weight", bias_name="shortcut_dw_bias", channels=channels)
    _check_pointwise(input, shortcut_pw_weight, shortcut_pw_bias, channels, "shortcut_pw_weight", "shortcut_pw_bias",
                     "the input channels")
    torch._check(shortcut_pw_weight.shape[0] == branch_channels, lambda: "fusedops: shortcut_pw_weight must have "
                 f"{branch_channels} output channels (as many as project_weight: the output interleaves the two "
                 f"halves), got {shortcut_pw_weight.shape[0]}")


def shufflenet_v2_unit_output_shape(input, dw_weight, project_weight, stride, padding, dilation):
    """(N, 2 * B, H_out, W_out): the two halves of B channels each, interleaved."""
    n, _, out_h, out_w = depthwise_output_shape(input, dw_weight, stride, padding, dilation)
    return (n, 2 * project_weight.shape[0], out_h, out_w)


def check_shufflenet_v2_unit_backward(grad_output, input, expand_weight, expand_bias, dw_weight, dw_bias,
                                      project_weight, project_bias, shortcut_dw_weight, shortcut_dw_bias,
                                      shortcut_pw_weight, shortcut_pw_bias, stride, padding, dilation, activation):
    check_shufflenet_v2_unit(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                             shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias, stride,
                             padding, dilation, activation)
    expected = shufflenet_v2_unit_output_shape(input, dw_weight, project_weight, stride, padding, dilation)
    _check_grad_output(grad_output, input, expected, lambda: f"fusedops: grad_output has shape "
                       f"{_sizes(grad_output.shape)} but the output has shape ({', '.join(map(str, expected))})")


# ---------------------------------------------------------------------------------------------------
# channel_shuffle, concat_shuffle and _concat_shuffle_backward


def _check_shuffle_input(t, name):
    torch._check(t.dim() == 4, lambda: f"fusedops: {name} must be a 4-D (N, C, H, W) tensor, got {t.dim()}-D "
                 f"with shape {_sizes(t.shape)}")
    _args.check_floating(t, name)


def _check_groups(groups, channels, channels_of):
    torch._check(groups > 0, lambda: f"fusedops: groups must be positive, got {groups}")
    torch._check(channels % groups == 0, lambda: f"fusedops: the number of channels of {channels_of} ({channels}) "
                 f"must be divisible by groups ({groups})")


def check_channel_shuffle(input, groups):
    _check_shuffle_input(input, "input")
    _check_groups(groups, input.shape[1], "input")


def check_concat_shuffle(a, b, groups):
    _check_shuffle_input(a, "a")
    _check_shuffle_input(b, "b")
    _args.check_same(b, a, "b", "a")
    torch._check(a.shape[0] == b.shape[0] and a.shape[2:] == b.shape[2:],
                 lambda: "fusedops: a and b must have the same batch size, height and width (they are concatenated "
                 f"along channels), got a of shape {_sizes(a.shape)} and b of shape {_sizes(b.shape)}")
    _check_groups(groups, a.shape[1] + b.shape[1], "a and b together")


def check_concat_shuffle_backward(grad, channels_a, groups):
    _check_shuffle_input(grad, "grad")
    _check_groups(groups, grad.shape[1], "grad")
    torch._check(0 <= channels_a <= grad.shape[1], lambda: f"fusedops: channels_a must be in [0, {grad.shape[1]}] "
                 f"(the channels of grad), got {channels_a}")


def concat_memory_format(a, b):
    """torch.cat's output format: the inputs' common suggested format, else NCHW."""
    fa, fb = suggest_memory_format(a), suggest_memory_format(b)
    return fa if fa == fb else torch.contiguous_format
