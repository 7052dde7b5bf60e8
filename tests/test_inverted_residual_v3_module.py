"""fusedops.nn.InvertedResidualV3 and fusedops.nn.SqueezeExcitation against torchvision's MobileNetV3 block and
SqueezeExcitation: same submodules and state-dict keys; the same outputs, gradients and batch-norm statistics in
eval mode (one fused op, batch norms folded, squeeze-excitation inside the op) and train mode (the submodules in
sequence); torch.compile; the freeze cache; argument errors."""

import copy
import importlib
import pickle
from functools import partial

import pytest
import torch
from torch import nn

import fusedops
from fusedops.nn import DepthwiseConv2d, InvertedResidualV3, SqueezeExcitation

from conftest import (CL, assert_close_grads, assert_close_scaled, check_training_matches, grad_names, make_input,
                      module_outputs_and_grads, randomize_batch_norms, requires_ops, tolerance)

torchvision = pytest.importorskip("torchvision")
from torchvision.models.mobilenetv3 import InvertedResidual as TorchvisionBlock  # noqa: E402
from torchvision.models.mobilenetv3 import InvertedResidualConfig as TorchvisionConfig  # noqa: E402
from torchvision.ops import SqueezeExcitation as TorchvisionSE  # noqa: E402

pytestmark = requires_ops

TOL = tolerance(torch.float64)
TORCHVISION_NORM = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)  # what torchvision's MobileNetV3 passes

# (input_channels, kernel, expanded_channels, out_channels, use_se, activation, stride, dilation), as torchvision's
# InvertedResidualConfig takes them (width 1): with and without expansion, squeeze-excitation and residual; relu and
# hard-swish; stride 1 and 2; dilation 2 (the dilated configuration: the depthwise stage at stride 1).
CONFIGS = [
    (16, 3, 16, 16, False, "RE", 1, 1),  # no expansion, residual
    (16, 3, 16, 16, True, "RE", 2, 1),  # no expansion, SE, stride 2 (MobileNetV3-Small's first block)
    (16, 3, 64, 24, False, "RE", 2, 1),
    (24, 5, 72, 40, True, "RE", 2, 1),
    (40, 5, 120, 40, True, "HS", 1, 1),  # SE, hard-swish, residual
    (40, 3, 80, 40, False, "HS", 1, 1),
    (40, 5, 96, 48, True, "HS", 2, 2),  # dilated: stride-2 block, depthwise at stride 1, no residual
    (48, 5, 96, 48, True, "HS", 1, 2),  # dilated, residual
]
CONFIG_IDS = ["{}-k{}-{}-{}{}-{}-s{}-d{}".format(i, k, e, o, "-se" if se else "", a, s, d)
              for i, k, e, o, se, a, s, d in CONFIGS]
SE_CONFIGS = [c for c in CONFIGS if c[4]]

block_module = importlib.import_module("fusedops.nn.inverted_residual")


def tv_config(config):
    return TorchvisionConfig(*config, width_mult=1.0)


