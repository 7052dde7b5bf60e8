"""Reference models built from fusedops kernels (no pretrained weights are downloaded)."""

from .ghostnet import GhostNet, ghostnet, ghostnet_050, ghostnet_100, ghostnet_130
from .mobilenet_v1 import MobileNetV1, mobilenet_v1
from .mobilenet_v2 import MobileNetV2, mobilenet_v2
from .mobilenet_v3 import MobileNetV3, mobilenet_v3_large, mobilenet_v3_small
from .shufflenet_v1 import ShuffleNetV1, shufflenet_v1
from .shufflenet_v2 import (ShuffleNetV2, shufflenet_v2_x0_5, shufflenet_v2_x1_0, shufflenet_v2_x1_5,
                            shufflenet_v2_x2_0)

__all__ = ["GhostNet", "MobileNetV1", "MobileNetV2", "MobileNetV3", "ShuffleNetV1", "ShuffleNetV2", "ghostnet",
           "ghostnet_050", "ghostnet_100", "ghostnet_130", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large",
           "mobilenet_v3_small", "shufflenet_v1", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
           "shufflenet_v2_x2_0"]
