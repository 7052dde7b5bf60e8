"""The inverted-residual blocks' fused training path (train mode: batch norms with batch statistics).

Eager PyTorch keeps four tensors of the expanded width per block for the backward: the expansion's output (its
batch norm's input), its activation (the depthwise input), the depthwise output and its activation (the
projection's input). This path keeps two: the expansion's output and the depthwise output; plus the block's input,
the projection's output (of the block's output width) and per-channel statistics. The backward recomputes the
activations from them (the expansion's from the saved statistics, bit for bit, the depthwise input; the depthwise
output's batch norm and activation; the squeeze-excitation's product) and then runs the block's backward.
Keeping the depthwise output rather than convolving again: a MobileNetV2 step at batch 8 (channels-last, 2 threads,
AMD EPYC Zen 3) 218 -> 212 ms, its peak memory 30% -> 41% of eager's.

A squeeze-excitation whose activations the fused op computes (torchvision's, timm's) runs from its two 1x1
convolutions, and the path keeps its channel means and gate (N x C each): the backward multiplies by the gate once
more, and the gate's own backward is autograd's on the N x C means. Its input gradient takes one pass (the gate's
product plus the means' share) where the module's autograd graph, recomputed in the backward, took about four over
the map. Against running the module so: EfficientNet-B0 steps at batch 8 435 -> 414 ms, MobileNetV3-Large 194 ->
188 ms (same host, interleaved). Other squeeze-excitations run as the module they are, forward and, in the backward,
on the recomputed stage through autograd.

Each batch norm and the activation after it are one op forward and one backward (csrc/cpu/batch_norm_activation.cpp:
two passes over the tensor each way instead of eager's five to seven); the convolutions are fusedops' depthwise
kernels and PyTorch's 1x1 convolution, forward and backward, as in the unfused block. In channels-last, the
expansion's batch norm and activation run inside the depthwise convolution, forward and backward
(_batch_norm_activation_depthwise and its backward: the normalised rows made band by band in a per-thread tile), so
the depthwise input is never written: a MobileNetV2 step at batch 8 (2 threads, AMD EPYC Zen 3, profiled) spent
~55 ms per three steps in the expansions' batch norms and depthwise forwards before, 41 after, and ~137 in their
recomputation and the depthwise backwards before, ~101 after.

The statistics and running statistics are those of ``nn.BatchNorm2d`` in train mode: batch mean and biased variance
normalise, the running statistics move once per forward by the module's momentum (or the cumulative average when
it is None) towards the mean and the unbiased variance, and ``num_batches_tracked`` counts the batch.

It runs on CPU tensors with the native extension, outside torch.compile (which traces the submodules and fuses
them itself) and outside functorch transforms; elsewhere the blocks train through their submodules.
"""

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format
from torch.autograd.function import once_differentiable

from .. import _extension
from ..ops import activations

_FLOAT_TYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class _Spec(NamedTuple):
    """What the training path of a block needs besides its tensors that may require grad."""

    running: Tuple[Tuple[Optional[torch.Tensor], Optional[torch.Tensor]], ...]  # per batch norm
    momentum: Tuple[float, ...]
    eps: Tuple[float, ...]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    activation: str
    residual: bool
    squeeze_excitation: Optional[torch.nn.Module]  # applied to the depthwise stage's output, or None
    # (gate, activation), the op's names of the squeeze-excitation's, where the path computes it from its two 1x1
    # convolutions (_squeeze_excitation_gate) instead of running the module; None otherwise.
    squeeze_excitation_activations: Optional[Tuple[str, str]]


def _momentum(bn) -> float:
    """The factor ``nn.BatchNorm2d.forward`` moves the running statistics by in train mode, after counting the
    batch as it does."""
    if not bn.track_running_stats or bn.num_batches_tracked is None:
        return 0.0 if bn.momentum is None else bn.momentum
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def _running(bn):
    if bn.track_running_stats and bn.running_mean is not None:
        return bn.running_mean, bn.running_var
    return None, None


def _runs_native(input) -> bool:
    """Whether `input` is a tensor the training path's native ops take, in a context where they run: CPU, a
    floating-point 4-D map with more than one value per channel (else the submodules raise PyTorch's error), the
    native extension, outside torch.compile and functorch transforms."""
    return (_extension.has_ops() and not torch.compiler.is_compiling()
            and not torch._C._are_functorch_transforms_active()
            and isinstance(input, torch.Tensor) and input.device.type == "cpu" and input.dim() == 4
            and input.dtype in _FLOAT_TYPES and input.shape[0] * input.shape[2] * input.shape[3] > 1)


