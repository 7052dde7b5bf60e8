"""fusedops.nn.InvertedResidual against torchvision's MobileNetV2 block: same submodules and state-dict keys, the
same outputs, gradients and batch-norm statistics in eval mode (one fused op, batch norms folded) and train mode
(the submodules in sequence); the freeze cache; the configurations torchvision's block does not have, against
the block's own submodules run in eval mode."""

import copy
import importlib
import pickle

import pytest
import torch
from torch import nn

import fusedops
from fusedops.nn import DepthwiseConv2d, DepthwiseSeparableConv2d, InvertedResidual

from conftest import (CL, assert_close_grads, assert_close_scaled, check_training_matches, grad_names, make_input,
                      module_outputs_and_grads, randomize_batch_norms, requires_ops, tolerance)

torchvision = pytest.importorskip("torchvision")
from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionInvertedResidual  # noqa: E402

pytestmark = requires_ops

TOL = tolerance(torch.float64)
# (inp, oup, stride, expand_ratio): with and without expansion and residual.
CONFIGS = [(8, 8, 1, 6), (8, 16, 2, 6), (8, 12, 1, 6), (16, 16, 1, 1), (16, 24, 2, 1)]
CONFIG_IDS = ["-".join(map(str, c)) for c in CONFIGS]

block_module = importlib.import_module("fusedops.nn.inverted_residual")


def pair_blocks(inp, oup, stride, expand_ratio):
    """Our block and torchvision's in float64 with the same weights and batch-norm state."""
    ref = randomize_batch_norms(TorchvisionInvertedResidual(inp, oup, stride, expand_ratio).double())
    block = InvertedResidual(inp, oup, stride, expand_ratio).double()
    block.load_state_dict(ref.state_dict())
    return block, ref


def unfused(block, x):
    """The block's own submodules in sequence (eval mode: batch norms on running statistics)."""
    return x + block.conv(x) if block.use_res_connect else block.conv(x)


@pytest.fixture
def op_calls(monkeypatch):
    """The `residual` argument of every call of the fused op from the block."""
    calls = []
    real = block_module.inverted_residual

    def spy(*args, **kwargs):
        calls.append(kwargs["residual"])
        return real(*args, **kwargs)

    monkeypatch.setattr(block_module, "inverted_residual", spy)
    return calls


# ---------------------------------------------------------------------------------------------------
# Structure


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_same_submodules_and_state_dict_as_torchvision(config):
    block, ref = InvertedResidual(*config), TorchvisionInvertedResidual(*config)
    assert [n for n, _ in block.named_modules()] == [n for n, _ in ref.named_modules()]
    state, ref_state = block.state_dict(), ref.state_dict()
    assert list(state) == list(ref_state)
    assert [t.shape for t in state.values()] == [t.shape for t in ref_state.values()]
    for name in ("stride", "use_res_connect", "out_channels", "_is_cn"):
        assert getattr(block, name) == getattr(ref, name), name
    dw = block.conv[-3][0]
    assert isinstance(dw, DepthwiseConv2d) and isinstance(dw, nn.Conv2d) and dw.bias is None
    # Weights load either way, strictly.
    ref.load_state_dict(randomize_batch_norms(InvertedResidual(*config)).state_dict())
    block.load_state_dict(randomize_batch_norms(TorchvisionInvertedResidual(*config), seed=3).state_dict())


