"""The training path's batch norm + activation ops (csrc/cpu/batch_norm_activation.cpp) against F.batch_norm and the
activation in train mode: outputs, statistics, running statistics, gradients; the in-place forms; opcheck; errors.
Then the blocks' fused training path (fusedops/nn/training.py): what it keeps for the backward, that it runs, and
the batch norm's modes (cumulative momentum, no running statistics, no_grad, double backward)."""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusedops
from fusedops.nn import InvertedResidual, training

from conftest import CL, assert_close_scaled, check_training_matches, make_input, requires_ops, tolerance

pytestmark = requires_ops

ops = torch.ops.fusedops
ACTIVATIONS = {"none": lambda x: x, "relu": F.relu, "relu6": lambda x: F.hardtanh(x, 0.0, 6.0),
               "hardswish": F.hardswish, "silu": F.silu}
# Channel counts around the vector widths (16 floats, 8 doubles; 8 and 4 with AVX2) and a 1x1 map; the mean is far
# from zero. 59 and 40 channels: the channels-last reductions' groups of four vectors and the 1 to 3 left over.
SHAPES = [(4, 19, 5, 7), (2, 33, 8, 8), (9, 5, 1, 1), (2, 59, 3, 5), (3, 40, 2, 3)]


def _parameters(C, dtype, affine=True):
    g = torch.Generator().manual_seed(C)
    if not affine:
        return None, None
    return ((torch.rand(C, dtype=dtype, generator=g) + 0.5).requires_grad_(),
            torch.randn(C, dtype=dtype, generator=g).requires_grad_())


