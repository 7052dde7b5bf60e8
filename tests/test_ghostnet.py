"""GhostNet's blocks and model (fusedops/nn/ghost.py, fusedops/models/ghostnet.py) against timm's: state-dict keys
both ways; outputs, gradients and batch-norm running statistics in eval mode (each Ghost module one fused op, batch
norms folded) and in train mode (timm's sequence); freezing."""

import math

import pytest
import torch
from torch import nn

import fusedops
from fusedops.nn import GhostBottleneck, GhostModule

from conftest import (CL, assert_close_grads, assert_close_scaled, check_training_matches, grad_names, make_input,
                      module_outputs_and_grads, randomize_batch_norms, randomize_conv_biases, requires_ops, tolerance)

timm = pytest.importorskip("timm")
from timm.models import ghostnet as timm_ghostnet  # noqa: E402

pytestmark = requires_ops

TOL = tolerance(torch.float64)


def randomize(model, seed=1):
    """Non-trivial batch-norm state and convolution biases."""
    return randomize_conv_biases(randomize_batch_norms(model, seed), seed + 100)


def pair_modules(ours_cls, theirs_cls, *args, dtype=torch.float64, **kwargs):
    ref = randomize(theirs_cls(*args, **kwargs).to(dtype))
    module = ours_cls(*args, **kwargs).to(dtype)
    module.load_state_dict(ref.state_dict())
    return module, ref


