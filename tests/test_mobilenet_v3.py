"""MobileNetV3-Large and -Small (fusedops/models/mobilenet_v3.py) against torchvision's: architecture,
initialisation and state-dict keys; outputs, gradients and batch-norm running statistics in eval mode (every block
one fused op, squeeze-excitation included, batch norms folded) and train mode; the freeze step on the whole model."""

import importlib

import pytest
import torch
from torch import nn

import fusedops
from fusedops.models import MobileNetV3
from fusedops.models.mobilenet_v3 import InvertedResidualConfig, mobilenet_v3_conf
from fusedops.nn import InvertedResidualV3, SqueezeExcitation

from conftest import (CL, assert_close_grads, assert_close_scaled, check_training_matches, grad_names, make_input,
                      module_outputs_and_grads, randomize_batch_norms, requires_ops, tolerance)

torchvision = pytest.importorskip("torchvision")

pytestmark = requires_ops

TOL = tolerance(torch.float64)
ARCHS = ("mobilenet_v3_large", "mobilenet_v3_small")
N_BLOCKS = {"mobilenet_v3_large": 15, "mobilenet_v3_small": 11}
N_PARAMETERS = {"mobilenet_v3_large": 5483032, "mobilenet_v3_small": 2542856}  # torchvision's published counts