def test_state_dict_keys_with_and_without_expansion():
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    expanded = ["conv.0.0.weight", *(f"conv.0.1.{k}" for k in bn), "conv.1.0.weight", *(f"conv.1.1.{k}" for k in bn),
                "conv.2.weight", *(f"conv.3.{k}" for k in bn)]
    assert list(InvertedResidual(8, 16, 2, 6).state_dict()) == expanded
    plain = ["conv.0.0.weight", *(f"conv.0.1.{k}" for k in bn), "conv.1.weight", *(f"conv.2.{k}" for k in bn)]
    assert list(InvertedResidual(16, 16, 1, 1).state_dict()) == plain


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_residual_only_at_stride_1_with_inp_equal_oup(config, op_calls):
    inp, oup, stride, _ = config
    block, _ = pair_blocks(*config)
    block.eval()
    assert block.use_res_connect == (stride == 1 and inp == oup)
    x = torch.randn(1, inp, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        y = block(x)
        body = block.conv(x)
    assert op_calls == [block.use_res_connect]  # one fused call per forward
    assert_close_scaled(y, body + x if block.use_res_connect else body, **TOL)


# ---------------------------------------------------------------------------------------------------
# Parity with torchvision


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_eval_matches_torchvision(config, layout, op_calls):
    """Eval mode: one fused op; outputs, and gradients of the input and of every unfolded parameter (through the
    differentiable fold), are torchvision's."""
    block, ref = pair_blocks(*config)
    block.eval()
    ref.eval()
    if layout == "channels_last":
        block, ref = block.to(memory_format=CL), ref.to(memory_format=CL)
    x = make_input((2, config[0], 9, 9), layout, dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(block(x), ref(x), **TOL, name="output (no_grad)")
    y, grads = module_outputs_and_grads(block, x)
    expected, ref_grads = module_outputs_and_grads(ref, x)
    assert len(op_calls) == 2
    assert_close_scaled(y, expected, **TOL, name="output")
    assert y.is_contiguous(memory_format=CL) == expected.is_contiguous(memory_format=CL)
    assert_close_grads(grads, ref_grads, **TOL, names=grad_names(block))
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_train_matches_torchvision(config, op_calls):
    """Train mode runs the submodules: outputs, every gradient and the running statistics are torchvision's over
    two optimizer steps; eval mode then folds the updated statistics."""
    block, ref = pair_blocks(*config)
    inputs = [make_input((4, config[0], 8, 8), layout, dtype=torch.float64) for layout in ("nchw", "channels_last")]
    check_training_matches(block, ref, inputs, lr=0.1)
    assert op_calls == []
    block.eval()
    ref.eval()
    x = torch.randn(2, config[0], 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(block(x), ref(x), **TOL, name="eval output after training")


# ---------------------------------------------------------------------------------------------------
# Configurations beyond torchvision's block


@pytest.mark.parametrize("kwargs", [dict(kernel_size=5), dict(dilation=2), dict(kernel_size=5, dilation=2, stride=2),
                                    dict(stride=(2, 1)), dict(activation="hardswish"), dict(activation="relu"),
                                    dict(activation=None)], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("expand_ratio", (1, 4))
def test_eval_other_configurations(kwargs, expand_ratio, op_calls):
    kwargs = dict(kwargs)
    stride = kwargs.pop("stride", 1)
    block = randomize_batch_norms(InvertedResidual(8, 8, stride, expand_ratio, **kwargs).double()).eval()
    k, d = kwargs.get("kernel_size", 3), kwargs.get("dilation", 1)
    dw = block.conv[-3][0]
    assert dw.kernel_size == (k, k) and dw.dilation == (d, d) and dw.padding == ((k - 1) // 2 * d,) * 2
    assert block.use_res_connect == (stride == 1)
    act = block.conv[-3][2] if len(block.conv[-3]) == 3 else None
    assert type(act) is {"hardswish": nn.Hardswish, "relu": nn.ReLU, None: type(None)}.get(
        kwargs.get("activation", "relu6"), nn.ReLU6)
    x = torch.randn(2, 8, 11, 10, dtype=torch.float64)
    y, grads = module_outputs_and_grads(block, x)
    expected, ref_grads = module_outputs_and_grads(block, x, lambda t: unfused(block, t))
    assert len(op_calls) == 1
    assert_close_scaled(y, expected, **TOL, name="output")
    assert_close_grads(grads, ref_grads, **TOL, names=grad_names(block))


def test_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        InvertedResidual(8, 8, 1, 6, activation="gelu")
    with pytest.raises(ValueError, match="expand_ratio"):
        InvertedResidual(8, 8, 1, 0)


# ---------------------------------------------------------------------------------------------------
# The freeze cache


def test_freeze_folds_once_and_ignores_in_place_edits_until_unfreeze(monkeypatch):
    block, _ = pair_blocks(8, 8, 1, 6)
    block.eval()
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    folds = []
    real_fold = block._fold
    monkeypatch.setattr(block, "_fold", lambda: folds.append(1) or real_fold())
    with torch.no_grad():
        block(x), block(x)
        assert len(folds) == 2  # default: folded on every call
        assert block.freeze() is block and block.frozen and "frozen=True" in repr(block)
        y = block(x)
        assert len(folds) == 3 and torch.equal(block(x), y) and len(folds) == 3
        block.conv[0][0].weight.mul_(-1)  # in-place edits: a frozen block does not see them ...
        block.conv[1][1].running_var.mul_(4.0)
        assert torch.equal(block(x), y)
        assert block.unfreeze() is block and not block.frozen  # ... until it is unfrozen
        y2 = block(x)
        assert not torch.allclose(y2, y)
        assert_close_scaled(y2, unfused(block, x), **TOL)


def test_frozen_block_records_no_weight_gradients():
    block, _ = pair_blocks(8, 16, 2, 6)
    block.eval().freeze()
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in block.parameters())


@pytest.mark.parametrize("change", ["load_state_dict", "to_float", "deepcopy", "pickle", "channels_last"])
def test_frozen_block_refolds_after_conversions_loads_and_copies(change):
    block, _ = pair_blocks(8, 8, 1, 6)
    block.eval().freeze()
    x = torch.randn(2, 8, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        block(x)  # folded and cached
    if change == "load_state_dict":
        block.load_state_dict(randomize_batch_norms(InvertedResidual(8, 8, 1, 6).double(), seed=5).state_dict())
    elif change == "to_float":
        block, x = block.float(), x.float()
    elif change == "deepcopy":
        block = copy.deepcopy(block)
        with torch.no_grad():
            block.conv[2].weight.neg_()  # the copy's own weights, not the original's fold
        block.freeze()
    elif change == "pickle":
        block = pickle.loads(pickle.dumps(block))
    else:
        block, x = block.to(memory_format=CL), x.to(memory_format=CL)
    assert block.frozen
    with torch.no_grad():
        assert_close_scaled(block(x), unfused(block, x), **tolerance(x.dtype))


def test_frozen_block_without_expansion_folded_under_inference_mode_then_used_with_grad():
    """Its folded expansion weights are None: the cache checks the folded tensors that exist."""
    block, _ = pair_blocks(16, 16, 1, 1)
    block.eval().freeze()
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64)
    with torch.inference_mode():
        block(x)  # the frozen weights are now inference tensors
    xg = x.clone().requires_grad_()
    y = block(xg)  # outside inference_mode they are folded again, so autograd can save them
    y.sum().backward()
    assert_close_scaled(y.detach(), unfused(block, x).detach(), **TOL)
    assert xg.grad is not None


def test_frozen_block_reuses_its_prepared_call_until_the_block_changes(monkeypatch):
    # After the first frozen call, the next ones go straight to the native op with the arguments it prepared; a
    # new fold, reassigned geometry, or a call it does not cover (autograd outside inference mode on weights folded
    # inside it) takes the full fused path again.
    module = importlib.import_module("fusedops.nn.inverted_residual")
    block, _ = pair_blocks(8, 8, 1, 6)
    block.eval().freeze()
    x = make_input((2, 8, 9, 9), "channels_last")
    block.float()
    full_calls = []
    real = module._run_fused
    monkeypatch.setattr(module, "_run_fused", lambda *a, **k: full_calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        y = block(x)
        assert torch.equal(block(x), y) and len(full_calls) == 1
        project_bn = block.conv[3]
        project_bn.train()  # batch statistics: the block's modules in train mode, not the prepared call
        project_bn.momentum = 0.0  # (running statistics kept for the checks below)
        expected = project_bn(block.conv[:3](x)) + x
        assert_close_scaled(block(x), expected, **tolerance(torch.float32))
        project_bn.eval()
        assert torch.equal(block(x), y) and len(full_calls) == 1
        dw = block.conv[1][0]
        dw.padding, dw.dilation = (2, 2), (2, 2)  # geometry reassigned: the prepared call no longer applies
        y2 = block(x)
        assert len(full_calls) == 2
        assert_close_scaled(y2, unfused(block, x), **tolerance(torch.float32))
        assert torch.equal(block(x), y2) and len(full_calls) == 2
        block.load_state_dict(randomize_batch_norms(InvertedResidual(8, 8, 1, 6), seed=3).state_dict())
        y3 = block(x)
        assert len(full_calls) == 3
        assert_close_scaled(y3, unfused(block, x), **tolerance(torch.float32))
    xg = x.clone().requires_grad_()
    block(xg).sum().backward()  # the inference-mode fold is refolded for autograd, not reused
    assert len(full_calls) == 4 and xg.grad is not None


def test_frozen_block_compiles_after_eager_calls():
    # Its eager calls cached a fold, packed weights and a prepared call: a trace folds in the graph instead.
    block, _ = pair_blocks(8, 8, 1, 6)
    block.float().eval().freeze()
    x = make_input((2, 8, 9, 9), "channels_last")
    with torch.no_grad():
        expected = block(x)
        block(x)
        compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
        assert_close_scaled(compiled(x), expected, **tolerance(torch.float32))


def test_fusedops_freeze_covers_inverted_residual_blocks():
    model = nn.Sequential(InvertedResidual(8, 8, 1, 6), nn.Sequential(InvertedResidual(8, 16, 2, 1)),
                          DepthwiseSeparableConv2d(16, 16))
    blocks = [m for m in model.modules() if isinstance(m, (InvertedResidual, DepthwiseSeparableConv2d))]
    assert len(blocks) == 3
    assert fusedops.freeze(model) is model and all(m.frozen for m in blocks)
    assert fusedops.unfreeze(model) is model and not any(m.frozen for m in blocks)
    assert fusedops.nn.freeze(blocks[0]) is blocks[0] and blocks[0].frozen


@pytest.mark.parametrize("activation", ("relu6", "relu", "hardswish", None))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_conv_bn_activation_eval_folds_like_the_sequence(activation, layout):
    # The models' stems and heads: one convolution with the batch norm folded in, the activation in place; train
    # mode and the unfused sequence agree with it.
    from fusedops.nn.inverted_residual import ConvBNActivation

    block = ConvBNActivation(5, 12, 3, stride=2, activation=activation).double()
    randomize_batch_norms(block)
    block.eval()
    x = make_input((2, 5, 11, 9), layout, dtype=torch.float64, requires_grad=True)
    expected = nn.Sequential(*block.children())(x)
    y = block(x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert y.is_contiguous(memory_format=CL if layout == "channels_last" else torch.contiguous_format)
    # Gradients reach the unfolded parameters.
    g = torch.autograd.grad(y.sum(), [x, block[0].weight, block[1].weight])
    ge = torch.autograd.grad(expected.sum(), [x, block[0].weight, block[1].weight])
    for a, b in zip(g, ge):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    fusedops.freeze(block)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)
        block[0].weight.mul_(2)  # frozen: not seen until unfreeze
        torch.testing.assert_close(block(x), expected, rtol=1e-12, atol=1e-12)
        fusedops.unfreeze(block)
        assert not torch.allclose(block(x), expected)


@pytest.mark.parametrize("frozen", (False, True))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("shape", ((1, 7, 7), (8, 7, 7), (2, 48, 48), (1, 1, 1)))
def test_pointwise_conv_bn_activation_inference_matches_the_sequence(shape, layout, frozen):
    # A 1x1 head in inference: channels-last maps of up to 4096 pixels run as one GEMM (F.linear on the map's
    # (pixels x channels) view), larger ones and NCHW maps as F.conv2d; both give the sequence's output, in the
    # input's memory format.
    from fusedops.nn.inverted_residual import ConvBNActivation

    block = ConvBNActivation(24, 40, 1, activation="relu").double()
    randomize_batch_norms(block)
    block.eval()
    if frozen:
        fusedops.freeze(block)
    n, h, w = shape
    x = make_input((n, 24, h, w), layout, dtype=torch.float64)
    with torch.no_grad():
        expected = nn.Sequential(*block.children())(x)
        y = block(x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    assert y.is_contiguous(memory_format=CL if layout == "channels_last" else torch.contiguous_format)
