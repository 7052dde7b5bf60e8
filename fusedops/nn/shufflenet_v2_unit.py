"""ShuffleNetV2's unit (:class:`ShuffleNetV2Unit`, one fused :func:`fusedops.shufflenet_v2_unit` op in eval mode)
with torchvision's submodules and state-dict keys."""

import torch
from torch import nn

from ..ops.activations import activation_name
from ..ops.channel_shuffle import concat_shuffle
from ..ops.shufflenet_v2_unit import pack_weights, shufflenet_v2_unit
from .depthwise import DepthwiseConv2d
from .freeze import FoldedWeights
from .inverted_residual import _activation_module, _fold, _runs_unfused


class ShuffleNetV2Unit(FoldedWeights, nn.Module):
    r"""ShuffleNetV2's unit (Ma et al. 2018): the input's first half (or, at ``stride > 1``, ``branch1``: depthwise
    3x3 -> BN -> 1x1 -> BN -> act) and ``branch2`` (1x1 -> BN -> act -> depthwise 3x3 -> BN -> 1x1 -> BN -> act)
    concatenated and shuffled with two groups.

    A drop-in for ``torchvision.models.shufflenetv2.InvertedResidual(inp, oup, stride)``: same constructor arguments,
    attributes (``stride``) and submodules (``branch1``, empty at stride 1, and ``branch2``; the depthwise
    convolutions are :class:`fusedops.nn.DepthwiseConv2d`, ``nn.Conv2d`` subclasses with the same parameters), so
    the state-dict keys are the same and weights load either way.

    Eval mode runs one fused :func:`fusedops.shufflenet_v2_unit` op with the batch norms folded into the weights:
    the branch's maps stay in cache and both halves are written straight to their shuffled channels (no split copy,
    no concatenation, no shuffle); :meth:`freeze` keeps the folded weights as constants, as for the other fused
    blocks. Train mode runs torchvision's sequence (batch statistics, running-stat updates), with fusedops'
    depthwise kernels and :func:`fusedops.concat_shuffle`.

    Args:
        inp, oup: input and output channels (``inp == oup`` at stride 1, both even).
        stride: 1, 2 or 3, of the depthwise convolutions.
        activation: after the 1x1 convolutions (``"relu"`` in ShuffleNetV2; ``None``, ``"relu6"``, ``"hardswish"``
            or ``"silu"``).
    """

    def __init__(self, inp: int, oup: int, stride: int, *, activation="relu", device=None, dtype=None):
        super().__init__()
        if not 1 <= stride <= 3:
            raise ValueError(f"fusedops: ShuffleNetV2 unit stride must be 1, 2 or 3, got {stride}")
        self.stride = stride
        branch_features = oup // 2
        if stride == 1 and inp != branch_features << 1:
            raise ValueError(f"fusedops: a stride-1 ShuffleNetV2 unit needs inp == 2 * (oup // 2), got inp={inp}, "
                             f"oup={oup}")
        self.activation = activation_name(activation, "activation")
        factory = dict(device=device, dtype=dtype)

        if stride > 1:
            self.branch1 = nn.Sequential(
                DepthwiseConv2d(inp, inp, 3, stride, 1, bias=False, **factory),
                nn.BatchNorm2d(inp, **factory),
                nn.Conv2d(inp, branch_features, 1, 1, 0, bias=False, **factory),
                nn.BatchNorm2d(branch_features, **factory),
                _activation_module(self.activation),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch_features, branch_features, 1, 1, 0, bias=False, **factory),
            nn.BatchNorm2d(branch_features, **factory),
            _activation_module(self.activation),
            DepthwiseConv2d(branch_features, branch_features, 3, stride, 1, bias=False, **factory),
            nn.BatchNorm2d(branch_features, **factory),
            nn.Conv2d(branch_features, branch_features, 1, 1, 0, bias=False, **factory),
            nn.BatchNorm2d(branch_features, **factory),
            _activation_module(self.activation),
        )

    def _fold(self):
        """(expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, shortcut_dw_weight,
        shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias) of the fused op, batch norms folded in; the
        shortcut's are None at stride 1."""
        b2 = self.branch2._modules
        folded = (*_fold(b2["0"], b2["1"]), *_fold(b2["3"], b2["4"]), *_fold(b2["5"], b2["6"]))
        b1 = self.branch1._modules
        shortcut = (*_fold(b1["0"], b1["1"]), *_fold(b1["2"], b1["3"])) if b1 else (None,) * 4
        return folded + shortcut

    def folded_weights(self):
        """The fused op's ten weights and biases (:meth:`_fold`'s order), batch norms folded in."""
        return self._folded_weights()

    def runs_fused(self) -> bool:
        """Whether forward runs the fused op: every batch norm normalises with running statistics (eval mode) and
        the depthwise convolutions pad with zeros."""
        b1, b2 = self.branch1._modules, self.branch2._modules
        batch_norms = [b2["1"], b2["4"], b2["6"]] + ([b1["1"], b1["3"]] if b1 else [])
        return not (_runs_unfused(b2["3"], batch_norms) or (b1 and b1["0"].padding_mode != "zeros"))

    def forward(self, input):
        if not self.runs_fused():
            if self.stride == 1:
                x1, x2 = input.chunk(2, dim=1)
                return concat_shuffle(x1, self.branch2(x2), 2)
            return concat_shuffle(self.branch1(input), self.branch2(input), 2)
        dw = self.branch2._modules["3"]
        key = (dw.stride, dw.padding, dw.dilation, self.activation)
        if not torch.compiler.is_compiling():
            # Frozen and called before: the native call made then, without the fused path's Python (the fold and
            # packing checks, the wrapper's normalisation).
            out = self._call_prepared(input, key)
            if out is not NotImplemented:
                return out
        folded = self.folded_weights()
        weights, shortcut = folded[:6], (None if folded[6] is None else folded[6:])
        args = (dw.stride, dw.padding, dw.dilation, self.activation)
        # Frozen: the CPU kernel's packed form of the folded weights is made once too.
        packed = self._packed_weights(folded, input, "shufflenet_v2_unit",
                                      lambda: pack_weights(input, *weights, shortcut=shortcut, stride=args[0],
                                                           padding=args[1], dilation=args[2], activation=args[3]))
        if packed is not None:
            self._prepare_call("shufflenet_v2_unit", folded, key, (*folded, *args, packed))
        return shufflenet_v2_unit(input, *weights, shortcut=shortcut, stride=args[0], padding=args[1],
                                  dilation=args[2], activation=args[3], packed_weights=packed)

    def extra_repr(self) -> str:
        frozen = ", frozen=True" if self._frozen else ""
        return f"stride={self.stride}, activation={self.activation!r}{frozen}"
