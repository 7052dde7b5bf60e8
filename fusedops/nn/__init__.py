"""Drop-in ``torch.nn`` modules backed by fusedops kernels."""

from .depthwise import DepthwiseConv2d
from .freeze import freeze, unfreeze
from .fuse import fuse_bn
from .inverted_residual import ConvBNActivation, InvertedResidual
from .separable import DepthwiseSeparableConv2d
from .shuffle import ChannelShuffle

__all__ = ["ChannelShuffle", "ConvBNActivation", "DepthwiseConv2d", "DepthwiseSeparableConv2d", "InvertedResidual",
           "freeze", "fuse_bn", "unfreeze"]
