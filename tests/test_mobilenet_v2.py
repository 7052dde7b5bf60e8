"""MobileNetV2 (fusedops/models/mobilenet_v2.py) against torchvision's: architecture, initialisation and state-dict
keys; outputs, gradients and batch-norm running statistics in eval mode (every block one fused op, batch norms
folded) and train mode; the freeze step on the whole model."""

import importlib

import pytest
import torch

import fusedops
from fusedops.models import MobileNetV2
from fusedops.nn import InvertedResidual

from conftest import (CL, assert_close_grads, assert_close_scaled, check_training_matches, grad_names, make_input,
                      module_outputs_and_grads, randomize_batch_norms, requires_ops, tolerance)

torchvision = pytest.importorskip("torchvision")

pytestmark = requires_ops

TOL = tolerance(torch.float64)
N_BLOCKS = 17


def torchvision_model(width_mult, num_classes=10, dropout=0.0, seed=1):
    model = torchvision.models.mobilenet_v2(width_mult=width_mult, num_classes=num_classes, dropout=dropout)
    return randomize_batch_norms(model.double(), seed)


def pair_models(width_mult, dropout=0.0):
    """Our model and torchvision's in float64, with the same weights and non-trivial batch-norm state."""
    ref = torchvision_model(width_mult, dropout=dropout)
    model = fusedops.models.mobilenet_v2(width_mult, num_classes=10, dropout=dropout).double()
    model.load_state_dict(ref.state_dict())
    return model, ref


