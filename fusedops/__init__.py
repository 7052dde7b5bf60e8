"""fusedops: fused, fast kernels for the building blocks of efficient CNNs.

    >>> import fusedops
    >>> y = fusedops.depthwise_conv2d(x, w, padding=1)
    >>> layer = fusedops.nn.DepthwiseConv2d(32, 32, 3, padding=1)
    >>> y = fusedops.dwpw_conv2d(x, dw_w, dw_b, pw_w, pw_b, padding=1)
    >>> y = fusedops.channel_shuffle(x, 3)
    >>> y = fusedops.inverted_residual(x, expand_w, expand_b, dw_w, dw_b, project_w, project_b)
    >>> y = fusedops.ghost_module(x, primary_w, primary_b, cheap_w, cheap_b, out_channels=16)
    >>> y = fusedops.shufflenet_v2_unit(x, expand_w, expand_b, dw_w, dw_b, project_w, project_b)
    >>> model = fusedops.models.shufflenet_v2_x1_0()
"""

from ._version import __version__
from ._extension import build_info
from ._backend import get_backend, set_backend, use_backend
from .ops import (channel_shuffle, concat_shuffle, depthwise_conv2d, dwpw_conv2d, ghost_module, inverted_residual,
                  shufflenet_v2_unit)
from . import nn
from .nn.freeze import freeze, unfreeze
from .nn.fuse import fuse_bn
from .convert import ConversionReport, convert

__all__ = [
    "__version__", "build_info", "get_backend", "set_backend", "use_backend",
    "ConversionReport", "channel_shuffle", "concat_shuffle", "convert", "depthwise_conv2d", "dwpw_conv2d", "freeze",
    "fuse_bn", "ghost_module", "inverted_residual", "shufflenet_v2_unit",
    "nn", "models", "unfreeze",
]


def __getattr__(name):
    # fusedops.models is imported on first use, so that `import fusedops` stays light.
    if name == "models":
        import importlib

        return importlib.import_module(".models", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
