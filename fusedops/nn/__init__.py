"""Drop-in ``torch.nn`` modules backed by fusedops kernels."""

from .depthwise import DepthwiseConv2d
from .shuffle import ChannelShuffle

__all__ = ["ChannelShuffle", "DepthwiseConv2d"]
