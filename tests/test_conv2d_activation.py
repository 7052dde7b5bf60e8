"""The stems' direct convolution (fusedops::_conv2d_activation, csrc/cpu/conv2d_activation.cpp) against F.conv2d and
the activation: every geometry, layout, dtype and activation; its fake kernel; its errors. Then the eval-mode
conv -> BN -> activation units that call it (ConvBNActivation, PairedConv2d through fusedops.convert) and the 7x7
heads that run fusedops' pointwise GEMM."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusedops
from fusedops.nn import inverted_residual as ir_module
from fusedops.nn.inverted_residual import ConvBNActivation

from conftest import CL, make_input, randomize_batch_norms, requires_ops, tolerance

pytestmark = requires_ops

op = torch.ops.fusedops._conv2d_activation
ACTIVATIONS = {"none": lambda x: x, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu}


def _reference(x, w, b, stride, padding, dilation, activation, dtype=torch.float64):
    y = F.conv2d(x.to(dtype), w.to(dtype), None if b is None else b.to(dtype), stride, padding, dilation)
    return ACTIVATIONS[activation](y)


def _weights(c_out, c_in, kernel, dtype, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    w = torch.randn(c_out, c_in, *k, dtype=torch.float64, generator=g).to(dtype)
    b = torch.randn(c_out, dtype=torch.float64, generator=g).to(dtype) if bias else None
    return w, b


# (input shape, out channels, kernel, stride, padding, dilation): the stems (3 -> 16/32, 3x3 stride 2), output
# channels around the vector widths and beyond four vectors (passes over the row), every block size of a row's
# pixels, edges on both sides, rows cut off at the bottom, asymmetric kernels and strides, dilation, padding wider
# than the kernel's reach, more input channels than the stems have.
GEOMETRIES = [
    ((1, 3, 32, 32), 16, 3, (2, 2), (1, 1), (1, 1)),
    ((2, 3, 29, 31), 32, 3, (2, 2), (1, 1), (1, 1)),
    ((1, 3, 17, 40), 24, 3, (1, 1), (1, 1), (1, 1)),
    ((2, 1, 13, 27), 17, 5, (1, 2), (2, 2), (1, 1)),
    ((1, 4, 11, 45), 70, 3, (3, 1), (0, 1), (1, 1)),
    ((2, 2, 15, 19), 8, 3, (1, 1), (2, 2), (2, 2)),
    ((1, 3, 9, 10), 33, (3, 1), (2, 1), (1, 0), (1, 1)),
    ((1, 3, 6, 7), 5, 7, (1, 1), (4, 4), (1, 1)),
    ((1, 8, 12, 14), 40, 3, (2, 2), (1, 1), (1, 1)),
    ((3, 3, 5, 5), 1, 1, (1, 1), (0, 0), (1, 1)),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_matches_conv2d_then_activation_float64(geometry, activation):
    shape, c_out, kernel, stride, padding, dilation = geometry
    x = make_input(shape, "channels_last", dtype=torch.float64)
    w, b = _weights(c_out, shape[1], kernel, torch.float64)
    y = op(x, w, b, stride, padding, dilation, activation)
    expected = _reference(x, w, b, stride, padding, dilation, activation)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert y.is_contiguous(memory_format=CL)


LAYOUTS = ("nchw", "channels_last", "noncontig", "strided", "channel_slice", "channels_last_offset")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("weight_layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("geometry", GEOMETRIES[:5])
def test_layouts_float32(geometry, layout, weight_layout):
    # Any input strides are read in place; the output's memory format is F.conv2d's (channels-last when the input
    # or the weight is).
    shape, c_out, kernel, stride, padding, dilation = geometry
    x = make_input(shape, layout)
    w, b = _weights(c_out, shape[1], kernel, torch.float32)
    if weight_layout == "channels_last":
        w = torch.empty_like(w, memory_format=CL).copy_(w)
    y = op(x, w, b, stride, padding, dilation, "hardswish")
    torch.testing.assert_close(y, _reference(x, w, b, stride, padding, dilation, "hardswish").float(),
                               **tolerance(torch.float32))
    if layout in ("nchw", "channels_last"):
        native = F.conv2d(x, w, b, stride, padding, dilation)
        assert y.stride() == native.stride()


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("activation", ("relu6", "hardswish", "silu"))
def test_reduced_precision_rounds_as_the_sequence(dtype, activation):
    # The convolution is rounded to the storage type before the activation, as the unfused sequence stores it.
    x = make_input((2, 3, 20, 21), "channels_last", dtype=dtype)
    w, b = _weights(24, 3, 3, dtype)
    y = op(x, w, b, (2, 2), (1, 1), (1, 1), activation)
    conv = F.conv2d(x.float(), w.float(), b.float(), 2, 1).to(dtype)
    expected = ACTIVATIONS[activation](conv.float()).to(dtype)
    torch.testing.assert_close(y.float(), expected.float(), rtol=tolerance(dtype)["rtol"], atol=0.05)
    assert y.dtype == dtype


def test_without_bias_and_empty_batch():
    x = make_input((2, 3, 9, 9), "channels_last")
    w, _ = _weights(16, 3, 3, torch.float32)
    torch.testing.assert_close(op(x, w, None, (1, 1), (1, 1), (1, 1), "relu"),
                               F.relu(F.conv2d(x, w, None, 1, 1)), **tolerance(torch.float32))
    empty = op(x[:0], w, None, (2, 2), (1, 1), (1, 1), "relu")
    assert empty.shape == (0, 16, 5, 5)


def test_special_values_propagate():
    # NaN and infinity in the input reach exactly the outputs whose taps read them.
    x = make_input((1, 3, 12, 12), "channels_last", dtype=torch.float64)
    x[0, 1, 5, 6] = float("nan")
    x[0, 2, 0, 0] = float("inf")
    w, b = _weights(16, 3, 3, torch.float64)
    y = op(x, w, b, (1, 1), (1, 1), (1, 1), "none")
    expected = _reference(x, w, b, (1, 1), (1, 1), (1, 1), "none")
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_opcheck():
    x = make_input((2, 3, 11, 10), "channels_last")
    w, b = _weights(16, 3, 3, torch.float32)
    torch.library.opcheck(op, (x, w, b, [2, 2], [1, 1], [1, 1], "relu6"),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_static"))
    xn = make_input((1, 1, 7, 9), "nchw")
    wn, _ = _weights(5, 1, (3, 1), torch.float32)
    torch.library.opcheck(op, (xn, wn, None, [1, 2], [1, 0], [2, 1], "none"),
                          test_utils=("test_schema", "test_faketensor"))


BAD_CALLS = [
    (lambda x, w, b: (x[0], w, b, [1, 1], [1, 1], [1, 1], "relu"), "input must be a 4-D"),
    (lambda x, w, b: (x, w[:, :2], b, [1, 1], [1, 1], [1, 1], "relu"), "weight must have shape \\(out_channels, 3, kH"),
    (lambda x, w, b: (x, w.double(), b, [1, 1], [1, 1], [1, 1], "relu"), "weight dtype torch.float64 does not match"),
    (lambda x, w, b: (x, w, b[:3], [1, 1], [1, 1], [1, 1], "relu"), "bias must have shape \\(16,\\)"),
    (lambda x, w, b: (x, w, b, [0, 1], [1, 1], [1, 1], "relu"), "stride must be positive"),
    (lambda x, w, b: (x, w, b, [1, 1], [-1, 1], [1, 1], "relu"), "padding must be non-negative"),
    (lambda x, w, b: (x, w, b, [1, 1], [1, 1], [0, 1], "relu"), "dilation must be positive"),
    (lambda x, w, b: (x, w, b, [1], [1, 1], [1, 1], "relu"), "stride must have 2 elements"),
    (lambda x, w, b: (x, w, b, [1, 1], [1, 1], [1, 1], "gelu"), "activation must be one of"),
    (lambda x, w, b: (x[..., :2, :2], w, b, [1, 1], [0, 0], [1, 1], "relu"), "padded input height \\(2\\) is smaller"),
    (lambda x, w, b: (x.int(), w.int(), b, [1, 1], [1, 1], [1, 1], "relu"), "input must be a floating-point"),
]


@pytest.mark.parametrize("bad", BAD_CALLS)
def test_errors_name_the_argument(bad):
    make, message = bad
    x = make_input((1, 3, 8, 8), "channels_last")
    w, b = _weights(16, 3, 3, torch.float32)
    with pytest.raises(RuntimeError, match=message):
        op(*make(x, w, b))


# ---------------------------------------------------------------------------------------------------
# The modules that call it


def _stem(activation="hardswish", c_in=3, c_out=16, stride=2):
    block = ConvBNActivation(c_in, c_out, 3, stride=stride, activation=activation)
    randomize_batch_norms(block)
    return block.eval()


@pytest.mark.parametrize("frozen", (False, True))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("activation", ("relu6", "hardswish", None))
def test_stem_runs_the_direct_convolution(monkeypatch, activation, layout, frozen):
    block = _stem(activation).double()
    if frozen:
        fusedops.freeze(block)
    calls = []
    direct = ir_module._runs_direct
    monkeypatch.setattr(ir_module, "_runs_direct", lambda c, i: calls.append(direct(c, i)) or calls[-1])
    x = make_input((2, 3, 30, 26), layout, dtype=torch.float64)
    with torch.no_grad():
        expected = nn.Sequential(*block.children())(x)
        y = block(x)
    assert calls == [True]
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert y.stride() == expected.stride()


def test_stem_takes_f_conv2d_where_the_direct_convolution_does_not_apply():
    # Gradients recorded, more than 36 taps per pixel, or another backend: F.conv2d and the activation.
    block = _stem("relu6").double()
    x = make_input((1, 3, 16, 16), "channels_last", dtype=torch.float64, requires_grad=True)
    assert not ir_module._runs_direct(_stem(c_in=5)[0], make_input((1, 5, 8, 8), "channels_last"))
    assert ir_module._runs_direct(_stem(c_in=4)[0], make_input((1, 4, 8, 8), "channels_last"))
    resnet_stem = ConvBNActivation(3, 64, 7, stride=2, activation="relu")  # 147 taps: oneDNN's blocking pays
    assert not ir_module._runs_direct(resnet_stem[0], make_input((1, 3, 32, 32), "channels_last"))
    y = block(x)
    assert y.grad_fn is not None
    torch.testing.assert_close(y, nn.Sequential(*block.children())(x), rtol=1e-12, atol=1e-12)
    with fusedops.use_backend("reference"):
        assert not ir_module._runs_direct(block[0], x)


def test_converted_models_stems_match():
    # torchvision's MobileNetV3 stem (hardswish) and timm-style paired stems (conv_stem, bn1, act1) through
    # fusedops.convert: frozen, inference mode, channels-last.
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    randomize_batch_norms(model)
    converted = fusedops.freeze(fusedops.convert(model).eval())
    x = make_input((2, 3, 64, 64), "channels_last")
    with torch.inference_mode():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-4, atol=1e-5)

    class Stem(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_stem = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.act1 = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.act1(self.bn1(self.conv_stem(x)))

    stem = Stem().eval()
    randomize_batch_norms(stem)
    paired = fusedops.freeze(fusedops.convert(stem).eval())
    calls = []
    direct = ir_module._runs_direct
    ir_module_runs = lambda c, i: calls.append(direct(c, i)) or calls[-1]  # noqa: E731
    try:
        ir_module._runs_direct, saved = ir_module_runs, direct
        with torch.inference_mode():
            torch.testing.assert_close(paired(x), stem(x), rtol=1e-5, atol=1e-5)
    finally:
        ir_module._runs_direct = saved
    assert calls == [True]


@pytest.mark.parametrize("frozen", (False, True))
@pytest.mark.parametrize("activation", ("relu6", "hardswish", None))
@pytest.mark.parametrize("shape", ((1, 7, 7), (1, 1, 1), (1, 8, 8), (2, 7, 7), (1, 9, 9)))
def test_small_pointwise_heads_of_one_image_run_the_pointwise_gemm(monkeypatch, shape, activation, frozen):
    # The 7x7 heads at batch 1: fusedops' pointwise GEMM (the ghost_module op without cheap channels), frozen or
    # not, so that freezing keeps the bits; frozen, its weights packed once. Larger maps and several images: F.linear.
    # The same output as the sequence either way, channels-last.
    block = ConvBNActivation(24, 40, 1, activation=activation).double()
    randomize_batch_norms(block)
    block.eval()
    if frozen:
        fusedops.freeze(block)
    calls = []
    monkeypatch.setattr(ir_module, "_pointwise_gemm",
                        lambda *a, gemm=ir_module._pointwise_gemm: calls.append(1) or gemm(*a))
    n, h, w = shape
    x = make_input((n, 24, h, w), "channels_last", dtype=torch.float64)
    runs_gemm = n == 1 and h * w <= 64
    with torch.no_grad():
        expected = nn.Sequential(*block.children())(x)
        outputs = [block(x) for _ in range(3)]  # frozen, the first call packs, the later ones take the prepared call
    for y in outputs:
        torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
        assert y.is_contiguous(memory_format=CL)
        assert torch.equal(y, outputs[0])
    assert len(calls) == (0 if not runs_gemm else 1 if frozen else 3)
    if frozen:
        with torch.no_grad():
            block[0].weight.mul_(2)  # frozen: not seen until unfreeze refolds
            torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)
            fusedops.unfreeze(block)
            assert not torch.allclose(block(x), expected)
