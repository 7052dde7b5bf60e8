"""fusedops.depthwise_conv2d on CPU: native C++ kernels and the reference backend.

Parity is against ``F.conv2d(groups=C)`` computed in float64 from the same (float32-representable) values,
so the tolerances measure only the kernels' own rounding (see conftest.assert_close_scaled).
"""

import itertools
import random

import pytest
import torch
import torch.nn.functional as F

import fusedops
from fusedops import _backend, _extension

from conftest import (
    LAYOUTS,
    TRITON_INTERPRET,
    assert_close_grads,
    assert_close_scaled,
    make_input,
    reference_with_magnitudes,
    tolerance,
    to_layout,
)

pytestmark = pytest.mark.skipif(not _extension.has_ops(), reason="the fusedops._C extension is not built")

GRAD_NAMES = ("grad_input", "grad_weight", "grad_bias")


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def reference_conv(x, w, b, stride, padding, dilation):
    return F.conv2d(x, w, b, stride, padding, dilation, groups=x.shape[1])


def fused_conv(x, w, b, stride, padding, dilation):
    return fusedops.depthwise_conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)


def check_parity(shape, kernel, *, stride=1, padding=0, dilation=1, multiplier=1, bias=True, layout="nchw",
                 dtype=torch.float32, backend="native", backward=True):
    """Forward and all gradients of fusedops.depthwise_conv2d on `backend` vs float64 F.conv2d."""
    n, c, h, w_ = shape
    kh, kw = _pair(kernel)
    x = make_input(shape, layout, dtype=dtype, requires_grad=backward)
    weight = (torch.randn(c * multiplier, 1, kh, kw, dtype=torch.float64) / (kh * kw) ** 0.5).to(dtype)
    weight.requires_grad_(backward)
    b = torch.randn(c * multiplier, dtype=torch.float64).to(dtype).requires_grad_(backward) if bias else None
    with fusedops.use_backend(backend):
        out = fused_conv(x, weight, b, stride, padding, dilation)
    expected_fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert out.dtype == dtype
    go = torch.randn(out.shape, dtype=torch.float64).to(dtype)
    ref, ref_grads, mag, mag_grads = reference_with_magnitudes(
        lambda *a: reference_conv(*a, stride, padding, dilation), (x, weight, b), go)
    tol = tolerance(dtype)
    assert_close_scaled(out, ref, mag, **tol, name="output")
    assert out.is_contiguous(memory_format=expected_fmt), f"output strides {out.stride()} for {layout} input"
    if backward:
        grads = torch.autograd.grad(out, [t for t in (x, weight, b) if t is not None], go)
        if b is None:
            grads = (*grads, None)
        assert_close_grads(grads, ref_grads, mag_grads, **tol, names=GRAD_NAMES)
        assert grads[0].shape == x.shape and grads[1].shape == weight.shape
    return out


# ---------------------------------------------------------------------------------------------------
# 1. Parity grids

KERNELS = (1, 2, 3, 5, 7, (3, 5), (1, 3))
STRIDES = (1, 2, 3, (1, 2))
PADDINGS = ("zero", "half", "same", "valid")
DILATIONS = (1, 2)
MULTIPLIERS = (1, 2)
CHANNELS = (16, 20, 35, 71)
BATCHES = (1, 3)
SPATIAL = (13, 15)  # odd; >= the largest dilated kernel extent (7 with dilation 2 is 13)


def _padding(kind, kernel):
    kh, kw = _pair(kernel)
    return {"zero": 0, "half": (kh // 2, kw // 2), "same": "same", "valid": "valid"}[kind]


def _id(v):
    return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)


GEOMETRIES = [
    g for g in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS)
    if not (g[2] == "same" and g[1] != 1)  # "same" is only defined for stride 1, as in F.conv2d
]


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation", GEOMETRIES,
    ids=[f"k{_id(k)}-s{_id(s)}-p{p}-d{d}" for k, s, p, d in GEOMETRIES],
)
def test_parity_geometry_grid(kernel, stride, padding, dilation):
    """Every kernel/stride/padding/dilation combination, on the NHWC and NCHW fast paths (multiplier 1), and
    one variant cycling through multiplier 2, no bias, batch 1 and the non-contiguous layout."""
    pad = _padding(padding, kernel)
    i = GEOMETRIES.index((kernel, stride, padding, dilation))
    for layout in ("nchw", "channels_last"):
        check_parity((3, 20, *SPATIAL), kernel, stride=stride, padding=pad, dilation=dilation, layout=layout)
    variant = dict(multiplier=2, bias=i % 2 == 0, layout=LAYOUTS[i % 3])
    check_parity((1 + 2 * (i % 2), 35 if i % 2 else 16, SPATIAL[1], SPATIAL[0]), kernel, stride=stride, padding=pad,
                 dilation=dilation, **variant)


CHANNEL_GRID = list(itertools.product(CHANNELS, MULTIPLIERS, (True, False), BATCHES, LAYOUTS))


@pytest.mark.parametrize(
    "channels,multiplier,bias,batch,layout", CHANNEL_GRID,
    ids=[f"c{c}-m{m}-{'bias' if b else 'nobias'}-n{n}-{l}" for c, m, b, n, l in CHANNEL_GRID],
)
def test_parity_channel_grid(channels, multiplier, bias, batch, layout):
    """Channel counts on and off the vector width (channel tails), multipliers, bias, batch and layouts,
    on a stride-1 and a stride-2 geometry."""
    shape = (batch, channels, 9, 11)
    check_parity(shape, 3, stride=1, padding=1, multiplier=multiplier, bias=bias, layout=layout)
    check_parity(shape, 5, stride=2, padding=2, multiplier=multiplier, bias=bias, layout=layout)


