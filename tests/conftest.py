"""Fixtures and helpers shared by the test files (imported as ``from conftest import ...``).

Inputs come from ``make_input`` in one layout vocabulary (see ``make_input``); ``pair`` turns an int or a
pair into a pair. Tolerances are per dtype (``TOLERANCES``); parity checks compare against a float64
reference and scale the absolute tolerance by the element's *magnitude*, the same computation run on
absolute values, which bounds the rounding error of any summation order (see ``assert_close_scaled``).
The op checks used by several files stand at the end: ``check_depthwise_parity``,
``check_depthwise_requested_grads``, ``check_dwpw_parity`` and their inputs.
"""

import importlib.util
import itertools
import os
import random

# Idle OpenMP workers sleep instead of spinning. The kernels still run multi-threaded, but on a small,
# shared CI machine spinning workers starve each other at every parallel region (a 5-10x slowdown of
# this suite). libgomp reads this when torch loads it, so it must be set before the import below.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fusedops  # noqa: E402
from fusedops import _extension  # noqa: E402
from fusedops.ops import _reference  # noqa: E402

# ---------------------------------------------------------------------------------------------------
# What this machine and build can run

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
# Where the Triton tests put their tensors: the interpreter runs CPU tensors, a GPU CUDA ones.
TRITON_DEVICE = "cpu" if TRITON_INTERPRET else "cuda"
# Whether the native CUDA kernels were compiled into this build (they can be, without a GPU).
HAS_CUDA_KERNELS = fusedops.build_info()["cuda"]

requires_ops = pytest.mark.skipif(not _extension.has_ops(), reason="the fusedops._C extension is not built")
requires_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
requires_cuda_kernels = pytest.mark.skipif(not HAS_CUDA_KERNELS,
                                           reason="fusedops was built without its CUDA kernels")
requires_triton = pytest.mark.skipif(
    not (HAS_TRITON and _extension.has_triton() and _extension.has_ops()) or not (HAS_CUDA or TRITON_INTERPRET),
    reason="needs Triton and the compiled extension fusedops._C, with a CUDA GPU or TRITON_INTERPRET=1",
)
# The marks of a Triton test file (pytestmark).
TRITON_TEST = [pytest.mark.triton, requires_triton]


def gpu_test(fn):
    """Marks a test that runs the native CUDA kernels: `gpu`, and skipped without a GPU or the kernels,
    unless they run emulated."""
    if CUDA_EMULATED:
        return pytest.mark.gpu(fn)
    return pytest.mark.gpu(requires_gpu(requires_cuda_kernels(fn)))


def real_gpu_test(fn):
    """A `gpu` test of what only a real GPU has (streams, several devices): skipped under the emulation."""
    return pytest.mark.gpu(pytest.mark.real_gpu(requires_gpu(requires_cuda_kernels(fn))))


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


