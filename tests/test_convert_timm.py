"""fusedops.convert on timm's models (MobileNetV3, EfficientNet, MobileNetV2, MobileNetV1, GhostNet as timm builds
them): the same function in eval and train mode, the original's parameters, buffers and state-dict keys, a report of
what was replaced and what was not, torch.compile and torch.export; timm's batch norm that carries its activation
(BatchNormAct2d)."""

import copy
import functools
import importlib
import io

import pytest
import torch
from torch import nn

import fusedops
from fusedops.nn import (GhostBottleneck, Linear, PairedActivation, PairedBatchNorm2d, PairedConv2d, PointwiseConv2d,
                         TimmDepthwiseSeparable, TimmInvertedResidual)

from conftest import (assert_close_scaled, check_compile_and_export, check_convert_eval_matches,
                      check_convert_shares_state, check_training_matches, make_input, randomize_batch_norms,
                      randomize_conv_biases, replaced_counts, requires_ops, tolerance)

timm = pytest.importorskip("timm")
from timm.layers import BatchNormAct2d, ConvNormAct  # noqa: E402
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual, SqueezeExcite  # noqa: E402

pytestmark = requires_ops

# timm model -> how many modules convert replaces, by fused class: every block (the depthwise-separable ones
# without squeeze-excitation or skip on the dwpw op); the stem (conv_stem, bn1), and the head's conv -> batch norm
# (EfficientNet's conv_head, bn2; MobileNetV3's last stage, a ConvBnAct) as pairs (GhostNet's stem with its act1).
# The classifier (timm's Linear) becomes a fusedops Linear; the conv_head of MobileNetV3 and GhostNet, a 1x1
# convolution with a bias and no batch norm after the global pool, a PointwiseConv2d.
REPLACED = {
    "mobilenetv3_large_100": {TimmInvertedResidual: 15, PairedConv2d: 2, PairedBatchNorm2d: 2, PointwiseConv2d: 1,
                              Linear: 1},
    "efficientnet_b0": {TimmInvertedResidual: 16, PairedConv2d: 2, PairedBatchNorm2d: 2, Linear: 1},
    "mobilenetv2_100": {TimmInvertedResidual: 16, TimmDepthwiseSeparable: 1, PairedConv2d: 2, PairedBatchNorm2d: 2,
                        Linear: 1},
    "mobilenetv1_100": {TimmDepthwiseSeparable: 13, PairedConv2d: 1, PairedBatchNorm2d: 1, Linear: 1},
    "ghostnet_100": {GhostBottleneck: 16, PairedConv2d: 2, PairedBatchNorm2d: 2, PairedActivation: 1,
                     PointwiseConv2d: 1, Linear: 1},
}
# What each keeps, by path: nothing.
LEFT_ALONE = {name: [] for name in REPLACED}
# Where the fused blocks call their ops: fusedops.inverted_residual and fusedops.dwpw_conv2d.
FUSED_OPS = {TimmInvertedResidual: (importlib.import_module("fusedops.nn.inverted_residual"), "inverted_residual"),
             TimmDepthwiseSeparable: (importlib.import_module("fusedops.nn.separable"), "dwpw_conv2d"),
             GhostBottleneck: (importlib.import_module("fusedops.nn.ghost"), "ghost_module",
                               "ghost_module_then_depthwise", "ghost_module_excited", "ghost_bottleneck")}


def fused_calls(module):
    """How many fused-op calls a replaced module makes without gradients: one, or for a Ghost bottleneck with a
    squeeze-excitation one per Ghost module (the first with the stride-2 depthwise stage where there is one, the
    second with the squeeze-excitation). (A projecting shortcut is one more call, of dwpw_conv2d, not counted.)"""
    if type(module) is not GhostBottleneck:
        return 1
    return 2 if module.se is not None else 1


def timm_model(name, dtype=torch.float64, seed=0, **kwargs):
    """timm's `name` (10 classes) with non-trivial batch-norm statistics and biases, in `dtype`."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=10, **kwargs).to(dtype)
    return randomize_conv_biases(randomize_batch_norms(model, seed), seed)


@pytest.mark.parametrize("name", sorted(REPLACED))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_eval_matches_the_original(name, layout, monkeypatch):
    report, converted, x = check_convert_eval_matches(lambda: timm_model(name), layout)
    assert replaced_counts(report) == {cls.__name__: n for cls, n in REPLACED[name].items()}
    assert sorted(path for path, _, _ in report.left_alone) == sorted(LEFT_ALONE[name])
    # Every block runs as one fused op.
    calls = {cls: count_calls(monkeypatch, *where) for cls, where in FUSED_OPS.items()}
    with torch.no_grad():
        converted(x)
    assert {cls: len(c) for cls, c in calls.items()} == {
        cls: sum(fused_calls(m) for m in converted.modules() if type(m) is cls) for cls in FUSED_OPS}


def count_calls(monkeypatch, module, *names):
    """A list that grows by one on each call of one of `module`'s functions `names` (which still run)."""
    calls = []
    for name in names:
        real = getattr(module, name)
        monkeypatch.setattr(module, name,
                            lambda *args, real=real, **kwargs: calls.append(1) or real(*args, **kwargs))
    return calls


