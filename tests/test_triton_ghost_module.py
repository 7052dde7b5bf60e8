"""Triton path of ghost_module (fusedops/ops/_triton/ghost_module.py): the forward as one fused kernel
(``_ghost_fwd_kernel``), the backward with the depthwise Triton kernels.

On CPU tensors the kernels run through the Triton interpreter (TRITON_INTERPRET=1 set before Python starts);
on CUDA tensors when a GPU is present. Shapes are small because the interpreter is slow.
"""

import pytest
import torch
import triton

import fusedops

from conftest import (TRITON_DEVICE, TRITON_TEST, assert_close_scaled, check_ghost_module_parity,
                      ghost_module_reference, make_input, pair, tolerance)

pytestmark = TRITON_TEST

ACTS = (None, "relu", "relu6", "hardswish", "silu")


def _kernels():
    from fusedops.ops._triton import ghost_module

    return ghost_module


@pytest.mark.parametrize("case", (
    dict(shape=(2, 4, 6, 5), out_channels=8, layout="nchw"),
    dict(shape=(1, 6, 7, 6), out_channels=11, ratio=3, layout="channels_last", stride=2, activation="hardswish"),
    dict(shape=(1, 5, 6, 6), out_channels=7, ratio=4, dw_size=5, layout="noncontig", activation=None,
         residual=True),
    dict(shape=(2, 4, 5, 5), out_channels=6, layout="channels_last", biases=False, activation="silu",
         residual=True),
))
def test_triton_parity(case):
    case = dict(case)
    shape, out_channels = case.pop("shape"), case.pop("out_channels")
    check_ghost_module_parity(shape, out_channels, backend="triton", device=TRITON_DEVICE, **case)


# ---------------------------------------------------------------------------------------------------
# The fused forward's paths, against the float64 reference (forward only: the backward is the one above)


def _tiles(shape, stride=1, dw_size=3):
    """(row tiles, column tiles) of the forward kernel over the output map of an input of `shape`."""
    s, (kh, kw) = pair(stride), pair(dw_size)
    out_h, out_w = (shape[2] - 1) // s[0] + 1, (shape[3] - 1) // s[1] + 1
    tile_h, tile_w, _ = _kernels()._tile(out_h, out_w, kh, kw)
    return triton.cdiv(out_h, tile_h), triton.cdiv(out_w, tile_w)


# Maps of several tiles in both directions: every tile's halo crosses tile borders above, below, left and right.
MULTI_TILE = (
    dict(shape=(1, 6, 19, 37), out_channels=12, layout="nchw"),
    dict(shape=(1, 6, 37, 19), out_channels=12, dw_size=5, layout="channels_last", residual=True),
    dict(shape=(1, 6, 21, 23), out_channels=12, dw_size=(3, 5), layout="noncontig"),
    dict(shape=(1, 6, 23, 21), out_channels=12, dw_size=(5, 3), layout="channels_last", biases=False),
)


@pytest.mark.parametrize("case", MULTI_TILE + (
    # Maps smaller than one tile, of odd sizes; a 1x1 map (every tap but the centre in the padding); a kernel
    # taller than the map.
    dict(shape=(2, 5, 3, 5), out_channels=8),
    dict(shape=(2, 3, 1, 1), out_channels=4, layout="nchw", residual=True),
    dict(shape=(1, 4, 2, 7), out_channels=6, dw_size=5, layout="noncontig"),
    # A 1x1 cheap kernel: no halo.
    dict(shape=(2, 5, 9, 13), out_channels=9, dw_size=1, layout="nchw"),
    # Strides: the primary half reads every other row and/or column of the input.
    dict(shape=(2, 5, 15, 13), out_channels=10, stride=2),
    dict(shape=(1, 5, 15, 13), out_channels=10, stride=(2, 1), layout="nchw", residual=True),
    dict(shape=(1, 5, 13, 17), out_channels=10, stride=(1, 2), layout="noncontig"),
    # Depth multipliers 2 and 3, with out_channels cutting the cheap half: 13 of 5 + 10 (ratio 3), 13 of 4 + 12
    # (ratio 4), 5 of 2 + 6 (ratio 4: only the first primary channel feeds kept cheap channels).
    dict(shape=(1, 6, 9, 11), out_channels=13, ratio=3, layout="channels_last"),
    dict(shape=(1, 6, 9, 11), out_channels=13, ratio=4, layout="nchw", residual=True),
    dict(shape=(1, 6, 9, 11), out_channels=5, ratio=4, layout="noncontig"),
    # Many channels: the GEMM takes the 40 and 37 input channels in several chunks, and the 40 and 25 primary
    # channels are not a multiple of the channel block (several blocks for 40).
    dict(shape=(1, 40, 9, 10), out_channels=80, layout="channels_last"),
    dict(shape=(1, 37, 6, 7), out_channels=50, layout="nchw", residual=True),
    dict(shape=(1, 40, 10, 9), out_channels=75, ratio=3, layout="noncontig", biases=False),
))
def test_triton_forward_paths(case):
    case = dict(case)
    shape, out_channels = case.pop("shape"), case.pop("out_channels")
    check_ghost_module_parity(shape, out_channels, backend="triton", device=TRITON_DEVICE, backward=False, **case)


