"""The activations of the fused ops, by name: the names the op schemas take, and what each computes in PyTorch
(for the reference implementations and the unfused train path of :class:`fusedops.nn.DepthwiseSeparableConv2d`).
"""

import torch.nn.functional as F

ACTIVATIONS = ("none", "relu", "relu6", "hardswish")


def activation_name(value, name: str) -> str:
    """None or one of ACTIVATIONS -> the schema's string; `name` is the argument's, for the error."""
    if value is None:
        return "none"
    if isinstance(value, str) and value in ACTIVATIONS:
        return value
    raise ValueError(f"fusedops: {name} must be one of None, 'relu', 'relu6', 'hardswish'; got {value!r}")


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
    raise ValueError(f"unknown activation {kind!r}")