def randomize(model, seed=1):
    """Non-trivial batch-norm state and squeeze-excitation biases (torchvision initialises them to zero)."""
    randomize_batch_norms(model, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
    return model


def ours(arch, **kwargs):
    return getattr(fusedops.models, arch)(**kwargs)


def theirs(arch, **kwargs):
    return getattr(torchvision.models, arch)(**kwargs)


def pair_models(arch, dtype=torch.float64, seed=1, **kwargs):
    """Our model and torchvision's with the same weights and non-trivial batch-norm state (10 classes, no dropout
    unless told)."""
    kwargs = {"num_classes": 10, "dropout": 0.0, **kwargs}
    ref = randomize(theirs(arch, **kwargs).to(dtype), seed)
    model = ours(arch, **kwargs).to(dtype)
    model.load_state_dict(ref.state_dict())
    return model, ref


@pytest.fixture
def op_calls(monkeypatch):
    """The squeeze-excitation argument of every call of the fused op from the blocks."""
    module = importlib.import_module("fusedops.nn.inverted_residual")
    calls = []
    real = module.inverted_residual
    monkeypatch.setattr(module, "inverted_residual", lambda *a, **kw: calls.append(kw.get("se")) or real(*a, **kw))
    return calls


# ---------------------------------------------------------------------------------------------------
# Architecture and weights


@pytest.mark.parametrize("kwargs", [{}, dict(width_mult=0.5), dict(width_mult=0.75, num_classes=7),
                                    dict(reduced_tail=True), dict(dilated=True), dict(width_mult=1.25, dilated=True)],
                         ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_and_state_dict_match_torchvision(arch, kwargs):
    model, ref = ours(arch, **kwargs), theirs(arch, **kwargs)
    assert [n for n, _ in model.named_modules()] == [n for n, _ in ref.named_modules()]
    state, ref_state = model.state_dict(), ref.state_dict()
    assert list(state) == list(ref_state)
    assert [t.shape for t in state.values()] == [t.shape for t in ref_state.values()]
    blocks = list(model.features)[1:-1]
    ref_blocks = list(ref.features)[1:-1]
    assert len(blocks) == N_BLOCKS[arch] and all(type(b) is InvertedResidualV3 for b in blocks)
    for block, ref_block in zip(blocks, ref_blocks):
        assert (block.use_res_connect, block.out_channels, block._is_cn) == \
            (ref_block.use_res_connect, ref_block.out_channels, ref_block._is_cn)
    for m, r in zip(model.modules(), ref.modules()):
        if isinstance(r, nn.Conv2d):
            assert (m.kernel_size, m.stride, m.padding, m.dilation, m.groups) == \
                (r.kernel_size, r.stride, r.padding, r.dilation, r.groups)
        elif isinstance(r, nn.BatchNorm2d):
            assert (m.eps, m.momentum) == (r.eps, r.momentum) == (0.001, 0.01)
        elif isinstance(r, (nn.ReLU, nn.Hardswish, nn.Hardsigmoid, nn.Dropout, nn.Linear, nn.AdaptiveAvgPool2d)):
            assert type(m) is type(r) and m.extra_repr() == r.extra_repr()
    assert sum(isinstance(m, SqueezeExcitation) for m in model.modules()) == \
        sum(type(m).__name__ == "SqueezeExcitation" for m in ref.modules()) > 0
    if not kwargs:
        assert sum(p.numel() for p in model.parameters()) == N_PARAMETERS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_same_initialisation_as_torchvision(arch):
    """Same modules created in the same order and the same init: the same random draws give the same weights."""
    torch.manual_seed(3)
    model = ours(arch, width_mult=0.5)
    torch.manual_seed(3)
    ref = theirs(arch, width_mult=0.5)
    for (name, t), r in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(t, r), name


@pytest.mark.parametrize("arch", ARCHS)
def test_loads_torchvision_state_dict_both_ways(arch):
    ref = randomize(theirs(arch).double())
    model = ours(arch).double()
    model.load_state_dict(ref.state_dict())
    for (name, t), r in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(t, r), name
    back = theirs(arch).double()
    back.load_state_dict(randomize(model, seed=4).state_dict())
    for (name, t), r in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(t, r), name


def test_configuration_as_torchvision():
    from torchvision.models.mobilenetv3 import _mobilenet_v3_conf

    for arch in ARCHS:
        for kwargs in ({}, dict(width_mult=0.35, reduced_tail=True, dilated=True)):
            setting, last = mobilenet_v3_conf(arch, **kwargs)
            ref_setting, ref_last = _mobilenet_v3_conf(arch, **kwargs)
            assert last == ref_last
            assert [vars(c) for c in setting] == [vars(c) for c in ref_setting]


def test_constructor_arguments_as_torchvision():
    from torchvision.models.mobilenetv3 import InvertedResidual as TorchvisionBlock
    from torchvision.models.mobilenetv3 import _mobilenet_v3_conf

    # torchvision's configurations work, and another block class is called as torchvision calls it.
    setting, last = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.5)
    model = MobileNetV3(setting, last, num_classes=7, dropout=0.1)
    ref = torchvision.models.MobileNetV3(setting, last, num_classes=7, dropout=0.1)
    assert [(n, t.shape) for n, t in model.state_dict().items()] == [(n, t.shape) for n, t in ref.state_dict().items()]
    assert model.classifier[2].p == 0.1 and model.classifier[2].inplace
    other = MobileNetV3(setting, last, block=TorchvisionBlock)
    assert list(other.state_dict()) == list(torchvision.models.MobileNetV3(setting, last).state_dict())
    assert all(type(b) is TorchvisionBlock for b in list(other.features)[1:-1])
    with pytest.raises(ValueError, match="inverted_residual_setting"):
        MobileNetV3([], 1024)
    with pytest.raises(TypeError, match="InvertedResidualConfig"):
        MobileNetV3([(16, 3, 16, 16, True, "RE", 2, 1)], 1024)
    with pytest.raises(ValueError, match="architecture"):
        mobilenet_v3_conf("mobilenet_v3_medium")
    with pytest.raises(ValueError, match="width_mult"):
        fusedops.models.mobilenet_v3_small(width_mult=0)
    with pytest.raises(ValueError, match="activation"):
        InvertedResidualConfig(16, 3, 16, 16, True, "GELU", 2, 1, 1.0)


# ---------------------------------------------------------------------------------------------------
# Parity with torchvision


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("arch, kwargs", [("mobilenet_v3_large", dict(width_mult=0.5)), ("mobilenet_v3_small", {}),
                                          ("mobilenet_v3_small", dict(dilated=True, reduced_tail=True))],
                         ids=["large-0.5", "small", "small-dilated-reduced"])
def test_eval_matches_torchvision(arch, kwargs, layout, op_calls):
    """Eval mode, each block one fused op: outputs, and the gradients of the input and of every unfolded
    parameter, are torchvision's."""
    model, ref = pair_models(arch, **kwargs)
    model.eval()
    ref.eval()
    if layout == "channels_last":
        model, ref = model.to(memory_format=CL), ref.to(memory_format=CL)
    x = make_input((2, 3, 64, 64), layout, dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(model(x), ref(x), **TOL, name="output (no_grad)")
    blocks = list(model.features)[1:-1]
    assert len(op_calls) == len(blocks)
    assert [se is not None for se in op_calls] == [b._use_se for b in blocks]
    y, grads = module_outputs_and_grads(model, x)
    expected, ref_grads = module_outputs_and_grads(ref, x)
    assert_close_scaled(y, expected, **TOL, name="output")
    assert_close_grads(grads, ref_grads, **TOL, names=grad_names(model))


@pytest.mark.parametrize("batch", (1, 2))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("arch", ARCHS)
def test_eval_float32_matches_torchvision(arch, layout, batch):
    """float32, frozen as deployed: within float32 rounding of torchvision's model in float64."""
    model, ref = pair_models(arch, torch.float32)
    ref64 = ref.double().eval()
    fusedops.freeze(model.eval())
    if layout == "channels_last":
        model = model.to(memory_format=CL)
    x = make_input((batch, 3, 64, 64), layout)
    with torch.inference_mode():
        y = model(x)
    with torch.no_grad():
        expected = ref64(x.double())
    assert_close_scaled(y, expected, **tolerance(torch.float32), name="output vs float64")


@pytest.mark.parametrize("arch", ARCHS)
def test_train_matches_torchvision(arch, op_calls):
    """Train mode (dropout included, same random draws): outputs, every gradient, running statistics and
    num_batches_tracked are torchvision's over two optimizer steps; eval mode then folds the new statistics."""
    model, ref = pair_models(arch, width_mult=0.5, dropout=0.2)
    # 64 x 64: the last stages' batch statistics are over 2 x 2 maps, not single pixels.
    inputs = [make_input((4, 3, 64, 64), layout, dtype=torch.float64) for layout in ("nchw", "channels_last")]
    check_training_matches(model, ref, inputs, lr=0.01, seeds=(10, 11), train_grads=True)
    assert op_calls == []
    model.eval()
    ref.eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(model(x), ref(x), **TOL, name="eval output after training")


@pytest.mark.parametrize("arch", ARCHS)
def test_any_resolution(arch):
    model = ours(arch, width_mult=0.35, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 45)).shape == (1, 7)


# ---------------------------------------------------------------------------------------------------
# The freeze step


def test_freeze_model():
    model, ref = pair_models("mobilenet_v3_small")
    model.eval()
    ref.eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidualV3)]
    with torch.no_grad():
        expected = model(x)
        assert fusedops.freeze(model) is model and len(blocks) == 11 and all(m.frozen for m in blocks)
        assert torch.equal(model(x), expected)
        model.features[2].block[0][0].weight.mul_(-1)  # not seen while frozen
        model.features[4].block[1][1].running_mean.add_(1.0)
        model.features[4].block[2].fc1.bias.add_(1.0)
        assert torch.equal(model(x), expected)
        other = randomize(theirs("mobilenet_v3_small", num_classes=10).double(), seed=7).eval()
        model.load_state_dict(other.state_dict())  # refolds, still frozen
        assert all(m.frozen for m in blocks)
        assert_close_scaled(model(x), other(x), **TOL, name="after load_state_dict")
        model.features[4].block[2].fc1.bias.add_(1.0)
        assert fusedops.unfreeze(model) is model and not any(m.frozen for m in blocks)
        other.features[4].block[2].fc1.bias.add_(1.0)
        assert_close_scaled(model(x), other(x), **TOL, name="after unfreeze")
