"""The classifiers' product (fusedops::_linear_activation, csrc/cpu/linear_activation.cpp) against F.linear and the
activation: rows, features around the vector widths and the kernel's blocks, dtypes, activations; the same bits
whatever the batch and the threads; its fake kernel; its errors. Then fusedops.nn.Linear, which calls it, and the
1x1 convolutions on pooled maps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusedops
from fusedops.nn import Linear, linear as linear_module

from conftest import requires_ops, tolerance

pytestmark = requires_ops

op = torch.ops.fusedops._linear_activation
ACTIVATIONS = {"none": lambda x: x, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu}


def _case(rows, in_features, out_features, dtype=torch.float64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_features, dtype=torch.float64, generator=g).to(dtype)
    w = torch.randn(out_features, in_features, dtype=torch.float64, generator=g).to(dtype)
    b = torch.randn(out_features, dtype=torch.float64, generator=g).to(dtype) if bias else None
    return x, w, b


def _reference(x, w, b, activation):
    return ACTIVATIONS[activation](F.linear(x.double(), w.double(), None if b is None else b.double()))


# (rows, in_features, out_features): one row and pairs with an odd one left; input features below one vector, whole
# vectors of either chain, a vector left for the first chain, a tail past it; output features that fill whole groups
# of four weight rows, leave one, two or three, or are fewer than a group; a classifier's size.
SHAPES = [(1, 1, 1), (1, 7, 3), (2, 8, 4), (3, 16, 5), (1, 24, 6), (4, 33, 7), (5, 40, 9), (2, 17, 13),
          (7, 100, 30), (8, 64, 17), (1, 960, 1280), (3, 1280, 10)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_matches_linear_then_activation_float64(shape, activation):
    x, w, b = _case(*shape)
    torch.testing.assert_close(op(x, w, b, activation), _reference(x, w, b, activation), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 960, 1280), (5, 40, 9), (8, 1280, 100)])
@pytest.mark.parametrize("bias", (True, False))
def test_float32(shape, bias):
    x, w, b = _case(*shape, dtype=torch.float32, bias=bias)
    expected = _reference(x, w, b, "hardswish")
    torch.testing.assert_close(op(x, w, b, "hardswish").double(), expected, rtol=1e-5,
                               atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
@pytest.mark.parametrize("activation", ("relu6", "silu"))
def test_reduced_precision_rounds_as_the_sequence(dtype, activation):
    # The product is rounded to the storage type before the activation, as the unfused sequence stores it.
    x, w, b = _case(3, 70, 21, dtype=dtype)
    y = op(x, w, b, activation)
    product = F.linear(x.float(), w.float(), b.float()).to(dtype)
    expected = ACTIVATIONS[activation](product.float()).to(dtype)
    torch.testing.assert_close(y.float(), expected.float(), rtol=tolerance(dtype)["rtol"], atol=0.05)
    assert y.dtype == dtype


def test_same_bits_whatever_the_batch_and_threads():
    # Each output is summed in one order: a row alone, in a pair, as the odd one, on one thread or two.
    x, w, b = _case(7, 333, 45, dtype=torch.float32)
    whole = op(x, w, b, "none")
    for r in range(7):
        assert torch.equal(op(x[r:r + 1], w, b, "none"), whole[r:r + 1]), r
        assert torch.equal(op(x[r:], w, b, "none"), whole[r:]), r
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(op(x, w, b, "none"), whole)
    finally:
        torch.set_num_threads(threads)


def test_empty_and_strided_arguments():
    x, w, b = _case(3, 0, 5)  # no input features: the bias, activated
    torch.testing.assert_close(op(x, w, b, "relu"), F.relu(b).expand(3, 5))
    assert op(x[:0], w, b, "relu").shape == (0, 5)
    x, w, b = _case(4, 30, 12)
    # Views with strides (a transposed weight, every other row of the input) are read as their values.
    wt = w.t().contiguous().t()
    torch.testing.assert_close(op(x[::2], wt, b, "none"), _reference(x[::2], w, b, "none"), rtol=1e-12, atol=1e-12)


def test_special_values_propagate():
    x, w, b = _case(3, 20, 6)
    x[1, 4] = float("nan")
    x[2, 0] = float("inf")
    y = op(x, w, b, "none")
    torch.testing.assert_close(y, _reference(x, w, b, "none"), rtol=1e-12, atol=1e-12, equal_nan=True)
    assert torch.isnan(y[1]).all() and torch.isfinite(y[0]).all()


def test_opcheck():
    x, w, b = _case(3, 40, 9, dtype=torch.float32)
    torch.library.opcheck(op, (x, w, b, "relu6"), test_utils=("test_schema", "test_faketensor",
                                                               "test_aot_dispatch_static"))
    torch.library.opcheck(op, (x[:1], w, None, "none"), test_utils=("test_schema", "test_faketensor"))


BAD_CALLS = [
    (lambda x, w, b: (x[0], w, b, "relu"), "input must be a 2-D"),
    (lambda x, w, b: (x, w[:, :5], b, "relu"), "weight must have shape \\(out_features, 8\\)"),
    (lambda x, w, b: (x, w[0], b, "relu"), "weight must have shape \\(out_features, 8\\)"),
    (lambda x, w, b: (x, w.double(), b, "relu"), "weight dtype torch.float64 does not match"),
    (lambda x, w, b: (x, w, b[:3], "relu"), "bias must have shape \\(6,\\)"),
    (lambda x, w, b: (x, w, b.double(), "relu"), "bias dtype torch.float64 does not match"),
    (lambda x, w, b: (x, w, b, "gelu"), "activation must be one of"),
    (lambda x, w, b: (x.int(), w.int(), b, "relu"), "input must be a floating-point"),
]


@pytest.mark.parametrize("bad", BAD_CALLS)
def test_errors_name_the_argument(bad):
    make, message = bad
    x, w, b = _case(2, 8, 6, dtype=torch.float32)
    with pytest.raises((RuntimeError, NotImplementedError), match=message):
        op(*make(x, w, b))


# ---------------------------------------------------------------------------------------------------
# fusedops.nn.Linear and the pooled 1x1 convolutions


def _count_kernel_calls(monkeypatch):
    calls = []
    real = linear_module.linear
    monkeypatch.setattr(linear_module, "linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("rows, runs_kernel", [((1,), True), ((2, 3), True), ((8,), True), ((9,), False),
                                               ((2, 5), False)])
def test_module_runs_the_kernel_for_a_few_rows(monkeypatch, rows, runs_kernel):
    # 1280 -> 300: more than 2^18 weights, so up to 8 rows (any leading dimensions) take the kernel.
    torch.manual_seed(0)
    layer = Linear(1280, 300)
    reference = nn.Linear(1280, 300)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(*rows, 1280)
    calls = _count_kernel_calls(monkeypatch)
    with torch.no_grad():
        y = layer(x)
    assert len(calls) == (1 if runs_kernel else 0)
    expected = op(x.reshape(-1, 1280), layer.weight, layer.bias, "none").reshape(*rows, 300) if runs_kernel else \
        F.linear(x, layer.weight, layer.bias)
    assert torch.equal(y, expected) and y.shape == (*rows, 300)
    torch.testing.assert_close(y, reference(x), rtol=1e-5, atol=1e-5)


def test_module_small_weights_take_the_kernel_up_to_four_rows(monkeypatch):
    layer = Linear(160, 96)  # 15360 weights
    calls = _count_kernel_calls(monkeypatch)
    with torch.no_grad():
        layer(torch.randn(4, 160))
        layer(torch.randn(5, 160))
    assert len(calls) == 1


def test_module_records_gradients_through_f_linear(monkeypatch):
    torch.manual_seed(0)
    layer, reference = Linear(64, 10), nn.Linear(64, 10)
    reference.load_state_dict(layer.state_dict())
    calls = _count_kernel_calls(monkeypatch)
    x = torch.randn(2, 64, requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert not calls
    x2 = x.detach().clone().requires_grad_()
    reference(x2).sum().backward()
    assert torch.equal(x.grad, x2.grad) and torch.equal(layer.weight.grad, reference.weight.grad)
    # An input that requires grad with frozen weights still records: F.linear.
    layer.requires_grad_(False)
    layer(torch.randn(1, 64, requires_grad=True)).sum().backward()
    assert not calls


def test_module_other_dtypes_devices_and_compile(monkeypatch):
    layer = Linear(32, 8)
    calls = _count_kernel_calls(monkeypatch)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="mat1 and mat2 must have the same dtype|expected .* same dtype"):
            layer(torch.randn(1, 32, dtype=torch.float64))  # F.linear's own error, as nn.Linear gives
        meta = Linear(32, 8, device="meta")
        assert meta(torch.randn(1, 32, device="meta")).shape == (1, 8)
        compiled = torch.compile(layer, fullgraph=True, backend="eager")
        x = torch.randn(1, 32)
        torch.testing.assert_close(compiled(x), F.linear(x, layer.weight, layer.bias))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's dtype, as nn.Linear gives
            assert layer(x).dtype == torch.bfloat16
    assert not calls


def test_converted_classifiers_match_and_keep_keys():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    converted = fusedops.freeze(fusedops.convert(model))
    assert [type(m) for m in converted.classifier if isinstance(m, nn.Linear)] == [Linear, Linear]
    assert converted.state_dict().keys() == model.state_dict().keys()
    assert converted.classifier[0].weight is model.classifier[0].weight
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(converted(x), model(x), rtol=1e-4, atol=1e-4)
        # Frozen or not, the same kernels: the same bits.
        assert torch.equal(fusedops.unfreeze(converted)(x), fusedops.freeze(converted)(x))
