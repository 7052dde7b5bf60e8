"""NaN and +-Inf in inputs and weights propagate as in PyTorch's composition: no NaN swallowed by an activation's
max/clamp or a skipped tap, none created where PyTorch has none (forward and gradients).

The reference runs in the same dtype (float32): PyTorch's own float32 and float64 convolutions disagree on
whether a NaN or Inf weight poisons the zero padding (0 * Inf), and the float32 one is what ours replaces: the
padding's taps are skipped, never multiplied (the kernels that read the padding as zeros hand non-finite weights,
and non-finite weight gradients, to loops that skip it: cpu/finite.h)."""

import pytest
import torch
import torch.nn.functional as F

import fusedops
from fusedops.ops import _reference
from fuzz.helpers import ACTIVATIONS, activation, depthwise_reference, dwpw_reference

SPECIALS = (float("nan"), float("inf"), float("-inf"))


def _poison(t, value, count, seed):
    """t with `count` random elements set to `value` (a new tensor, same layout)."""
    g = torch.Generator().manual_seed(seed)
    t = t.detach().clone()
    flat = t.view(-1) if t.is_contiguous() else None
    idx = torch.randint(0, t.numel(), (count,), generator=g)
    if flat is None:
        perm = t.permute(0, 2, 3, 1) if t.dim() == 4 else t  # channels_last storage order
        flat = perm.contiguous().view(-1)
        flat[idx] = value
        return flat.view(perm.shape).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    flat[idx] = value
    return t


def _same_specials(actual, expected, what):
    a, e = actual.detach().double(), expected.detach().double()
    assert torch.equal(torch.isnan(a), torch.isnan(e)), f"{what}: NaN positions differ"
    assert torch.equal(torch.isposinf(a), torch.isposinf(e)), f"{what}: +Inf positions differ"
    assert torch.equal(torch.isneginf(a), torch.isneginf(e)), f"{what}: -Inf positions differ"
    finite = torch.isfinite(e)
    torch.testing.assert_close(a[finite], e[finite], rtol=1e-4, atol=1e-4, msg=what)


