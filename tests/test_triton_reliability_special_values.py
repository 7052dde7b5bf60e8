"""The Triton kernels with NaN and +-Inf in inputs and weights: as PyTorch's float32 composition (the cases of
test_reliability_special_values.py), through the interpreter on the CPU or on a GPU."""

import pytest
import torch

import fusedops
from conftest import TRITON_TEST
from test_reliability_special_values import (BLOCK_CASES, DEPTHWISE_CASES, DWPW_CASES, check_depthwise_specials,
                                             check_dwpw_backward_specials, check_dwpw_specials,
                                             check_fused_block_specials)

pytestmark = TRITON_TEST
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _channels_last(cases, layout_index):
    """The Triton kernels take any strides: one layout keeps the interpreter's time down."""
    return [case for case in cases if case.values[layout_index] == "channels_last"]


@pytest.mark.parametrize("layout, where, value, stride, padding", _channels_last(DEPTHWISE_CASES, 0))
def test_triton_depthwise_specials(layout, where, value, stride, padding):
    with fusedops.use_backend("triton"):
        check_depthwise_specials(layout, where, value, stride, padding, DEVICE)


@pytest.mark.parametrize("layout, where, value, act", _channels_last(DWPW_CASES, 0))
def test_triton_dwpw_specials(layout, where, value, act):
    with fusedops.use_backend("triton"):
        check_dwpw_specials(layout, where, value, act, DEVICE)


@pytest.mark.parametrize("layout, where, value, act", _channels_last(DWPW_CASES, 0))
def test_triton_dwpw_backward_specials(layout, where, value, act):
    with fusedops.use_backend("triton"):
        check_dwpw_backward_specials(layout, where, value, act, DEVICE)


@pytest.mark.parametrize("block, layout, where, value", _channels_last(BLOCK_CASES, 1))
def test_triton_fused_block_specials(block, layout, where, value):
    with fusedops.use_backend("triton"):
        check_fused_block_specials(block, layout, where, value, DEVICE)