def _reference(x, weight, bias, running_mean, running_var, activation, momentum=0.1, eps=1e-5):
    return ACTIVATIONS[activation](F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layout", ("nchw", "channels_last", "noncontig"))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16))
def test_parity(dtype, shape, layout, activation):
    """Forward, statistics, running statistics, the apply op (the same bits) and every gradient, against
    F.batch_norm in train mode and the activation (float64 reference)."""
    C = shape[1]
    x = (make_input(shape, layout, dtype=dtype) * 3 + 2).requires_grad_()
    weight, bias = _parameters(C, dtype)
    running = (torch.randn(C, dtype=dtype), torch.rand(C, dtype=dtype) + 1)
    expected_running = tuple(r.double() for r in running)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    expected = _reference(x64, w64, b64, *expected_running, activation)
    out, mean, invstd = ops._batch_norm_activation(x.detach(), weight.detach(), bias.detach(), *running, 0.1, 1e-5,
                                                   activation)
    tol = tolerance(dtype)
    assert_close_scaled(out, expected, **tol, name="output")
    expected_format = CL if layout == "channels_last" else torch.contiguous_format
    assert out.is_contiguous(memory_format=expected_format)
    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == invstd.dtype == stat_dtype
    var, m = torch.var_mean(x64.detach(), dim=(0, 2, 3), unbiased=False)
    assert_close_scaled(mean, m, **tol, name="mean")
    assert_close_scaled(invstd, (var + 1e-5).rsqrt(), **tol, name="invstd")
    for actual, reference, name in zip(running, expected_running, ("running_mean", "running_var")):
        assert_close_scaled(actual, reference, **tol, name=name)
    applied = ops._batch_norm_activation_apply(x.detach(), weight.detach(), bias.detach(), mean, invstd, activation)
    assert torch.equal(applied, out)

    grad = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected_grads = torch.autograd.grad(expected, (x64, w64, b64), grad)
    grads = ops._batch_norm_activation_backward(grad.to(dtype), x.detach(), weight.detach(), bias.detach(), mean,
                                                invstd, activation, [True, True, True])
    for actual, reference, name in zip(grads, expected_grads, ("grad_input", "grad_weight", "grad_bias")):
        assert actual.dtype == dtype
        assert_close_scaled(actual, reference, **tol, name=name)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_without_affine_parameters_or_running_statistics(layout):
    x = make_input((3, 6, 4, 5), layout, dtype=torch.float64).requires_grad_()
    out, mean, invstd = ops._batch_norm_activation(x.detach(), None, None, None, None, 0.1, 1e-3, "relu")
    expected = F.relu(F.batch_norm(x, None, None, None, None, True, 0.1, 1e-3))
    assert_close_scaled(out, expected, **tolerance(torch.float64))
    grad = torch.randn_like(out)
    grad_input, grad_weight, grad_bias = ops._batch_norm_activation_backward(grad, x.detach(), None, None, mean, invstd,
                                                                             "relu", [True, True, True])
    assert grad_weight is None and grad_bias is None
    assert_close_scaled(grad_input, torch.autograd.grad(expected, x, grad)[0], **tolerance(torch.float64))


@pytest.mark.parametrize("activation", ("hardswish", "silu"))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_in_place_forms(layout, activation):
    """The in-place forms give the out-of-place results, over the input and over grad_output (with SiLU, whose
    backward keeps the activation's gradient in the output buffer between its two passes, too)."""
    x = make_input((2, 20, 6, 6), layout, dtype=torch.float64)
    weight, bias = (t.detach() for t in _parameters(20, torch.float64))
    out, mean, invstd = ops._batch_norm_activation(x, weight, bias, None, None, 0.1, 1e-5, activation)
    y = x.clone()
    mean_, invstd_ = ops._batch_norm_activation_(y, weight, bias, None, None, 0.1, 1e-5, activation)
    assert torch.equal(y, out) and torch.equal(mean_, mean) and torch.equal(invstd_, invstd)
    grad = make_input((2, 20, 6, 6), layout, dtype=torch.float64)
    expected = ops._batch_norm_activation_backward(grad, x, weight, bias, mean, invstd, activation, [True] * 3)
    g = grad.clone()
    grad_weight, grad_bias = ops._batch_norm_activation_backward_(g, x, weight, bias, mean, invstd, activation,
                                                                  [True, True])
    assert torch.equal(g, expected[0]) and torch.equal(grad_weight, expected[1]) and torch.equal(grad_bias,
                                                                                                 expected[2])


def test_in_place_forms_refuse_other_layouts():
    x = make_input((2, 4, 5, 5), "noncontig", dtype=torch.float64)
    with pytest.raises(RuntimeError, match="input must be contiguous or channels_last"):
        ops._batch_norm_activation_(x, None, None, None, None, 0.1, 1e-5, "relu")
    x = make_input((2, 4, 5, 5), "channels_last", dtype=torch.float64)
    _, mean, invstd = ops._batch_norm_activation(x, None, None, None, None, 0.1, 1e-5, "relu")
    with pytest.raises(RuntimeError, match="grad_output must be channels_last like the input"):
        ops._batch_norm_activation_backward_(torch.randn(2, 4, 5, 5, dtype=torch.float64), x, None, None, mean,
                                             invstd, "relu", [False, False])


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_opcheck(layout):
    x = make_input((2, 5, 3, 4), layout)
    weight, bias = (t.detach() for t in _parameters(5, torch.float32))
    running = (torch.zeros(5), torch.ones(5))
    torch.library.opcheck(ops._batch_norm_activation, (x, weight, bias, *running, 0.1, 1e-5, "relu6"))
    torch.library.opcheck(ops._batch_norm_activation_, (x.clone(), weight, bias, *running, 0.1, 1e-5, "relu6"))
    _, mean, invstd = ops._batch_norm_activation(x, weight, bias, None, None, 0.1, 1e-5, "silu")
    torch.library.opcheck(ops._batch_norm_activation_apply, (x, weight, bias, mean, invstd, "silu"))
    grad = make_input((2, 5, 3, 4), layout)
    torch.library.opcheck(ops._batch_norm_activation_backward,
                          (grad, x, weight, bias, mean, invstd, "silu", [True, True, False]))
    torch.library.opcheck(ops._batch_norm_activation_backward_,
                          (grad.clone(), x, weight, bias, mean, invstd, "silu", [True, False]))


def test_errors_name_the_argument():
    x = torch.randn(2, 4, 3, 3)
    with pytest.raises(RuntimeError, match="input must be 4-D"):
        ops._batch_norm_activation(x[0], None, None, None, None, 0.1, 1e-5, "relu")
    with pytest.raises(RuntimeError, match=r"weight must have shape \(4,\)"):
        ops._batch_norm_activation(x, torch.ones(3), None, None, None, 0.1, 1e-5, "relu")
    with pytest.raises(RuntimeError, match="running_mean and running_var must be given both or neither"):
        ops._batch_norm_activation(x, None, None, torch.zeros(4), None, 0.1, 1e-5, "relu")
    with pytest.raises(RuntimeError, match="activation must be one of"):
        ops._batch_norm_activation(x, None, None, None, None, 0.1, 1e-5, "gelu")
    with pytest.raises(RuntimeError, match="Expected more than 1 value per channel when training"):
        ops._batch_norm_activation(x[:1, :, :1, :1], None, None, None, None, 0.1, 1e-5, "relu")
    with pytest.raises(RuntimeError, match="input must be a floating-point tensor"):
        ops._batch_norm_activation(x.int(), None, None, None, None, 0.1, 1e-5, "relu")
    _, mean, invstd = ops._batch_norm_activation(x, None, None, None, None, 0.1, 1e-5, "relu")
    with pytest.raises(RuntimeError, match="grad_output must have the input's shape and dtype"):
        ops._batch_norm_activation_backward(x.double(), x, None, None, mean, invstd, "relu", [True, True, True])
    with pytest.raises(RuntimeError, match=r"invstd must have shape \(4,\)"):
        ops._batch_norm_activation_apply(x, None, None, mean, invstd[:2], "relu")


# Depthwise geometries (kernel, stride, padding, dilation) of the normalised map: MobileNet's 3x3 and 5x5 at stride
# 1 and 2, a dilated one, asymmetric padding, and no padding.
DEPTHWISE_GEOMETRIES = [((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 3), (2, 2), (1, 1), (1, 1)),
                        ((5, 5), (1, 1), (2, 2), (1, 1)), ((5, 5), (2, 2), (2, 2), (1, 1)),
                        ((3, 3), (1, 1), (2, 2), (2, 2)), ((3, 5), (2, 1), (0, 2), (1, 1)),
                        ((3, 3), (1, 1), (0, 0), (1, 1))]


@pytest.mark.parametrize("geometry", DEPTHWISE_GEOMETRIES, ids=str)
@pytest.mark.parametrize("activation", ("relu6", "hardswish", "silu", "none"))
@pytest.mark.parametrize("shape", [(2, 19, 9, 7), (3, 8, 12, 12), (1, 33, 5, 6)], ids=str)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16))
def test_depthwise_of_the_normalised_map(dtype, shape, activation, geometry):
    """_batch_norm_activation_depthwise: the depthwise convolution of _batch_norm_activation's output (float64
    reference), its statistics and running statistics those of _batch_norm_activation, its output channels-last, and
    the same as the two ops in sequence."""
    C = shape[1]
    kernel, stride, padding, dilation = geometry
    x = make_input(shape, "channels_last", dtype=dtype) * 3 + 2
    weight, bias = (t.detach() for t in _parameters(C, dtype))
    dw = torch.randn(C, 1, *kernel, dtype=dtype, generator=torch.Generator().manual_seed(2))
    running = (torch.randn(C, dtype=dtype), torch.rand(C, dtype=dtype) + 1)
    expected_running = tuple(r.double() for r in running)
    normalised = _reference(x.double(), weight.double(), bias.double(), *expected_running, activation)
    expected = F.conv2d(normalised, dw.double(), None, stride, padding, dilation, groups=C)
    out, mean, invstd = ops._batch_norm_activation_depthwise(x, weight, bias, *running, 0.1, 1e-5, activation, dw,
                                                             stride, padding, dilation)
    tol = tolerance(dtype)
    assert out.is_contiguous(memory_format=CL) and out.dtype == dtype
    assert_close_scaled(out, expected, **tol, name="output")
    for actual, reference, name in zip(running, expected_running, ("running_mean", "running_var")):
        assert_close_scaled(actual, reference, **tol, name=name)
    # The two ops in sequence: the same statistics bit for bit, and the same convolution of the same values.
    applied, mean2, invstd2 = ops._batch_norm_activation(x, weight, bias, None, None, 0.1, 1e-5, activation)
    assert torch.equal(mean, mean2) and torch.equal(invstd, invstd2)
    sequence = ops.depthwise_conv2d(applied, dw, None, stride, padding, dilation)
    torch.testing.assert_close(out, sequence, rtol=0, atol=0)