@pytest.fixture
def keep_threads():
    """The process's thread count as it was before the test: for tests of programs that set it (``--threads``),
    so that the tests after them keep the count they were written with."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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


# ---------------------------------------------------------------------------------------------------
# Arguments

def pair(v):
    """(v, v) for an int, else v as a tuple: a kernel size, stride, padding or dilation as the ops take it."""
    return (v, v) if isinstance(v, int) else tuple(v)


def param_id(v):
    """A test id for a parameter: 3 -> "3", (3, 5) -> "3x5"."""
    return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)


# ---------------------------------------------------------------------------------------------------
# Inputs and their layouts

# The layouts every op is checked on; make_input knows the others below for the kernels that read such
# views in place or take other paths for them.
LAYOUTS = ("nchw", "channels_last", "noncontig")
# The layouts the channel-shuffle kernels read in place.
SHUFFLE_LAYOUTS = ("nchw", "channels_last", "channel_slice", "channels_last_slice")
CL = torch.channels_last


def _channels_last(t):
    """`t` copied into channels_last strides, even where `t` already counts as channels_last (one channel, or
    1x1 maps: .contiguous() would keep its NCHW strides there, and the ops would take it for NCHW)."""
    return torch.empty_like(t, memory_format=CL).copy_(t)


def _layout_view(shape, layout, alloc):
    """A tensor of `shape` (N, C, H, W) stored as `layout`, a view of what alloc(*size) returns."""
    n, c, h, w = shape
    if layout == "nchw":
        return alloc(n, c, h, w)
    if layout == "channels_last":
        return _channels_last(alloc(n, c, h, w))
    if layout == "noncontig":
        return alloc(n, h, c, w + 3)[..., :w].permute(0, 2, 1, 3)
    if layout == "strided":
        return alloc(n, c, h + 1, 2 * w)[:, :, 1:, ::2]
    if layout == "channel_slice":
        return alloc(n, 2 * c, h, w)[:, c:]
    if layout == "channels_last_slice":
        return _channels_last(alloc(n, 2 * c, h, w))[:, :c]
    if layout == "channels_last_cropped":
        return _channels_last(alloc(n, c, h + 2, w))[:, :, 1:-1]
    if layout == "channels_last_offset":
        return alloc(n * h * w * c + 1)[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    raise ValueError(f"unknown layout {layout!r}")


def make_input(shape, layout="nchw", *, dtype=torch.float32, device="cpu", requires_grad=False, generator=None):
    """A random tensor of `shape` (N, C, H, W) stored as `layout`:

    ``nchw``                   contiguous;
    ``channels_last``          torch.channels_last;
    ``noncontig``              a strided view that is neither (a permuted slice of a larger buffer);
    ``strided``                every other column of a larger NCHW tensor, from its second row (planes
                               not dense, at a storage offset);
    ``channel_slice``          the second half of the channels of an NCHW tensor (as ``x.chunk(2, 1)[1]``);
    ``channels_last_slice``    the first half of the channels of a channels_last tensor;
    ``channels_last_cropped``  a channels_last tensor without its first and last rows;
    ``channels_last_offset``   channels_last at a storage offset of one element (not aligned for vector
                               loads).

    The values are drawn in float64 (from `generator` when given), then cast to `dtype`; what lies around
    a view is random too.
    """
    def randn(*size):
        return torch.randn(size, dtype=torch.float64, generator=generator).to(dtype=dtype, device=device)

    t = _layout_view(shape, layout, randn)
    if layout == "noncontig" and t.numel() > 1 and min(shape) > 1:
        assert not t.is_contiguous() and not t.is_contiguous(memory_format=CL)
    assert t.shape == torch.Size(shape)
    return t.requires_grad_(requires_grad)


def to_layout(t, layout):
    """A copy of `t` (values unchanged) stored as `layout` (see make_input)."""
    return _layout_view(t.shape, layout, lambda *size: t.new_zeros(size)).copy_(t)


def dense_layout(layout):
    """The dense layout (nchw or channels_last) of the tensors that `layout` views."""
    return "channels_last" if layout.startswith("channels_last") else "nchw"


# ---------------------------------------------------------------------------------------------------
# Comparisons

# rtol / atol per dtype of the computation under test, for comparisons against a float64 reference.
# atol is relative to the magnitude of the terms summed (see assert_close_scaled).
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=5e-3, atol=5e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}


def tolerance(dtype):
    return TOLERANCES[dtype]


def assert_close_scaled(actual, expected, magnitude=None, *, rtol, atol, name="tensor", min_scale=1.0):
    """|actual - expected| <= atol * magnitude + rtol * |expected|, elementwise.

    `expected` is a float64 reference, or one computed in actual's dtype; `magnitude` the same computation
    on absolute values (a bound on the sum of |terms| of each element, so atol * magnitude covers any
    summation order). Without it, the largest |expected| (at least `min_scale`) is used.
    """
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype or expected.dtype == torch.float64, \
        f"{name}: dtype {actual.dtype} compared against a {expected.dtype} reference"
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    if a.numel() == 0:
        return
    assert torch.isfinite(a).all(), f"{name}: non-finite values in the result"
    if magnitude is None:
        mag = torch.full_like(e, max(min_scale, e.abs().max().item()))
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
            f"{name}: {int(bad.sum())} of {err.numel()} elements out of tolerance "
            f"(rtol={rtol}, atol={atol} x magnitude); "
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


# ---------------------------------------------------------------------------------------------------
# References

def conv_reference(fn, inputs, grad_output, *, needs_grad=None, dtype=torch.float64):
    """Runs fn(*inputs) on the CPU in `dtype` (float64 unless told) and returns (output, grads) with grads of
    every tensor input (None for None inputs), given grad_output (cast likewise)."""
    leaves = []
    for i, t in enumerate(inputs):
        if t is None:
            leaves.append(None)
            continue
        wants = needs_grad[i] if needs_grad is not None else True
        leaves.append(t.detach().cpu().to(dtype).requires_grad_(wants))
    out = fn(*leaves)
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    grads = torch.autograd.grad(out, wanted, grad_output.detach().cpu().to(dtype)) if wanted else ()
    it = iter(grads)
    return out.detach(), [None if (t is None or not t.requires_grad) else next(it) for t in leaves]


def reference_with_magnitudes(fn, inputs, grad_output, *, needs_grad=None):
    """conv_reference on the inputs, and on their absolute values (the error-scale magnitudes)."""
    out, grads = conv_reference(fn, inputs, grad_output, needs_grad=needs_grad)
    abs_inputs = [None if t is None else t.detach().abs() for t in inputs]
    mag_out, mag_grads = conv_reference(fn, abs_inputs, grad_output.detach().abs(), needs_grad=needs_grad)
    return out, grads, mag_out, mag_grads


def depthwise_reference(x, w, b, stride, padding, dilation):
    """fusedops.depthwise_conv2d as F.conv2d(groups=C)."""
    return F.conv2d(x, w, b, stride, padding, dilation, groups=x.shape[1])


def depthwise_reference_grads(x, w, b, stride, padding, dilation, grad_output, *, dtype=torch.float64):
    """(output, grad_input, grad_weight, grad_bias) of depthwise_reference on the CPU in `dtype` (float64
    unless told); grad_bias is None without a bias."""
    out, grads = conv_reference(lambda *a: depthwise_reference(*a, stride, padding, dilation), (x, w, b), grad_output,
                                dtype=dtype)
    return (out, *grads)


def outputs_and_grads(fn, x, w, b, go_seed=1):
    """fn(x, w, b) and its gradients for x, w and b, given a random grad_output drawn from seed `go_seed`."""
    out = fn(x, w, b)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(go_seed))
    return (out, *torch.autograd.grad(out, (x, w, b), go))


class OpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the names of the ATen/custom ops that reach the dispatcher."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------------------------------------------
# Modules and models

def randomize_batch_norms(module, seed=1):
    """Gives every nn.BatchNorm2d in `module` non-trivial running statistics and affine parameters (drawn from
    `seed`), so that parity checks exercise batch-norm folding; fresh ones fold to the identity. Returns
    `module`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=g, dtype=torch.float64) + 0.5)
                bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=g, dtype=torch.float64))
                bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=g, dtype=torch.float64))
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=g, dtype=torch.float64) + 0.5)
    return module