def _inputs(layout, where, value, seed, dtype=torch.float32, c=4, mult=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, c, 7, 8, generator=g, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(c * mult, 1, 3, 3, generator=g, dtype=dtype)
    b = torch.randn(c * mult, generator=g, dtype=dtype)
    if where == "input":
        x = _poison(x, value, 3, seed)
    elif where == "weight":
        w = _poison(w, value, 2, seed)
    else:
        b = _poison(b, value, 1, seed)
    return x, w, b


def _depthwise_cases():
    for padding in (0, 1):
        for stride in (1, 2):
            for value, value_id in zip(SPECIALS, ("nan", "inf", "-inf")):
                for where in ("input", "weight", "bias"):
                    for layout in ("nchw", "channels_last"):
                        yield pytest.param(layout, where, value, stride, padding,
                                           id=f"{padding}-{stride}-{value_id}-{where}-{layout}")


DEPTHWISE_CASES = list(_depthwise_cases())


@pytest.mark.parametrize("layout, where, value, stride, padding", DEPTHWISE_CASES)
def test_depthwise_specials(layout, where, value, stride, padding):
    check_depthwise_specials(layout, where, value, stride, padding, "cpu")


def _leaves_on(tensors, device):
    """The tensors as leaves on `device` (grads land there), and leaf copies on the CPU for the reference."""
    return ([t.detach().to(device).requires_grad_() for t in tensors],
            [t.detach().clone().requires_grad_() for t in tensors])


def check_depthwise_specials(layout, where, value, stride, padding, device):
    for seed in range(3):
        x, w, b = _inputs(layout, where, value, seed)
        ts, refs = _leaves_on((x, w, b), device)
        y = fusedops.depthwise_conv2d(*ts, stride, padding)
        e = depthwise_reference(*refs, (stride, stride), (padding, padding), (1, 1))
        _same_specials(y.cpu(), e, "forward")
        go = torch.randn(y.shape)
        for name, a, r in zip(("input", "weight", "bias"), torch.autograd.grad(y, ts, go.to(device)),
                              torch.autograd.grad(e, refs, go)):
            _same_specials(a.cpu(), r, f"grad {name}")


def _dwpw_cases():
    for act in ACTIVATIONS[1:]:
        for value, value_id in zip(SPECIALS, ("nan", "inf", "-inf")):
            for where in ("input", "weight", "bias"):
                for layout in ("nchw", "channels_last"):
                    yield pytest.param(layout, where, value, act, id=f"{act}-{value_id}-{where}-{layout}")


DWPW_CASES = list(_dwpw_cases())


@pytest.mark.parametrize("layout, where, value, act", DWPW_CASES)
def test_dwpw_specials(layout, where, value, act):
    check_dwpw_specials(layout, where, value, act, "cpu")


def check_dwpw_specials(layout, where, value, act, device):
    for seed in range(3):
        x, w, b = _inputs(layout, where, value, seed)
        g = torch.Generator().manual_seed(seed + 10)
        pw_w, pw_b = torch.randn(5, 4, 1, 1, generator=g), torch.randn(5, generator=g)
        with torch.no_grad():
            y = fusedops.dwpw_conv2d(*(t.to(device) for t in (x, w, b, pw_w, pw_b)), 1, 1, 1, act, act)
        e = dwpw_reference(x, w, b, pw_w, pw_b, (1, 1), (1, 1), (1, 1), act, act)
        _same_specials(y.cpu(), e, f"forward ({act})")


@pytest.mark.parametrize("layout, where, value, act", DWPW_CASES)
def test_dwpw_backward_specials(layout, where, value, act):
    check_dwpw_backward_specials(layout, where, value, act, "cpu")


def check_dwpw_backward_specials(layout, where, value, act, device):
    """Every gradient of dwpw_conv2d as the composition's, the activations' derivatives at NaN and +-Inf included.
    grad_output comes in the output's layout, as in a network, and the maps hold whole multiples of 64 elements: aten's
    CPU activation backwards then run their vectorised loops throughout, and those are what the kernels follow at a
    NaN (the scalar loops that take mixed layouts and the tails differ there: hardtanh_backward and
    hardswish_backward pass grad through)."""
    for seed in range(3):
        x, w, b = _inputs(layout, where, value, seed)
        g = torch.Generator().manual_seed(seed + 10)
        pw_w, pw_b = torch.randn(8, 4, 1, 1, generator=g), torch.randn(8, generator=g)
        ts, refs = _leaves_on((x, w, b, pw_w, pw_b), device)
        y = fusedops.dwpw_conv2d(*ts, 1, 1, 1, act, act)
        e = dwpw_reference(*refs, (1, 1), (1, 1), (1, 1), act, act)
        _same_specials(y.cpu(), e, f"forward ({act})")
        go = torch.randn(y.shape, generator=g).contiguous(memory_format=_memory_format(layout))
        for name, a, r in zip(("input", "dw_weight", "dw_bias", "pw_weight", "pw_bias"),
                              torch.autograd.grad(y, ts, go.to(device)), torch.autograd.grad(e, refs, go)):
            _same_specials(a.cpu(), r, f"grad {name} ({act})")


def _memory_format(layout):
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


@pytest.mark.parametrize("act", ACTIVATIONS[1:])
def test_dwpw_nan_through_activations(act):
    """A NaN reaching an activation (max/clamp) comes out as NaN, in both the mid and the output activation."""
    x = torch.randn(1, 3, 5, 5)
    x[0, 1, 2, 2] = float("nan")
    w, b = torch.randn(3, 1, 3, 3), torch.zeros(3)
    pw_w, pw_b = torch.randn(4, 3, 1, 1), torch.zeros(4)
    for mid, out in ((act, None), (None, act), (act, act)):
        y = fusedops.dwpw_conv2d(x, w, b, pw_w, pw_b, 1, 1, 1, mid, out)
        e = dwpw_reference(x, w, b, pw_w, pw_b, (1, 1), (1, 1), (1, 1), mid, out)
        _same_specials(y, e, f"{mid}/{out}")
    assert activation(torch.tensor(float("nan")), act).isnan()


@pytest.mark.parametrize("value", SPECIALS, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_shuffle_specials(value, layout):
    x = _inputs(layout, "input", value, 0, c=6)[0]
    torch.testing.assert_close(fusedops.channel_shuffle(x, 3), F.channel_shuffle(x, 3), rtol=0, atol=0,
                               equal_nan=True)
    torch.testing.assert_close(fusedops.concat_shuffle(x, x, 2), F.channel_shuffle(torch.cat([x, x], 1), 2),
                               rtol=0, atol=0, equal_nan=True)


def _block_cases():
    for block in ("inverted_residual", "ghost_module", "shufflenet_v2_unit", "shufflenet_v2_unit_down"):
        for value, value_id in zip(SPECIALS, ("nan", "inf", "-inf")):
            for where in ("input", "expand", "depthwise", "project", "bias", "shortcut_depthwise",
                          "shortcut_pointwise"):
                if block == "ghost_module" and where == "project":
                    continue
                if block != "shufflenet_v2_unit_down" and where.startswith("shortcut"):
                    continue
                for layout in ("nchw", "channels_last"):
                    yield pytest.param(block, layout, where, value, id=f"{block}-{value_id}-{where}-{layout}")


def _block_inputs(block, layout, where, value, seed):
    """(input, weights) of a block with 4 input channels, at stride 1 (shufflenet_v2_unit: the stride-1 unit, its
    branch on the input's last 2 channels) or, for shufflenet_v2_unit_down, ShuffleNetV2's down-sampling unit at
    stride 2 (a shortcut and a branch of 6 channels each); `where` names the tensor holding specials."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 7, 8, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    if block == "inverted_residual":
        shapes = {"expand": (12, 4, 1, 1), "expand_bias": (12,), "depthwise": (12, 1, 3, 3), "depthwise_bias": (12,),
                  "project": (4, 12, 1, 1), "bias": (4,)}
    elif block == "shufflenet_v2_unit":
        shapes = {"expand": (2, 2, 1, 1), "expand_bias": (2,), "depthwise": (2, 1, 3, 3), "depthwise_bias": (2,),
                  "project": (2, 2, 1, 1), "bias": (2,)}
    elif block == "shufflenet_v2_unit_down":
        shapes = {"expand": (6, 4, 1, 1), "expand_bias": (6,), "depthwise": (6, 1, 3, 3), "depthwise_bias": (6,),
                  "project": (6, 6, 1, 1), "bias": (6,), "shortcut_depthwise": (4, 1, 3, 3),
                  "shortcut_depthwise_bias": (4,), "shortcut_pointwise": (6, 4, 1, 1), "shortcut_pointwise_bias": (6,)}
    else:
        shapes = {"expand": (3, 4, 1, 1), "expand_bias": (3,), "depthwise": (3, 1, 3, 3), "bias": (3,)}
    ws = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    if where == "input":
        x = _poison(x, value, 3, seed)
    elif block == "ghost_module" and where == "depthwise":
        # In a filter whose channel the output keeps (see test_fused_block_specials on the dropped one).
        ws[where] = torch.cat([_poison(ws[where][:2], value, 1, seed), ws[where][2:]])
    else:
        ws[where] = _poison(ws[where], value, 1, seed)
    return x, list(ws.values())


def _block_call(block, x, ws, reference):
    if block == "inverted_residual":
        if reference:
            return _reference.inverted_residual(x, *ws, None, None, None, None, (1, 1), (1, 1), (1, 1), "relu6", True,
                                                None, None)
        return fusedops.inverted_residual(x, *ws, activation="relu6")
    if block.startswith("shufflenet_v2_unit"):
        shortcut, stride = (tuple(ws[6:]), 2) if block == "shufflenet_v2_unit_down" else (None, 1)
        if reference:
            return _reference.shufflenet_v2_unit(x, *ws[:6], *(shortcut or (None,) * 4), (stride, stride), (1, 1),
                                                 (1, 1), "relu")
        return fusedops.shufflenet_v2_unit(x, *ws[:6], shortcut=shortcut, stride=stride)
    if reference:
        return _reference.ghost_module(x, *ws, None, 5, (1, 1), "relu")
    return fusedops.ghost_module(x, *ws, 5)


BLOCK_CASES = list(_block_cases())


@pytest.mark.parametrize("block, layout, where, value", BLOCK_CASES)
def test_fused_block_specials(block, layout, where, value):
    """The fused blocks (expanded or primary maps only in tiles, depthwise on those tiles with their zero
    padding): forward and every gradient as the float32 composition."""
    check_fused_block_specials(block, layout, where, value, "cpu")


def check_fused_block_specials(block, layout, where, value, device):
    for seed in range(3):
        x, ws = _block_inputs(block, layout, where, value, seed)
        ts, refs = _leaves_on((x, *ws), device)
        y = _block_call(block, ts[0], ts[1:], reference=False)
        e = _block_call(block, refs[0], refs[1:], reference=True)
        _same_specials(y.cpu(), e, "forward")
        go = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
        for i, (a, r) in enumerate(zip(torch.autograd.grad(y, ts, go.to(device)),
                                       torch.autograd.grad(e, refs, go))):
            a = a.cpu()
            if block == "ghost_module" and i >= 3:
                # The last cheap filter's channel is cut from the output (5 of 3 + 3 channels): its gradient is
                # zero. The composition computes that channel and multiplies its zero gradient by the primary
                # map (0 * NaN = NaN); the fused op never computes it.
                assert torch.equal(a[2:], torch.zeros_like(a[2:])), f"grad {i} of the dropped filter"
                a, r = a[:2], r[:2]
            _same_specials(a, r, f"grad {i}")
