"""fusedops.convert: a model's blocks replaced, where fusedops has them, by its fused modules, with the model's own
parameters, buffers and state-dict keys.

What is recognised, by structure (a class name only where the structure alone is ambiguous):

* torchvision's ``mobilenetv2.InvertedResidual`` -> :class:`fusedops.nn.InvertedResidual`;
* torchvision's ``mobilenetv3.InvertedResidual`` (squeeze-excitation, hardswish) ->
  :class:`fusedops.nn.InvertedResidualV3`;
* conv -> ``nn.BatchNorm2d`` [-> activation] as an ``nn.Sequential`` of three (two) children (torchvision's
  ``Conv2dNormActivation``, older ``ConvBNReLU``; the stems and heads) -> :class:`fusedops.nn.ConvBNActivation`,
  one convolution with the BN folded in at eval;
* a depthwise ``nn.Conv2d`` (``groups == in_channels``, any multiplier) anywhere else ->
  :class:`fusedops.nn.DepthwiseConv2d`.

Everything else is left as it is. The fused modules are built around the original ones: they hold the same
``nn.Parameter`` objects and the same ``nn.BatchNorm2d`` modules (running statistics, eps, momentum), so an
optimizer built on the original trains the converted model, and state dicts load into either, both ways.
"""

import copy
import dataclasses
from typing import List

import torch
from torch import nn

from .nn.depthwise import DepthwiseConv2d
from .nn.inverted_residual import ConvBNActivation, InvertedResidual
from .nn.inverted_residual_v3 import InvertedResidualV3

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
    new_children = {}
    for name, child in module._modules.items():
        if child is None:
            continue
        new = _convert(child, f"{path}.{name}" if path else name, inplace, summary)
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


# Tried in this order on every module, before its children.
_RECOGNISERS = (_mobilenet_v2_block, _mobilenet_v3_block, _conv_bn_activation, _depthwise_conv)