def randomize_conv_biases(module, seed=1):
    """Draws every nn.Conv2d bias in `module` from N(0, 0.5) (from `seed`), so that folding checks see biases
    before batch norms and elsewhere. Returns `module`."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in module.modules():
            if isinstance(conv, torch.nn.Conv2d) and conv.bias is not None:
                conv.bias.copy_(0.5 * torch.randn(conv.bias.shape, generator=g, dtype=torch.float64))
    return module


def replaced_counts(report):
    """{fused class name: how many modules fusedops.convert replaced by it} of a ConversionReport."""
    counts = {}
    for _, _, new in report.replaced:
        counts[new] = counts.get(new, 0) + 1
    return counts


def check_convert_eval_matches(make_model, layout):
    """fusedops.convert of the float64 eval model `make_model()` gives its outputs on a (2, 3, 64, 64) input in
    `layout`, and so does the converted float32 model frozen, under inference mode (the deployment path).
    Returns (the report, the converted float64 model, the input)."""
    original = make_model().eval()
    converted, report = fusedops.convert(original, report=True)
    x = make_input((2, 3, 64, 64), layout, dtype=torch.float64)
    with torch.no_grad():
        expected = original(x)
        assert_close_scaled(converted(x), expected, **tolerance(torch.float64), name="float64")
        frozen = fusedops.freeze(fusedops.convert(make_model().float().eval()))
    with torch.inference_mode():
        assert_close_scaled(frozen(x.float()), expected, **tolerance(torch.float32), name="float32 frozen")
    return report, converted, x


def check_compile_and_export(model):
    """torch.compile (fullgraph) and torch.export of the eval-mode `model` give its outputs on a small
    channels_last input."""
    x = make_input((2, 3, 32, 32), "channels_last")
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        assert_close_scaled(compiled(x), expected, **tolerance(torch.float32))
        exported = torch.export.export(model, (x,))
        assert_close_scaled(exported.module()(x), expected, **tolerance(torch.float32))

def check_convert_shares_state(make_model):
    """fusedops.convert of `make_model(seed)` (a float32 model whose weights `seed` draws) holds the original's
    parameters and buffers and has its state-dict keys, leaving the original's modules as they were; checkpoints
    load into either, both ways; an optimizer built on the original trains the converted model."""
    original = make_model(0).eval()
    kinds = [type(m) for m in original.modules()]
    converted = fusedops.convert(original)
    assert [type(m) for m in original.modules()] == kinds  # not inplace: the original's modules are its own
    assert [id(p) for p in converted.parameters()] == [id(p) for p in original.parameters()]
    assert [id(b) for b in converted.buffers()] == [id(b) for b in original.buffers()]
    assert list(converted.state_dict()) == list(original.state_dict())
    other = make_model(3).eval()
    converted.load_state_dict(other.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close_scaled(converted(x), other(x), **tolerance(torch.float32))
        other.load_state_dict(fusedops.convert(make_model(4)).state_dict())
        assert_close_scaled(other(x), make_model(4).eval()(x), **tolerance(torch.float32))
    optimizer = torch.optim.SGD(original.parameters(), lr=0.5)
    before = converted(x).detach()
    converted.train()
    converted(torch.randn(2, 3, 64, 64)).square().mean().backward()
    optimizer.step()
    converted.eval()
    with torch.no_grad():
        assert not torch.allclose(converted(x), before)

# ---------------------------------------------------------------------------------------------------
# depthwise_conv2d checks (CPU parity and CPU-path files)

DEPTHWISE_GRAD_NAMES = ("grad_input", "grad_weight", "grad_bias")


def check_depthwise_parity(shape, kernel, *, stride=1, padding=0, dilation=1, multiplier=1, bias=True,
                           layout="nchw", dtype=torch.float32, backend="native", backward=True):
    """Forward and all gradients of fusedops.depthwise_conv2d on `backend` vs float64 F.conv2d."""
    n, c, h, w_ = shape
    kh, kw = pair(kernel)
    x = make_input(shape, layout, dtype=dtype, requires_grad=backward)
    weight = (torch.randn(c * multiplier, 1, kh, kw, dtype=torch.float64) / (kh * kw) ** 0.5).to(dtype)
    weight.requires_grad_(backward)
    b = torch.randn(c * multiplier, dtype=torch.float64).to(dtype).requires_grad_(backward) if bias else None
    with fusedops.use_backend(backend):
        out = fusedops.depthwise_conv2d(x, weight, b, stride=stride, padding=padding, dilation=dilation)
    expected_fmt = CL if layout == "channels_last" else torch.contiguous_format
    assert out.dtype == dtype
    go = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    ref, ref_grads, mag, mag_grads = reference_with_magnitudes(
        lambda *a: depthwise_reference(*a, stride, padding, dilation), (x, weight, b), go)
    tol = tolerance(dtype)
    assert_close_scaled(out, ref, mag, **tol, name="output")
    assert out.is_contiguous(memory_format=expected_fmt), f"output strides {out.stride()} for {layout} input"
    if backward:
        grads = torch.autograd.grad(out, [t for t in (x, weight, b) if t is not None], go)
        if b is None:
            grads = (*grads, None)
        assert_close_grads(grads, ref_grads, mag_grads, **tol, names=DEPTHWISE_GRAD_NAMES)
        assert grads[0].shape == x.shape and grads[1].shape == weight.shape
    return out


def check_depthwise_requested_grads(shape, layout, kernel=3, stride=1, padding=1, wanted_sets=None):
    """Only some of input, weight, bias requiring grad (every such subset, or `wanted_sets`): the
    requested gradients are right against float64 F.conv2d, the others stay None."""
    c = shape[1]
    x = make_input(shape, layout)
    w = torch.randn(c, 1, kernel, kernel)
    b = torch.randn(c)
    with torch.no_grad():
        out_shape = depthwise_reference(x, w, b, stride, padding, 1).shape
    go = torch.randn(out_shape)
    _, ref_grads, _, mags = reference_with_magnitudes(lambda *a: depthwise_reference(*a, stride, padding, 1),
                                                      (x, w, b), go)
    tol = tolerance(torch.float32)
    for wanted in wanted_sets or [r for r in itertools.product((False, True), repeat=3) if any(r)]:
        leaves = [t.detach().clone().requires_grad_(r) for t, r in zip((x, w, b), wanted)]
        with fusedops.use_backend("native"):
            out = fusedops.depthwise_conv2d(*leaves, stride=stride, padding=padding)
        out.backward(go)
        for leaf, r, ref, mag, name in zip(leaves, wanted, ref_grads, mags, DEPTHWISE_GRAD_NAMES):
            if r:
                assert_close_scaled(leaf.grad, ref, mag, **tol, name=name)
            else:
                assert leaf.grad is None


# ---------------------------------------------------------------------------------------------------
# dwpw_conv2d checks (CPU and Triton files)

DWPW_GRAD_NAMES = ("grad_input", "grad_dw_weight", "grad_dw_bias", "grad_pw_weight", "grad_pw_bias")


def make_dwpw_weights(c, cout, kernel, multiplier=1, dw_bias=True, pw_bias=True, dtype=torch.float32,
                      requires_grad=True):
    """[dw_weight, dw_bias, pw_weight, pw_bias] of a dwpw_conv2d from `c` channels to `cout`, scaled to keep
    the output near unit variance; a bias left out is None."""
    kh, kw = pair(kernel)
    k = c * multiplier
    dw_w = (torch.randn(k, 1, kh, kw, dtype=torch.float64) / (kh * kw) ** 0.5).to(dtype)
    dw_b = (0.5 * torch.randn(k, dtype=torch.float64)).to(dtype) if dw_bias else None
    pw_w = (torch.randn(cout, k, 1, 1, dtype=torch.float64) / k ** 0.5).to(dtype)
    pw_b = (0.5 * torch.randn(cout, dtype=torch.float64)).to(dtype) if pw_bias else None
    return [None if t is None else t.requires_grad_(requires_grad) for t in (dw_w, dw_b, pw_w, pw_b)]


def dwpw_reference(x, dw_w, dw_b, pw_w, pw_b, stride, padding, dilation, mid, out):
    """fusedops.dwpw_conv2d unfused (the pure-PyTorch reference backend), with int or pair geometry."""
    return _reference.dwpw_conv2d(x, dw_w, dw_b, pw_w, pw_b, pair(stride), pair(padding), pair(dilation), mid, out)


def check_dwpw_parity(shape, cout, kernel=3, *, stride=1, padding=1, dilation=1, multiplier=1, mid="relu6",
                      out="relu6", layout="channels_last", dw_bias=True, pw_bias=True, dtype=torch.float32,
                      backend="native", backward=True):
    """Forward and every gradient of fusedops.dwpw_conv2d on `backend` vs the float64 unfused reference."""
    n, c, h, w = shape
    x = make_input(shape, layout, dtype=dtype, requires_grad=backward)
    weights = make_dwpw_weights(c, cout, kernel, multiplier, dw_bias, pw_bias, dtype, backward)
    inputs = [x, *weights]
    with fusedops.use_backend(backend):
        y = fusedops.dwpw_conv2d(*inputs, stride=stride, padding=padding, dilation=dilation, mid_activation=mid,
                                 out_activation=out)
    assert y.dtype == dtype
    fmt = CL if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)
    leaves = [None if t is None else t.detach().double().requires_grad_(backward) for t in inputs]
    ref = dwpw_reference(*leaves, stride, padding, dilation, mid, out)
    tol = tolerance(dtype)
    assert_close_scaled(y, ref, rtol=tol["rtol"], atol=tol["atol"], name="output")
    if not backward:
        return
    actual = check_grads_against_reference(y, inputs, ref, leaves, tol, DWPW_GRAD_NAMES)
    if layout == "channels_last":
        assert actual[0].is_contiguous(memory_format=CL)


def check_grads_against_reference(y, inputs, ref, leaves, tol, names):
    """The gradients of `y` with respect to `inputs` (None where an optional argument was not given) against those
    of the float64 reference `ref` with respect to `leaves`, for one random grad_output; returns the former."""
    go = torch.randn(y.shape, dtype=torch.float64)
    grads = torch.autograd.grad(y, [t for t in inputs if t is not None], go.to(dtype=y.dtype, device=y.device))
    ref_grads = torch.autograd.grad(ref, [t for t in leaves if t is not None], go)
    it, rit = iter(grads), iter(ref_grads)
    actual = [None if t is None else next(it) for t in inputs]
    expected = [None if t is None else next(rit) for t in leaves]
    for a, t in zip(actual, inputs):
        if a is not None:
            assert a.dtype == t.dtype and a.shape == t.shape
    assert_close_grads(actual, expected, rtol=tol["rtol"], atol=tol["atol"], names=list(names))
    return actual


IR_GRAD_NAMES = ("grad_input", "grad_expand_weight", "grad_expand_bias", "grad_dw_weight", "grad_dw_bias",
                 "grad_project_weight", "grad_project_bias", "grad_se_reduce_weight", "grad_se_reduce_bias",
                 "grad_se_expand_weight", "grad_se_expand_bias")


def make_inverted_residual_weights(c, hidden, cout, kernel=3, *, expand=True, biases=True, dtype=torch.float32,
                                   requires_grad=True):
    """[expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias] of an inverted_residual from
    `c` channels through `hidden` to `cout` (without `expand`: hidden == c, no expand weights; without `biases`: no
    biases), scaled to keep each stage near unit variance."""
    kh, kw = pair(kernel)
    hidden = hidden if expand else c

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(shape, dtype=torch.float64)).to(dtype)

    ew = randn(hidden, c, 1, 1, scale=c ** -0.5) if expand else None
    eb = randn(hidden, scale=0.5) if expand and biases else None
    dw = randn(hidden, 1, kh, kw, scale=(kh * kw) ** -0.5)
    db = randn(hidden, scale=0.5) if biases else None
    pw = randn(cout, hidden, 1, 1, scale=hidden ** -0.5)
    pb = randn(cout, scale=0.5) if biases else None
    return [None if t is None else t.requires_grad_(requires_grad) for t in (ew, eb, dw, db, pw, pb)]


def make_squeeze_excitation(hidden, squeeze, *, gate="hardsigmoid", activation="relu", biases=True,
                            dtype=torch.float32, requires_grad=True):
    """An inverted_residual's `se` tuple (reduce_weight, reduce_bias, expand_weight, expand_bias, gate,
    activation) from `hidden` channels through `squeeze`, scaled so the gate's input stays near unit variance
    (both halves of a hardsigmoid's range)."""
    def randn(*shape, scale=1.0):
        return (scale * torch.randn(shape, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)

    return (randn(squeeze, hidden, 1, 1, scale=2 * hidden ** -0.5), randn(squeeze, scale=0.5) if biases else None,
            randn(hidden, squeeze, 1, 1, scale=2 * squeeze ** -0.5), randn(hidden, scale=0.5) if biases else None,
            gate, activation)


def inverted_residual_reference(x, ew, eb, dw, db, pw, pb, stride, padding, dilation, activation, residual,
                                se=None):
    """fusedops.inverted_residual unfused (the pure-PyTorch reference backend), with int or pair geometry; `se` as
    the op takes it (a 6-tuple here)."""
    rw, rb, sew, seb, gate, se_act = (None, None, None, None, "hardsigmoid", "relu") if se is None else se
    return _reference.inverted_residual(x, ew, eb, dw, db, pw, pb, rw, rb, sew, seb, pair(stride), pair(padding),
                                        pair(dilation), "none" if activation is None else activation, residual,
                                        "none" if se_act is None else se_act, gate)


def check_inverted_residual_parity(shape, hidden, cout, kernel=3, *, stride=1, padding=None, dilation=1,
                                   activation="relu6", residual=None, expand=True, biases=True,
                                   layout="channels_last", dtype=torch.float32, backend="native", backward=True,
                                   device="cpu", se=None):
    """Forward and every gradient of fusedops.inverted_residual on `backend` vs the float64 unfused reference;
    `se`: None or make_squeeze_excitation's keyword arguments plus `squeeze` (the reduced channels)."""
    n, c, h, w = shape
    kh, kw = pair(kernel)
    d = pair(dilation)
    padding = (d[0] * (kh - 1) // 2, d[1] * (kw - 1) // 2) if padding is None else pair(padding)
    x = make_input(shape, layout, dtype=dtype, device=device, requires_grad=backward)
    weights = [None if t is None else t.detach().to(device).requires_grad_(backward)
               for t in make_inverted_residual_weights(c, hidden, cout, kernel, expand=expand, biases=biases,
                                                       dtype=dtype, requires_grad=False)]
    se_args = None
    if se is not None:
        se = dict(se)
        se_args = make_squeeze_excitation(hidden if expand else c, se.pop("squeeze"), dtype=dtype,
                                          requires_grad=False, **se)
        se_args = tuple(t.detach().to(device).requires_grad_(backward) if isinstance(t, torch.Tensor) else t
                        for t in se_args)
    inputs = [x, *weights] + (list(se_args[:4]) if se_args else [])
    with fusedops.use_backend(backend):
        y = fusedops.inverted_residual(*inputs[:7], stride=stride, padding=padding, dilation=dilation,
                                       activation=activation, residual=residual, se=se_args)
    if residual is None:
        residual = pair(stride) == (1, 1) and cout == c and tuple(y.shape[2:]) == (h, w)
    assert y.dtype == dtype and y.device == x.device
    fmt = CL if dense_layout(layout) == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)
    leaves = [None if t is None else t.detach().cpu().double().requires_grad_(backward) for t in inputs]
    ref = inverted_residual_reference(*leaves[:7], stride, padding, dilation, activation, residual,
                                      se=(*leaves[7:], *se_args[4:]) if se_args else None)
    tol = tolerance(dtype)
    assert_close_scaled(y, ref, rtol=tol["rtol"], atol=tol["atol"], name="output")
    if not backward:
        return
    actual = check_grads_against_reference(y, inputs, ref, leaves, tol, IR_GRAD_NAMES[:len(inputs)])
    if dense_layout(layout) == "channels_last" and layout == "channels_last":
        assert actual[0].is_contiguous(memory_format=CL)


GHOST_GRAD_NAMES = ("grad_input", "grad_primary_weight", "grad_primary_bias", "grad_cheap_weight", "grad_cheap_bias",
                    "grad_residual")


def make_ghost_module_weights(c, out_channels, ratio=2, dw_size=3, *, biases=True, dtype=torch.float32,
                              requires_grad=True):
    """[primary_weight, primary_bias, cheap_weight, cheap_bias] of a ghost_module from `c` channels to `out_channels`
    with timm's channel counts (init = ceil(out / ratio), ratio - 1 cheap filters per channel), scaled to keep each
    half near unit variance."""
    kh, kw = pair(dw_size)
    init = -(-out_channels // ratio)

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(shape, dtype=torch.float64)).to(dtype).requires_grad_(requires_grad)

    return [randn(init, c, 1, 1, scale=c ** -0.5), randn(init, scale=0.5) if biases else None,
            randn(init * (ratio - 1), 1, kh, kw, scale=(kh * kw) ** -0.5), randn(init * (ratio - 1), scale=0.5)
            if biases else None]


def ghost_module_reference(x, pw, pb, cw, cb, out_channels, stride, activation, residual=None):
    """fusedops.ghost_module unfused (the pure-PyTorch reference backend), with int or pair stride."""
    return _reference.ghost_module(x, pw, pb, cw, cb, residual, out_channels, pair(stride),
                                   "none" if activation is None else activation)


def check_ghost_module_parity(shape, out_channels, ratio=2, dw_size=3, *, stride=1, activation="relu", biases=True,
                              residual=False, layout="channels_last", dtype=torch.float32, backend="native",
                              backward=True, device="cpu"):
    """Forward and every gradient of fusedops.ghost_module on `backend` vs the float64 unfused reference."""
    n, c, h, w = shape
    x = make_input(shape, layout, dtype=dtype, device=device, requires_grad=backward)
    weights = [None if t is None else t.detach().to(device).requires_grad_(backward)
               for t in make_ghost_module_weights(c, out_channels, ratio, dw_size, biases=biases, dtype=dtype,
                                                  requires_grad=False)]
    s = pair(stride)
    out_shape = (n, out_channels, (h - 1) // s[0] + 1, (w - 1) // s[1] + 1)
    res = make_input(out_shape, layout, dtype=dtype, device=device, requires_grad=backward) if residual else None
    inputs = [x, *weights, res]
    with fusedops.use_backend(backend):
        y = fusedops.ghost_module(x, *weights, out_channels, stride=stride, activation=activation, residual=res)
    assert y.dtype == dtype and y.device == x.device and tuple(y.shape) == out_shape
    fmt = CL if dense_layout(layout) == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)
    leaves = [None if t is None else t.detach().cpu().double().requires_grad_(backward) for t in inputs]
    ref = ghost_module_reference(*leaves[:5], out_channels, stride, activation, leaves[5])
    tol = tolerance(dtype)
    assert_close_scaled(y, ref, rtol=tol["rtol"], atol=tol["atol"], name="output")
    if not backward:
        return
    actual = check_grads_against_reference(y, inputs, ref, leaves, tol, GHOST_GRAD_NAMES)
    if layout == "channels_last":
        assert actual[0].is_contiguous(memory_format=CL)


SHUFFLE_UNIT_GRAD_NAMES = ("grad_input", "grad_expand_weight", "grad_expand_bias", "grad_dw_weight", "grad_dw_bias",
                           "grad_project_weight", "grad_project_bias", "grad_shortcut_dw_weight",
                           "grad_shortcut_dw_bias", "grad_shortcut_pw_weight", "grad_shortcut_pw_bias")


def make_shufflenet_v2_unit_weights(c, branch_channels=None, kernel=3, *, shortcut=False, biases=True,
                                    dtype=torch.float32, requires_grad=True):
    """[expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, shortcut_dw_weight,
    shortcut_dw_bias, shortcut_pw_weight, shortcut_pw_bias] of a shufflenet_v2_unit of `c` input channels: without
    `shortcut` (the stride-1 unit) a branch of c / 2 channels on the input's second half and no shortcut weights, with
    it (the down-sampling unit) halves of `branch_channels` (default c) channels, both reading the whole input.
    `biases`: True, False or a set of the biases' names (expand, dw, project, shortcut_dw, shortcut_pw) to give.
    Scaled to keep each stage near unit variance."""
    kh, kw = pair(kernel)
    b = c // 2 if not shortcut else (c if branch_channels is None else branch_channels)
    inputs = c if shortcut else c // 2
    given = {"expand", "dw", "project", "shortcut_dw", "shortcut_pw"} if biases is True else set(biases or ())

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(shape, dtype=torch.float64)).to(dtype)

    def bias(name, n):
        return randn(n, scale=0.5) if name in given else None

    weights = [randn(b, inputs, 1, 1, scale=inputs ** -0.5), bias("expand", b),
               randn(b, 1, kh, kw, scale=(kh * kw) ** -0.5), bias("dw", b), randn(b, b, 1, 1, scale=b ** -0.5),
               bias("project", b)]
    if shortcut:
        weights += [randn(c, 1, kh, kw, scale=(kh * kw) ** -0.5), bias("shortcut_dw", c),
                    randn(b, c, 1, 1, scale=c ** -0.5), bias("shortcut_pw", b)]
    else:
        weights += [None] * 4
    return [None if t is None else t.requires_grad_(requires_grad) for t in weights]


def shufflenet_v2_unit_reference(x, ew, eb, dw, db, pw, pb, sdw, sdb, spw, spb, stride, padding, dilation,
                                 activation):
    """fusedops.shufflenet_v2_unit as torchvision's ShuffleNetV2 unit computes it (batch norms folded), with int or
    pair geometry: the branches as F.conv2d calls, torch.cat, then F.channel_shuffle with 2 groups."""
    stride, padding, dilation = pair(stride), pair(padding), pair(dilation)
    acts = {None: lambda t: t, "none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
            "silu": F.silu}
    act = acts[activation]

    def branch(t):
        t = act(F.conv2d(t, ew, eb))
        t = F.conv2d(t, dw, db, stride, padding, dilation, groups=t.shape[1])
        return act(F.conv2d(t, pw, pb))

    if sdw is None:
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, branch(x2)), dim=1)
    else:
        shortcut = act(F.conv2d(F.conv2d(x, sdw, sdb, stride, padding, dilation, groups=x.shape[1]), spw, spb))
        out = torch.cat((shortcut, branch(x)), dim=1)
    return F.channel_shuffle(out, 2)


