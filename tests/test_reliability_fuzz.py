"""Property-based fuzzing of every public op and nn module against the PyTorch composition it replaces.

Random shapes (batch 0, one channel, 1x1 maps, maps smaller than the kernel, odd sizes), strides, paddings,
dilations, multipliers, groups and activations; every layout (NCHW, channels_last, permuted slices, storage
offsets, expanded zero-stride views) of every input; every dtype; requires_grad on any subset of the inputs.
Forward and every gradient are compared with the float64 PyTorch result within the dtype's tolerance.
Where PyTorch's op raises, ours must raise a Python exception naming the argument.

Profiles (tests/fuzz/profiles.py): the default ``ci`` one runs a fixed set of examples per op;
``make fuzz`` runs the long one (FUSEDOPS_FUZZ_PROFILE=long, 2,000 random examples per op).
"""

import copy

import torch
import torch.nn.functional as F
from hypothesis import given, note, strategies as st
from torch import nn

import fusedops
from fuzz.helpers import (ACTIVATIONS, DTYPES, LAYOUTS, activation, as_reference, assert_close_scaled,
                          depthwise_reference, dwpw_reference, grads, laid_out, names_an_argument,
                          raises_naming_an_argument, vector)
from fuzz.profiles import FUZZ

# Sizes: mostly small (fast, and the edge cases live there), sometimes zero or larger.
sizes = st.integers(1, 9) | st.sampled_from([0, 1, 1, 13, 17])
batches = st.sampled_from([0, 1, 1, 2, 3])
pairs = st.tuples


def _values(shape, seed):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@st.composite
def conv_case(draw, pointwise=False):
    """Arguments of a depthwise (or, with `pointwise`, a fused depthwise-separable) convolution: mostly valid,
    sometimes not (PyTorch decides which)."""
    n, c, m = draw(batches), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    h, w = draw(sizes), draw(sizes)
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = draw(pairs(st.integers(1, 3), st.integers(1, 3)) | st.sampled_from([(0, 1), (1, -1)]))
    dilation = draw(pairs(st.integers(1, 3), st.integers(1, 3)) | st.sampled_from([(0, 1), (2, 0)]))
    padding = draw(pairs(st.integers(0, 4), st.integers(0, 4)) | st.sampled_from([(-1, 0), (0, -2)]))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    case = dict(
        n=n, c=c, m=m, h=h, w=w, kh=kh, kw=kw, stride=stride, padding=padding, dilation=dilation, dtype=dtype,
        seed=seed, layout=draw(st.sampled_from(LAYOUTS)), grad_layout=draw(st.sampled_from(LAYOUTS)),
        weight_layout=draw(st.sampled_from(("nchw", "noncontig", "offset"))), strided_bias=draw(st.booleans()),
        bias=draw(st.booleans()), requires_grad=draw(st.lists(st.booleans(), min_size=5, max_size=5)),
    )
    if pointwise:
        case.update(cout=draw(st.integers(1, 7)), pw_bias=draw(st.booleans()),
                    mid=draw(st.sampled_from(ACTIVATIONS)), out=draw(st.sampled_from(ACTIVATIONS)))
    note(repr(case))
    return case


def _tensors(case):
    """The case's input, weights and biases in its dtype and layouts; requires_grad as drawn."""
    s = case["seed"]
    c, k, dtype = case["c"], case["c"] * case["m"], case["dtype"]
    x = laid_out(_values((case["n"], c, case["h"], case["w"]), s), case["layout"], dtype)
    taps = case["kh"] * case["kw"]
    w = laid_out(_values((k, 1, case["kh"], case["kw"]), s + 1) / taps ** 0.5, case["weight_layout"], dtype)
    b = vector(_values((k,), s + 2), case["strided_bias"], dtype) if case["bias"] else None
    tensors = [x, w, b]
    if "cout" in case:
        pw = laid_out(_values((case["cout"], k, 1, 1), s + 3) / k ** 0.5, case["weight_layout"], dtype)
        pb = vector(_values((case["cout"],), s + 4), case["strided_bias"], dtype) if case["pw_bias"] else None
        tensors += [pw, pb]
    for t, rg in zip(tensors, case["requires_grad"]):
        if t is not None and rg:
            t.requires_grad_()
    return tensors


