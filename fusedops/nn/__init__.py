"""Drop-in ``torch.nn`` modules backed by fusedops kernels."""

from .depthwise import DepthwiseConv2d

__all__ = ["DepthwiseConv2d"]
