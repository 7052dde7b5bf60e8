"""fusedops.depthwise_conv2d on CPU: parity with ``F.conv2d(groups=C)`` over grids of geometries, channel
counts, layouts and dtypes, and on MobileNet-like shapes (native kernels).

Parity is against ``F.conv2d(groups=C)`` computed in float64 from the same (float32-representable) values,
so the tolerances measure only the kernels' own rounding (see conftest.assert_close_scaled). The shapes
that steer particular CPU kernel paths are in test_depthwise_conv2d_cpu_paths.py.
"""

import itertools
import random

import pytest
import torch

import fusedops

from conftest import (
    LAYOUTS,
    assert_close_scaled,
    check_depthwise_parity,
    check_depthwise_requested_grads,
    depthwise_reference,
    make_input,
    pair,
    param_id,
    reference_with_magnitudes,
    requires_ops,
    to_layout,
    tolerance,
)

pytestmark = requires_ops

# ---------------------------------------------------------------------------------------------------
# Parity grids

KERNELS = (1, 2, 3, 5, 7, (3, 5), (1, 3))
STRIDES = (1, 2, 3, (1, 2))
PADDINGS = ("zero", "half", "same", "valid")
DILATIONS = (1, 2)
MULTIPLIERS = (1, 2)
CHANNELS = (16, 20, 35, 71)
BATCHES = (1, 3)
SPATIAL = (13, 15)  # odd; >= the largest dilated kernel extent (7 with dilation 2 is 13)


def _padding(kind, kernel):
    kh, kw = pair(kernel)
    return {"zero": 0, "half": (kh // 2, kw // 2), "same": "same", "valid": "valid"}[kind]


GEOMETRIES = [
    g for g in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS)
    if not (g[2] == "same" and g[1] != 1)  # "same" is only defined for stride 1, as in F.conv2d
]


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation", GEOMETRIES,
    ids=[f"k{param_id(k)}-s{param_id(s)}-p{p}-d{d}" for k, s, p, d in GEOMETRIES],
)
def test_parity_geometry_grid(kernel, stride, padding, dilation):
    """Every kernel/stride/padding/dilation combination, on the NHWC and NCHW fast paths (multiplier 1), and
    one variant cycling through multiplier 2, no bias, batch 1 and the non-contiguous layout."""
    pad = _padding(padding, kernel)
    i = GEOMETRIES.index((kernel, stride, padding, dilation))
    for layout in ("nchw", "channels_last"):
        check_depthwise_parity((3, 20, *SPATIAL), kernel, stride=stride, padding=pad, dilation=dilation,
                               layout=layout)
    variant = dict(multiplier=2, bias=i % 2 == 0, layout=LAYOUTS[i % 3])
    check_depthwise_parity((1 + 2 * (i % 2), 35 if i % 2 else 16, SPATIAL[1], SPATIAL[0]), kernel, stride=stride,
                           padding=pad, dilation=dilation, **variant)


CHANNEL_GRID = list(itertools.product(CHANNELS, MULTIPLIERS, (True, False), BATCHES, LAYOUTS))


@pytest.mark.parametrize(
    "channels,multiplier,bias,batch,layout", CHANNEL_GRID,
    ids=[f"c{c}-m{m}-{'bias' if b else 'nobias'}-n{n}-{layout}" for c, m, b, n, layout in CHANNEL_GRID],
)
def test_parity_channel_grid(channels, multiplier, bias, batch, layout):
    """Channel counts on and off the vector width (channel tails), multipliers, bias, batch and layouts,
    on a stride-1 and a stride-2 geometry."""
    shape = (batch, channels, 9, 11)
    check_depthwise_parity(shape, 3, stride=1, padding=1, multiplier=multiplier, bias=bias, layout=layout)
    check_depthwise_parity(shape, 5, stride=2, padding=2, multiplier=multiplier, bias=bias, layout=layout)


def _sampled_configs(count, seed=20240607):
    full = [
        cfg for cfg in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS, MULTIPLIERS, (True, False), BATCHES,
                                         LAYOUTS, CHANNELS, ((9, 13), (13, 9), (11, 11)))
        if not (cfg[2] == "same" and cfg[1] != 1)
        # the kernel must fit the unpadded input for padding 0 / "valid"
        and (cfg[2] in ("half", "same") or all(
            d_ * (k_ - 1) + 1 <= s_ for d_, k_, s_ in zip((cfg[3],) * 2, pair(cfg[0]), cfg[9])))
    ]
    return random.Random(seed).sample(full, count)


