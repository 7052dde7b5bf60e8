"""fusedops: fused, fast kernels for the building blocks of efficient CNNs.

    >>> import fusedops
    >>> y = fusedops.depthwise_conv2d(x, w, padding=1)
    >>> layer = fusedops.nn.DepthwiseConv2d(32, 32, 3, padding=1)
"""

from ._version import __version__
from ._extension import build_info
from ._backend import get_backend, set_backend, use_backend
from .ops import depthwise_conv2d
from . import nn

__all__ = ["__version__", "build_info", "get_backend", "set_backend", "use_backend", "depthwise_conv2d", "nn"]
