"""The Triton kernels with NaN and +-Inf in inputs and weights: as PyTorch's float32 composition (the cases of
test_reliability_special_values.py), through the interpreter on the CPU or on a GPU."""

import pytest
import torch

import fusedops
from conftest import TRITON_TEST
from test_reliability_special_values import (BLOCK_CASES, DEPTHWISE_CASES, DWPW_CASES, check_depthwise_specials,
                                             check_dwpw_specials, check_fused_block_specials)

pytestmark = TRITON_TEST
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Known gap: inverted_residual's Triton backward (dwpw Triton backward kernels on the recomputed expanded map)
# passes a NaN on to more of the input (and expand-weight) gradient than the composition does.
_IR_GRADIENT_GAP = pytest.mark.xfail(strict=True, reason="inverted_residual Triton backward with NaN (known gap)")


def _channels_last(cases, layout_index):
    """The Triton kernels take any strides: one layout keeps the interpreter's time down."""
    return [case for case in cases if case.values[layout_index] == "channels_last"]


def _block_cases():
    for case in _channels_last(BLOCK_CASES, 1):
        block, _, where, value = case.values
        nan_upstream = value != value and where in ("input", "expand")
        gap = block == "inverted_residual" and (where == "depthwise" or nan_upstream)
        yield pytest.param(*case.values, id=case.id, marks=[_IR_GRADIENT_GAP] if gap else [])


@pytest.mark.parametrize("layout, where, value, stride, padding", _channels_last(DEPTHWISE_CASES, 0))
def test_triton_depthwise_specials(layout, where, value, stride, padding):
    with fusedops.use_backend("triton"):
        check_depthwise_specials(layout, where, value, stride, padding, DEVICE)


@pytest.mark.parametrize("layout, where, value, act", _channels_last(DWPW_CASES, 0))
def test_triton_dwpw_specials(layout, where, value, act):
    with fusedops.use_backend("triton"):
        check_dwpw_specials(layout, where, value, act, DEVICE)


@pytest.mark.parametrize("block, layout, where, value", list(_block_cases()))
def test_triton_fused_block_specials(block, layout, where, value):
    with fusedops.use_backend("triton"):
        check_fused_block_specials(block, layout, where, value, DEVICE)
