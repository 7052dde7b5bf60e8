"""Fixtures and helpers shared by the op test files.

Tolerances are per dtype (``TOLERANCES``); parity checks compare against a float64 reference and scale the
absolute tolerance by the element's *magnitude*, the same computation run on absolute values, which bounds
the rounding error of any summation order (see ``assert_close_scaled``).
"""

import importlib.util
import os
import random

# Idle OpenMP workers sleep instead of spinning. The kernels still run multi-threaded, but on a small,
# shared CI machine spinning workers starve each other at every parallel region (a 5-10x slowdown of
# this suite). libgomp reads this when torch loads it, so it must be set before the import below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

import fusedops  # noqa: E402

# rtol / atol per dtype of the computation under test, for comparisons against a float64 reference.
# atol is relative to the magnitude of the terms summed (see assert_close_scaled).
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=5e-3, atol=5e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}

LAYOUTS = ("nchw", "channels_last", "noncontig")

HAS_CUDA = torch.cuda.is_available()
# FUSEDOPS_CUDA_EMU=1: the CUDA kernels' tests (tests/test_cuda_*.py) run on CPU tensors through the test-only
# CPU emulation of the CUDA execution model (tests/cuda_emu.py), whose kernels replace the C++ CPU kernels
# of this process: only those tests run in it (make test-cuda-emu).
CUDA_EMULATED = os.environ.get("FUSEDOPS_CUDA_EMU", "0") == "1"
if CUDA_EMULATED:
    import cuda_emu

    cuda_emu.load()
# The device of the tensors the CUDA kernels' tests pass.
KERNEL_DEVICE = "cpu" if CUDA_EMULATED else "cuda"
HAS_TRITON = importlib.util.find_spec("triton") is not None
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def tolerance(dtype):
    return TOLERANCES[dtype]


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same random state, so failures reproduce."""
    torch.manual_seed(0)
    random.seed(0)
    try:
        import numpy as np

        np.random.seed(0)
    except ImportError:  # pragma: no cover
        pass
    yield


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA; `triton` tests need Triton and either CUDA or TRITON_INTERPRET=1."""
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    if not HAS_TRITON:
        skip_triton = pytest.mark.skip(reason="needs Triton")
    elif not (HAS_CUDA or TRITON_INTERPRET):
        skip_triton = pytest.mark.skip(reason="needs a CUDA GPU or TRITON_INTERPRET=1 (set before starting Python)")
    else:
        skip_triton = None
    for item in items:
        emulated = CUDA_EMULATED and os.path.basename(str(item.fspath)).startswith("test_cuda_")
        if "gpu" in item.keywords and not HAS_CUDA and not emulated and "real_gpu" not in item.keywords:
            item.add_marker(skip_gpu)
        if "triton" in item.keywords and skip_triton is not None:
            item.add_marker(skip_triton)


requires_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
# Whether the native CUDA kernels were compiled into this build (they can be, without a GPU).
HAS_CUDA_KERNELS = fusedops.build_info()["cuda"]
requires_cuda_kernels = pytest.mark.skipif(not HAS_CUDA_KERNELS,
                                           reason="fusedops was built without its CUDA kernels")


def gpu_test(fn):
    """Marks a test that runs the native CUDA kernels: `gpu`, and skipped without a GPU or the kernels,
    unless they run emulated."""
    if CUDA_EMULATED:
        return pytest.mark.gpu(fn)
    return pytest.mark.gpu(requires_gpu(requires_cuda_kernels(fn)))


def real_gpu_test(fn):
    """A `gpu` test of what only a real GPU has (streams, several devices): skipped under the emulation."""
    return pytest.mark.gpu(pytest.mark.real_gpu(requires_gpu(requires_cuda_kernels(fn))))
requires_triton = pytest.mark.skipif(
    not HAS_TRITON or not (HAS_CUDA or TRITON_INTERPRET),
    reason="needs Triton with a CUDA GPU or TRITON_INTERPRET=1",
)


