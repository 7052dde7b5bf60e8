"""Triton path of ghost_module (fusedops/ops/_triton/ghost_module.py): the primary half in PyTorch, the cheap half
in the depthwise Triton kernel, forward and backward.

On CPU tensors the kernels run through the Triton interpreter (TRITON_INTERPRET=1 set before Python starts);
on CUDA tensors when a GPU is present. Shapes are small because the interpreter is slow.
"""

import pytest

from conftest import TRITON_DEVICE, TRITON_TEST, check_ghost_module_parity

pytestmark = TRITON_TEST


@pytest.mark.parametrize("case", (
    dict(shape=(2, 4, 6, 5), out_channels=8, layout="nchw"),
    dict(shape=(1, 6, 7, 6), out_channels=11, ratio=3, layout="channels_last", stride=2, activation="hardswish"),
    dict(shape=(1, 5, 6, 6), out_channels=7, ratio=4, dw_size=5, layout="noncontig", activation=None,
         residual=True),
    dict(shape=(2, 4, 5, 5), out_channels=6, layout="channels_last", biases=False, activation="silu",
         residual=True),
))
def test_triton_parity(case):
    case = dict(case)
    shape, out_channels = case.pop("shape"), case.pop("out_channels")
    check_ghost_module_parity(shape, out_channels, backend="triton", device=TRITON_DEVICE, **case)