SAMPLED = _sampled_configs(120)


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,multiplier,bias,batch,layout,channels,spatial", SAMPLED,
    ids=[f"k{param_id(k)}-s{param_id(s)}-p{p}-d{d}-m{m}-{'b' if b else 'nb'}-n{n}-{layout}-c{c}-{h}x{w}"
         for k, s, p, d, m, b, n, layout, c, (h, w) in SAMPLED],
)
def test_parity_sampled(kernel, stride, padding, dilation, multiplier, bias, batch, layout, channels, spatial):
    """A fixed random sample of the full cartesian product of all the grid dimensions."""
    check_depthwise_parity((batch, channels, *spatial), kernel, stride=stride, padding=_padding(padding, kernel),
                           dilation=dilation, multiplier=multiplier, bias=bias, layout=layout)


# ---------------------------------------------------------------------------------------------------
# Gradients asked for in part, grad_output layouts, and the checker itself

@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_parity_unrequested_grads(layout):
    """Only some inputs requiring grad: the requested gradients are still right."""
    check_depthwise_requested_grads((2, 20, 9, 9), layout)


def test_parity_grad_output_layouts():
    """A grad_output whose layout differs from the input's is handled (the kernels normalise it)."""
    x = make_input((2, 20, 9, 11), "channels_last", requires_grad=True)
    w = torch.randn(20, 1, 3, 3, requires_grad=True)
    with fusedops.use_backend("native"):
        out = fusedops.depthwise_conv2d(x, w, padding=1)
    for go_layout in LAYOUTS:
        go = to_layout(torch.randn(out.shape), go_layout)
        grads = torch.autograd.grad(out, (x, w), go, retain_graph=True)
        ref = torch.autograd.grad(depthwise_reference(x, w, None, 1, 1, 1), (x, w), go)
        for a, e in zip(grads, ref):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_checker_rejects_small_errors():
    """The parity checker itself is tight: an error of 1e-4 relative to the result is caught."""
    x = torch.randn(2, 8, 9, 9)
    w = torch.randn(8, 1, 3, 3)
    go = torch.randn(2, 8, 9, 9)
    ref, _, mag, _ = reference_with_magnitudes(lambda *a: depthwise_reference(*a, 1, 1, 1), (x, w, None), go)
    assert_close_scaled(ref.float(), ref, mag, **tolerance(torch.float32))
    with pytest.raises(AssertionError, match="out of tolerance"):
        assert_close_scaled((ref * (1 + 1e-4)).float(), ref, mag, **tolerance(torch.float32))
    shifted = ref.clone()
    shifted[1, 3, 4, 5] += 1e-3 * mag[1, 3, 4, 5]
    with pytest.raises(AssertionError, match=r"worst at \(1, 3, 4, 5\)"):
        assert_close_scaled(shifted.float(), ref, mag, **tolerance(torch.float32))


# ---------------------------------------------------------------------------------------------------
# Reduced precision (bfloat16, float16) vs a float64 reference of the same values

@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=("bf16", "fp16"))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("kernel,stride,padding,multiplier", [
    (3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 0, 2), ((1, 3), (1, 2), (0, 1), 1)])
def test_reduced_precision(dtype, layout, kernel, stride, padding, multiplier):
    out = check_depthwise_parity((2, 35, 11, 13), kernel, stride=stride, padding=padding, multiplier=multiplier,
                                 layout=layout, dtype=dtype)
    assert out.dtype == dtype


# ---------------------------------------------------------------------------------------------------
# MobileNet-like shapes: register-blocked interiors, many channel vectors and channel tails

MOBILENET = [
    dict(shape=(2, 32, 56, 56), kernel=3, stride=1, padding=1, bias=False),
    dict(shape=(2, 144, 28, 28), kernel=3, stride=2, padding=1, bias=False),
    dict(shape=(2, 960, 7, 7), kernel=3, stride=1, padding=1, bias=True),
    dict(shape=(2, 240, 14, 14), kernel=5, stride=1, padding=2, bias=False),
    dict(shape=(2, 240, 14, 14), kernel=7, stride=1, padding=3, bias=True),
    dict(shape=(2, 72, 28, 28), kernel=5, stride=2, padding=2, bias=False),
]


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("case", MOBILENET,
                         ids=[f"c{c['shape'][1]}-{c['shape'][2]}-k{c['kernel']}-s{c['stride']}" for c in MOBILENET])
def test_mobilenet_shapes(case, layout):
    case = dict(case)
    shape = case.pop("shape")
    kernel = case.pop("kernel")
    check_depthwise_parity(shape, kernel, layout=layout, **case)
