"""MobileNet (V1; Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications") built from fusedops kernels.

Table 1 of the paper: a 3x3 stride-2 convolution with 32 channels + BN + ReLU, then 13 depthwise-separable
blocks (depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN + ReLU; :class:`fusedops.nn.DepthwiseSeparableConv2d`,
one fused kernel in eval mode) with output channels / strides

    64, 128/2, 128, 256/2, 256, 512/2, 5 x 512, 1024/2, 1024,

global average pooling, dropout and a fully connected classifier. Channels are scaled by the width multiplier
alpha (0.25, 0.5, 0.75, 1.0 in the paper). Any input resolution works (the paper's rho). At alpha = 1, 224 x 224:
4.2M parameters, 569M multiply-adds. No pretrained weights are downloaded.
"""

from torch import nn

from ..nn import DepthwiseSeparableConv2d
from ..nn.inverted_residual import ConvBNActivation
from ._init import init_weights

__all__ = ["MobileNetV1", "mobilenet_v1", "BLOCKS"]

STEM_CHANNELS = 32
# (output channels, stride) of the 13 depthwise-separable blocks at width 1.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (512, 1), (1024, 2), (1024, 1))


def scaled(channels: int, width_mult: float) -> int:
    return max(1, int(round(channels * width_mult)))


class MobileNetV1(nn.Module):
    """MobileNetV1. Submodules: ``stem`` (conv, BN, ReLU), ``blocks`` (13 depthwise-separable blocks),
    ``pool``, ``dropout``, ``fc``."""

    # The block class and the stem's (3x3 stride-2 conv, BN, ReLU: children 0, 1, 2; in eval mode one convolution
    # with the BN folded in); the plain-PyTorch reference model substitutes its own with the same parameter names.
    block = DepthwiseSeparableConv2d
    stem_block = staticmethod(lambda channels: ConvBNActivation(3, channels, 3, stride=2, activation="relu"))

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 1e-3):
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"fusedops: MobileNetV1 width_mult must be positive, got {width_mult}")
        channels = scaled(STEM_CHANNELS, width_mult)
        self.stem = self.stem_block(channels)
        blocks = []
        for out, stride in BLOCKS:
            out = scaled(out, width_mult)
            blocks.append(self.block(channels, out, 3, stride, 1, mid_activation="relu", out_activation="relu"))
            channels = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(self.dropout(self.pool(x).flatten(1)))


def mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 1e-3) -> MobileNetV1:
    """MobileNetV1 with width multiplier `width_mult` (randomly initialised)."""
    return MobileNetV1(width_mult, num_classes, dropout)
