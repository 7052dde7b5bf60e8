"""The CUDA kernels under the emulation's schedules and multiprocessor counts (FUSEDOPS_CUDA_EMU=1 only).

The parity tests of tests/test_cuda_*.py run the emulated kernels in forward order on 132 multiprocessors;
these run a cross-section of every kernel again with threads and blocks in reversed and seeded-random
order, and the weight-gradient reduction split for 1, 3 and 132 multiprocessors. A missing barrier shows
under some order as a read of poisoned (NaN) shared memory or another thread's stale data; the results of
the deterministic kernels must be bitwise identical under every schedule.
"""

import pytest
import torch
import torch.nn.functional as F

import fusedops
from fusedops.ops import _reference

from conftest import CUDA_EMULATED

pytestmark = pytest.mark.skipif(not CUDA_EMULATED, reason="runs the emulated CUDA kernels (FUSEDOPS_CUDA_EMU=1)")

if CUDA_EMULATED:
    import cuda_emu

SCHEDULES = [("forward", 0), ("reversed", 0), ("random", 1), ("random", 2)]


@pytest.fixture(autouse=True)
def _default_schedule():
    yield
    if CUDA_EMULATED:
        cuda_emu.configure()


def _depthwise_all(layout, kernel, stride, dilation, multiplier, dtype=torch.float32, shape=(3, 8, 19, 37)):
    """Output and (input, weight, bias) gradients of the native depthwise_conv2d."""
    g = torch.Generator().manual_seed(0)
    n, c, h, w = shape
    x = torch.randn(shape, generator=g).to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(c * multiplier, 1, kernel, kernel, generator=g).to(dtype)
    b = torch.randn(c * multiplier, generator=g).to(dtype)
    pad = dilation * (kernel // 2)
    with fusedops.use_backend("native"):
        y = fusedops.depthwise_conv2d(x, wt, b, stride, pad, dilation)
    go = torch.randn(y.shape, generator=g).to(dtype)
    grads = torch.ops.fusedops._depthwise_conv2d_backward(go, x, wt, [stride] * 2, [pad] * 2, [dilation] * 2,
                                                           [True, True, True])
    expected = F.conv2d(x.double(), wt.double(), b.double(), stride, pad, dilation, groups=c)
    torch.testing.assert_close(y.double(), expected, rtol=1e-2 if dtype != torch.float32 else 1e-5,
                               atol=1e-2 if dtype != torch.float32 else 1e-5)
    return (y, *grads)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("kernel,stride,dilation,multiplier", [(3, 1, 1, 1), (5, 2, 1, 1), (3, 1, 2, 2),
                                                               (4, 3, 1, 1)])
def test_depthwise_schedules_bitwise_identical(layout, kernel, stride, dilation, multiplier):
    launches = cuda_emu.counters()[0]
    results = []
    for schedule, seed in SCHEDULES:
        cuda_emu.configure(schedule=schedule, seed=seed)
        results.append(_depthwise_all(layout, kernel, stride, dilation, multiplier))
    assert cuda_emu.counters()[0] > launches, "the emulated kernels did not run"
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("multiprocessors", [1, 3, 132])
def test_weight_gradient_split_over_multiprocessors(layout, dtype, multiprocessors):
    # The weight-gradient reduction splits N*H*W into slices per multiprocessor count; every split must
    # agree with the reference, and each split is deterministic under every schedule.
    shape = (4, 40, 33, 35)
    reference = None
    for schedule, seed in SCHEDULES[:3]:
        cuda_emu.configure(multiprocessors=multiprocessors, schedule=schedule, seed=seed)
        y, gx, gw, gb = _depthwise_all(layout, 3, 1, 1, 1, dtype, shape)
        if reference is None:
            reference = (gw, gb)
            g = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=g).to(dtype).double().requires_grad_()
            wt = torch.randn(40, 1, 3, 3, generator=g).to(dtype).double().requires_grad_()
            b = torch.randn(40, generator=g).to(dtype).double().requires_grad_()
            go = torch.randn(y.shape, generator=g).to(dtype).double()
            F.conv2d(x, wt, b, 1, 1, 1, groups=40).backward(go)
            tol = 1e-4 if dtype == torch.float32 else 3e-2
            scale = max(1.0, wt.grad.abs().max().item())
            torch.testing.assert_close(gw.double(), wt.grad, rtol=tol, atol=tol * scale)
            torch.testing.assert_close(gb.double(), b.grad, rtol=tol, atol=tol * max(1.0, b.grad.abs().max().item()))
        else:
            assert torch.equal(gw, reference[0]) and torch.equal(gb, reference[1])


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_dwpw_schedules_bitwise_identical(layout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 15, 13, generator=g)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    args = [x, torch.randn(37, 1, 3, 3, generator=g), torch.randn(37, generator=g),
            torch.randn(70, 37, 1, 1, generator=g), torch.randn(70, generator=g)]
    outputs = []
    for schedule, seed in SCHEDULES:
        cuda_emu.configure(schedule=schedule, seed=seed)
        with fusedops.use_backend("native"):
            outputs.append(fusedops.dwpw_conv2d(*args, stride=1, padding=1, mid_activation="relu6",
                                                out_activation="hardswish"))
    expected = _reference.dwpw_conv2d(*[t.double() for t in args], (1, 1), (1, 1), (1, 1), "relu6", "hardswish")
    torch.testing.assert_close(outputs[0].double(), expected, rtol=1e-4, atol=1e-4)
    for other in outputs[1:]:
        assert torch.equal(outputs[0], other)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_shuffle_schedules(layout, dtype):
    x = torch.randn(2, 12, 7, 9).to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    for schedule, seed in SCHEDULES:
        cuda_emu.configure(schedule=schedule, seed=seed)
        with fusedops.use_backend("native"):
            y = fusedops.channel_shuffle(x, 3)
        assert torch.equal(y, F.channel_shuffle(x, 3))