@pytest.fixture
def op_calls(monkeypatch):
    """Counts the fused op's calls from the blocks."""
    module = importlib.import_module("fusedops.nn.inverted_residual")
    calls = []
    real = module.inverted_residual
    monkeypatch.setattr(module, "inverted_residual", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    return calls


# ---------------------------------------------------------------------------------------------------
# Architecture and weights


@pytest.mark.parametrize("width_mult, round_nearest", ((1.0, 8), (0.5, 8), (0.25, 8), (1.4, 8), (0.35, 1)))
def test_architecture_and_state_dict_match_torchvision(width_mult, round_nearest):
    model = fusedops.models.mobilenet_v2(width_mult, round_nearest=round_nearest)
    ref = torchvision.models.mobilenet_v2(width_mult=width_mult, round_nearest=round_nearest)
    assert [n for n, _ in model.named_modules()] == [n for n, _ in ref.named_modules()]
    state, ref_state = model.state_dict(), ref.state_dict()
    assert list(state) == list(ref_state)
    assert [t.shape for t in state.values()] == [t.shape for t in ref_state.values()]
    assert model.last_channel == ref.last_channel
    blocks = list(model.features)[1:-1]
    assert len(blocks) == N_BLOCKS and all(type(b) is InvertedResidual for b in blocks)
    for block, ref_block in zip(blocks, list(ref.features)[1:-1]):
        assert (block.stride, block.use_res_connect, block.out_channels, block._is_cn) == \
            (ref_block.stride, ref_block.use_res_connect, ref_block.out_channels, ref_block._is_cn)
    assert len(blocks[0].conv) == 3 and len(blocks[1].conv) == 4  # t = 1: no expansion
    if width_mult == 1.0:
        assert sum(b.use_res_connect for b in blocks) == 10
        assert sum(p.numel() for p in model.parameters()) == 3504872  # torchvision's published count


def test_same_initialisation_as_torchvision():
    """Same modules created in the same order and the same init: the same random draws give the same weights."""
    torch.manual_seed(3)
    model = fusedops.models.mobilenet_v2(0.5)
    torch.manual_seed(3)
    ref = torchvision.models.mobilenet_v2(width_mult=0.5)
    for (name, t), r in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(t, r), name


def test_loads_torchvision_state_dict_both_ways():
    ref = torchvision_model(0.5, num_classes=1000)
    model = fusedops.models.mobilenet_v2(0.5).double()
    model.load_state_dict(ref.state_dict())
    for (name, t), r in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(t, r), name
    back = torchvision.models.mobilenet_v2(width_mult=0.5).double()
    back.load_state_dict(randomize_batch_norms(model, seed=4).state_dict())
    for (name, t), r in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(t, r), name


def test_constructor_arguments_as_torchvision():
    setting = [[1, 16, 1, 1], [6, 24, 2, 2]]
    model = MobileNetV2(num_classes=7, width_mult=0.5, inverted_residual_setting=setting, round_nearest=4,
                        dropout=0.1)
    ref = torchvision.models.MobileNetV2(num_classes=7, width_mult=0.5, inverted_residual_setting=setting,
                                         round_nearest=4, dropout=0.1)
    assert [(n, t.shape) for n, t in model.state_dict().items()] == [(n, t.shape) for n, t in ref.state_dict().items()]
    assert model.classifier[0].p == 0.1
    # Another block class, called as torchvision calls it.
    from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionInvertedResidual

    other = MobileNetV2(block=TorchvisionInvertedResidual)
    assert list(other.state_dict()) == list(torchvision.models.mobilenet_v2().state_dict())
    with pytest.raises(ValueError, match="inverted_residual_setting"):
        MobileNetV2(inverted_residual_setting=[])
    with pytest.raises(ValueError, match="inverted_residual_setting"):
        MobileNetV2(inverted_residual_setting=[[1, 16, 1]])
    with pytest.raises(ValueError, match="width_mult"):
        MobileNetV2(width_mult=0)


# ---------------------------------------------------------------------------------------------------
# Parity with torchvision


@pytest.mark.parametrize("width_mult", (0.25, 0.5))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_eval_matches_torchvision(width_mult, layout, op_calls):
    """Eval mode, each block one fused op: outputs, and the gradients of the input and of every unfolded
    parameter, are torchvision's."""
    model, ref = pair_models(width_mult)
    model.eval()
    ref.eval()
    if layout == "channels_last":
        model, ref = model.to(memory_format=CL), ref.to(memory_format=CL)
    x = make_input((2, 3, 32, 32), layout, dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(model(x), ref(x), **TOL, name="output (no_grad)")
    assert len(op_calls) == N_BLOCKS
    y, grads = module_outputs_and_grads(model, x)
    expected, ref_grads = module_outputs_and_grads(ref, x)
    assert_close_scaled(y, expected, **TOL, name="output")
    assert_close_grads(grads, ref_grads, **TOL, names=grad_names(model))


def test_train_matches_torchvision(op_calls):
    """Train mode (dropout included, same random draws): outputs, every gradient, running statistics and
    num_batches_tracked are torchvision's over two optimizer steps; eval mode then folds the new statistics."""
    model, ref = pair_models(0.25, dropout=0.2)
    # 40 x 40: the last stages' batch statistics are over 2 x 2 maps, not single pixels.
    inputs = [make_input((4, 3, 40, 40), layout, dtype=torch.float64) for layout in ("nchw", "channels_last")]
    check_training_matches(model, ref, inputs, lr=0.01, seeds=(10, 11), train_grads=True)
    assert op_calls == []
    model.eval()
    ref.eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(model(x), ref(x), **TOL, name="eval output after training")


def test_any_resolution():
    model = fusedops.models.mobilenet_v2(0.35, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 45)).shape == (1, 7)


# ---------------------------------------------------------------------------------------------------
# The freeze step


def test_freeze_model():
    model, ref = pair_models(0.25)
    model.eval()
    ref.eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    with torch.no_grad():
        expected = model(x)
        assert fusedops.freeze(model) is model and len(blocks) == N_BLOCKS and all(m.frozen for m in blocks)
        assert torch.equal(model(x), expected)
        model.features[3].conv[0][0].weight.mul_(-1)  # not seen while frozen
        model.features[5].conv[1][1].running_mean.add_(1.0)
        assert torch.equal(model(x), expected)
        other = torchvision_model(0.25, seed=7).eval()
        model.load_state_dict(other.state_dict())  # refolds, still frozen
        assert all(m.frozen for m in blocks)
        assert_close_scaled(model(x), other(x), **TOL, name="after load_state_dict")
        model.features[3].conv[0][0].weight.mul_(-1)
        assert fusedops.unfreeze(model) is model and not any(m.frozen for m in blocks)
        other.features[3].conv[0][0].weight.mul_(-1)
        assert_close_scaled(model(x), other(x), **TOL, name="after unfreeze")