@pytest.fixture
def op_calls(monkeypatch):
    """How many times the fused ghost_module op ran."""
    from fusedops.nn import ghost

    calls = []
    original = ghost.ghost_module

    def counted(*args, **kwargs):
        calls.append(kwargs.get("residual") is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr(ghost, "ghost_module", counted)
    return calls


# ---------------------------------------------------------------------------------------------------
# 1. GhostModule


@pytest.mark.parametrize("ratio, dw_size", ((2, 3), (3, 3), (4, 5)))
@pytest.mark.parametrize("act", (nn.ReLU, nn.Identity))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_ghost_module_eval_matches_timm(ratio, dw_size, act, layout, op_calls):
    module, ref = pair_modules(GhostModule, timm_ghostnet.GhostModule, 8, 13, ratio=ratio, dw_size=dw_size,
                               act_layer=act)
    assert list(module.state_dict()) == list(ref.state_dict())
    module.eval()
    ref.eval()
    x = make_input((2, 8, 9, 10), layout, dtype=torch.float64)
    y, grads = module_outputs_and_grads(module, x)
    expected, ref_grads = module_outputs_and_grads(ref, x)
    assert op_calls, "the fused op did not run"
    assert_close_scaled(y, expected, **TOL, name="output")
    assert_close_grads(grads, ref_grads, **TOL, names=grad_names(module))


def test_ghost_module_train_matches_timm():
    module, ref = pair_modules(GhostModule, timm_ghostnet.GhostModule, 6, 12, ratio=3)
    inputs = [make_input((4, 6, 7, 7), "channels_last", dtype=torch.float64) for _ in range(2)]
    check_training_matches(module, ref, inputs, lr=0.1)


def test_ghost_module_refuses_what_the_op_cannot_run():
    with pytest.raises(ValueError, match="kernel_size=1"):
        GhostModule(8, 16, kernel_size=3)
    with pytest.raises(ValueError, match="ratio >= 2"):
        GhostModule(8, 16, ratio=1)
    with pytest.raises(ValueError, match="act_layer must be None or one of"):
        GhostModule(8, 16, act_layer=nn.GELU)


def test_ghost_module_residual_argument():
    module = randomize(GhostModule(8, 12).double()).eval()
    x = make_input((2, 8, 6, 6), "channels_last", dtype=torch.float64)
    r = make_input((2, 12, 6, 6), "channels_last", dtype=torch.float64)
    assert_close_scaled(module(x, residual=r), module(x) + r, **TOL, name="output")
    module.train()
    assert_close_scaled(module(x, residual=r) - r, module(x), **TOL, name="train output")


# ---------------------------------------------------------------------------------------------------
# 2. GhostBottleneck


BOTTLENECKS = (
    dict(in_chs=16, mid_chs=16, out_chs=16, dw_kernel_size=3, stride=1),                 # identity shortcut
    dict(in_chs=16, mid_chs=48, out_chs=24, dw_kernel_size=3, stride=2),                 # stride 2, projection
    dict(in_chs=24, mid_chs=72, out_chs=40, dw_kernel_size=5, stride=2, se_ratio=0.25),  # stride 2 + SE
    dict(in_chs=40, mid_chs=120, out_chs=40, dw_kernel_size=5, stride=1, se_ratio=0.25),  # SE, identity
    dict(in_chs=80, mid_chs=480, out_chs=112, dw_kernel_size=3, stride=1, se_ratio=0.25),  # SE, projection
)


@pytest.mark.parametrize("config", BOTTLENECKS)
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_bottleneck_eval_matches_timm(config, layout, op_calls):
    module, ref = pair_modules(GhostBottleneck, timm_ghostnet.GhostBottleneck, **config)
    assert list(module.state_dict()) == list(ref.state_dict())
    module.eval()
    ref.eval()
    x = make_input((2, config["in_chs"], 9, 8), layout, dtype=torch.float64)
    y, grads = module_outputs_and_grads(module, x)
    expected, ref_grads = module_outputs_and_grads(ref, x)
    # Two fused Ghost modules, the second with the shortcut added inside it.
    assert op_calls == [False, True]
    assert_close_scaled(y, expected, **TOL, name="output")
    assert_close_grads(grads, ref_grads, **TOL, names=grad_names(module))


@pytest.mark.parametrize("config", BOTTLENECKS[1:3])
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("frozen", (False, True))
@pytest.mark.parametrize("beyond_l2", (True, False))
def test_stride2_bottleneck_inference_runs_ghost1_and_its_depthwise_as_one_op(config, layout, frozen, beyond_l2):
    """Without a squeeze-excitation, one op runs the whole bottleneck but its shortcut. With one, where ghost1's
    output (float64) would not stay in the L2 cache, one op computes it and the depthwise stage after it; where it
    would, the two ops run. Either way the output is timm's."""
    module, ref = pair_modules(GhostBottleneck, timm_ghostnet.GhostBottleneck, **config)
    module.eval()
    ref.eval()
    if frozen:
        fusedops.freeze(module)
    l2 = torch.ops.fusedops._cpu_caches()[1]
    side = math.isqrt(2 * l2 // (2 * config["mid_chs"] * 8)) + 1 if beyond_l2 else 9
    x = make_input((2, config["in_chs"], side, side - 2), layout, dtype=torch.float64)
    with torch.profiler.profile() as prof, torch.inference_mode():
        y = module(x)
    ran = {e.name for e in prof.events()}
    whole = not config.get("se_ratio")
    assert ("fusedops::_ghost_bottleneck" in ran) == whole
    assert ("fusedops::_ghost_module_depthwise" in ran) == (beyond_l2 and not whole)
    assert ("fusedops::depthwise_conv2d" in ran) == (not beyond_l2 and not whole)
    assert ("fusedops::ghost_module" in ran) == (not beyond_l2 and not whole)
    with torch.inference_mode():
        expected = ref(x)
        again = module(x)  # frozen: the call prepared by the first one
    assert_close_scaled(y, expected, **TOL, name="output")
    torch.testing.assert_close(again, y, rtol=0, atol=0)


@pytest.mark.parametrize("config", BOTTLENECKS[2:])
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("frozen", (False, True))
def test_excited_bottleneck_inference_runs_the_squeeze_excitation_inside_ghost2(config, layout, frozen):
    module, ref = pair_modules(GhostBottleneck, timm_ghostnet.GhostBottleneck, **config)
    module.eval()
    ref.eval()
    if frozen:
        fusedops.freeze(module)
    x = make_input((3, config["in_chs"], 9, 8), layout, dtype=torch.float64)
    with torch.profiler.profile() as prof, torch.inference_mode():
        y = module(x)
    ran = {e.name for e in prof.events()}
    # The pooling, the 1x1 convolutions and the gate of the squeeze-excitation all inside the op.
    assert "fusedops::_ghost_module_excited" in ran and not ran & {"aten::mean", "aten::linear", "aten::hardsigmoid"}
    with torch.inference_mode():
        expected = ref(x)
        again = module(x)  # frozen: the call prepared by the first one
    assert_close_scaled(y, expected, **TOL, name="output")
    torch.testing.assert_close(again, y, rtol=0, atol=0)
    # A new squeeze-excitation weight is seen by the next call (the prepared call keys on the parameters).
    with torch.no_grad():
        module.se.conv_expand.weight = nn.Parameter(module.se.conv_expand.weight * 0.5)
        ref.se.conv_expand.weight.mul_(0.5)
    with torch.inference_mode():
        assert_close_scaled(module(x), ref(x), **TOL, name="output after a new squeeze-excitation weight")


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("frozen", (False, True))
@pytest.mark.parametrize("shape", ((2, 9, 8), (1, 5, 5)))
def test_identity_bottleneck_inference_runs_both_ghost_modules_as_one_op(layout, frozen, shape):
    """A stride-1 bottleneck with an identity shortcut and no squeeze-excitation: one op, whose first module's output
    is never written, with the shortcut added inside; timm's output, again on the prepared call, and after ghost2's
    weights change."""
    config = dict(in_chs=24, mid_chs=72, out_chs=24, dw_kernel_size=3, stride=1)
    module, ref = pair_modules(GhostBottleneck, timm_ghostnet.GhostBottleneck, **config)
    module.eval()
    ref.eval()
    if frozen:
        fusedops.freeze(module)
    n, h, w = shape
    x = make_input((n, 24, h, w), layout, dtype=torch.float64)
    with torch.profiler.profile() as prof, torch.inference_mode():
        y = module(x)
    # (Frozen, the first call also packs each module's weights for the kernel.)
    ran = [e.name for e in prof.events()
           if e.name.startswith("fusedops::") and e.name != "fusedops::_ghost_module_pack_weights"]
    assert ran == ["fusedops::_ghost_bottleneck"]
    with torch.inference_mode():
        expected = ref(x)
        again = module(x)  # frozen: the call prepared by the first one
    assert_close_scaled(y, expected, **TOL, name="output")
    torch.testing.assert_close(again, y, rtol=0, atol=0)
    # Other inputs, and with them other shortcuts: the prepared call takes each call's own.
    other = make_input((n, 24, h, w), layout, dtype=torch.float64)
    with torch.inference_mode():
        for input in (other, x, other):
            assert_close_scaled(module(input), ref(input), **TOL, name="output of another input")
    # New weights of ghost2 alone (its refold) are seen by the next call.
    state = {k: v * 0.5 if k.startswith("ghost2.primary_conv.0") else v for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)
    module.ghost2.load_state_dict({k[len("ghost2."):]: v for k, v in state.items() if k.startswith("ghost2.")})
    with torch.inference_mode():
        assert_close_scaled(module(x), ref(x), **TOL, name="output after ghost2's new weights")


@pytest.mark.parametrize("config", BOTTLENECKS[1:3])
def test_bottleneck_train_matches_timm(config):
    module, ref = pair_modules(GhostBottleneck, timm_ghostnet.GhostBottleneck, **config)
    inputs = [make_input((4, config["in_chs"], 8, 8), "channels_last", dtype=torch.float64) for _ in range(2)]
    check_training_matches(module, ref, inputs, lr=0.05, train_grads=True)


# ---------------------------------------------------------------------------------------------------
# 3. GhostNet


def pair_models(width=1.0, dtype=torch.float64, **kwargs):
    kwargs = {"num_classes": 10, "drop_rate": 0.0, **kwargs}
    ref = randomize(timm.create_model(f"ghostnet_{round(width * 100):03d}", **kwargs).to(dtype))
    model = fusedops.models.ghostnet(width, **kwargs).to(dtype)
    model.load_state_dict(ref.state_dict())
    return model, ref


@pytest.mark.parametrize("width", (0.5, 1.0, 1.3))
def test_state_dict_matches_timm_both_ways(width):
    ref = timm.create_model(f"ghostnet_{round(width * 100):03d}")
    model = fusedops.models.ghostnet(width)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == \
        [(k, v.shape) for k, v in ref.state_dict().items()]
    model.load_state_dict(ref.state_dict())
    ref.load_state_dict(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_ghostnet_eval_matches_timm(layout, op_calls):
    model, ref = pair_models()
    model.eval()
    ref.eval()
    x = make_input((2, 3, 64, 64), layout, dtype=torch.float64)
    y, grads = module_outputs_and_grads(model, x)
    expected, ref_grads = module_outputs_and_grads(ref, x)
    assert len(op_calls) == 2 * 16  # every Ghost module of the 16 bottlenecks ran fused
    assert_close_scaled(y, expected, **TOL, name="output")
    assert_close_grads(grads, ref_grads, **TOL, names=grad_names(model))


@pytest.mark.parametrize("batch", (1, 3))
def test_ghostnet_float32_eval_matches_timm(batch):
    model, ref = pair_models(dtype=torch.float32, width=0.5)
    model.eval().to(memory_format=CL)
    ref.eval()
    x = make_input((batch, 3, 96, 80), "channels_last")
    with torch.inference_mode():
        y, expected = model(x), ref(x)
    tol = tolerance(torch.float32)
    assert_close_scaled(y, expected, **tol, name="output")


def test_ghostnet_train_matches_timm(op_calls):
    """Train mode (dropout included, same random draws): outputs, every gradient, running statistics and
    num_batches_tracked are timm's over two optimizer steps; eval mode then folds the new statistics."""
    model, ref = pair_models(width=0.5, drop_rate=0.2)
    # 64 x 64: the last stages' batch statistics are over 2 x 2 maps, not single pixels.
    inputs = [make_input((4, 3, 64, 64), layout, dtype=torch.float64) for layout in ("nchw", "channels_last")]
    check_training_matches(model, ref, inputs, lr=0.01, seeds=(10, 11), train_grads=True)
    assert op_calls == []
    model.eval()
    ref.eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(model(x), ref(x), **TOL, name="eval output after training")


def test_freeze_ghostnet():
    model, ref = pair_models(width=0.5, dtype=torch.float32)
    model.eval()
    ref.eval()
    x = make_input((1, 3, 64, 64), "channels_last")
    fusedops.freeze(model)
    with torch.inference_mode():
        y, expected = model(x), ref(x)
        again = model(x)
    assert_close_scaled(y, expected, **tolerance(torch.float32), name="output")
    torch.testing.assert_close(again, y, rtol=0, atol=0)


def test_compile_ghostnet_eval():
    model, _ = pair_models(width=0.5, dtype=torch.float32)
    model.eval()
    x = make_input((1, 3, 32, 32), "channels_last")
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
