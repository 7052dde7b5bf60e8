"""CUDA kernels of fusedops::inverted_residual and its backward against the float64 unfused reference. All but
the first test need a GPU (or run through the CUDA emulation in CI)."""

import pytest
import torch

from conftest import KERNEL_DEVICE, check_inverted_residual_parity, gpu_test, requires_cuda_kernels


@requires_cuda_kernels
def test_cuda_kernels_registered():
    for op in ("fusedops::inverted_residual", "fusedops::_inverted_residual_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


@gpu_test
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("case", (
    dict(shape=(2, 8, 9, 9), hidden=48, cout=8),
    dict(shape=(1, 12, 11, 10), hidden=36, cout=16, stride=2, kernel=5, activation="hardswish"),
    dict(shape=(2, 6, 7, 7), hidden=6, cout=6, expand=False, dilation=2, activation="relu"),
    dict(shape=(1, 8, 6, 6), hidden=24, cout=8, activation="silu"),
    dict(shape=(2, 8, 7, 7), hidden=32, cout=8, activation="hardswish", se=dict(squeeze=8)),
    dict(shape=(3, 16, 9, 9), hidden=16, cout=24, expand=False, stride=2, activation="silu",
         se=dict(squeeze=4, gate="sigmoid", activation="silu")),
))
def test_cuda_parity(layout, dtype, case):
    case = dict(case)
    shape, hidden, cout = case.pop("shape"), case.pop("hidden"), case.pop("cout")
    # The expand stage is cuDNN's 1x1 convolution, which follows PyTorch's TF32 setting: exact fp32 here.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        check_inverted_residual_parity(shape, hidden, cout, layout=layout, dtype=dtype, device=KERNEL_DEVICE, **case)
