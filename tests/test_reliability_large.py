"""64-bit indexing: each op family on tensors whose byte offsets exceed 2^31 (and, with FUSEDOPS_HUGE=1, whose
element counts exceed 2^31), checked against PyTorch on the far end of the tensors, where 32-bit offsets would
have wrapped. Slow and memory-hungry (about 9 GiB; 17 GiB with FUSEDOPS_HUGE=1): run with FUSEDOPS_SLOW=1."""

import os

import pytest
import torch
import torch.nn.functional as F

import fusedops

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("FUSEDOPS_SLOW") != "1", reason="slow: set FUSEDOPS_SLOW=1")]

SIZES = [("bytes", torch.float32, 2**29 + 2**20)]
if os.environ.get("FUSEDOPS_HUGE") == "1":
    SIZES.append(("elements", torch.bfloat16, 2**31 + 2**22))


def _image(elements, channels, dtype, layout):
    """(1, channels, H, W) with at least `elements` elements; values vary along every dimension."""
    w = 8192
    h = -(-elements // (channels * w))
    x = torch.empty((1, channels, h, w), dtype=dtype,
                    memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    # Cheap to fill, different everywhere: a row/column pattern per channel.
    rows = torch.linspace(-1, 1, h, dtype=torch.float32).to(dtype)
    cols = torch.linspace(-2, 2, w, dtype=torch.float32).to(dtype)
    for c in range(channels):
        x[0, c].copy_(rows[:, None] * (c + 1) + cols[None, :])
    return x


@pytest.mark.parametrize("what,dtype,elements", SIZES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_depthwise_and_dwpw_far_end(what, dtype, elements, layout):
    x = _image(elements, 2, dtype, layout)
    w = torch.randn(2, 1, 3, 3).to(dtype)
    b = torch.randn(2).to(dtype)
    tail = x[..., -12:, :].double()
    y = fusedops.depthwise_conv2d(x, w, b, 1, 0)
    expected = F.conv2d(tail, w.double(), b.double(), groups=2)
    torch.testing.assert_close(y[..., -10:, :].double(), expected, rtol=2e-2, atol=2e-2)
    del y
    pw_w, pw_b = torch.randn(2, 2, 1, 1).to(dtype), torch.randn(2).to(dtype)
    y = fusedops.dwpw_conv2d(x, w, b, pw_w, pw_b, 1, 0, 1, "relu", None)
    expected = F.conv2d(F.relu(expected), pw_w.double(), pw_b.double())
    torch.testing.assert_close(y[..., -10:, :].double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("what,dtype,elements", SIZES)
def test_depthwise_backward_far_end(what, dtype, elements):
    x = _image(elements, 2, dtype, "channels_last").requires_grad_()
    w = torch.randn(2, 1, 3, 3).to(dtype).requires_grad_()
    y = fusedops.depthwise_conv2d(x, w, None, 1, 1)
    go = torch.zeros_like(y)
    go[..., -3:, :] = 1  # only the last rows: the gradients there must reach the far end of grad_input
    gx, gw = torch.autograd.grad(y, (x, w), go)
    del y, go
    xt = x.detach()[..., -5:, :].double().requires_grad_()
    wt = w.detach().double().requires_grad_()
    yt = F.conv2d(xt, wt, None, 1, 1, groups=2)
    got = torch.zeros_like(yt)
    got[..., -3:, :] = 1
    gxt, gwt = torch.autograd.grad(yt, (xt, wt), got)
    torch.testing.assert_close(gx[..., -4:, :].double(), gxt[..., -4:, :], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw.double(), gwt, rtol=2e-2, atol=2e-1)


@pytest.mark.parametrize("what,dtype,elements", SIZES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_channel_shuffle_far_end(what, dtype, elements, layout):
    x = _image(elements, 4, dtype, layout)
    y = fusedops.channel_shuffle(x, 2)
    assert torch.equal(y[..., -3:, :], F.channel_shuffle(x[..., -3:, :].contiguous(), 2))