def _sampled_configs(count, seed=20240607):
    full = [
        cfg for cfg in itertools.product(KERNELS, STRIDES, PADDINGS, DILATIONS, MULTIPLIERS, (True, False), BATCHES,
                                         LAYOUTS, CHANNELS, ((9, 13), (13, 9), (11, 11)))
        if not (cfg[2] == "same" and cfg[1] != 1)
        # the kernel must fit the unpadded input for padding 0 / "valid"
        and (cfg[2] in ("half", "same") or all(
            d_ * (k_ - 1) + 1 <= s_ for d_, k_, s_ in zip((cfg[3],) * 2, _pair(cfg[0]), cfg[9])))
    ]
    return random.Random(seed).sample(full, count)


SAMPLED = _sampled_configs(120)


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,multiplier,bias,batch,layout,channels,spatial", SAMPLED,
    ids=[f"k{_id(k)}-s{_id(s)}-p{p}-d{d}-m{m}-{'b' if b else 'nb'}-n{n}-{l}-c{c}-{h}x{w}"
         for k, s, p, d, m, b, n, l, c, (h, w) in SAMPLED],
)
def test_parity_sampled(kernel, stride, padding, dilation, multiplier, bias, batch, layout, channels, spatial):
    """A fixed random sample of the full cartesian product of all the grid dimensions."""
    check_parity((batch, channels, *spatial), kernel, stride=stride, padding=_padding(padding, kernel),
                 dilation=dilation, multiplier=multiplier, bias=bias, layout=layout)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (7, 2, 3), (3, 3, 0), (2, 1, 0)])
