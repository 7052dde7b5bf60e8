"""CUDA kernels of fusedops::depthwise_conv2d and its backward.

Every kernel path is compared with the CPU kernels and with ``F.conv2d(groups=C)`` computed in float64:
NCHW tiles and the direct kernel, vectorised and scalar channels-last kernels, fast (3x3/5x5/7x7, stride
1/2) and generic shapes, the transposed-forward and gather input gradients, and the split weight-gradient
reduction. All but the first test need a GPU.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

import fusedops

from conftest import (
    assert_close_scaled,
    depthwise_reference_grads,
    CUDA_EMULATED,
    KERNEL_DEVICE,
    gpu_test,
    real_gpu_test,
    make_input,
    pair,
    requires_cuda_kernels,
)


@requires_cuda_kernels
def test_cuda_kernels_registered():
    for op in ("fusedops::depthwise_conv2d", "fusedops::_depthwise_conv2d_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


# ---------------------------------------------------------------------------------------------------
# Helpers


def _params(c, multiplier, kernel, bias, device, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    kh, kw = pair(kernel)
    w = torch.randn(c * multiplier, 1, kh, kw, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(c * multiplier, generator=g).to(device=device, dtype=dtype) if bias else None
    return w, b


def _run(x, w, b, stride, padding, dilation, grad_out=None, backend="native"):
    """Output and gradients (input, weight, bias) of fusedops.depthwise_conv2d on `backend`."""
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    with fusedops.use_backend(backend):
        y = fusedops.depthwise_conv2d(x, w, b, stride, padding, dilation)
    if grad_out is None:
        grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.device, y.dtype)
    y.backward(grad_out)
    return y.detach(), x.grad, w.grad, (b.grad if b is not None else None), grad_out


def _check_against_references(x, w, b, stride, padding, dilation, tol=1e-5, check_cpu=True):
    y, gx, gw, gb, grad_out = _run(x, w, b, stride, padding, dilation)
    fmt = suggest_memory_format(x)
    assert y.is_contiguous(memory_format=fmt), "output must take the input's memory format"
    ref = depthwise_reference_grads(x, w, b, stride, padding, dilation, grad_out)
    names = ("output", "grad_input", "grad_weight", "grad_bias")
    for name, actual, expected in zip(names, (y, gx, gw, gb), ref):
        if expected is None:
            assert actual is None
            continue
        assert_close_scaled(actual, expected, rtol=tol, atol=tol, name=name)
    if check_cpu and not CUDA_EMULATED:  # emulated, the CPU kernels are the emulated CUDA kernels
        xc = x.detach().cpu()
        cpu = _run(xc, w.cpu(), b.cpu() if b is not None else None, stride, padding, dilation, grad_out.cpu())
        for name, actual, expected in zip(names, (y, gx, gw, gb), cpu[:4]):
            if expected is not None:
                assert_close_scaled(actual, expected, rtol=tol, atol=tol, name=f"{name} (vs CPU kernels)")


# ---------------------------------------------------------------------------------------------------
# float32 parity over the parameter grid

KERNELS = [1, 3, 5, 7, (3, 5)]
STRIDES = [1, 2, 3, (2, 1)]
GRID_LAYOUTS = ["nchw", "channels_last", "strided"]


@gpu_test
@pytest.mark.parametrize("layout", GRID_LAYOUTS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("same_padding", [False, True])
@pytest.mark.parametrize("stride", STRIDES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_float32_grid(kernel, stride, same_padding, dilation, multiplier, bias, layout):
    kh, kw = pair(kernel)
    padding = (kh // 2, kw // 2) if same_padding else (0, 0)
    # 37 columns: stride 1/2 outputs are wide enough for the NCHW tile kernel, stride 3 runs the direct
    # one; 8 channels make channels-last vectorisable with multiplier 1. Batch 3 (odd) or 1.
    n = 3 if bias else 1
    x = make_input((n, 8, 17, 37), layout, device=KERNEL_DEVICE)
    w, b = _params(8, multiplier, kernel, bias, KERNEL_DEVICE)
    _check_against_references(x, w, b, pair(stride), padding, pair(dilation))


@gpu_test
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "channels_last_cropped", "channels_last_offset"])
@pytest.mark.parametrize("channels", [1, 3, 5, 6])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 2), (7, 1), (2, 1)])
def test_float32_odd_channels_and_alignment(layout, channels, kernel, stride):
    # Channel counts that are not multiples of 4, and channels-last tensors at a misaligned storage
    # offset, must take the scalar channels-last kernels.
    x = make_input((2, channels, 19, 23), layout, device=KERNEL_DEVICE)
    w, b = _params(channels, 1, kernel, True, KERNEL_DEVICE)
    _check_against_references(x, w, b, (stride, stride), (kernel // 2, kernel // 2), (1, 1))


@gpu_test
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,size",
    [
        (3, (1, 1), (3, 2), (1, 1), (9, 11)),  # padding > dilation*(k-1): stride-1 input gradient gathers
        (4, (2, 2), (1, 2), (1, 1), (12, 13)),  # even kernel
        (7, (1, 1), (42, 42), (14, 14), (100, 100)),  # window too big for shared memory: direct kernel
        (3, (4, 4), (0, 0), (3, 3), (33, 40)),
        ((1, 7), (1, 1), (0, 3), (1, 1), (20, 40)),
        ((7, 1), (2, 2), (3, 0), (1, 1), (40, 20)),
        (1, (1, 1), (0, 0), (1, 1), (1, 1)),  # 1x1 image
        (3, (1, 1), (1, 1), (1, 1), (1, 64)),  # single row
        (11, (1, 1), (5, 5), (1, 1), (70, 70)),  # large generic kernel, several tiles
    ],
)
def test_float32_special_shapes(layout, kernel, stride, padding, dilation, size):
    x = make_input((2, 4, *size), layout, device=KERNEL_DEVICE)
    w, b = _params(4, 1, kernel, True, KERNEL_DEVICE)
    _check_against_references(x, w, b, stride, padding, dilation)


@gpu_test
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 1), (5, 2), (7, 1), (7, 2)])
def test_float32_mobilenet_size(layout, kernel, stride):
    # N=8, C=144, 56x56: several NCHW tiles per plane and a weight gradient split over many blocks.
    x = make_input((8, 144, 56, 56), layout, device=KERNEL_DEVICE)
    w, b = _params(144, 1, kernel, True, KERNEL_DEVICE)
    _check_against_references(x, w, b, (stride, stride), (kernel // 2, kernel // 2), (1, 1), check_cpu=False)


# ---------------------------------------------------------------------------------------------------
# Other dtypes


@gpu_test
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,multiplier",
    [(3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (5, 1, 2, 2, 1), (3, 1, 1, 1, 2), ((2, 3), (2, 1), (1, 0), (1, 2), 1)],
)
def test_float64_gradcheck(layout, kernel, stride, padding, dilation, multiplier):
    x = make_input((2, 3, 7, 8), layout, dtype=torch.float64, device=KERNEL_DEVICE).requires_grad_()
    w, b = _params(3, multiplier, kernel, True, KERNEL_DEVICE, torch.float64)
    w.requires_grad_()
    b.requires_grad_()
    args = (pair(stride), pair(padding), pair(dilation))

    def fn(x, w, b):
        with fusedops.use_backend("native"):
            return fusedops.depthwise_conv2d(x, w, b, *args)

    assert torch.autograd.gradcheck(fn, (x, w, b))


@gpu_test
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,multiplier",
    [(3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (5, 2, 2, 1, 1), (7, 1, 3, 1, 1), (3, 1, 2, 2, 2), ((3, 5), 3, 0, 1, 1)],
)
def test_half_precision(dtype, layout, kernel, stride, padding, dilation, multiplier):
    x = make_input((3, 16, 21, 37), layout, dtype=dtype, device=KERNEL_DEVICE)
    w, b = _params(16, multiplier, kernel, True, KERNEL_DEVICE, dtype)
    args = (pair(stride), pair(padding), pair(dilation))
    y, gx, gw, gb, grad_out = _run(x, w, b, *args)
    assert y.dtype == dtype and gx.dtype == dtype and gw.dtype == dtype and gb.dtype == dtype
    # Reference on the same (rounded) values: the kernels accumulate in float32.
    ref = depthwise_reference_grads(x.float(), w.float(), b.float(), *args, grad_out.float())
    for name, actual, expected in zip(("output", "grad_input", "grad_weight", "grad_bias"), (y, gx, gw, gb), ref):
        assert_close_scaled(actual, expected, rtol=1e-2, atol=1e-2, name=f"{name} ({dtype})")


# ---------------------------------------------------------------------------------------------------
# Op contract


@gpu_test
@pytest.mark.parametrize(
    "layout,kernel,stride,padding,dilation,multiplier,bias",
    [
        ("nchw", 3, 1, 1, 1, 1, True),
        ("channels_last", 3, 2, 1, 1, 1, False),
        ("channels_last", 5, 1, 2, 2, 2, True),
        ("strided", (3, 1), (1, 2), (1, 0), 1, 1, True),
    ],
)
def test_opcheck(layout, kernel, stride, padding, dilation, multiplier, bias):
    x = make_input((2, 4, 9, 10), layout, device=KERNEL_DEVICE).requires_grad_()
    w, b = _params(4, multiplier, kernel, bias, KERNEL_DEVICE)
    w.requires_grad_()
    if b is not None:
        b.requires_grad_()
    args = (list(pair(stride)), list(pair(padding)), list(pair(dilation)))
    torch.library.opcheck(torch.ops.fusedops.depthwise_conv2d.default, (x, w, b, *args))
    with torch.no_grad():
        y = torch.ops.fusedops.depthwise_conv2d(x, w, b, *args)
    grad_out = torch.randn_like(y)
    torch.library.opcheck(
        torch.ops.fusedops._depthwise_conv2d_backward.default,
        (grad_out, x.detach(), w.detach(), *args, [True, True, bias]),
    )


@gpu_test
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("mask", [m for m in itertools.product([False, True], repeat=3) if any(m)])
def test_backward_output_mask(layout, mask):
    x = make_input((3, 8, 15, 20), layout, device=KERNEL_DEVICE)
    w, _ = _params(8, 1, 3, False, KERNEL_DEVICE)
    grad_out = torch.randn(3, 8, 8, 10, device=KERNEL_DEVICE)
    args = ([2, 2], [1, 1], [1, 1])
    op = torch.ops.fusedops._depthwise_conv2d_backward
    full = op(grad_out, x, w, *args, [True, True, True])
    part = op(grad_out, x, w, *args, list(mask))
    for wanted, got, expected in zip(mask, part, full):
        if wanted:
            torch.testing.assert_close(got, expected, atol=0, rtol=0)
        else:
            assert got.numel() == 0


@gpu_test
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_empty_batch(layout):
    x = make_input((0, 6, 9, 9), layout, device=KERNEL_DEVICE)
    w, b = _params(6, 2, 3, True, KERNEL_DEVICE)
    with fusedops.use_backend("native"):
        y = fusedops.depthwise_conv2d(x, w, b, 2, 1, 1)
    assert y.shape == (0, 12, 5, 5)
    grad_out = torch.empty(0, 12, 5, 5, device=KERNEL_DEVICE)
    gx, gw, gb = torch.ops.fusedops._depthwise_conv2d_backward(grad_out, x, w, [2, 2], [1, 1], [1, 1], [True] * 3)
    assert gx.shape == x.shape
    assert gw.shape == w.shape and torch.count_nonzero(gw) == 0
    assert gb.shape == (12,) and torch.count_nonzero(gb) == 0


@gpu_test
@pytest.mark.parametrize("layout,fmt", [("nchw", torch.contiguous_format), ("channels_last", torch.channels_last),
                                        ("strided", torch.contiguous_format),
                                        ("channels_last_cropped", torch.channels_last)])
def test_output_memory_format(layout, fmt):
    x = make_input((2, 8, 12, 12), layout, device=KERNEL_DEVICE)
    w, b = _params(8, 1, 3, True, KERNEL_DEVICE)
    y = torch.ops.fusedops.depthwise_conv2d(x, w, b, [1, 1], [1, 1], [1, 1])
    assert y.is_contiguous(memory_format=fmt)
    # Called directly: autograd would re-stride grad_input to match a non-dense input view.
    gx, gw, gb = torch.ops.fusedops._depthwise_conv2d_backward(
        torch.randn_like(y), x, w, [1, 1], [1, 1], [1, 1], [True, True, True]
    )
    assert gx.is_contiguous(memory_format=fmt)
    assert gw.is_contiguous() and gb.is_contiguous()


@gpu_test
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("kernel", [3, (3, 5)])
def test_weight_gradient_deterministic(layout, kernel):
    x = make_input((4, 32, 40, 40), layout, device=KERNEL_DEVICE)
    w, b = _params(32, 1, kernel, True, KERNEL_DEVICE)
    grad_out = torch.randn(4, 32, 40, 40, device=KERNEL_DEVICE)
    padding = [pair(kernel)[0] // 2, pair(kernel)[1] // 2]
    op = torch.ops.fusedops._depthwise_conv2d_backward
    first = op(grad_out, x, w, [1, 1], padding, [1, 1], [True, True, True])
    for _ in range(3):
        again = op(grad_out, x, w, [1, 1], padding, [1, 1], [True, True, True])
        for a, b_ in zip(first, again):
            assert torch.equal(a, b_)


@real_gpu_test
def test_errors_match_cpu():
    x = torch.randn(2, 4, 8, 8, device="cuda")
    w = torch.randn(6, 1, 3, 3, device="cuda")
    with pytest.raises(RuntimeError, match="not a positive multiple"):
        torch.ops.fusedops.depthwise_conv2d(x, w, None, [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="same device"):
        torch.ops.fusedops.depthwise_conv2d(x, w[:4].cpu(), None, [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="grad_output has shape"):
        torch.ops.fusedops._depthwise_conv2d_backward(
            torch.randn(2, 4, 7, 7, device="cuda"), x, w[:4], [1, 1], [1, 1], [1, 1], [True, True, True]
        )


@real_gpu_test
def test_non_default_device_and_stream():
    # Kernels run on the input's device and the current stream.
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    x = make_input((2, 8, 20, 20), "channels_last", device=device)
    w, b = _params(8, 1, 3, True, device)
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        with fusedops.use_backend("native"):
            y = fusedops.depthwise_conv2d(x, w, b, 1, 1, 1)
    stream.synchronize()
    expected = F.conv2d(x.double(), w.double(), b.double(), 1, 1, 1, groups=8)
    assert_close_scaled(y, expected, rtol=1e-5, atol=1e-5, name="output")
