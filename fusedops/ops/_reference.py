"""Pure-PyTorch reference implementations of every fusedops op.

They define the semantics the kernels must match: the parity tests and the benchmarks compare against
them, and the ``reference`` backend runs them. Arguments are already normalised by the public wrappers
(pairs for stride/padding/dilation).
"""

import torch
import torch.nn.functional as F

from .activations import activation, gate


def depthwise_conv2d(input, weight, bias, stride, padding, dilation):
    return F.conv2d(input, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups=input.shape[1])


def channel_shuffle(input, groups):
    # The view/transpose idiom (torchvision's ShuffleNetV2), laid out like F.channel_shuffle's output.
    from torch._prims_common import suggest_memory_format

    n, c, h, w = input.shape
    out = input.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
    # A fresh tensor in the input's format, strides and all: .contiguous() would keep the reshape's strides where
    # both formats hold at once (1x1 maps, one channel), and they differ from F.channel_shuffle's there.
    return torch.empty_like(input, memory_format=suggest_memory_format(input)).copy_(out)


def concat_shuffle(a, b, groups):
    return channel_shuffle(torch.cat([a, b], 1), groups)


def dwpw_conv2d(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid_activation,
                out_activation, packed_weights=None):
    mid = activation(depthwise_conv2d(input, dw_weight, dw_bias, stride, padding, dilation), mid_activation)
    return activation(F.conv2d(mid, pw_weight, pw_bias), out_activation)


def squeeze_excitation(x, reduce_weight, reduce_bias, expand_weight, expand_bias, activation_kind, gate_kind):
    # torchvision's SqueezeExcitation (timm's SqueezeExcite): x * gate(conv1x1(act(conv1x1(mean_hw(x))))).
    scale = F.adaptive_avg_pool2d(x, 1)
    scale = activation(F.conv2d(scale, reduce_weight, reduce_bias), activation_kind)
    return x * gate(F.conv2d(scale, expand_weight, expand_bias), gate_kind)


def inverted_residual(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                      se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, stride, padding, dilation,
                      activation_kind, residual, se_activation, se_gate, packed_weights=None):
    # The block with its batch norms folded: [expand 1x1 -> act] -> depthwise -> act -> [squeeze-excitation] ->
    # project 1x1 (linear) [+ input]. packed_weights (the CPU kernel's copy of the weights) is not needed here.
    x = input
    if expand_weight is not None:
        x = activation(F.conv2d(x, expand_weight, expand_bias), activation_kind)
    x = activation(depthwise_conv2d(x, dw_weight, dw_bias, stride, padding, dilation), activation_kind)
    if se_reduce_weight is not None:
        x = squeeze_excitation(x, se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, se_activation,
                               se_gate)
    out = F.conv2d(x, project_weight, project_bias)
    return out + input if residual else out


def ghost_module(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels, stride,
                 activation_kind, packed_weights=None):
    # timm's GhostModule with its batch norms folded: cat([x1, act(depthwise(x1))])[:, :out_channels] with
    # x1 = act(conv1x1(input)) [+ residual]. packed_weights (the CPU kernel's copy of the weights) is not needed.
    x1 = activation(F.conv2d(input, primary_weight, primary_bias, tuple(stride)), activation_kind)
    kh, kw = cheap_weight.shape[2:]
    x2 = activation(F.conv2d(x1, cheap_weight, cheap_bias, 1, (kh // 2, kw // 2), groups=x1.shape[1]),
                    activation_kind)
    out = torch.cat([x1, x2], 1)[:, :out_channels]
    return out + residual if residual is not None else out


def shufflenet_v2_unit(input, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                       shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias, stride, padding,
                       dilation, activation_kind, packed_weights=None):
    # ShuffleNetV2's unit with its batch norms folded: the branch act(1x1) -> depthwise -> act(1x1) on the second
    # half of the channels (the stride-1 unit) or on the whole input beside the shortcut depthwise -> act(1x1) (the
    # down-sampling unit), then channel_shuffle(cat([first, second]), 2). packed_weights is not needed here.
    from torch._prims_common import suggest_memory_format

    if shortcut_dw_weight is None:
        first, x = input.chunk(2, 1)
    else:
        x = input
        first = dwpw_conv2d(input, shortcut_dw_weight, shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias, stride,
                            padding, dilation, "none", activation_kind)
    x = activation(F.conv2d(x, expand_weight, expand_bias), activation_kind)
    second = dwpw_conv2d(x, dw_weight, dw_bias, project_weight, project_bias, stride, padding, dilation, "none",
                         activation_kind)
    out = torch.stack([first, second], 2).flatten(1, 2)
    return torch.empty(out.shape, dtype=out.dtype, device=out.device,
                       memory_format=suggest_memory_format(input)).copy_(out)