def make_input(shape, layout="nchw", *, dtype=torch.float32, device="cpu", requires_grad=False, generator=None):
    """A random tensor of `shape` (N, C, H, W) stored as `layout`:

    ``nchw``           contiguous;
    ``channels_last``  torch.channels_last;
    ``noncontig``      a strided view that is neither (a permuted slice of a larger buffer).
    """
    n, c, h, w = shape
    if layout == "nchw":
        t = torch.randn(shape, dtype=torch.float64, generator=generator).to(dtype=dtype, device=device)
    elif layout == "channels_last":
        t = torch.randn(shape, dtype=torch.float64, generator=generator).to(
            dtype=dtype, device=device, memory_format=torch.channels_last)
    elif layout == "noncontig":
        base = torch.randn(n, h, c, w + 3, dtype=torch.float64, generator=generator).to(dtype=dtype, device=device)
        t = base[..., :w].permute(0, 2, 1, 3)
        if t.numel() > 1 and min(shape) > 1:
            assert not t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    assert t.shape == torch.Size(shape)
    return t.requires_grad_(requires_grad)


def to_layout(t, layout):
    """A copy of `t` (values unchanged) stored as `layout` (see make_input)."""
    if layout == "nchw":
        return t.contiguous()
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "noncontig":
        n, c, h, w = t.shape
        base = t.new_zeros(n, h, c, w + 3)
        view = base[..., :w].permute(0, 2, 1, 3)
        view.copy_(t)
        return view
    raise ValueError(f"unknown layout {layout!r}")


def assert_close_scaled(actual, expected, magnitude=None, *, rtol, atol, name="tensor"):
    """|actual - expected| <= atol * magnitude + rtol * |expected|, elementwise.

    `expected` is a float64 reference; `magnitude` the same computation on absolute values (a bound on the
    sum of |terms| of each element, so atol * magnitude covers any summation order). Without it, the
    largest |expected| (at least 1) is used.
    """
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype != torch.float64 or expected.dtype == torch.float64
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if a.numel() == 0:
        return
    assert torch.isfinite(a).all(), f"{name}: non-finite values in the result"
    if magnitude is None:
        mag = torch.full_like(e, max(1.0, e.abs().max().item()))
    else:
        mag = magnitude.detach().to(torch.float64).cpu().abs()
    # A floor keeps elements whose terms are all zero exactly zero up to denormals.
    bound = atol * mag + rtol * e.abs() + 1e-30
    err = (a - e).abs()
    bad = err > bound
    if bad.any():
        flat = int((err / bound).flatten().argmax())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), err.shape))
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {err.numel()} elements out of tolerance (rtol={rtol}, atol={atol} x magnitude); "
            f"worst at {idx}: actual {a[idx].item():.9g}, expected {e[idx].item():.9g}, "
            f"magnitude {mag[idx].item():.4g}, error {err[idx].item():.3g} > bound {bound[idx].item():.3g}"
        )


def assert_close_grads(actual, expected, magnitudes=None, *, rtol, atol, names=None):
    """assert_close_scaled on each pair of (possibly None) gradients; both must be None together."""
    magnitudes = magnitudes if magnitudes is not None else [None] * len(expected)
    names = names or [f"grad[{i}]" for i in range(len(expected))]
    assert len(actual) == len(expected) == len(magnitudes) == len(names)
    for a, e, m, name in zip(actual, expected, magnitudes, names):
        assert (a is None) == (e is None), f"{name}: got {'None' if a is None else 'a tensor'}, expected " \
            f"{'None' if e is None else 'a tensor'}"
        if a is not None:
            assert_close_scaled(a, e, m, rtol=rtol, atol=atol, name=name)


def conv_reference(fn, inputs, grad_output, *, needs_grad=None):
    """Runs fn(*inputs) in float64 and returns (output, grads) with grads of every tensor input
    (None for None inputs), given grad_output (cast to float64)."""
    leaves = []
    for i, t in enumerate(inputs):
        if t is None:
            leaves.append(None)
            continue
        wants = needs_grad[i] if needs_grad is not None else True
        leaves.append(t.detach().to(torch.float64).requires_grad_(wants))
    out = fn(*leaves)
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, wanted, grad_output.detach().to(torch.float64)) if wanted else ()
    it = iter(grads)
    return out.detach(), [None if (t is None or not t.requires_grad) else next(it) for t in leaves]


def reference_with_magnitudes(fn, inputs, grad_output, *, needs_grad=None):
    """conv_reference on the inputs, and on their absolute values (the error-scale magnitudes)."""
    out, grads = conv_reference(fn, inputs, grad_output, needs_grad=needs_grad)
    abs_inputs = [None if t is None else t.detach().abs() for t in inputs]
    mag_out, mag_grads = conv_reference(fn, abs_inputs, grad_output.detach().abs(), needs_grad=needs_grad)
    return out, grads, mag_out, mag_grads
