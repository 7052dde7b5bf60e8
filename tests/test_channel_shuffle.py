"""channel_shuffle / concat_shuffle on CPU (native kernels and reference) against torch.nn.functional."""

import pytest
import torch
import torch.nn.functional as F

import fusedops

from conftest import SHUFFLE_LAYOUTS, dense_layout, make_input, requires_ops

pytestmark = requires_ops

CL = torch.channels_last
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def torchvision_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


# Besides those read in place, planes that are not dense, which the kernels copy.
LAYOUTS = [*SHUFFLE_LAYOUTS, "strided"]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_channel_shuffle_matches_torch(backend, layout, dtype, groups):
    for cpg, hw in ((1, (1, 1)), (2, (3, 5)), (5, (7, 4)), (17, (2, 3))):
        x = make_input((2, groups * cpg) + hw, layout, dtype=dtype)
        with fusedops.use_backend(backend):
            y = fusedops.channel_shuffle(x, groups)
        expected = F.channel_shuffle(x, groups)
        assert torch.equal(y, expected)
        assert torch.equal(y, torchvision_shuffle(x.contiguous(), groups))
        assert y.stride() == expected.stride()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_channel_shuffle_backward(layout, dtype, groups):
    x = make_input((2, groups * 3, 5, 3), layout, dtype=dtype, requires_grad=True)
    ref = x.detach().clone().requires_grad_()
    grad = make_input((2, groups * 3, 5, 3), dense_layout(layout), dtype=dtype)
    fusedops.channel_shuffle(x, groups).backward(grad)
    F.channel_shuffle(ref, groups).backward(grad)
    assert torch.equal(x.grad, ref.grad)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "channels_last_slice"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("channels", [48, 116, 232, 34])
