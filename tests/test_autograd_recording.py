"""When the native ops record an autograd graph, and when they step below autograd themselves.

The C++ Autograd kernels (csrc/autograd/<op>.cpp) call the kernels directly when grad mode is off or no
tensor argument requires grad; otherwise they record a node. The backward ops record a node only for a
gradient computed with create_graph=True, and that node refuses double backward.
"""

import pytest
import torch
import torch.nn.functional as F

import fusedops

from conftest import requires_ops

pytestmark = requires_ops


def _depthwise_case():
    x = torch.randn(2, 4, 7, 6).to(memory_format=torch.channels_last)
    w = torch.randn(4, 1, 3, 3)
    b = torch.randn(4)
    return (x, w, b), lambda x, w, b: fusedops.depthwise_conv2d(x, w, b, padding=1), \
        lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=4)


def _dwpw_case():
    x = torch.randn(2, 4, 7, 6).to(memory_format=torch.channels_last)
    dw_w, dw_b = torch.randn(4, 1, 3, 3), torch.randn(4)
    pw_w, pw_b = torch.randn(5, 4, 1, 1), torch.randn(5)

    def reference(x, dw_w, dw_b, pw_w, pw_b):
        mid = F.relu6(F.conv2d(x, dw_w, dw_b, padding=1, groups=4))
        return F.relu6(F.conv2d(mid, pw_w, pw_b))

    return (x, dw_w, dw_b, pw_w, pw_b), lambda *a: fusedops.dwpw_conv2d(*a), reference


def _shuffle_case():
    x = torch.randn(2, 6, 5, 5)
    return (x,), lambda x: fusedops.channel_shuffle(x, 3), lambda x: F.channel_shuffle(x, 3)


def _concat_case():
    a, b = torch.randn(2, 3, 5, 5), torch.randn(2, 5, 5, 5)
    return (a, b), lambda a, b: fusedops.concat_shuffle(a, b, 2), \
        lambda a, b: F.channel_shuffle(torch.cat([a, b], 1), 2)


CASES = {"depthwise_conv2d": _depthwise_case, "dwpw_conv2d": _dwpw_case, "channel_shuffle": _shuffle_case,
         "concat_shuffle": _concat_case}


@pytest.mark.parametrize("name", CASES)
def test_nothing_recorded_without_grad(name):
    tensors, op, reference = CASES[name]()
    leaves = [t.clone().requires_grad_() for t in tensors]
    expected = reference(*tensors)
    plain = op(*tensors)  # grad mode on, nothing requires grad
    with torch.no_grad():
        no_grad = op(*leaves)  # everything requires grad, grad mode off
    for out in (plain, no_grad):
        assert out.grad_fn is None and not out.requires_grad
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("which", ("first", "last"))
def test_recorded_when_one_argument_requires_grad(name, which):
    """A frozen layer (only the input requires grad) or a frozen input (only the last parameter does)."""
    tensors, op, reference = CASES[name]()
    index = 0 if which == "first" else len(tensors) - 1
    ours = [t.clone().requires_grad_(i == index) for i, t in enumerate(tensors)]
    theirs = [t.clone().requires_grad_(i == index) for i, t in enumerate(tensors)]
    y, r = op(*ours), reference(*theirs)
    assert y.grad_fn is not None
    g = torch.randn_like(r)
    y.backward(g)
    r.backward(g)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if i == index:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)
        else:
            assert a.grad is None


def test_backward_op_records_only_for_create_graph():
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    w = torch.randn(3, 1, 3, 3, dtype=torch.float64)
    g = torch.randn(1, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    backward = torch.ops.fusedops._depthwise_conv2d_backward
    with torch.no_grad():
        grads = backward(g, x, w, [1, 1], [1, 1], [1, 1], [True, True, False])
    assert all(t.grad_fn is None for t in grads)
    grad_input, grad_weight, _ = backward(g, x, w, [1, 1], [1, 1], [1, 1], [True, True, False])
    assert grad_input.grad_fn is not None
    with pytest.raises(RuntimeError, match="double backward.*depthwise_conv2d.*reference"):
        grad_input.sum().backward()
