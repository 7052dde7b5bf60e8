"""Triton path of ghost_module (fusedops/ops/_triton/ghost_module.py): the forward as one fused kernel
(``_ghost_fwd_kernel``), the backward with the depthwise Triton kernels; GhostNet's bottleneck without
squeeze-excitation (ghost_bottleneck) as two launches of that kernel, the second computing the depthwise stage.

On CPU tensors the kernels run through the Triton interpreter (TRITON_INTERPRET=1 set before Python starts);
on CUDA tensors when a GPU is present. Shapes are small because the interpreter is slow.
"""

import importlib

import pytest
import torch
import triton

import fusedops

from conftest import (TRITON_DEVICE, TRITON_TEST, assert_close_scaled, bottleneck_wrapper, check_ghost_bottleneck,
                      check_ghost_module_parity, dw_stage, ghost_bottleneck_case, ghost_bottleneck_reference,
                      ghost_module_reference, make_input, pair, randomize_batch_norms, tolerance)

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


# ---------------------------------------------------------------------------------------------------
# _ghost_bottleneck's Triton path (ghost_bottleneck_forward): the first module's kernel, then the second module's
# with the depthwise stage between them computed inside it (DW_INPUT), which the Python ghost_bottleneck calls on the
# Triton backend where no gradient is wanted.


def _record_launches(monkeypatch):
    """The names of the Triton kernels launched from now on (every kernel's launch goes through the type of
    _ghost_fwd_kernel)."""
    launches = []
    kernel_type = type(_kernels()._ghost_fwd_kernel)
    run = kernel_type.run

    def counting_run(self, *a, **kw):
        launches.append(self.fn.__name__)
        return run(self, *a, **kw)

    monkeypatch.setattr(kernel_type, "run", counting_run)
    return launches


def _refuse_composed_ops(monkeypatch):
    """PyTorch's convolution and the ops ghost_bottleneck composes elsewhere raise."""
    def refused(*a, **kw):
        raise AssertionError("the Triton bottleneck path ran a convolution or a separate op")

    monkeypatch.setattr(torch.nn.functional, "conv2d", refused)
    # (fusedops.ops.<op> is the op's function: the package exports it under its module's name.)
    monkeypatch.setattr(importlib.import_module("fusedops.ops.depthwise_conv2d"), "depthwise_conv2d", refused)
    monkeypatch.setattr(importlib.import_module("fusedops.ops.ghost_module"), "ghost_module", refused)


@pytest.fixture
def fused_bottleneck(monkeypatch):
    """bottleneck_wrapper("triton") that checks that each call takes the Triton bottleneck path: two launches of
    the Ghost kernel and nothing else (no convolution, no separate op)."""
    launches = _record_launches(monkeypatch)
    call = bottleneck_wrapper("triton")

    def checked(*args, **kwargs):
        launches.clear()
        with monkeypatch.context() as m:
            _refuse_composed_ops(m)
            y = call(*args, **kwargs)
        assert launches == ["_ghost_fwd_kernel"] * 2
        return y

    return checked


@pytest.mark.parametrize("layout", ("channels_last", "nchw", "noncontig"))
@pytest.mark.parametrize("depthwise, residual", (
    (None, "input"), (None, "tensor"), (None, None),
    ((3, 2), "tensor"), ((5, 2), None), ((3, 1), "input"), ((5, (2, 1)), "tensor"), ((3, 3), None),
    ((3, 2), None), ((5, 2), "tensor"), ((3, 1), "tensor"), ((5, (2, 1)), None), ((3, 3), "tensor"),
))
def test_triton_bottleneck_parity(fused_bottleneck, layout, depthwise, residual):
    # 13 input channels, 18 mid channels (ratio 3: 6 primary and 12 cheap); the second module's cheap half cut
    # (7 of 8 with 11 channels, 8 of 10 with 13). The stride-1 depthwise stage keeps the map: the identity shortcut
    # fits.
    out_channels = 13 if residual == "input" else 11
    check_ghost_bottleneck((2, 13, 11, 9), 18, 3, depthwise=depthwise, residual=residual, out_channels=out_channels,
                           layout=layout, device=TRITON_DEVICE, call=fused_bottleneck)


