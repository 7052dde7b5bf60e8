"""ShuffleNetV2 against torchvision's and ShuffleNetV1 against its plain-PyTorch reference."""

import copy

import pytest
import torch

import fusedops
from fusedops.models._reference_shufflenet_v1 import reference_shufflenet_v1
from fusedops.models.shufflenet_v1 import stage_channels

from conftest import requires_ops

torchvision = pytest.importorskip("torchvision")
pytestmark = requires_ops


def _relative_error(actual, exact):
    return (actual.double() - exact).abs().max().item() / max(exact.abs().max().item(), 1e-30)


def _assert_as_accurate(quantities):
    """Each (name, fusedops float32, PyTorch float32, float64) of `quantities`: fusedops' float32 results are as
    accurate as PyTorch's against float64 (they sum in different orders, so neither reproduces the other's
    rounding): in all (the sum of relative errors within 1.5x of PyTorch's) and each (within 10x of PyTorch's, or
    1e-6). (Train-mode float32 gradients of these small batches are off by up to a few percent in PyTorch too.)"""
    ours = {name: _relative_error(a, e) for name, a, _, e in quantities}
    theirs = {name: _relative_error(r, e) for name, _, r, e in quantities}
    assert sum(ours.values()) <= 1.5 * sum(theirs.values()), (sum(ours.values()), sum(theirs.values()))
    for name in ours:
        assert ours[name] <= max(10 * theirs[name], 1e-6), (name, ours[name], theirs[name])


def check_parity(model, reference, x, rtol=1e-4, atol=1e-5):
    """Eval mode: outputs and gradients against `reference` in float32. Train mode (batch statistics, where the
    fused training path sums in its own order): outputs, every gradient and the running statistics as accurate as
    `reference`'s, against its float64 copy."""
    model.load_state_dict(reference.state_dict(), strict=True)
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in reference.named_buffers()]
    exact = copy.deepcopy(reference).double()
    for train in (False, True):
        model.train(train)
        reference.train(train)
        exact.train(train)
        xm, xr, x64 = x.clone().requires_grad_(), x.clone().requires_grad_(), x.double().requires_grad_()
        out, expected, out64 = model(xm), reference(xr), exact(x64)
        weight = torch.randn_like(out)
        (out * weight).sum().backward()
        (expected * weight).sum().backward()
        (out64 * weight.double()).sum().backward()
        if train:
            quantities = [("output", out.detach(), expected.detach(), out64.detach()),
                          ("grad_input", xm.grad, xr.grad, x64.grad)]
            quantities += [(name, p.grad, q.grad, e.grad) for (name, p), q, e in
                           zip(model.named_parameters(), reference.parameters(), exact.parameters())
                           if e.grad.abs().max() > 1e-9]  # (a bias before a train-mode BN: exactly zero)
            quantities += [(name, b, c, e) for (name, b), c, e in
                           zip(model.named_buffers(), reference.buffers(), exact.buffers()) if b.is_floating_point()]
            _assert_as_accurate(quantities)
        else:
            torch.testing.assert_close(out, expected, rtol=rtol, atol=atol)
            torch.testing.assert_close(xm.grad, xr.grad, rtol=rtol, atol=atol)
            # Gradients meant to be zero (a bias before a train-mode BN) are rounding noise: tolerances are
            # relative to the largest gradient of the model.
            scale = max(q.grad.abs().max().item() for q in reference.parameters())
            for (name, p), q in zip(model.named_parameters(), reference.parameters()):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-4 * scale, msg=name)
        for m in (model, reference, exact):
            m.zero_grad()
    for (name, b), c in zip(model.named_buffers(), reference.buffers()):
        if not b.is_floating_point():
            assert torch.equal(b, c), name


@pytest.mark.parametrize("width,layout", [("x0_5", "nchw"), ("x1_0", "nchw"), ("x1_5", "nchw"), ("x2_0", "nchw"),
                                          ("x0_5", "channels_last"), ("x1_0", "channels_last")])
def test_shufflenet_v2_matches_torchvision(width, layout):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"shufflenet_v2_{width}")(num_classes=10)
    model = getattr(fusedops.models, f"shufflenet_v2_{width}")(num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        model, reference = model.to(memory_format=torch.channels_last), reference.to(memory_format=torch.channels_last)
    check_parity(model, reference, x)


def test_shufflenet_v2_same_names_as_torchvision():
    model = fusedops.models.shufflenet_v2_x1_0()
    reference = torchvision.models.shufflenet_v2_x1_0()
    assert list(model.state_dict()) == list(reference.state_dict())
    assert all(a.shape == b.shape for a, b in zip(model.state_dict().values(), reference.state_dict().values()))


@pytest.mark.parametrize("groups,width", [(1, 1.0), (2, 0.5), (3, 1.0), (3, 0.25), (4, 1.5), (8, 0.5), (8, 2.0)])
def test_shufflenet_v1_matches_reference(groups, width):
    torch.manual_seed(0)
    reference = reference_shufflenet_v1(groups, width, num_classes=10)
    model = fusedops.models.shufflenet_v1(groups, width, num_classes=10)
    check_parity(model, reference, torch.randn(2, 3, 64, 64))


def macs_and_params(model, resolution=224):
    macs = [0]

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs[0] += output.numel() * module.in_channels // module.groups * k
        elif isinstance(module, torch.nn.Linear):
            macs[0] += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, resolution, resolution))
    for h in handles:
        h.remove()
    return macs[0] / 1e6, sum(p.numel() for p in model.parameters()) / 1e6


# Table 2 of the paper: complexity (MFLOPs = multiply-adds) of ShuffleNet s x at 224 x 224.
@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("width,paper_mflops", [(1.0, 140), (1.5, 292), (2.0, 524)])
def test_shufflenet_v1_complexity_matches_paper(groups, width, paper_mflops):
    if width != 1.0 and groups != 3:
        pytest.skip("the paper reports 1.5x and 2x for g=3")
    mflops, _ = macs_and_params(reference_shufflenet_v1(groups, width))
    assert abs(mflops - paper_mflops) / paper_mflops < 0.05, mflops


def test_shufflenet_v1_params():
    _, params = macs_and_params(fusedops.models.shufflenet_v1(3, 1.0))
    assert abs(params - 1.9) < 0.1  # about 1.9M at 1000 classes (1x, g=3)


def test_shufflenet_v1_stage_channels():
    assert stage_channels(3, 1.0) == (240, 480, 960)
    assert stage_channels(8, 1.0) == (384, 768, 1536)
    assert stage_channels(1, 1.0) == (144, 288, 576)
    for groups in (1, 2, 3, 4, 8):
        for width in (0.25, 0.5, 1.0, 1.5, 2.0):
            channels = stage_channels(groups, width)
            assert all(c % (4 * groups) == 0 for c in channels) and channels[0] > 24
    with pytest.raises(ValueError, match="groups"):
        fusedops.models.shufflenet_v1(5)
