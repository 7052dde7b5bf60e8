"""Plain-PyTorch MobileNetV1 (nn.Conv2d(groups=C), nn.BatchNorm2d, activations) with the parameter names of
fusedops.models.MobileNetV1: the reference its parity tests compare against."""

from torch import nn

from ..ops.activations import activation
from .mobilenet_v1 import MobileNetV1


class ReferenceSeparable(nn.Module):
    """Unfused depthwise 3x3 -> BN -> act -> 1x1 -> BN -> act, named like DepthwiseSeparableConv2d."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, mid_activation="relu",
                 out_activation="relu"):
        super().__init__()
        self.mid_activation, self.out_activation = mid_activation, out_activation
        self.dw = nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding, groups=in_channels, bias=False)
        self.bn_dw = nn.BatchNorm2d(in_channels)
        self.pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        x = activation(self.bn_dw(self.dw(x)), self.mid_activation)
        return activation(self.bn_pw(self.pw(x)), self.out_activation)


class ReferenceMobileNetV1(MobileNetV1):
    block = ReferenceSeparable
    stem_block = staticmethod(lambda channels: nn.Sequential(
        nn.Conv2d(3, channels, 3, 2, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)))


def reference_mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 1e-3):
    return ReferenceMobileNetV1(width_mult, num_classes, dropout)