@pytest.mark.parametrize("geometry", DEPTHWISE_GEOMETRIES, ids=str)
@pytest.mark.parametrize("activation", ("relu6", "hardswish", "silu"))
@pytest.mark.parametrize("shape", [(2, 19, 9, 7), (1, 33, 5, 6)], ids=str)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16))
def test_depthwise_of_the_normalised_map_backward(dtype, shape, activation, geometry):
    """_batch_norm_activation_depthwise_backward: the gradients of the depthwise convolution's input and taps where
    its input is activation(batch_norm(x)) from saved statistics (float64 autograd reference), and each alone."""
    C = shape[1]
    kernel, stride, padding, dilation = geometry
    x = make_input(shape, "channels_last", dtype=dtype) * 3 + 2
    weight, bias = (t.detach() for t in _parameters(C, dtype))
    dw = torch.randn(C, 1, *kernel, dtype=dtype, generator=torch.Generator().manual_seed(2))
    out, mean, invstd = ops._batch_norm_activation_depthwise(x, weight, bias, None, None, 0.1, 1e-5, activation, dw,
                                                             stride, padding, dilation)
    grad = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    normalised = ops._batch_norm_activation_apply(x, weight, bias, mean, invstd, activation).double().requires_grad_()
    dw64 = dw.double().requires_grad_()
    expected = torch.autograd.grad(F.conv2d(normalised, dw64, None, stride, padding, dilation, groups=C),
                                   (normalised, dw64), grad)
    args = (grad.to(dtype).contiguous(memory_format=CL), x, weight, bias, mean, invstd, activation, dw, stride,
            padding, dilation)
    grads = ops._batch_norm_activation_depthwise_backward(*args, [True, True])
    tol = tolerance(dtype)
    for actual, reference, name in zip(grads, expected, ("grad_input", "grad_dw_weight")):
        assert actual.dtype == dtype
        assert_close_scaled(actual, reference, **tol, name=name)
    assert grads[0].is_contiguous(memory_format=CL)
    only_input = ops._batch_norm_activation_depthwise_backward(*args, [True, False])
    only_weight = ops._batch_norm_activation_depthwise_backward(*args, [False, True])
    assert only_input[1] is None and only_weight[0] is None
    assert torch.equal(only_input[0], grads[0]) and torch.equal(only_weight[1], grads[1])


