import torch
from torch import nn
import torch.nn.functional as F

from ..ops.depthwise_conv2d import depthwise_conv2d


class DepthwiseConv2d(nn.Conv2d):
    r"""Drop-in for ``nn.Conv2d(C, C * m, kernel_size, groups=C, ...)`` running fusedops kernels.

    Same constructor arguments, parameters (``weight`` of shape ``(C * m, 1, kH, kW)``, ``bias``) and
    state-dict keys as ``nn.Conv2d``, so weights load either way; it is an ``nn.Conv2d`` subclass.
    ``groups`` may be omitted; if given it must equal ``in_channels``. ``padding_mode`` zeros, reflect,
    replicate and circular behave as in ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=None,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ):
        if groups is None:
            groups = in_channels
        if groups != in_channels:
            raise ValueError(
                f"fusedops: DepthwiseConv2d needs groups == in_channels ({in_channels}), got groups={groups}; "
                "use torch.nn.Conv2d for other grouped convolutions"
            )
        if in_channels <= 0 or out_channels % in_channels != 0:
            raise ValueError(
                f"fusedops: DepthwiseConv2d out_channels ({out_channels}) must be a multiple of in_channels "
                f"({in_channels})"
            )
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device=device, dtype=dtype,
        )

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "DepthwiseConv2d":
        """A DepthwiseConv2d sharing `conv`'s configuration and holding copies of its parameters."""
        if not isinstance(conv, nn.Conv2d) or conv.groups != conv.in_channels:
            raise ValueError("fusedops: DepthwiseConv2d.from_conv needs an nn.Conv2d with groups == in_channels")
        module = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            module.weight.copy_(conv.weight)
            if conv.bias is not None:
                module.bias.copy_(conv.bias)
        module.train(conv.training)
        return module

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return depthwise_conv2d(input, weight, bias, self.stride, 0, self.dilation)
        return depthwise_conv2d(input, weight, bias, self.stride, self.padding, self.dilation)