# The second module's map (the depthwise stage's output: 19 x 37, 37 x 21) spans several tiles both ways: its GEMM
# lanes' depthwise windows cross tile borders on every side.
BOTTLENECK_MULTI_TILE = (
    dict(shape=(1, 6, 38, 74), mid_channels=12, depthwise=(3, 2), residual="tensor", out_channels=10),
    dict(shape=(1, 6, 37, 42), mid_channels=12, dw_size=5, depthwise=(5, (1, 2)), residual=None, out_channels=8,
         layout="nchw"),
)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
@pytest.mark.parametrize("case", BOTTLENECK_MULTI_TILE + (
    # Many channels: 40 input channels and 72 mid channels take the GEMMs' K in several chunks (the depthwise stage
    # computed chunk by chunk), 36 and 40 primary channels take several channel blocks.
    dict(shape=(1, 40, 10, 9), mid_channels=72, depthwise=(3, 2), residual="tensor", out_channels=80),
    dict(shape=(1, 40, 9, 10), mid_channels=72, depthwise=(5, 1), residual="input", layout="noncontig"),
    dict(shape=(2, 37, 7, 6), mid_channels=50, ratio=3, residual="input", layout="nchw", biases=False),
    dict(shape=(1, 20, 9, 9), mid_channels=66, ratio=3, depthwise=(3, 2), residual=None, out_channels=70,
         biases=False),
))
def test_triton_bottleneck_tiles_and_blocks(fused_bottleneck, dtype, case):
    case = dict(case)
    shape, mid_channels = case.pop("shape"), case.pop("mid_channels")
    check_ghost_bottleneck(shape, mid_channels, case.pop("ratio", 2), case.pop("dw_size", 3), dtype=dtype,
                           device=TRITON_DEVICE, call=fused_bottleneck, **case)


@pytest.mark.parametrize("case", BOTTLENECK_MULTI_TILE)
def test_triton_bottleneck_multi_tile_cases_span_several_tiles(case):
    # The second module's map: the input's under the depthwise stage's stride.
    tiles_h, tiles_w = _tiles(case["shape"], case["depthwise"][1], case.get("dw_size", 3))
    assert tiles_h > 1 and tiles_w > 1


@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_triton_bottleneck_reduced_precision(fused_bottleneck, dtype, layout):
    check_ghost_bottleneck((2, 8, 9, 7), 14, 3, dtype=dtype, layout=layout, device=TRITON_DEVICE,
                           call=fused_bottleneck)
    check_ghost_bottleneck((1, 20, 13, 11), 40, 2, 5, dtype=dtype, layout=layout, depthwise=(3, 2),
                           residual="tensor", out_channels=24, device=TRITON_DEVICE, call=fused_bottleneck)


@pytest.mark.parametrize("activation, second_activation", (("hardswish", None), ("silu", "relu6"), (None, "relu")))
def test_triton_bottleneck_activations(fused_bottleneck, activation, second_activation):
    check_ghost_bottleneck((2, 6, 9, 10), 10, activation=activation, second_activation=second_activation,
                           depthwise=(3, 2), residual="tensor", out_channels=8, device=TRITON_DEVICE,
                           call=fused_bottleneck)


def test_triton_bottleneck_edges(fused_bottleneck):
    run = dict(device=TRITON_DEVICE, call=fused_bottleneck)
    check_ghost_bottleneck((1, 5, 4, 4), 7, 2, 5, depthwise=(5, 2), biases=False, residual=None, **run)
    check_ghost_bottleneck((1, 8, 1, 1), 16, depthwise=(3, 2), residual="tensor", **run)  # 1x1 maps
    check_ghost_bottleneck((2, 4, 1, 3), 6, 3, 3, depthwise=(3, 2), residual="tensor", out_channels=5, **run)
    check_ghost_bottleneck((1, 6, 17, 5), 10, 2, 3, depthwise=(3, 4), residual="tensor", out_channels=6, **run)
    check_ghost_bottleneck((2, 8, 9, 9), 8, 2, 3, second_ratio=3, depthwise=(3, 2), residual=None, **run)
    check_ghost_bottleneck((2, 8, 7, 7), 4, 2, 3, depthwise=(3, 2), residual=None, **run)  # no cheap channel kept


def test_triton_bottleneck_int64_and_several_programs(monkeypatch, fused_bottleneck):
    kernels = _kernels()
    monkeypatch.setattr(kernels, "_needs_int64", lambda *tensors: True)
    monkeypatch.setattr(kernels, "_program_target", lambda device: 3)
    for layout in ("nchw", "channels_last", "noncontig"):
        check_ghost_bottleneck((2, 20, 13, 19), 26, 3, depthwise=(3, (2, 1)), residual="tensor", out_channels=16,
                               layout=layout, device=TRITON_DEVICE, call=fused_bottleneck)


def test_triton_bottleneck_empty_batch(monkeypatch):
    # The Triton path with nothing to launch.
    launches = _record_launches(monkeypatch)
    _refuse_composed_ops(monkeypatch)
    call = bottleneck_wrapper("triton")
    x, first, second = ghost_bottleneck_case((0, 8, 6, 6), 12, 2, 3)
    on = [t.to(TRITON_DEVICE) for t in (x, *first, *second)]
    assert call(on[0], on[1:5], on[5:], 12).shape == (0, 8, 6, 6)
    dw = [t.to(TRITON_DEVICE) for t in dw_stage(12, 3, 2)[:2]] + [2]
    assert call(on[0], on[1:5], on[5:], 12, dw=dw, residual=None).shape == (0, 8, 3, 3)
    assert launches == []


