"""Folding eval-mode batch norms into the convolutions before them."""

import torch
from torch import nn


def fuse_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    r"""Weight and bias of a convolution equivalent to ``bn(conv(x))`` with ``bn`` in eval mode.

    ``bn`` normalises with its running statistics: ``y = (conv(x) - mean) / sqrt(var + eps) * gamma + beta``,
    so the folded weight is ``conv.weight * s`` per output channel and the folded bias
    ``(conv.bias - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)`` (``gamma = 1, beta = 0`` without
    affine parameters; a missing ``conv.bias`` counts as 0). Differentiable: gradients flow back to the
    parameters of both modules.

    Returns:
        ``(weight, bias)``, in the convolution weight's dtype.
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"fusedops: fuse_bn expects an nn.Conv2d, got {type(conv).__name__}")
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"fusedops: fuse_bn expects a batch norm module, got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fusedops: fuse_bn needs a batch norm that tracks running statistics "
                         "(track_running_stats=True)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"fusedops: fuse_bn: the batch norm has {bn.num_features} features but the convolution "
                         f"has {conv.out_channels} output channels")
    return fold_bn(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


def fold_bn(weight, bias, running_mean, running_var, eps, gamma=None, beta=None):
    """fuse_bn on tensors. The statistics are combined in at least float32 (float64 for float64)."""
    dtype = torch.promote_types(weight.dtype, torch.float32)
    scale = torch.rsqrt(running_var.to(dtype) + eps)
    if gamma is not None:
        scale = scale * gamma.to(dtype)
    shift = -running_mean.to(dtype) if bias is None else bias.to(dtype) - running_mean.to(dtype)
    folded_bias = shift * scale
    if beta is not None:
        folded_bias = folded_bias + beta.to(dtype)
    folded_weight = weight.to(dtype) * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return folded_weight.to(weight.dtype), folded_bias.to(weight.dtype)
