"""CUDA kernels of fusedops::ghost_module and its backward against the float64 unfused reference. All but the first
test need a GPU (or run through the CUDA emulation in CI)."""

import pytest
import torch

import fusedops

from conftest import (KERNEL_DEVICE, bottleneck_op, check_ghost_bottleneck, check_ghost_module_parity, dw_stage,
                      ghost_bottleneck_case, ghost_module_reference, gpu_test, make_input, requires_cuda_kernels)


@requires_cuda_kernels
def test_cuda_kernels_registered():
    for op in ("fusedops::ghost_module", "fusedops::_ghost_module_backward", "fusedops::_ghost_bottleneck"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


@gpu_test
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("case", (
    dict(shape=(2, 8, 9, 9), out_channels=16),
    dict(shape=(1, 12, 11, 10), out_channels=19, ratio=3, dw_size=5, stride=2, activation="hardswish"),
    dict(shape=(2, 6, 7, 7), out_channels=10, ratio=4, activation=None, residual=True),
    dict(shape=(1, 8, 6, 6), out_channels=12, activation="silu", biases=False, residual=True),
))
def test_cuda_parity(layout, dtype, case):
    case = dict(case)
    shape, out_channels = case.pop("shape"), case.pop("out_channels")
    # The primary half is cuDNN's 1x1 convolution, which follows PyTorch's TF32 setting: exact fp32 here.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        check_ghost_module_parity(shape, out_channels, layout=layout, dtype=dtype, device=KERNEL_DEVICE, **case)


# The fused forward kernel: a window of up to 256 primary-half pixels (the tile plus the cheap kernel's halo) and 16
# primary channels per block, the input staged 16 channels at a time. The cases cross each of those limits: maps of
# several windows each way, 3x3 / 5x5 / 7x7 / 3x5 halos, several channel blocks and input chunks, out_channels
# that cut a block's cheap channels, and a 17x17 cheap kernel, whose window holds no interior (the composed path).
FUSED_CASES = (
    dict(shape=(1, 20, 30, 33), out_channels=40),
    dict(shape=(2, 17, 29, 18), out_channels=50, ratio=3, dw_size=5, stride=2, activation="relu6"),
    dict(shape=(1, 33, 23, 23), out_channels=70, ratio=4, dw_size=7, activation="hardswish", residual=True),
    dict(shape=(2, 5, 19, 40), out_channels=9, dw_size=(3, 5), stride=(2, 1), activation="silu", residual=True),
    dict(shape=(1, 3, 1, 1), out_channels=6, activation=None, residual=True),
    dict(shape=(3, 4, 2, 3), out_channels=7, ratio=3, dw_size=5, biases=False),
    dict(shape=(1, 6, 20, 20), out_channels=12, dw_size=17),
)


@gpu_test
@pytest.mark.parametrize("layout", ("nchw", "channels_last", "noncontig", "channels_last_slice"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: "x".join(map(str, c["shape"])))
def test_cuda_fused_forward_parity(layout, dtype, case):
    case = dict(case)
    shape, out_channels = case.pop("shape"), case.pop("out_channels")
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        check_ghost_module_parity(shape, out_channels, layout=layout, dtype=dtype, device=KERNEL_DEVICE,
                                  backward=False, **case)


@gpu_test
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
@pytest.mark.parametrize("case", FUSED_CASES[:4], ids=lambda c: "x".join(map(str, c["shape"])))
def test_cuda_fused_forward_reduced_precision(dtype, case):
    case = dict(case)
    shape, out_channels = case.pop("shape"), case.pop("out_channels")
    check_ghost_module_parity(shape, out_channels, layout="channels_last", dtype=dtype, device=KERNEL_DEVICE,
                              backward=False, **case)


def _ghost_module_args(c, init, cheap_filters, out_channels, dw_size, device, dtype=torch.float64):
    torch.manual_seed(0)
    return [torch.randn(init, c, 1, 1, dtype=dtype, device=device), torch.randn(init, dtype=dtype, device=device),
            torch.randn(cheap_filters, 1, dw_size, dw_size, dtype=dtype, device=device),
            torch.randn(cheap_filters, dtype=dtype, device=device)]


@gpu_test
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_cuda_fused_forward_no_cheap_channel_kept(layout):
    # out_channels == init: only the primary half; every block returns before the cheap stage.
    x = make_input((2, 18, 17, 17), layout, dtype=torch.float64, device=KERNEL_DEVICE)
    weights = _ghost_module_args(18, 20, 20, 20, 3, KERNEL_DEVICE)
    residual = make_input((2, 20, 17, 17), "nchw", dtype=torch.float64, device=KERNEL_DEVICE)
    y = fusedops.ghost_module(x, *weights, 20, activation="relu", residual=residual)
    ref = ghost_module_reference(x.cpu(), *[w.cpu() for w in weights], 20, 1, "relu", residual.cpu())
    torch.testing.assert_close(y.cpu(), ref, rtol=1e-12, atol=1e-12)


def _aten_convolutions(fn):
    with torch.profiler.profile() as prof, torch.inference_mode():
        fn()
    return [e.name for e in prof.events() if e.name in ("aten::convolution", "fusedops::depthwise_conv2d")]


@gpu_test
def test_cuda_forward_is_one_kernel():
    # The fused kernel calls no convolution; the composed path (a cheap kernel too large for a window) does, which
    # shows the check can fail.
    def run(dw_size):
        x = make_input((1, 8, 20, 20), "channels_last", device=KERNEL_DEVICE)
        weights = _ghost_module_args(8, 8, 8, 16, dw_size, KERNEL_DEVICE, torch.float32)
        return lambda: fusedops.ghost_module(x, *weights, 16)

    assert _aten_convolutions(run(5)) == []
    assert "aten::convolution" in _aten_convolutions(run(17))


# _ghost_bottleneck: the first module's kernel, then the second module's with the depthwise stage (where there is
# one) computed as it stages its input. The float64 reference rounds each op's output to the dtype.
@gpu_test
@pytest.mark.parametrize("layout", ("channels_last", "nchw", "noncontig"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("depthwise, residual", ((None, "input"), ((3, 2), "tensor"), ((5, 2), None),
                                                 ((3, 1), "tensor"), ((5, (2, 1)), "tensor"), ((3, 3), None)))
def test_cuda_bottleneck_parity(layout, dtype, depthwise, residual):
    # 20 input channels: two input chunks of the first module; mid 36 (ratio 3, init 12 of each module): the
    # second module stages its 36 input channels (depthwise outputs) in three chunks.
    out_channels = 20 if depthwise is None else 14
    check_ghost_bottleneck((2, 20, 21, 19), 36, 3, depthwise=depthwise, residual=residual, out_channels=out_channels,
                           layout=layout, dtype=dtype, device=KERNEL_DEVICE)


@gpu_test
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_cuda_bottleneck_reduced_precision(dtype):
    check_ghost_bottleneck((2, 8, 9, 7), 14, 3, dtype=dtype, device=KERNEL_DEVICE)
    check_ghost_bottleneck((2, 8, 9, 7), 14, 3, dtype=dtype, depthwise=(5, 2), residual="tensor", out_channels=10,
                           device=KERNEL_DEVICE)


@gpu_test
def test_cuda_bottleneck_edges():
    check_ghost_bottleneck((1, 5, 4, 4), 7, 2, 5, biases=False, device=KERNEL_DEVICE)  # map smaller than the reach
    check_ghost_bottleneck((2, 8, 9, 9), 8, 2, 3, second_ratio=3, device=KERNEL_DEVICE)  # multipliers that differ
    check_ghost_bottleneck((1, 8, 1, 1), 16, depthwise=(3, 2), residual="tensor", device=KERNEL_DEVICE)  # 1x1 map
    # A second module whose cheap kernel leaves its window no interior: the depthwise stage runs as its op.
    check_ghost_bottleneck((1, 6, 12, 12), 12, 2, 3, second_dw_size=17, depthwise=(3, 2), residual=None,
                           device=KERNEL_DEVICE)


@gpu_test
def test_cuda_bottleneck_depthwise_inside_second_module():
    # The depthwise stage runs inside the second module's kernel: no depthwise_conv2d op, no convolution (except
    # where the second module's window has no interior, which shows the check can fail).
    x = make_input((1, 8, 12, 12), "channels_last", device=KERNEL_DEVICE)

    def run(second_dw_size):
        _, first, second = ghost_bottleneck_case((1, 8, 12, 12), 12, 2, 3, second_dw_size=second_dw_size)
        first, second = [t.to(KERNEL_DEVICE) for t in first], [t.to(KERNEL_DEVICE) for t in second]
        dw = [t.to(KERNEL_DEVICE) for t in dw_stage(12, 3, 2)[:2]] + [2]
        return lambda: bottleneck_op(x, first, second, 12, dw=dw, residual=None)

    assert _aten_convolutions(run(3)) == []
    assert "fusedops::depthwise_conv2d" in _aten_convolutions(run(17))