def _call_ours(call, case):
    """call() where PyTorch's op (or module) returned; None where ours refuses, naming it, an argument that
    PyTorch lets through only because the batch is empty (it skips some checks then) or, for modules, until
    the forward (a non-positive stride or dilation, a negative padding)."""
    try:
        return call()
    except (RuntimeError, ValueError) as e:
        invalid = min(case["stride"]) <= 0 or min(case["dilation"]) <= 0 or min(case["padding"]) < 0
        if not (case["n"] == 0 or invalid) or not names_an_argument(str(e)):
            raise
        return None


def _reference_result(ref_call, ours_call):
    """ref_call()'s result, or None where PyTorch raises: then ours_call() must raise too, naming an argument."""
    try:
        return ref_call()
    except (RuntimeError, ValueError) as e:
        note(f"PyTorch raises: {e}")
        raises_naming_an_argument(ours_call, e)
        return None


def _check_against(ours_fn, ref_fn, abs_fn, tensors, case, names=("input", "weight", "bias", "pw_weight", "pw_bias")):
    """Forward and gradients of ours_fn(*tensors) against ref_fn on float64 copies; abs_fn(*|tensors|) is the
    magnitude the tolerance scales with. If ref_fn raises, ours must raise naming an argument. `names` name the
    tensors in failure messages."""
    refs = [as_reference(t) for t in tensors]
    expected = _reference_result(lambda: ref_fn(*refs), lambda: ours_fn(*tensors))
    if expected is None:
        return
    actual = _call_ours(lambda: ours_fn(*tensors), case)
    if actual is None:
        return
    dtype = case["dtype"]
    assert actual.dtype == dtype
    mags = [None if t is None else t.detach().abs().requires_grad_(t.requires_grad) for t in refs]
    magnitude = abs_fn(*mags)
    assert_close_scaled(actual, expected, magnitude, dtype, "forward")
    if not any(t is not None and t.requires_grad for t in tensors):
        assert not actual.requires_grad
        return
    go = laid_out(_values(expected.shape, case["seed"] + 7), case["grad_layout"], dtype)
    got = grads(actual, tensors, go)
    want = grads(expected, refs, go.double())
    bounds = grads(magnitude, mags, go.double().abs())
    for name, a, e, bound in zip(names, got, want, bounds):
        if e is None:
            assert a is None, name
            continue
        assert a is not None, name
        assert_close_scaled(a, e, bound, dtype, f"grad {name}")


@FUZZ
@given(conv_case())
def test_fuzz_depthwise_conv2d(case):
    x, w, b = _tensors(case)
    args = (case["stride"], case["padding"], case["dilation"])
    _check_against(lambda x, w, b: fusedops.depthwise_conv2d(x, w, b, *args),
                   lambda x, w, b: depthwise_reference(x, w, b, *args),
                   lambda x, w, b: depthwise_reference(x, w, b, *args), (x, w, b), case)


@FUZZ
@given(conv_case(pointwise=True))
def test_fuzz_dwpw_conv2d(case):
    x, dw_w, dw_b, pw_w, pw_b = _tensors(case)
    if case["dtype"] not in (torch.float64,):
        # Lower precisions: the fused kernel's intermediate may round to the other side of an activation's
        # kink from the float64 one, which changes the gradient there by design; gradients of smooth
        # compositions only.
        if any(t is not None and t.requires_grad for t in (x, dw_w, dw_b, pw_w, pw_b)):
            case["mid"] = case["out"] = None
    args = (case["stride"], case["padding"], case["dilation"], case["mid"], case["out"])
    conv = args[:3]

    def magnitude(x, dw_w, dw_b, pw_w, pw_b):  # activations are at most 1.5-Lipschitz (hardswish)
        return 1.5 * F.conv2d(1.5 * depthwise_reference(x, dw_w, dw_b, *conv), pw_w, pw_b) + 3.0

    _check_against(lambda *t: fusedops.dwpw_conv2d(*t, *args), lambda *t: dwpw_reference(*t, *args), magnitude,
                   (x, dw_w, dw_b, pw_w, pw_b), case)