@pytest.mark.parametrize("case", MULTI_TILE)
def test_multi_tile_cases_span_several_tiles(case):
    tiles_h, tiles_w = _tiles(case["shape"], case.get("stride", 1), case.get("dw_size", 3))
    assert tiles_h > 1 and tiles_w > 1


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("residual", (False, True))
def test_triton_forward_activations(activation, residual):
    check_ghost_module_parity((1, 7, 19, 37), 14, dw_size=3, activation=activation, residual=residual,
                              layout="channels_last", backend="triton", device=TRITON_DEVICE, backward=False)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("layout", ("channels_last", "nchw", "noncontig"))
def test_triton_forward_dtypes(dtype, layout):
    # 37 input channels (several GEMM chunks), 19 primary channels and 18 of their 19 cheap channels, a map of
    # several tiles in both directions, a residual.
    shape = (1, 37, 19, 37)
    tiles_h, tiles_w = _tiles(shape)
    assert tiles_h > 1 and tiles_w > 1
    check_ghost_module_parity(shape, 37, activation="hardswish", residual=True, layout=layout, dtype=dtype,
                              backend="triton", device=TRITON_DEVICE, backward=False)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float16))
def test_triton_parity_dtypes_with_backward(dtype):
    check_ghost_module_parity((1, 6, 7, 9), 10, ratio=3, stride=2, activation="relu6", residual=True,
                              layout="channels_last", dtype=dtype, backend="triton", device=TRITON_DEVICE)