def check_shufflenet_v2_unit_parity(shape, branch_channels=None, kernel=3, *, shortcut=False, stride=1, padding=None,
                                    dilation=1, activation="relu", biases=True, layout="channels_last",
                                    dtype=torch.float32, backend="native", backward=True, device="cpu"):
    """Forward and every gradient of fusedops.shufflenet_v2_unit on `backend` vs the float64 unfused unit
    (torch.cat and F.channel_shuffle)."""
    n, c, h, w = shape
    kh, kw = pair(kernel)
    d = pair(dilation)
    padding = (d[0] * (kh - 1) // 2, d[1] * (kw - 1) // 2) if padding is None else pair(padding)
    x = make_input(shape, layout, dtype=dtype, device=device, requires_grad=backward)
    weights = [None if t is None else t.detach().to(device).requires_grad_(backward)
               for t in make_shufflenet_v2_unit_weights(c, branch_channels, kernel, shortcut=shortcut, biases=biases,
                                                        dtype=dtype, requires_grad=False)]
    inputs = [x, *weights]
    with fusedops.use_backend(backend):
        y = fusedops.shufflenet_v2_unit(x, *weights[:6], shortcut=tuple(weights[6:]) if shortcut else None,
                                        stride=stride, padding=padding, dilation=dilation, activation=activation)
    assert y.dtype == dtype and y.device == x.device
    assert y.shape[1] == 2 * weights[4].shape[0]
    fmt = CL if dense_layout(layout) == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)
    leaves = [None if t is None else t.detach().cpu().double().requires_grad_(backward) for t in inputs]
    ref = shufflenet_v2_unit_reference(*leaves, stride, padding, dilation, activation)
    tol = tolerance(dtype)
    assert_close_scaled(y, ref, rtol=tol["rtol"], atol=tol["atol"], name="output")
    if not backward:
        return
    actual = check_grads_against_reference(y, inputs, ref, leaves, tol, SHUFFLE_UNIT_GRAD_NAMES)
    if layout == "channels_last" and backend != "reference":  # the reference's gradients are PyTorch autograd's
        assert actual[0].is_contiguous(memory_format=CL)


