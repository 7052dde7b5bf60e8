"""The functional API: one module per op (wrapper, fake kernels, autograd registration)."""

from .channel_shuffle import channel_shuffle, concat_shuffle
from .depthwise_conv2d import depthwise_conv2d
from .dwpw_conv2d import dwpw_conv2d

__all__ = ["channel_shuffle", "concat_shuffle", "depthwise_conv2d", "dwpw_conv2d"]
