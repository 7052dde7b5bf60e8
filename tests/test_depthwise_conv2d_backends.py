"""Backend selection for fusedops.depthwise_conv2d: the reference backend against the native one, which
backend each setting runs (use_backend, set_backend, FUSEDOPS_BACKEND), build_info, and the fallback to
the reference backend when the compiled extension cannot be loaded."""

import pytest
import torch

import fusedops
from fusedops import _backend

from conftest import TRITON_INTERPRET, OpRecorder, depthwise_reference, make_input, outputs_and_grads, requires_ops

pytestmark = requires_ops


# ---------------------------------------------------------------------------------------------------
# Backends and build info

@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("multiplier", (1, 2))
def test_reference_backend_matches_native(layout, multiplier):
    x = make_input((2, 20, 11, 9), layout, requires_grad=True)
    w = torch.randn(20 * multiplier, 1, 3, 3, requires_grad=True)
    b = torch.randn(20 * multiplier, requires_grad=True)
    results = {}
    for backend in ("native", "reference"):
        with fusedops.use_backend(backend):
            results[backend] = outputs_and_grads(lambda x, w, b: fusedops.depthwise_conv2d(x, w, b, 2, 1), x, w, b)
    for a, e in zip(results["native"], results["reference"]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_backend_dispatch(monkeypatch):
    """'auto' and 'native' run the C++ op on CPU; 'reference' runs the pure-PyTorch implementation."""
    from fusedops.ops import _reference

    assert _backend.resolve(torch.device("cpu"), "depthwise_conv2d") == "native"
    calls = []
    original = _reference.depthwise_conv2d
    monkeypatch.setattr(_reference, "depthwise_conv2d", lambda *a: calls.append(1) or original(*a))
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    for backend, expect_native in (("auto", True), ("native", True), ("reference", False)):
        calls.clear()
        with fusedops.use_backend(backend), OpRecorder() as rec:
            out = fusedops.depthwise_conv2d(x, w, padding=1)
        ran_native = "fusedops.depthwise_conv2d.default" in rec.ops
        assert ran_native == expect_native, (backend, rec.ops)
        assert bool(calls) != expect_native, backend
        torch.testing.assert_close(out, depthwise_reference(x, w, None, 1, 1, 1), rtol=1e-5, atol=1e-5)


def test_use_backend_validates_and_restores():
    before = fusedops.get_backend()
    with pytest.raises(ValueError, match="backend must be one of"):
        with fusedops.use_backend("cuda"):
            pass
    with pytest.raises(ValueError, match="backend must be one of"):
        fusedops.set_backend("fast")
    assert fusedops.get_backend() == before
    with fusedops.use_backend("reference"):
        assert fusedops.get_backend() == "reference"
        with pytest.raises(KeyError):
            with fusedops.use_backend("native"):
                assert fusedops.get_backend() == "native"
                raise KeyError("inner")
        assert fusedops.get_backend() == "reference"
    assert fusedops.get_backend() == before
    fusedops.set_backend("reference")
    try:
        assert fusedops.get_backend() == "reference"
    finally:
        fusedops.set_backend(before)


@pytest.mark.skipif(TRITON_INTERPRET, reason="TRITON_INTERPRET=1 makes the Triton backend usable on CPU")
def test_triton_backend_on_cpu_without_interpreter():
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    with fusedops.use_backend("triton"):
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1|Triton is not installed"):
            fusedops.depthwise_conv2d(x, w)


def test_build_info():
    info = fusedops.build_info()
    for key in ("version", "torch", "cpu", "cuda", "cuda_arch_list", "triton", "cpu_capability"):
        assert key in info, key
    assert info["version"] == fusedops.__version__
    assert info["torch"] == torch.__version__
    assert info["cpu"] is True
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cuda_arch_list"], list)
    assert (info["cuda_arch_list"] != []) == info["cuda"]
    assert isinstance(info["triton"], bool)
    assert info["cpu_capability"] in ("avx512", "avx2", "default")
    caches = info["cpu_caches"]
    assert list(caches) == ["l1d", "l2", "l3"] and caches["l1d"] < caches["l2"] <= caches["l3"], caches


@pytest.mark.parametrize("spec, expected", [("l2=512K", (None, 512 << 10, None)),
                                            ("l1d=32K,l2=1M,l3=32M", (32 << 10, 1 << 20, 32 << 20)),
                                            ("l3=64m,", (None, None, 64 << 20))])
def test_cpu_caches_follow_the_override(spec, expected):
    """FUSEDOPS_CPU_CACHES replaces the sizes the CPU reports, read once per process: another machine's tuning
    choices can be run on this one."""
    code = "import fusedops; print(*fusedops.build_info()['cpu_caches'].values())"
    reported, got = (_run_python(code, env) for env in ({}, {"FUSEDOPS_CPU_CACHES": spec}))
    assert reported.returncode == 0 and got.returncode == 0, reported.stderr + got.stderr
    for r, g, e in zip(reported.stdout.split(), got.stdout.split(), expected):
        assert int(g) == (int(r) if e is None else e), (spec, reported.stdout, got.stdout)


@pytest.mark.parametrize("spec, message", [("l2=big", "cannot read the size 'big'"), ("l4=1M", "is not one of"),
                                           ("l2", "is not one of")])
def test_cpu_caches_bad_override_is_refused(spec, message):
    result = _run_python("import fusedops, torch; torch.ops.fusedops._cpu_caches()", {"FUSEDOPS_CPU_CACHES": spec})
    assert result.returncode != 0
    assert "FUSEDOPS_CPU_CACHES" in result.stderr and message in result.stderr, result.stderr


# ---------------------------------------------------------------------------------------------------
# Without the compiled extension; FUSEDOPS_BACKEND

_NO_EXTENSION_SCRIPT = r"""
import sys, warnings

class BlockExtension:
    def find_spec(self, name, path=None, target=None):
        if name == "fusedops._C":
            raise ImportError("fusedops._C blocked by the test")
        return None

sys.meta_path.insert(0, BlockExtension())
import torch
import torch.nn.functional as F
import fusedops

info = fusedops.build_info()
assert info["cpu"] is False and info["cuda"] is False, info
assert "blocked by the test" in info["load_error"], info
torch.manual_seed(0)
x, w, b = torch.randn(2, 4, 7, 7), torch.randn(8, 1, 3, 3), torch.randn(8)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y1 = fusedops.depthwise_conv2d(x, w, b, padding=1)
    y2 = fusedops.depthwise_conv2d(x, w, b, stride=2)
    m = fusedops.nn.DepthwiseConv2d(4, 8, 3, padding=1)
    m(x).sum().backward()
assert len(caught) == 1, [str(c.message) for c in caught]
message = str(caught[0].message)
assert "fusedops._C" in message and "reference" in message, message
assert torch.equal(y1, F.conv2d(x, w, b, padding=1, groups=4))
assert torch.equal(y2, F.conv2d(x, w, b, stride=2, groups=4))
assert m.weight.grad is not None
try:
    with fusedops.use_backend("native"):
        fusedops.depthwise_conv2d(x, w, b)
except RuntimeError as e:
    assert "native" in str(e) and "fusedops._C" in str(e) and "blocked by the test" in str(e), str(e)
else:
    raise AssertionError("use_backend('native') without the extension did not raise")
print("NO-EXTENSION-OK")
"""


def _run_python(code, env_update=None):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("FUSEDOPS_BACKEND", "TRITON_INTERPRET")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(fusedops.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_update or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_without_extension():
    result = _run_python(_NO_EXTENSION_SCRIPT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NO-EXTENSION-OK" in result.stdout


def test_backend_environment_variable():
    code = "import fusedops, torch; print(fusedops.get_backend())"
    result = _run_python(code, {"FUSEDOPS_BACKEND": " Reference "})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"
    result = _run_python(code, {"FUSEDOPS_BACKEND": "fastest"})
    assert result.returncode != 0
    assert "backend must be one of" in result.stderr and "'fastest'" in result.stderr
