"""MobileNetV3 (Howard et al. 2019, "Searching for MobileNetV3"), Large and Small, built from fusedops kernels.

Same architecture, initialisation and parameter/buffer names as ``torchvision.models.mobilenetv3``, so
``model.load_state_dict(torchvision_model.state_dict())`` works either way: ``features.0`` is the stem (3x3
stride-2 conv, BN, hard-swish), then the inverted-residual blocks of Tables 1 and 2 of the paper
(:class:`fusedops.nn.InvertedResidualV3`, one fused op each in eval mode, squeeze-excitation included), then a
1x1 conv, BN, hard-swish to 6x the last block's channels; ``avgpool``; ``classifier`` (linear, hard-swish,
dropout, linear). Batch norms have eps 0.001 and momentum 0.01, as torchvision's. ``width_mult``,
``reduced_tail`` and ``dilated`` are torchvision's (``_mobilenet_v3_conf``). At width 1, 224 x 224: Large 5.5M
parameters, 217M multiply-adds; Small 2.5M, 57M. No pretrained weights are downloaded: load a state dict.
"""

from functools import partial

from torch import nn

from ..nn._channels import make_divisible
from ..nn.inverted_residual import ConvBNActivation
from ..nn.inverted_residual_v3 import BN_EPS, BN_MOMENTUM, InvertedResidualV3
from ._init import init_weights

__all__ = ["InvertedResidualConfig", "MobileNetV3", "mobilenet_v3_conf", "mobilenet_v3_large", "mobilenet_v3_small"]

# The attributes a block configuration has (torchvision's InvertedResidualConfig's).
_CONFIG_FIELDS = ("input_channels", "kernel", "expanded_channels", "out_channels", "use_se", "use_hs", "stride",
                  "dilation")


class InvertedResidualConfig:
    """One row of Tables 1 and 2 of the paper, as torchvision's ``InvertedResidualConfig`` stores it (same
    constructor and attributes; torchvision's own configurations work wherever this one does): channels scaled by
    `width_mult` and rounded to multiples of 8, ``activation`` ``"RE"`` (ReLU) or ``"HS"`` (hard-swish)."""

    def __init__(self, input_channels: int, kernel: int, expanded_channels: int, out_channels: int, use_se: bool,
                 activation: str, stride: int, dilation: int, width_mult: float):
        if activation not in ("RE", "HS"):
            raise ValueError(f"fusedops: InvertedResidualConfig activation must be 'RE' or 'HS', got {activation!r}")
        self.input_channels = self.adjust_channels(input_channels, width_mult)
        self.kernel = kernel
        self.expanded_channels = self.adjust_channels(expanded_channels, width_mult)
        self.out_channels = self.adjust_channels(out_channels, width_mult)
        self.use_se = use_se
        self.use_hs = activation == "HS"
        self.stride = stride
        self.dilation = dilation

    @staticmethod
    def adjust_channels(channels: int, width_mult: float) -> int:
        return make_divisible(channels * width_mult, 8)

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _CONFIG_FIELDS)
        return f"InvertedResidualConfig({fields})"


