"""Modules and models stay correct however their weights are written: no stale folded weights by default,
inference tensors, the explicit freeze step, and copies/serialisation round trips."""

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusedops
from fusedops.nn import DepthwiseSeparableConv2d, ShuffleNetV2Unit
from fuzz.helpers import activation


def unfused(m, x):
    """The block in eval mode with plain PyTorch ops (batch norms on running statistics)."""
    dw = m.dw
    y = F.conv2d(x, dw.weight, dw.bias, dw.stride, dw.padding, dw.dilation, dw.in_channels)
    if m.norm:
        y = F.batch_norm(y, m.bn_dw.running_mean, m.bn_dw.running_var, m.bn_dw.weight, m.bn_dw.bias, False, 0.0,
                         m.bn_dw.eps)
    y = activation(y, m.mid_activation)
    y = F.conv2d(y, m.pw.weight, m.pw.bias)
    if m.norm:
        y = F.batch_norm(y, m.bn_pw.running_mean, m.bn_pw.running_var, m.bn_pw.weight, m.bn_pw.bias, False, 0.0,
                         m.bn_pw.eps)
    return activation(y, m.out_activation)


def randomize_bn(module):
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.normal_(0, 0.5)
                bn.running_mean.normal_(0, 0.5)
                bn.running_var.uniform_(0.5, 2.0)


def block(dtype=torch.float64, **kwargs):
    m = DepthwiseSeparableConv2d(8, 12, **kwargs).to(dtype).eval()
    randomize_bn(m)
    return m


def check(m, x):
    with torch.no_grad():
        torch.testing.assert_close(m(x), unfused(m, x))


# ---------------------------------------------------------------------------------------------------
# Found bugs: stale weights after .data writes, inference tensors


@pytest.mark.parametrize("write", ["dw_weight", "pw_weight", "bn_weight", "running_var", "running_mean",
                                   "replace_data"])
def test_eval_block_sees_writes_through_data(write):
    """Writes through .data do not bump the version counter (EMA and weight loaders write this way): the
    next call must still use the new weights."""
    m = block()
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    check(m, x)
    if write == "dw_weight":
        m.dw.weight.data.mul_(-1)
    elif write == "pw_weight":
        m.pw.weight.data.add_(0.25)
    elif write == "bn_weight":
        m.bn_dw.weight.data.mul_(3.0)
    elif write == "running_var":
        m.bn_pw.running_var.data.mul_(4.0)
    elif write == "running_mean":
        m.bn_dw.running_mean.data.add_(1.0)
    else:
        m.dw.weight.data = -m.dw.weight.data
    check(m, x)


def test_eval_block_sees_ema_update():
    """The usual EMA update (torch.optim.swa_utils style, through .data/no_grad in place)."""
    m, ema_source = block(), block()
    x = torch.randn(1, 8, 7, 7, dtype=torch.float64)
    check(m, x)
    for p, q in zip(m.parameters(), ema_source.parameters()):
        p.data.mul_(0.5).add_(q.data, alpha=0.5)
    check(m, x)


def test_mobilenet_channels_last_inside_inference_mode():
    """Deployment code builds, converts and runs the model inside inference_mode (its parameters and buffers
    are inference tensors, which have no version counter); same result as the model built outside it."""
    reference = fusedops.models.mobilenet_v1(width_mult=0.25, num_classes=10).eval()
    randomize_bn(reference)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
    with torch.inference_mode():
        model = fusedops.models.mobilenet_v1(width_mult=0.25, num_classes=10).eval().to(
            memory_format=torch.channels_last)
        model.load_state_dict(reference.state_dict())
        y = model(x.to(memory_format=torch.channels_last))
        y2 = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y2, y, rtol=0, atol=0)


def test_block_created_inside_inference_mode_then_used_with_grad():
    with torch.inference_mode():
        m = block(torch.float32)
        m.freeze()
        x = torch.randn(1, 8, 6, 6)
        m(x)
    m.unfreeze()
    m.freeze()
    xg = torch.randn(1, 8, 6, 6, requires_grad=True)
    with torch.inference_mode():
        m(xg.detach())  # the frozen weights are now inference tensors
    y = m(xg)  # outside inference_mode they are folded again, so autograd can save them
    y.sum().backward()
    assert xg.grad is not None


# ---------------------------------------------------------------------------------------------------
# The explicit freeze step


def test_freeze_folds_once_and_unfreeze_folds_every_call(monkeypatch):
    m = block()
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    folds = []
    real_fold = m._fold
    monkeypatch.setattr(m, "_fold", lambda: folds.append(1) or real_fold())
    with torch.no_grad():
        m(x), m(x)
        assert len(folds) == 2  # default: folded on every call
        assert m.freeze() is m and m.frozen and "frozen=True" in repr(m)
        y = m(x)
        assert len(folds) == 3 and torch.equal(m(x), y) and len(folds) == 3  # constants
        m.dw.weight.data.mul_(-1)  # documented: a frozen block does not see this ...
        torch.testing.assert_close(m(x), y)
        m.unfreeze()  # ... until it is unfrozen (or frozen again)
    assert not m.frozen
    check(m, x)


@pytest.mark.parametrize("change", ["to_dtype", "load_state_dict", "deepcopy", "pickle", "torch_save",
                                    "channels_last"])
def test_frozen_block_refolds_after_conversions_and_loads(change):
    m = block().freeze()
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    check(m, x)  # folded and cached
    m, x = _changed(m, x, change, block, lambda copied: copied.dw.weight)
    assert m.frozen
    check(m, x)


