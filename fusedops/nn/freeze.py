"""Taking the folded weights of a model's fused blocks as constants (an explicit deployment step)."""

from torch import nn

from .separable import DepthwiseSeparableConv2d


def freeze(model: nn.Module) -> nn.Module:
    r"""Freezes every :class:`fusedops.nn.DepthwiseSeparableConv2d` in ``model`` (``model`` itself included):
    their batch norms are folded once and the folded weights reused as constants, as ``torch.jit.freeze``
    and Inductor's freezing take weights, instead of being folded on every call. Changes to the weights
    made afterwards other than through ``.to()``-style conversions, ``load_state_dict``, copies and
    pickling are not seen until :func:`unfreeze` (or another :func:`freeze`). Returns ``model``.

        >>> model = fusedops.freeze(fusedops.models.mobilenet_v1().eval())
    """
    for module in model.modules():
        if isinstance(module, DepthwiseSeparableConv2d):
            module.freeze()
    return model


def unfreeze(model: nn.Module) -> nn.Module:
    """Undoes :func:`freeze`: the blocks fold their weights on every call again. Returns ``model``."""
    for module in model.modules():
        if isinstance(module, DepthwiseSeparableConv2d):
            module.unfreeze()
    return model
