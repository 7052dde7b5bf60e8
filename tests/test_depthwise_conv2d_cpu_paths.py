"""fusedops.depthwise_conv2d on CPU: shapes that steer the native kernels down particular paths.

Each test names the path it reaches (NCHW column blocks, masked plane sweeps, shifted-row sweeps,
channels-last tiles, 7-wide blocks, row pairs, streaming calls, the 3x3 stride-2 input gradient, the
table cache) and checks forward and gradients against float64 ``F.conv2d(groups=C)`` as
test_depthwise_conv2d_parity.py does.
"""

import pytest
import torch

import fusedops

from conftest import (
    LAYOUTS,
    check_depthwise_parity,
    check_depthwise_requested_grads,
    depthwise_reference,
    pair,
    requires_ops,
)

pytestmark = requires_ops


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (7, 2, 3), (3, 3, 0), (2, 1, 0)])
def test_parity_wide_rows(layout, kernel, stride, padding):
    """Rows wide enough for the NCHW kernel's 4-vector column blocks plus a partial vector, and for
    several NHWC register blocks per row."""
    check_depthwise_parity((1, 3, 5, 157), kernel, stride=stride, padding=padding, layout=layout)
    check_depthwise_parity((2, 5, 6, 70), kernel, stride=stride, padding=padding, multiplier=2, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_parity_tiny_maps(layout):
    """Maps smaller than the kernel (all border, no interior), 1x1 maps and single channels."""
    check_depthwise_parity((2, 20, 2, 3), 5, padding=2, layout=layout)
    check_depthwise_parity((2, 20, 1, 1), 3, padding=1, layout=layout)
    check_depthwise_parity((2, 20, 1, 1), 1, layout=layout)
    check_depthwise_parity((3, 1, 7, 6), 3, padding=1, layout=layout)
    check_depthwise_parity((3, 1, 7, 6), 3, padding=1, multiplier=3, layout=layout)
    check_depthwise_parity((1, 17, 4, 4), 3, stride=2, padding=3, dilation=3, layout=layout)  # padding > kernel reach


def test_parity_masked_plane_geometries():
    """NCHW stride-1 maps whose output keeps the input's width run as masked flat sweeps of the plane: output
    heights other than the input's, dilation, planes of exactly 16 pixels, smaller than one vector, and
    wider than 4-vector blocks."""
    check_depthwise_parity((2, 3, 9, 11), 3, padding=(0, 1), layout="nchw")  # out_h = 7, out_w = 11
    check_depthwise_parity((2, 3, 9, 11), (5, 3), padding=(3, 1), layout="nchw")  # out_h = 11 > in_h - 2
    check_depthwise_parity((1, 4, 12, 13), 3, padding=2, dilation=2, layout="nchw")
    check_depthwise_parity((1, 4, 4, 4), 3, padding=1, layout="nchw")
    check_depthwise_parity((1, 4, 3, 3), 3, padding=1, bias=True, layout="nchw")
    check_depthwise_parity((1, 2, 40, 80), 7, padding=3, multiplier=2, layout="nchw")


@pytest.mark.parametrize("width", [3, 5, 7, 14, 15, 16, 17, 31])
def test_parity_nchw_shifted_rows(width):
    """NCHW 3x3 stride-1 planes whose output keeps the input's width load each kernel row's centre tap once
    and shift it by a lane for the side taps: row ends at many lane positions (widths 3-31, around one and
    two vectors),
    planes of one vector (which keep the 9-load sweep) and of several, whole 4-vector blocks and the
    vectors after them, padding rows above and below (other output heights, row dilation), and the first
    and last vectors of each plane, whose loads must stay inside it; the stride-1 input gradient takes
    the same path."""
    for height, padding, dilation in ((width, 1, 1), (3, (0, 1), 1), (2, 1, 1), (9, (2, 1), (2, 1)),
                                      (11, (3, 1), (3, 1)), (6, (0, 1), (2, 1))):
        check_depthwise_parity((2, 3, height, width), 3, padding=padding, dilation=dilation, layout="nchw")


@pytest.mark.parametrize("kernel,stride,padding", [(5, 1, 2), (7, 1, 3), (5, 2, 2), (7, 2, 0), (3, 2, 1), (3, 2, 0)])
def test_parity_nchw_tiles(kernel, stride, padding):
    """NCHW float 5x5/7x7 and 3x3 stride-2 convolutions run through channels-last tiles of 16 channels: full
    groups and a partial last group (whose tile lanes past the channels must not leak), maps taller than
    wide and the reverse, several images; the stride-1 input gradient takes the same path."""
    for shape in ((2, 20, 13, 17), (1, 35, 19, 14), (3, 16, 14, 14), (1, 5, 28, 15)):
        check_depthwise_parity(shape, kernel, stride=stride, padding=padding, layout="nchw", bias=shape[1] != 16)


@pytest.mark.parametrize("kernel", [5, 7])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_parity_seven_wide_blocks(kernel, layout):
    """Rows 7 or 14 outputs wide of 5x5 and 7x7 kernels run as blocks of 7 outputs: whole-row border
    blocks (the kernel wider than the row's interior) and interior ones, stride 1 and 2, padded and
    unpadded, full and partial channel vectors, and a 28-wide row that keeps blocks of 8; NCHW through its
    channels-last tiles; the stride-1 input gradient takes the same rows."""
    p = kernel // 2
    for width, stride, padding in ((14, 1, p), (7, 1, p), (14, 2, p), (kernel + 6, 1, 0), (kernel + 13, 1, 0),
                                   (kernel + 12, 2, 0), (28, 1, (p, 0))):
        out_w = (width + 2 * pair(padding)[1] - kernel) // stride + 1
        assert out_w in (7, 14, 28 - kernel + 1)
        for channels in (20, 32):
            check_depthwise_parity((2, channels, 9, width), kernel, stride=stride, padding=padding, layout=layout,
                                   bias=channels == 20)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", [(1, 1), (0, 0), (2, 2), (0, 1), (1, 0), (2, 1)])
def test_parity_channels_last_row_pairs(padding, stride):
    """Channels-last 3x3 rows (stride 1 or 2) run in pairs where both rows' kernel rows lie inside the input,
    the pairs starting at the first such row (an odd or even row, by the top padding), the rows around
    them one at a time: every height from one pair to several, odd and even, full and partial channel
    vectors, widths across one register block or several (and a last block of one output at stride 2); the
    stride-1 input gradient on its own takes the same rows."""
    for height in range(3 - 2 * min(padding[0], 1), 10 + 4 * (stride - 1)):  # F.conv2d needs the kernel to fit
        check_depthwise_parity((2, 20, height, 11), 3, stride=stride, padding=padding, layout="channels_last")
    check_depthwise_parity((1, 48, 7, 21), 3, stride=stride, padding=padding, layout="channels_last", bias=False)
    check_depthwise_parity((1, 48, 12, 26), 3, stride=stride, padding=padding, layout="channels_last")
    if stride == 2:
        return
    check_depthwise_requested_grads((2, 20, 9, 13), "channels_last",
                                    padding=padding[0] if padding[0] == padding[1] else 1,
                                    wanted_sets=[(True, False, False)])


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (3, 1, 0)])
def test_parity_streaming_calls(kernel, stride, padding):
    """Channels-last calls that move more than the kernels' streaming thresholds (12x the L2 a forward, 8x a
    backward, at least 16 and 12 MB) prefetch ahead of their loads and stores, and the fused stride-1 backward
    also prefetches the input rows of its weight gradient: results unchanged, with a partial channel vector
    (72 channels) and odd widths. 144 channels (pixels of whole cache lines) also store past the caches
    (streaming_stores_apply), which 72 (288-byte pixels that straddle lines) do not."""
    shape = (2, 72, 124, 121) if stride == 1 else (3, 72, 140, 141)
    for size in (shape, (1 if stride == 1 else 2, 144, *shape[2:])):
        x_bytes = 4 * size[0] * size[1] * size[2] * size[3]
        assert x_bytes * (1 + 1 / stride**2) > 16 * 2**20  # the forward's input + output
        check_depthwise_parity(size, kernel, stride=stride, padding=padding, layout="channels_last")
    if kernel == 3 and padding == 1:
        # The unfused input-gradient and weight-gradient kernels, each on its own at the same size.
        check_depthwise_requested_grads(shape, "channels_last", stride=stride,
                                        wanted_sets=[(True, False, False), (False, True, True)])


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 0)])
def test_parity_whole_line_blocks(stride, padding):
    """Channel counts whose pixels are a multiple of 2 KiB apart (512, 1024) run register blocks of whole cache lines
    on AVX2, their weight gradients whole lines of one kernel row and their 3x3 stride-2 input gradients whole lines
    of each row: row pairs, single rows, border and interior blocks, widths that leave blocks of one output; forward
    and every gradient (the fused stride-1 backward's input gradient runs the same blocks), with and without bias.
    Each output and gradient accumulates in the same order as with one vector at a time, so the results have the
    bits of the same channels computed 256 at a time (1 KiB pixels: one vector)."""
    for shape in ((1, 512, 9, 11), (2, 512, 7, 7), (1, 1024, 6, 5)):
        check_depthwise_parity(shape, 3, stride=stride, padding=padding, layout="channels_last")
    check_depthwise_parity((1, 512, 8, 13), 3, stride=stride, padding=padding, layout="channels_last", bias=False)

    def output_and_grads(x, weight, bias, grad):
        x, weight, bias = (t.detach().requires_grad_() for t in (x, weight, bias))
        out = fusedops.depthwise_conv2d(x, weight, bias, stride=stride, padding=padding)
        return (out, *torch.autograd.grad(out, (x, weight, bias), grad))

    x = torch.randn(2, 512, 10, 9).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(512, 1, 3, 3), torch.randn(512)
    grad = torch.randn(2, 512, *fusedops.depthwise_conv2d(x, weight, bias, stride=stride, padding=padding).shape[2:])
    whole = output_and_grads(x, weight, bias, grad.contiguous(memory_format=torch.channels_last))
    for half in (slice(0, 256), slice(256, 512)):
        part = output_and_grads(x[:, half].contiguous(memory_format=torch.channels_last), weight[half], bias[half],
                                grad[:, half].contiguous(memory_format=torch.channels_last))
        for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), whole, part):
            assert torch.equal(a[:, half] if a.dim() == 4 and name != "weight grad" else a[half], b), name