# A squeeze-excitation: (gate, activation between its 1x1 convolutions, reduced channels, biases).
SQUEEZE_EXCITATIONS = st.tuples(st.sampled_from(["hardsigmoid", "sigmoid"]), st.sampled_from([None, "relu", "silu"]),
                                st.integers(1, 5), st.booleans())


@FUZZ
@given(conv_case(pointwise=True), st.booleans(), st.sampled_from([None, True, False]))
def test_fuzz_inverted_residual(case, expand, residual):
    _fuzz_inverted_residual(case, expand, residual, None)


@FUZZ
@given(conv_case(pointwise=True), st.booleans(), st.sampled_from([None, True, False]), SQUEEZE_EXCITATIONS)
def test_fuzz_inverted_residual_squeeze_excitation(case, expand, residual, se):
    _fuzz_inverted_residual(case, expand, residual, se)


def _fuzz_inverted_residual(case, expand, residual, se):
    # The depthwise stage has one channel per hidden channel: the drawn multiplier is the expand ratio.
    s, dtype, c, cout = case["seed"], case["dtype"], case["c"], case["cout"]
    hidden = c * case["m"] if expand else c
    x = laid_out(_values((case["n"], c, case["h"], case["w"]), s), case["layout"], dtype)
    taps = case["kh"] * case["kw"]
    ew = laid_out(_values((hidden, c, 1, 1), s + 5) / c ** 0.5, case["weight_layout"], dtype) if expand else None
    eb = vector(_values((hidden,), s + 6), case["strided_bias"], dtype) if expand and case["bias"] else None
    dw = laid_out(_values((hidden, 1, case["kh"], case["kw"]), s + 1) / taps ** 0.5, case["weight_layout"], dtype)
    db = vector(_values((hidden,), s + 2), case["strided_bias"], dtype) if case["bias"] else None
    pw = laid_out(_values((cout, hidden, 1, 1), s + 3) / hidden ** 0.5, case["weight_layout"], dtype)
    pb = vector(_values((cout,), s + 4), case["strided_bias"], dtype) if case["pw_bias"] else None
    se_tensors = (None,) * 4
    if se is not None:
        gate, se_act, squeeze, se_biases = se
        se_tensors = (laid_out(_values((squeeze, hidden, 1, 1), s + 8) / hidden ** 0.5, case["weight_layout"], dtype),
                      vector(_values((squeeze,), s + 9), case["strided_bias"], dtype) if se_biases else None,
                      laid_out(_values((hidden, squeeze, 1, 1), s + 10) / squeeze ** 0.5, case["weight_layout"],
                               dtype),
                      vector(_values((hidden,), s + 11), case["strided_bias"], dtype) if se_biases else None)
    tensors = (x, ew, eb, dw, db, pw, pb) + se_tensors
    wants = case["requires_grad"]
    for t, rg in zip(tensors, (wants[0], wants[1], wants[2], wants[1], wants[2], wants[3], wants[4], wants[1],
                               wants[2], wants[3], wants[4])):
        if t is not None and rg:
            t.requires_grad_()
    act = case["mid"]
    if dtype != torch.float64 and any(t is not None and t.requires_grad for t in tensors):
        act = None  # as for dwpw_conv2d: low-precision kinks move, gradients of smooth compositions only
        if se is not None:
            gate, se_act = "sigmoid", None if se_act == "relu" else se_act
    se_args = None if se is None else (gate, se_act)
    conv = (case["stride"], case["padding"], case["dilation"])
    # The residual the op adds by default: stride 1 and an output of the input's shape.
    add = residual
    if residual is None:
        try:
            out_shape = depthwise_reference(torch.empty(x.shape, dtype=torch.float64), torch.empty(dw.shape[0], 1,
                                            case["kh"], case["kw"], dtype=torch.float64), None, *conv).shape
            add = tuple(case["stride"]) == (1, 1) and cout == c and tuple(out_shape[2:]) == tuple(x.shape[2:])
        except (RuntimeError, ValueError):
            add = False

    def reference(x, ew, eb, dw, db, pw, pb, rw, rb, sew, seb):
        h = x if ew is None else activation(F.conv2d(x, ew, eb), act)
        mid = activation(depthwise_reference(h, dw, db, *conv), act)
        if se_args is not None:
            # torchvision's SqueezeExcitation (an empty map: adaptive_avg_pool2d raises, as the op must).
            scale = activation(F.conv2d(F.adaptive_avg_pool2d(mid, 1), rw, rb), se_args[1])
            scale = F.conv2d(scale, sew, seb)
            mid = mid * (torch.sigmoid(scale) if se_args[0] == "sigmoid" else F.hardsigmoid(scale))
        out = F.conv2d(mid, pw, pb)
        if add and out.shape != x.shape:
            # The block's residual is the input itself, never a broadcast of it.
            raise RuntimeError("residual: the output's shape differs from the input's")
        return out + x if add else out

    def magnitude(x, ew, eb, dw, db, pw, pb, rw, rb, sew, seb):  # activations are at most 1.5-Lipschitz (hardswish)
        h = x if ew is None else 1.5 * F.conv2d(x, ew, eb) + 3.0
        mid = 1.5 * depthwise_reference(h, dw, db, *conv) + 3.0
        if se_args is not None:
            # The gates are 1/4-Lipschitz and at most 1: a bound that grows with every weight of the gate.
            scale = 1.5 * F.conv2d(mid.mean((2, 3), keepdim=True), rw, rb) + 1.0
            mid = mid * (1.0 + 0.25 * F.conv2d(scale, sew, seb))
        out = F.conv2d(mid, pw, pb)
        return out + x if add else out

    def ours(x, ew, eb, dw, db, pw, pb, rw, rb, sew, seb):
        se_arg = None if se_args is None else (rw, rb, sew, seb, se_args[0], se_args[1])
        return fusedops.inverted_residual(x, ew, eb, dw, db, pw, pb, *conv, act, se=se_arg, residual=residual)

    _check_against(ours, reference, magnitude, tensors, case,
                   names=("input", "expand_weight", "expand_bias", "dw_weight", "dw_bias", "project_weight",
                          "project_bias", "se_reduce_weight", "se_reduce_bias", "se_expand_weight", "se_expand_bias"))


