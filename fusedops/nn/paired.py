"""A convolution and the batch norm after it that are children of the same module, side by side (timm's stems and
heads: ``conv_stem``, ``bn1``; timm's ``ConvNormAct``: ``conv``, ``bn``), fused without moving either:
:class:`PairedConv2d` takes the convolution's place and runs conv -> BN -> activation, one convolution with the batch
norm folded in at eval; :class:`PairedBatchNorm2d` takes the batch norm's place, keeps its parameters, buffers and
state-dict keys, and passes its input on; so does :class:`PairedActivation` in the place of an activation module
after the batch norm (timm's GhostNet stem: ``act1``). :func:`fusedops.convert` pairs them only where the parent's
forward feeds the convolution's output to the batch norm (and the batch norm's to the activation) and nowhere
else."""

from torch import nn

from ..ops.activations import activation_name
from .freeze import FoldedWeights
from .inverted_residual import _fold, _runs_unfused, folded_conv_activation


class PairedBatchNorm2d(nn.BatchNorm2d):
    """The batch norm of a :class:`PairedConv2d`, in its own place in the model: it holds the batch norm's
    ``nn.Parameter`` objects, buffers (running statistics, updated in place in train mode) and settings, and its
    children (timm's ``BatchNormAct2d`` carries ``drop`` and ``act``), so state-dict keys and parameters are the
    original's; its forward passes the input on, since the convolution before it normalised it already
    (:meth:`normalize`)."""

    def __init__(self, norm: nn.BatchNorm2d):
        nn.Module.__init__(self)
        for name in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            setattr(self, name, getattr(norm, name))
        self._parameters.update(norm._parameters)
        self._buffers.update(norm._buffers)
        self._modules.update(norm._modules)
        self.train(norm.training)

    def normalize(self, input):
        """The batch norm (``nn.BatchNorm2d``'s forward: batch statistics and running-statistics updates in train
        mode), then its children in order (timm's ``drop`` and ``act``)."""
        out = super().forward(input)
        for child in self._modules.values():
            out = child(out)
        return out

    def forward(self, input):
        return input


class PairedActivation(nn.Module):
    """The activation module after a :class:`PairedConv2d`'s batch norm, in its own place in the model: the
    convolution applies it (in eval mode in place on its folded convolution's output), so its forward passes the
    input on. It
    holds the original module's children, parameters and buffers (PyTorch's activations have none), so state-dict
    keys are the original's."""

    def __init__(self, activation: nn.Module):
        super().__init__()
        self._parameters.update(activation._parameters)
        self._buffers.update(activation._buffers)
        self._modules.update(activation._modules)
        # Not registered as a child: what the convolution before it runs in train mode.
        self.__dict__["activation"] = activation
        self.train(activation.training)

    def forward(self, input):
        return input

    def extra_repr(self) -> str:
        return f"{type(self.activation).__name__}, applied by the paired convolution"


class PairedConv2d(FoldedWeights, nn.Conv2d):
    """conv -> `norm` -> `activation` in the convolution's place: the given convolution's geometry and ``nn.Parameter``
    objects (its state-dict keys), with `norm` (a :class:`PairedBatchNorm2d`, which stays in its own place in the
    model and is not a child of this module) run after it.

    Eval mode runs one convolution with the batch norm folded into its weights and the activation in place on its
    output, as :class:`fusedops.nn.ConvBNActivation` does (:meth:`freeze` keeps the folded weights); train mode runs
    the convolution then ``norm.normalize`` (batch statistics, running-statistics updates, the norm's own
    activation module), then `following`'s activation module where given (a :class:`PairedActivation`, which stays
    in its own place). `activation` is the op's name of the activation applied after normalising: the norm's own or
    `following`'s (``None``: neither)."""

    def __init__(self, conv: nn.Conv2d, norm: PairedBatchNorm2d, activation=None,
                 following: PairedActivation = None):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        self._parameters["weight"] = conv.weight
        self._parameters["bias"] = conv.bias
        # Not registered as a child: the batch norm's parameters and keys stay where the model has them.
        self.__dict__["norm"] = norm
        self.__dict__["following"] = following
        self.activation = activation_name(activation, "activation")
        self.train(conv.training)

    def _fold(self):
        return _fold(self, self.norm)

    def forward(self, input):
        norm = self.norm
        if _runs_unfused(self, (norm,)):
            out = norm.normalize(super().forward(input))
            return out if self.following is None else self.following.activation(out)
        return folded_conv_activation(self, self, input, self.activation)

    def extra_repr(self) -> str:
        frozen = ", frozen=True" if self._frozen else ""
        return f"{super().extra_repr()}, activation={self.activation!r}{frozen}"
