"""Reference models built from fusedops kernels (no pretrained weights are downloaded)."""

from .shufflenet_v1 import ShuffleNetV1, shufflenet_v1
from .shufflenet_v2 import (ShuffleNetV2, shufflenet_v2_x0_5, shufflenet_v2_x1_0, shufflenet_v2_x1_5,
                            shufflenet_v2_x2_0)

__all__ = ["ShuffleNetV1", "ShuffleNetV2", "shufflenet_v1", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0",
           "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
