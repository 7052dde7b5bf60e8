"""The models' classifiers and pooled heads: ``_linear_activation(input, weight, bias, activation)``, an internal op for
inference (no autograd): ``activation(F.linear(input, weight, bias))`` for a 2-D input of a few rows, the weight read
once for all of them and the activation applied before the output is stored.

Schema: csrc/linear_activation.cpp; CPU kernel: csrc/cpu/linear_activation.cpp. ``fusedops.nn.Linear`` (what
:func:`fusedops.convert` makes of an ``nn.Linear``) and the 1x1 convolutions on pooled maps (``PointwiseConv2d``, the
heads of ``ConvBNActivation``) call it on CPU without gradients for at most ``MAX_ROWS`` rows; elsewhere they run
``F.linear``.
"""

import torch

from .. import _extension

NAME = "_linear_activation"

# The most rows the op runs for instead of F.linear. Measured on the 2-vCPU AMD EPYC (Zen 3), 2 threads, weights cold
# (four layers in turn): see fusedops/nn/linear.py.
MAX_ROWS = 8


def _fake(input, weight, bias, activation):
    torch._check(input.dim() == 2, lambda: f"fusedops: input must be a 2-D (rows, in_features) tensor, got "
                                           f"{input.dim()}-D")
    torch._check(weight.dim() == 2 and weight.shape[1] == input.shape[1],
                 lambda: f"fusedops: weight must have shape (out_features, {input.shape[1]}), got "
                         f"{tuple(weight.shape)}")
    return input.new_empty((input.shape[0], weight.shape[0]))


if _extension.has_ops():
    torch.library.register_fake(f"fusedops::{NAME}")(_fake)