def _changed(m, x, change, make, depthwise_weight):
    """(`m`, `x`) after `change`: a dtype conversion, a load of another `make()`'s state, a deepcopy whose
    `depthwise_weight(copy)` is then negated (the copy's own weights, not the original's fold), a pickle or
    torch.save round trip, or a conversion to channels_last."""
    if change == "to_dtype":
        return m.float(), x.float()
    if change == "load_state_dict":
        m.load_state_dict(make().state_dict())
    elif change == "deepcopy":
        m = copy.deepcopy(m)
        with torch.no_grad():
            depthwise_weight(m).neg_()
        m.freeze()
    elif change == "pickle":
        m = pickle.loads(pickle.dumps(m))
    elif change == "torch_save":
        buf = io.BytesIO()
        torch.save(m, buf)
        buf.seek(0)
        m = torch.load(buf, weights_only=False)
    else:
        return m.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    return m, x


def test_freeze_model():
    model = fusedops.models.mobilenet_v1(width_mult=0.25, num_classes=10).eval()
    randomize_bn(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert fusedops.freeze(model) is model
        blocks = [m for m in model.modules() if isinstance(m, DepthwiseSeparableConv2d)]
        assert blocks and all(m.frozen for m in blocks)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        fusedops.unfreeze(model)
        assert not any(m.frozen for m in blocks)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_frozen_block_under_torch_compile():
    torch._dynamo.reset()
    m = block(torch.float32).freeze()
    x = torch.randn(2, 8, 9, 9)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x))


# ---------------------------------------------------------------------------------------------------
# ShuffleNetV2Unit (the stride-1 and the down-sampling unit, each one fused op in eval mode): the same writes,
# freeze step and round trips


def unfused_unit(m, x):
    """The unit in eval mode with plain PyTorch ops (its submodules' convolutions, batch norms on running statistics,
    torch.cat and F.channel_shuffle)."""
    def run(branch, t):
        for layer in branch:
            if isinstance(layer, nn.Conv2d):
                t = F.conv2d(t, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
            elif isinstance(layer, nn.BatchNorm2d):
                t = F.batch_norm(t, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0,
                                 layer.eps)
            else:
                t = activation(t, m.activation)
        return t

    if m.stride == 1:
        x1, x2 = x.chunk(2, dim=1)
        return F.channel_shuffle(torch.cat([x1, run(m.branch2, x2)], 1), 2)
    return F.channel_shuffle(torch.cat([run(m.branch1, x), run(m.branch2, x)], 1), 2)


def unit(stride, dtype=torch.float64):
    m = ShuffleNetV2Unit(8, 8 * stride, stride).to(dtype).eval()
    randomize_bn(m)
    return m


def check_unit(m, x):
    with torch.no_grad():
        torch.testing.assert_close(m(x), unfused_unit(m, x))


@pytest.mark.parametrize("stride, write", [(1, "expand_weight"), (1, "dw_weight"), (1, "bn_weight"),
                                           (1, "running_var"), (1, "replace_data"), (2, "project_weight"),
                                           (2, "shortcut_dw_weight"), (2, "shortcut_pw_weight"),
                                           (2, "running_mean"), (2, "replace_data")])
def test_eval_unit_sees_writes_through_data(stride, write):
    m = unit(stride)
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    check_unit(m, x)
    if write == "expand_weight":
        m.branch2[0].weight.data.mul_(-1)
    elif write == "dw_weight":
        m.branch2[3].weight.data.mul_(-1)
    elif write == "project_weight":
        m.branch2[5].weight.data.add_(0.25)
    elif write == "shortcut_dw_weight":
        m.branch1[0].weight.data.mul_(-1)
    elif write == "shortcut_pw_weight":
        m.branch1[2].weight.data.add_(0.25)
    elif write == "bn_weight":
        m.branch2[4].weight.data.mul_(3.0)
    elif write == "running_var":
        m.branch2[6].running_var.data.mul_(4.0)
    elif write == "running_mean":
        m.branch1[1].running_mean.data.add_(1.0)
    else:
        m.branch2[3].weight.data = -m.branch2[3].weight.data
    check_unit(m, x)


@pytest.mark.parametrize("stride", [1, 2])
def test_unit_freeze_folds_once_and_unfreeze_folds_every_call(monkeypatch, stride):
    m = unit(stride)
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    folds = []
    real_fold = m._fold
    monkeypatch.setattr(m, "_fold", lambda: folds.append(1) or real_fold())
    with torch.no_grad():
        m(x), m(x)
        assert len(folds) == 2  # default: folded on every call
        assert m.freeze() is m and m.frozen and "frozen=True" in repr(m)
        y = m(x)
        assert len(folds) == 3 and torch.equal(m(x), y) and len(folds) == 3  # constants
        m.branch2[3].weight.data.mul_(-1)  # documented: a frozen unit does not see this ...
        torch.testing.assert_close(m(x), y)
        m.unfreeze()  # ... until it is unfrozen (or frozen again)
    assert not m.frozen
    check_unit(m, x)


@pytest.mark.parametrize("change", ["to_dtype", "load_state_dict", "deepcopy", "pickle", "torch_save",
                                    "channels_last"])
@pytest.mark.parametrize("stride", [1, 2])
def test_frozen_unit_refolds_after_conversions_and_loads(change, stride):
    m = unit(stride).freeze()
    x = torch.randn(2, 8, 9, 9, dtype=torch.float64)
    check_unit(m, x)  # folded, packed and its call prepared
    m, x = _changed(m, x, change, lambda: unit(stride), lambda copied: copied.branch2[3].weight)
    assert m.frozen
    check_unit(m, x)


@pytest.mark.parametrize("stride", [1, 2])
def test_frozen_unit_under_torch_compile(stride):
    torch._dynamo.reset()
    m = unit(stride, torch.float32).freeze()
    x = torch.randn(2, 8, 9, 9)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x))
