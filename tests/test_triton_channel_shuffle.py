"""The Triton channel-shuffle kernels, run through the Triton interpreter on CPU (TRITON_INTERPRET=1)."""

import pytest
import torch
import torch.nn.functional as F

import fusedops

from conftest import SHUFFLE_LAYOUTS, TRITON_DEVICE, TRITON_TEST, dense_layout, make_input

pytestmark = TRITON_TEST


@pytest.mark.parametrize("layout", SHUFFLE_LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_channel_shuffle(layout, dtype):
    for groups, cpg in ((1, 3), (2, 3), (3, 2), (4, 1), (8, 2)):
        x = make_input((2, groups * cpg, 3, 5), layout, dtype=dtype).to(TRITON_DEVICE)
        with fusedops.use_backend("triton"):
            y = fusedops.channel_shuffle(x, groups)
        expected = F.channel_shuffle(x.cpu(), groups)
        assert torch.equal(y.cpu(), expected) and y.stride() == expected.stride()


@pytest.mark.parametrize("layout", SHUFFLE_LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_concat_shuffle_forward_backward(layout, dtype):
    for groups, ca, cb in ((2, 4, 4), (3, 3, 6), (4, 1, 7)):
        a = make_input((2, ca, 3, 4), layout, dtype=dtype).to(TRITON_DEVICE).requires_grad_()
        b = make_input((2, cb, 3, 4), dense_layout(layout), dtype=dtype, device=TRITON_DEVICE, requires_grad=True)
        with fusedops.use_backend("triton"):
            y = fusedops.concat_shuffle(a, b, groups)
            grad = make_input(tuple(y.shape), dtype=dtype, device=TRITON_DEVICE)
            y.backward(grad)
        a_ref, b_ref = (t.detach().cpu().requires_grad_() for t in (a, b))
        expected = F.channel_shuffle(torch.cat([a_ref, b_ref], 1), groups)
        expected.backward(grad.cpu())
        assert torch.equal(y.cpu(), expected) and y.stride() == expected.stride()
        assert torch.equal(a.grad.cpu(), a_ref.grad) and torch.equal(b.grad.cpu(), b_ref.grad)


def test_gradcheck_and_empty():
    x = make_input((1, 6, 2, 3), dtype=torch.float64, device=TRITON_DEVICE, requires_grad=True)
    with fusedops.use_backend("triton"):
        assert torch.autograd.gradcheck(lambda t: fusedops.channel_shuffle(t, 2), (x,))
        assert torch.autograd.gradcheck(lambda t: fusedops.concat_shuffle(t, t * 2, 3), (x,))
        e = make_input((0, 6, 2, 3), device=TRITON_DEVICE)
        assert fusedops.channel_shuffle(e, 3).shape == e.shape
        assert fusedops.concat_shuffle(e, e, 2).shape == (0, 12, 2, 3)


def test_bad_inputs():
    x = make_input((2, 6, 3, 3), device=TRITON_DEVICE)
    with fusedops.use_backend("triton"):
        with pytest.raises(RuntimeError, match="divisible by groups"):
            fusedops.channel_shuffle(x, 4)
        with pytest.raises(RuntimeError, match="a and b must have the same batch size"):
            fusedops.concat_shuffle(x, make_input((2, 6, 3, 4), device=TRITON_DEVICE), 2)
