"""The functional API: one module per op (wrapper, fake kernels, autograd registration).

What the ops share: ``_library`` (registration and the wrappers' call path), ``_args`` (argument
normalisation), ``_geometry`` (argument checks and output shapes, the Python copy of the C++ ones),
``activations``, ``_reference`` (pure-PyTorch implementations) and ``_triton`` (Triton kernels, one module
per op over ``_triton/_common.py``).
"""

from . import batch_norm_activation  # noqa: F401 (registers the training path's fake kernels)
from . import conv2d_activation  # noqa: F401 (registers the stems' fake kernel)
from . import linear_activation  # noqa: F401 (registers the classifiers' fake kernel)
from .channel_shuffle import channel_shuffle, concat_shuffle
from .depthwise_conv2d import depthwise_conv2d
from .dwpw_conv2d import dwpw_conv2d
from .ghost_module import ghost_module
from .inverted_residual import inverted_residual
from .shufflenet_v2_unit import shufflenet_v2_unit

__all__ = ["channel_shuffle", "concat_shuffle", "depthwise_conv2d", "dwpw_conv2d", "ghost_module", "inverted_residual",
           "shufflenet_v2_unit"]
