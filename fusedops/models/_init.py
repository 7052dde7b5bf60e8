"""The MobileNets' weight initialisation (torchvision's), shared by the models."""

from torch import nn


def init_weights(model: nn.Module) -> None:
    """He (fan-out) normal convolution weights, zero biases, unit BatchNorm scales, N(0, 0.01) linear weights, in
    module order: the same draws as torchvision's MobileNetV2 and MobileNetV3 for the same seed."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
