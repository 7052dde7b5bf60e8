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


def _triton_blocks(cases):
    """The stride-1 ShuffleNetV2 unit runs, through Triton, the down-sampling unit's branch alone (the same dwpw
    kernels after the same 1x1 convolution): its down-sampling form covers it, at half the interpreter's time."""
    return [case for case in cases if case.values[0] != "shufflenet_v2_unit"]


@pytest.mark.parametrize("block, layout, where, value", _triton_blocks(_channels_last(BLOCK_CASES, 1)))
def test_triton_fused_block_specials(block, layout, where, value):
    with fusedops.use_backend("triton"):
        check_fused_block_specials(block, layout, where, value, DEVICE)