def batch_norm_applies(input, bn) -> bool:
    """Whether `bn` (an ``nn.BatchNorm2d``) and the activation after it run as one op on its `input`
    (:func:`batch_norm_activation`)."""
    return bn.training and _runs_native(input)


def batch_norm_activation(input, bn, activation: str):
    """``activation(bn(input))`` for a batch norm `bn` in train mode (where :func:`batch_norm_applies`): one op
    forward (statistics, normalisation and activation) and one backward, saving only `input` and the statistics."""
    return _BatchNormActivation.apply(input, bn.weight, bn.bias, _running(bn), _momentum(bn), bn.eps, activation)


def conv_batch_norm_activation(unit, input, activation: str, otherwise):
    """A conv -> batch norm -> activation unit (children ``"0"`` and ``"1"``, the activation after them) on `input`
    in train mode: the convolution, then the batch norm and `activation` as one op where :func:`batch_norm_applies`,
    else ``otherwise(input)`` (the unit's children in sequence)."""
    conv, bn = unit._modules["0"], unit._modules["1"]
    if not batch_norm_applies(input, bn):
        return otherwise(input)
    return batch_norm_activation(conv(input), bn, activation)


class _BatchNormActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, running, momentum, eps, activation):
        out, mean, invstd = torch.ops.fusedops._batch_norm_activation(input, weight, bias, *running, momentum, eps,
                                                                      activation)
        ctx.activation = activation
        ctx.save_for_backward(input, weight, bias, mean, invstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        input, weight, bias, mean, invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grads = torch.ops.fusedops._batch_norm_activation_backward(grad, input, weight, bias, mean, invstd,
                                                                   ctx.activation, list(needs[:3]))
        return (*grads, None, None, None, None)


def _conv_bn_pairs(stages):
    """The (convolution, batch norm) pairs of a block's `stages`, in order: [expand,] depthwise, project."""
    return [stage for stage in (stages.expand, stages.dw, stages.project) if stage is not None]


def _is_plain_1x1(conv) -> bool:
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.bias is None)


def applies(input, stages) -> bool:
    """Whether an inverted-residual block of `stages` (``Stages``) trains through this path on `input`: CPU, the
    native extension, every batch norm in train mode, bias-free zero-padded convolutions,
    1x1 expansion and projection, and more than one value per channel (else the submodules raise PyTorch's
    error)."""
    if not _runs_native(input):
        return False
    dw = stages.dw[0]
    if dw.bias is not None or dw.padding_mode != "zeros" or dw.groups != dw.in_channels or isinstance(dw.padding, str):
        return False
    if any(not bn.training for _, bn in _conv_bn_pairs(stages)):
        return False
    return all(_is_plain_1x1(stage[0]) for stage in (stages.expand, stages.project) if stage is not None)


def inverted_residual(input, stages, activation: str, residual: bool, se_activations=None):
    """The train-mode output of an inverted-residual block of `stages` on `input` (where :func:`applies`).
    `se_activations`: (gate, activation), the op's names of the squeeze-excitation's (``stages.se``), where the path
    may compute it from its two 1x1 convolutions; None runs the module as it is."""
    pairs = _conv_bn_pairs(stages)
    dw = stages.dw[0]
    spec = _Spec(running=tuple(_running(bn) for _, bn in pairs), momentum=tuple(_momentum(bn) for _, bn in pairs),
                 eps=tuple(bn.eps for _, bn in pairs), stride=dw.stride, padding=dw.padding, dilation=dw.dilation,
                 activation=activation, residual=residual,
                 squeeze_excitation=None if stages.se is None else stages.se[0],
                 squeeze_excitation_activations=None if stages.se is None else se_activations)
    expand = (None, None, None) if stages.expand is None else (stages.expand[0].weight, stages.expand[1].weight,
                                                               stages.expand[1].bias)
    dw_bn, (project, project_bn) = stages.dw[1], stages.project
    # The squeeze-excitation's parameters are inputs too, so that their gradients reach them: its convolutions'
    # weights and biases where the path computes it, else the module's parameters.
    if spec.squeeze_excitation_activations is not None:
        reduce, expand_se = stages.se[1], stages.se[2]
        se_parameters = (reduce.weight, reduce.bias, expand_se.weight, expand_se.bias)
    else:
        se_parameters = () if stages.se is None else tuple(stages.se[0].parameters())
    return _InvertedResidualTraining.apply(input, *expand, dw.weight, dw_bn.weight, dw_bn.bias, project.weight,
                                           project_bn.weight, project_bn.bias, spec, *se_parameters)


