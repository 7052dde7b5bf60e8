"""Drop-in ``torch.nn`` modules backed by fusedops kernels."""

from .depthwise import DepthwiseConv2d
from .freeze import freeze, unfreeze
from .fuse import fuse_bn
from .ghost import GhostBottleneck, GhostModule, GhostSqueezeExcite
from .inverted_residual import ConvBNActivation, InvertedResidual
from .inverted_residual_v3 import InvertedResidualV3
from .linear import Linear
from .paired import PairedActivation, PairedBatchNorm2d, PairedConv2d
from .pointwise import PointwiseConv2d
from .separable import DepthwiseSeparableConv2d
from .shuffle import ChannelShuffle
from .shufflenet_v2_unit import ShuffleNetV2Unit
from .squeeze_excitation import SqueezeExcitation
from .timm_blocks import TimmDepthwiseSeparable, TimmInvertedResidual

__all__ = ["ChannelShuffle", "ConvBNActivation", "DepthwiseConv2d", "DepthwiseSeparableConv2d", "GhostBottleneck",
           "GhostModule", "GhostSqueezeExcite", "InvertedResidual", "InvertedResidualV3", "Linear", "PairedActivation",
           "PairedBatchNorm2d", "PairedConv2d", "PointwiseConv2d", "ShuffleNetV2Unit", "SqueezeExcitation",
           "TimmDepthwiseSeparable", "TimmInvertedResidual", "freeze", "fuse_bn", "unfreeze"]