def module_outputs_and_grads(module, x, forward=None, seed=None):
    """module(x) (or forward(x)) and the gradients of x and of every parameter of `module` for a seeded random
    grad_output; `seed`, when given, seeds the forward (dropout)."""
    x = x.detach().clone().requires_grad_()
    if seed is not None:
        torch.manual_seed(seed)
    y = (forward or module)(x)
    grad_output = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(2))
    return y, torch.autograd.grad(y, [x, *module.parameters()], grad_output)


def grad_names(module):
    """Names of module_outputs_and_grads' gradients, for failure messages."""
    return ["grad_input", *(f"grad {name}" for name, _ in module.named_parameters())]


def assert_close_train_grads(grads, ref_grads, names):
    """Float64 train-mode gradients of a model against its reference's. In train mode the bias of each block's
    last batch norm has a zero gradient (every path from it ends in a train-mode batch norm, which removes
    per-channel shifts): its values are rounding noise, so parameter gradients are compared at the scale of the
    model's largest one."""
    tol = tolerance(torch.float64)
    assert_close_scaled(grads[0], ref_grads[0], **tol, name=names[0])
    scale = max(g.abs().max().item() for g in ref_grads[1:])
    for a, e, name in zip(grads[1:], ref_grads[1:], names[1:]):
        assert_close_scaled(a, e, **tol, name=name, min_scale=scale)