def test_parity_wide_rows(layout, kernel, stride, padding):
    """Rows wide enough for the NCHW kernel's 4-vector column blocks plus a partial vector, and for
    several NHWC register blocks per row."""
    check_parity((1, 3, 5, 157), kernel, stride=stride, padding=padding, layout=layout)
    check_parity((2, 5, 6, 70), kernel, stride=stride, padding=padding, multiplier=2, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_parity_tiny_maps(layout):
    """Maps smaller than the kernel (all border, no interior), 1x1 maps and single channels."""
    check_parity((2, 20, 2, 3), 5, padding=2, layout=layout)
    check_parity((2, 20, 1, 1), 3, padding=1, layout=layout)
    check_parity((2, 20, 1, 1), 1, layout=layout)
    check_parity((3, 1, 7, 6), 3, padding=1, layout=layout)
    check_parity((3, 1, 7, 6), 3, padding=1, multiplier=3, layout=layout)
    check_parity((1, 17, 4, 4), 3, stride=2, padding=3, dilation=3, layout=layout)  # padding > kernel reach


def test_parity_masked_plane_geometries():
    """NCHW stride-1 maps whose output keeps the input's width run as masked flat sweeps of the plane: output
    heights other than the input's, dilation, planes of exactly 16 pixels, smaller than one vector, and
    wider than 4-vector blocks."""
    check_parity((2, 3, 9, 11), 3, padding=(0, 1), layout="nchw")  # out_h = 7, out_w = 11
    check_parity((2, 3, 9, 11), (5, 3), padding=(3, 1), layout="nchw")  # out_h = 11 > in_h - 2
    check_parity((1, 4, 12, 13), 3, padding=2, dilation=2, layout="nchw")
    check_parity((1, 4, 4, 4), 3, padding=1, layout="nchw")
    check_parity((1, 4, 3, 3), 3, padding=1, bias=True, layout="nchw")
    check_parity((1, 2, 40, 80), 7, padding=3, multiplier=2, layout="nchw")


@pytest.mark.parametrize("width", [3, 5, 7, 14, 15, 16, 17, 31])
def test_parity_nchw_shifted_rows(width):
    """NCHW 3x3 stride-1 planes whose output keeps the input's width load each kernel row's centre tap once
    and shift it by a lane for the side taps: row ends at many lane positions (widths 3-31, around one and
    two vectors),
    planes of one vector (which keep the 9-load sweep) and of several, whole 4-vector blocks and the
    vectors after them, padding rows above and below (other output heights, row dilation), and the first
    and last vectors of each plane, whose loads must stay inside it; the stride-1 input gradient takes
    the same path."""
    for height, padding, dilation in ((width, 1, 1), (3, (0, 1), 1), (2, 1, 1), (9, (2, 1), (2, 1)),
                                      (11, (3, 1), (3, 1)), (6, (0, 1), (2, 1))):
        check_parity((2, 3, height, width), 3, padding=padding, dilation=dilation, layout="nchw")


@pytest.mark.parametrize("kernel,stride,padding", [(5, 1, 2), (7, 1, 3), (5, 2, 2), (7, 2, 0), (3, 2, 1), (3, 2, 0)])
def test_parity_nchw_tiles(kernel, stride, padding):
    """NCHW float 5x5/7x7 and 3x3 stride-2 convolutions run through channels-last tiles of 16 channels: full
    groups and a partial last group (whose tile lanes past the channels must not leak), maps taller than
    wide and the reverse, several images; the stride-1 input gradient takes the same path."""
    for shape in ((2, 20, 13, 17), (1, 35, 19, 14), (3, 16, 14, 14), (1, 5, 28, 15)):
        check_parity(shape, kernel, stride=stride, padding=padding, layout="nchw", bias=shape[1] != 16)


@pytest.mark.parametrize("kernel", [5, 7])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_parity_seven_wide_blocks(kernel, layout):
    """Rows 7 or 14 outputs wide of 5x5 and 7x7 kernels run as blocks of 7 outputs: whole-row border
    blocks (the kernel wider than the row's interior) and interior ones, stride 1 and 2, padded and
    unpadded, full and partial channel vectors, and a 28-wide row that keeps blocks of 8; NCHW through its
    channels-last tiles; the stride-1 input gradient takes the same rows."""
    p = kernel // 2
    for width, stride, padding in ((14, 1, p), (7, 1, p), (14, 2, p), (kernel + 6, 1, 0), (kernel + 13, 1, 0),
                                   (kernel + 12, 2, 0), (28, 1, (p, 0))):
        out_w = (width + 2 * _pair(padding)[1] - kernel) // stride + 1
        assert out_w in (7, 14, 28 - kernel + 1)
        for channels in (20, 32):
            check_parity((2, channels, 9, width), kernel, stride=stride, padding=padding, layout=layout,
                         bias=channels == 20)


@pytest.mark.parametrize("padding", [(1, 1), (0, 0), (2, 2), (0, 1), (1, 0), (2, 1)])
def test_parity_channels_last_row_pairs(padding):
    """Channels-last 3x3 stride-1 rows run in pairs where both rows' kernel rows lie inside the input,
    the pairs starting at the first such row (an odd or even row, by the top padding), the rows around
    them one at a time: every height from one pair to several, odd and even, full and partial channel
    vectors, widths across one register block or several; the stride-1 input gradient on its own takes
    the same rows."""
    for height in range(3 - 2 * min(padding[0], 1), 10):  # F.conv2d needs the kernel to fit the padded input
        check_parity((2, 20, height, 11), 3, padding=padding, layout="channels_last")
    check_parity((1, 48, 7, 21), 3, padding=padding, layout="channels_last", bias=False)
    check_requested_grads((2, 20, 9, 13), "channels_last", padding=padding[0] if padding[0] == padding[1] else 1,
                          wanted_sets=[(True, False, False)])


@pytest.mark.parametrize("kernel,stride,padding", [(3, 1, 1), (3, 2, 1), (5, 1, 2), (3, 1, 0)])
def test_parity_streaming_calls(kernel, stride, padding):
    """Channels-last calls that move more than the kernels' streaming thresholds (16 MB a forward, 8 MB a
    backward) prefetch ahead of their loads and stores, and the fused stride-1 backward also prefetches
    the input rows of its weight gradient: results unchanged, with a partial channel vector (72 channels)
    and odd widths."""
    shape = (2, 72, 124, 121) if stride == 1 else (3, 72, 140, 141)
    x_bytes = 4 * shape[0] * shape[1] * shape[2] * shape[3]
    assert x_bytes * (1 + 1 / stride**2) > 16 * 2**20  # the forward's input + output
    check_parity(shape, kernel, stride=stride, padding=padding, layout="channels_last")
    if kernel == 3 and padding == 1:
        # The unfused input-gradient and weight-gradient kernels, each on its own at the same size.
        check_requested_grads(shape, "channels_last", stride=stride,
                              wanted_sets=[(True, False, False), (False, True, True)])


@pytest.mark.parametrize("padding", (0, 1, 2))
def test_parity_3x3_stride2_input_gradient(padding):
    """Channels-last 3x3 stride-2 input gradients run a kernel of their own: rows and columns that no
    output reads (their gradient is zero), both column parities first, partial channel vectors."""
    for shape in ((2, 20, 6, 7), (1, 35, 9, 8), (1, 16, 3, 4)):
        # Garbage in freed memory, so an input-gradient row that is never written shows up.
        torch.full((4096,), float("nan")).add_(1)
        check_parity(shape, 3, stride=2, padding=padding, layout="channels_last")


def test_masked_plane_table_cache_eviction():
    """More stride-1 geometries than the per-thread table cache holds, then the first ones again."""
    sizes = [(h, w) for h in (5, 6, 7, 8, 9) for w in (6, 7, 8, 9)]
    for h, w in sizes + sizes[:3]:
        x = torch.randn(1, 2, h, w)
        weight = torch.randn(2, 1, 3, 3)
        torch.testing.assert_close(fusedops.depthwise_conv2d(x, weight, padding=1),
                                   reference_conv(x, weight, None, 1, 1, 1),
                                   rtol=1e-5, atol=1e-5)


def check_requested_grads(shape, layout, kernel=3, stride=1, padding=1, wanted_sets=None):
    """Only some of input, weight, bias requiring grad (every such subset, or `wanted_sets`): the
    requested gradients are right against float64 F.conv2d, the others stay None."""
    c = shape[1]
    x = make_input(shape, layout)
    w = torch.randn(c, 1, kernel, kernel)
    b = torch.randn(c)
    with torch.no_grad():
        out_shape = reference_conv(x, w, b, stride, padding, 1).shape
    go = torch.randn(out_shape)
    _, ref_grads, _, mags = reference_with_magnitudes(lambda *a: reference_conv(*a, stride, padding, 1), (x, w, b), go)
    tol = tolerance(torch.float32)
    for wanted in wanted_sets or [r for r in itertools.product((False, True), repeat=3) if any(r)]:
        leaves = [t.detach().clone().requires_grad_(r) for t, r in zip((x, w, b), wanted)]
        with fusedops.use_backend("native"):
            out = fusedops.depthwise_conv2d(*leaves, stride=stride, padding=padding)
        out.backward(go)
        for leaf, r, ref, mag, name in zip(leaves, wanted, ref_grads, mags, GRAD_NAMES):
            if r:
                assert_close_scaled(leaf.grad, ref, mag, **tol, name=name)
            else:
                assert leaf.grad is None


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_parity_unrequested_grads(layout):
    """Only some inputs requiring grad: the requested gradients are still right."""
    check_requested_grads((2, 20, 9, 9), layout)


def test_parity_grad_output_layouts():
    """A grad_output whose layout differs from the input's is handled (the kernels normalise it)."""
    x = make_input((2, 20, 9, 11), "channels_last", requires_grad=True)
    w = torch.randn(20, 1, 3, 3, requires_grad=True)
    with fusedops.use_backend("native"):
        out = fusedops.depthwise_conv2d(x, w, padding=1)
    for go_layout in LAYOUTS:
        go = to_layout(torch.randn(out.shape), go_layout)
        grads = torch.autograd.grad(out, (x, w), go, retain_graph=True)
        ref = torch.autograd.grad(reference_conv(x, w, None, 1, 1, 1), (x, w), go)
        for a, e in zip(grads, ref):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_checker_rejects_small_errors():
    """The parity checker itself is tight: an error of 1e-4 relative to the result is caught."""
    x = torch.randn(2, 8, 9, 9)
    w = torch.randn(8, 1, 3, 3)
    go = torch.randn(2, 8, 9, 9)
    ref, _, mag, _ = reference_with_magnitudes(lambda *a: reference_conv(*a, 1, 1, 1), (x, w, None), go)
    assert_close_scaled(ref.float(), ref, mag, **tolerance(torch.float32))
    with pytest.raises(AssertionError, match="out of tolerance"):
        assert_close_scaled((ref * (1 + 1e-4)).float(), ref, mag, **tolerance(torch.float32))
    shifted = ref.clone()
    shifted[1, 3, 4, 5] += 1e-3 * mag[1, 3, 4, 5]
    with pytest.raises(AssertionError, match=r"worst at \(1, 3, 4, 5\)"):
        assert_close_scaled(shifted.float(), ref, mag, **tolerance(torch.float32))


# ---------------------------------------------------------------------------------------------------
# 2. Memory format of the output and of grad_input

FORMAT_CASES = [
    dict(kernel=3, stride=1, padding=1),                  # NHWC: grad_input as a forward convolution
    dict(kernel=3, stride=2, padding=1),                  # NHWC: grad_input by gathering
    dict(kernel=3, stride=1, padding=1, multiplier=2),    # generic (channels_last) / plane (NCHW) paths
    dict(kernel=2, stride=1, padding="same"),             # "same" with an even kernel pads the input first
    dict(kernel=(3, 5), stride=1, padding="same", dilation=2),
]


@pytest.mark.parametrize("case", FORMAT_CASES, ids=lambda c: "-".join(f"{k}{_id(v)}" for k, v in c.items()))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", ("native", "reference"))
def test_memory_format_follows_input(case, layout, backend):
    case = dict(case)
    multiplier = case.pop("multiplier", 1)
    kernel = case.pop("kernel")
    kh, kw = _pair(kernel)
    x = make_input((2, 20, 9, 10), layout, requires_grad=True)
    w = torch.randn(20 * multiplier, 1, kh, kw, requires_grad=True)
    with fusedops.use_backend(backend):
        out = fusedops.depthwise_conv2d(x, w, **case)
    grad_input, grad_weight = torch.autograd.grad(out, (x, w), torch.randn(out.shape))
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last), out.stride()
        assert grad_input.is_contiguous(memory_format=torch.channels_last), grad_input.stride()
    else:
        assert out.is_contiguous(), out.stride()
        assert grad_input.is_contiguous(), grad_input.stride()
    assert grad_input.shape == x.shape and grad_weight.shape == w.shape


