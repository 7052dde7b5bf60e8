"""Triton kernels of dwpw_conv2d (fusedops/ops/_triton/dwpw_conv2d.py).

On CPU tensors they run through the Triton interpreter (TRITON_INTERPRET=1 set before Python starts);
on CUDA tensors when a GPU is present. Shapes are small because the interpreter is slow.
"""

import pytest
import torch

import fusedops
from fusedops.ops import _reference

from conftest import (
    DWPW_GRAD_NAMES,
    TRITON_DEVICE,
    TRITON_TEST,
    assert_close_grads,
    check_dwpw_parity,
    make_dwpw_weights,
    make_input,
    to_layout,
    tolerance,
)

pytestmark = TRITON_TEST


@pytest.mark.parametrize("case", (
    dict(shape=(2, 5, 7, 6), cout=7, layout="nchw", mid="relu6", out="relu6"),
    dict(shape=(1, 20, 6, 7), cout=33, layout="channels_last", stride=2, mid="hardswish", out=None),
    dict(shape=(2, 6, 6, 6), cout=17, layout="noncontig", kernel=5, padding=2, multiplier=2, mid=None,
         out="hardswish", dw_bias=False),
    dict(shape=(1, 8, 7, 7), cout=40, layout="channels_last", dilation=2, padding=2, mid="relu", out="relu",
         pw_bias=False),
    dict(shape=(1, 6, 5, 6), cout=9, layout="channels_last", mid="silu", out="silu"),
))
def test_triton_parity(case):
    case = dict(case)
    shape, cout = case.pop("shape"), case.pop("cout")
    check_dwpw_parity(shape, cout, backend="triton", **case)


def test_triton_float64():
    check_dwpw_parity((1, 4, 5, 5), 6, backend="triton", dtype=torch.float64, layout="nchw", mid="hardswish")


def test_triton_matches_native():
    x = torch.randn(2, 24, 9, 9).to(memory_format=torch.channels_last)
    weights = [t.detach() for t in make_dwpw_weights(24, 20, 3)]
    with fusedops.use_backend("triton"):
        yt = fusedops.dwpw_conv2d(x, *weights, stride=2)
    with fusedops.use_backend("native"):
        yn = fusedops.dwpw_conv2d(x, *weights, stride=2)
    torch.testing.assert_close(yt, yn, rtol=1e-5, atol=1e-5)
    assert yt.is_contiguous(memory_format=torch.channels_last)


def test_triton_bad_arguments():
    x = torch.randn(1, 4, 5, 5)
    dw_w, dw_b, pw_w, pw_b = (t.detach() for t in make_dwpw_weights(4, 6, 3))
    with fusedops.use_backend("triton"), pytest.raises(RuntimeError, match="pw_weight must have shape"):
        fusedops.dwpw_conv2d(x, dw_w, dw_b, pw_w[:, :3], pw_b)


def _backward_case(shape, cout, kernel, stride, padding, dilation, multiplier, mid, out, layout, dtype=torch.float32):
    """Detached arguments of a direct dwpw_conv2d_backward call, and the float64 reference gradients."""
    c = shape[1]
    x = make_input(shape, layout, dtype=dtype).to(TRITON_DEVICE)
    weights = [None if t is None else t.detach().to(TRITON_DEVICE)
               for t in make_dwpw_weights(c, cout, kernel, multiplier, dtype=dtype, requires_grad=False)]
    conv = (stride, padding, dilation, mid, out)
    leaves = [None if t is None else t.double().requires_grad_() for t in (x, *weights)]
    ref = _reference.dwpw_conv2d(*leaves, *conv)
    go = to_layout(torch.randn(ref.shape, dtype=torch.float64, device=TRITON_DEVICE), layout)
    expected = torch.autograd.grad(ref, leaves, go)
    return (go.to(dtype), x, *weights, *conv), expected


def _triton_backward(args, mask=(True,) * 5, band_elements=1 << 22):
    from fusedops.ops._triton import dwpw_conv2d

    return dwpw_conv2d.dwpw_conv2d_backward(*args, list(mask), band_elements=band_elements)