# (numpy warns of the interpreter's Inf * 0 and Inf - Inf.)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_triton_bottleneck_padding_taps_skipped_as_in_the_depthwise_kernel():
    """An Inf weight on the depthwise stage's top-left tap: at the stage's first row and column that tap falls in
    the padding, skipped, not added as 0 * Inf = NaN, as by the Triton depthwise_conv2d, so the second module's
    primary channels stay finite there (its cheap channels read the next row and column too); elsewhere the Inf
    reaches the output as through the ops one after another."""
    x, first, second = ghost_bottleneck_case((1, 8, 9, 9), 12, 3, 3)
    dw = dw_stage(12, 3, 2)
    dw[0][2, 0, 0, 0] = float("inf")
    on = [t.to(TRITON_DEVICE) for t in (x, *first, *second, *dw[:2])]
    x, first, second, dw = on[0], on[1:5], on[5:9], (on[9], on[10], 2)
    with torch.no_grad():
        y = bottleneck_wrapper("triton")(x, first, second, 12, dw=dw, residual=None)
        with fusedops.use_backend("triton"):
            mid = fusedops.depthwise_conv2d(fusedops.ghost_module(x, *first, 12), dw[0], dw[1], 2, 1)
            expected = fusedops.ghost_module(mid, *second, 8, activation=None)
    init = second[0].shape[0]
    assert torch.isfinite(mid[:, :, 0, :]).all() and torch.isfinite(mid[:, :, :, 0]).all()
    assert torch.isfinite(expected[:, :init, 0, :]).all() and not torch.isfinite(expected).all()
    assert torch.isfinite(y[:, :init, 0, :]).all() and torch.isfinite(y[:, :init, :, 0]).all()
    torch.testing.assert_close(y, expected, equal_nan=True)


def test_triton_bottleneck_with_gradients_runs_the_ops(monkeypatch):
    """With a tensor that requires grad, ghost_bottleneck runs the differentiable ops one after another (three
    launches: the two modules and the depthwise stage between them) and the gradients reach every tensor; under
    no_grad the same tensors take the two-launch path."""
    x, first, second = ghost_bottleneck_case((1, 6, 9, 8), 10, 2, 3, dtype=torch.float64, layout="channels_last")
    dw_w, dw_b, _ = dw_stage(10, 3, 2, dtype=torch.float64)
    res = make_input((1, 6, 5, 4), "channels_last", dtype=torch.float64)
    leaves = [t.to(TRITON_DEVICE).requires_grad_() for t in (x, *first, *second, dw_w, dw_b, res)]
    x, first, second, dw, res = leaves[0], leaves[1:5], leaves[5:9], (leaves[9], leaves[10], 2), leaves[11]
    call = bottleneck_wrapper("triton")
    launches = _record_launches(monkeypatch)
    y = call(x, first, second, 10, dw=dw, residual=res)
    assert launches == ["_ghost_fwd_kernel", "_depthwise_fwd_kernel", "_ghost_fwd_kernel"]
    assert y.grad_fn is not None
    grads = torch.autograd.grad(y, leaves, torch.ones_like(y))
    launches.clear()
    with torch.no_grad():
        fused = call(x, first, second, 10, dw=dw, residual=res)
    assert launches == ["_ghost_fwd_kernel"] * 2 and fused.grad_fn is None
    monkeypatch.undo()
    torch.testing.assert_close(fused, y, rtol=1e-12, atol=1e-12)
    ref_leaves = [t.detach().cpu().requires_grad_() for t in leaves]
    rx, rf, rs, rdw, rres = ref_leaves[0], ref_leaves[1:5], ref_leaves[5:9], (*ref_leaves[9:11], 2), ref_leaves[11]
    expected = ghost_bottleneck_reference(rx, rf, rs, 10, dw=rdw, residual=rres)
    torch.testing.assert_close(y.detach().cpu(), expected.detach(), rtol=1e-10, atol=1e-10)
    ref_grads = torch.autograd.grad(expected, ref_leaves, torch.ones_like(expected))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.cpu(), r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype, step", ((torch.float16, 1e-5), (torch.bfloat16, 1e-4)))
