from torch import nn

from ..ops.channel_shuffle import channel_shuffle


class ChannelShuffle(nn.Module):
    r"""Drop-in for ``torch.nn.ChannelShuffle(groups)`` running fusedops kernels (4-D inputs)."""

    def __init__(self, groups: int):
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
            raise ValueError(f"fusedops: ChannelShuffle groups must be a positive int, got {groups!r}")
        self.groups = groups

    def forward(self, input):
        return channel_shuffle(input, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"
