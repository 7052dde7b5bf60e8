"""Triton path of shufflenet_v2_unit (fusedops/ops/_triton/shufflenet_v2_unit.py): the branch's expand stage in
PyTorch, its depthwise and project stages and the shortcut in the dwpw Triton kernels, forward and backward.

On CPU tensors the kernels run through the Triton interpreter (TRITON_INTERPRET=1 set before Python starts);
on CUDA tensors when a GPU is present. Shapes are small because the interpreter is slow.
"""

import pytest
import torch

from conftest import (TRITON_DEVICE, TRITON_TEST, check_shufflenet_v2_unit_parity, make_input,
                      make_shufflenet_v2_unit_weights)

pytestmark = TRITON_TEST


@pytest.mark.parametrize("case", (
    dict(shape=(2, 8, 5, 6), layout="nchw"),
    dict(shape=(1, 6, 7, 6), branch_channels=8, shortcut=True, stride=2, layout="channels_last",
         activation="hardswish"),
    dict(shape=(1, 6, 6, 5), kernel=5, layout="noncontig", activation="relu6"),
    dict(shape=(2, 4, 5, 5), branch_channels=4, shortcut=True, stride=1, dilation=2, biases=False,
         layout="channels_last", activation=None),
    dict(shape=(1, 4, 6, 6), branch_channels=6, shortcut=True, stride=(2, 1), kernel=(3, 5), layout="nchw",
         activation="silu", biases={"dw", "shortcut_pw"}),
    dict(shape=(3, 4, 1, 1), layout="channels_last"),
))
def test_triton_parity(case):
    case = dict(case)
    shape = case.pop("shape")
    check_shufflenet_v2_unit_parity(shape, backend="triton", device=TRITON_DEVICE, **case)


@pytest.mark.parametrize("shortcut", (False, True))
def test_triton_backward_op_matches_native(shortcut):
    # The mirror's backward op against the native one, every gradient asked for (absent biases come back empty).
    x = make_input((2, 6, 5, 6), "channels_last", dtype=torch.float64)
    weights = make_shufflenet_v2_unit_weights(6, 4, shortcut=shortcut, biases={"expand", "project", "shortcut_dw"},
                                              dtype=torch.float64, requires_grad=False)
    stride = [2, 2] if shortcut else [1, 1]
    args = (x, *weights, stride, [1, 1], [1, 1], "relu")
    y = torch.ops.fusedops.shufflenet_v2_unit(*args)
    go = torch.randn(y.shape, dtype=torch.float64)
    native = torch.ops.fusedops._shufflenet_v2_unit_backward(go, *args, [True] * 11)
    device_args = tuple(a.to(TRITON_DEVICE) if isinstance(a, torch.Tensor) else a for a in args)
    triton = torch.ops.fusedops_triton._shufflenet_v2_unit_backward(go.to(TRITON_DEVICE), *device_args, [True] * 11)
    assert [g.numel() > 0 for g in triton] == [g.numel() > 0 for g in native]
    for t, n in zip(triton, native):
        torch.testing.assert_close(t.cpu(), n, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.ops.fusedops_triton.shufflenet_v2_unit(*device_args).cpu(), y, rtol=1e-10,
                               atol=1e-10)
