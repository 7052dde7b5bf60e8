"""Pure-PyTorch reference implementations of every fusedops op.

They define the semantics the kernels must match: the parity tests and the benchmarks compare against
them, and the ``reference`` backend runs them. Arguments are already normalised by the public wrappers
(pairs for stride/padding/dilation).
"""

import torch
import torch.nn.functional as F


def depthwise_conv2d(input, weight, bias, stride, padding, dilation):
    return F.conv2d(input, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups=input.shape[1])
