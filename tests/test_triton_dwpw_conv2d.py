"""Triton kernels of dwpw_conv2d (fusedops/ops/_triton/dwpw_conv2d.py).

On CPU tensors they run through the Triton interpreter (TRITON_INTERPRET=1 set before Python starts);
on CUDA tensors when a GPU is present. Shapes are small because the interpreter is slow.
"""

import importlib.util
import os

import pytest
import torch

import fusedops
from fusedops import _extension

from test_dwpw_conv2d import check_parity, make_weights

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_READY = _HAS_TRITON and _extension.has_ops() and _extension.has_triton()

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not _READY, reason="needs triton and the compiled extension fusedops._C"),
    pytest.mark.skipif(not (_INTERPRET or torch.cuda.is_available()),
                       reason="CPU tensors need TRITON_INTERPRET=1; else a CUDA GPU"),
]


@pytest.mark.parametrize("case", (
    dict(shape=(2, 5, 7, 6), cout=7, layout="nchw", mid="relu6", out="relu6"),
    dict(shape=(1, 20, 6, 7), cout=33, layout="channels_last", stride=2, mid="hardswish", out=None),
    dict(shape=(2, 6, 6, 6), cout=17, layout="noncontig", kernel=5, padding=2, multiplier=2, mid=None,
         out="hardswish", dw_bias=False),
    dict(shape=(1, 8, 7, 7), cout=40, layout="channels_last", dilation=2, padding=2, mid="relu", out="relu",
         pw_bias=False),
))
def test_triton_parity(case):
    case = dict(case)
    shape, cout = case.pop("shape"), case.pop("cout")
    check_parity(shape, cout, backend="triton", **case)


def test_triton_float64():
    check_parity((1, 4, 5, 5), 6, backend="triton", dtype=torch.float64, layout="nchw", mid="hardswish")


def test_triton_matches_native():
    x = torch.randn(2, 24, 9, 9).to(memory_format=torch.channels_last)
    weights = [t.detach() for t in make_weights(24, 20, 3)]
    with fusedops.use_backend("triton"):
        yt = fusedops.dwpw_conv2d(x, *weights, stride=2)
    with fusedops.use_backend("native"):
        yn = fusedops.dwpw_conv2d(x, *weights, stride=2)
    torch.testing.assert_close(yt, yn, rtol=1e-5, atol=1e-5)
    assert yt.is_contiguous(memory_format=torch.channels_last)


def test_triton_bad_arguments():
    x = torch.randn(1, 4, 5, 5)
    dw_w, dw_b, pw_w, pw_b = (t.detach() for t in make_weights(4, 6, 3))
    with fusedops.use_backend("triton"), pytest.raises(RuntimeError, match="pw_weight must have shape"):
        fusedops.dwpw_conv2d(x, dw_w, dw_b, pw_w[:, :3], pw_b)