def check_training_matches(model, ref, inputs, *, lr, seeds=None, train_grads=False):
    """SGD steps (momentum 0.9), one per input of `inputs`, on `model` and on its reference `ref` (same state, both
    in train mode): float64 outputs and every gradient agree at each step (`train_grads`: parameter gradients at
    the scale of the largest, assert_close_train_grads), and afterwards every buffer (running statistics moved
    from where they started, num_batches_tracked = the steps). `seeds` seed each step's forward (dropout)."""
    tol = tolerance(torch.float64)
    model.train()
    ref.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=lr, momentum=0.9)
    initial = {name: b.clone() for name, b in model.named_buffers()}
    for step, x in enumerate(inputs):
        seed = None if seeds is None else seeds[step]
        y, grads = module_outputs_and_grads(model, x, seed=seed)
        expected, ref_grads = module_outputs_and_grads(ref, x, seed=seed)
        assert_close_scaled(y, expected, **tol, name=f"output, step {step}")
        if train_grads:
            assert_close_train_grads(grads, ref_grads, grad_names(model))
        else:
            assert_close_grads(grads, ref_grads, **tol, names=grad_names(model))
        for p, g, q, gr in zip(model.parameters(), grads[1:], ref.parameters(), ref_grads[1:]):
            p.grad, q.grad = g, gr
        opt.step()
        opt_ref.step()
    for (name, b), r in zip(model.named_buffers(), ref.buffers()):
        if name.endswith("num_batches_tracked"):
            assert b.item() == r.item() == len(inputs), name
        else:
            assert_close_scaled(b, r, **tol, name=name)
            assert not torch.equal(b, initial[name]), name