def test_depthwise_of_the_normalised_map_backward_other_inputs():
    """Many bands per worker (300 rows of 16 KiB), an NCHW grad_output, a non-finite gradient (the padding's
    products skipped, as the standalone backward skips them), opcheck, and the errors."""
    for shape, layout in (((1, 64, 300, 64), "channels_last"), ((2, 12, 9, 8), "nchw")):
        C = shape[1]
        x = make_input(shape, "channels_last")
        weight, bias = (t.detach() for t in _parameters(C, torch.float32))
        dw = torch.randn(C, 1, 3, 3)
        out, mean, invstd = ops._batch_norm_activation_depthwise(x, weight, bias, None, None, 0.1, 1e-5, "relu6", dw,
                                                                 (1, 1), (1, 1), (1, 1))
        grad = make_input(tuple(out.shape), layout)
        normalised = ops._batch_norm_activation_apply(x, weight, bias, mean, invstd, "relu6")
        expected = ops._depthwise_conv2d_backward(grad, normalised, dw, (1, 1), (1, 1), (1, 1), [True, True, False])
        grads = ops._batch_norm_activation_depthwise_backward(grad, x, weight, bias, mean, invstd, "relu6", dw, (1, 1),
                                                              (1, 1), (1, 1), [True, True])
        torch.testing.assert_close(grads[0], expected[0], rtol=0, atol=0)
        torch.testing.assert_close(grads[1], expected[1], rtol=1e-5, atol=1e-4)
    grad = grad.contiguous(memory_format=CL)
    args = (grad, x, weight, bias, mean, invstd, "relu6", dw, [1, 1], [1, 1], [1, 1])
    torch.library.opcheck(ops._batch_norm_activation_depthwise_backward, (*args, [True, True]))
    grad = grad.clone()
    grad[0, 1, 0, 0] = float("inf")
    expected = ops._depthwise_conv2d_backward(grad, normalised, dw, (1, 1), (1, 1), (1, 1), [False, True, False])[1]
    got = ops._batch_norm_activation_depthwise_backward(grad, x, weight, bias, mean, invstd, "relu6", dw, (1, 1),
                                                        (1, 1), (1, 1), [False, True])[1]
    assert not got.isfinite().all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4, equal_nan=True)
    with pytest.raises(RuntimeError, match="grad_output has shape"):
        ops._batch_norm_activation_depthwise_backward(grad[:, :, :3], *args[1:], [True, True])
    with pytest.raises(RuntimeError, match=r"mean must have shape \(12,\)"):
        ops._batch_norm_activation_depthwise_backward(*args[:4], mean[:3], *args[5:], [True, True])
    with pytest.raises(RuntimeError, match="activation must be one of"):
        ops._batch_norm_activation_depthwise_backward(*args[:6], "gelu", *args[7:], [True, True])


