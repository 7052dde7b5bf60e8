"""Squeeze-and-excitation (Hu et al. 2018) as torchvision has it (:class:`SqueezeExcitation`): the channel gate that
MobileNetV3's and EfficientNet's blocks apply after their depthwise stage, and that the fused
:func:`fusedops.inverted_residual` computes inside the block (its ``se=`` argument)."""

from torch import nn

# The activations the fused op computes, by module class and by name: between the two 1x1 convolutions, and the gate.
SE_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.SiLU: "silu"}
SE_GATES = {nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid"}


def _module_class(value, classes, argument):
    """The module class that `value` (a class of `classes` or its name) stands for; a ValueError naming
    `argument` otherwise."""
    if isinstance(value, type) and value in classes:
        return value
    for cls, name in classes.items():
        if value == name:
            return cls
    names = ", ".join(repr(name) for name in classes.values())
    modules = ", ".join(f"nn.{cls.__name__}" for cls in classes)
    raise ValueError(f"fusedops: SqueezeExcitation {argument} must be one of {names} or {modules} (what the fused "
                     f"op computes); got {value!r}")


def activation_names(gate, activation, what):
    """(gate, activation): the op's names of a squeeze-excitation's gate and inner activation modules; a ValueError
    naming `what` (the squeeze-excitation's class) if the op has no such activation."""
    act, gate = type(activation), type(gate)
    if act not in SE_ACTIVATIONS or gate not in SE_GATES:
        raise ValueError(f"fusedops: the fused op cannot compute this {what}'s activations "
                         f"({act.__name__}, {gate.__name__})")
    return SE_GATES[gate], SE_ACTIVATIONS[act]


class SqueezeExcitation(nn.Module):
    r"""``input * scale_activation(fc2(activation(fc1(avgpool(input)))))``: global average pooling, a 1x1
    convolution to ``squeeze_channels``, ``activation``, a 1x1 convolution back to ``input_channels``, and the
    gate, which scales each channel of the input.

    A drop-in for ``torchvision.ops.SqueezeExcitation(input_channels, squeeze_channels, activation,
    scale_activation)``: same defaults (ReLU, sigmoid), submodules (``avgpool``, ``fc1``, ``fc2`` with biases,
    ``activation``, ``scale_activation``), state-dict keys and forward. The activations are restricted to those the
    fused :func:`fusedops.inverted_residual` computes, so a block holding this module can hand it to the op
    (:meth:`fused_args`).

    Args:
        input_channels, squeeze_channels: channels of the input and of the bottleneck between the convolutions.
        activation: ``nn.ReLU`` (torchvision's default), ``nn.ReLU6``, ``nn.Hardswish`` or ``nn.SiLU``, the class
            or its name (``"relu"``, ...).
        scale_activation: the gate, ``nn.Sigmoid`` (torchvision's default) or ``nn.Hardsigmoid`` (MobileNetV3),
            the class or its name (``"sigmoid"``, ``"hardsigmoid"``).
    """

    def __init__(self, input_channels: int, squeeze_channels: int, activation=nn.ReLU, scale_activation=nn.Sigmoid,
                 device=None, dtype=None):
        super().__init__()
        for value, name in ((input_channels, "input_channels"), (squeeze_channels, "squeeze_channels")):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"fusedops: SqueezeExcitation {name} must be a positive int, got {value!r}")
        activation = _module_class(activation, SE_ACTIVATIONS, "activation")
        scale_activation = _module_class(scale_activation, SE_GATES, "scale_activation")
        factory = dict(device=device, dtype=dtype)
        # Created in torchvision's order: the same random draws give the same initial weights.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1, **factory)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1, **factory)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input):
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input):
        return self._scale(input) * input

    def activation_names(self):
        """(gate, activation): the op's names of ``scale_activation`` and ``activation``, read from the modules
        (so a module swapped in after construction counts); a ValueError if the op has no such activation."""
        return activation_names(self.scale_activation, self.activation, "SqueezeExcitation")

    def fused_args(self):
        """The ``se=`` argument of :func:`fusedops.inverted_residual` computing this module:
        ``(fc1.weight, fc1.bias, fc2.weight, fc2.bias, gate, activation)``."""
        return (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, *self.activation_names())

