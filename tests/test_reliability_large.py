"""64-bit indexing: each op family on tensors whose byte offsets exceed 2^31 (and, with FUSEDOPS_HUGE=1, whose
element counts exceed 2^31), checked against PyTorch on the far end of the tensors, where 32-bit offsets would
have wrapped. Slow and memory-hungry (about 9 GiB; with FUSEDOPS_HUGE=1 more than 24 GiB: the first case was stopped
by the out-of-memory killer at 24 GB resident on a 24 GiB machine): run with FUSEDOPS_SLOW=1."""

import os

import pytest
import torch
import torch.nn.functional as F

import fusedops

from conftest import assert_close_scaled

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


def _last_rows_padded(hidden, rows):
    """The last `rows` output rows of a 3x3, padding-1, stride-1 depthwise stage from the last rows + 1 rows of its
    input `hidden`: the bottom zero row and the side columns of the padding, added here."""
    assert hidden.shape[2] == rows + 1
    return F.pad(hidden, (1, 1, 0, 1))


@pytest.mark.parametrize("what,dtype,elements", SIZES)
@pytest.mark.parametrize("layout,block", [("nchw", "expand"), ("channels_last", "expand"), ("channels_last", "se")])
def test_inverted_residual_far_end(what, dtype, elements, layout, block):
    # Stride 1, 2 channels in and out: the residual is added. "expand": 2 -> 4 -> 2 through per-thread band tiles.
    # "se": no expansion and a squeeze-excitation, whose path holds the image's depthwise map in one float tile
    # (as large as the input in elements; channels-last only, so no channels-last copy of the input joins it).
    # Its reduce weights are zero: the gate is a constant that the reference computes without pooling the whole
    # map (the kernel's pooled sums are still read).
    x = _image(elements, 2, dtype, layout)
    hidden = 4 if block == "expand" else 2
    ew, eb = (torch.randn(4, 2, 1, 1).to(dtype), torch.randn(4).to(dtype)) if block == "expand" else (None, None)
    dw, db = torch.randn(hidden, 1, 3, 3).to(dtype), torch.randn(hidden).to(dtype)
    pw, pb = torch.randn(2, hidden, 1, 1).to(dtype), torch.randn(2).to(dtype)
    se = None
    if block == "se":
        se = (torch.zeros(2, hidden, 1, 1).to(dtype), torch.randn(2).to(dtype),
              torch.randn(hidden, 2, 1, 1).to(dtype), torch.randn(hidden).to(dtype), "hardsigmoid")
    y = fusedops.inverted_residual(x, ew, eb, dw, db, pw, pb, activation="relu6", se=se)
    rows = 10
    tail = x[..., -(rows + 1):, :].double()
    h = F.relu6(F.conv2d(tail, ew.double(), eb.double())) if ew is not None else tail
    z = F.relu6(F.conv2d(_last_rows_padded(h, rows), dw.double(), db.double(), groups=hidden))
    if se is not None:
        squeezed = F.relu(se[1].double())  # zero reduce weights: the pooled map drops out
        z = z * F.hardsigmoid(se[2].double().flatten(1) @ squeezed + se[3].double())[None, :, None, None]
    expected = F.conv2d(z, pw.double(), pb.double()) + tail[..., 1:, :]
    assert_close_scaled(y[..., -rows:, :], expected, rtol=2e-2, atol=2e-2, name="inverted_residual")


@pytest.mark.parametrize("what,dtype,elements", SIZES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_ghost_module_far_end(what, dtype, elements, layout):
    # 3 input channels, 2 primary and 1 of the 2 cheap ones kept: 3 output channels, so the input is also the
    # residual (no third tensor of this size).
    x = _image(elements, 3, dtype, layout)
    pw, pb = torch.randn(2, 3, 1, 1).to(dtype), torch.randn(2).to(dtype)
    cw, cb = torch.randn(2, 1, 3, 3).to(dtype), torch.randn(2).to(dtype)
    y = fusedops.ghost_module(x, pw, pb, cw, cb, 3, activation="relu", residual=x)
    rows = 10
    tail = x[..., -(rows + 1):, :].double()
    x1 = F.relu(F.conv2d(tail, pw.double(), pb.double()))
    x2 = F.relu(F.conv2d(_last_rows_padded(x1, rows), cw.double(), cb.double(), groups=2))
    expected = torch.cat([x1[..., 1:, :], x2], 1)[:, :3] + tail[..., 1:, :]
    assert_close_scaled(y[..., -rows:, :], expected, rtol=2e-2, atol=2e-2, name="ghost_module")



@pytest.mark.parametrize("what,dtype,elements", SIZES)
@pytest.mark.parametrize("layout,stride", [("nchw", 1), ("channels_last", 1), ("channels_last", 2)])
def test_shufflenet_v2_unit_far_end(what, dtype, elements, layout, stride):
    # 4 input channels. Stride 1: the input's first half copied into the even output channels, the branch
    # (2 -> 2 -> 2 channels) on its second half. Stride 2: the down-sampling unit, a shortcut and a branch of 2
    # channels each on the whole input (an output a quarter of the input's size).
    x = _image(elements, 4, dtype, layout)
    branch_in = 2 if stride == 1 else 4
    ew, eb = torch.randn(2, branch_in, 1, 1).to(dtype), torch.randn(2).to(dtype)
    dw, db = torch.randn(2, 1, 3, 3).to(dtype), torch.randn(2).to(dtype)
    pw, pb = torch.randn(2, 2, 1, 1).to(dtype), torch.randn(2).to(dtype)
    shortcut = None
    if stride != 1:
        shortcut = (torch.randn(4, 1, 3, 3).to(dtype), torch.randn(4).to(dtype), torch.randn(2, 4, 1, 1).to(dtype),
                    torch.randn(2).to(dtype))
    y = fusedops.shufflenet_v2_unit(x, ew, eb, dw, db, pw, pb, shortcut=shortcut, stride=stride)
    rows, h = 10, x.shape[2]
    oh = (h - 1) // stride + 1
    # The input rows the last `rows` output rows read, and the zero padding's side columns and bottom row (where
    # the last output row reads it).
    tail = x[..., stride * (oh - rows) - 1:, :].double()
    pad = (1, 1, 0, stride * (oh - 1) + 2 - h)

    def depthwise(t, w, b):
        return F.conv2d(F.pad(t, pad), w.double(), b.double(), stride, groups=t.shape[1])

    def pointwise(t, w, b):
        return F.relu(F.conv2d(t, w.double(), b.double()))

    if shortcut is None:
        first, tail = tail[:, :2, 1:], tail[:, 2:]
    else:
        first = pointwise(depthwise(tail, *shortcut[:2]), *shortcut[2:])
    second = pointwise(depthwise(pointwise(tail, ew, eb), dw, db), pw, pb)
    expected = torch.stack([first, second], 2).flatten(1, 2)
    assert_close_scaled(y[..., -rows:, :], expected, rtol=2e-2, atol=2e-2, name="shufflenet_v2_unit")
