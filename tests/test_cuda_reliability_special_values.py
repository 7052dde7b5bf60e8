"""The CUDA kernels with NaN and +-Inf in inputs and weights: as PyTorch's float32 composition (the cases of
test_reliability_special_values.py)."""

import pytest

from conftest import KERNEL_DEVICE, gpu_test
from test_reliability_special_values import (BLOCK_CASES, DEPTHWISE_CASES, DWPW_CASES, check_depthwise_specials,
                                             check_dwpw_backward_specials, check_dwpw_specials,
                                             check_fused_block_specials)


@gpu_test
@pytest.mark.parametrize("layout, where, value, stride, padding", DEPTHWISE_CASES)
def test_cuda_depthwise_specials(layout, where, value, stride, padding):
    check_depthwise_specials(layout, where, value, stride, padding, KERNEL_DEVICE)


@gpu_test
@pytest.mark.parametrize("layout, where, value, act", DWPW_CASES)
def test_cuda_dwpw_specials(layout, where, value, act):
    check_dwpw_specials(layout, where, value, act, KERNEL_DEVICE)


@gpu_test
@pytest.mark.parametrize("layout, where, value, act", DWPW_CASES)
def test_cuda_dwpw_backward_specials(layout, where, value, act):
    check_dwpw_backward_specials(layout, where, value, act, KERNEL_DEVICE)


@gpu_test
@pytest.mark.parametrize("block, layout, where, value", BLOCK_CASES)
def test_cuda_fused_block_specials(block, layout, where, value):
    check_fused_block_specials(block, layout, where, value, KERNEL_DEVICE)
