"""MobileNetV1 (fusedops/models/mobilenet_v1.py) against the plain-PyTorch reference with the same parameter
names: outputs, gradients and batch-norm running statistics in eval and train mode; parameter and
multiply-add counts of the paper."""

import pytest
import torch
from torch import nn

import fusedops
from fusedops.models._reference_mobilenet_v1 import reference_mobilenet_v1

from conftest import requires_ops

pytestmark = requires_ops


def _pair_models(width_mult, num_classes=10):
    model = fusedops.models.mobilenet_v1(width_mult, num_classes=num_classes, dropout=0.0).double()
    ref = reference_mobilenet_v1(width_mult, num_classes=num_classes, dropout=0.0).double()
    missing = ref.load_state_dict(model.state_dict())
    assert not missing.missing_keys and not missing.unexpected_keys
    # Non-trivial batch-norm statistics and affine parameters, so folding is exercised.
    g = torch.Generator().manual_seed(1)
    for (name, t), (_, tr) in zip(model.state_dict().items(), ref.state_dict().items()):
        if "running_var" in name:
            value = torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5
        elif "running_mean" in name or ("bn" in name and "bias" in name):
            value = 0.1 * torch.randn(t.shape, generator=g, dtype=t.dtype)
        elif "bn" in name and "weight" in name:
            value = torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5
        else:
            continue
        t.copy_(value)
        tr.copy_(value)
    return model, ref


def test_parameter_names_match_reference():
    model = fusedops.models.mobilenet_v1()
    ref = reference_mobilenet_v1()
    assert list(model.state_dict()) == list(ref.state_dict())
    assert [tuple(t.shape) for t in model.state_dict().values()] == [tuple(t.shape) for t in ref.state_dict().values()]
    assert isinstance(model.blocks[1], fusedops.nn.DepthwiseSeparableConv2d)


@pytest.mark.parametrize("width_mult, size", ((0.25, 64), (0.5, 37)))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_eval_parity(width_mult, size, layout):
    model, ref = _pair_models(width_mult)
    model.eval()
    ref.eval()
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        model = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-9, atol=1e-9)
    xg = x.clone().requires_grad_()
    xr = x.clone().requires_grad_()
    y, yr = model(xg), ref(xr)
    torch.testing.assert_close(y, yr, rtol=1e-9, atol=1e-9)
    go = torch.randn_like(yr)
    g = torch.autograd.grad(y, [xg, *model.parameters()], go)
    gr = torch.autograd.grad(yr, [xr, *ref.parameters()], go)
    for a, e in zip(g, gr):
        torch.testing.assert_close(a, e, rtol=1e-8, atol=1e-9)


def test_train_parity_and_running_stats():
    model, ref = _pair_models(0.25)
    model.train()
    ref.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    for step in range(2):
        x = torch.randn(3, 3, 40, 40, dtype=torch.float64)
        y, yr = model(x), ref(x)
        torch.testing.assert_close(y, yr, rtol=1e-9, atol=1e-9)
        loss, loss_ref = y.square().mean(), yr.square().mean()
        opt.zero_grad()
        opt_ref.zero_grad()
        loss.backward()
        loss_ref.backward()
        for (name, p), pr in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, pr.grad, rtol=1e-8, atol=1e-10, msg=name)
        opt.step()
        opt_ref.step()
    for (name, b), br in zip(model.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, br, msg=name)
    # After training steps, eval mode folds the updated statistics (the cache is invalidated).
    model.eval()
    ref.eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-9, atol=1e-9)


def _count_macs(model, size):
    macs = []

    def conv_hook(m, inp, out):
        macs.append(out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1])

    def linear_hook(m, inp, out):
        macs.append(m.in_features * m.out_features)

    hooks = [m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.train()  # the unfused path runs the submodules, so the hooks see every layer
        model(torch.randn(2, 3, size, size))
    for h in hooks:
        h.remove()
    return sum(macs)


@pytest.mark.parametrize("width_mult, params_m, macs_m", ((1.0, 4.2, 569), (0.75, 2.6, 325), (0.5, 1.3, 149),
                                                          (0.25, 0.5, 41)))
def test_parameter_and_mac_counts(width_mult, params_m, macs_m):
    """Table 6 of the paper (224 x 224): millions of parameters and of multiply-adds."""
    model = fusedops.models.mobilenet_v1(width_mult)
    # The paper counts convolution and classifier weights (batch norm parameters are not counted).
    params = sum(p.numel() for n, p in model.named_parameters() if "bn" not in n and "stem.1" not in n)
    assert abs(params / 1e6 - params_m) <= 0.05 * params_m + 0.02, params
    macs = _count_macs(model, 224)
    assert abs(macs / 1e6 - macs_m) <= 0.01 * macs_m + 1, macs


def test_any_resolution_and_width():
    model = fusedops.models.mobilenet_v1(0.75, num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 61)).shape == (1, 7)