def test_triton_bottleneck_rounds_the_depthwise_stage_before_the_gemm(dtype, step):
    """The second module's GEMM reads the depthwise stage's output rounded to the dtype, as the unfused sequence
    stores it. Here the first module's output is 1 everywhere; the stage's 1x3 filters give, on channel 0,
    1 + step (1 after the rounding; 1 at the first column, whose left tap is padding) and -1 on channel 1; the
    second module adds the two: exactly 0, where the unrounded stage would give step."""
    w = 7

    def tensor(values, *shape):
        return torch.tensor(values, dtype=torch.float64).view(*shape).to(dtype=dtype, device=TRITON_DEVICE)

    x = torch.ones(1, 2, 3, w, dtype=dtype, device=TRITON_DEVICE)
    first = [tensor([1, 0, 0, 1], 2, 2, 1, 1), None, tensor([0, 0], 2, 1, 1, 1), None]
    dw = (tensor([step, 1, 0, 0, -1, 0], 2, 1, 1, 3), None, 1)
    second = [tensor([1, 1], 1, 2, 1, 1), None, tensor([0], 1, 1, 1, 1), None]
    assert (1 + step) != 1 and torch.tensor(1 + step, dtype=torch.float32).to(dtype) == 1
    y = bottleneck_wrapper("triton")(x, first, second, 2, activation=None, dw=dw, residual=None, out_channels=1)
    assert y.dtype == dtype
    assert torch.equal(y.cpu().float(), torch.zeros(1, 1, 3, w))


@pytest.mark.parametrize("config, launches", (
    (dict(in_chs=8, mid_chs=8, out_chs=8, dw_kernel_size=3, stride=1), ["_ghost_fwd_kernel"] * 2),
    # The projecting shortcut (dwpw_conv2d) first, then the two Ghost kernels.
    (dict(in_chs=8, mid_chs=24, out_chs=12, dw_kernel_size=3, stride=2),
     ["_dwpw_fwd_kernel"] + ["_ghost_fwd_kernel"] * 2),
))
@pytest.mark.parametrize("frozen", (False, True))
def test_triton_ghost_bottleneck_module_takes_the_bottleneck_path(monkeypatch, config, launches, frozen):
    # fusedops.nn.GhostBottleneck (no squeeze-excitation) in inference on the Triton backend: its modules through the
    # Triton bottleneck path, the depthwise stage inside the second module's kernel; the output is timm's.
    timm_ghostnet = pytest.importorskip("timm.models.ghostnet")
    ref = randomize_batch_norms(timm_ghostnet.GhostBottleneck(**config).double()).eval()
    module = fusedops.nn.GhostBottleneck(**config).double().eval()
    module.load_state_dict(ref.state_dict())
    if frozen:
        fusedops.freeze(module)
    x = make_input((1, config["in_chs"], 7, 6), "channels_last", dtype=torch.float64, device=TRITON_DEVICE)
    ran = _record_launches(monkeypatch)
    with fusedops.use_backend("triton"), torch.inference_mode():
        y = module.to(TRITON_DEVICE)(x)
    assert ran == launches
    with torch.inference_mode():
        expected = ref(x.cpu())
    assert_close_scaled(y.cpu(), expected, **tolerance(torch.float64), name="output")


def test_triton_strided_biases():
    # Biases that are strided views (every other element of longer vectors), of the module and of the bottleneck's
    # depthwise stage: the kernels read channel c at c.
    torch.manual_seed(0)
    x = make_input((2, 6, 9, 8), "channels_last", dtype=torch.float64, device=TRITON_DEVICE)

    def strided(c):
        return torch.randn(2 * c, dtype=torch.float64, device=TRITON_DEVICE)[::2]

    first = [torch.randn(6, 6, 1, 1, dtype=torch.float64, device=TRITON_DEVICE), strided(6),
             torch.randn(6, 1, 3, 3, dtype=torch.float64, device=TRITON_DEVICE), strided(6)]
    second = [torch.randn(4, 12, 1, 1, dtype=torch.float64, device=TRITON_DEVICE), strided(4),
              torch.randn(4, 1, 3, 3, dtype=torch.float64, device=TRITON_DEVICE), strided(4)]
    dw = [torch.randn(12, 1, 3, 3, dtype=torch.float64, device=TRITON_DEVICE), strided(12), (2, 2)]
    with fusedops.use_backend("triton"):
        y = fusedops.ghost_module(x, *first, 12)
    expected = ghost_module_reference(*[t.cpu() for t in (x, *first)], 12, 1, "relu")
    torch.testing.assert_close(y.cpu(), expected)
    with torch.inference_mode():
        y = bottleneck_wrapper("triton")(x, first, second, 12, dw=dw, residual=None, out_channels=8)
    expected = ghost_bottleneck_reference(x.cpu(), [t.cpu() for t in first], [t.cpu() for t in second], 12,
                                          dw=[dw[0].cpu(), dw[1].cpu(), dw[2]], residual=None, out_channels=8)
    torch.testing.assert_close(y.cpu(), expected)