@pytest.mark.parametrize("case", (
    # 3x3 stride 2: bands overlap by one input row; multiplier 2.
    dict(shape=(3, 4, 9, 9), cout=6, kernel=3, stride=(2, 2), padding=(1, 1), dilation=(1, 1), multiplier=2,
         mid="relu6", out="hardswish", layout="channels_last"),
    # 5 rows stride 1: each one-row band recomputes the 4 output rows above it (clamped at the top).
    dict(shape=(2, 3, 8, 6), cout=5, kernel=(5, 1), stride=(1, 1), padding=(2, 0), dilation=(1, 1), multiplier=1,
         mid="hardswish", out="relu", layout="nchw"),
    # Uneven stride, no row padding, dilation; out none: the bands read grad_output in place (strided).
    dict(shape=(2, 5, 11, 7), cout=9, kernel=3, stride=(2, 1), padding=(0, 1), dilation=(2, 1), multiplier=1,
         mid="relu", out="none", layout="noncontig"),
))
def test_triton_backward_bands(case, monkeypatch):
    """Row bands, image bands and chunked reductions give the gradients of one whole band (up to the
    summation order)."""
    from fusedops.ops._triton import dwpw_conv2d

    args, expected = _backward_case(**case)
    whole = _triton_backward(args)
    n, k, cout = case["shape"][0], case["shape"][1] * case["multiplier"], case["cout"]
    out_h, out_w = args[0].shape[2:]
    per_row = (k + cout) * out_w
    tol = tolerance(torch.float32)
    # Several partial sums per reduction, as on a GPU (under the interpreter there is one).
    monkeypatch.setattr(dwpw_conv2d, "_program_target", lambda device: 5)
    for band_elements in (per_row, 2 * per_row + 1, per_row * out_h * (n - 1)):
        banded = _triton_backward(args, band_elements=band_elements)
        for name, b, w_ in zip(DWPW_GRAD_NAMES, banded, whole):
            assert b.dtype == w_.dtype and b.shape == w_.shape and b.stride() == w_.stride(), name
        assert_close_grads(list(banded), list(whole), **tol, names=DWPW_GRAD_NAMES)
        assert_close_grads(list(banded), list(expected), **tol, names=DWPW_GRAD_NAMES)
    if case["layout"] == "channels_last":
        assert whole[0].is_contiguous(memory_format=torch.channels_last)


def test_triton_int64_indexing_path(monkeypatch):
    """The kernels' int64 offsets (taken where one image's offsets may pass 2^31) on problems small enough for
    the interpreter: forward and backward in both layouts, and a banded backward (row offsets, chunks)."""
    from fusedops.ops._triton import dwpw_conv2d

    monkeypatch.setattr(dwpw_conv2d, "_needs_int64", lambda *tensors: True)
    for layout in ("nchw", "channels_last"):
        check_dwpw_parity((2, 4, 6, 7), 6, backend="triton", stride=2, multiplier=2, layout=layout,
                          mid="hardswish", out="relu6")
    args, expected = _backward_case((2, 3, 7, 6), 5, 3, (1, 1), (1, 1), (1, 1), 1, "relu6", "hardswish", "nchw")
    monkeypatch.setattr(dwpw_conv2d, "_program_target", lambda device: 5)
    banded = _triton_backward(args, band_elements=(3 + 5) * 6 * 2)
    assert_close_grads(list(banded), list(expected), **tolerance(torch.float32), names=DWPW_GRAD_NAMES)


@pytest.mark.parametrize("mask", ((False, True, False, True, False), (True, False, True, False, True),
                                  (False, False, False, False, True), (True, False, False, False, False)))
def test_triton_backward_output_mask(mask):
    """Unrequested gradients come back empty; the requested ones equal those of the full call."""
    args, _ = _backward_case((2, 4, 7, 6), 5, 3, (2, 2), (1, 1), (1, 1), 2, "hardswish", "relu6", "nchw")
    full = _triton_backward(args)
    part = _triton_backward(args, mask, band_elements=60)
    for name, wanted, p, f in zip(DWPW_GRAD_NAMES, mask, part, full):
        if wanted:
            assert p.shape == f.shape and p.dtype == f.dtype and p.is_contiguous(), name
            torch.testing.assert_close(p, f, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
        else:
            assert p.numel() == 0 and p.dtype == f.dtype and p.device == f.device, name


def test_triton_backward_float64_bands():
    args, expected = _backward_case((2, 3, 7, 7), 4, 3, (1, 1), (1, 1), (1, 1), 1, "relu6", "hardswish",
                                    "channels_last", dtype=torch.float64)
    banded = _triton_backward(args, band_elements=(3 + 4) * 7 * 2)
    tol = tolerance(torch.float64)
    assert_close_grads(list(banded), list(expected), **tol, names=DWPW_GRAD_NAMES)


def test_triton_strided_biases():
    # Biases that are strided views (every other element of longer vectors): forward and backward read channel c at
    # c, as the native kernels do.
    def run(backend):
        torch.manual_seed(0)
        x = torch.randn(2, 6, 9, 8, dtype=torch.float64, device=TRITON_DEVICE)
        dw = torch.randn(12, 1, 3, 3, dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True)
        pw = torch.randn(5, 12, 1, 1, dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True)
        longer = [torch.randn(2 * c, dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True) for c in (12, 5)]
        with fusedops.use_backend(backend):
            y = fusedops.dwpw_conv2d(x, dw, longer[0][::2], pw, longer[1][::2], 2, 1, mid_activation="relu",
                                     out_activation=None)
        return y, torch.autograd.grad((y * y).sum(), [dw, pw, *longer])

    y, grads = run("triton")
    expected, expected_grads = run("reference")
    torch.testing.assert_close(y, expected)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e)
