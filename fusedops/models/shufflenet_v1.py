"""ShuffleNet (V1; Zhang et al. 2017, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices") built from fusedops kernels.

Stem: 3x3 conv, stride 2, 24 channels + BN + ReLU, 3x3 max-pool stride 2. Three stages of 4, 8 and 4
units whose output channels depend on the groups (Table 1 of the paper, times the width multiplier, rounded
to a multiple of 4 * groups so that every grouped convolution divides). A unit is

    grouped 1x1 conv (bottleneck = out / 4) + BN + ReLU -> channel shuffle -> depthwise 3x3 (stride) + BN
    -> grouped 1x1 conv + BN

stride 1: ``relu(x + unit(x))``; stride 2: ``relu(cat([avg_pool3x3_s2(x), unit(x)]))``, the unit producing
``out - in`` channels. The first 1x1 convolution of the network (first unit of stage 2) is not grouped.
Global average pooling and a fully connected classifier follow. No pretrained weights are downloaded.
"""

import torch
from torch import nn
import torch.nn.functional as F

from ..nn import DepthwiseConv2d
from ..ops.channel_shuffle import channel_shuffle

__all__ = ["ShuffleNetV1", "shufflenet_v1", "STAGE_OUT_CHANNELS"]

# Output channels of stages 2, 3 and 4 at width 1x, per number of groups (Table 1).
STAGE_OUT_CHANNELS = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
STAGE_REPEATS = (4, 8, 4)
STEM_CHANNELS = 24


def stage_channels(groups: int, width_mult: float):
    """Output channels of the three stages: Table 1's, scaled and rounded to a multiple of 4 * groups."""
    if groups not in STAGE_OUT_CHANNELS:
        raise ValueError(f"fusedops: ShuffleNetV1 groups must be one of {sorted(STAGE_OUT_CHANNELS)}, got {groups}")
    if not width_mult > 0:
        raise ValueError(f"fusedops: ShuffleNetV1 width_mult must be positive, got {width_mult}")
    unit = 4 * groups
    first = max(unit, int(round(STAGE_OUT_CHANNELS[groups][0] * width_mult / unit)) * unit)
    if first <= STEM_CHANNELS:  # a stride-2 unit adds out - in channels to its pooled input
        first = (STEM_CHANNELS // unit + 1) * unit
    return (first, 2 * first, 4 * first)


class ShuffleUnit(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, groups: int, first_grouped: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"fusedops: ShuffleNetV1 unit stride must be 1 or 2, got {stride}")
        if stride == 1 and inp != oup:
            raise ValueError(f"fusedops: a stride-1 ShuffleNetV1 unit needs inp == oup, got {inp} and {oup}")
        self.stride = stride
        self.groups = groups
        mid = oup // 4
        out = oup - inp if stride == 2 else oup
        self.conv1 = nn.Conv2d(inp, mid, 1, bias=False, groups=groups if first_grouped else 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = self._depthwise(mid, stride)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out, 1, bias=False, groups=groups)
        self.bn3 = nn.BatchNorm2d(out)

    @staticmethod
    def _depthwise(channels: int, stride: int) -> nn.Conv2d:
        return DepthwiseConv2d(channels, channels, 3, stride, 1, bias=False)

    def _shuffle(self, x):
        return channel_shuffle(x, self.groups) if self.groups > 1 else x

    def _concat(self, shortcut, x):
        return torch.cat([shortcut, x], 1)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self._shuffle(y)
        y = self.bn2(self.conv2(y))
        y = self.bn3(self.conv3(y))
        if self.stride == 1:
            return F.relu(x + y)
        return F.relu(self._concat(F.avg_pool2d(x, 3, 2, 1), y))


class ShuffleNetV1(nn.Module):
    unit = ShuffleUnit

    def __init__(self, groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000) -> None:
        super().__init__()
        channels = stage_channels(groups, width_mult)
        self.groups = groups
        self.stage_out_channels = channels
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False),
            nn.BatchNorm2d(STEM_CHANNELS),
            nn.ReLU(inplace=True),
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inp = STEM_CHANNELS
        for s, (name, repeats, oup) in enumerate(zip(("stage2", "stage3", "stage4"), STAGE_REPEATS, channels)):
            units = [self.unit(inp, oup, 2, groups, first_grouped=s > 0)]
            units += [self.unit(oup, oup, 1, groups) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*units))
            inp = oup
        self.fc = nn.Linear(inp, num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(x.mean([2, 3]))


def shufflenet_v1(groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000) -> ShuffleNetV1:
    """ShuffleNet ``width_mult``x with ``groups`` groups (1, 2, 3, 4 or 8), e.g. the paper's 1x g=3:
    ~138 MFLOPs (multiply-adds) at 224x224 and ~1.9M parameters with 1000 classes."""
    return ShuffleNetV1(groups, width_mult, num_classes)