def _squeeze_excitation_gate(pooled, reduce_weight, reduce_bias, expand_weight, expand_bias, names):
    """The squeeze-excitation's gate of the channel means `pooled` (N, C, 1, 1): gate(1x1(act(1x1(pooled)))), with
    `names` its (gate, activation)."""
    gate_kind, activation_kind = names
    hidden = activations.activation(F.conv2d(pooled, reduce_weight, reduce_bias), activation_kind)
    return activations.gate(F.conv2d(hidden, expand_weight, expand_bias), gate_kind)


class _InvertedResidualTraining(torch.autograd.Function):
    """expand 1x1 -> BN -> act -> depthwise -> BN -> act -> [squeeze-excitation] -> project 1x1 -> BN (+ input), batch
    statistics; saves the input, the expansion's, the depthwise and the projection's outputs and the statistics
    (module docstring); with a squeeze-excitation, its channel means and gate, or (a module whose activations the
    op does not compute) its module runs as it is (module docstring)."""

    @staticmethod
    def forward(ctx, x, expand_w, expand_g, expand_b, dw_w, dw_g, dw_b, project_w, project_g, project_b, spec,
                *se_parameters):
        ops = torch.ops.fusedops
        stage = iter(range(3))

        def batch_norm(z, weight, bias, activation, in_place=False):
            k = next(stage)
            op = ops._batch_norm_activation_ if in_place else ops._batch_norm_activation
            out = op(z, weight, bias, *spec.running[k], spec.momentum[k], spec.eps[k], activation)
            return (z, *out) if in_place else out

        expanded = mean1 = invstd1 = dw_output = None
        hidden = x
        if expand_w is not None:
            expanded = F.conv2d(x, expand_w)
            if expanded.is_contiguous(memory_format=torch.channels_last):
                # The expansion's batch norm and activation inside the depthwise op, their output never written.
                next(stage)
                dw_output, mean1, invstd1 = ops._batch_norm_activation_depthwise(
                    expanded, expand_g, expand_b, *spec.running[0], spec.momentum[0], spec.eps[0], spec.activation,
                    dw_w, spec.stride, spec.padding, spec.dilation)
            else:
                hidden, mean1, invstd1 = batch_norm(expanded, expand_g, expand_b, spec.activation)
        if dw_output is None:
            dw_output = ops.depthwise_conv2d(hidden, dw_w, None, spec.stride, spec.padding, spec.dilation)
        hidden, mean2, invstd2 = batch_norm(dw_output, dw_g, dw_b, spec.activation)
        pooled = gate = None
        if spec.squeeze_excitation_activations is not None:
            # The squeeze-excitation from its convolutions: the block's backward needs only the channel means
            # and the gate of it (kept: N x C each), not the module's graph.
            pooled = hidden.mean((2, 3), keepdim=True)
            gate = _squeeze_excitation_gate(pooled, *se_parameters, spec.squeeze_excitation_activations)
            hidden.mul_(gate)
        elif spec.squeeze_excitation is not None:
            hidden = spec.squeeze_excitation(hidden)
        projected = F.conv2d(hidden, project_w)
        del hidden
        out, mean3, invstd3 = batch_norm(projected, project_g, project_b, "none")
        if spec.residual:
            out.add_(x)
        ctx.spec = spec
        # The squeeze-excitation's parameters are kept where the backward computes its gate from them; a module run
        # as it is gives its own in the backward.
        kept_se_parameters = se_parameters if gate is not None else ()
        ctx.save_for_backward(x, expand_w, expand_g, expand_b, dw_w, dw_g, dw_b, project_w, project_g, project_b,
                              expanded, dw_output, projected, mean1, invstd1, mean2, invstd2, mean3, invstd3, pooled,
                              gate, *kept_se_parameters)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x, expand_w, expand_g, expand_b, dw_w, dw_g, dw_b, project_w, project_g, project_b, expanded, dw_output,
         projected, mean1, invstd1, mean2, invstd2, mean3, invstd3, pooled, gate, *se_parameters) = ctx.saved_tensors
        spec, needs = ctx.spec, ctx.needs_input_grad
        ops, aten = torch.ops.fusedops, torch.ops.aten
        act = spec.activation
        g_projected, g_project_g, g_project_b = ops._batch_norm_activation_backward(
            grad, projected, project_g, project_b, mean3, invstd3, "none", [True, needs[8], needs[9]])
        # The depthwise stage's output activation again, from the saved statistics (the same bits as forward).
        project_input = ops._batch_norm_activation_apply(dw_output, dw_g, dw_b, mean2, invstd2, act)
        se_grads = ()
        se_input = None
        if gate is not None:
            se_input, project_input = project_input, project_input * gate
        elif spec.squeeze_excitation is not None:
            se_input = project_input.requires_grad_()
            se_parameters = [p for p, need in zip(spec.squeeze_excitation.parameters(), needs[11:]) if need]
            with torch.enable_grad():
                project_input = se_output = spec.squeeze_excitation(se_input)
        g_hidden, g_project_w, _ = aten.convolution_backward(g_projected, project_input.detach(), project_w, None,
                                                             [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                                             [True, needs[7], False])
        del project_input
        if gate is not None:
            g_hidden, se_grads = _squeeze_excitation_backward(g_hidden, se_input, pooled, gate, se_parameters,
                                                              needs[11:], spec.squeeze_excitation_activations)
            g_hidden = g_hidden.contiguous(memory_format=suggest_memory_format(dw_output))
        elif spec.squeeze_excitation is not None:
            g_hidden, *g_se = torch.autograd.grad(se_output, [se_input, *se_parameters], g_hidden)
            g_se = iter(g_se)
            se_grads = tuple(next(g_se) if need else None for need in needs[11:])
            g_hidden = g_hidden.contiguous(memory_format=suggest_memory_format(dw_output))
        del se_input, g_projected
        # The gradients of the expanded width are this backward's own: the batch norms' backward overwrites them.
        g_dw_g, g_dw_b = ops._batch_norm_activation_backward_(g_hidden, dw_output, dw_g, dw_b, mean2, invstd2, act,
                                                              [needs[5], needs[6]])
        del dw_output
        if expand_w is not None and expanded.is_contiguous(memory_format=torch.channels_last):
            # The depthwise backward reading the expansion's batch norm and activation band by band (as the forward
            # ran them), the depthwise input never written.
            g_hidden, g_dw_w = ops._batch_norm_activation_depthwise_backward(
                g_hidden, expanded, expand_g, expand_b, mean1, invstd1, act, dw_w, spec.stride, spec.padding,
                spec.dilation, [True, needs[4]])
        else:
            # The depthwise input again (the same bits as forward), just before the depthwise backward reads it: still
            # in the last-level cache there, where made before the projection's backward it was evicted by the four
            # tensors of the expanded width that backward and the batch norm's read and write.
            dw_input = x if expand_w is None else ops._batch_norm_activation_apply(expanded, expand_g, expand_b, mean1,
                                                                                    invstd1, act)
            g_hidden, g_dw_w, _ = ops._depthwise_conv2d_backward(g_hidden, dw_input, dw_w, spec.stride, spec.padding,
                                                                 spec.dilation,
                                                                 [needs[0] or expand_w is not None, needs[4], False])
            del dw_input
        g_x = g_expand_w = g_expand_g = g_expand_b = None
        if expand_w is None:
            g_x = g_hidden
        else:
            g_expand_g, g_expand_b = ops._batch_norm_activation_backward_(g_hidden, expanded, expand_g, expand_b,
                                                                          mean1, invstd1, act, [needs[2], needs[3]])
            g_x, g_expand_w, _ = aten.convolution_backward(g_hidden, x, expand_w, None, [1, 1], [0, 0], [1, 1],
                                                           False, [0, 0], 1, [needs[0], needs[1], False])
        if spec.residual and needs[0]:
            g_x = g_x + grad
        return (g_x, g_expand_w, g_expand_g, g_expand_b, g_dw_w, g_dw_g, g_dw_b, g_project_w, g_project_g,
                g_project_b, None, *se_grads)


def _squeeze_excitation_backward(grad, input, pooled, gate, parameters, needs, names):
    """The gradients of ``input * gate`` (the squeeze-excitation with its gate of `pooled`, the channel means of
    `input`) given `grad`: that of `input`, ``grad * gate`` plus the channel means' share, and those of the
    `parameters` (its convolutions' weights and biases) where `needs` says, through autograd on the N x C gate."""
    g_gate = (grad * input).sum((2, 3), keepdim=True)
    wanted = [p for p, need in zip(parameters, needs) if need]
    with torch.enable_grad():
        pooled = pooled.detach().requires_grad_()
        recomputed = _squeeze_excitation_gate(pooled, *parameters, names)
    g_pooled, *g_parameters = torch.autograd.grad(recomputed, [pooled, *wanted], g_gate)
    g_parameters = iter(g_parameters)
    # The mean's gradient is the channel's share spread over its pixels.
    spread = g_pooled / (input.shape[2] * input.shape[3])
    return torch.addcmul(spread, grad, gate), tuple(next(g_parameters) if need else None for need in needs)