# ---------------------------------------------------------------------------------------------------
# 3. float64 gradcheck; double backward is refused with a clear error

GRADCHECK_CASES = [
    dict(shape=(2, 3, 6, 7), kernel=3, stride=1, padding=1, dilation=1, multiplier=1, bias=True),
    dict(shape=(2, 3, 7, 6), kernel=3, stride=2, padding=1, dilation=1, multiplier=1, bias=True),
    dict(shape=(1, 4, 7, 7), kernel=3, stride=1, padding=2, dilation=2, multiplier=1, bias=False),
    dict(shape=(2, 2, 6, 5), kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=1, multiplier=2, bias=True),
    dict(shape=(1, 3, 8, 8), kernel=5, stride=3, padding=2, dilation=(1, 2), multiplier=1, bias=True),
]


def _gradcheck_inputs(case, layout):
    c = dict(case)
    kh, kw = _pair(c["kernel"])
    x = make_input(c["shape"], layout, dtype=torch.float64, requires_grad=True)
    channels = c["shape"][1]
    w = torch.randn(channels * c["multiplier"], 1, kh, kw, dtype=torch.float64, requires_grad=True)
    b = torch.randn(channels * c["multiplier"], dtype=torch.float64, requires_grad=True) if c["bias"] else None
    fn = lambda x, w, b: fusedops.depthwise_conv2d(x, w, b, c["stride"], c["padding"], c["dilation"])  # noqa: E731
    return fn, (x, w, b)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[f"case{i}" for i in range(len(GRADCHECK_CASES))])
def test_gradcheck_float64(case, layout):
    fn, inputs = _gradcheck_inputs(case, layout)
    with fusedops.use_backend("native"):
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_double_backward_raises(layout):
    fn, inputs = _gradcheck_inputs(GRADCHECK_CASES[1], layout)
    with fusedops.use_backend("native"):
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.gradgradcheck(fn, inputs)
        x, w, b = inputs
        out = fn(x, w, b)
        (gx,) = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward.*reference"):
            gx.sum().backward()


def test_double_backward_on_reference_backend():
    """The error message points at the reference backend, which does support higher-order gradients."""
    fn, inputs = _gradcheck_inputs(GRADCHECK_CASES[3], "nchw")
    with fusedops.use_backend("reference"):
        assert torch.autograd.gradgradcheck(fn, inputs)


# ---------------------------------------------------------------------------------------------------
# 4. Reduced precision (bfloat16, float16) vs a float64 reference of the same values

@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=("bf16", "fp16"))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("kernel,stride,padding,multiplier", [
    (3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 0, 2), ((1, 3), (1, 2), (0, 1), 1)])
def test_reduced_precision(dtype, layout, kernel, stride, padding, multiplier):
    out = check_parity((2, 35, 11, 13), kernel, stride=stride, padding=padding, multiplier=multiplier,
                       layout=layout, dtype=dtype)
    assert out.dtype == dtype


# ---------------------------------------------------------------------------------------------------
# 5. torch.library.opcheck