# ---------------------------------------------------------------------------------------------------
# _ghost_bottleneck (GhostNet's bottlenecks without squeeze-excitation) against the ops one after another:
# tests/test_ghost_module.py (CPU) and tests/test_cuda_ghost_module.py.

def assert_ghost_matches(y, expected, dtype, layout):
    """`y` is in the input's layout and matches the float64 `expected` at `dtype`'s tolerance."""
    fmt = CL if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt)
    tol = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}[dtype]
    torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


def ghost_bottleneck_case(shape, mid_channels, ratio=2, dw_size=3, second_ratio=None, second_dw_size=None,
                     dtype=torch.float32, layout="channels_last", biases=True, out_channels=None):
    x = make_input(shape, layout, dtype=dtype)
    first = make_ghost_module_weights(shape[1], mid_channels, ratio, dw_size, dtype=dtype, requires_grad=False,
                                      biases=biases)
    second = make_ghost_module_weights(mid_channels, out_channels or shape[1], second_ratio or ratio,
                                       second_dw_size or dw_size, dtype=dtype, requires_grad=False, biases=biases)
    if not biases:
        first[3] = second[3] = None
    return x, first, second


def dw_stage(mid_channels, k, stride, dtype=torch.float32, bias=True):
    weight = (torch.randn(mid_channels, 1, k, k, dtype=torch.float64) / k).to(dtype)
    return weight, (0.5 * torch.randn(mid_channels, dtype=torch.float64)).to(dtype) if bias else None, stride


