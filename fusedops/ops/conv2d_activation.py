"""The models' stems: ``_conv2d_activation(input, weight, bias, stride, padding, dilation, activation)``, an internal
op for inference (no autograd): ``activation(F.conv2d(input, weight, bias, stride, padding, dilation))`` with groups 1,
the activation applied before the output is stored. The output is channels-last when the input or the weight is
(F.conv2d's rule), else NCHW.

Schema: csrc/conv2d_activation.cpp; CPU kernel: csrc/cpu/conv2d_activation.cpp, a direct convolution meant for
inputs of few channels. The eval-mode conv -> BN -> activation units (``fusedops.nn.ConvBNActivation``,
``PairedConv2d``) call it on CPU without gradients for convolutions of at most 36 taps per output pixel, the 3x3
stems (``fusedops/nn/inverted_residual.py``: ``_runs_direct``); elsewhere they run ``F.conv2d`` and the activation.
"""

import torch
from torch._prims_common import suggest_memory_format

from .. import _extension
from . import _geometry

NAME = "_conv2d_activation"


def _fake(input, weight, bias, stride, padding, dilation, activation):
    torch._check(input.dim() == 4, lambda: f"fusedops: input must be a 4-D (N, C, H, W) tensor, got {input.dim()}-D")
    torch._check(weight.dim() == 4 and weight.shape[1] == input.shape[1],
                 lambda: f"fusedops: weight must have shape (out_channels, {input.shape[1]}, kH, kW) (groups 1: all "
                         f"of the input's channels), got {tuple(weight.shape)}")
    sizes = _geometry.depthwise_output_shape(input, weight, stride, padding, dilation)  # any groups' formula
    channels_last = torch.channels_last in (suggest_memory_format(input), suggest_memory_format(weight))
    return torch.empty(sizes, dtype=input.dtype, device=input.device,
                       memory_format=torch.channels_last if channels_last else torch.contiguous_format)


if _extension.has_ops():
    torch.library.register_fake(f"fusedops::{NAME}")(_fake)