def _explicit(c, init, cheap, dw_size, out_channels, shape, layout, dtype=torch.float32, seed=0):
    """(input, primary_weight, primary_bias, cheap_weight, cheap_bias) with init primary and `cheap` cheap channels
    (weights not in timm's channel ratio: out_channels picks what is kept)."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = pair(dw_size)

    def randn(*size, scale=1.0):
        return (scale * torch.randn(size, dtype=torch.float64, generator=g)).to(dtype=dtype, device=TRITON_DEVICE)

    x = make_input(shape, layout, dtype=dtype, device=TRITON_DEVICE, generator=g)
    return (x, randn(init, c, 1, 1, scale=c ** -0.5), randn(init, scale=0.5),
            randn(cheap, 1, kh, kw, scale=(kh * kw) ** -0.5), randn(cheap, scale=0.5))


def _check_against_reference(y, args, out_channels, stride=1, activation="relu", residual=None):
    ref = ghost_module_reference(*(t.detach().cpu().double() for t in args), out_channels, stride, activation,
                                 None if residual is None else residual.cpu().double())
    assert_close_scaled(y, ref, **tolerance(y.dtype), name="output")


@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_triton_out_channels_equal_to_init(layout):
    # No cheap channel kept: the kernel writes the primary half only (and allocates no scratch).
    args = _explicit(6, 20, 20, 3, 20, (2, 6, 9, 7), layout)
    with fusedops.use_backend("triton"):
        y = fusedops.ghost_module(*args, 20)
    assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else
                           torch.contiguous_format)
    _check_against_reference(y, args, 20)


def test_triton_channel_blocks_without_cheap_channels():
    # 40 primary channels in several blocks; the 10 cheap channels kept read the first 10 only, so the other
    # blocks compute none.
    args = _explicit(9, 40, 40, 3, 50, (1, 9, 11, 13), "channels_last")
    with fusedops.use_backend("triton"):
        y = fusedops.ghost_module(*args, 50, activation="silu")
    _check_against_reference(y, args, 50, activation="silu")


def test_triton_forward_int64_and_several_programs(monkeypatch):
    """The int64 offsets (taken where one image's offsets may pass 2^31) and several programs sharing the work
    items (one under the interpreter otherwise), on problems small enough for the interpreter."""
    kernels = _kernels()
    monkeypatch.setattr(kernels, "_needs_int64", lambda *tensors: True)
    monkeypatch.setattr(kernels, "_program_target", lambda device: 3)
    for layout in ("nchw", "channels_last", "noncontig"):
        check_ghost_module_parity((2, 20, 13, 19), 26, ratio=3, stride=(2, 1), activation="relu", residual=True,
                                  layout=layout, backend="triton", device=TRITON_DEVICE, backward=False)
    # More programs than work items.
    monkeypatch.setattr(kernels, "_program_target", lambda device: 1000)
    check_ghost_module_parity((1, 5, 6, 7), 8, layout="nchw", backend="triton", device=TRITON_DEVICE,
                              backward=False)


def test_triton_forward_is_one_fused_kernel(monkeypatch):
    """The forward is one launch of the fused kernel: no PyTorch convolution for the primary half and no
    depthwise kernel for the cheap half (the composed forward this kernel replaced)."""
    kernels = _kernels()
    args = _explicit(7, 6, 12, 3, 11, (2, 7, 9, 10), "channels_last")
    residual = make_input((2, 11, 9, 10), "channels_last", device=TRITON_DEVICE)
    launches = []
    kernel_type = type(kernels._ghost_fwd_kernel)
    run = kernel_type.run

    def counting_run(self, *a, **kw):
        launches.append(self.fn.__name__)
        return run(self, *a, **kw)

    def no_convolution(*a, **kw):
        raise AssertionError("the Triton ghost_module forward ran a PyTorch convolution")

    monkeypatch.setattr(kernel_type, "run", counting_run)
    monkeypatch.setattr(torch.nn.functional, "conv2d", no_convolution)
    with fusedops.use_backend("triton"), torch.no_grad():
        y = fusedops.ghost_module(*args, 11, activation="hardswish", residual=residual)
    monkeypatch.undo()
    assert launches == ["_ghost_fwd_kernel"]
    _check_against_reference(y, args, 11, activation="hardswish", residual=residual)


@pytest.mark.parametrize("dtype, step", ((torch.float16, 1e-5), (torch.bfloat16, 1e-4)))
def test_triton_half_rounds_the_primary_half_before_the_depthwise(dtype, step):
    """The cheap half reads x1 as the output stores it, rounded to the output dtype, as the unfused composition
    does. Here x1 = 1 + step * column before the rounding and 1 after it, so the cheap filter (0, 1, -1), x1 at
    the column minus x1 at the next one, gives exactly 0 (1 at the last column, whose next one is padding); from
    the unrounded x1 it would give -step."""
    w = 9
    x = torch.zeros(1, 2, 3, w, dtype=torch.float64)
    x[:, 0] = 1
    x[:, 1] = step * torch.arange(w, dtype=torch.float64)
    x = x.to(dtype=dtype, device=TRITON_DEVICE)
    pw = torch.ones(1, 2, 1, 1, dtype=dtype, device=TRITON_DEVICE)
    cw = torch.tensor([0.0, 1.0, -1.0], dtype=dtype, device=TRITON_DEVICE).view(1, 1, 1, 3)
    x1 = (x[:, :1].float() + x[:, 1:].float()).cpu()
    assert (x1 != 1).sum() == 3 * (w - 1) and torch.equal(x1.to(dtype).float(), torch.ones_like(x1))
    with fusedops.use_backend("triton"):
        y = fusedops.ghost_module(x, pw, None, cw, None, 2, activation=None)
    expected = torch.zeros(1, 2, 3, w)
    expected[:, 0] = 1
    expected[:, 1, :, -1] = 1
    assert y.dtype == dtype
    assert torch.equal(y.cpu().float(), expected)
