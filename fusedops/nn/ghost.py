"""GhostNet's blocks (Han et al. 2020) as timm builds them, with timm's submodules and state-dict keys:
:class:`GhostModule` (one fused :func:`fusedops.ghost_module` op in eval mode), :class:`GhostBottleneck` and the
squeeze-excitation it uses (:class:`GhostSqueezeExcite`)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.depthwise_conv2d import depthwise_conv2d
from ..ops.dwpw_conv2d import dwpw_conv2d
from ..ops.ghost_module import (BOTTLENECK_NAME, DEPTHWISE_NAME, EXCITED_NAME, ghost_bottleneck,
                                ghost_bottleneck_fuses, ghost_bottleneck_runs_triton, ghost_module,
                                ghost_module_excited, ghost_module_excited_fuses, ghost_module_then_depthwise,
                                ghost_module_then_depthwise_fuses, pack_weights)
from . import training
from .depthwise import DepthwiseConv2d
from .freeze import FoldedWeights
from ._channels import make_divisible
from .inverted_residual import _ACTIVATION_MODULES, _activation_module, _fold, _runs_unfused

# The activation module classes a Ghost module takes (timm's act_layer): the fused blocks' activations, and
# nn.Identity (the second Ghost module of a bottleneck), by the name the fused op takes.
_ACTIVATIONS = {**{cls: name for name, cls in _ACTIVATION_MODULES.items()}, nn.Identity: "none"}


def _activation_of(act_layer) -> str:
    if act_layer is None:
        return "none"
    if isinstance(act_layer, type) and act_layer in _ACTIVATIONS:
        return _ACTIVATIONS[act_layer]
    modules = ", ".join(f"nn.{cls.__name__}" for cls in _ACTIVATIONS)
    raise ValueError(f"fusedops: act_layer must be None or one of {modules} (what the fused op computes); got "
                     f"{act_layer!r}")


class GhostModule(FoldedWeights, nn.Module):
    r"""GhostNet's Ghost module: a 1x1 convolution to ``init = ceil(out_chs / ratio)`` channels (``primary_conv``:
    conv, BN, activation), a depthwise ``dw_size`` convolution of those with ``ratio - 1`` filters each
    (``cheap_operation``: conv, BN, activation), both halves concatenated and cut to ``out_chs`` channels.

    A drop-in for ``timm.models.ghostnet.GhostModule(in_chs, out_chs, kernel_size=1, ratio=2, dw_size=3, stride=1,
    act_layer=nn.ReLU)``: same constructor, attributes and submodules, so the state-dict keys are timm's and weights
    load either way. ``kernel_size`` must be 1 (GhostNet's primary convolutions are 1x1; the fused op takes no
    other).

    Eval mode runs one fused :func:`fusedops.ghost_module` op with the batch norms folded into the weights (both
    halves written straight into the output: no concatenation, no slice copy); :meth:`freeze` keeps the folded
    weights as constants, as for the other fused blocks. Train mode runs timm's sequence (batch statistics,
    running-stat updates), with fusedops' depthwise kernel for the cheap operation and, on CPU, each batch norm and
    its activation as one op (``fusedops/nn/training.py``).

    ``forward(input, residual=None)``: ``residual``, when given, is added to the output inside the op (the
    bottleneck's shortcut).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, ratio: int = 2, dw_size: int = 3,
                 stride: int = 1, act_layer=nn.ReLU, device=None, dtype=None):
        super().__init__()
        if kernel_size != 1:
            raise ValueError(f"fusedops: GhostModule supports kernel_size=1 (GhostNet's 1x1 primary convolution) "
                             f"only, got {kernel_size}")
        if ratio < 2:
            raise ValueError(f"fusedops: GhostModule needs ratio >= 2 (ratio - 1 cheap filters per channel), got "
                             f"{ratio}")
        factory = dict(device=device, dtype=dtype)
        self.out_chs = out_chs
        self.activation = _activation_of(act_layer)
        init_chs = math.ceil(out_chs / ratio)
        new_chs = init_chs * (ratio - 1)
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_chs, init_chs, kernel_size, stride, kernel_size // 2, bias=False, **factory),
            nn.BatchNorm2d(init_chs, **factory),
            _activation_module(self.activation),
        )
        self.cheap_operation = nn.Sequential(
            DepthwiseConv2d(init_chs, new_chs, dw_size, 1, dw_size // 2, groups=init_chs, bias=False, **factory),
            nn.BatchNorm2d(new_chs, **factory),
            _activation_module(self.activation),
        )

    def _fold(self):
        return (*_fold(self.primary_conv[0], self.primary_conv[1]),
                *_fold(self.cheap_operation[0], self.cheap_operation[1]))

    def folded_weights(self):
        """(primary_weight, primary_bias, cheap_weight, cheap_bias) of the fused op, batch norms folded in."""
        return self._folded_weights()

    def runs_fused(self) -> bool:
        """Whether forward runs the fused op: both batch norms normalise with running statistics (eval mode) and
        the cheap convolution pads with zeros."""
        # Through _modules: nn.Module's attribute lookup of children costs ~0.5 us each on a path timed in us.
        modules = self._modules
        primary, cheap = modules["primary_conv"]._modules, modules["cheap_operation"]._modules
        return not _runs_unfused(cheap["0"], (primary["1"], cheap["1"]))

    def _stride(self):
        return self._modules["primary_conv"]._modules["0"].stride

    def forward(self, input, residual=None):
        if not self.runs_fused():
            primary, cheap = self.primary_conv, self.cheap_operation
            x1 = training.conv_batch_norm_activation(primary, input, self.activation, primary)
            x2 = training.conv_batch_norm_activation(cheap, x1, self.activation, cheap)
            out = torch.cat([x1, x2], dim=1)[:, :self.out_chs]
            return out if residual is None else out + residual
        stride = self._stride()
        key = (stride, self.activation, self.out_chs)
        if not torch.compiler.is_compiling():
            # Frozen and called before: the native call made then, without the fused path's Python (the fold and
            # packing checks, the wrapper's normalisation).
            out = self._call_prepared(input, key, residual)
            if out is not NotImplemented:
                return out
        folded = self.folded_weights()
        # Frozen: the CPU kernel's packed form of the folded weights is made once too.
        packed = self._packed_weights(
            folded, input, "ghost_module",
            lambda: pack_weights(input, *folded, self.out_chs, stride, self.activation, residual))
        if packed is not None:
            self._prepare_call("ghost_module", folded, key, (*folded, self.out_chs, stride, self.activation, packed),
                               residual_at=4)
        return ghost_module(input, *folded, self.out_chs, stride, self.activation, residual=residual,
                            packed_weights=packed)

    def forward_then_depthwise(self, input, dw_weight, dw_bias, dw_stride):
        """``depthwise_conv2d(self(input), dw_weight, dw_bias, dw_stride, padding=k // 2)`` (GhostNet's stride-2
        bottlenecks): where the module :meth:`runs_fused` and the kernel pays (on CPU, without gradients, the module's
        output larger than the L2 cache: :func:`fusedops.ops.ghost_module.ghost_module_then_depthwise_fuses`), one
        kernel in which the module's output never reaches memory."""
        stride = self._stride()
        fused = self.runs_fused()
        key = (stride, self.activation, self.out_chs, dw_weight, dw_bias, dw_stride)
        if (fused and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and ghost_module_then_depthwise_fuses(input, self.out_chs, stride)):
            # Frozen and called before: the native call made then (as forward's).
            out = self._call_prepared(input, key)
            if out is not NotImplemented:
                return out
        # The parameters matter only where a gradient could be recorded (collecting them costs ~5 us).
        weights = (*self.parameters(), dw_weight, dw_bias) if torch.is_grad_enabled() else ()
        if not fused or not ghost_module_then_depthwise_fuses(input, self.out_chs, stride, *weights):
            padding = (dw_weight.shape[2] // 2, dw_weight.shape[3] // 2)
            return depthwise_conv2d(self(input), dw_weight, dw_bias, dw_stride, padding)
        folded = self.folded_weights()
        packed = self._packed_weights(
            folded, input, "ghost_module",
            lambda: pack_weights(input, *folded, self.out_chs, stride, self.activation))
        arguments = (*folded, self.out_chs, stride, self.activation, dw_weight, dw_bias, tuple(dw_stride), packed)
        if packed is not None:
            self._prepare_call(DEPTHWISE_NAME, folded, key, arguments)
        return ghost_module_then_depthwise(input, *arguments)

    def forward_excited(self, input, se, residual=None):
        """``self(se(input), residual)`` for a :class:`GhostSqueezeExcite` ``se`` (GhostNet's bottlenecks with a
        squeeze-excitation): where the module :meth:`runs_fused` on CPU without gradients, one kernel whose gates scale
        the module's GEMM input on its way in, the gated input never written
        (:func:`fusedops.ops.ghost_module.ghost_module_excited`)."""
        stride = self._stride()
        reduce, expand = se.conv_reduce, se.conv_expand
        fused = (type(se) is GhostSqueezeExcite and type(se.act1) is nn.ReLU and type(se.gate) is nn.Hardsigmoid
                 and self.runs_fused())
        key = (stride, self.activation, self.out_chs, se, se.act1, se.gate, reduce.weight, reduce.bias, expand.weight,
               expand.bias)
        if fused and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # Frozen and called before: the native call made then (as forward's).
            out = self._call_prepared(input, key, residual)
            if out is not NotImplemented:
                return out
        # The parameters matter only where a gradient could be recorded (collecting them costs ~5 us).
        weights = (*self.parameters(), *se.parameters(), residual) if torch.is_grad_enabled() else ()
        if not fused or not ghost_module_excited_fuses(input, *weights):
            return self(se(input), residual)
        folded = self.folded_weights()
        packed = self._packed_weights(
            folded, input, "ghost_module",
            lambda: pack_weights(input, *folded, self.out_chs, stride, self.activation, residual))
        arguments = (reduce.weight, reduce.bias, expand.weight, expand.bias, "relu", "hardsigmoid", *folded,
                     self.out_chs, tuple(stride), self.activation, packed)
        if packed is not None:
            self._prepare_call(EXCITED_NAME, folded, key, arguments, residual_at=10)
        return ghost_module_excited(input, *arguments[:10], *arguments[10:13], residual=residual,
                                    packed_weights=packed)

    def forward_then_module(self, input, second, residual, depthwise=None):
        """``second(x, residual)`` of ``x = self(input)``, then, where ``depthwise`` ``(weight, bias, stride)`` is
        given, ``x = depthwise_conv2d(x, weight, bias, stride, padding=k // 2)``, for a :class:`GhostModule` ``second``
        (GhostNet's bottlenecks without squeeze-excitation, ``residual`` their shortcut): where both modules
        :meth:`runs_fused` at stride 1 without gradients, :func:`fusedops.ops.ghost_module.ghost_bottleneck` (on the
        CPU one kernel in which nothing between the input and the output reaches memory; on CUDA and Triton the
        depthwise stage inside the second module's kernel)."""
        dw_weight, dw_bias, dw_stride = (None, None, (1, 1)) if depthwise is None else depthwise
        # The second module's fold is part of the key: its refold (a weight load, a conversion) drops the call.
        stride, second_stride = self._stride(), second._stride()
        key = (stride, second_stride, self.activation, self.out_chs, second, second._folded, second.activation,
               second.out_chs, dw_weight, dw_bias, dw_stride)
        fused = (self.runs_fused() and second.runs_fused() and tuple(stride) == (1, 1)
                 and tuple(second_stride) == (1, 1))
        if (fused and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
                and ghost_bottleneck_fuses(input)):
            # Frozen and called before: the native call made then (as forward's).
            out = self._call_prepared(input, key, residual)
            if out is not NotImplemented:
                return out
        # The parameters matter only where a gradient could be recorded (collecting them costs ~5 us).
        weights = (*self.parameters(), *second.parameters(), dw_weight, dw_bias, residual) \
            if torch.is_grad_enabled() else ()
        if not fused or not (ghost_bottleneck_fuses(input, *weights) or ghost_bottleneck_runs_triton(input, *weights)):
            x = self(input)
            if depthwise is not None:
                x = depthwise_conv2d(x, dw_weight, dw_bias, dw_stride, (dw_weight.shape[2] // 2,
                                                                        dw_weight.shape[3] // 2))
            return second(x, residual=residual)
        folded, second_folded = self.folded_weights(), second.folded_weights()
        packed = self._packed_weights(
            folded, input, "ghost_module", lambda: pack_weights(input, *folded, self.out_chs, 1, self.activation))
        # The second module's packing reads only its input's channels, dtype and device: a view of that shape.
        second_packed = second._packed_weights(
            second_folded, input, "ghost_module",
            lambda: pack_weights(input.new_empty(1, 1, 1, 1).expand(1, self.out_chs, 1, 1), *second_folded,
                                 second.out_chs, 1, second.activation))
        arguments = (*folded, self.out_chs, self.activation, dw_weight, dw_bias, tuple(dw_stride), *second_folded,
                     second.out_chs, second.activation, residual, packed, second_packed)
        if packed is not None and second_packed is not None and second_folded is second._folded:
            # (Without this call's residual: each call passes its own.)
            self._prepare_call(BOTTLENECK_NAME, folded, key, (*arguments[:-3], *arguments[-2:]), residual_at=-2)
        return ghost_bottleneck(input, *arguments)

    def extra_repr(self) -> str:
        frozen = ", frozen=True" if self._frozen else ""
        return f"out_chs={self.out_chs}, activation={self.activation!r}{frozen}"


class GhostSqueezeExcite(nn.Module):
    r"""``x * hardsigmoid(conv_expand(relu(conv_reduce(mean_hw(x)))))``: the squeeze-excitation of GhostNet's
    bottleneck, with the submodules and state-dict keys of timm's ``SqueezeExcite`` as GhostNet builds it
    (``conv_reduce``, ``act1``, ``conv_expand``, ``gate``; reduced channels ``make_divisible(in_chs * rd_ratio, 4)``
    with timm's rounding)."""

    def __init__(self, in_chs: int, rd_ratio: float = 0.25, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        rd_channels = make_divisible(in_chs * rd_ratio, 4)  # timm's make_divisible is torchvision's
        self.conv_reduce = nn.Conv2d(in_chs, rd_channels, 1, bias=True, **factory)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, in_chs, 1, bias=True, **factory)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        # The 1x1 convolutions of the pooled (N, C, 1, 1) map as matrix products: the same sums, without the
        # convolution's dispatch (~2x the cost of the whole gate at batch 1).
        reduce, expand = self.conv_reduce, self.conv_expand
        x_se = self.act1(F.linear(x.mean((2, 3)), reduce.weight.flatten(1), reduce.bias))
        x_se = self.gate(F.linear(x_se, expand.weight.flatten(1), expand.bias))
        return x * x_se[:, :, None, None]


class GhostBottleneck(FoldedWeights, nn.Module):
    r"""GhostNet's bottleneck: ``ghost1`` (Ghost module, ReLU) -> [``conv_dw``/``bn_dw``: depthwise ``dw_kernel_size``
    stride ``stride``, no activation, when ``stride > 1``] -> [``se``: :class:`GhostSqueezeExcite`, when
    ``se_ratio > 0``] -> ``ghost2`` (Ghost module, no activation) ``+ shortcut(input)``, the shortcut the identity
    (``in_chs == out_chs`` and stride 1) or depthwise ``dw_kernel_size`` stride ``stride`` + BN -> 1x1 + BN.

    A drop-in for ``timm.models.ghostnet.GhostBottleneck(in_chs, mid_chs, out_chs, dw_kernel_size=3, stride=1,
    act_layer=nn.ReLU, se_ratio=0.)`` (``mode='original'``): same submodules and state-dict keys.

    Eval mode: each Ghost module is one fused op, the shortcut is added inside ``ghost2``'s op (no separate add),
    a projecting shortcut runs as one fused :func:`fusedops.dwpw_conv2d`, all with the batch norms folded. On CPU
    without gradients, the stride-2 depthwise stage runs inside ``ghost1``'s kernel where ``ghost1``'s output would
    not stay in the L2 cache (:meth:`GhostModule.forward_then_depthwise`; elsewhere :func:`fusedops.depthwise_conv2d`
    after it), the squeeze-excitation inside ``ghost2``'s (:meth:`GhostModule.forward_excited`: its gates scale
    ``ghost2``'s GEMM input on the way in), and a bottleneck without squeeze-excitation as one kernel from its input to
    its output (the shortcut computed first), nothing in between written (:meth:`GhostModule.forward_then_module`).
    Train mode runs timm's sequence.
    """

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, dw_kernel_size: int = 3, stride: int = 1,
                 act_layer=nn.ReLU, se_ratio: float = 0.0, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.stride = stride
        padding = (dw_kernel_size - 1) // 2
        self.ghost1 = GhostModule(in_chs, mid_chs, act_layer=act_layer, **factory)
        if stride > 1:
            self.conv_dw = DepthwiseConv2d(mid_chs, mid_chs, dw_kernel_size, stride=stride, padding=padding,
                                           groups=mid_chs, bias=False, **factory)
            self.bn_dw = nn.BatchNorm2d(mid_chs, **factory)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = GhostSqueezeExcite(mid_chs, rd_ratio=se_ratio, **factory) if se_ratio is not None and \
            se_ratio > 0.0 else None
        self.ghost2 = GhostModule(mid_chs, out_chs, act_layer=nn.Identity, **factory)
        if in_chs == out_chs and stride == 1:
            self.shortcut = nn.Sequential()
        else:
            self.shortcut = nn.Sequential(
                DepthwiseConv2d(in_chs, in_chs, dw_kernel_size, stride=stride, padding=padding, groups=in_chs,
                                bias=False, **factory),
                nn.BatchNorm2d(in_chs, **factory),
                nn.Conv2d(in_chs, out_chs, 1, stride=1, padding=0, bias=False, **factory),
                nn.BatchNorm2d(out_chs, **factory),
            )

    def _fold(self):
        """(conv_dw weight, bias, shortcut dw weight, bias, shortcut 1x1 weight, bias), None where absent."""
        dw = (None, None) if self.conv_dw is None else _fold(self.conv_dw, self.bn_dw)
        shortcut = (None,) * 4 if len(self.shortcut) == 0 else (*_fold(self.shortcut[0], self.shortcut[1]),
                                                               *_fold(self.shortcut[2], self.shortcut[3]))
        return (*dw, *shortcut)

    def _runs_unfused(self) -> bool:
        """Whether forward runs timm's sequence: one of the bottleneck's own batch norms (those of conv_dw and the
        shortcut) normalises with batch statistics (train mode), or one of its depthwise convolutions pads other
        than with zeros (the ops pad with zeros). The Ghost modules decide for themselves: each computes the same
        function either way."""
        modules = self._modules
        shortcut = modules["shortcut"]._modules
        stages = [] if self.conv_dw is None else [(modules["conv_dw"], (modules["bn_dw"],))]
        if shortcut:
            stages.append((shortcut["0"], (shortcut["1"], shortcut["3"])))
        return any(_runs_unfused(conv, batch_norms) for conv, batch_norms in stages)

    def forward(self, input):
        if self._runs_unfused():
            x = self.ghost1(input)
            if self.conv_dw is not None:
                x = self.conv_dw(x)
                bn = self.bn_dw
                x = training.batch_norm_activation(x, bn, "none") if training.batch_norm_applies(x, bn) else bn(x)
            if self.se is not None:
                x = self.se(x)
            return self.ghost2(x) + self.shortcut(input)
        # (Children through _modules: nn.Module's attribute lookup costs ~0.5 us each on a path timed in us.)
        modules = self._modules
        ghost1, ghost2, shortcut = modules["ghost1"], modules["ghost2"], modules["shortcut"]._modules
        # (An identity-shortcut stride-1 bottleneck has nothing of its own to fold.)
        folded = self._folded_weights() if self.conv_dw is not None or shortcut else (None,) * 6
        dw_w, dw_b, sc_dw_w, sc_dw_b, sc_pw_w, sc_pw_b = folded
        if sc_dw_w is None:
            residual = input
        else:
            conv = shortcut["0"]
            residual = dwpw_conv2d(input, sc_dw_w, sc_dw_b, sc_pw_w, sc_pw_b, conv.stride, conv.padding,
                                   conv.dilation, "none", "none")
        conv = self.conv_dw
        # The depthwise stage as the fused kernels run it: padding k // 2 of an odd kernel, no dilation.
        dw_in_kernel = dw_w is not None and tuple(conv.dilation) == (1, 1) and \
            tuple(conv.padding) == tuple(k // 2 for k in conv.kernel_size) and all(k % 2 for k in conv.kernel_size)
        if self.se is None and (dw_w is None or dw_in_kernel):
            # Without a squeeze-excitation: ghost1's output (and the depthwise stage's) never reaches memory. (Unlike
            # ghost1 and the depthwise stage alone, this pays on maps that stay in L2 too: GhostNet's stride-2
            # blocks at batch 1 took 0.87-0.90x the time of the ops one by one at 112x112 and 28x28.)
            return ghost1.forward_then_module(input, ghost2, residual,
                                              None if dw_w is None else (dw_w, dw_b, conv.stride))
        if dw_in_kernel:
            # The depthwise stage reads ghost1's output rows while they are in cache.
            x = ghost1.forward_then_depthwise(input, dw_w, dw_b, conv.stride)
        else:
            x = ghost1(input)
            if dw_w is not None:
                x = depthwise_conv2d(x, dw_w, dw_b, conv.stride, conv.padding, conv.dilation)
        if self.se is not None:
            # The squeeze-excitation's gates scale ghost2's input inside its kernel.
            return ghost2.forward_excited(x, self.se, residual=residual)
        return ghost2(x, residual=residual)

    def extra_repr(self) -> str:
        return "frozen=True" if self._frozen else ""
