"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks") built from fusedops
kernels.

Same architecture, initialisation and parameter/buffer names as ``torchvision.models.mobilenetv2``, so
``model.load_state_dict(torchvision_model.state_dict())`` works either way: ``features.0`` is the stem (3x3
stride-2 conv, BN, ReLU6, 32 channels), ``features.1`` to ``features.17`` the inverted-residual blocks of the
(t, c, n, s) table below (:class:`fusedops.nn.InvertedResidual`, one fused op each in eval mode), ``features.18``
a 1x1 conv, BN, ReLU6 to 1280 channels, then global average pooling and ``classifier`` (dropout, linear).
Channels are scaled by ``width_mult`` and rounded to multiples of ``round_nearest`` as torchvision does (the
last layer is never narrowed below 1280). At width 1, 224 x 224: 3.5M parameters, 300M multiply-adds. No
pretrained weights are downloaded: load a state dict.
"""

from torch import nn

from ..nn._channels import make_divisible
from ..nn.inverted_residual import ConvBNActivation, InvertedResidual
from ._init import init_weights

__all__ = ["MobileNetV2", "mobilenet_v2", "INVERTED_RESIDUAL_SETTING"]

STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# (expansion t, output channels c, blocks n, stride of the first block s) of each stage at width 1 (Table 2).
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2. Constructor arguments as torchvision's ``MobileNetV2`` (without ``norm_layer``: the fused
    blocks fold ``nn.BatchNorm2d``). Submodules: ``features`` (stem, 17 blocks, last conv), ``classifier``
    (dropout, linear).

    Args:
        inverted_residual_setting: the (t, c, n, s) rows, default :data:`INVERTED_RESIDUAL_SETTING`.
        round_nearest: channel counts are multiples of it (1 turns rounding off).
        block: the block class, called as ``block(inp, oup, stride, expand_ratio=t)``; default
            :class:`fusedops.nn.InvertedResidual`.
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, inverted_residual_setting=None,
                 round_nearest: int = 8, block=None, dropout: float = 0.2):
        super().__init__()
        if block is None:
            block = InvertedResidual
        if inverted_residual_setting is None:
            inverted_residual_setting = INVERTED_RESIDUAL_SETTING
        if len(inverted_residual_setting) == 0 or any(len(row) != 4 for row in inverted_residual_setting):
            raise ValueError("fusedops: MobileNetV2 inverted_residual_setting must be a non-empty list of "
                             f"(t, c, n, s) rows, got {inverted_residual_setting}")
        if not width_mult > 0:
            raise ValueError(f"fusedops: MobileNetV2 width_mult must be positive, got {width_mult}")
        input_channel = make_divisible(STEM_CHANNELS * width_mult, round_nearest)
        self.last_channel = make_divisible(LAST_CHANNELS * max(1.0, width_mult), round_nearest)
        features = [ConvBNActivation(3, input_channel, 3, stride=2)]
        for t, c, n, s in inverted_residual_setting:
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(block(input_channel, output_channel, s if i == 0 else 1, expand_ratio=t))
                input_channel = output_channel
        features.append(ConvBNActivation(input_channel, self.last_channel, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        init_weights(self)

    def forward(self, x):
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return self.classifier(x)


def mobilenet_v2(width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.2,
                 round_nearest: int = 8) -> MobileNetV2:
    """MobileNetV2 with width multiplier `width_mult` (randomly initialised, as torchvision's)."""
    return MobileNetV2(num_classes, width_mult, round_nearest=round_nearest, dropout=dropout)
