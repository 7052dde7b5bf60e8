"""CUDA kernels of fusedops::ghost_module and its backward against the float64 unfused reference. All but the first
test need a GPU (or run through the CUDA emulation in CI)."""

import pytest
import torch

from conftest import KERNEL_DEVICE, check_ghost_module_parity, gpu_test, requires_cuda_kernels


@requires_cuda_kernels
def test_cuda_kernels_registered():
    for op in ("fusedops::ghost_module", "fusedops::_ghost_module_backward"):
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
