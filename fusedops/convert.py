"""fusedops.convert: a model's blocks replaced, where fusedops has them, by its fused modules, with the model's own
parameters, buffers and state-dict keys.

What is recognised, by structure (a class name only where the structure alone is ambiguous):

* torchvision's ``mobilenetv2.InvertedResidual`` -> :class:`fusedops.nn.InvertedResidual`;
* torchvision's ``mobilenetv3.InvertedResidual`` (squeeze-excitation, hardswish) ->
  :class:`fusedops.nn.InvertedResidualV3`;
* conv -> ``nn.BatchNorm2d`` [-> activation] as an ``nn.Sequential`` of three (two) children (torchvision's
  ``Conv2dNormActivation``, older ``ConvBNReLU``; the stems and heads) -> :class:`fusedops.nn.ConvBNActivation`,
  one convolution with the BN folded in at eval;
* timm's ``InvertedResidual`` (EfficientNet's MBConv, timm's MobileNetV2/V3: SiLU, hardswish, relu6, timm's
  ``SqueezeExcite``, stochastic depth) and ``DepthwiseSeparableConv``, by their children ->
  :class:`fusedops.nn.TimmInvertedResidual` (the fused inverted-residual op; without expansion for the latter), or,
  for a depthwise-separable block without squeeze-excitation or skip (MobileNetV1, whose 1x1 convolution has an
  activation), :class:`fusedops.nn.TimmDepthwiseSeparable` (the fused dwpw op);
* a convolution child followed by a batch-norm child that the parent's forward feeds its output to and nowhere else
  (read from an fx trace of the parent's own forward: timm's stems ``conv_stem``, ``bn1`` and heads ``conv_head``,
  ``bn2``; timm's ``ConvNormAct``/``ConvBnAct``; the pairs of timm blocks that are not fused whole) ->
  :class:`fusedops.nn.PairedConv2d` in the convolution's place (conv, BN, activation; the BN folded in at eval) and
  :class:`fusedops.nn.PairedBatchNorm2d` in the batch norm's (its state; passes its input on); an activation child
  the batch norm's output goes to and nowhere else (timm's GhostNet stem: ``act1``) is paired too, its place taken
  by a :class:`fusedops.nn.PairedActivation` (passes its input on; the convolution applies it);
* torchvision's ``shufflenetv2.InvertedResidual`` (ShuffleNetV2's unit: ``branch1``, ``branch2``) ->
  :class:`fusedops.nn.ShuffleNetV2Unit` (the fused ShuffleNetV2-unit op: the branch, the shortcut where the unit has
  one, the split, concatenation and shuffle, in one call);
* timm's ``GhostBottleneck`` (GhostNet, the original Ghost modules) -> :class:`fusedops.nn.GhostBottleneck` and
  timm's ``GhostModule`` -> :class:`fusedops.nn.GhostModule` (the fused Ghost-module op), by their children;
* a depthwise ``nn.Conv2d`` (``groups == in_channels``, any multiplier) anywhere else ->
  :class:`fusedops.nn.DepthwiseConv2d`;
* a 1x1 ``nn.Conv2d`` (one group, stride 1, no padding) anywhere else (timm's ``conv_head`` after the global pool)
  -> :class:`fusedops.nn.PointwiseConv2d`, one matrix product in inference on small channels-last maps;
* an ``nn.Linear`` or timm's ``Linear`` (the classifiers) -> :class:`fusedops.nn.Linear`, whose inference on a few
  rows reads the weight once at the memory's speed.

A batch norm is an ``nn.BatchNorm2d`` or timm's ``BatchNormAct2d``, a subclass that applies its own activation
(recognised by its ``drop`` and ``act`` children, whose activation the fused module computes: an isinstance check
alone would drop it). Everything else is left as it is. The fused modules are built around the original ones: they
hold the same ``nn.Parameter`` objects and the same batch norms' tensors (running statistics, eps, momentum), so an
optimizer built on the original trains the converted model, and state dicts load into either, both ways.
"""

import copy
import dataclasses
from typing import List