def _opcheck_samples():
    samples = []
    for layout, requires_grad, with_bias, stride, padding, dilation, mult in [
        ("nchw", False, False, [1, 1], [1, 1], [1, 1], 1),
        ("nchw", True, True, [2, 2], [1, 1], [1, 1], 1),
        ("channels_last", True, False, [1, 1], [2, 2], [2, 2], 1),
        ("channels_last", False, True, [2, 1], [0, 1], [1, 1], 2),
        ("noncontig", True, True, [1, 2], [1, 0], [1, 1], 2),
    ]:
        x = make_input((2, 5, 8, 9), layout, requires_grad=requires_grad)
        w = torch.randn(5 * mult, 1, 3, 3, requires_grad=requires_grad)
        b = torch.randn(5 * mult, requires_grad=requires_grad) if with_bias else None
        samples.append((x, w, b, stride, padding, dilation))
    return samples


@pytest.mark.parametrize("index", range(5))
def test_opcheck_forward(index):
    args = _opcheck_samples()[index]
    torch.library.opcheck(torch.ops.fusedops.depthwise_conv2d.default, args)


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("mask", ([True, True, True], [True, False, False], [False, True, True], [False, False, True]))
def test_opcheck_backward(layout, mask):
    x = make_input((2, 5, 8, 9), layout)
    w = torch.randn(10, 1, 3, 3)
    go = to_layout(torch.randn(2, 10, 4, 5), layout)
    torch.library.opcheck(torch.ops.fusedops._depthwise_conv2d_backward.default,
                          (go, x, w, [2, 2], [1, 1], [1, 1], mask))


def test_backward_op_returns_empty_for_unrequested():
    x = torch.randn(2, 5, 8, 9)
    w = torch.randn(5, 1, 3, 3)
    go = torch.randn(2, 5, 8, 9)
    gi, gw, gb = torch.ops.fusedops._depthwise_conv2d_backward(go, x, w, [1, 1], [1, 1], [1, 1], [False, True, False])
    assert gi.numel() == 0 and gb.numel() == 0
    ref = torch.autograd.grad(reference_conv(x, w.requires_grad_(), None, 1, 1, 1), w, go)[0]
    torch.testing.assert_close(gw, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# 6. torch.compile and torch.export

class _OpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the names of the ATen/custom ops that reach the dispatcher."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _compile_inputs(layout, batch=2, size=(10, 11)):
    x = make_input((batch, 24, *size), layout, requires_grad=True)
    w = torch.randn(24, 1, 3, 3, requires_grad=True)
    b = torch.randn(24, requires_grad=True)
    return x, w, b


def _grads_of(fn, x, w, b, go_seed=1):
    out = fn(x, w, b)
    go = torch.randn(out.shape, generator=torch.Generator().manual_seed(go_seed))
    return (out, *torch.autograd.grad(out, (x, w, b), go))


def _fn(x, w, b):
    # Only fusedops ops (no pointwise work for Inductor to generate C++ for), so compiling stays cheap.
    y = fusedops.depthwise_conv2d(x, w, b, stride=(2, 1), padding=1)
    return fusedops.depthwise_conv2d(y, w[:, :, :2, :], None, padding="same", dilation=2)


@pytest.mark.parametrize("dynamic", (False, True), ids=("static", "dynamic"))
def test_compile_function_matches_eager(dynamic):
    torch._dynamo.reset()
    compiled = torch.compile(_fn, fullgraph=True, dynamic=dynamic)
    with fusedops.use_backend("native"):
        for layout, batch, size in (("nchw", 2, (10, 11)), ("channels_last", 3, (9, 12))):
            x, w, b = _compile_inputs(layout, batch, size)
            for a, e in zip(_grads_of(compiled, x, w, b), _grads_of(_fn, x, w, b)):
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_compile_graph_contains_the_op():
    """The compiled graph calls the fused op (no graph break, no silent decomposition)."""
    from torch._dynamo.testing import EagerAndRecordGraphs

    torch._dynamo.reset()
    backend = EagerAndRecordGraphs()
    compiled = torch.compile(_fn, backend=backend, fullgraph=True)
    x, w, b = _compile_inputs("nchw")
    with fusedops.use_backend("native"):
        torch.testing.assert_close(compiled(x, w, b), _fn(x, w, b))
    assert len(backend.graphs) == 1
    assert "fusedops.depthwise_conv2d" in backend.graphs[0].code


@pytest.mark.parametrize("dynamic", (False, True), ids=("static", "dynamic"))
def test_compile_reports_argument_errors(dynamic):
    """Inside torch.compile the argument checks still run (in the fake kernel), with the same messages."""
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w, b: fusedops.depthwise_conv2d(x, w, b, padding=1), fullgraph=True,
                             dynamic=dynamic, backend="eager")
    x = torch.randn(2, 4, 6, 6)
    # With dynamic shapes the sizes in the messages are symbols.
    with pytest.raises(Exception, match="output channels, which is not a positive multiple of the input's"):
        compiled(x, torch.randn(6, 1, 3, 3), None)
    with pytest.raises(Exception, match=r"bias must have shape \((8|s\d+),\)"):
        compiled(x, torch.randn(8, 1, 3, 3), torch.randn(7))
    with pytest.raises(Exception, match="weight dtype torch.float64 does not match input dtype torch.float32"):
        compiled(x, torch.randn(4, 1, 3, 3, dtype=torch.float64), None)
    with pytest.raises(Exception, match="smaller than the dilated kernel"):
        compiled(x, torch.randn(4, 1, 9, 9), None)


