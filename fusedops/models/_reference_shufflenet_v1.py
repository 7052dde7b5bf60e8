"""Plain-PyTorch ShuffleNetV1 (nn.Conv2d(groups=C), F.channel_shuffle, torch.cat) with the parameter names of
fusedops.models.ShuffleNetV1: the reference its parity tests compare against."""

import torch
from torch import nn
import torch.nn.functional as F

from .shufflenet_v1 import ShuffleNetV1, ShuffleUnit


class ReferenceShuffleUnit(ShuffleUnit):
    @staticmethod
    def _depthwise(channels: int, stride: int) -> nn.Conv2d:
        return nn.Conv2d(channels, channels, 3, stride, 1, bias=False, groups=channels)

    def _shuffle(self, x):
        return F.channel_shuffle(x, self.groups) if self.groups > 1 else x

    def _concat(self, shortcut, x):
        return torch.cat([shortcut, x], 1)


class ReferenceShuffleNetV1(ShuffleNetV1):
    unit = ReferenceShuffleUnit


def reference_shufflenet_v1(groups: int = 3, width_mult: float = 1.0, num_classes: int = 1000):
    return ReferenceShuffleNetV1(groups, width_mult, num_classes)
