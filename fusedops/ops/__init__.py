"""The functional API: one module per op (wrapper, fake kernels, autograd registration)."""

from .depthwise_conv2d import depthwise_conv2d

__all__ = ["depthwise_conv2d"]