@pytest.mark.parametrize("name, options", [*((name, {}) for name in sorted(REPLACED)),
                                           ("efficientnet_b0", {"drop_path_rate": 0.2})],
                         ids=[*sorted(REPLACED), "efficientnet_b0-drop"])
def test_train_matches_the_original(name, options):
    # Outputs, every parameter's gradient and the running statistics after two SGD steps; with stochastic depth the
    # seeded steps draw the same paths in both models.
    reference = timm_model(name, **options)
    converted = fusedops.convert(copy.deepcopy(reference), layout=None)
    inputs = [make_input((2, 3, 64, 64), layout, dtype=torch.float64) for layout in ("nchw", "channels_last")]
    check_training_matches(converted, reference, inputs, lr=0.01, seeds=(1, 2), train_grads=True)


def test_stochastic_depth_runs_in_train_mode():
    # With drop_path_rate > 0, train-mode outputs change with the draws (the converted blocks keep timm's DropPath).
    model = fusedops.convert(timm_model("efficientnet_b0", dtype=torch.float32, drop_path_rate=0.5)).train()
    x = torch.randn(2, 3, 32, 32)
    outputs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outputs.append(model(x))
    assert not torch.allclose(*outputs)


@pytest.mark.parametrize("name", sorted(REPLACED))
def test_shares_parameters_buffers_and_keys(name):
    check_convert_shares_state(lambda seed: timm_model(name, dtype=torch.float32, seed=seed))


@pytest.mark.parametrize("act_layer", (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU))
@pytest.mark.parametrize("gate_layer", (nn.Sigmoid, nn.Hardsigmoid))
def test_squeeze_excited_blocks_match_in_eval_and_train(act_layer, gate_layer):
    # One residual block per activation and gate (the SE's inner activation is the block's, as timm builds it), in
    # float64: eval through the fused op, then two training steps.
    se_layer = functools.partial(SqueezeExcite, gate_layer=gate_layer)
    block = InvertedResidual(8, 8, dw_kernel_size=5, exp_ratio=3, act_layer=act_layer, se_layer=se_layer)
    block = randomize_conv_biases(randomize_batch_norms(block.double())).eval()
    converted = fusedops.convert(copy.deepcopy(block), layout=None)
    assert type(converted) is TimmInvertedResidual and converted.use_res_connect
    x = make_input((2, 8, 9, 9), "channels_last", dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(converted(x), block(x), **tolerance(torch.float64))
    check_training_matches(converted, block, [x, 2 * x], lr=0.01, train_grads=True)


def test_report_names_what_was_replaced_and_kept():
    _, report = fusedops.convert(timm_model("mobilenetv3_large_100", dtype=torch.float32), report=True)
    replaced = {path: (old, new) for path, old, new in report.replaced}
    assert replaced["conv_stem"] == ("Conv2d", "PairedConv2d")
    assert replaced["bn1"] == ("BatchNormAct2d", "PairedBatchNorm2d")
    assert replaced["blocks.0.0"] == ("DepthwiseSeparableConv", "TimmInvertedResidual")
    assert replaced["blocks.1.0"] == ("InvertedResidual", "TimmInvertedResidual")
    assert replaced["blocks.6.0.conv"] == ("Conv2d", "PairedConv2d")  # the last stage's ConvBnAct
    text = str(report)
    assert "blocks.3.1: InvertedResidual -> TimmInvertedResidual" in text
    assert "conv_head: Conv2d -> PointwiseConv2d" in text  # a 1x1 convolution with a bias, no batch norm
    assert "classifier: Linear -> Linear" in text  # timm's Linear


def conv_then(norm, channels=8):
    """conv (3 -> `channels`, 3x3, no bias) -> `norm` as an nn.Sequential, batch norms randomized, in eval mode."""
    return randomize_batch_norms(nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False), norm)).eval()