@pytest.mark.parametrize("case", ("nchw", "noncontig", "nonfinite_taps", "no_affine", "many_bands"))
def test_depthwise_of_the_normalised_map_other_inputs(case):
    """Inputs in other layouts (taken as channels-last), non-finite taps (the padding stays zero: the standalone
    op's path), no affine parameters or running statistics, and a map tall enough for several bands per strip."""
    # many_bands: 300 rows of 16 KiB, more than a band holds at any L2 size up to 4 MiB.
    shape = (1, 64, 300, 64) if case == "many_bands" else (2, 12, 9, 8)
    C = shape[1]
    x = make_input(shape, {"nchw": "nchw", "noncontig": "noncontig"}.get(case, "channels_last"))
    weight, bias = (None, None) if case == "no_affine" else (t.detach() for t in _parameters(C, torch.float32))
    dw = torch.randn(C, 1, 3, 3)
    if case == "nonfinite_taps":
        dw[1, 0, 0, 0] = float("inf")
    out, mean, invstd = ops._batch_norm_activation_depthwise(x, weight, bias, None, None, 0.1, 1e-5, "relu6", dw,
                                                             (1, 1), (1, 1), (1, 1))
    applied, mean2, invstd2 = ops._batch_norm_activation(x.contiguous(memory_format=CL), weight, bias, None, None,
                                                         0.1, 1e-5, "relu6")
    assert torch.equal(mean, mean2) and torch.equal(invstd, invstd2)
    expected = ops.depthwise_conv2d(applied, dw, None, (1, 1), (1, 1), (1, 1))
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    assert out.is_contiguous(memory_format=CL)