def pair_blocks(config, dtype=torch.float64, seed=1):
    """Our block and torchvision's with the same weights (random SE biases too) and non-trivial batch-norm state."""
    ref = TorchvisionBlock(tv_config(config), TORCHVISION_NORM).to(dtype)
    randomize_batch_norms(ref, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:  # the SE's convolutions: non-zero biases
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
    block = InvertedResidualV3.from_config(tv_config(config), TORCHVISION_NORM).to(dtype)
    block.load_state_dict(ref.state_dict())
    return block, ref


def unfused(block, x):
    """The block's own submodules in sequence (eval mode: batch norms on running statistics)."""
    y = block.block(x)
    return x + y if block.use_res_connect else y


@pytest.fixture
def op_calls(monkeypatch):
    """The keyword arguments (residual, se) of every call of the fused op from the blocks."""
    calls = []
    real = block_module.inverted_residual

    def spy(*args, **kwargs):
        calls.append(dict(residual=kwargs["residual"], se=kwargs.get("se")))
        return real(*args, **kwargs)

    monkeypatch.setattr(block_module, "inverted_residual", spy)
    return calls


# ---------------------------------------------------------------------------------------------------
# SqueezeExcitation


def test_squeeze_excitation_matches_torchvision():
    torch.manual_seed(5)
    se = SqueezeExcitation(24, 8)
    torch.manual_seed(5)
    ref = TorchvisionSE(24, 8)
    assert [(n, type(m)) for n, m in se.named_modules()][1:] == [(n, type(m)) for n, m in ref.named_modules()][1:]
    assert list(se.state_dict()) == list(ref.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    for (name, t), r in zip(se.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(t, r), name  # same default initialisation from the same draws
    assert type(se.scale_activation) is nn.Sigmoid and type(se.activation) is nn.ReLU
    x = torch.randn(2, 24, 5, 6, dtype=torch.float64)
    for gate, gate_name in ((nn.Sigmoid, "sigmoid"), (nn.Hardsigmoid, "hardsigmoid")):
        se = SqueezeExcitation(24, 8, scale_activation=gate_name).double()
        ref = TorchvisionSE(24, 8, scale_activation=gate).double()
        ref.load_state_dict(se.state_dict())
        assert type(se.scale_activation) is gate
        assert se.fused_args()[4:] == (gate_name, "relu")
        torch.testing.assert_close(se(x), ref(x), rtol=0, atol=0)
        y = se(x)
        assert not torch.allclose(y, x)


def test_squeeze_excitation_bad_arguments():
    with pytest.raises(ValueError, match="scale_activation"):
        SqueezeExcitation(8, 4, scale_activation=nn.Tanh)
    with pytest.raises(ValueError, match="activation"):
        SqueezeExcitation(8, 4, activation="gelu")
    with pytest.raises(ValueError, match="squeeze_channels"):
        SqueezeExcitation(8, 0)
    se = SqueezeExcitation(8, 4)
    se.scale_activation = nn.Tanh()  # swapped in afterwards: the fused op cannot compute it
    with pytest.raises(ValueError, match="Tanh"):
        se.fused_args()


# ---------------------------------------------------------------------------------------------------
# Structure


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_same_submodules_and_state_dict_as_torchvision(config):
    torch.manual_seed(4)
    ref = TorchvisionBlock(tv_config(config), TORCHVISION_NORM)
    torch.manual_seed(4)
    block = InvertedResidualV3.from_config(tv_config(config))
    assert [n for n, _ in block.named_modules()] == [n for n, _ in ref.named_modules()]
    state, ref_state = block.state_dict(), ref.state_dict()
    assert list(state) == list(ref_state)
    assert [t.shape for t in state.values()] == [t.shape for t in ref_state.values()]
    for (name, t), r in zip(state.items(), ref_state.values()):
        assert torch.equal(t, r), name  # same modules created in the same order: same default initialisation
    for name in ("use_res_connect", "out_channels", "_is_cn"):
        assert getattr(block, name) == getattr(ref, name), name
    for m, r in zip(block.modules(), ref.modules()):
        if isinstance(r, nn.Conv2d):
            assert (m.kernel_size, m.stride, m.padding, m.dilation, m.groups) == \
                (r.kernel_size, r.stride, r.padding, r.dilation, r.groups)
        if isinstance(r, nn.BatchNorm2d):
            assert (m.eps, m.momentum) == (0.001, 0.01)
        if isinstance(r, TorchvisionSE):
            assert type(m) is SqueezeExcitation
        elif not isinstance(r, (nn.Sequential, TorchvisionBlock)):
            assert isinstance(m, type(r)), (type(m), type(r))
    dw = block.block[1 if config[2] != config[0] else 0][0]
    assert isinstance(dw, DepthwiseConv2d) and dw.stride == ((1, 1) if config[7] > 1 else (config[6],) * 2)
    # Weights load either way, strictly.
    ref.load_state_dict(randomize_batch_norms(InvertedResidualV3.from_config(tv_config(config))).state_dict())
    block.load_state_dict(randomize_batch_norms(TorchvisionBlock(tv_config(config), TORCHVISION_NORM)).state_dict())


def test_state_dict_keys_follow_torchvision_indices():
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    se = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]

    def cbn(i):
        return [f"block.{i}.0.weight", *(f"block.{i}.1.{k}" for k in bn)]

    full = InvertedResidualV3(16, 3, 64, 24, True, "hardswish", 2)
    assert list(full.state_dict()) == cbn(0) + cbn(1) + [f"block.2.{k}" for k in se] + cbn(3)
    plain = InvertedResidualV3(16, 3, 16, 16, False, "relu", 1)
    assert list(plain.state_dict()) == cbn(0) + cbn(1)
    no_expand_se = InvertedResidualV3(16, 3, 16, 16, True, "relu", 1)
    assert list(no_expand_se.state_dict()) == cbn(0) + [f"block.1.{k}" for k in se] + cbn(2)
    # The squeeze width: a quarter of the expanded channels, rounded to a multiple of 8.
    assert full.block[2].fc1.out_channels == 16 and no_expand_se.block[1].fc1.out_channels == 8
    assert InvertedResidualV3(40, 5, 120, 40, True, "hardswish", 1).block[2].fc1.out_channels == 32


def test_plain_constructor_matches_from_config():
    config = (24, 5, 72, 40, True, "HS", 2, 1)
    a = InvertedResidualV3(24, 5, 72, 40, True, "hardswish", 2)
    b = InvertedResidualV3.from_config(tv_config(config))
    assert repr(a) == repr(b)
    assert a.activation == "hardswish" and "use_res_connect=False" in repr(a)


def test_bad_arguments():
    good = dict(in_channels=16, kernel_size=3, expanded_channels=64, out_channels=24, use_se=True,
                activation="hardswish", stride=2, dilation=1)
    InvertedResidualV3(**good)
    for argument, value, error in [("stride", 3, ValueError), ("stride", 0, ValueError), ("stride", (2, 2), ValueError),
                                   ("activation", "gelu", ValueError), ("activation", nn.ReLU, ValueError),
                                   ("in_channels", 0, ValueError), ("expanded_channels", -4, ValueError),
                                   ("out_channels", 2.5, ValueError), ("kernel_size", 0, ValueError),
                                   ("dilation", 0, ValueError), ("use_se", "yes", TypeError)]:
        with pytest.raises(error, match=argument):
            InvertedResidualV3(**{**good, argument: value})
    with pytest.raises(TypeError, match="norm_layer"):
        InvertedResidualV3.from_config(tv_config((16, 3, 64, 24, False, "RE", 2, 1)), nn.Identity)
    with pytest.raises(TypeError, match="norm_layer"):
        InvertedResidualV3.from_config(tv_config((16, 3, 64, 24, False, "RE", 2, 1)),
                                       partial(nn.BatchNorm2d, track_running_stats=False))
    # A norm_layer of nn.BatchNorm2d gives its eps and momentum.
    block = InvertedResidualV3.from_config(tv_config((16, 3, 64, 24, False, "RE", 2, 1)),
                                           partial(nn.BatchNorm2d, eps=1e-4, momentum=0.2))
    assert (block.block[0][1].eps, block.block[0][1].momentum) == (1e-4, 0.2)


# ---------------------------------------------------------------------------------------------------
# Parity with torchvision


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_eval_matches_torchvision(config, layout, op_calls):
    """Eval mode: one fused op (squeeze-excitation inside it); outputs, and gradients of the input and of every
    unfolded parameter (through the differentiable fold), are torchvision's."""
    block, ref = pair_blocks(config)
    block.eval()
    ref.eval()
    if layout == "channels_last":
        block, ref = block.to(memory_format=CL), ref.to(memory_format=CL)
    x = make_input((2, config[0], 9, 9), layout, dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(block(x), ref(x), **TOL, name="output (no_grad)")
    y, grads = module_outputs_and_grads(block, x)
    expected, ref_grads = module_outputs_and_grads(ref, x)
    assert len(op_calls) == 2 and all(c["residual"] == block.use_res_connect for c in op_calls)
    se = op_calls[0]["se"]
    if config[4]:
        gate, act = se[4:]
        assert (gate, act) == ("hardsigmoid", "relu") and len(se) == 6
    else:
        assert se is None
    assert_close_scaled(y, expected, **TOL, name="output")
    assert y.is_contiguous(memory_format=CL) == expected.is_contiguous(memory_format=CL)
    assert_close_grads(grads, ref_grads, **TOL, names=grad_names(block))
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("batch", (1, 2))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("config", [CONFIGS[i] for i in (0, 1, 3, 4, 6)], ids=[CONFIG_IDS[i] for i in (0, 1, 3, 4, 6)])
def test_eval_float32_matches_torchvision(config, layout, batch):
    """float32: within float32 rounding of torchvision's float32 block, at batch 1 (the CPU kernel's whole-image
    path) and 2."""
    block, ref = pair_blocks(config, torch.float32)
    block.eval()
    ref.eval()
    ref64 = copy.deepcopy(ref).double()
    if layout == "channels_last":
        block, ref = block.to(memory_format=CL), ref.to(memory_format=CL)
    x = make_input((batch, config[0], 12, 12), layout)
    with torch.no_grad():
        y, expected, exact = block(x), ref(x), ref64(x.double())
    assert_close_scaled(y, exact, **tolerance(torch.float32), name="output vs float64")
    assert_close_scaled(expected, exact, **tolerance(torch.float32), name="torchvision float32 vs float64")


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_train_matches_torchvision(config, op_calls):
    """Train mode runs the submodules: outputs, every gradient and the running statistics are torchvision's over
    two optimizer steps; eval mode then folds the updated statistics."""
    block, ref = pair_blocks(config)
    inputs = [make_input((4, config[0], 8, 8), layout, dtype=torch.float64) for layout in ("nchw", "channels_last")]
    check_training_matches(block, ref, inputs, lr=0.1)
    assert op_calls == []
    block.eval()
    ref.eval()
    x = torch.randn(2, config[0], 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(block(x), ref(x), **TOL, name="eval output after training")


def test_runs_unfused_without_running_statistics(op_calls):
    """Batch norms without running statistics normalise with the batch's even in eval mode: nothing to fold."""
    block, _ = pair_blocks(CONFIGS[4])
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats = False
            m.running_mean = m.running_var = None
    block.eval()
    x = torch.randn(2, CONFIGS[4][0], 7, 7, dtype=torch.float64)
    y = block(x)
    assert op_calls == []
    assert_close_scaled(y, unfused(block, x), **TOL)


# ---------------------------------------------------------------------------------------------------
# torch.compile


@pytest.mark.parametrize("config", [CONFIGS[2], CONFIGS[4]], ids=[CONFIG_IDS[2], CONFIG_IDS[4]])
def test_compile_fullgraph_eval(config):
    """torch.compile(fullgraph=True) traces the eval-mode block, fold and squeeze-excitation included, as one op
    call; gradients reach the parameters through the traced fold."""
    torch._dynamo.reset()
    block, ref = pair_blocks(config, torch.float32)
    block.eval()
    ref.eval()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    x = make_input((2, config[0], 10, 10), "channels_last", requires_grad=True)
    y, yc = block(x), compiled(x)
    assert_close_scaled(yc, ref(x), **tolerance(torch.float32), name="compiled output")
    torch.testing.assert_close(yc, y)
    params = [x, *block.parameters()]
    g = torch.autograd.grad(y.sum(), params)
    gc = torch.autograd.grad(yc.sum(), params)
    for a, b in zip(gc, g):
        torch.testing.assert_close(a, b)
    block.freeze()  # frozen: the trace folds afresh (no cache written from inside a trace), same values
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(block, fullgraph=True, backend="aot_eager")(x), y.detach())


# ---------------------------------------------------------------------------------------------------
# The freeze cache


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[4]], ids=[CONFIG_IDS[0], CONFIG_IDS[4]])
def test_freeze_folds_once_and_ignores_in_place_edits_until_unfreeze(config, monkeypatch):
    block, _ = pair_blocks(config)
    block.eval()
    x = torch.randn(2, config[0], 7, 7, dtype=torch.float64)
    folds = []
    real_fold = block._fold
    monkeypatch.setattr(block, "_fold", lambda: folds.append(1) or real_fold())
    with torch.no_grad():
        block(x), block(x)
        assert len(folds) == 2  # default: folded on every call
        assert block.freeze() is block and block.frozen and "frozen=True" in repr(block)
        y = block(x)
        assert len(folds) == 3 and torch.equal(block(x), y) and len(folds) == 3
        block.block[0][0].weight.mul_(-1)  # in-place edits: a frozen block does not see them ...
        block.block[-1][1].running_var.mul_(4.0)
        if config[4]:
            block.block[-2].fc2.bias.add_(1.0)  # ... the squeeze-excitation's weights included ...
        assert torch.equal(block(x), y)
        assert block.unfreeze() is block and not block.frozen  # ... until it is unfrozen
        y2 = block(x)
        assert not torch.allclose(y2, y)
        assert_close_scaled(y2, unfused(block, x), **TOL)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[4]], ids=[CONFIG_IDS[0], CONFIG_IDS[4]])