def bottleneck_op(x, first, second, mid_channels, activation="relu", second_activation=None, packed=None,
                second_packed=None, dw=None, residual="input", out_channels=None):
    """The op; `residual` "input": the identity shortcut; `dw`: (weight, bias, stride) of the depthwise stage."""
    dw_w, dw_b, dw_s = dw or (None, None, 1)
    dw_s = [dw_s, dw_s] if isinstance(dw_s, int) else list(dw_s)
    return torch.ops.fusedops._ghost_bottleneck(x, *first, mid_channels, activation or "none", dw_w, dw_b, dw_s,
                                                *second, out_channels or x.shape[1], second_activation or "none",
                                                x if isinstance(residual, str) else residual, packed, second_packed)


def bottleneck_wrapper(backend):
    """A callable like bottleneck_op that calls the Python ghost_bottleneck (fusedops/ops/ghost_module.py) on `backend`
    instead of the native op: the path it takes there (native op, Triton kernels or the ops one after another)
    depends on the backend, the device and whether gradients are wanted."""
    def call(x, first, second, mid_channels, activation="relu", second_activation=None, packed=None,
             second_packed=None, dw=None, residual="input", out_channels=None):
        from fusedops.ops.ghost_module import ghost_bottleneck

        dw_w, dw_b, dw_s = dw or (None, None, 1)
        dw_s = (dw_s, dw_s) if isinstance(dw_s, int) else tuple(dw_s)
        with fusedops.use_backend(backend):
            return ghost_bottleneck(x, *first, mid_channels, activation or "none", dw_w, dw_b, dw_s, *second,
                                    out_channels or x.shape[1], second_activation or "none",
                                    x if isinstance(residual, str) else residual, packed, second_packed)

    return call


def ghost_bottleneck_reference(x, first, second, mid_channels, activation="relu", second_activation=None, dw=None,
                          residual="input", out_channels=None):
    """The ops one after another, in float64, each output rounded to x's dtype as the unfused sequence stores it."""
    up = [[None if t is None else t.double() for t in ws] for ws in (first, second)]
    mid = ghost_module_reference(x.double(), *up[0], mid_channels, 1, activation).to(x.dtype).double()
    if dw is not None:
        dw_w, dw_b, dw_s = dw
        k = dw_w.shape[2]
        mid = torch.nn.functional.conv2d(mid, dw_w.double(), None if dw_b is None else dw_b.double(), dw_s, k // 2, 1,
                                         mid_channels).to(x.dtype).double()
    res = x if isinstance(residual, str) else residual
    return ghost_module_reference(mid, *up[1], out_channels or x.shape[1], 1, second_activation,
                                  residual=None if res is None else res.double())


def check_ghost_bottleneck(shape, mid_channels, ratio=2, dw_size=3, *, second_ratio=None, second_dw_size=None,
                      activation="relu", second_activation=None, dtype=torch.float32, layout="channels_last",
                      biases=True, depthwise=None, residual="input", out_channels=None, device="cpu",
                      call=bottleneck_op):
    """_ghost_bottleneck on `device` against the ops one after another in float64. `depthwise`: (kernel, stride) of a
    depthwise stage between the modules; `residual`: "input" (the identity shortcut), "tensor" (a given one, as a
    projecting shortcut's) or None; `call`: what runs it, the native op (bottleneck_op) or bottleneck_wrapper's."""
    x, first, second = ghost_bottleneck_case(shape, mid_channels, ratio, dw_size, second_ratio, second_dw_size, dtype,
                                        layout, biases, out_channels)
    dw = None if depthwise is None else dw_stage(mid_channels, *depthwise, dtype=dtype, bias=biases)
    n, _, h, w = shape
    if dw is not None:
        s = (dw[2], dw[2]) if isinstance(dw[2], int) else dw[2]
        h, w = (h - 1) // s[0] + 1, (w - 1) // s[1] + 1
    if residual == "tensor":
        residual = make_input((n, out_channels or shape[1], h, w), layout, dtype=dtype)
    def on(t):
        return t.to(device) if isinstance(t, torch.Tensor) else t

    y = call(on(x), [on(t) for t in first], [on(t) for t in second], mid_channels, activation, second_activation,
             dw=None if dw is None else [on(t) for t in dw], residual=on(residual), out_channels=out_channels)
    assert y.device == on(x).device
    y = y.cpu()
    expected = ghost_bottleneck_reference(x, first, second, mid_channels, activation, second_activation, dw, residual,
                                     out_channels)
    assert y.dtype == dtype and y.shape == expected.shape == (n, out_channels or shape[1], h, w)
    assert_ghost_matches(y, expected, dtype, layout)
    return y