@pytest.mark.parametrize("padding", (0, 1, 2))
def test_parity_3x3_stride2_input_gradient(padding):
    """Channels-last 3x3 stride-2 input gradients run a kernel of their own: rows and columns that no
    output reads (their gradient is zero), both column parities first, partial channel vectors."""
    for shape in ((2, 20, 6, 7), (1, 35, 9, 8), (1, 16, 3, 4)):
        # Garbage in freed memory, so an input-gradient row that is never written shows up.
        torch.full((4096,), float("nan")).add_(1)
        check_depthwise_parity(shape, 3, stride=2, padding=padding, layout="channels_last")


def test_masked_plane_table_cache_eviction():
    """More stride-1 geometries than the per-thread table cache holds, then the first ones again."""
    sizes = [(h, w) for h in (5, 6, 7, 8, 9) for w in (6, 7, 8, 9)]
    for h, w in sizes + sizes[:3]:
        x = torch.randn(1, 2, h, w)
        weight = torch.randn(2, 1, 3, 3)
        torch.testing.assert_close(fusedops.depthwise_conv2d(x, weight, padding=1),
                                   depthwise_reference(x, weight, None, 1, 1, 1),
                                   rtol=1e-5, atol=1e-5)


def test_per_call_layouts_follow_the_weights():
    """Each call lays out its own taps (on every worker) and bias: a write that bumps no version counter (through
    .data), other weights of the same and of another shape, another dtype of the same byte count, and the input
    gradient's rotated taps in between are each seen on the next call, on 1 and 2 threads."""
    def check(x, weight, bias=None):
        ours = fusedops.depthwise_conv2d(x, weight, bias, padding=1)
        expected = depthwise_reference(x.double(), weight.double(), None if bias is None else bias.double(), 1, 1, 1)
        torch.testing.assert_close(ours.double(), expected, rtol=1e-2 if x.dtype == torch.bfloat16 else 1e-5,
                                   atol=1e-2 if x.dtype == torch.bfloat16 else 1e-5)

    for threads in (1, 2):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            _check_layout_changes(check)
        finally:
            torch.set_num_threads(previous)


def _check_layout_changes(check):
    x = torch.randn(1, 32, 7, 7).to(memory_format=torch.channels_last)
    weight, bias = torch.randn(32, 1, 3, 3), torch.randn(32)
    check(x, weight, bias)
    check(x, weight, bias)
    weight.data.copy_(torch.randn(32, 1, 3, 3))  # no version bump
    check(x, weight, bias)
    bias.data.mul_(-1)
    check(x, weight, bias)
    check(x, torch.randn(32, 1, 3, 3), bias)  # same shape, other values
    check(torch.randn(1, 16, 5, 5).to(memory_format=torch.channels_last), torch.randn(16, 1, 3, 3))
    # bfloat16 weights of 64 channels: the same bytes as the float32 32-channel ones.
    check(torch.randn(1, 64, 7, 7, dtype=torch.bfloat16).to(memory_format=torch.channels_last),
          weight.to(torch.bfloat16).repeat(2, 1, 1, 1))
    x.requires_grad_(True)
    fusedops.depthwise_conv2d(x, weight, bias, padding=1).sum().backward()  # the rotated taps of the gradient
    check(x.detach(), weight, bias)
