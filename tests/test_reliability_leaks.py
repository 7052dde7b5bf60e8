"""No leaks: many calls of each op (forward, backward, with and without autograd) leave the process's resident
memory flat after warm-up (and, on a GPU, the allocator's peak). Slow: run with FUSEDOPS_SLOW=1
(FUSEDOPS_LEAK_CALLS calls per op, default 10,000)."""

import gc
import os

import pytest
import torch

import fusedops

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("FUSEDOPS_SLOW") != "1", reason="slow: set FUSEDOPS_SLOW=1")]
CALLS = int(os.environ.get("FUSEDOPS_LEAK_CALLS", 10000))
WARMUP = 500
# Resident memory moves a little with malloc's arenas; over 10,000 calls this bounds a leak below ~400 bytes
# a call (any leaked tensor or graph node is far larger).
SLACK_BYTES = 4 * 2**20


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _ops(device):
    x = torch.randn(2, 8, 12, 12, device=device).contiguous(memory_format=torch.channels_last)
    xn = torch.randn(2, 8, 12, 12, device=device)
    w, b = torch.randn(8, 1, 3, 3, device=device), torch.randn(8, device=device)
    pw_w, pw_b = torch.randn(12, 8, 1, 1, device=device), torch.randn(12, device=device)
    block = fusedops.nn.DepthwiseSeparableConv2d(8, 12).to(device).eval()
    frozen = fusedops.nn.DepthwiseSeparableConv2d(8, 12).to(device).eval().freeze()
    ex_w, ex_b = torch.randn(24, 8, 1, 1, device=device), torch.randn(24, device=device)
    ir_dw_w, ir_dw_b = torch.randn(24, 1, 3, 3, device=device), torch.randn(24, device=device)
    pr_w, pr_b = torch.randn(8, 24, 1, 1, device=device), torch.randn(8, device=device)
    ghost_dw_w = torch.randn(4, 1, 3, 3, device=device)
    inverted = fusedops.nn.InvertedResidual(8, 8, 1, 3).to(device).eval()
    ghost = fusedops.nn.GhostModule(8, 8).to(device).eval().freeze()
    unit_w, down_w = torch.randn(4, 4, 1, 1, device=device), torch.randn(8, 8, 1, 1, device=device)
    unit = fusedops.nn.ShuffleNetV2Unit(8, 16, 2).to(device).eval().freeze()

    def with_grad(fn, *tensors):
        leaves = [t.detach().requires_grad_() for t in tensors]

        def run():
            y = fn(*leaves)
            torch.autograd.grad(y.sum(), leaves)
        return run

    def no_grad(fn, *tensors):
        def run():
            with torch.no_grad():
                fn(*tensors)
        return run

    dw = lambda x, w, b: fusedops.depthwise_conv2d(x, w, b, 1, 1)  # noqa: E731
    dwpw = lambda x, *ts: fusedops.dwpw_conv2d(x, *ts, 1, 1, 1, "relu6", "relu6")  # noqa: E731
    shuffle = lambda x: fusedops.channel_shuffle(x, 4)  # noqa: E731
    concat = lambda a, b: fusedops.concat_shuffle(a, b, 2)  # noqa: E731
    down = lambda x, *ts: fusedops.shufflenet_v2_unit(x, *ts[:6], shortcut=ts[6:], stride=2)  # noqa: E731
    return {
        "depthwise_cl": (dw, (x, w, b)), "depthwise_nchw": (dw, (xn, w, b)),
        "dwpw_cl": (dwpw, (x, w, b, pw_w, pw_b)), "dwpw_nchw": (dwpw, (xn, w, b, pw_w, pw_b)),
        "channel_shuffle": (shuffle, (x,)), "concat_shuffle": (concat, (x, x)),
        "separable_module": (block, (x,)), "separable_frozen": (frozen, (x,)),
        "inverted_residual": (lambda x, *ts: fusedops.inverted_residual(x, *ts), (x, ex_w, ex_b, ir_dw_w, ir_dw_b,
                                                                                   pr_w, pr_b)),
        "ghost_module": (lambda x, *ts: fusedops.ghost_module(x, *ts, 8), (xn, ex_w[:4], ex_b[:4], ghost_dw_w,
                                                                            ir_dw_b[:4])),
        "inverted_residual_module": (inverted, (x,)), "ghost_frozen": (ghost, (x,)),
        "shufflenet_v2_unit": (lambda x, *ts: fusedops.shufflenet_v2_unit(x, *ts), (x, unit_w, b[:4], w[:4], b[:4],
                                                                                     unit_w, b[:4])),
        "shufflenet_v2_unit_down": (down, (xn, down_w, b, w, b, down_w, b, w, b, down_w, b)),
        "shufflenet_v2_unit_frozen": (unit, (x,)),
    }, with_grad, no_grad


@pytest.mark.parametrize("autograd", [False, True])
@pytest.mark.parametrize("name", sorted(_ops("cpu")[0]))
def test_resident_memory_flat(name, autograd):
    ops, with_grad, no_grad = _ops("cpu")
    fn, tensors = ops[name]
    run = (with_grad if autograd else no_grad)(fn, *tensors)
    for _ in range(WARMUP):
        run()
    gc.collect()
    before = _rss()
    for _ in range(CALLS):
        run()
    gc.collect()
    grown = _rss() - before
    assert grown < SLACK_BYTES, f"{name}: resident memory grew by {grown / 2**20:.1f} MiB over {CALLS} calls"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(_ops("cpu")[0]))
def test_cuda_allocator_flat(name):
    ops, with_grad, _ = _ops("cuda")
    fn, tensors = ops[name]
    run = with_grad(fn, *tensors)
    for _ in range(WARMUP):
        run()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    allocated, peak = torch.cuda.memory_allocated(), None
    for i in range(CALLS):
        run()
        if i == WARMUP:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() == allocated
    assert torch.cuda.max_memory_allocated() == peak