def test_shufflenet_widths_forward_and_backward(layout, dtype, channels):
    # Two groups of 24, 58, 116 and 17 channels: full vectors plus masked tails in the channels-last
    # interleave (forward) and de-interleave (backward).
    x = make_input((2, channels, 3, 2), layout, dtype=dtype, requires_grad=True)
    ref = x.detach().clone().requires_grad_()
    y = fusedops.channel_shuffle(x, 2)
    expected = F.channel_shuffle(ref, 2)
    assert torch.equal(y, expected)
    grad = make_input(tuple(y.shape), dense_layout(layout), dtype=dtype)
    y.backward(grad)
    expected.backward(grad)
    assert torch.equal(x.grad, ref.grad)
    a, b = (make_input((2, channels // 2, 3, 2), layout, dtype=dtype) for _ in range(2))
    assert torch.equal(fusedops.concat_shuffle(a, b), F.channel_shuffle(torch.cat([a, b], 1), 2))


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_concat_shuffle_matches_torch(backend, layout, dtype, groups):
    for ca, cb, hw in ((groups, groups, (1, 1)), (3 * groups, 3 * groups, (5, 3)), (2 * groups, 5 * groups, (4, 7)),
                       (1, 2 * groups - 1, (3, 2))):
        a = make_input((2, ca) + hw, layout, dtype=dtype, requires_grad=dtype != torch.float16)
        b = make_input((2, cb) + hw, dense_layout(layout), dtype=dtype, requires_grad=a.requires_grad)
        a_ref, b_ref = (t.detach().clone().requires_grad_(a.requires_grad) for t in (a, b))
        with fusedops.use_backend(backend):
            y = fusedops.concat_shuffle(a, b, groups)
        expected = F.channel_shuffle(torch.cat([a_ref, b_ref], 1), groups)
        assert torch.equal(y, expected)
        assert y.stride() == expected.stride()
        if a.requires_grad:
            grad = make_input(tuple(y.shape), dense_layout(layout), dtype=dtype)
            with fusedops.use_backend(backend):
                y.backward(grad)
            expected.backward(grad)
            assert torch.equal(a.grad, a_ref.grad) and torch.equal(b.grad, b_ref.grad)


def test_concat_shuffle_mixed_layouts_follow_cat():
    a = make_input((2, 4, 3, 5), "channels_last")
    b = make_input((2, 4, 3, 5))
    y = fusedops.concat_shuffle(a, b, 2)
    assert torch.equal(y, F.channel_shuffle(torch.cat([a, b], 1), 2))
    assert y.is_contiguous()


def test_shufflenet_v2_stride1_pattern_reads_chunk_in_place():
    x = make_input((2, 16, 5, 5), "channels_last", requires_grad=True)
    x1, x2 = x.chunk(2, 1)
    branch = (x2 * 2).contiguous(memory_format=CL)
    y = fusedops.concat_shuffle(x1, branch, 2)
    xr = x.detach().clone().requires_grad_()
    r1, r2 = xr.chunk(2, 1)
    expected = F.channel_shuffle(torch.cat([r1, r2 * 2], 1), 2)
    assert torch.equal(y, expected) and y.is_contiguous(memory_format=CL)
    y.square().sum().backward()
    expected.square().sum().backward()
    assert torch.equal(x.grad, xr.grad)


def test_concat_shuffle_backward_op():
    grad = make_input((2, 12, 3, 4), dtype=torch.float64)
    ga, gb = torch.ops.fusedops._concat_shuffle_backward(grad, 5, 3)
    inverse = F.channel_shuffle(grad, 4)
    assert torch.equal(ga, inverse[:, :5]) and torch.equal(gb, inverse[:, 5:])


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "channel_slice"])
def test_gradcheck(layout):
    x = make_input((2, 6, 3, 4), layout, dtype=torch.float64, requires_grad=True)
    b = make_input((2, 6, 3, 4), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fusedops.channel_shuffle(t, 3), (x,))
    assert torch.autograd.gradgradcheck(lambda t: fusedops.channel_shuffle(t, 3), (x,))
    assert torch.autograd.gradcheck(lambda s, t: fusedops.concat_shuffle(s, t, 3), (x, b))
    assert torch.autograd.gradgradcheck(lambda s, t: fusedops.concat_shuffle(s, t, 4), (x, b))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(layout):
    x = make_input((2, 6, 3, 4), layout, requires_grad=True)
    b = make_input((2, 4, 3, 4), layout, requires_grad=True)
    torch.library.opcheck(torch.ops.fusedops.channel_shuffle, (x, 3))
    torch.library.opcheck(torch.ops.fusedops.concat_shuffle, (x, b, 5))
    torch.library.opcheck(torch.ops.fusedops._concat_shuffle_backward, (x.detach().requires_grad_(), 2, 3))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def unit(x, w):
        x1, x2 = x.chunk(2, 1)
        return fusedops.channel_shuffle(fusedops.concat_shuffle(x1, (x2 * w).relu(), 2), 4)

    compiled = torch.compile(unit, fullgraph=True)
    x = make_input((2, 8, 5, 5), requires_grad=True)
    w = torch.randn(1, 4, 1, 1, requires_grad=True)
    y = compiled(x, w)
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    r1, r2 = xr.chunk(2, 1)
    expected = F.channel_shuffle(F.channel_shuffle(torch.cat([r1, (r2 * wr).relu()], 1), 2), 4)
    assert torch.equal(y, expected)
    y.sum().backward()
    expected.sum().backward()
    assert torch.allclose(x.grad, xr.grad) and torch.allclose(w.grad, wr.grad)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_empty_batch(backend):
    with fusedops.use_backend(backend):
        for layout in ("nchw", "channels_last"):
            x = make_input((0, 6, 3, 3), layout, requires_grad=True)
            y = fusedops.channel_shuffle(x, 3)
            assert y.shape == x.shape
            y.sum().backward()
            assert x.grad.shape == x.shape
            z = fusedops.concat_shuffle(x, x, 2)
            assert z.shape == (0, 12, 3, 3)


def test_module():
    m = fusedops.nn.ChannelShuffle(3)
    x = make_input((2, 9, 4, 4))
    assert torch.equal(m(x), torch.nn.ChannelShuffle(3)(x))
    assert "groups=3" in repr(m)
    with pytest.raises(ValueError, match="groups"):
        fusedops.nn.ChannelShuffle(0)


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_bad_inputs(backend):
    x = make_input((2, 6, 3, 3))
    with fusedops.use_backend(backend):
        with pytest.raises(RuntimeError, match="channels of input .6. must be divisible by groups .4."):
            fusedops.channel_shuffle(x, 4)
        with pytest.raises(RuntimeError, match="groups must be positive"):
            fusedops.channel_shuffle(x, 0)
        with pytest.raises(RuntimeError, match="groups must be positive"):
            fusedops.channel_shuffle(x, -2)
        with pytest.raises(RuntimeError, match="input must be a 4-D"):
            fusedops.channel_shuffle(x[0], 2)
        with pytest.raises(RuntimeError, match="input must be a floating-point"):
            fusedops.channel_shuffle(x.long(), 2)
        with pytest.raises(TypeError, match="groups must be an int"):
            fusedops.channel_shuffle(x, 2.0)
        with pytest.raises(TypeError, match="input must be a torch.Tensor"):
            fusedops.channel_shuffle(x.numpy(), 2)
        with pytest.raises(RuntimeError, match="a and b must have the same batch size, height and width"):
            fusedops.concat_shuffle(x, make_input((2, 6, 3, 4)), 2)
        with pytest.raises(RuntimeError, match="a and b must have the same batch size"):
            fusedops.concat_shuffle(x, make_input((1, 6, 3, 3)), 2)
        with pytest.raises(RuntimeError, match="b dtype torch.float64 does not match a dtype torch.float32"):
            fusedops.concat_shuffle(x, x.double(), 2)
        with pytest.raises(RuntimeError, match="b must be a 4-D"):
            fusedops.concat_shuffle(x, x[0], 2)
        with pytest.raises(RuntimeError, match="channels of a and b together .12. must be divisible by groups .5."):
            fusedops.concat_shuffle(x, x, 5)
        with pytest.raises(RuntimeError, match="b is on meta but a is on cpu|same device"):
            fusedops.concat_shuffle(x, x.to("meta"), 2)


def test_native_op_checks_arguments():
    x = make_input((2, 6, 3, 3))
    with pytest.raises(RuntimeError, match="divisible by groups"):
        torch.ops.fusedops.channel_shuffle(x, 4)
    with pytest.raises(RuntimeError, match="b dtype"):
        torch.ops.fusedops.concat_shuffle(x, x.double(), 2)
    with pytest.raises(RuntimeError, match="channels_a must be in"):
        torch.ops.fusedops._concat_shuffle_backward(x, 7, 2)


def test_large_parallel_shapes():
    # Large enough to run on several threads.
    for layout in ("nchw", "channels_last", "channels_last_slice"):
        for groups in (2, 3):
            x = make_input((4, 48, 32, 32), layout)
            assert torch.equal(fusedops.channel_shuffle(x, groups), F.channel_shuffle(x, groups))
            b = make_input((4, 48, 32, 32), dense_layout(layout))
            assert torch.equal(fusedops.concat_shuffle(x, b, groups), F.channel_shuffle(torch.cat([x, b], 1), groups))
