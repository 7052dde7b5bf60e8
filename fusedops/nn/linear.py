"""A linear layer whose inference on a few rows reads its weight once at the memory's speed: the models' classifiers
(MobileNetV3-Large's 960 -> 1280 -> 1000: 10 MB of weights for one image) and the 1x1 convolutions on their pooled
maps."""

import torch
import torch.nn.functional as F
from torch import nn

from .. import _backend
from ..ops import _library
from ..ops.linear_activation import NAME as LINEAR_NAME

# The most rows (samples) an inference call runs through fusedops' _linear_activation instead of F.linear, and the
# most for a weight of fewer than _LARGE_WEIGHT elements. Measured on the 2-vCPU AMD EPYC (Zen 3), 2 threads, four
# weights in turn (cold, as in a model), F.linear against the kernel, us: 960 -> 1280 at 1 row 234 / 89, 2 rows 498 /
# 112, 8 rows 603 / 216, 16 rows 718 / 449, 32 rows 1057 / 933; 1280 -> 1000 at 1 row 261 / 70, 8 rows 731 / 269;
# 576 -> 1024 at 8 rows 282 / 154; 160 -> 960 (0.6 MB, bound by the multiply-adds from 8 rows on, where oneDNN's
# blocking pays) at 4 rows 54 / 35, 8 rows 59 / 61, 16 rows 85 / 104. F.linear reads a weight on one thread up to
# a few rows.
_MAX_ROWS = 8
_MAX_ROWS_SMALL_WEIGHT = 4
_LARGE_WEIGHT = 1 << 18


def runs_linear_kernel(input, weight, bias) -> bool:
    """Whether ``F.linear(input, weight, bias)`` (the rows of `input`: its last dimension the features) runs as
    fusedops' _linear_activation: no gradient recorded (the op has no autograd), an eager call of the native CPU
    kernels (_backend.runs_native_eagerly), few enough rows of a floating-point input of the weight's dtype, and no
    CPU autocast (F.linear's dtype there is autocast's)."""
    if not _backend.runs_native_eagerly(input) or _records_gradient(input, weight, bias):
        return False
    shape = input.shape
    if not shape or weight.dim() != 2:
        return False
    features = shape[-1]
    rows = input.numel() // features if features else 0
    limit = _MAX_ROWS if weight.numel() >= _LARGE_WEIGHT else _MAX_ROWS_SMALL_WEIGHT
    return (0 < rows <= limit and features == weight.shape[1] and input.dtype == weight.dtype
            and input.is_floating_point() and weight.is_cpu and not torch.is_autocast_enabled("cpu"))


def linear(input, weight, bias, activation="none"):
    """``activation(F.linear(input, weight, bias))`` through fusedops' _linear_activation (where
    :func:`runs_linear_kernel`), any leading dimensions."""
    matrix = input.dim() == 2  # the commonest call: no reshapes (~0.7 us each)
    rows = input if matrix else input.reshape(-1, input.shape[-1])
    out = _library.eager_native(LINEAR_NAME)(rows, weight, bias, activation)
    if out is NotImplemented:
        out = torch.ops.fusedops._linear_activation(rows, weight, bias, activation)
    return out if matrix else out.reshape(*input.shape[:-1], weight.shape[0])


def _records_gradient(input, weight, bias) -> bool:
    return torch.is_grad_enabled() and (input.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))


class Linear(nn.Linear):
    """``nn.Linear(in_features, out_features, bias)``: the same parameters, state-dict keys and function.

    Where no gradient is recorded, an eager call on a CPU input of at most 8 rows (4 for a weight of fewer than 2^18
    elements) runs fusedops' ``_linear_activation``, which reads the weight once, on every thread, for all the rows:
    MobileNetV3-Large's classifier at batch 1 (960 -> 1280 -> 1000) 2.6-3.7x faster than ``F.linear`` on a 2-vCPU AMD
    EPYC (Zen 3), 2 threads. Every other call, and every call that records gradients (one algorithm whatever the
    batch), runs ``F.linear``. The kernel sums each output in the same order whatever the rows and threads, so a
    sample's output does not depend on its batch up to that size."""

    def forward(self, input):
        # Each parameter read once: a read through Module.__getattr__ takes ~1.4 us.
        weight, bias = self.weight, self.bias
        if runs_linear_kernel(input, weight, bias):
            return linear(input, weight, bias)
        return F.linear(input, weight, bias)