def mobilenet_v3_conf(arch: str, width_mult: float = 1.0, reduced_tail: bool = False, dilated: bool = False):
    """(block configurations, last_channel) of ``"mobilenet_v3_large"`` or ``"mobilenet_v3_small"``, as
    torchvision's ``_mobilenet_v3_conf``: `reduced_tail` halves the channels of the last stage (and
    ``last_channel``), `dilated` gives its blocks dilation 2 (the segmentation backbones' output stride 16)."""
    if not width_mult > 0:
        raise ValueError(f"fusedops: MobileNetV3 width_mult must be positive, got {width_mult}")
    r = 2 if reduced_tail else 1
    d = 2 if dilated else 1
    bneck = partial(InvertedResidualConfig, width_mult=width_mult)
    if arch == "mobilenet_v3_large":
        setting = [
            bneck(16, 3, 16, 16, False, "RE", 1, 1),
            bneck(16, 3, 64, 24, False, "RE", 2, 1),  # C1
            bneck(24, 3, 72, 24, False, "RE", 1, 1),
            bneck(24, 5, 72, 40, True, "RE", 2, 1),  # C2
            bneck(40, 5, 120, 40, True, "RE", 1, 1),
            bneck(40, 5, 120, 40, True, "RE", 1, 1),
            bneck(40, 3, 240, 80, False, "HS", 2, 1),  # C3
            bneck(80, 3, 200, 80, False, "HS", 1, 1),
            bneck(80, 3, 184, 80, False, "HS", 1, 1),
            bneck(80, 3, 184, 80, False, "HS", 1, 1),
            bneck(80, 3, 480, 112, True, "HS", 1, 1),
            bneck(112, 3, 672, 112, True, "HS", 1, 1),
            bneck(112, 5, 672, 160 // r, True, "HS", 2, d),  # C4
            bneck(160 // r, 5, 960 // r, 160 // r, True, "HS", 1, d),
            bneck(160 // r, 5, 960 // r, 160 // r, True, "HS", 1, d),
        ]
        last_channel = InvertedResidualConfig.adjust_channels(1280 // r, width_mult)  # C5
    elif arch == "mobilenet_v3_small":
        setting = [
            bneck(16, 3, 16, 16, True, "RE", 2, 1),  # C1
            bneck(16, 3, 72, 24, False, "RE", 2, 1),  # C2
            bneck(24, 3, 88, 24, False, "RE", 1, 1),
            bneck(24, 5, 96, 40, True, "HS", 2, 1),  # C3
            bneck(40, 5, 240, 40, True, "HS", 1, 1),
            bneck(40, 5, 240, 40, True, "HS", 1, 1),
            bneck(40, 5, 120, 48, True, "HS", 1, 1),
            bneck(48, 5, 144, 48, True, "HS", 1, 1),
            bneck(48, 5, 288, 96 // r, True, "HS", 2, d),  # C4
            bneck(96 // r, 5, 576 // r, 96 // r, True, "HS", 1, d),
            bneck(96 // r, 5, 576 // r, 96 // r, True, "HS", 1, d),
        ]
        last_channel = InvertedResidualConfig.adjust_channels(1024 // r, width_mult)  # C5
    else:
        raise ValueError(f"fusedops: unknown MobileNetV3 architecture {arch!r}; expected 'mobilenet_v3_large' or "
                         "'mobilenet_v3_small'")
    return setting, last_channel


class MobileNetV3(nn.Module):
    """MobileNetV3. Constructor arguments as torchvision's ``MobileNetV3`` (without ``norm_layer``: the fused
    blocks fold ``nn.BatchNorm2d`` with MobileNetV3's eps and momentum). Submodules: ``features`` (stem, blocks,
    last conv), ``avgpool``, ``classifier`` (linear, hard-swish, dropout, linear).

    Args:
        inverted_residual_setting: the blocks' configurations (:class:`InvertedResidualConfig`, torchvision's, or
            anything with their attributes), e.g. the first result of :func:`mobilenet_v3_conf`.
        last_channel: width of the classifier's hidden layer.
        block: the block class, called as ``block(cnf, norm_layer)`` as torchvision calls it (``norm_layer``
            makes MobileNetV3's batch norms); default :meth:`fusedops.nn.InvertedResidualV3.from_config`.
    """

    def __init__(self, inverted_residual_setting, last_channel: int, num_classes: int = 1000, block=None,
                 dropout: float = 0.2):
        super().__init__()
        if not inverted_residual_setting:
            raise ValueError("fusedops: MobileNetV3 inverted_residual_setting must be a non-empty list of block "
                             "configurations")
        for cnf in inverted_residual_setting:
            missing = [name for name in _CONFIG_FIELDS if not hasattr(cnf, name)]
            if missing:
                raise TypeError("fusedops: MobileNetV3 inverted_residual_setting must hold InvertedResidualConfig "
                                f"objects; {cnf!r} has no {', '.join(missing)}")
        if block is None:
            block = InvertedResidualV3.from_config
        norm_layer = partial(nn.BatchNorm2d, eps=BN_EPS, momentum=BN_MOMENTUM)
        bn = dict(bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM)
        first_channels = inverted_residual_setting[0].input_channels
        layers = [ConvBNActivation(3, first_channels, 3, stride=2, activation="hardswish", **bn)]
        layers += [block(cnf, norm_layer) for cnf in inverted_residual_setting]
        last_in = inverted_residual_setting[-1].out_channels
        last_out = 6 * last_in
        layers.append(ConvBNActivation(last_in, last_out, 1, activation="hardswish", **bn))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_out, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        init_weights(self)

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x).flatten(1)
        return self.classifier(x)


def _mobilenet_v3(arch, width_mult, reduced_tail, dilated, num_classes, dropout, block):
    setting, last_channel = mobilenet_v3_conf(arch, width_mult, reduced_tail, dilated)
    return MobileNetV3(setting, last_channel, num_classes=num_classes, block=block, dropout=dropout)


def mobilenet_v3_large(*, width_mult: float = 1.0, reduced_tail: bool = False, dilated: bool = False,
                       num_classes: int = 1000, dropout: float = 0.2, block=None) -> MobileNetV3:
    """MobileNetV3-Large (randomly initialised, as torchvision's); arguments as torchvision's
    ``mobilenet_v3_large(**kwargs)``."""
    return _mobilenet_v3("mobilenet_v3_large", width_mult, reduced_tail, dilated, num_classes, dropout, block)


def mobilenet_v3_small(*, width_mult: float = 1.0, reduced_tail: bool = False, dilated: bool = False,
                       num_classes: int = 1000, dropout: float = 0.2, block=None) -> MobileNetV3:
    """MobileNetV3-Small (randomly initialised, as torchvision's); arguments as torchvision's
    ``mobilenet_v3_small(**kwargs)``."""
    return _mobilenet_v3("mobilenet_v3_small", width_mult, reduced_tail, dilated, num_classes, dropout, block)
