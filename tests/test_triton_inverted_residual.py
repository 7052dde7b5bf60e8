"""Triton path of inverted_residual (fusedops/ops/_triton/inverted_residual.py): the expand stage in PyTorch, the
depthwise and project stages in the dwpw Triton kernels, forward and backward.

On CPU tensors the kernels run through the Triton interpreter (TRITON_INTERPRET=1 set before Python starts);
on CUDA tensors when a GPU is present. Shapes are small because the interpreter is slow.
"""

import pytest

from conftest import TRITON_DEVICE, TRITON_TEST, check_inverted_residual_parity

pytestmark = TRITON_TEST


@pytest.mark.parametrize("case", (
    dict(shape=(2, 4, 6, 5), hidden=12, cout=4, layout="nchw"),
    dict(shape=(1, 6, 7, 6), hidden=18, cout=8, layout="channels_last", stride=2, activation="hardswish"),
    dict(shape=(1, 5, 6, 6), hidden=5, cout=5, layout="noncontig", expand=False, kernel=5, activation="relu"),
    dict(shape=(2, 4, 5, 5), hidden=8, cout=4, layout="channels_last", dilation=2, biases=False, activation=None),
    dict(shape=(1, 4, 5, 6), hidden=12, cout=4, layout="nchw", activation="silu"),
    dict(shape=(2, 4, 6, 6), hidden=12, cout=4, layout="channels_last", activation="hardswish", se=dict(squeeze=4)),
    dict(shape=(1, 6, 7, 7), hidden=6, cout=8, layout="nchw", expand=False, stride=2, activation="silu",
         se=dict(squeeze=2, gate="sigmoid", activation="silu", biases=False)),
))
def test_triton_parity(case):
    case = dict(case)
    shape, hidden, cout = case.pop("shape"), case.pop("hidden"), case.pop("cout")
    check_inverted_residual_parity(shape, hidden, cout, backend="triton", device=TRITON_DEVICE, **case)
