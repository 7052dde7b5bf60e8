"""ShuffleNetV2 (Ma et al. 2018) built from fusedops kernels.

Same architecture and parameter/buffer names as ``torchvision.models.shufflenetv2``, so
``model.load_state_dict(torchvision_model.state_dict())`` works. Each unit is a
:class:`fusedops.nn.ShuffleNetV2Unit` (one fused op in eval mode, its halves written straight to their shuffled
places), the stem and head :class:`fusedops.nn.ConvBNActivation` (the batch norm folded in, in eval mode).
No pretrained weights are downloaded: load a state dict.
"""

from torch import nn

from ..nn import ConvBNActivation, ShuffleNetV2Unit

__all__ = ["ShuffleNetV2", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]


# torchvision's name of the unit.
InvertedResidual = ShuffleNetV2Unit


class ShuffleNetV2(nn.Module):
    def __init__(self, stages_repeats, stages_out_channels, num_classes: int = 1000) -> None:
        super().__init__()
        if len(stages_repeats) != 3:
            raise ValueError("fusedops: expected stages_repeats as a list of 3 positive ints")
        if len(stages_out_channels) != 5:
            raise ValueError("fusedops: expected stages_out_channels as a list of 5 positive ints")
        self._stage_out_channels = list(stages_out_channels)
        input_channels, output_channels = 3, stages_out_channels[0]
        self.conv1 = ConvBNActivation(input_channels, output_channels, 3, 2, activation="relu")
        input_channels = output_channels
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for name, repeats, output_channels in zip(("stage2", "stage3", "stage4"), stages_repeats,
                                                  stages_out_channels[1:]):
            seq = [InvertedResidual(input_channels, output_channels, 2)]
            seq += [InvertedResidual(output_channels, output_channels, 1) for _ in range(repeats - 1)]
            setattr(self, name, nn.Sequential(*seq))
            input_channels = output_channels
        output_channels = stages_out_channels[-1]
        self.conv5 = ConvBNActivation(input_channels, output_channels, 1, activation="relu")
        self.fc = nn.Linear(output_channels, num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        x = self.conv5(x)
        return self.fc(x.mean([2, 3]))


def shufflenet_v2_x0_5(num_classes: int = 1000) -> ShuffleNetV2:
    return ShuffleNetV2([4, 8, 4], [24, 48, 96, 192, 1024], num_classes)


def shufflenet_v2_x1_0(num_classes: int = 1000) -> ShuffleNetV2:
    return ShuffleNetV2([4, 8, 4], [24, 116, 232, 464, 1024], num_classes)


def shufflenet_v2_x1_5(num_classes: int = 1000) -> ShuffleNetV2:
    return ShuffleNetV2([4, 8, 4], [24, 176, 352, 704, 1024], num_classes)


def shufflenet_v2_x2_0(num_classes: int = 1000) -> ShuffleNetV2:
    return ShuffleNetV2([4, 8, 4], [24, 244, 488, 976, 2048], num_classes)
