"""timm's inverted-residual block (EfficientNet's MBConv, MobileNetV2/V3 as timm builds them) and
depthwise-separable block (MobileNetV1, the first block of the others) as one fused op in eval mode, with timm's
submodules and state-dict keys (:class:`TimmInvertedResidual`, :class:`TimmDepthwiseSeparable`;
:func:`fusedops.convert` makes them from timm's blocks)."""

from typing import Mapping, Optional, Tuple

from torch import nn

from .inverted_residual import InvertedResidualBlock, Stages
from .separable import DepthwiseSeparableBlock
from .squeeze_excitation import activation_names


class TimmInvertedResidual(InvertedResidualBlock):
    r"""timm's ``InvertedResidual`` (children ``conv_pw``, ``bn1``, ``conv_dw``, ``bn2``, ``aa``, ``se``,
    ``conv_pwl``, ``bn3``, ``drop_path``) or ``DepthwiseSeparableConv`` (``conv_dw``, ``bn1``, ``aa``, ``se``,
    ``conv_pw``, ``bn2``, ``drop_path``: no expansion), made of that block's own submodules, so parameters, buffers
    and state-dict keys are the block's.

    The batch norms are ``nn.BatchNorm2d`` or timm's ``BatchNormAct2d`` (a batch norm carrying its activation);
    ``se`` is ``nn.Identity`` or timm's ``SqueezeExcite`` (``conv_reduce``, ``act1``, ``conv_expand``, ``gate``);
    ``aa`` (anti-aliasing) is ``nn.Identity``; ``drop_path`` is ``nn.Identity`` or timm's ``DropPath``
    (stochastic depth: the identity in eval mode).

    Eval mode runs one fused :func:`fusedops.inverted_residual` op with the batch norms folded in and the
    squeeze-excitation's weights passed as they are; folded afresh on every call unless frozen, as for
    :class:`fusedops.nn.InvertedResidual`. Train mode runs the children in order and adds the input through
    ``drop_path`` when ``has_skip``: timm's forward, so outputs, gradients, running statistics and the drop path's
    random draws are timm's.

    Args:
        children: the block's children by name, in the order above (the order its forward runs them).
        expand: names of the expansion's convolution and batch norm, or None without an expansion.
        dw, project: names of the depthwise stage's and the projection's convolution and batch norm.
        se: name of the squeeze-excitation module, or None without one.
        activation: the op's name of the expansion's and depthwise stage's activation.
        has_skip: whether the block adds its input (timm's attribute of that name).
    """

    def __init__(self, children: Mapping[str, nn.Module], *, expand: Optional[Tuple[str, str]], dw: Tuple[str, str],
                 se: Optional[str], project: Tuple[str, str], activation, has_skip: bool):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)
        self._stage_names = (expand, dw, se, project)
        self.activation = activation
        self.has_skip = has_skip

    @property
    def use_res_connect(self) -> bool:
        return self.has_skip

    @property
    def _trains_fused(self) -> bool:
        """The fused training path computes timm's train-mode forward where nothing in it is random or extra: no
        stochastic depth (``drop_path`` the identity or at rate 0), no anti-aliasing, no dropout inside the batch
        norms."""
        modules = self._modules
        drop_path, aa = modules.get("drop_path"), modules.get("aa")
        if drop_path is not None and not isinstance(drop_path, nn.Identity) and getattr(drop_path, "drop_prob",
                                                                                        1.0) != 0.0:
            return False
        if aa is not None and not isinstance(aa, nn.Identity):
            return False
        drops = [getattr(module, "drop", None) for module in modules.values()]  # BatchNormAct2d's dropout
        return all(drop is None or isinstance(drop, nn.Identity) for drop in drops)

    def _stages(self):
        modules = self._modules
        expand, dw, se, project = self._stage_names
        se_module = None if se is None else modules[se]
        return Stages(None if expand is None else (modules[expand[0]], modules[expand[1]]),
                      (modules[dw[0]], modules[dw[1]]),
                      None if se is None else (se_module, se_module.conv_reduce, se_module.conv_expand),
                      (modules[project[0]], modules[project[1]]))

    def _squeeze_excitation_activations(self, se):
        return activation_names(se.gate, se.act1, "SqueezeExcite")

    def _forward_unfused(self, input):
        return _run_children(self, input, self.has_skip)


def _run_children(block, input, has_skip):
    """timm's forward of a block: its children in order (``drop_path`` aside), then, with `has_skip`, the input added
    through ``drop_path``."""
    x = input
    for name, child in block._modules.items():
        if name != "drop_path":
            x = child(x)
    return block._modules["drop_path"](x) + input if has_skip else x


class TimmDepthwiseSeparable(DepthwiseSeparableBlock):
    r"""timm's ``DepthwiseSeparableConv`` without squeeze-excitation and without skip (children ``conv_dw``,
    ``bn1``, ``aa``, ``se``, ``conv_pw``, ``bn2``, ``drop_path``; ``aa``, ``se`` and ``drop_path`` are
    ``nn.Identity``), made of that block's own submodules, so parameters, buffers and state-dict keys are the
    block's: MobileNetV1 (whose 1x1 convolution has an activation, ``pw_act``) and the first block of timm's
    MobileNetV2.

    Eval mode runs one fused :func:`fusedops.dwpw_conv2d` call with the batch norms folded in (folded afresh on
    every call unless frozen, as for :class:`fusedops.nn.DepthwiseSeparableConv2d`); train mode runs the children
    in order: timm's forward.

    Args:
        children: the block's children by name, in the order above.
        mid_activation, out_activation: the op's names of the activations of ``bn1`` and ``bn2`` (timm's
            ``BatchNormAct2d`` carries them).
    """

    def __init__(self, children: Mapping[str, nn.Module], *, mid_activation, out_activation):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)
        self.mid_activation = mid_activation
        self.out_activation = out_activation

    def _stages(self):
        modules = self._modules
        return modules["conv_dw"], modules["bn1"], modules["conv_pw"], modules["bn2"]

    def _forward_unfused(self, input):
        return _run_children(self, input, False)
