"""The fast eager entry to the native ops (fusedops._C._eager_op, csrc/runtime/eager_call.cpp).

It must be the same call as torch.ops.fusedops.<op>: same results, same autograd, same errors. It returns
NotImplemented for arguments it leaves to torch.ops (non-plain types, __torch_function__ overrides,
torch-function modes), and the public wrappers then take the regular path.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import fusedops
from fusedops.ops import _library

from conftest import requires_ops

pytestmark = requires_ops

ONE, ZERO = (1, 1), (0, 0)


def _depthwise_args():
    return (torch.randn(2, 4, 7, 6), torch.randn(4, 1, 3, 3), torch.randn(4), (1, 2), (1, 0), (1, 1))


def test_same_result_as_torch_ops():
    x = torch.randn(2, 6, 5, 5)
    fast = _library.eager_native("channel_shuffle")
    assert torch.equal(fast(x, 3), torch.ops.fusedops.channel_shuffle(x, 3))
    a, b = torch.randn(2, 3, 5, 5), torch.randn(2, 5, 5, 5)
    assert torch.equal(_library.eager_native("concat_shuffle")(a, b, 2), torch.ops.fusedops.concat_shuffle(a, b, 2))
    args = _depthwise_args()
    assert torch.equal(_library.eager_native("depthwise_conv2d")(*args), torch.ops.fusedops.depthwise_conv2d(*args))


def test_tuple_returns_and_undefined_tensors():
    x, w, b, stride, padding, dilation = _depthwise_args()
    y = torch.ops.fusedops.depthwise_conv2d(x, w, b, stride, padding, dilation)
    grad = torch.randn_like(y)
    for mask in ([True, True, True], (False, True, False)):
        args = (grad, x, w, stride, padding, dilation, mask)
        fast = _library.eager_native("_depthwise_conv2d_backward")(*args)
        expected = torch.ops.fusedops._depthwise_conv2d_backward(*args)
        assert isinstance(fast, tuple) and len(fast) == 3
        for got, want in zip(fast, expected):
            assert (got is None) == (want is None)
            if got is not None:
                assert torch.equal(got, want)


def test_int_broadcast_to_pairs():
    x, w, b = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3), None
    fast = _library.eager_native("depthwise_conv2d")
    assert torch.equal(fast(x, w, b, 2, 1, 1), torch.ops.fusedops.depthwise_conv2d(x, w, b, [2, 2], [1, 1], [1, 1]))


@pytest.mark.parametrize("args", [
    (np.int64(2),),            # numpy integer
    (True,),                   # bool is not an int here
    (2.0,),                    # float
])
def test_non_plain_scalars_left_to_torch_ops(args):
    x = torch.randn(1, 4, 2, 2)
    assert _library.eager_native("channel_shuffle")(x, *args) is NotImplemented


@pytest.mark.parametrize("stride", [torch.Size([1, 1]), (1, 1, 1), (np.int64(1), 1), [1.0, 1]])
def test_non_plain_lists_left_to_torch_ops(stride):
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    assert _library.eager_native("depthwise_conv2d")(x, w, None, stride, ONE, ONE) is NotImplemented


def test_wrong_argument_count_left_to_torch_ops():
    x = torch.randn(1, 4, 2, 2)
    fast = _library.eager_native("channel_shuffle")
    assert fast(x) is NotImplemented
    assert fast(x, 2, 3) is NotImplemented


def test_public_wrappers_still_accept_what_torch_ops_converts():
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    expected = F.conv2d(x, w, None, 1, 1, 1, groups=4)
    for stride in (torch.Size([1, 1]), np.int64(1), [1, 1], (1,)):
        torch.testing.assert_close(fusedops.depthwise_conv2d(x, w, stride=stride, padding=1), expected)


class LoggingTensor(torch.Tensor):
    """A subclass with a __torch_function__ override: it must see the op."""

    seen = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(func)
        return super().__torch_function__(func, types, args, kwargs or {})


def test_torch_function_subclass_sees_the_op():
    LoggingTensor.seen.clear()
    x = torch.randn(2, 6, 5, 5).as_subclass(LoggingTensor)
    assert _library.eager_native("channel_shuffle")(x, 3) is NotImplemented
    y = fusedops.channel_shuffle(x, 3)
    assert torch.ops.fusedops.channel_shuffle.default in LoggingTensor.seen
    assert type(y) is LoggingTensor
    assert torch.equal(y.as_subclass(torch.Tensor), F.channel_shuffle(x.as_subclass(torch.Tensor), 3))


def test_parameter_weights_take_the_fast_path():
    x, w = torch.randn(1, 4, 6, 6), torch.nn.Parameter(torch.randn(4, 1, 3, 3))
    out = _library.eager_native("depthwise_conv2d")(x, w, None, ONE, ONE, ONE)
    assert out is not NotImplemented and out.requires_grad and out.grad_fn is not None
    out.sum().backward()
    w_ref = w.detach().clone().requires_grad_()
    F.conv2d(x, w_ref, None, 1, 1, 1, groups=4).sum().backward()
    torch.testing.assert_close(w.grad, w_ref.grad)


class RecordingMode(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_torch_function_mode_sees_the_op():
    x = torch.randn(2, 6, 5, 5)
    with RecordingMode() as mode:
        assert _library.eager_native("channel_shuffle")(x, 3) is NotImplemented
        y = fusedops.channel_shuffle(x, 3)
    assert torch.ops.fusedops.channel_shuffle.default in mode.seen
    assert torch.equal(y, F.channel_shuffle(x, 3))


def test_op_errors_raised_as_through_torch_ops():
    x = torch.randn(1, 4, 2, 2)
    fast = _library.eager_native("channel_shuffle")
    with pytest.raises(RuntimeError, match=r"must be divisible by groups \(3\)"):
        fast(x, 3)
    with pytest.raises(RuntimeError, match="groups must be positive"):
        fast(x, 0)
    with pytest.raises(RuntimeError, match="input must be a 4-D"):
        fast(torch.randn(4, 2, 2), 2)


def test_training_step_through_the_fast_path():
    x = torch.randn(2, 4, 7, 6, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    out = _library.eager_native("depthwise_conv2d")(x, w, None, ONE, ONE, ONE)
    assert out.grad_fn is not None
    out.square().sum().backward()
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(x_ref, w_ref, None, 1, 1, 1, groups=4).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(w.grad, w_ref.grad)


def test_ops_under_dispatch_modes():
    # A dispatch mode (here FakeTensorMode) intercepts the call inside the dispatcher, as through torch.ops.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.randn(2, 6, 5, 5)
        y = fusedops.channel_shuffle(x, 3)
        assert y.shape == x.shape
        z = fusedops.depthwise_conv2d(torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3), stride=2, padding=1)
        assert z.shape == (1, 4, 3, 3)


def test_subclasses_opting_out_of_torch_function_take_the_fast_path():
    class Plain(torch.Tensor):
        __torch_function__ = torch._C._disabled_torch_function_impl

    fast = _library.eager_native("channel_shuffle")
    x = torch.randn(1, 4, 2, 2)
    for _ in range(2):  # the second call hits the remembered type
        out = fast(x.as_subclass(Plain), 2)
        assert out is not NotImplemented and torch.equal(out, F.channel_shuffle(x, 2))
    assert fast(x.as_subclass(LoggingTensor), 2) is NotImplemented


def test_bound_call_gives_the_unbound_result():
    x, w, b, stride, padding, dilation = _depthwise_args()
    expected = torch.ops.fusedops.depthwise_conv2d(x, w, b, stride, padding, dilation)
    # The input given at each call; weights and options converted once.
    bound = _library.bound_native("depthwise_conv2d", (..., w, b, stride, padding, dilation))
    assert torch.equal(bound(x), expected)
    # Holes anywhere, filled in order.
    bound = _library.bound_native("depthwise_conv2d", (..., w, ..., stride, padding, dilation))
    assert torch.equal(bound(x, b), expected)
    assert torch.equal(bound(x, None), torch.ops.fusedops.depthwise_conv2d(x, w, None, stride, padding, dilation))
    # Later arguments left out take their defaults (dwpw_conv2d's packed_weights=None).
    pw_w, pw_b = torch.randn(5, 4, 1, 1), torch.randn(5)
    args = (w, b, pw_w, pw_b, stride, padding, dilation, "relu", "none")
    bound = _library.bound_native("dwpw_conv2d", (..., *args))
    assert torch.equal(bound(x), torch.ops.fusedops.dwpw_conv2d(x, *args))
    # Bound tensors are the same objects: an in-place change is seen (as a prepared call's frozen weights are not
    # changed behind its back, this only pins down what binding keeps).
    bound = _library.bound_native("depthwise_conv2d", (..., w, None, stride, padding, dilation))
    w.mul_(2)
    assert torch.equal(bound(x), torch.ops.fusedops.depthwise_conv2d(x, w, None, stride, padding, dilation))


def test_bound_call_leaves_what_it_cannot_take_to_torch_ops():
    x, w, b, stride, padding, dilation = _depthwise_args()
    # A template argument of a non-plain type, or too many or too few of them: nothing bound.
    assert _library.bound_native("depthwise_conv2d", (..., w, b, torch.Size(stride), padding, dilation)) is None
    assert _library.bound_native("depthwise_conv2d", (..., w, b, stride, padding, dilation, 1)) is None
    assert _library.bound_native("depthwise_conv2d", (...,)) is None
    bound = _library.bound_native("depthwise_conv2d", (..., w, b, stride, padding, dilation))
    # A call with the wrong number of arguments for the holes, a non-plain one, under a torch-function mode.
    assert bound() is NotImplemented and bound(x, x) is NotImplemented
    assert bound(x.as_subclass(LoggingTensor)) is NotImplemented
    with RecordingMode():
        assert bound(x) is NotImplemented
    # The op's own errors raised as through torch.ops.
    with pytest.raises(RuntimeError, match="input must be a 4-D"):
        bound(torch.randn(4, 7, 6))
