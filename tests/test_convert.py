"""fusedops.convert on torchvision's models: the same function in eval and train mode, the original's parameters,
buffers and state-dict keys, a report of what was replaced and what was not, torch.compile and torch.export."""

import copy

import pytest
import torch
from torch import nn

import fusedops
from fusedops.nn import ConvBNActivation, InvertedResidual, InvertedResidualV3, Linear, ShuffleNetV2Unit

from conftest import (CL, assert_close_scaled, check_compile_and_export, check_convert_eval_matches,
                      check_convert_shares_state, check_training_matches, make_input, randomize_batch_norms,
                      randomize_conv_biases, replaced_counts, requires_ops, tolerance)

torchvision = pytest.importorskip("torchvision")

pytestmark = requires_ops

# torchvision model -> how many modules convert replaces, by fused class (Linear: the classifier's layers).
REPLACED = {
    "mobilenet_v2": {InvertedResidual: 17, ConvBNActivation: 2, Linear: 1},
    "mobilenet_v3_large": {InvertedResidualV3: 15, ConvBNActivation: 2, Linear: 2},
    "mobilenet_v3_small": {InvertedResidualV3: 11, ConvBNActivation: 2, Linear: 2},
    "shufflenet_v2_x0_5": {ShuffleNetV2Unit: 16, ConvBNActivation: 2, Linear: 1},
}


def torchvision_model(name, dtype=torch.float64, seed=0):
    """torchvision's `name` (10 classes) with non-trivial batch-norm statistics and biases, in `dtype`."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(num_classes=10).to(dtype)
    return randomize_conv_biases(randomize_batch_norms(model, seed), seed)


@pytest.mark.parametrize("name", sorted(REPLACED))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_eval_matches_the_original(name, layout):
    report, _, _ = check_convert_eval_matches(lambda: torchvision_model(name), layout)
    assert replaced_counts(report) == {cls.__name__: n for cls, n in REPLACED[name].items()}


@pytest.mark.parametrize("name", ("mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5"))
def test_shares_parameters_buffers_and_keys(name):
    check_convert_shares_state(lambda seed: torchvision_model(name, dtype=torch.float32, seed=seed))


@pytest.mark.parametrize("name", ("mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5"))
def test_train_matches_the_original(name):
    reference = torchvision_model(name)
    converted = fusedops.convert(copy.deepcopy(reference), layout=None)
    inputs = [make_input((4, 3, 64, 64), layout, dtype=torch.float64) for layout in ("nchw", "channels_last")]
    check_training_matches(converted, reference, inputs, lr=0.01, seeds=(1, 2), train_grads=True)


def test_inplace_replaces_inside_the_model():
    model = torchvision_model("mobilenet_v3_small", dtype=torch.float32)
    assert fusedops.convert(model, inplace=True) is model
    assert isinstance(model.features[1], InvertedResidualV3) and isinstance(model.features[0], ConvBNActivation)
    assert model.features[0][0].weight.is_contiguous(memory_format=CL)


def test_unknown_and_refused_modules_are_kept_and_reported():
    # A conv -> BN -> GELU unit (an activation the fused op lacks), a conv with a bias before its BN, a grouped
    # (not depthwise) convolution, a depthwise one, and a linear layer (replaced too).
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.GELU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.Conv2d(8, 16, 3, padding=1, groups=8),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    randomize_batch_norms(model)
    converted, report = fusedops.convert(model, report=True)
    assert [(path, new) for path, _, new in report.replaced] == [("3", "DepthwiseConv2d"), ("6", "Linear")]
    reasons = dict((path, why) for path, _, why in report.left_alone)
    assert "GELU is not one the fused op computes" in reasons["0"]
    assert "has a bias" in reasons["1"]
    assert reasons["2"] == "fusedops has no fused module for it" and "6" not in reasons
    assert "replaced 2 modules" in str(report)
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        assert_close_scaled(converted(x), model(x), **tolerance(torch.float32))


def test_bad_layout_is_refused():
    with pytest.raises(ValueError, match="layout must be 'channels_last' or None"):
        fusedops.convert(nn.Conv2d(3, 3, 1), layout="nhwc")


@pytest.mark.parametrize("name", ("mobilenet_v3_small", "shufflenet_v2_x0_5"))
def test_compile_and_export_the_converted_model(name):
    model = torchvision_model(name, dtype=torch.float32).eval()
    check_compile_and_export(fusedops.freeze(fusedops.convert(model)))


def test_shufflenet_v2_units_with_other_activations_are_kept_and_reported():
    model = torchvision_model("shufflenet_v2_x0_5", dtype=torch.float32).eval()
    model.stage2[1].branch2[7] = nn.GELU()  # one activation the fused op lacks
    model.stage3[0].branch1[4] = nn.ReLU6()  # the shortcut's activation differs from the branch's
    converted, report = fusedops.convert(model, report=True)
    reasons = dict((path, why) for path, _, why in report.left_alone)
    assert "GELU is not one the fused op computes" in reasons["stage2.1"]
    assert "activations differ (relu, relu6)" in reasons["stage3.0"]
    assert isinstance(converted.stage2[0], ShuffleNetV2Unit) and not isinstance(converted.stage2[1], ShuffleNetV2Unit)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close_scaled(converted(x), model(x), **tolerance(torch.float32))


def test_1x1_convolutions_run_as_a_matrix_product_in_inference():
    # A 1x1 convolution with a bias and no batch norm (timm's conv_head after the global pool) becomes a
    # PointwiseConv2d: the same parameters and keys; in inference on a small channels-last map one F.linear, with
    # recorded gradients F.conv2d (the same function either way).
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 12, 1),
                          nn.Conv2d(12, 5, 1, bias=False), nn.Conv2d(5, 5, 1, stride=2), nn.Conv2d(5, 5, 1, groups=5))
    converted, report = fusedops.convert(copy.deepcopy(model), report=True)
    assert [(path, new) for path, _, new in report.replaced] == [("2", "PointwiseConv2d"), ("3", "PointwiseConv2d"),
                                                                  ("5", "DepthwiseConv2d")]
    assert converted.state_dict().keys() == model.state_dict().keys()
    x = torch.randn(3, 3, 9, 9)
    with torch.no_grad():
        assert_close_scaled(converted(x), model(x), **tolerance(torch.float32))
        # The matrix product, bit for bit: of a few rows (pixels) fusedops' _linear_activation, of more F.linear.
        for batch, product in ((3, lambda *a: torch.ops.fusedops._linear_activation(*a, "none")),
                               (9, torch.nn.functional.linear)):
            pooled = converted[1](converted[0](torch.randn(batch, 3, 9, 9).to(memory_format=CL)))
            expected = product(pooled.flatten(1), converted[2].weight.flatten(1), converted[2].bias)
            assert torch.equal(converted[2](pooled).flatten(1), expected), batch
    converted.train()
    model.train()
    out, expected = converted(x), model(x)
    assert_close_scaled(out, expected, **tolerance(torch.float32))
    out.sum().backward()
    expected.sum().backward()
    for (name, mine), theirs in zip(converted.named_parameters(), model.parameters()):
        assert_close_scaled(mine.grad, theirs.grad, name=name, **tolerance(torch.float32))
