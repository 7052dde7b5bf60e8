import torch
from torch import nn

from ..ops.activations import activation, activation_name
from ..ops.dwpw_conv2d import dwpw_conv2d, pack_weights
from .depthwise import DepthwiseConv2d
from .freeze import FoldedWeights, same_objects
from .inverted_residual import _fold, _runs_unfused


class DepthwiseSeparableBlock(FoldedWeights, nn.Module):
    """What the fused depthwise-separable blocks share, whatever their submodules' layout (fusedops' own, timm's):
    the fold of their batch norms and the forward, one fused :func:`fusedops.dwpw_conv2d` call where the batch norms
    run on running statistics. A subclass sets ``mid_activation`` and ``out_activation`` (the op's names) and defines
    :meth:`_stages` and :meth:`_forward_unfused` (its submodules in sequence)."""

    def _stages(self):
        """(depthwise convolution, its batch norm or None, 1x1 convolution, its batch norm or None)."""
        raise NotImplementedError

    def _forward_unfused(self, input):
        raise NotImplementedError

    def _fold(self):
        dw, bn_dw, pw, bn_pw = self._stages()
        return (*_fold_or_own(dw, bn_dw), *_fold_or_own(pw, bn_pw))

    def folded_weights(self):
        """(dw_weight, dw_bias, pw_weight, pw_bias) of the fused kernel (batch norms folded in eval mode)."""
        dw, bn_dw, _, _ = self._stages()
        if bn_dw is None:  # the parameters themselves: nothing to fold or cache
            return self._fold()
        return self._folded_weights()

    def forward(self, input):
        if not torch.compiler.is_compiling():
            # Frozen and called before: the native call made then, without the fused path's Python (the fold and
            # packing checks, the wrapper's normalisation), while its stages (kept with it) run on running statistics.
            prepared = self._prepared_record(input)
            if prepared is not None:
                dw, batch_norms = prepared[4]
                if not _runs_unfused(dw, batch_norms) and same_objects(prepared[1], self._call_key(dw)):
                    out = prepared[2](input)
                    if out is not NotImplemented:
                        return out
        dw, bn_dw, _, bn_pw = self._stages()
        batch_norms = tuple(bn for bn in (bn_dw, bn_pw) if bn is not None)
        if _runs_unfused(dw, batch_norms):
            return self._forward_unfused(input)
        folded = self.folded_weights()
        args = self._call_key(dw)  # also the prepared call's key
        # Frozen: the CPU kernel's layout of the folded weights is made once too (at batch 1 on small maps laying
        # out the 1x1 weights costs more than the GEMM's faster orientation saves).
        packed = self._packed_weights(folded, input, "dwpw_conv2d", lambda: pack_weights(input, *folded, *args))
        if packed is not None:
            self._prepare_call("dwpw_conv2d", folded, args, (*folded, *args, packed), (dw, batch_norms))
        return dwpw_conv2d(input, *folded, *args, packed_weights=packed)

    def _call_key(self, dw):
        """The op's arguments after the weights, from the depthwise convolution `dw`'s geometry and the block's
        activations: what a prepared call depends on besides the frozen fold (compared by identity)."""
        return dw.stride, dw.padding, dw.dilation, self.mid_activation, self.out_activation

    def extra_repr(self) -> str:
        frozen = ", frozen=True" if self._frozen else ""
        return f"mid_activation={self.mid_activation!r}, out_activation={self.out_activation!r}{frozen}"


def _fold_or_own(conv, bn):
    """`conv`'s weight and bias with `bn` folded in, or its own without a batch norm."""
    return (conv.weight, conv.bias) if bn is None else _fold(conv, bn)


class DepthwiseSeparableConv2d(DepthwiseSeparableBlock):
    r"""Depthwise-separable convolution block (MobileNetV1):
    depthwise kxk -> BN -> act_mid -> 1x1 conv -> BN -> act_out, running the fused
    :func:`fusedops.dwpw_conv2d` kernel.

    Submodules (state-dict keys are theirs):

    * ``dw``: :class:`fusedops.nn.DepthwiseConv2d` ``(in_channels, in_channels * depth_multiplier, kernel_size)``,
      without bias when ``norm``;
    * ``bn_dw``: ``nn.BatchNorm2d(in_channels * depth_multiplier)`` (``None`` without ``norm``);
    * ``pw``: ``nn.Conv2d(in_channels * depth_multiplier, out_channels, 1)``, without bias when ``norm``;
    * ``bn_pw``: ``nn.BatchNorm2d(out_channels)`` (``None`` without ``norm``).

    Eval mode (and ``norm=False`` in either mode) runs one fused kernel with the batch norms folded into
    the weights (:func:`fusedops.fuse_bn`). By default the weights are folded afresh on every call, so the
    result always reflects the current parameters and buffers, however they were written (optimizer steps,
    ``load_state_dict``, ``.data`` writes by EMA or weight-loading utilities, inference tensors); while
    gradients are being recorded the fold is differentiable, so gradients reach the unfolded parameters.
    Train mode with ``norm`` runs ``dw -> bn_dw -> act -> pw -> bn_pw -> act`` exactly as the unfused modules
    (batch statistics, running-stat updates).

    :meth:`freeze` (or :func:`fusedops.freeze` on a whole model) takes the folded weights as constants
    instead, as ``torch.jit.freeze`` does: they are folded once and reused, which saves the fold's few
    small tensor operations per call in deployment. A frozen module refolds after ``.to()``/``.cuda()``/
    ``.half()`` and friends, ``load_state_dict``, ``copy.deepcopy`` and unpickling, but not after any other
    change of its parameters or buffers, and its fused path records no gradients for them: call
    :meth:`unfreeze` (or :meth:`freeze` again) after changing weights.

    Args:
        padding: default ``dilation * (kernel_size - 1) // 2`` ("same" for odd kernels at stride 1).
        mid_activation, out_activation: ``None``, ``"relu"``, ``"relu6"``, ``"hardswish"`` or ``"silu"``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 depth_multiplier: int = 1, mid_activation="relu6", out_activation="relu6", norm: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if depth_multiplier < 1:
            raise ValueError(f"fusedops: depth_multiplier must be a positive int, got {depth_multiplier}")
        self.mid_activation = activation_name(mid_activation, "mid_activation")
        self.out_activation = activation_name(out_activation, "out_activation")
        k = nn.modules.utils._pair(kernel_size)
        d = nn.modules.utils._pair(dilation)
        if padding is None:
            padding = (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
        mid = in_channels * depth_multiplier
        factory = dict(device=device, dtype=dtype)
        self.norm = norm
        self.dw = DepthwiseConv2d(in_channels, mid, k, stride, padding, d, bias=not norm, **factory)
        self.bn_dw = nn.BatchNorm2d(mid, **factory) if norm else None
        self.pw = nn.Conv2d(mid, out_channels, 1, bias=not norm, **factory)
        self.bn_pw = nn.BatchNorm2d(out_channels, **factory) if norm else None

    def _stages(self):
        modules = self._modules
        # Without ``norm`` the batch norms are None attributes, not children.
        return modules["dw"], modules.get("bn_dw"), modules["pw"], modules.get("bn_pw")

    def _forward_unfused(self, input):
        x = self.dw(input)
        if self.norm:
            x = self.bn_dw(x)
        x = activation(x, self.mid_activation)
        x = self.pw(x)
        if self.norm:
            x = self.bn_pw(x)
        return activation(x, self.out_activation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, norm={self.norm}"
