"""GhostNet (Han et al. 2020) built from fusedops' Ghost blocks, with timm's architecture and state-dict keys
(``timm.models.ghostnet``: ``ghostnet_050``, ``ghostnet_100``, ``ghostnet_130``)."""

import torch.nn.functional as F
from torch import nn

from ..nn._channels import make_divisible
from ..nn.freeze import FoldedWeights
from ..nn.ghost import GhostBottleneck
from ..nn.inverted_residual import _fold, _runs_unfused, folded_conv_activation

# timm's GhostNet configuration: per stage, blocks of (dw kernel, mid channels, out channels, se ratio, stride).
GHOSTNET_CONFIG = (
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),),
    ((3, 72, 24, 0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0, 2),),
    ((3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0.25, 1)),
)


class _FoldedConvBnReLU(FoldedWeights, nn.Module):
    """conv (no bias) -> BN -> ReLU with the children of timm's ``ConvBnAct`` (``conv``, ``bn1``; timm's bn1 carries
    the ReLU, which is not a parameter): one convolution with the BN folded in, in eval mode."""

    def __init__(self, in_chs: int, out_chs: int, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False, device=device, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(out_chs, device=device, dtype=dtype)

    def _fold(self):
        return _fold(self.conv, self.bn1)

    def forward(self, x):
        if _runs_unfused(self.conv, (self.bn1,)):
            return F.relu_(self.bn1(self.conv(x)))
        return folded_conv_activation(self, self.conv, x, "relu")


class GhostNet(FoldedWeights, nn.Module):
    r"""GhostNet: a 3x3 stride-2 stem (conv, BN, ReLU), stages of :class:`fusedops.nn.GhostBottleneck`, a 1x1
    conv-BN-ReLU, global average pooling, a 1x1 ``conv_head`` to 1280 channels with ReLU, dropout and the
    classifier.

    timm's ``GhostNet`` (version 1) layer for layer: the same submodules and state-dict keys, so
    ``model.load_state_dict(timm.create_model("ghostnet_100").state_dict())`` works, and the other way. Eval mode
    folds every batch norm and runs each Ghost module as one fused op (the bottleneck's shortcut added inside its
    second one); the stem folds its batch norm into its convolution. Train mode is timm's sequence.

    Args:
        width: channel multiplier (timm's ``ghostnet_050``: 0.5, ``ghostnet_100``: 1.0, ``ghostnet_130``: 1.3).
        num_classes, in_chans, drop_rate: as timm's (dropout before the classifier).
    """

    def __init__(self, num_classes: int = 1000, width: float = 1.0, in_chans: int = 3, drop_rate: float = 0.2,
                 config=GHOSTNET_CONFIG, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        stem_chs = make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, 2, 1, bias=False, **factory)
        self.bn1 = nn.BatchNorm2d(stem_chs, **factory)
        self.act1 = nn.ReLU(inplace=True)
        prev_chs = stem_chs
        stages = []
        for stage in config:
            layers = []
            for k, exp_size, c, se_ratio, s in stage:
                out_chs = make_divisible(c * width, 4)
                mid_chs = make_divisible(exp_size * width, 4)
                layers.append(GhostBottleneck(prev_chs, mid_chs, out_chs, k, s, se_ratio=se_ratio, **factory))
                prev_chs = out_chs
            stages.append(nn.Sequential(*layers))
        out_chs = make_divisible(exp_size * width, 4)
        stages.append(nn.Sequential(_FoldedConvBnReLU(prev_chs, out_chs, **factory)))
        self.blocks = nn.Sequential(*stages)
        self.num_features = out_chs
        self.head_hidden_size = 1280
        self.conv_head = nn.Conv2d(out_chs, self.head_hidden_size, 1, 1, 0, bias=True, **factory)
        self.act2 = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten(1)
        self.classifier = (nn.Linear(self.head_hidden_size, num_classes, **factory) if num_classes > 0
                           else nn.Identity())

    def _fold(self):
        return _fold(self.conv_stem, self.bn1)

    def forward_features(self, x):
        if _runs_unfused(self.conv_stem, (self.bn1,)):
            x = self.act1(self.bn1(self.conv_stem(x)))
        else:
            x = folded_conv_activation(self, self.conv_stem, x, "relu")
        return self.blocks(x)

    def forward_head(self, x):
        # conv_head on the pooled (N, C, 1, 1) map as a matrix product: the same sums without the convolution's
        # dispatch, whose 1x1-map path is the slowest of the head at batch 1.
        head = self.conv_head
        x = self.act2(F.linear(x.mean((2, 3)), head.weight.flatten(1), head.bias))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def ghostnet(width: float = 1.0, *, num_classes: int = 1000, drop_rate: float = 0.2, **kwargs) -> GhostNet:
    """GhostNet of channel multiplier ``width`` (timm's ``ghostnet_100`` at 1.0), randomly initialised as timm's."""
    return GhostNet(num_classes=num_classes, width=width, drop_rate=drop_rate, **kwargs)


def ghostnet_050(**kwargs) -> GhostNet:
    return ghostnet(0.5, **kwargs)


def ghostnet_100(**kwargs) -> GhostNet:
    return ghostnet(1.0, **kwargs)


def ghostnet_130(**kwargs) -> GhostNet:
    return ghostnet(1.3, **kwargs)