@FUZZ
@given(conv_case(pointwise=True), st.booleans())
def test_fuzz_ghost_module(case, with_residual):
    # The drawn multiplier is the cheap operation's (ratio - 1), cout the primary half's channels; the kept channels
    # fall anywhere from the primary half alone to every cheap channel. Kernel sizes may be even (refused: the
    # halves' sizes would differ) and strides invalid, as PyTorch decides.
    s, dtype, c, init, m = case["seed"], case["dtype"], case["c"], case["cout"], case["m"]
    out_channels = init + s % (init * m + 1)
    kh, kw = case["kh"], case["kw"]
    x = laid_out(_values((case["n"], c, case["h"], case["w"]), s), case["layout"], dtype)
    pw = laid_out(_values((init, c, 1, 1), s + 3) / c ** 0.5, case["weight_layout"], dtype)
    pb = vector(_values((init,), s + 4), case["strided_bias"], dtype) if case["pw_bias"] else None
    cw = laid_out(_values((init * m, 1, kh, kw), s + 1) / (kh * kw) ** 0.5, case["weight_layout"], dtype)
    cb = vector(_values((init * m,), s + 2), case["strided_bias"], dtype) if case["bias"] else None
    stride = case["stride"]
    r = None
    if with_residual and min(stride) > 0:
        shape = (case["n"], out_channels, (case["h"] - 1) // stride[0] + 1, (case["w"] - 1) // stride[1] + 1)
        if min(shape[2:]) > 0:
            r = laid_out(_values(shape, s + 5), case["grad_layout"], dtype)
    tensors = (x, pw, pb, cw, cb, r)
    wants = case["requires_grad"]
    for t, rg in zip(tensors, (wants[0], wants[3], wants[4], wants[1], wants[2], wants[0])):
        if t is not None and rg:
            t.requires_grad_()
    act = case["mid"]
    if dtype != torch.float64 and any(t is not None and t.requires_grad for t in tensors):
        act = None  # as for dwpw_conv2d: low-precision kinks move, gradients of smooth compositions only

    def halves(x, pw, pb, cw, cb, scale, shift):
        x1 = scale(F.conv2d(x, pw, pb, stride)) + shift
        x2 = scale(F.conv2d(x1, cw, cb, 1, (kh // 2, kw // 2), groups=init)) + shift
        return torch.cat([x1, x2], 1)[:, :out_channels]

    def reference(x, pw, pb, cw, cb, r):
        out = halves(x, pw, pb, cw, cb, lambda t: activation(t, act), 0.0)
        return out if r is None else out + r

    def magnitude(x, pw, pb, cw, cb, r):  # activations are at most 1.5-Lipschitz (hardswish)
        out = halves(x, pw, pb, cw, cb, lambda t: 1.5 * t, 3.0)
        return out if r is None else out + r

    _check_against(lambda x, pw, pb, cw, cb, r: fusedops.ghost_module(x, pw, pb, cw, cb, out_channels, stride, act,
                                                                      residual=r),
                   reference, magnitude, tensors, case,
                   names=("input", "primary_weight", "primary_bias", "cheap_weight", "cheap_bias", "residual"))


@FUZZ
@given(conv_case(pointwise=True), st.booleans())
def test_fuzz_shufflenet_v2_unit(case, shortcut):
    # Without the shortcut the drawn channels are each half's (the input has twice as many); with it, cout is each
    # half's. Geometries that change the map's size are refused without the shortcut, as torch.cat refuses them.
    s, dtype = case["seed"], case["dtype"]
    c = case["c"] if shortcut else 2 * case["c"]
    b = case["cout"] if shortcut else case["c"]
    branch_in = c if shortcut else c // 2
    kh, kw = case["kh"], case["kw"]
    taps = kh * kw

    def weight(shape, seed, fan_in):
        return laid_out(_values(shape, s + seed) / fan_in ** 0.5, case["weight_layout"], dtype)

    def bias(n, seed, given):
        return vector(_values((n,), s + seed), case["strided_bias"], dtype) if given else None

    x = laid_out(_values((case["n"], c, case["h"], case["w"]), s), case["layout"], dtype)
    tensors = (x, weight((b, branch_in, 1, 1), 5, branch_in), bias(b, 6, case["bias"]), weight((b, 1, kh, kw), 1, taps),
               bias(b, 2, case["bias"]), weight((b, b, 1, 1), 3, b), bias(b, 4, case["pw_bias"]))
    if shortcut:
        tensors += (weight((c, 1, kh, kw), 8, taps), bias(c, 9, case["bias"]), weight((b, c, 1, 1), 10, c),
                    bias(b, 11, case["pw_bias"]))
    else:
        tensors += (None,) * 4
    wants = case["requires_grad"]
    for t, rg in zip(tensors, (wants[0], wants[1], wants[2], wants[1], wants[2], wants[3], wants[4], wants[1],
                               wants[2], wants[3], wants[4])):
        if t is not None and rg:
            t.requires_grad_()
    act = case["mid"]
    if dtype != torch.float64 and any(t is not None and t.requires_grad for t in tensors):
        act = None  # as for dwpw_conv2d: low-precision kinks move, gradients of smooth compositions only
    conv = (case["stride"], case["padding"], case["dilation"])

    def unit(x, ew, eb, dw, db, pw, pb, sdw, sdb, spw, spb, scale, shift):
        # torchvision's ShuffleNetV2 unit with its batch norms folded, the activation as scale(t) + shift.
        second = scale(F.conv2d(depthwise_reference(scale(F.conv2d(x if shortcut else x.chunk(2, 1)[1], ew, eb))
                                                    + shift, dw, db, *conv), pw, pb)) + shift
        first = (scale(F.conv2d(depthwise_reference(x, sdw, sdb, *conv), spw, spb)) + shift if shortcut
                 else x.chunk(2, 1)[0])
        return F.channel_shuffle(torch.cat([first, second], 1), 2)

    def reference(*t):
        return unit(*t, lambda v: activation(v, act), 0.0)

    def magnitude(*t):  # activations are at most 1.5-Lipschitz (hardswish)
        return unit(*t, lambda v: 1.5 * v, 3.0)

    def ours(x, ew, eb, dw, db, pw, pb, sdw, sdb, spw, spb):
        return fusedops.shufflenet_v2_unit(x, ew, eb, dw, db, pw, pb, (sdw, sdb, spw, spb) if shortcut else None,
                                           *conv, act)

    _check_against(ours, reference, magnitude, tensors, case,
                   names=("input", "expand_weight", "expand_bias", "dw_weight", "dw_bias", "project_weight",
                          "project_bias", "shortcut_dw_weight", "shortcut_dw_bias", "shortcut_pw_weight",
                          "shortcut_pw_bias"))


@st.composite
def shuffle_case(draw, concat=False):
    n, h, w = draw(batches), draw(sizes), draw(sizes)
    groups = draw(st.integers(1, 6) | st.sampled_from([0, -1]))
    c = draw(st.integers(1, 12))
    case = dict(n=n, c=c, h=h, w=w, groups=groups, dtype=draw(st.sampled_from(DTYPES)),
                layout=draw(st.sampled_from(LAYOUTS)), grad_layout=draw(st.sampled_from(LAYOUTS)),
                seed=draw(st.integers(0, 2**31 - 1)), requires_grad=draw(st.lists(st.booleans(), min_size=2,
                                                                                   max_size=2)))
    if concat:
        case.update(c2=draw(st.integers(1, 12)), layout2=draw(st.sampled_from(LAYOUTS)))
    note(repr(case))
    return case


def _exact_check(ours_fn, ref_fn, tensors, case):
    """A permutation is exact: outputs and gradients bitwise equal to PyTorch's."""
    refs = [t.detach().clone().requires_grad_(t.requires_grad) for t in tensors]
    expected = _reference_result(lambda: ref_fn(*refs), lambda: ours_fn(*tensors))
    if expected is None:
        return
    actual = ours_fn(*tensors)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    if any(t.requires_grad for t in tensors):
        go = laid_out(_values(expected.shape, case["seed"] + 7), case["grad_layout"], case["dtype"])
        for a, e in zip(grads(actual, tensors, go), grads(expected, refs, go)):
            assert (a is None) == (e is None)
            if a is not None:
                torch.testing.assert_close(a, e, rtol=0, atol=0)


@FUZZ
@given(shuffle_case())
def test_fuzz_channel_shuffle(case):
    x = laid_out(_values((case["n"], case["c"], case["h"], case["w"]), case["seed"]), case["layout"], case["dtype"])
    x.requires_grad_(case["requires_grad"][0])
    g = case["groups"]
    _exact_check(lambda x: fusedops.channel_shuffle(x, g), lambda x: F.channel_shuffle(x, g), [x], case)


@FUZZ
@given(shuffle_case(concat=True))
def test_fuzz_concat_shuffle(case):
    n, h, w, dtype = case["n"], case["h"], case["w"], case["dtype"]
    a = laid_out(_values((n, case["c"], h, w), case["seed"]), case["layout"], dtype)
    b = laid_out(_values((n, case["c2"], h, w), case["seed"] + 1), case["layout2"], dtype)
    a.requires_grad_(case["requires_grad"][0])
    b.requires_grad_(case["requires_grad"][1])
    g = case["groups"]
    _exact_check(lambda a, b: fusedops.concat_shuffle(a, b, g),
                 lambda a, b: F.channel_shuffle(torch.cat([a, b], 1), g), [a, b], case)


# ---------------------------------------------------------------------------------------------------
# nn modules (float64: the modules' own logic, the kernels' precision is fuzzed above)


def _compare_modules(ours, ref, case, tol, parameter_grads=True):
    """ours(x) against ref(x) on the case's input: output, buffers afterwards (batch-norm statistics) and the
    gradients of the input and of the parameters (matched by name)."""
    x = laid_out(_values((case["n"], case["c"], case["h"], case["w"]), case["seed"]), case["layout"], torch.float64)
    x.requires_grad_(case["requires_grad"][0])
    xr = x.detach().clone().requires_grad_(x.requires_grad)
    if x.shape[0] > 0 and x.shape[1] > 0 and 0 in x.shape[2:]:
        # An empty map: PyTorch's convolution modules refuse it ("only zero batch or zero channel inputs"); the ops
        # compute the convolution of its padding (the op tests check that against a padded reference). The module
        # either does the same, with the batch and its channels, or refuses naming an argument.
        try:
            out = ours(x)
        except (RuntimeError, ValueError) as e:
            assert names_an_argument(str(e)), str(e)
            return
        assert out.shape[0] == x.shape[0] and torch.isfinite(out).all()
        return
    expected = _reference_result(lambda: ref(xr), lambda: ours(x))
    if expected is None:
        return
    actual = _call_ours(lambda: ours(x), case)
    if actual is None:
        return
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)
    ref_buffers = dict(ref.named_buffers())
    for name, b in ours.named_buffers():
        torch.testing.assert_close(b, ref_buffers[name], rtol=tol, atol=tol, msg=name)
    if not parameter_grads:
        return
    go = _values(expected.shape, case["seed"] + 7)
    names = [name for name, _ in ours.named_parameters()]
    ref_named = dict(ref.named_parameters())
    params, ref_params = [x, *ours.parameters()], [xr, *(ref_named[name] for name in names)]
    for a, e in zip(grads(actual, params, go), grads(expected, ref_params, go)):
        assert (a is None) == (e is None)
        if a is not None:
            torch.testing.assert_close(a, e, rtol=tol, atol=tol)


@FUZZ
@given(conv_case(), st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
def test_fuzz_depthwise_module(case, padding_mode):
    c, k = case["c"], case["c"] * case["m"]
    kernel, stride = (case["kh"], case["kw"]), case["stride"]
    padding, dilation = case["padding"], case["dilation"]
    try:
        ref = nn.Conv2d(c, k, kernel, stride, padding, dilation, c, case["bias"], padding_mode, dtype=torch.float64)
    except (RuntimeError, ValueError) as e:
        note(f"PyTorch raises: {e}")
        raises_naming_an_argument(lambda: fusedops.nn.DepthwiseConv2d(c, k, kernel, stride, padding, dilation,
                                                                      bias=case["bias"], padding_mode=padding_mode))
        return
    ours = _call_ours(lambda: fusedops.nn.DepthwiseConv2d(c, k, kernel, stride, padding, dilation, bias=case["bias"],
                                                          padding_mode=padding_mode, dtype=torch.float64), case)
    if ours is None:
        return
    ours.load_state_dict(ref.state_dict())
    _compare_modules(ours, ref, case, 1e-10)


class _UnfusedSeparable(nn.Module):
    """The eager modules a DepthwiseSeparableConv2d replaces, with its parameters and buffers (copies)."""

    def __init__(self, m):
        super().__init__()
        d = m.dw
        self.dw = nn.Conv2d(d.in_channels, d.out_channels, d.kernel_size, d.stride, d.padding, d.dilation,
                            d.in_channels, d.bias is not None, dtype=torch.float64)
        self.bn_dw, self.bn_pw = copy.deepcopy(m.bn_dw), copy.deepcopy(m.bn_pw)
        self.pw = copy.deepcopy(m.pw)
        self.mid, self.out = m.mid_activation, m.out_activation
        self.load_state_dict(m.state_dict())

    def forward(self, x):
        x = self.dw(x)
        x = activation(self.bn_dw(x) if self.bn_dw is not None else x, self.mid)
        x = self.pw(x)
        return activation(self.bn_pw(x) if self.bn_pw is not None else x, self.out)


@FUZZ
@given(conv_case(pointwise=True), st.booleans(), st.booleans(), st.booleans())
def test_fuzz_separable_module(case, norm, train, frozen):
    c, cout, m = case["c"], case["cout"], case["m"]
    kernel, stride, dilation = (case["kh"], case["kw"]), case["stride"], case["dilation"]
    padding = case["padding"]
    make = lambda: fusedops.nn.DepthwiseSeparableConv2d(  # noqa: E731
        c, cout, kernel, stride, padding, dilation, m, case["mid"], case["out"], norm, dtype=torch.float64)
    try:
        nn.Conv2d(c, c * m, kernel, stride, padding, dilation, c)
    except (RuntimeError, ValueError):
        raises_naming_an_argument(make)
        return
    ours = _call_ours(make, case)
    if ours is None:
        return
    gen = torch.Generator().manual_seed(case["seed"])
    for bn in (ours.bn_dw, ours.bn_pw) if norm else ():
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5, generator=gen)
            bn.bias.normal_(0, 0.5, generator=gen)
            bn.running_mean.normal_(0, 0.5, generator=gen)
            bn.running_var.uniform_(0.5, 2.0, generator=gen)
    ref = _UnfusedSeparable(ours)
    ours.train(train)
    ref.train(train)
    if frozen:
        ours.freeze()
    # Frozen weights are constants: no parameter gradients by design.
    _compare_modules(ours, ref, case, 1e-9, parameter_grads=not (frozen and norm and not train))


def _randomize_norms(module, seed):
    gen = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.weight.uniform_(0.5, 1.5, generator=gen)
                bn.bias.normal_(0, 0.5, generator=gen)
                bn.running_mean.normal_(0, 0.5, generator=gen)
                bn.running_var.uniform_(0.5, 2.0, generator=gen)


def _compare_blocks(ours, ref, case):
    """A fused block against the module it replaces (float64, random batch-norm statistics, the same state dict),
    in the case's mode: train, eval (folded every call) or frozen eval (constants: no parameter gradients)."""
    ref = ref.double()
    _randomize_norms(ref, case["seed"])
    ours = ours.double()
    ours.load_state_dict(ref.state_dict())
    ours.train(case["train"])
    ref.train(case["train"])
    if case["frozen"]:
        ours.freeze()
    _compare_modules(ours, ref, case, 1e-9, parameter_grads=not (case["frozen"] and not case["train"]))


@st.composite
def block_case(draw):
    """A block's input (any layout, batch 0 included, maps down to 1x1) and its channels, stride, expansion."""
    case = dict(n=draw(batches), c=draw(st.integers(1, 12)), cout=draw(st.integers(1, 12)), h=draw(sizes),
                w=draw(sizes), stride=draw(st.sampled_from([1, 1, 2])), expand=draw(st.sampled_from([1, 2, 3, 6])),
                seed=draw(st.integers(0, 2**31 - 1)), layout=draw(st.sampled_from(LAYOUTS)), padding=(0, 0),
                dilation=(1, 1), requires_grad=[draw(st.booleans())], train=draw(st.booleans()),
                frozen=draw(st.booleans()))
    note(repr(case))
    return case


@FUZZ
@given(block_case())
def test_fuzz_inverted_residual_module(case):
    """fusedops.nn.InvertedResidual against torchvision's, same state dict: eval (one fused op, folded every call
    or frozen) and train (batch statistics)."""
    from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionInvertedResidual

    args = (case["c"], case["cout"], case["stride"], case["expand"])
    _compare_blocks(fusedops.nn.InvertedResidual(*args), TorchvisionInvertedResidual(*args), case)


@FUZZ
@given(block_case(), st.sampled_from([2, 3, 4]), st.sampled_from([1, 3, 5]))
def test_fuzz_ghost_module_module(case, ratio, dw_size):
    """fusedops.nn.GhostModule against timm's, same state dict."""
    from timm.models.ghostnet import GhostModule as TimmGhostModule

    kwargs = dict(ratio=ratio, dw_size=dw_size, stride=case["stride"])
    _compare_blocks(fusedops.nn.GhostModule(case["c"], case["cout"], **kwargs),
                    TimmGhostModule(case["c"], case["cout"], **kwargs), case)


@FUZZ
@given(shuffle_case())
def test_fuzz_channel_shuffle_module(case):
    g = case["groups"]
    x = laid_out(_values((case["n"], case["c"], case["h"], case["w"]), case["seed"]), case["layout"], case["dtype"])
    try:
        expected = nn.ChannelShuffle(g)(x)
    except (RuntimeError, ValueError) as e:
        note(f"PyTorch raises: {e}")
        raises_naming_an_argument(lambda: fusedops.nn.ChannelShuffle(g)(x), e)
        return
    torch.testing.assert_close(fusedops.nn.ChannelShuffle(g)(x), expected, rtol=0, atol=0)