def test_depthwise_of_the_normalised_map_opcheck_and_errors():
    x = make_input((2, 5, 6, 4), "channels_last")
    weight, bias = (t.detach() for t in _parameters(5, torch.float32))
    dw = torch.randn(5, 1, 3, 3)
    torch.library.opcheck(ops._batch_norm_activation_depthwise,
                          (x, weight, bias, torch.zeros(5), torch.ones(5), 0.1, 1e-5, "relu6", dw, [2, 2], [1, 1],
                           [1, 1]))
    args = (0.1, 1e-5, "relu6")
    with pytest.raises(RuntimeError, match=r"dw_weight must have shape \(5, 1, kH, kW\)"):
        ops._batch_norm_activation_depthwise(x, weight, bias, None, None, *args, torch.randn(10, 1, 3, 3), [1, 1],
                                             [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="dw_weight"):
        ops._batch_norm_activation_depthwise(x, weight, bias, None, None, *args, dw.double(), [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="padding"):
        ops._batch_norm_activation_depthwise(x, weight, bias, None, None, *args, dw, [1, 1], [-1, 1], [1, 1])
    with pytest.raises(RuntimeError, match=r"weight must have shape \(5,\)"):
        ops._batch_norm_activation_depthwise(x, torch.ones(3), bias, None, None, *args, dw, [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="Expected more than 1 value per channel when training"):
        ops._batch_norm_activation_depthwise(x[:1, :, :1, :1], None, None, None, None, *args, dw, [1, 1], [1, 1],
                                             [1, 1])


# ---------------------------------------------------------------------------------------------------
# The blocks' fused training path


def _saved_bytes(module, x):
    """Bytes of the distinct tensors autograd keeps for the backward of module(x) (parameters left out)."""
    parameters = {p.data_ptr() for p in module.parameters()}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in parameters:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(storages.values())


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_block_keeps_two_expanded_tensors(layout):
    """A train-mode MobileNetV2 block keeps two tensors of the expanded width for its backward where torchvision's
    keeps four: the block's input, the expansion's and the depthwise outputs, the projection's output and the batch
    norms' statistics, no more; and the fused path ran (its backward node is the block's)."""
    tv = pytest.importorskip("torchvision.models.mobilenetv2")
    ref = tv.InvertedResidual(16, 16, 1, 6).train()
    block = InvertedResidual(16, 16, 1, 6).train()
    block.load_state_dict(ref.state_dict())
    fmt = CL if layout == "channels_last" else torch.contiguous_format
    block, ref = block.to(memory_format=fmt), ref.to(memory_format=fmt)
    x = make_input((4, 16, 12, 12), layout).requires_grad_()
    assert type(block(x).grad_fn).__name__ == "_InvertedResidualTrainingBackward"
    fused, eager = _saved_bytes(block, x), _saved_bytes(ref, x)
    plane = 4 * 12 * 12 * 4  # bytes of one channel of the batch
    statistics = 2 * (96 + 96 + 16) * 4  # mean and invstd of each batch norm
    assert fused == (16 + 2 * 96 + 16) * plane + statistics, (fused, eager)
    assert fused < 0.4 * eager, (fused, eager)


@pytest.mark.parametrize("momentum", (0.1, None))
@pytest.mark.parametrize("track", (True, False))
def test_block_batch_norm_modes(momentum, track):
    """The batch norms' cumulative average (momentum None) and no running statistics, as torchvision's block."""
    tv = pytest.importorskip("torchvision.models.mobilenetv2")

    def set_batch_norms(module):
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = momentum
                if not track:
                    m.track_running_stats = False
                    m.running_mean = m.running_var = m.num_batches_tracked = None
        return module

    ref = set_batch_norms(tv.InvertedResidual(8, 8, 1, 4).double())
    block = set_batch_norms(InvertedResidual(8, 8, 1, 4).double())
    block.load_state_dict(ref.state_dict())
    inputs = [make_input((4, 8, 6, 6), layout, dtype=torch.float64) for layout in ("nchw", "channels_last")]
    if track:
        check_training_matches(block, ref, inputs, lr=0.1)
    else:
        block.train(), ref.train()
        for x in inputs:
            assert_close_scaled(block(x), ref(x), **tolerance(torch.float64))


def test_block_under_no_grad_moves_running_statistics_once():
    block = InvertedResidual(8, 8, 1, 6).train()
    ref = InvertedResidual(8, 8, 1, 6).train()
    ref.load_state_dict(block.state_dict())
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        block(x)
    torch.manual_seed(0)
    for module in ref.modules():  # the reference: the submodules in sequence
        module._trains_fused = False
    with torch.no_grad():
        ref(x)
    for (name, b), r in zip(block.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, r, rtol=1e-5, atol=1e-6, msg=name)
    assert all(b.item() == 1 for name, b in block.named_buffers() if name.endswith("num_batches_tracked"))


def test_block_double_backward_is_a_clear_error():
    block = InvertedResidual(8, 8, 1, 6).double().train()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(block(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_training_path_stays_out_of_compile_and_other_devices():
    """Under torch.compile and on the meta device the blocks train through their submodules."""
    block = InvertedResidual(8, 8, 1, 6).train()
    stages = block._stages()
    x = torch.randn(2, 8, 5, 5)
    assert training.applies(x, stages)
    assert not training.applies(x.to("meta"), stages)
    assert not training.applies(x[:1, :, :1, :1], stages)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    ref = InvertedResidual(8, 8, 1, 6).train()
    ref.load_state_dict(block.state_dict())
    assert_close_scaled(compiled(x), ref(x), **tolerance(torch.float32))


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_block_with_squeeze_excitation(layout):
    """A MobileNetV3 block with squeeze-excitation trains through the fused path too (the squeeze-excitation from
    its convolutions, keeping its channel means and gate): torchvision's outputs, gradients and statistics, and at
    most half the bytes kept."""
    tv = pytest.importorskip("torchvision.models.mobilenetv3")
    from fusedops.nn import InvertedResidualV3
    config = tv.InvertedResidualConfig(16, 3, 48, 16, True, "HS", 1, 1, 1.0)
    norm = functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)  # torchvision's MobileNetV3
    ref = tv.InvertedResidual(config, norm).double()
    block = InvertedResidualV3.from_config(config, norm).double()
    block.load_state_dict(ref.state_dict())
    fmt = CL if layout == "channels_last" else torch.contiguous_format
    block, ref = block.to(memory_format=fmt), ref.to(memory_format=fmt)
    inputs = [make_input((4, 16, 10, 10), layout, dtype=torch.float64) for _ in range(2)]
    check_training_matches(block, ref, inputs, lr=0.1)
    x = inputs[0].requires_grad_()
    assert type(block(x).grad_fn).__name__ == "_InvertedResidualTrainingBackward"
    assert _saved_bytes(block, x) <= _saved_bytes(ref, x) / 2


@pytest.mark.parametrize("case", ("frozen_parameters", "other_activation"))
def test_block_squeeze_excitation_variants(case):
    """The squeeze-excitation's parameters that need no gradient get none, the others torchvision's; one with an
    activation the op does not compute (GELU) runs as the module it is, inside the fused path."""
    tv = pytest.importorskip("torchvision.models.mobilenetv3")
    from fusedops.nn import InvertedResidualV3
    config = tv.InvertedResidualConfig(16, 3, 48, 24, True, "RE", 2, 1, 1.0)
    ref = tv.InvertedResidual(config, nn.BatchNorm2d).double()
    block = InvertedResidualV3.from_config(config, nn.BatchNorm2d).double()
    block.load_state_dict(ref.state_dict())
    se, se_ref = block.block[2], ref.block[2]
    if case == "frozen_parameters":
        for module in (se, se_ref):
            module.fc1.weight.requires_grad_(False)
            module.fc2.bias.requires_grad_(False)
    else:
        se.activation, se_ref.activation = nn.GELU(), nn.GELU()
    inputs = [make_input((3, 16, 9, 9), "channels_last", dtype=torch.float64) for _ in range(2)]
    if case == "other_activation":
        check_training_matches(block, ref, inputs, lr=0.1)
    x = inputs[0].requires_grad_()
    y = block(x)
    assert type(y.grad_fn).__name__ == "_InvertedResidualTrainingBackward"
    if case == "frozen_parameters":
        grad_output = torch.randn_like(y)
        y.backward(grad_output)
        ref(x.detach()).backward(grad_output)
        for (name, p), q in zip(block.named_parameters(), ref.parameters()):
            if p.requires_grad:
                assert_close_scaled(p.grad, q.grad, **tolerance(torch.float64), name=name)
            else:
                assert p.grad is None and q.grad is None, name


@pytest.mark.parametrize("drop_path_rate", (0.0, 0.2))
def test_timm_blocks_train_fused_without_stochastic_depth(drop_path_rate):
    """timm's inverted residuals (EfficientNet: squeeze-excitation, SiLU) take the fused training path unless they
    drop paths at random, where they run timm's children (and its random draws)."""
    timm = pytest.importorskip("timm")
    from fusedops.nn.timm_blocks import TimmInvertedResidual
    model = fusedops.convert(timm.create_model("efficientnet_b0", drop_path_rate=drop_path_rate), layout=None)
    block = next(m for m in model.modules() if isinstance(m, TimmInvertedResidual) and m.has_skip).train()
    x = torch.randn(2, block.conv_pw.in_channels, 8, 8, requires_grad=True)
    fused = type(block(x).grad_fn).__name__ == "_InvertedResidualTrainingBackward"
    assert fused == (drop_path_rate == 0.0)
