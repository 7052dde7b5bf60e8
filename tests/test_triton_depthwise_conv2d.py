"""Triton kernels of depthwise_conv2d (fusedops/ops/_triton/depthwise_conv2d.py).

On CPU tensors they run through the Triton interpreter, so these tests need TRITON_INTERPRET=1 in the
environment before Python starts; they also run on CUDA tensors when a GPU is present. Shapes are small
because the interpreter is slow.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

import fusedops

from conftest import (
    HAS_CUDA,
    LAYOUTS,
    TRITON_DEVICE,
    TRITON_INTERPRET,
    TRITON_TEST,
    assert_close_scaled,
    depthwise_reference_grads,
    make_input,
)

pytestmark = TRITON_TEST

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not TRITON_INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")),
]


def _ops():
    return torch.ops.fusedops_triton


def _kernels():
    from fusedops.ops._triton import depthwise_conv2d as module

    return module


def _run(device, dtype, n, c, hw, kernel, stride, padding, dilation, mult, bias, layout, seed=0):
    """Runs the Triton forward and backward ops directly and returns them with the reference."""
    g = torch.Generator().manual_seed(seed)
    x = make_input((n, c, *hw), layout, dtype=dtype, device=device, generator=g)
    w = torch.randn((c * mult, 1, *kernel), generator=g, dtype=torch.float64).to(device, dtype)
    b = torch.randn(c * mult, generator=g, dtype=torch.float64).to(device, dtype) if bias else None
    args = (list(stride), list(padding), list(dilation))
    y = _ops().depthwise_conv2d(x, w, b, *args)
    grad_output = torch.randn(y.shape, generator=g, dtype=torch.float64).to(device, dtype)
    if layout == "channels_last":
        grad_output = grad_output.contiguous(memory_format=torch.channels_last)
    grads = _ops()._depthwise_conv2d_backward(grad_output, x, w, *args, [True, True, bias])
    assert all(t.dtype == dtype and t.device == x.device for t in (y, *grads))
    return x, w, b, grad_output, y, grads


def _geometries():
    """Kernel 1, 3, 5, (3, 2) x stride 1, 2 x padding 0, k//2 x dilation 1, 2 x multiplier 1, 2; layout,
    bias, batch and map sizes rotate over the cases so that each value meets many others."""
    cases = []
    for i, (kernel, stride, pad, dilation, mult) in enumerate(
        itertools.product([(1, 1), (3, 3), (5, 5), (3, 2)], [1, 2], ["zero", "half"], [1, 2], [1, 2])
    ):
        padding = (0, 0) if pad == "zero" else (kernel[0] // 2, kernel[1] // 2)
        layout = LAYOUTS[i % 3]
        bias = i % 4 != 1
        n = 3 if i % 5 in (0, 3) else 1
        hw = [(9, 10), (11, 13), (10, 9)][i % 3]
        cases.append(pytest.param(kernel, (stride, stride), padding, (dilation, dilation), mult, bias, layout, n, hw,
                                  id=f"k{kernel[0]}x{kernel[1]}-s{stride}-p{padding[0]}{padding[1]}-d{dilation}"
                                     f"-m{mult}-{'b' if bias else 'nob'}-{layout}-n{n}-{hw[0]}x{hw[1]}"))
    return cases


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel,stride,padding,dilation,mult,bias,layout,n,hw", _geometries())
def test_parity_fp32(device, kernel, stride, padding, dilation, mult, bias, layout, n, hw):
    c = 3
    x, w, b, grad_output, y, (gi, gw, gb) = _run(device, torch.float32, n, c, hw, kernel, stride, padding, dilation,
                                                  mult, bias, layout)
    ref_y, ref_gi, ref_gw, ref_gb = depthwise_reference_grads(x, w, b, stride, padding, dilation, grad_output,
                                                              dtype=x.dtype)
    assert_close_scaled(y, ref_y, rtol=1e-5, atol=1e-5, min_scale=0)
    assert_close_scaled(gi, ref_gi, rtol=1e-5, atol=1e-5, min_scale=0)
    assert_close_scaled(gw, ref_gw, rtol=1e-5, atol=1e-5, min_scale=0)
    if bias:
        assert_close_scaled(gb, ref_gb, rtol=1e-5, atol=1e-5, min_scale=0)
    else:
        assert gb.shape == (0,)
    # Output and grad_input take the input's memory format; grad_weight is contiguous like the weight.
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt) and gi.is_contiguous(memory_format=fmt)
    assert gi.stride() == torch.empty_like(x, memory_format=torch._prims_common.suggest_memory_format(x)).stride()
    assert gw.is_contiguous() and gw.shape == w.shape


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_parity_fp64(device, layout):
    x, w, b, grad_output, y, (gi, gw, gb) = _run(device, torch.float64, 3, 4, (8, 11), (3, 3), (2, 1), (1, 1),
                                                  (1, 2), 2, True, layout, seed=1)
    ref = depthwise_reference_grads(x, w, b, (2, 1), (1, 1), (1, 2), grad_output, dtype=x.dtype)
    for actual, expected in zip((y, gi, gw, gb), ref):
        assert actual.dtype == torch.float64
        assert_close_scaled(actual, expected, rtol=1e-12, atol=1e-12, min_scale=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,layout", [(torch.bfloat16, "channels_last"), (torch.float16, "nchw")])
def test_parity_half(device, dtype, layout):
    x, w, b, grad_output, y, (gi, gw, gb) = _run(device, dtype, 2, 5, (9, 8), (3, 3), (1, 1), (1, 1), (1, 1), 1,
                                                  True, layout, seed=2)
    # Exact gradients of the half-precision values, in fp32: the kernels accumulate in fp32 and round once.
    ref = depthwise_reference_grads(x, w, b, (1, 1), (1, 1), (1, 1), grad_output, dtype=torch.float32)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    for actual, expected in zip((y, gi, gw, gb), ref):
        assert actual.dtype == dtype
        assert_close_scaled(actual.float(), expected, rtol=tol, atol=tol, min_scale=0)


@pytest.mark.parametrize("device", DEVICES)
def test_large_kernel_not_unrolled(device):
    # 9x9 = 81 taps > _MAX_UNROLLED_TAPS: the kernel-row loop stays a loop.
    assert 81 > _kernels()._MAX_UNROLLED_TAPS
    x, w, b, grad_output, y, (gi, gw, gb) = _run(device, torch.float32, 1, 2, (10, 12), (9, 9), (1, 1), (4, 4),
                                                  (1, 1), 1, True, "channels_last", seed=3)
    ref = depthwise_reference_grads(x, w, b, (1, 1), (4, 4), (1, 1), grad_output, dtype=x.dtype)
    for actual, expected in zip((y, gi, gw, gb), ref):
        assert_close_scaled(actual, expected, rtol=1e-5, atol=1e-5, min_scale=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("target", [5, 1000])
def test_grad_weight_multi_chunk(device, target, monkeypatch):
    # Under the interpreter the reduction runs as one chunk; force several (uneven last chunk included, and
    # one tile per chunk for 1000) as on a GPU, where the partial sums of the chunks are added up.
    monkeypatch.setattr(_kernels(), "_program_target", lambda device: target)
    for layout in ("nchw", "channels_last"):
        x, w, b, grad_output, y, (gi, gw, gb) = _run(device, torch.float32, 3, 3, (11, 9), (3, 3), (1, 1), (1, 1),
                                                      (1, 1), 2, True, layout, seed=4)
        _, _, ref_gw, ref_gb = depthwise_reference_grads(x, w, b, (1, 1), (1, 1), (1, 1), grad_output, dtype=x.dtype)
        assert_close_scaled(gw, ref_gw, rtol=1e-5, atol=1e-5, min_scale=0)
        assert_close_scaled(gb, ref_gb, rtol=1e-5, atol=1e-5, min_scale=0)


@pytest.mark.parametrize("device", DEVICES)
def test_int64_indexing_path(device, monkeypatch):
    # Tensors big enough to need 64-bit offsets do not fit an interpreter test; run the int64 code path on
    # a small problem instead.
    monkeypatch.setattr(_kernels(), "_needs_int64", lambda *tensors: True)
    for layout in ("nchw", "channels_last"):
        x, w, b, grad_output, y, (gi, gw, gb) = _run(device, torch.float32, 2, 3, (7, 9), (3, 3), (2, 2), (1, 1),
                                                      (1, 1), 2, True, layout, seed=5)
        ref = depthwise_reference_grads(x, w, b, (2, 2), (1, 1), (1, 1), grad_output, dtype=x.dtype)
        for actual, expected in zip((y, gi, gw, gb), ref):
            assert_close_scaled(actual, expected, rtol=1e-5, atol=1e-5, min_scale=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_matches_native_cpu_backend(device, layout):
    if device != "cpu":
        pytest.skip("the native backend compared against is the CPU one")
    g = torch.Generator().manual_seed(6)
    x = make_input((3, 4, 9, 10), layout, generator=g)
    w = torch.randn(8, 1, 3, 3, generator=g)
    b = torch.randn(8, generator=g)
    results = {}
    for backend in ("native", "triton"):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        with fusedops.use_backend(backend):
            y = fusedops.depthwise_conv2d(xs, ws, bs, stride=2, padding=1, dilation=1)
            y.backward(torch.ones_like(y) * torch.arange(y.numel()).view_as(y).remainder(7))
        results[backend] = (y.detach(), xs.grad, ws.grad, bs.grad)
        assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                               else torch.contiguous_format)
    for native, triton_result in zip(results["native"], results["triton"]):
        assert_close_scaled(triton_result, native, rtol=1e-5, atol=1e-5, min_scale=0)


@pytest.mark.parametrize("device", DEVICES)
def test_autograd_frozen_weight_and_expanded_grad(device):
    # Weight frozen: only grad_input and grad_bias are asked for; y.sum() gives an expanded (stride 0)
    # grad_output, which the kernels read through its strides.
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 8, 7, generator=g).to(device).requires_grad_()
    w = torch.randn(3, 1, 3, 3, generator=g).to(device)
    b = torch.randn(3, generator=g).to(device).requires_grad_()
    with fusedops.use_backend("triton"):
        fusedops.depthwise_conv2d(x, w, b, padding=1).sum().backward()
    xr, br = x.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    F.conv2d(xr, w, br, padding=1, groups=3).sum().backward()
    assert w.grad is None
    assert_close_scaled(x.grad, xr.grad, rtol=1e-5, atol=1e-5, min_scale=0)
    assert_close_scaled(b.grad, br.grad, rtol=1e-5, atol=1e-5, min_scale=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", [[False, True, False], [False, False, True], [True, False, False]])
def test_only_requested_grads(device, mask):
    x, w, b, grad_output, y, full = _run(device, torch.float32, 1, 2, (6, 5), (3, 3), (1, 1), (1, 1), (1, 1), 1, True,
                                         "nchw", seed=8)
    grads = _ops()._depthwise_conv2d_backward(grad_output, x, w, [1, 1], [1, 1], [1, 1], mask)
    for wanted, grad, expected in zip(mask, grads, full):
        if wanted:
            torch.testing.assert_close(grad, expected)
        else:
            assert grad.shape == (0,) and grad.dtype == x.dtype and grad.device == x.device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_empty_batch(device, layout):
    x = make_input((0, 3, 6, 6), layout, device=device)
    w = torch.randn(6, 1, 3, 3, device=device)
    b = torch.randn(6, device=device)
    y = _ops().depthwise_conv2d(x, w, b, [2, 2], [1, 1], [1, 1])
    assert y.shape == (0, 6, 3, 3)
    gi, gw, gb = _ops()._depthwise_conv2d_backward(torch.empty_like(y), x, w, [2, 2], [1, 1], [1, 1],
                                                   [True, True, True])
    # Both follow suggest_memory_format, which cannot tell the layout of an empty batch (as the fake kernel).
    fmt = torch._prims_common.suggest_memory_format(x)
    assert y.stride() == torch.empty(y.shape, memory_format=fmt).stride()
    assert gi.shape == x.shape and gi.stride() == torch.empty(x.shape, memory_format=fmt).stride()
    assert gw.shape == w.shape and not gw.any()
    assert gb.shape == (6,) and not gb.any()


@pytest.mark.parametrize("device", DEVICES)
def test_empty_map_with_padding(device):
    # H = 0 with padding: the output is all bias; matches the native CPU op (F.conv2d refuses this input).
    x = torch.randn(2, 3, 0, 4, device=device)
    w = torch.randn(3, 1, 1, 1, device=device)
    b = torch.randn(3, device=device)
    y = _ops().depthwise_conv2d(x, w, b, [1, 1], [1, 1], [1, 1])
    assert y.shape == (2, 3, 2, 6)
    torch.testing.assert_close(y, b.view(1, 3, 1, 1).expand_as(y))
    gi, gw, gb = _ops()._depthwise_conv2d_backward(torch.ones_like(y), x, w, [1, 1], [1, 1], [1, 1],
                                                   [True, True, True])
    assert gi.shape == x.shape and not gw.any()
    torch.testing.assert_close(gb, torch.full((3,), 24.0, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    g = torch.Generator().manual_seed(9)
    samples = [
        (torch.randn(2, 3, 7, 6, generator=g), torch.randn(6, 1, 3, 3, generator=g), torch.randn(6, generator=g),
         [2, 1], [1, 1], [1, 1]),
        (torch.randn(1, 4, 6, 5, generator=g).contiguous(memory_format=torch.channels_last),
         torch.randn(4, 1, 3, 2, generator=g), None, [1, 1], [1, 0], [2, 1]),
    ]
    for x, w, b, *conv in samples:
        x, w = x.to(device).requires_grad_(), w.to(device).requires_grad_()
        b = b.to(device).requires_grad_() if b is not None else None
        torch.library.opcheck(_ops().depthwise_conv2d.default, (x, w, b, *conv))
        y = _ops().depthwise_conv2d(x.detach(), w.detach(), None, *conv)
        torch.library.opcheck(_ops()._depthwise_conv2d_backward.default,
                              (torch.randn_like(y), x.detach(), w.detach(), *conv, [True, True, b is not None]),
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("device", DEVICES)
def test_direct_call_errors(device):
    x = torch.randn(1, 2, 5, 5, device=device)
    w = torch.randn(2, 1, 3, 3, device=device)
    ops = _ops()
    cases = [
        (lambda: ops.depthwise_conv2d(x, w, None, [0, 1], [1, 1], [1, 1]), "stride"),
        (lambda: ops.depthwise_conv2d(x, w, None, [1, 1], [-1, 1], [1, 1]), "padding"),
        (lambda: ops.depthwise_conv2d(x, w, None, [1, 1], [1, 1], [1, 0]), "dilation"),
        (lambda: ops.depthwise_conv2d(x, torch.randn(3, 1, 3, 3, device=device), None, [1, 1], [1, 1], [1, 1]),
         "weight"),
        (lambda: ops.depthwise_conv2d(x, torch.randn(2, 2, 3, 3, device=device), None, [1, 1], [1, 1], [1, 1]),
         "weight"),
        (lambda: ops.depthwise_conv2d(x, w.double(), None, [1, 1], [1, 1], [1, 1]), "weight"),
        (lambda: ops.depthwise_conv2d(x, w, torch.randn(3, device=device), [1, 1], [1, 1], [1, 1]), "bias"),
        (lambda: ops.depthwise_conv2d(x.int(), w.int(), None, [1, 1], [1, 1], [1, 1]), "input"),
        (lambda: ops.depthwise_conv2d(x, w, None, [1, 1], [0, 0], [3, 3]), "padded input"),
        (lambda: ops._depthwise_conv2d_backward(torch.randn(1, 2, 4, 4, device=device), x, w, [1, 1], [1, 1],
                                                [1, 1], [True, True, False]), "grad_output"),
        (lambda: ops._depthwise_conv2d_backward(torch.randn(1, 2, 5, 5, device=device).double(), x, w, [1, 1],
                                                [1, 1], [1, 1], [True, True, False]), "grad_output"),
    ]
    for call, name in cases:
        with pytest.raises(RuntimeError, match=f"fusedops: .*{name}|fusedops: {name}"):
            call()


def test_triton_strided_bias():
    # A bias that is a strided view (every other element of a longer vector): the kernels read channel c at c.
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64, device=TRITON_DEVICE)
    w = torch.randn(12, 1, 3, 3, dtype=torch.float64, device=TRITON_DEVICE)
    longer = torch.randn(24, dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True)
    with fusedops.use_backend("triton"):
        y = fusedops.depthwise_conv2d(x, w, longer[::2], 2, 1)
    expected = F.conv2d(x, w, longer[::2], 2, 1, 1, 6)
    torch.testing.assert_close(y, expected)
    (grad,) = torch.autograd.grad(y.sum(), longer)
    (expected_grad,) = torch.autograd.grad(expected.sum(), longer)
    torch.testing.assert_close(grad, expected_grad)
