"""The activations (and squeeze-excitation gates) of the fused ops, by name: the names the op schemas take, and what
each computes in PyTorch
(for the reference implementations and the unfused train path of :class:`fusedops.nn.DepthwiseSeparableConv2d`).
"""

import torch
import torch.nn.functional as F

ACTIVATIONS = ("none", "relu", "relu6", "hardswish", "silu")
# The gates of a squeeze-excitation (fusedops.inverted_residual's se).
GATES = ("hardsigmoid", "sigmoid")


def activation_name(value, name: str) -> str:
    """None or one of ACTIVATIONS -> the schema's string; `name` is the argument's, for the error."""
    if value is None:
        return "none"
    if isinstance(value, str) and value in ACTIVATIONS:
        return value
    raise ValueError(f"fusedops: {name} must be one of None, 'relu', 'relu6', 'hardswish', 'silu'; got {value!r}")


def activation(x, kind):
    """The activation `kind` (None or one of ACTIVATIONS) of `x`."""
    if kind is None or kind == "none":
        return x
    if kind == "relu":
        return F.relu(x)
    if kind == "relu6":
        return F.relu6(x)
    if kind == "hardswish":
        return F.hardswish(x)
    if kind == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {kind!r}")


_ACTIVATION_BACKWARD = {
    "relu": lambda grad, z: torch.ops.aten.threshold_backward(grad, z, 0),
    "relu6": lambda grad, z: torch.ops.aten.hardtanh_backward(grad, z, 0, 6),
    "hardswish": lambda grad, z: torch.ops.aten.hardswish_backward(grad, z),
    "silu": lambda grad, z: torch.ops.aten.silu_backward(grad, z),
}


def activation_backward(grad, z, kind):
    """grad * act'(z) for the activation `kind` (one of ACTIVATIONS), with PyTorch's conventions at the kinks (the
    native activation_backward_into's formulas, csrc/shared/activation_ops.cpp)."""
    if kind == "none":
        return grad
    return _ACTIVATION_BACKWARD[kind](grad, z)


def gate(x, kind):
    """The squeeze-excitation gate `kind` (one of GATES) of `x`."""
    if kind == "hardsigmoid":
        return F.hardsigmoid(x)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"unknown gate {kind!r}")
