"""CUDA kernels of fusedops::shufflenet_v2_unit and its backward against the float64 unfused unit. All but the first
test need a GPU (or run through the CUDA emulation in CI)."""

import pytest
import torch

from conftest import KERNEL_DEVICE, check_shufflenet_v2_unit_parity, gpu_test, requires_cuda_kernels


@requires_cuda_kernels
def test_cuda_kernels_registered():
    for op in ("fusedops::shufflenet_v2_unit", "fusedops::_shufflenet_v2_unit_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


@gpu_test
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("case", (
    dict(shape=(2, 8, 9, 9)),
    dict(shape=(1, 12, 11, 10), branch_channels=16, shortcut=True, stride=2, kernel=5, activation="hardswish"),
    dict(shape=(2, 6, 7, 7), dilation=2, activation="relu6", biases=False),
    dict(shape=(3, 8, 6, 6), branch_channels=8, shortcut=True, stride=2, activation="silu",
         biases={"expand", "shortcut_pw"}),
    dict(shape=(2, 4, 1, 1), activation=None),
))
def test_cuda_parity(layout, dtype, case):
    case = dict(case)
    shape = case.pop("shape")
    # The expand stage is cuDNN's 1x1 convolution, which follows PyTorch's TF32 setting: exact fp32 here.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        check_shufflenet_v2_unit_parity(shape, layout=layout, dtype=dtype, device=KERNEL_DEVICE, **case)