def test_frozen_block_records_no_weight_gradients(config):
    block, _ = pair_blocks(config)
    block.eval().freeze()
    x = torch.randn(2, config[0], 7, 7, dtype=torch.float64, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in block.parameters())


@pytest.mark.parametrize("change", ["load_state_dict", "to_float", "deepcopy", "pickle", "channels_last"])
def test_frozen_block_refolds_after_conversions_loads_and_copies(change):
    config = CONFIGS[4]
    block, _ = pair_blocks(config)
    block.eval().freeze()
    x = torch.randn(2, config[0], 7, 7, dtype=torch.float64)
    with torch.no_grad():
        block(x)  # folded and cached
    if change == "load_state_dict":
        block.load_state_dict(pair_blocks(config, seed=5)[1].state_dict())
    elif change == "to_float":
        block, x = block.float(), x.float()
    elif change == "deepcopy":
        block = copy.deepcopy(block)
        with torch.no_grad():
            block.block[-2].fc1.weight.neg_()  # the copy's own weights, not the original's fold
        block.freeze()
    elif change == "pickle":
        block = pickle.loads(pickle.dumps(block))
    else:
        block, x = block.to(memory_format=CL), x.to(memory_format=CL)
    assert block.frozen
    with torch.no_grad():
        assert_close_scaled(block(x), unfused(block, x), **tolerance(x.dtype))