@pytest.mark.parametrize("act_layer", (nn.ReLU, nn.Hardswish, nn.SiLU, nn.ReLU6))
def test_batch_norm_act_keeps_its_activation(act_layer):
    # A batch norm subclass carrying its activation: fusing it as a plain batch norm would drop the activation.
    model = conv_then(BatchNormAct2d(8, act_layer=act_layer))
    converted, report = fusedops.convert(model, report=True)
    assert [(path, new) for path, _, new in report.replaced] == [("0", "PairedConv2d"), ("1", "PairedBatchNorm2d")]
    assert converted[0].activation == fusedops.ops.activations.activation_name(act_layer.__name__.lower(), "")
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        expected = model(x)
        assert (model[1].act(-expected.abs()) != -expected.abs()).any()  # the activation changes these values
        assert_close_scaled(converted(x), expected, **tolerance(torch.float32))
    model.train()
    converted.train()
    assert_close_scaled(converted(x), model(x), **tolerance(torch.float32))


class ConvBatchNormActivation(nn.Module):
    """timm's GhostNet stem as its own module: conv_stem, bn1, act1 as siblings, `forward` given."""

    def __init__(self, act, forward=None):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = act
        self.run = forward

    def forward(self, x):
        if self.run is not None:
            return self.run(self, x)
        return self.act1(self.bn1(self.conv_stem(x)))


@pytest.mark.parametrize("act_layer", (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU))
def test_activation_after_a_pair_is_paired_too(act_layer):
    model = randomize_batch_norms(ConvBatchNormActivation(act_layer()).double()).eval()
    converted, report = fusedops.convert(copy.deepcopy(model), report=True, layout=None)
    assert [(path, new) for path, _, new in report.replaced] == [
        ("conv_stem", "PairedConv2d"), ("bn1", "PairedBatchNorm2d"), ("act1", "PairedActivation")]
    assert converted.conv_stem.activation == fusedops.ops.activations.activation_name(act_layer.__name__.lower(), "")
    assert list(converted.state_dict()) == list(model.state_dict())
    x = make_input((2, 3, 11, 10), "channels_last", dtype=torch.float64)
    with torch.no_grad():
        assert_close_scaled(converted(x), model(x), **tolerance(torch.float64))
    with torch.inference_mode():
        assert_close_scaled(converted.float()(x.float()), model.float()(x.float()), **tolerance(torch.float32))
    # Train mode: the batch norm's statistics, then the activation, as the original runs them.
    check_training_matches(converted.double(), model.double(), [x, 2 * x], lr=0.01, train_grads=True)


def test_activation_pairing_follows_the_data_flow():
    def twice(m, x):  # the batch norm's output also used besides the activation
        y = m.bn1(m.conv_stem(x))
        return m.act1(y) + y

    def called_again(m, x):  # the activation module called a second time
        return m.act1(m.act1(m.bn1(m.conv_stem(x))) - 1)

    for forward in (twice, called_again):
        model = randomize_batch_norms(ConvBatchNormActivation(nn.ReLU(), forward)).eval()
        converted, report = fusedops.convert(copy.deepcopy(model), report=True, layout=None)
        assert [(path, new) for path, _, new in report.replaced] == [
            ("conv_stem", "PairedConv2d"), ("bn1", "PairedBatchNorm2d")], forward.__name__
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            assert_close_scaled(converted(x), model(x), **tolerance(torch.float32))
    # An activation the fused modules do not compute: the pair alone.
    model = randomize_batch_norms(ConvBatchNormActivation(nn.GELU())).eval()
    converted, report = fusedops.convert(copy.deepcopy(model), report=True, layout=None)
    assert [new for _, _, new in report.replaced] == ["PairedConv2d", "PairedBatchNorm2d"]
    with torch.no_grad():
        assert_close_scaled(converted(x), model(x), **tolerance(torch.float32))


