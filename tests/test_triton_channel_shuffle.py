"""The Triton channel-shuffle kernels, run through the Triton interpreter on CPU (TRITON_INTERPRET=1)."""

import pytest
import torch
import torch.nn.functional as F

import fusedops
from fusedops import _extension

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not _extension.has_ops(), reason="fusedops._C is not built"),
    pytest.mark.skipif(not _extension.has_triton(), reason="Triton is not installed"),
    pytest.mark.skipif(not _extension.triton_interpreter_enabled() and not torch.cuda.is_available(),
                       reason="Triton on CPU needs TRITON_INTERPRET=1"),
]

DEVICE = "cpu" if _extension.triton_interpreter_enabled() else "cuda"
CL = torch.channels_last


def make(shape, dtype=torch.float32, layout="nchw", seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=CL)
    elif layout == "slice":
        x = torch.cat([x, x], 1).chunk(2, 1)[1]
    elif layout == "cl_slice":
        x = torch.cat([x, x], 1).contiguous(memory_format=CL).chunk(2, 1)[0]
    return x.to(DEVICE).requires_grad_(requires_grad)


@pytest.mark.parametrize("layout", ["nchw", "cl", "slice", "cl_slice"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_channel_shuffle(layout, dtype):
    for groups, cpg in ((1, 3), (2, 3), (3, 2), (4, 1), (8, 2)):
        x = make((2, groups * cpg, 3, 5), dtype, layout)
        with fusedops.use_backend("triton"):
            y = fusedops.channel_shuffle(x, groups)
        expected = F.channel_shuffle(x.cpu(), groups)
        assert torch.equal(y.cpu(), expected) and y.stride() == expected.stride()


@pytest.mark.parametrize("layout", ["nchw", "cl", "slice", "cl_slice"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_concat_shuffle_forward_backward(layout, dtype):
    for groups, ca, cb in ((2, 4, 4), (3, 3, 6), (4, 1, 7)):
        a = make((2, ca, 3, 4), dtype, layout, seed=1, requires_grad=True)
        b = make((2, cb, 3, 4), dtype, "cl" if "cl" in layout else "nchw", seed=2, requires_grad=True)
        with fusedops.use_backend("triton"):
            y = fusedops.concat_shuffle(a, b, groups)
            grad = make(tuple(y.shape), dtype, seed=3)
            y.backward(grad)
        a_ref, b_ref = (t.detach().cpu().requires_grad_() for t in (a, b))
        expected = F.channel_shuffle(torch.cat([a_ref, b_ref], 1), groups)
        expected.backward(grad.cpu())
        assert torch.equal(y.cpu(), expected) and y.stride() == expected.stride()
        assert torch.equal(a.grad.cpu(), a_ref.grad) and torch.equal(b.grad.cpu(), b_ref.grad)


def test_gradcheck_and_empty():
    x = make((1, 6, 2, 3), torch.float64, requires_grad=True)
    with fusedops.use_backend("triton"):
        assert torch.autograd.gradcheck(lambda t: fusedops.channel_shuffle(t, 2), (x,))
        assert torch.autograd.gradcheck(lambda t: fusedops.concat_shuffle(t, t * 2, 3), (x,))
        e = make((0, 6, 2, 3))
        assert fusedops.channel_shuffle(e, 3).shape == e.shape
        assert fusedops.concat_shuffle(e, e, 2).shape == (0, 12, 2, 3)


def test_bad_inputs():
    x = make((2, 6, 3, 3))
    with fusedops.use_backend("triton"):
        with pytest.raises(RuntimeError, match="divisible by groups"):
            fusedops.channel_shuffle(x, 4)
        with pytest.raises(RuntimeError, match="a and b must have the same batch size"):
            fusedops.concat_shuffle(x, make((2, 6, 3, 4)), 2)
