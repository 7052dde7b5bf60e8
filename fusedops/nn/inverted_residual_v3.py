"""MobileNetV3's inverted-residual block (:class:`InvertedResidualV3`): MobileNetV2's block with squeeze-excitation
and hard-swish, one fused op in eval mode, with torchvision's submodules and state-dict keys."""

from torch import nn

from ..ops.activations import activation_name
from ._channels import make_divisible
from .depthwise import DepthwiseConv2d
from .inverted_residual import ConvBNActivation, InvertedResidualBlock, Stages
from .squeeze_excitation import SqueezeExcitation

# MobileNetV3's batch norms (torchvision's norm_layer for it): eps 0.001, momentum 0.01.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def _positive_int(value, argument):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"fusedops: InvertedResidualV3 {argument} must be a positive int, got {value!r}")


def squeeze_channels(expanded_channels: int) -> int:
    """The squeeze-excitation bottleneck of a MobileNetV3 block: a quarter of the expanded channels, rounded to a
    multiple of 8 as torchvision rounds it."""
    return make_divisible(expanded_channels // 4, 8)


def batch_norm_settings(norm_layer):
    """(eps, momentum) of the batch norms that `norm_layer` (torchvision's ``norm_layer`` argument: a callable
    making a norm layer from a channel count, e.g. ``partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)``) makes;
    MobileNetV3's for None. The fused blocks fold ``nn.BatchNorm2d`` with affine parameters and running
    statistics: other norm layers are refused."""
    if norm_layer is None:
        return BN_EPS, BN_MOMENTUM
    bn = norm_layer(1)
    if type(bn) is not nn.BatchNorm2d or not bn.affine or not bn.track_running_stats:
        raise TypeError("fusedops: InvertedResidualV3 folds nn.BatchNorm2d (affine, tracking running statistics); "
                        f"norm_layer made {bn!r}")
    return bn.eps, bn.momentum


class InvertedResidualV3(InvertedResidualBlock):
    r"""MobileNetV3's inverted-residual block (Howard et al. 2019, section 5): [1x1 expansion -> BN -> act] ->
    depthwise kxk -> BN -> act -> [squeeze-excitation] -> 1x1 projection -> BN (linear), plus the input when
    ``stride == 1`` and ``in_channels == out_channels``, running the fused :func:`fusedops.inverted_residual` op.

    A drop-in for ``torchvision.models.mobilenetv3.InvertedResidual``: same attributes (``use_res_connect``,
    ``out_channels``, ``_is_cn``) and submodules, so the state-dict keys are the same and weights load either way.
    ``block`` is an ``nn.Sequential`` of

    * the 1x1 expansion ``in_channels -> expanded_channels`` (:class:`ConvBNActivation`: conv, BN, activation),
      only when ``expanded_channels != in_channels`` (the later children move up by one without it);
    * the depthwise stage (:class:`ConvBNActivation` over :class:`fusedops.nn.DepthwiseConv2d`, an ``nn.Conv2d``
      with the same parameters);
    * with ``use_se``, :class:`fusedops.nn.SqueezeExcitation` (``fc1``, ``fc2``; ReLU between them, hard-sigmoid
      gate) with ``squeeze_channels(expanded_channels)`` channels in its bottleneck;
    * the 1x1 projection (:class:`ConvBNActivation` without activation: conv, BN).

    Eval mode runs one fused op: the batch norms folded into the convolutions (:func:`fusedops.fuse_bn`) and the
    squeeze-excitation's weights passed as they are. As for :class:`InvertedResidual`, the weights are folded
    afresh on every call (differentiably while gradients are recorded) unless the block is frozen
    (:meth:`freeze`, :func:`fusedops.freeze`), which takes them, squeeze-excitation included, as constants. Train
    mode has torchvision's semantics (batch statistics, running-stat updates): on CPU through the fused training
    path, as :class:`InvertedResidual` does (the squeeze-excitation recomputed in the backward), elsewhere
    through ``block`` (plus the input) as torchvision's block.

    Args (in the order of torchvision's ``InvertedResidualConfig``; :meth:`from_config` takes one):
        in_channels, kernel_size, expanded_channels, out_channels: channels, and the depthwise kernel size
            (padding ``(kernel_size - 1) // 2 * dilation``).
        use_se: whether the block has a squeeze-excitation stage.
        activation: after the expansion and the depthwise stage: ``"relu"`` or ``"hardswish"`` (MobileNetV3's),
            or ``None``, ``"relu6"``, ``"silu"``.
        stride: 1 or 2, as torchvision's block takes it: the block's stride, which decides ``use_res_connect`` and
            ``_is_cn``. With ``dilation > 1`` the depthwise convolution runs at stride 1 instead (torchvision's
            dilated backbones keep the resolution and dilate instead of striding).
        dilation: of the depthwise stage.
        bn_eps, bn_momentum: of every batch norm; MobileNetV3's by default.
    """

    def __init__(self, in_channels: int, kernel_size: int, expanded_channels: int, out_channels: int, use_se: bool,
                 activation, stride: int, dilation: int = 1, *, bn_eps: float = BN_EPS,
                 bn_momentum: float = BN_MOMENTUM, device=None, dtype=None):
        super().__init__()
        if not isinstance(stride, int) or isinstance(stride, bool) or stride not in (1, 2):
            raise ValueError(f"fusedops: InvertedResidualV3 stride must be 1 or 2, got {stride!r}")
        for value, argument in ((in_channels, "in_channels"), (kernel_size, "kernel_size"),
                                (expanded_channels, "expanded_channels"), (out_channels, "out_channels"),
                                (dilation, "dilation")):
            _positive_int(value, argument)
        if not isinstance(use_se, bool):
            raise TypeError(f"fusedops: InvertedResidualV3 use_se must be True or False, got {use_se!r}")
        self.activation = activation_name(activation, "activation")
        self.use_res_connect = stride == 1 and in_channels == out_channels
        factory = dict(device=device, dtype=dtype, bn_eps=bn_eps, bn_momentum=bn_momentum)
        layers = []
        if expanded_channels != in_channels:
            layers.append(ConvBNActivation(in_channels, expanded_channels, 1, activation=self.activation, **factory))
        layers.append(ConvBNActivation(expanded_channels, expanded_channels, kernel_size,
                                       1 if dilation > 1 else stride, expanded_channels, dilation, self.activation,
                                       conv=DepthwiseConv2d, **factory))
        if use_se:
            layers.append(SqueezeExcitation(expanded_channels, squeeze_channels(expanded_channels),
                                            scale_activation=nn.Hardsigmoid, device=device, dtype=dtype))
        layers.append(ConvBNActivation(expanded_channels, out_channels, 1, activation=None, **factory))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels
        # torchvision's marker of the blocks that reduce the resolution (dilated ones included): its backbone
        # extractors for detection and segmentation find the stage boundaries by it.
        self._is_cn = stride > 1
        self._expands = expanded_channels != in_channels
        self._use_se = use_se

    @classmethod
    def from_config(cls, cnf, norm_layer=None, *, device=None, dtype=None):
        """The block of a torchvision ``InvertedResidualConfig`` (or :class:`fusedops.models.mobilenet_v3.
        InvertedResidualConfig`, or anything with its attributes ``input_channels``, ``kernel``,
        ``expanded_channels``, ``out_channels``, ``use_se``, ``use_hs``, ``stride``, ``dilation``), called as
        torchvision's MobileNetV3 calls its blocks: ``block(cnf, norm_layer)``. `norm_layer` (None: MobileNetV3's)
        must make ``nn.BatchNorm2d``; its eps and momentum are taken."""
        eps, momentum = batch_norm_settings(norm_layer)
        return cls(cnf.input_channels, cnf.kernel, cnf.expanded_channels, cnf.out_channels, cnf.use_se,
                   "hardswish" if cnf.use_hs else "relu", cnf.stride, cnf.dilation, bn_eps=eps, bn_momentum=momentum,
                   device=device, dtype=dtype)

    def _stages(self):
        """(expand or None, depthwise, squeeze-excitation or None, project) of ``block``."""
        layers = list(self._modules["block"]._modules.values())
        expand = layers.pop(0) if self._expands else None
        dw, project = layers[0], layers[-1]
        se = layers[1] if self._use_se else None
        # Children through _modules: Sequential indexing and Module attribute lookups cost ~0.5 us each per call.
        return Stages(None if expand is None else (expand._modules["0"], expand._modules["1"]),
                      (dw._modules["0"], dw._modules["1"]),
                      None if se is None else (se, se._modules["fc1"], se._modules["fc2"]),
                      (project._modules["0"], project._modules["1"]))

    _trains_fused = True

    def _forward_unfused(self, input):
        result = self._modules["block"](input)
        return input + result if self.use_res_connect else result

    def folded_weights(self):
        """(expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, se_weights) of the fused
        op, batch norms folded in; the expansion's are ``None`` without one; ``se_weights`` is the
        squeeze-excitation's ``(fc1.weight, fc1.bias, fc2.weight, fc2.bias)``, or ``None`` without one."""
        return self._folded_weights()