def test_fusedops_freeze_covers_the_blocks():
    model = nn.Sequential(InvertedResidualV3(16, 3, 64, 16, True, "hardswish", 1),
                          nn.Sequential(InvertedResidualV3(16, 3, 16, 24, False, "relu", 2)))
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidualV3)]
    assert len(blocks) == 2
    assert fusedops.freeze(model) is model and all(m.frozen for m in blocks)
    assert fusedops.unfreeze(model) is model and not any(m.frozen for m in blocks)


@pytest.mark.parametrize("how", ["native", "reference_backend", "no_extension"])
def test_frozen_block_packs_weights_only_for_the_native_kernel(how, monkeypatch):
    """The packed weights are the native CPU kernel's (made by a native op): a frozen block makes them once for it,
    and not at all where the reference implementation runs (asked for, or the extension missing)."""
    from fusedops import _extension

    packs = []
    real_pack = block_module.pack_weights
    monkeypatch.setattr(block_module, "pack_weights", lambda *a, **kw: packs.append(1) or real_pack(*a, **kw))
    config = CONFIGS[4]
    block, ref = pair_blocks(config)
    block.eval().freeze()
    ref.eval()
    x = torch.randn(2, config[0], 7, 7, dtype=torch.float64)
    if how == "no_extension":
        monkeypatch.setattr(_extension, "has_ops", lambda: False)
        monkeypatch.setattr(_extension, "_warned_fallback", True)  # the fallback's one-time warning
    with torch.no_grad(), fusedops.use_backend("reference" if how == "reference_backend" else "auto"):
        y, y2 = block(x), block(x)
    assert packs == ([1] if how == "native" else [])
    assert_close_scaled(y, ref(x), **TOL)
    assert torch.equal(y, y2)