def test_compile_module_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        fusedops.nn.DepthwiseConv2d(12, 24, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        fusedops.nn.DepthwiseConv2d(24, 24, 5, padding="same", bias=False),
    )
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    with fusedops.use_backend("native"):
        for layout, batch in (("nchw", 2), ("channels_last", 3)):
            x = make_input((batch, 12, 11, 9), layout, requires_grad=True)
            go = torch.randn(batch, 24, 6, 5)
            out_c = compiled(x)
            grads_c = torch.autograd.grad(out_c, (x, *model.parameters()), go)
            out_e = model(x)
            grads_e = torch.autograd.grad(out_e, (x, *model.parameters()), go)
            torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
            for a, e in zip(grads_c, grads_e):
                torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_export_dynamic_batch():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = fusedops.nn.DepthwiseConv2d(8, 16, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(16)

        def forward(self, x):
            return torch.relu(self.bn(self.dw(x)))

    model = Block().eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    with fusedops.use_backend("native"):
        program = torch.export.export(model, (torch.randn(3, 8, 10, 10),), dynamic_shapes={"x": {0: batch}})
    assert "fusedops.depthwise_conv2d" in str(program.graph)
    exported = program.module()
    for n in (1, 5):
        x = torch.randn(n, 8, 10, 10)
        with fusedops.use_backend("native"):
            torch.testing.assert_close(exported(x), model(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception):  # the spatial size was not marked dynamic
        exported(torch.randn(2, 8, 12, 10))


# ---------------------------------------------------------------------------------------------------
# 7. Backends and build info

@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("multiplier", (1, 2))
def test_reference_backend_matches_native(layout, multiplier):
    x = make_input((2, 20, 11, 9), layout, requires_grad=True)
    w = torch.randn(20 * multiplier, 1, 3, 3, requires_grad=True)
    b = torch.randn(20 * multiplier, requires_grad=True)
    results = {}
    for backend in ("native", "reference"):
        with fusedops.use_backend(backend):
            results[backend] = _grads_of(lambda x, w, b: fusedops.depthwise_conv2d(x, w, b, 2, 1), x, w, b)
    for a, e in zip(results["native"], results["reference"]):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_backend_dispatch(monkeypatch):
    """'auto' and 'native' run the C++ op on CPU; 'reference' runs the pure-PyTorch implementation."""
    from fusedops.ops import _reference

    assert _backend.resolve(torch.device("cpu"), "depthwise_conv2d") == "native"
    calls = []
    original = _reference.depthwise_conv2d
    monkeypatch.setattr(_reference, "depthwise_conv2d", lambda *a: calls.append(1) or original(*a))
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    for backend, expect_native in (("auto", True), ("native", True), ("reference", False)):
        calls.clear()
        with fusedops.use_backend(backend), _OpRecorder() as rec:
            out = fusedops.depthwise_conv2d(x, w, padding=1)
        ran_native = "fusedops.depthwise_conv2d.default" in rec.ops
        assert ran_native == expect_native, (backend, rec.ops)
        assert bool(calls) != expect_native, backend
        torch.testing.assert_close(out, reference_conv(x, w, None, 1, 1, 1), rtol=1e-5, atol=1e-5)


def test_use_backend_validates_and_restores():
    before = fusedops.get_backend()
    with pytest.raises(ValueError, match="backend must be one of"):
        with fusedops.use_backend("cuda"):
            pass
    with pytest.raises(ValueError, match="backend must be one of"):
        fusedops.set_backend("fast")
    assert fusedops.get_backend() == before
    with fusedops.use_backend("reference"):
        assert fusedops.get_backend() == "reference"
        with pytest.raises(KeyError):
            with fusedops.use_backend("native"):
                assert fusedops.get_backend() == "native"
                raise KeyError("inner")
        assert fusedops.get_backend() == "reference"
    assert fusedops.get_backend() == before
    fusedops.set_backend("reference")
    try:
        assert fusedops.get_backend() == "reference"
    finally:
        fusedops.set_backend(before)


@pytest.mark.skipif(TRITON_INTERPRET, reason="TRITON_INTERPRET=1 makes the Triton backend usable on CPU")
def test_triton_backend_on_cpu_without_interpreter():
    x, w = torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3)
    with fusedops.use_backend("triton"):
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1|Triton is not installed"):
            fusedops.depthwise_conv2d(x, w)


def test_build_info():
    info = fusedops.build_info()
    for key in ("version", "torch", "cpu", "cuda", "cuda_arch_list", "triton", "cpu_capability"):
        assert key in info, key
    assert info["version"] == fusedops.__version__
    assert info["torch"] == torch.__version__
    assert info["cpu"] is True
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cuda_arch_list"], list)
    assert (info["cuda_arch_list"] != []) == info["cuda"]
    assert isinstance(info["triton"], bool)
    assert info["cpu_capability"] in ("avx512", "avx2", "default")


# ---------------------------------------------------------------------------------------------------
# 8. Bad arguments: clear errors naming the argument, from the wrapper and from the C++ op

def _bad_cases():
    x = torch.randn(2, 4, 6, 6)
    w = torch.randn(4, 1, 3, 3)
    return [
        # (id, args, kwargs, exception, pattern)
        ("input-rank3", (x[0], w), {}, RuntimeError, r"input must be a 4-D"),
        ("input-rank5", (x[None], w), {}, RuntimeError, r"input must be a 4-D"),
        ("weight-rank3", (x, w[:, 0]), {}, RuntimeError, r"weight must be a 4-D"),
        ("weight-dim1", (x, torch.randn(8, 2, 3, 3)), {}, RuntimeError, r"weight must have shape \(C\*multiplier, 1"),
        ("channels", (x, torch.randn(6, 1, 3, 3)), {}, RuntimeError,
         r"weight has 6 output channels, which is not a positive multiple of the input's 4 channels"),
        ("bias-shape", (x, w, torch.randn(5)), {}, RuntimeError, r"bias must have shape \(4,\)"),
        ("bias-rank", (x, w, torch.randn(4, 1)), {}, RuntimeError, r"bias must be a 1-D"),
        ("stride-0", (x, w), dict(stride=0), RuntimeError, r"stride must be positive"),
        ("stride-neg", (x, w), dict(stride=(1, -1)), RuntimeError, r"stride must be positive"),
        ("padding-neg", (x, w), dict(padding=(-1, 0)), RuntimeError, r"padding must be non-negative"),
        ("dilation-0", (x, w), dict(dilation=(1, 0)), RuntimeError, r"dilation must be positive"),
        ("padding-str", (x, w), dict(padding="full"), ValueError, r"padding must be .*'full'"),
        ("same-stride2", (x, w), dict(padding="same", stride=2), ValueError, r"padding='same'.*stride"),
        ("stride-len3", (x, w), dict(stride=(1, 1, 1)), TypeError, r"stride must be an int or a pair"),
        ("dilation-float", (x, w), dict(dilation=1.5), TypeError, r"dilation must be an int or a pair"),
        ("padding-bool", (x, w), dict(padding=True), TypeError, r"padding must be an int or a pair"),
        ("weight-dtype", (x, w.double()), {}, RuntimeError, r"weight dtype torch.float64 does not match input"),
        ("bias-dtype", (x, w, torch.randn(4, dtype=torch.float16)), {}, RuntimeError, r"bias dtype torch.float16"),
        ("input-int", (x.long(), w.long()), {}, RuntimeError, r"input must be a floating-point tensor"),
        ("kernel-too-big", (x, torch.randn(4, 1, 7, 3)), {}, RuntimeError,
         r"padded input height \(6\) is smaller than the dilated kernel height \(7\)"),
        ("dilated-too-big", (x, w), dict(dilation=(1, 4), padding=(0, 1)), RuntimeError,
         r"padded input width \(8\) is smaller than the dilated kernel width \(9\)"),
        ("weight-meta", (x, w.to("meta")), {}, RuntimeError, r"weight is on meta but input is on cpu"),
        ("bias-meta", (x, w, torch.randn(4, device="meta")), {}, RuntimeError, r"bias is on meta but input is on cpu"),
        ("input-meta", (x.to("meta"), w), {}, RuntimeError, r"weight is on cpu but input is on meta"),
        ("not-a-tensor", (x.numpy(), w), {}, TypeError, r"input must be a torch.Tensor"),
        ("zero-channels", (torch.randn(2, 0, 6, 6), torch.randn(0, 1, 3, 3)), {}, RuntimeError,
         r"input must have at least one channel"),
    ]


BAD_CASES = _bad_cases()


@pytest.mark.parametrize("backend", ("native", "reference", "auto"))
@pytest.mark.parametrize("index", range(len(BAD_CASES)), ids=[c[0] for c in BAD_CASES])
def test_wrapper_rejects_bad_arguments(index, backend):
    _, args, kwargs, exc, pattern = _bad_cases()[index]
    with fusedops.use_backend(backend):
        with pytest.raises(exc, match=pattern):
            fusedops.depthwise_conv2d(*args, **kwargs)


def _op_bad_cases():
    x = torch.randn(2, 4, 6, 6)
    w = torch.randn(4, 1, 3, 3)
    one, zero = [1, 1], [0, 0]
    return [
        ("input-rank3", (x[0], w, None, one, zero, one), r"input must be a 4-D \(N, C, H, W\) tensor, got 3-D"),
        ("weight-rank3", (x, w[:, 0], None, one, zero, one), r"weight must be a 4-D .* got 3-D"),
        ("weight-dim1", (x, torch.randn(8, 2, 3, 3), None, one, zero, one), r"weight must have shape"),
        ("channels", (x, torch.randn(6, 1, 3, 3), None, one, zero, one),
         r"weight has 6 output channels, which is not a positive multiple of the input's 4 channels"),
        ("bias-shape", (x, w, torch.randn(5), one, zero, one), r"bias must have shape \(4,\)"),
        ("bias-rank", (x, w, torch.randn(4, 1), one, zero, one), r"bias must have shape \(4,\)"),
        ("stride-0", (x, w, None, [1, 0], zero, one), r"stride must be positive"),
        ("padding-neg", (x, w, None, one, [0, -2], one), r"padding must be non-negative"),
        ("dilation-0", (x, w, None, one, zero, [0, 1]), r"dilation must be positive"),
        ("stride-len3", (x, w, None, [1, 1, 1], zero, one), r"stride"),
        ("weight-dtype", (x, w.double(), None, one, zero, one), r"weight dtype torch.float64 does not match input dtype torch.float32"),
        ("bias-dtype", (x, w, torch.randn(4).half(), one, zero, one), r"bias dtype torch.float16 does not match input"),
        ("input-int", (x.int(), w.int(), None, one, zero, one), r"input must be a floating-point tensor"),
        ("kernel-too-big", (x, torch.randn(4, 1, 3, 9), None, one, zero, one),
         r"padded input width \(6\) is smaller than the dilated kernel width \(9\)"),
        ("weight-meta", (x, w.to("meta"), None, one, zero, one), r"weight is on meta but input is on cpu"),
        ("bias-meta", (x, w, torch.randn(4, device="meta"), one, zero, one), r"bias is on meta but input is on cpu"),
    ]


OP_BAD_CASES = _op_bad_cases()


@pytest.mark.parametrize("index", range(len(OP_BAD_CASES)), ids=[c[0] for c in OP_BAD_CASES])
def test_op_rejects_bad_arguments(index):
    """The C++ op checks its arguments itself (TORCH_CHECK), for callers that bypass the wrapper."""
    _, args, pattern = _op_bad_cases()[index]
    with pytest.raises(RuntimeError, match=pattern):
        torch.ops.fusedops.depthwise_conv2d(*args)
    x, w = args[0], args[1]
    if x.dim() == 4 and w.dim() == 4 and x.is_floating_point() and x.device == w.device and x.dtype == w.dtype \
            and args[2] is None:
        # the same geometry checks guard the backward op
        go = torch.randn(2, 4, 4, 4)
        with pytest.raises(RuntimeError, match=pattern):
            torch.ops.fusedops._depthwise_conv2d_backward(go, x, w, *args[3:], [True, True, False])


def test_backward_rejects_bad_grad_output():
    x = make_input((2, 4, 6, 6), "nchw", requires_grad=True)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    backward = torch.ops.fusedops._depthwise_conv2d_backward
    args = (x.detach(), w.detach(), [1, 1], [0, 0], [1, 1], [True, True, True])
    with pytest.raises(RuntimeError, match=r"grad_output has shape \[2, 4, 6, 6\] but the convolution's output has "
                                           r"shape \(2, 4, 4, 4\)"):
        backward(torch.randn(2, 4, 6, 6), *args)
    with pytest.raises(RuntimeError, match=r"grad_output has shape"):
        backward(torch.randn(2, 4, 4), *args)
    with pytest.raises(RuntimeError, match=r"grad_output dtype torch.float64 does not match input dtype torch.float32"):
        backward(torch.randn(2, 4, 4, 4, dtype=torch.float64), *args)
    with pytest.raises(RuntimeError, match=r"grad_output is on meta but input is on cpu"):
        backward(torch.randn(2, 4, 4, 4, device="meta"), *args)
    # on meta tensors the fake kernel checks the shape too
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(RuntimeError, match=r"grad_output has shape \(2, 4, 6, 6\), not the convolution's output"):
        backward(torch.randn(2, 4, 6, 6, device="meta"), *meta)
    # through autograd, a wrong-shaped gradient is refused before reaching the kernel
    with fusedops.use_backend("native"):
        out = fusedops.depthwise_conv2d(x, w)
    with pytest.raises(RuntimeError, match="shape"):
        out.backward(torch.randn(2, 4, 6, 6))


@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("multiplier", (1, 2))
@pytest.mark.parametrize("backend", ("native", "reference"))
def test_empty_batch(layout, multiplier, backend):
    x = make_input((0, 6, 7, 8), layout, requires_grad=True)
    w = torch.randn(6 * multiplier, 1, 3, 3, requires_grad=True)
    b = torch.randn(6 * multiplier, requires_grad=True)
    with fusedops.use_backend(backend):
        out = fusedops.depthwise_conv2d(x, w, b, stride=2, padding=1)
    assert out.shape == (0, 6 * multiplier, 4, 4)
    gx, gw, gb = torch.autograd.grad(out, (x, w, b), torch.randn(out.shape))
    assert gx.shape == x.shape
    assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


@pytest.mark.parametrize("backend", ("auto", "native"))
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
def test_meta_tensors(backend, layout):
    """On meta tensors the fake kernel gives the shapes and memory formats the CPU kernels produce."""
    x_cpu = make_input((3, 8, 11, 9), layout, requires_grad=True)
    w_cpu = torch.randn(16, 1, 3, 5, requires_grad=True)
    x = torch.empty_like(x_cpu, device="meta").requires_grad_()
    w = torch.empty_like(w_cpu, device="meta").requires_grad_()
    args = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    with fusedops.use_backend(backend):
        out = fusedops.depthwise_conv2d(x, w, None, **args)
        out_cpu = fusedops.depthwise_conv2d(x_cpu, w_cpu, None, **args)
    assert out.device.type == "meta"
    assert out.shape == out_cpu.shape and out.stride() == out_cpu.stride()
    gx, gw = torch.autograd.grad(out, (x, w), torch.empty_like(out))
    gx_cpu, gw_cpu = torch.autograd.grad(out_cpu, (x_cpu, w_cpu), torch.randn_like(out_cpu))
    assert gx.shape == gx_cpu.shape and gx.stride() == gx_cpu.stride()
    assert gw.shape == gw_cpu.shape


# ---------------------------------------------------------------------------------------------------
# 9. MobileNet-like shapes: register-blocked interiors, many channel vectors and channel tails

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
    check_parity(shape, kernel, layout=layout, **case)


# ---------------------------------------------------------------------------------------------------
# 10. fusedops.nn.DepthwiseConv2d

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
    for a, e in zip(_module_outputs(dw, x, go), _module_outputs(conv, x, go)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)
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
    with fusedops.use_backend("native"), _OpRecorder() as rec:
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


# ---------------------------------------------------------------------------------------------------
# 11. Without the compiled extension; FUSEDOPS_BACKEND

_NO_EXTENSION_SCRIPT = r"""
import sys, warnings

class BlockExtension:
    def find_spec(self, name, path=None, target=None):
        if name == "fusedops._C":
            raise ImportError("fusedops._C blocked by the test")
        return None

sys.meta_path.insert(0, BlockExtension())
import torch
import torch.nn.functional as F
import fusedops

info = fusedops.build_info()
assert info["cpu"] is False and info["cuda"] is False, info
assert "blocked by the test" in info["load_error"], info
torch.manual_seed(0)
x, w, b = torch.randn(2, 4, 7, 7), torch.randn(8, 1, 3, 3), torch.randn(8)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y1 = fusedops.depthwise_conv2d(x, w, b, padding=1)
    y2 = fusedops.depthwise_conv2d(x, w, b, stride=2)
    m = fusedops.nn.DepthwiseConv2d(4, 8, 3, padding=1)
    m(x).sum().backward()
assert len(caught) == 1, [str(c.message) for c in caught]
message = str(caught[0].message)
assert "fusedops._C" in message and "reference" in message, message
assert torch.equal(y1, F.conv2d(x, w, b, padding=1, groups=4))
assert torch.equal(y2, F.conv2d(x, w, b, stride=2, groups=4))
assert m.weight.grad is not None
try:
    with fusedops.use_backend("native"):
        fusedops.depthwise_conv2d(x, w, b)
except RuntimeError as e:
    assert "native" in str(e) and "fusedops._C" in str(e) and "blocked by the test" in str(e), str(e)
else:
    raise AssertionError("use_backend('native') without the extension did not raise")
print("NO-EXTENSION-OK")
"""


def _run_python(code, env_update=None):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("FUSEDOPS_BACKEND", "TRITON_INTERPRET")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(fusedops.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_update or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_without_extension():
    result = _run_python(_NO_EXTENSION_SCRIPT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "NO-EXTENSION-OK" in result.stdout


def test_backend_environment_variable():
    code = "import fusedops, torch; print(fusedops.get_backend())"
    result = _run_python(code, {"FUSEDOPS_BACKEND": " Reference "})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"
    result = _run_python(code, {"FUSEDOPS_BACKEND": "fastest"})
    assert result.returncode != 0
    assert "backend must be one of" in result.stderr and "'fastest'" in result.stderr
