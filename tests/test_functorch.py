"""torch.func transforms over the native ops.

functorch refuses C++ torch::autograd::Function inside its transforms, so there the Autograd kernels compute
each op as differentiable ATen ops after the kernels' own argument checks (csrc/include/fusedops/autograd.h,
inside_functorch_transform). vmap without gradients runs the kernels through PyTorch's batching fallback.
"""

import pytest
import torch
import torch.nn.functional as F

import fusedops

from conftest import make_input, requires_ops

pytestmark = requires_ops

def _autograd_grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    return torch.autograd.grad(out, leaves)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_grad_of_depthwise_conv2d(layout):
    x = make_input((2, 4, 7, 6), layout, dtype=torch.float64)
    w, b = torch.randn(8, 1, 3, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    loss = lambda x, w, b: fusedops.depthwise_conv2d(x, w, b, stride=2, padding=1).square().sum()  # noqa: E731
    got = torch.func.grad(loss, argnums=(0, 1, 2))(x, w, b)
    ref = _autograd_grads(lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 4).square().sum(), x, w, b)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)


def test_vjp_of_the_shuffles():
    x = torch.randn(2, 6, 3, 4)
    y, vjp = torch.func.vjp(lambda t: fusedops.channel_shuffle(t, 3), x)
    assert torch.equal(y, F.channel_shuffle(x, 3))
    cot = torch.randn_like(y)
    assert torch.equal(vjp(cot)[0], F.channel_shuffle(cot, 2))
    a, b = torch.randn(2, 2, 3, 4), torch.randn(2, 4, 3, 4)
    z, vjp = torch.func.vjp(lambda s, t: fusedops.concat_shuffle(s, t, 2), a, b)
    assert torch.equal(z, F.channel_shuffle(torch.cat([a, b], 1), 2))
    ga, gb = vjp(torch.ones_like(z))
    assert torch.equal(ga, torch.ones_like(a)) and torch.equal(gb, torch.ones_like(b))


@pytest.mark.parametrize("mid,out", [("relu6", "relu6"), ("hardswish", None), (None, "relu")])
def test_jacrev_of_dwpw_conv2d(mid, out):
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    dw_w, dw_b = torch.randn(3, 1, 3, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    pw_w = torch.randn(2, 3, 1, 1, dtype=torch.float64)
    acts = {None: lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish}

    def reference(x):
        return acts[out](F.conv2d(acts[mid](F.conv2d(x, dw_w, dw_b, 1, 1, 1, 3)), pw_w))

    jac = torch.func.jacrev(lambda t: fusedops.dwpw_conv2d(t, dw_w, dw_b, pw_w, None, 1, 1, 1, mid, out))(x)
    torch.testing.assert_close(jac, torch.func.jacrev(reference)(x))


def test_per_sample_gradients():
    # vmap over grad: one weight gradient per sample.
    x = torch.randn(5, 4, 6, 6, dtype=torch.float64)
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64)

    def loss(w, sample):
        return fusedops.depthwise_conv2d(sample[None], w, padding=1).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, x)
    for i in range(x.shape[0]):
        ref = _autograd_grads(lambda w: F.conv2d(x[i:i + 1], w, None, 1, 1, 1, 4).sum(), w)[0]
        torch.testing.assert_close(per_sample[i], ref)


def test_errors_inside_transforms_are_the_ops_own():
    with pytest.raises(RuntimeError, match=r"must be divisible by groups \(4\)"):
        torch.func.grad(lambda t: fusedops.channel_shuffle(t, 4).sum())(torch.randn(1, 6, 2, 2))
    with pytest.raises(RuntimeError, match="padding must be non-negative"):
        torch.func.grad(lambda t: torch.ops.fusedops.depthwise_conv2d(
            t, torch.randn(4, 1, 3, 3), None, [1, 1], [-1, 0], [1, 1]).sum())(torch.randn(1, 4, 5, 5))


@pytest.mark.filterwarnings("ignore:.*batching rule")
def test_vmap_runs_through_the_batching_fallback():
    # No batching rules are registered: torch.func.vmap runs the op once per batch entry.
    x = torch.randn(3, 2, 4, 5, 5)
    w = torch.randn(4, 1, 3, 3)
    y = torch.func.vmap(lambda t: fusedops.channel_shuffle(t, 2))(x)
    assert torch.equal(y, torch.stack([F.channel_shuffle(t, 2) for t in x]))
    z = torch.func.vmap(lambda t: fusedops.depthwise_conv2d(t, w, padding=1))(x)
    torch.testing.assert_close(z, torch.stack([F.conv2d(t, w, None, 1, 1, 1, 4) for t in x]))
