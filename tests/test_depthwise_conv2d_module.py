"""fusedops.nn.DepthwiseConv2d: state dicts interchangeable with nn.Conv2d(groups=C), padding modes,
from_conv, argument checks, repr, and a channels-last model, against nn.Conv2d."""

import pytest
import torch

import fusedops

from conftest import OpRecorder, assert_close_scaled, make_input, requires_ops, tolerance

pytestmark = requires_ops


# ---------------------------------------------------------------------------------------------------
# fusedops.nn.DepthwiseConv2d

MODULE_CONFIGS = [
    dict(in_channels=16, out_channels=16, kernel_size=3, stride=1, padding=1, bias=True),
    dict(in_channels=20, out_channels=40, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), bias=False),
    dict(in_channels=35, out_channels=35, kernel_size=5, stride=1, padding="same", dilation=2, bias=True),
    dict(in_channels=8, out_channels=24, kernel_size=2, stride=1, padding="valid", bias=True),
]


def _module_outputs(module, x, go):
    x = x.detach().clone().requires_grad_()
    with fusedops.use_backend("native"):
        out = module(x)
    grads = torch.autograd.grad(out, (x, *module.parameters()), go)
    return out, grads


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("config", MODULE_CONFIGS, ids=[f"cfg{i}" for i in range(len(MODULE_CONFIGS))])
def test_module_state_dict_round_trip(config, layout):
    c = config["in_channels"]
    conv = torch.nn.Conv2d(groups=c, **config)
    dw = fusedops.nn.DepthwiseConv2d(**config)
    assert dw.weight.shape == conv.weight.shape
    dw.load_state_dict(conv.state_dict())
    x = make_input((3, c, 11, 13), layout)
    with torch.no_grad():
        go = torch.randn_like(conv(x))
    # Against nn.Conv2d in float64 (two float32 implementations differ by both their errors: PyTorch's own weight
    # gradient here is ~3e-5 off the float64 one at one thread, at the scale of the largest gradient).
    conv64 = torch.nn.Conv2d(groups=c, **config).double()
    conv64.load_state_dict(conv.state_dict())
    out, grads = _module_outputs(dw, x, go)
    out64, grads64 = _module_outputs(conv64, x.double(), go.double())
    for a, e, name in zip((out, *grads), (out64, *grads64), ("output", "grad_input", "grad_weight", "grad_bias")):
        assert a.dtype == torch.float32
        assert_close_scaled(a, e, **tolerance(torch.float32), name=name)
    # and back: a DepthwiseConv2d's weights load into nn.Conv2d
    dw2 = fusedops.nn.DepthwiseConv2d(**config)
    conv2 = torch.nn.Conv2d(groups=c, **config)
    conv2.load_state_dict(dw2.state_dict())
    assert set(conv2.state_dict()) == set(dw2.state_dict())
    out_dw, _ = _module_outputs(dw2, x, go)
    out_conv, _ = _module_outputs(conv2, x, go)
    torch.testing.assert_close(out_dw, out_conv, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding_mode", ("zeros", "reflect", "replicate", "circular"))
@pytest.mark.parametrize("padding,kernel,stride", [(1, 3, 1), ((2, 1), (5, 3), 2), ("same", 4, 1)])
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_module_padding_modes(padding_mode, padding, kernel, stride, layout):
    conv = torch.nn.Conv2d(12, 24, kernel, stride=stride, padding=padding, groups=12, padding_mode=padding_mode)
    dw = fusedops.nn.DepthwiseConv2d(12, 24, kernel, stride=stride, padding=padding, padding_mode=padding_mode)
    dw.load_state_dict(conv.state_dict())
    x = make_input((2, 12, 9, 10), layout)
    with torch.no_grad():
        go = torch.randn_like(conv(x))
    for a, e in zip(_module_outputs(dw, x, go), _module_outputs(conv, x, go)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_module_runs_the_fused_op():
    dw = fusedops.nn.DepthwiseConv2d(8, 8, 3, padding=1)
    with fusedops.use_backend("native"), OpRecorder() as rec:
        dw(torch.randn(1, 8, 6, 6))
    assert "fusedops.depthwise_conv2d.default" in rec.ops
    assert not any(op.startswith("aten.convolution") or op.startswith("aten.conv") for op in rec.ops), rec.ops


def test_module_from_conv():
    conv = torch.nn.Conv2d(16, 32, (3, 5), stride=2, padding=(1, 2), dilation=(1, 2), groups=16, bias=True,
                           padding_mode="reflect").eval()
    dw = fusedops.nn.DepthwiseConv2d.from_conv(conv)
    assert isinstance(dw, fusedops.nn.DepthwiseConv2d) and not dw.training
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(dw, attr) == getattr(conv, attr), attr
    assert dw.weight.data_ptr() != conv.weight.data_ptr()  # copies, not shared
    x = torch.randn(2, 16, 12, 12)
    with fusedops.use_backend("native"):
        torch.testing.assert_close(dw(x), conv(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        conv.weight.add_(1.0)
    assert not torch.allclose(dw.weight, conv.weight)
    no_bias = fusedops.nn.DepthwiseConv2d.from_conv(torch.nn.Conv2d(4, 4, 3, groups=4, bias=False))
    assert no_bias.bias is None
    with pytest.raises(ValueError, match="groups == in_channels"):
        fusedops.nn.DepthwiseConv2d.from_conv(torch.nn.Conv2d(4, 8, 3, groups=2))
    with pytest.raises(ValueError, match="groups == in_channels"):
        fusedops.nn.DepthwiseConv2d.from_conv(torch.nn.Linear(4, 4))


def test_module_rejects_non_depthwise():
    with pytest.raises(ValueError, match=r"groups == in_channels \(8\), got groups=4"):
        fusedops.nn.DepthwiseConv2d(8, 8, 3, groups=4)
    with pytest.raises(ValueError, match=r"out_channels \(12\) must be a multiple of in_channels \(8\)"):
        fusedops.nn.DepthwiseConv2d(8, 12, 3)
    assert fusedops.nn.DepthwiseConv2d(8, 16, 3, groups=8).groups == 8


def test_module_channels_last_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 1),
        fusedops.nn.DepthwiseConv2d(16, 16, 3, stride=2, padding=1, bias=False),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        fusedops.nn.DepthwiseConv2d(16, 32, 5, padding=2),
    )
    reference = torch.nn.Sequential(
        model[0], torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False, groups=16), model[2], model[3],
        torch.nn.Conv2d(16, 32, 5, padding=2, groups=16),
    )
    reference[1].load_state_dict(model[1].state_dict())
    reference[4].load_state_dict(model[4].state_dict())
    model = model.to(memory_format=torch.channels_last)
    assert model[1].weight.shape == (16, 1, 3, 3)
    x = torch.randn(2, 3, 15, 15).to(memory_format=torch.channels_last)
    with fusedops.use_backend("native"):
        out = model(x)
        out.sum().backward()
    grad = model[4].weight.grad.clone()
    model.zero_grad()
    expected = reference(x)
    expected.sum().backward()
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grad, reference[4].weight.grad, rtol=1e-4, atol=1e-3)


def test_module_repr_and_type():
    dw = fusedops.nn.DepthwiseConv2d(16, 32, 3, stride=2, padding=1, bias=False)
    assert isinstance(dw, torch.nn.Conv2d)
    text = repr(dw)
    assert text.startswith("DepthwiseConv2d(16, 32, kernel_size=(3, 3)"), text
    for part in ("stride=(2, 2)", "padding=(1, 1)", "groups=16", "bias=False"):
        assert part in text, text
    assert fusedops.nn.DepthwiseConv2d(4, 4, 3).bias is not None