def test_unknown_batch_norm_activations_and_data_flow_are_kept():
    # A BatchNormAct2d with GELU (no fused activation): kept, with the reason.
    model = conv_then(BatchNormAct2d(8, act_layer=nn.GELU))
    converted, report = fusedops.convert(model, report=True)
    assert report.replaced == []
    assert "GELU is not one the fused op computes" in dict((p, w) for p, _, w in report.left_alone)["1"]

    # A conv whose output also bypasses the batch norm: not paired (the forward would change).
    class Bypass(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    bypass = randomize_batch_norms(Bypass()).eval()
    converted, report = fusedops.convert(bypass, report=True)
    assert report.replaced == []
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(converted(x), bypass(x))

    # A forward that fx cannot trace (it branches on a value): its data flow is unknown, nothing is paired.
    class Branches(Bypass):
        def forward(self, x):
            y = self.bn(self.conv(x))
            return y if y.sum() > 0 else -y

    branches = randomize_batch_norms(Branches()).eval()
    converted, report = fusedops.convert(branches, report=True)
    assert report.replaced == []
    assert "its forward could not be traced" in dict((p, w) for p, _, w in report.left_alone)[""]
    with torch.no_grad():
        assert torch.equal(converted(x), branches(x))


def test_timm_conv_norm_act_and_refused_blocks():
    # timm's ConvNormAct (conv, bn) is paired; an inverted residual with a GELU, and a depthwise-separable block
    # with squeeze-excitation whose projection has an activation (pw_act), are refused as blocks with the reason, and
    # their convolution and batch-norm pairs fused instead where the pair's activation is one the fused modules
    # compute; a depthwise-separable block with pw_act and neither squeeze-excitation nor skip runs the dwpw op.
    hard_gated = functools.partial(SqueezeExcite, gate_layer=nn.Hardsigmoid)
    model = nn.Sequential(
        ConvNormAct(3, 16, 3, stride=2, act_layer=nn.Hardswish),
        InvertedResidual(16, 16, exp_ratio=4, act_layer=nn.GELU),
        DepthwiseSeparableConv(16, 24, pw_act=True, act_layer=nn.ReLU6, se_layer=SqueezeExcite),
        InvertedResidual(24, 24, dw_kernel_size=5, exp_ratio=3, act_layer=nn.SiLU, se_layer=hard_gated),
        DepthwiseSeparableConv(24, 32, stride=2, pw_act=True, act_layer=nn.ReLU))
    model = randomize_conv_biases(randomize_batch_norms(model)).eval()
    converted, report = fusedops.convert(model, report=True)
    replaced = {path: new for path, _, new in report.replaced}
    assert replaced["0.conv"] == "PairedConv2d" and replaced["0.bn"] == "PairedBatchNorm2d"
    assert replaced["3"] == "TimmInvertedResidual" and replaced["4"] == "TimmDepthwiseSeparable"
    assert converted[4].out_activation == "relu"
    assert replaced["1.conv_pwl"] == "PairedConv2d" and replaced["1.conv_dw"] == "DepthwiseConv2d"
    assert replaced["1.conv_pw"] == "PointwiseConv2d"  # not paired: its batch norm applies a GELU
    assert {replaced[f"2.{n}"] for n in ("conv_dw", "conv_pw")} == {"PairedConv2d"}
    reasons = dict((path, why) for path, _, why in report.left_alone)
    for path in ("1", "1.bn1", "1.bn2"):
        assert "GELU is not one the fused op computes" in reasons[path]
    assert "its projection has an activation" in reasons["2"]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert_close_scaled(converted(x), model(x), **tolerance(torch.float32))


@pytest.mark.parametrize("options, reason", [
    ({"aa_layer": "avg"}, "its anti-aliasing stage (aa) is not one the fused op computes"),
    ({"s2d": 1}, "its space-to-depth stage (conv_s2d) is not one the fused op computes")], ids=["aa", "s2d"])
def test_blocks_with_stages_the_op_lacks_are_kept(options, reason):
    # Anti-aliasing (a pool after the depthwise convolution) and space-to-depth: the block is kept, with the reason,
    # and computes what it did.
    block = InvertedResidual(16, 32, stride=2, exp_ratio=2, act_layer=nn.SiLU, **options)
    block = randomize_batch_norms(block).eval()
    converted, report = fusedops.convert(block, report=True)
    assert ("", "InvertedResidual", reason) in report.left_alone
    x = torch.randn(2, 16, 16, 16)
    with torch.no_grad():
        assert_close_scaled(converted(x), block(x), **tolerance(torch.float32))


def test_compile_and_export_the_converted_model():
    model = timm_model("efficientnet_b0", dtype=torch.float32).eval()
    check_compile_and_export(fusedops.freeze(fusedops.convert(model)))


def test_converting_twice_keeps_the_fused_modules():
    converted = fusedops.convert(timm_model("mobilenetv2_100", dtype=torch.float32).eval())
    again, report = fusedops.convert(converted, report=True, inplace=True)
    assert again is converted and report.replaced == [] and report.left_alone == []


def test_copies_keep_each_pair_together():
    # A PairedConv2d runs the batch norm in its pair's place: deepcopy and pickling keep the two one module.
    converted = fusedops.convert(timm_model("mobilenetv2_100", dtype=torch.float32).eval())
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    buffer.seek(0)
    x = torch.randn(1, 3, 32, 32)
    for copied in (copy.deepcopy(converted), torch.load(buffer, weights_only=False)):
        assert copied.conv_stem.norm is copied.bn1 and copied.conv_head.norm is copied.bn2
        assert copied.bn1 is not converted.bn1
        with torch.no_grad():
            copied.bn1.running_mean.add_(1.0)  # the copy's pair reads its own batch norm
            assert not torch.allclose(copied(x), converted(x))