import torch
import torch.fx
from torch import nn

from .nn.depthwise import DepthwiseConv2d
from .nn.freeze import FoldedWeights
from .nn.ghost import GhostBottleneck, GhostModule
from .nn.inverted_residual import ConvBNActivation, InvertedResidual
from .nn.inverted_residual_v3 import InvertedResidualV3
from .nn.linear import Linear
from .nn.paired import PairedActivation, PairedBatchNorm2d, PairedConv2d
from .nn.pointwise import PointwiseConv2d
from .nn.shufflenet_v2_unit import ShuffleNetV2Unit
from .nn.squeeze_excitation import SE_ACTIVATIONS, SE_GATES
from .nn.timm_blocks import TimmDepthwiseSeparable, TimmInvertedResidual

# The activation modules the fused modules compute, by the fused modules' names for them.
_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.SiLU: "silu"}
# The geometry two convolutions must share for one to stand for the other.
_CONV_ATTRIBUTES = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                    "padding_mode")


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert` did: ``replaced`` holds (path, original class, fused class) per replaced module,
    ``left_alone`` (path, class, why) per module with parameters that keeps running as it was."""

    replaced: List[tuple] = dataclasses.field(default_factory=list)
    left_alone: List[tuple] = dataclasses.field(default_factory=list)

    def __str__(self):
        lines = [f"replaced {len(self.replaced)} modules, left {len(self.left_alone)} as they were"]
        lines += [f"  {path or '(the model)'}: {old} -> {new}" for path, old, new in self.replaced]
        lines += [f"  {path or '(the model)'}: {kind} kept ({why})" for path, kind, why in self.left_alone]
        return "\n".join(lines)


def convert(model: nn.Module, *, inplace: bool = False, layout="channels_last", report: bool = False):
    r"""`model` with the blocks fusedops has fused modules for replaced by them (see the module description for
    which), computing the same function: eval mode folds the batch norms and runs the fused kernels
    (:func:`fusedops.freeze` the result for deployment), train mode has PyTorch's BatchNorm semantics.

    The converted model holds `model`'s own parameters and buffers (an optimizer built on `model` trains it) and
    has its state-dict keys. With ``inplace=False`` `model` itself is left as it was: the converted model is a new
    tree of modules that shares the unreplaced ones and the parameters with it.

    Args:
        model: any ``nn.Module``; parts that are not recognised are kept (and listed in the report when they
            hold parameters).
        inplace: replace the modules inside `model` itself instead.
        layout: ``"channels_last"`` (the fast layout of the CPU kernels: the model's 4-D parameters and
            buffers are converted, which also changes them in `model`, with the same values) or ``None`` to keep
            the memory format.
        report: also return a :class:`ConversionReport`.

    Returns:
        The converted model, or ``(model, report)`` with ``report=True``.
    """
    if layout not in ("channels_last", None):
        raise ValueError(f"fusedops: convert's layout must be 'channels_last' or None, got {layout!r}")
    summary = ConversionReport()
    converted = _convert(model, "", inplace, summary)
    if layout == "channels_last":
        converted = converted.to(memory_format=torch.channels_last)
    return (converted, summary) if report else converted


class _Mismatch(Exception):
    """A module looks like one fusedops replaces but differs from it; the message says how."""


def _convert(module, path, inplace, summary):
    if isinstance(module, _FUSED_MODULES):
        return module  # converted already (a model converted twice, or built from fusedops' modules)
    for recognise in _RECOGNISERS:
        try:
            fused = recognise(module)
        except _Mismatch as why:
            summary.left_alone.append((path, type(module).__name__, str(why)))
            fused = None
            break
        if fused is not None:
            fused.train(module.training)
            summary.replaced.append((path, type(module).__name__, type(fused).__name__))
            return fused
    new_children = _paired_children(module, path, summary)
    for name, child in module._modules.items():
        if child is None or name in new_children:
            continue
        new = _convert(child, _child_path(path, name), inplace, summary)
        if new is not child:
            new_children[name] = new
    if not module._modules and (module._parameters or module._buffers) and not any(
            entry[0] == path for entry in summary.left_alone):
        summary.left_alone.append((path, type(module).__name__, "fusedops has no fused module for it"))
    if not new_children:
        return module
    target = module if inplace else _shallow_copy(module)
    target._modules.update(new_children)
    return target


def _child_path(path, name):
    return f"{path}.{name}" if path else name


def _shallow_copy(module):
    """A new module object of `module`'s class and attributes with dicts of its own for children, parameters and
    buffers (whose entries, modules and tensors, it shares)."""
    new = copy.copy(module)
    new._modules = dict(module._modules)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    return new


def _adopt(fused, original):
    """Makes `fused` (a fusedops module laid out as `original`, built on the meta device) run on `original`'s
    tensors: each of its batch norms is replaced by `original`'s at the same path (parameters, running
    statistics, eps and momentum), each convolution takes `original`'s ``nn.Parameter`` objects. Returns `fused`;
    raises _Mismatch where the two differ (children, classes, convolution geometry, state-dict keys or shapes)."""
    theirs = dict(original.named_modules())
    for name, mine in list(fused.named_modules()):
        if not name and not isinstance(mine, nn.Conv2d):
            continue  # a block itself (a convolution converted alone takes its parameters below)
        other = theirs.get(name)
        if other is None:
            raise _Mismatch(f"it has no submodule {name!r} where fusedops' module has one")
        if isinstance(mine, nn.BatchNorm2d):
            if type(other) is not nn.BatchNorm2d or not other.affine:
                raise _Mismatch(f"{name} is a {type(other).__name__}, not an affine nn.BatchNorm2d")
            parent, _, leaf = name.rpartition(".")
            fused.get_submodule(parent)._modules[leaf] = other
        elif isinstance(mine, nn.Conv2d):
            if not isinstance(other, nn.Conv2d) or (mine.bias is None) != (other.bias is None) or any(
                    getattr(mine, a) != getattr(other, a) for a in _CONV_ATTRIBUTES):
                raise _Mismatch(f"{name} is not the convolution fusedops' module has there")
            mine._parameters["weight"] = other.weight
            mine._parameters["bias"] = other.bias
        elif not mine._modules and type(other) is not type(mine):
            raise _Mismatch(f"{name} is a {type(other).__name__} where fusedops' module has a {type(mine).__name__}")
    ours, original_state = fused.state_dict(), original.state_dict()
    if ours.keys() != original_state.keys() or any(ours[k].shape != original_state[k].shape for k in ours):
        raise _Mismatch("its state-dict keys or shapes differ from those of fusedops' module")
    if any(t.is_meta for t in ours.values()):
        raise _Mismatch("it does not hold every tensor fusedops' module needs")
    return fused


def _activation_name(module, what):
    if module is None:
        return None
    name = _ACTIVATIONS.get(type(module))
    if name is None:
        raise _Mismatch(f"its {what} activation {type(module).__name__} is not one the fused op computes")
    return name


def _conv_bn_children(unit):
    """(conv, bn, activation or None) of a conv -> BN [-> activation] ``nn.Sequential``, or None."""
    if not isinstance(unit, nn.Sequential) or list(unit._modules) not in (["0", "1"], ["0", "1", "2"]):
        return None
    conv, bn = unit[0], unit[1]
    if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:
        return None
    return conv, bn, unit[2] if len(unit) == 3 else None


def _mobilenet_v2_block(module):
    """torchvision's mobilenetv2.InvertedResidual: ``conv`` = [expand unit], depthwise unit, 1x1 conv, BN."""
    if type(module).__name__ != "InvertedResidual" or not isinstance(getattr(module, "conv", None), nn.Sequential):
        return None
    layers = list(module.conv)
    units = [_conv_bn_children(unit) for unit in layers[:-2]]
    if len(layers) not in (3, 4) or any(u is None for u in units):
        raise _Mismatch("its conv is not [expand unit,] depthwise unit, 1x1 conv, batch norm")
    dw, _, act = units[-1]
    inp, hidden, oup = units[0][0].in_channels, dw.in_channels, layers[-2].out_channels
    activation = _activation_name(act, "depthwise stage's")
    if len(units) == 2 and _activation_name(units[0][2], "expansion's") != activation:
        raise _Mismatch("its expansion and depthwise stages have different activations")
    stride = dw.stride[0] if dw.stride[0] == dw.stride[1] else dw.stride
    fused = InvertedResidual(inp, oup, stride, hidden / inp, kernel_size=dw.kernel_size, dilation=dw.dilation,
                             activation=activation, device="meta")
    if fused.use_res_connect != getattr(module, "use_res_connect", fused.use_res_connect):
        raise _Mismatch("its residual connection differs from the one its shapes imply")
    return _adopt(fused, module)


def _mobilenet_v3_block(module):
    """torchvision's mobilenetv3.InvertedResidual: ``block`` = [expand unit], depthwise unit, [SE], project unit."""
    if type(module).__name__ != "InvertedResidual" or not isinstance(getattr(module, "block", None), nn.Sequential):
        return None
    layers = list(module.block)
    se = [layer for layer in layers if type(layer).__name__ == "SqueezeExcitation"]
    units = [_conv_bn_children(layer) for layer in layers if type(layer).__name__ != "SqueezeExcitation"]
    if len(units) not in (2, 3) or any(u is None for u in units) or len(se) > 1:
        raise _Mismatch("its block is not [expand unit,] depthwise unit, [squeeze-excitation,] project unit")
    dw, bn, act = units[-2]
    activation = _activation_name(act, "depthwise stage's")
    dilation = dw.dilation[0]
    # torchvision runs dilated blocks at stride 1; `_is_cn` keeps the configured stride's mark.
    stride = (2 if getattr(module, "_is_cn", False) else 1) if dilation > 1 else dw.stride[0]
    fused = InvertedResidualV3(units[0][0].in_channels, dw.kernel_size[0], dw.in_channels, units[-1][0].out_channels,
                               bool(se), activation, stride, dilation, bn_eps=bn.eps, bn_momentum=bn.momentum,
                               device="meta")
    if fused.use_res_connect != getattr(module, "use_res_connect", fused.use_res_connect):
        raise _Mismatch("its residual connection differs from the one its shapes imply")
    return _adopt(fused, module)


def _shufflenet_v2_unit(module):
    """torchvision's shufflenetv2.InvertedResidual: ``branch1`` = [] or [depthwise conv, BN, 1x1 conv, BN, act],
    ``branch2`` = [1x1 conv, BN, act, depthwise conv, BN, 1x1 conv, BN, act], an int ``stride``."""
    branch1, branch2 = getattr(module, "branch1", None), getattr(module, "branch2", None)
    if (list(module._modules) != ["branch1", "branch2"] or not isinstance(branch1, nn.Sequential)
            or not isinstance(branch2, nn.Sequential) or not isinstance(getattr(module, "stride", None), int)):
        return None
    if len(branch2) != 8 or len(branch1) not in (0, 5):
        raise _Mismatch("its branches are not ShuffleNetV2's (branch2: 1x1, BN, act, depthwise, BN, 1x1, BN, act; "
                        "branch1: none, or depthwise, BN, 1x1, BN, act)")
    activations = {_activation_name(branch2[2], "branch2's first"), _activation_name(branch2[7], "branch2's last")}
    if len(branch1):
        activations.add(_activation_name(branch1[4], "branch1's"))
    if len(activations) != 1:
        raise _Mismatch(f"its branches' activations differ ({', '.join(sorted(activations))})")
    dw, expand = branch2[3], branch2[0]
    inp = branch1[0].in_channels if len(branch1) else 2 * expand.in_channels
    fused = ShuffleNetV2Unit(inp, 2 * dw.in_channels, module.stride, activation=activations.pop(), device="meta")
    return _adopt(fused, module)


def _conv_bn_activation(module):
    """conv -> BN [-> activation] as an nn.Sequential (torchvision's Conv2dNormActivation)."""
    children = _conv_bn_children(module)
    if children is None:
        return None
    conv, bn, act = children
    activation = _activation_name(act, "")
    depthwise = conv.groups == conv.in_channels and conv.out_channels % conv.in_channels == 0 and conv.groups > 1
    fused = ConvBNActivation(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.groups,
                             conv.dilation, activation, conv=DepthwiseConv2d if depthwise else nn.Conv2d,
                             device="meta", bn_eps=bn.eps, bn_momentum=bn.momentum)
    if conv.padding != fused[0].padding or conv.padding_mode != "zeros" or conv.bias is not None:
        raise _Mismatch("its convolution has a bias, or padding other than (kernel_size - 1) // 2 * dilation zeros")
    return _adopt(fused, module)


def _depthwise_conv(module):
    """A depthwise nn.Conv2d (groups == in_channels > 1, any multiplier)."""
    if type(module) is not nn.Conv2d or module.groups != module.in_channels or module.groups == 1:
        return None
    fused = DepthwiseConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                            module.padding, module.dilation, module.groups, module.bias is not None,
                            module.padding_mode, device="meta")
    return _adopt(fused, module)


def _norm_activation(norm, what):
    """The op's name of the activation that batch norm `norm` applies itself: "none" for an ``nn.BatchNorm2d``, its
    ``act`` for timm's ``BatchNormAct2d`` (recognised by structure: a BatchNorm2d subclass whose only children are
    ``drop``, an ``nn.Identity``, and ``act``; an isinstance check alone would drop its activation). Raises
    _Mismatch for other batch norms and for activations the fused modules do not compute."""
    carries_activation = (isinstance(norm, nn.BatchNorm2d) and list(norm._modules) == ["drop", "act"]
                          and type(norm.drop) is nn.Identity)
    if type(norm) is not nn.BatchNorm2d and not carries_activation:
        raise _Mismatch(f"{what} is a {type(norm).__name__}: neither an nn.BatchNorm2d nor a batch norm followed by "
                        "its activation (timm's BatchNormAct2d)")
    if not norm.affine:
        raise _Mismatch(f"{what} has no affine parameters")
    act = norm._modules.get("act")
    return "none" if act is None or type(act) is nn.Identity else _activation_name(act, f"{what}'s")


class _ChildrenAsLeaves(torch.fx.Tracer):
    """Traces a module's own forward only: every submodule call is one node."""

    def is_leaf_module(self, module, qualified_name):
        return True


def _paired_children(module, path, summary):
    """{name: fused module} for each convolution child of `module` followed (in registration order) by a batch norm
    child whose forward feeds the convolution's output to the batch norm and nowhere else, each called once (timm's
    ``conv_stem``, ``bn1`` and ``conv_head``, ``bn2``; ``ConvNormAct``'s ``conv``, ``bn``): the convolution becomes
    a :class:`PairedConv2d`, the batch norm a :class:`PairedBatchNorm2d`. The data flow is read from a trace of
    `module`'s forward with its children as leaves; nothing is paired where that trace fails.

    Of an ``nn.Sequential`` only a unit of two (conv, then a batch norm carrying its activation: timm's
    ``BatchNormAct2d``; the other units are ConvBNActivation's) is paired: the chains of longer ones are left to the
    recognisers of their blocks (ShuffleNetV2's branches)."""
    children = module._modules
    names = list(children)
    if isinstance(module, nn.Sequential) and len(names) != 2:
        return {}
    candidates = [(a, b) for a, b in zip(names, names[1:]) if type(children[a]) is nn.Conv2d
                  and isinstance(children[b], nn.BatchNorm2d) and children[a].out_channels == children[b].num_features]
    if not candidates:
        return {}
    try:
        graph = _ChildrenAsLeaves().trace(module)
    except Exception as why:  # any forward fx cannot follow: its children are converted one by one instead
        summary.left_alone.append((path, type(module).__name__, "its convolutions and batch norms were not fused: "
                                   f"its forward could not be traced ({type(why).__name__})"))
        return {}
    calls = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    fused = {}
    for conv_name, norm_name in candidates:
        conv_calls, norm_calls = calls.get(conv_name, ()), calls.get(norm_name, ())
        if (len(conv_calls) != 1 or len(norm_calls) != 1 or list(conv_calls[0].users) != [norm_calls[0]]
                or norm_calls[0].args != (conv_calls[0],) or norm_calls[0].kwargs):
            continue
        norm_path = _child_path(path, norm_name)
        try:
            activation = _norm_activation(children[norm_name], norm_name)
        except _Mismatch as why:
            summary.left_alone.append((norm_path, type(children[norm_name]).__name__, str(why)))
            continue
        norm = PairedBatchNorm2d(children[norm_name])
        names = [conv_name, norm_name]
        following = _following_activation(children, calls, norm_calls[0]) if activation == "none" else None
        if following is not None:
            names.append(following)
            fused[following] = PairedActivation(children[following])
            activation = _ACTIVATIONS[type(children[following])]
        fused[conv_name] = PairedConv2d(children[conv_name], norm, activation, fused.get(following))
        fused[norm_name] = norm
        for name in names:
            summary.replaced.append((_child_path(path, name), type(children[name]).__name__,
                                     type(fused[name]).__name__))
    return fused


def _following_activation(children, calls, norm_call):
    """The name of the activation child (one the fused modules compute) that the traced batch-norm call `norm_call`
    feeds and nothing else, called once on that output alone (timm's GhostNet stem: ``bn1`` -> ``act1``), else
    None."""
    users = list(norm_call.users)
    if len(users) != 1 or users[0].op != "call_module" or users[0].args != (norm_call,) or users[0].kwargs:
        return None
    name = users[0].target
    if type(children.get(name)) not in _ACTIVATIONS or len(calls.get(name, ())) != 1:
        return None
    return name


# timm's blocks by their children, in the order their forwards run them: the (convolution, batch norm) names of the
# expansion (None: the block has none), the depthwise stage and the projection.
_TIMM_BLOCKS = {
    ("conv_pw", "bn1", "conv_dw", "bn2", "aa", "se", "conv_pwl", "bn3", "drop_path"):  # InvertedResidual
        (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
    ("conv_dw", "bn1", "aa", "se", "conv_pw", "bn2", "drop_path"):  # DepthwiseSeparableConv
        (None, ("conv_dw", "bn1"), ("conv_pw", "bn2")),
}
_SPACE_TO_DEPTH = ("conv_s2d", "bn_s2d")


def _pointwise(conv):
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1


def _timm_squeeze_excite(se, channels):
    """timm's SqueezeExcite (conv_reduce, act1, conv_expand, gate; global mean pool first) over `channels`, as
    the op computes it, or None for nn.Identity; _Mismatch otherwise."""
    if type(se) is nn.Identity:
        return None
    if list(se._modules) != ["conv_reduce", "act1", "conv_expand", "gate"]:
        raise _Mismatch(f"its se is a {type(se).__name__}, not timm's SqueezeExcite (conv_reduce, act1, conv_expand, "
                        "gate)")
    reduce, expand = se.conv_reduce, se.conv_expand
    if (type(reduce) is not nn.Conv2d or type(expand) is not nn.Conv2d or not _pointwise(reduce)
            or not _pointwise(expand) or reduce.in_channels != channels or expand.out_channels != channels
            or reduce.out_channels != expand.in_channels):
        raise _Mismatch("its squeeze-excitation's convolutions are not 1x1 ones over the depthwise stage's channels")
    if type(se.act1) not in SE_ACTIVATIONS or type(se.gate) not in SE_GATES:
        raise _Mismatch(f"its squeeze-excitation's activations ({type(se.act1).__name__}, {type(se.gate).__name__}) "
                        "are not ones the fused op computes")
    return se


def _timm_block(module):
    """timm's InvertedResidual (EfficientNet's MBConv, timm's MobileNetV2/V3) and DepthwiseSeparableConv, by their
    children and ``has_skip``: the fused inverted-residual op, or the dwpw op for a depthwise-separable block without
    squeeze-excitation or skip (whose 1x1 convolution may have an activation: MobileNetV1)."""
    names = tuple(module._modules)
    if not isinstance(getattr(module, "has_skip", None), bool):
        return None
    if names[:2] == _SPACE_TO_DEPTH and names[2:] in _TIMM_BLOCKS:
        raise _Mismatch("its space-to-depth stage (conv_s2d) is not one the fused op computes")
    layout = _TIMM_BLOCKS.get(names)
    if layout is None:
        return None
    expand, dw, project = layout
    children = module._modules
    chain = [children[stage[0]] for stage in layout if stage is not None]  # the convolutions, in order
    if any(type(conv) is not nn.Conv2d for conv in chain):
        raise _Mismatch("its convolutions are not all nn.Conv2d (timm's 'same' padding is another class)")
    dw_conv = children[dw[0]]
    if (dw_conv.groups != dw_conv.in_channels or dw_conv.out_channels != dw_conv.in_channels
            or dw_conv.padding_mode != "zeros" or dw_conv.bias is not None):
        raise _Mismatch(f"its {dw[0]} is not a depthwise convolution without bias, zero-padded")
    if not _pointwise(children[project[0]]) or (expand is not None and not _pointwise(children[expand[0]])):
        raise _Mismatch("its expansion or projection is not a 1x1 convolution")
    if any(a.out_channels != b.in_channels for a, b in zip(chain, chain[1:])):
        raise _Mismatch("its stages' channels do not follow from one another")
    activations = [_norm_activation(children[stage[1]], stage[1]) for stage in (expand, dw) if stage is not None]
    if len(set(activations)) != 1:
        raise _Mismatch(f"its expansion and depthwise stage have different activations ({', '.join(activations)})")
    project_activation = _norm_activation(children[project[1]], project[1])
    if type(children["aa"]) is not nn.Identity:
        raise _Mismatch("its anti-aliasing stage (aa) is not one the fused op computes")
    # Stochastic depth is the identity in eval mode; train mode runs timm's module itself.
    if type(children["drop_path"]) is not nn.Identity and type(children["drop_path"]).__name__ != "DropPath":
        raise _Mismatch(f"its drop_path is a {type(children['drop_path']).__name__}")
    se = _timm_squeeze_excite(children["se"], dw_conv.out_channels)
    if expand is None and se is None and not module.has_skip:
        return TimmDepthwiseSeparable(dict(children), mid_activation=activations[0], out_activation=project_activation)
    if project_activation != "none":
        raise _Mismatch(f"its projection has an activation ({project[1]}); the fused op's projection is linear")
    if module.has_skip and (dw_conv.stride != (1, 1) or chain[-1].out_channels != chain[0].in_channels):
        raise _Mismatch("it adds its input to an output of another shape")
    return TimmInvertedResidual(dict(children), expand=expand, dw=dw, se=None if se is None else "se",
                                project=project, activation=activations[0], has_skip=module.has_skip)


def _ghost_module(module):
    """timm's GhostModule: ``primary_conv`` = 1x1 conv, BN, activation; ``cheap_operation`` = depthwise conv, BN,
    activation (nn.Identity in a bottleneck's second one); ``out_chs`` of their concatenation kept."""
    if list(module._modules) != ["primary_conv", "cheap_operation"] or not isinstance(getattr(module, "out_chs", None),
                                                                                      int):
        return None
    halves = [_conv_bn_children(module.primary_conv), _conv_bn_children(module.cheap_operation)]
    if any(half is None or half[2] is None for half in halves):
        raise _Mismatch("its primary_conv and cheap_operation are not conv, batch norm, activation")
    (primary, _, act), (cheap, _, cheap_act) = halves
    if type(act) is not type(cheap_act) or (type(act) is not nn.Identity and type(act) not in _ACTIVATIONS):
        raise _Mismatch(f"its activations ({type(act).__name__}, {type(cheap_act).__name__}) are not one the fused "
                        "op computes for both halves")
    init, new = primary.out_channels, cheap.out_channels
    if new % init or cheap.groups != init or cheap.kernel_size[0] != cheap.kernel_size[1]:
        raise _Mismatch("its cheap operation is not a depthwise convolution of the primary half")
    ratio = 1 + new // init
    if primary.kernel_size != (1, 1) or primary.stride[0] != primary.stride[1] or -(-module.out_chs // ratio) != init:
        raise _Mismatch("its primary convolution is not 1x1 (the fused op's), or its channels are not timm's")
    fused = GhostModule(primary.in_channels, module.out_chs, 1, ratio, cheap.kernel_size[0], primary.stride[0],
                        type(act), device="meta")
    return _adopt(fused, module)


def _ghost_bottleneck(module):
    """timm's GhostBottleneck (``mode='original'``): ghost1, [conv_dw, bn_dw], [se], ghost2, shortcut."""
    names = list(module._modules)
    if names[:1] != ["ghost1"] or names[-2:] != ["ghost2", "shortcut"] or not isinstance(
            getattr(module, "stride", None), int):
        return None
    if not set(names) <= {"ghost1", "conv_dw", "bn_dw", "se", "ghost2", "shortcut"}:
        raise _Mismatch(f"its children {names} are not those of timm's GhostBottleneck")
    ghost1, ghost2 = module.ghost1, module.ghost2
    if any(list(g._modules) != ["primary_conv", "cheap_operation"] for g in (ghost1, ghost2)):
        raise _Mismatch("its Ghost modules are not the original ones (GhostNetV2/V3 modules are not fused)")
    dw = getattr(module, "conv_dw", None)
    shortcut = module.shortcut
    kernel = dw.kernel_size[0] if dw is not None else shortcut[0].kernel_size[0] if len(shortcut) else 3
    se = getattr(module, "se", None)
    if se is not None and _timm_squeeze_excite(se, ghost1.out_chs) is not None and (
            type(se.act1) is not nn.ReLU or type(se.gate) is not nn.Hardsigmoid):
        raise _Mismatch("its squeeze-excitation is not GhostNet's (ReLU, hard-sigmoid gate)")
    se_ratio = se.conv_reduce.out_channels / ghost1.out_chs if se is not None else 0.0
    fused = GhostBottleneck(ghost1.primary_conv[0].in_channels, ghost1.out_chs, ghost2.out_chs, kernel,
                            module.stride, type(ghost1.primary_conv[2]), se_ratio, device="meta")
    return _adopt(fused, module)


# fusedops' own modules, which convert keeps as they are: the fused blocks, and the pieces of fused pairs.
def _pointwise_conv(module):
    """A 1x1 nn.Conv2d of one group, stride 1, no padding, not paired with a batch norm."""
    if (type(module) is not nn.Conv2d or module.kernel_size != (1, 1) or module.stride != (1, 1)
            or module.padding != (0, 0) or module.dilation != (1, 1) or module.groups != 1
            or module.padding_mode != "zeros"):
        return None
    fused = PointwiseConv2d(module.in_channels, module.out_channels, module.bias is not None, device="meta")
    return _adopt(fused, module)


def _linear(module):
    """An nn.Linear (the classifiers), or timm's Linear (its classifiers': nn.Linear's function in eager mode, a cast
    of the weight to the input's dtype under TorchScript), by its class as structure cannot tell."""
    cls = type(module)
    if cls is not nn.Linear and not (cls.__module__ == "timm.layers.linear" and cls.__name__ == "Linear"):
        return None
    fused = Linear(module.in_features, module.out_features, module.bias is not None, device="meta")
    fused._parameters["weight"] = module.weight
    fused._parameters["bias"] = module.bias
    return fused


_FUSED_MODULES = (FoldedWeights, DepthwiseConv2d, Linear, PairedActivation, PairedBatchNorm2d, PointwiseConv2d)
# Tried in this order on every module, before its children.
_RECOGNISERS = (_mobilenet_v2_block, _mobilenet_v3_block, _shufflenet_v2_unit, _timm_block, _ghost_bottleneck,
                _ghost_module, _conv_bn_activation, _depthwise_conv, _pointwise_conv, _linear)
