"""fusedops.shufflenet_v2_unit (ShuffleNetV2's unit, batch norms folded) on the native CPU kernels: parity of the
output and of every gradient with the unfused float64 unit (torch.cat and F.channel_shuffle), gradcheck, opcheck,
torch.compile and export, packed weights, argument handling."""

import pytest
import torch

import fusedops

from conftest import (CL, check_shufflenet_v2_unit_parity, make_input, make_shufflenet_v2_unit_weights, requires_gpu,
                      requires_ops, shufflenet_v2_unit_reference)

pytestmark = requires_ops

ACTS = (None, "relu", "relu6", "hardswish", "silu")
# The two kinds of unit: (shape, branch channels or None, shortcut, stride).
STRIDE_ONE = ((3, 8, 7, 9), None, False, 1)
DOWN = ((3, 6, 7, 9), 8, True, 2)
UNITS = {"stride1": STRIDE_ONE, "down": DOWN}


def _unit(x, weights, **kwargs):
    """fusedops.shufflenet_v2_unit on the ten tensors of make_shufflenet_v2_unit_weights."""
    shortcut = None if weights[6] is None else tuple(weights[6:])
    return fusedops.shufflenet_v2_unit(x, *weights[:6], shortcut=shortcut, **kwargs)


def _schema_args(x, weights, stride, padding, dilation=1, activation="relu"):
    """The schema's arguments of a call (normalised geometry)."""
    return (x, *weights, [stride, stride], [padding, padding], [dilation, dilation], activation)


# ---------------------------------------------------------------------------------------------------
# 1. Parity grids


@pytest.mark.parametrize("layout", ("channels_last", "nchw", "noncontig"))
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("batch", (1, 3))
def test_parity_layouts(layout, unit, batch):
    shape, branch, shortcut, stride = UNITS[unit]
    check_shufflenet_v2_unit_parity((batch, *shape[1:]), branch, shortcut=shortcut, stride=stride, layout=layout)


@pytest.mark.parametrize("layout", ("channel_slice", "channels_last_slice", "strided", "channels_last_cropped",
                                    "channels_last_offset"))
@pytest.mark.parametrize("unit", UNITS)
def test_parity_views(layout, unit):
    # Views the kernels read in place or copy: ShuffleNetV2 hands units the halves of other tensors.
    shape, branch, shortcut, stride = UNITS[unit]
    check_shufflenet_v2_unit_parity(shape, branch, shortcut=shortcut, stride=stride, layout=layout)


@pytest.mark.parametrize("kernel, stride, dilation", (
    (3, 2, 1), (5, 2, 1), (5, 1, 1), (3, 1, 2), (5, 2, 2), ((3, 5), 2, 1), (3, (2, 1), 1), (1, 2, 1), (7, 1, 1),
))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_parity_geometry_down_sampling(kernel, stride, dilation, layout):
    check_shufflenet_v2_unit_parity((2, 6, 11, 10), 10, kernel, shortcut=True, stride=stride, dilation=dilation,
                                    layout=layout)


@pytest.mark.parametrize("kernel, dilation", ((3, 1), (5, 1), (3, 2), (5, 2), ((3, 5), 1), (1, 1), (7, 1)))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_parity_geometry_stride_one(kernel, dilation, layout):
    check_shufflenet_v2_unit_parity((2, 12, 9, 10), None, kernel, dilation=dilation, layout=layout)


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("unit", UNITS)
def test_parity_activations(activation, unit):
    shape, branch, shortcut, stride = UNITS[unit]
    check_shufflenet_v2_unit_parity(shape, branch, shortcut=shortcut, stride=stride, activation=activation)


@pytest.mark.parametrize("biases", (False, {"expand"}, {"dw", "shortcut_pw"}, {"project", "shortcut_dw"}))
@pytest.mark.parametrize("unit", UNITS)
def test_parity_biases(biases, unit):
    shape, branch, shortcut, stride = UNITS[unit]
    check_shufflenet_v2_unit_parity(shape, branch, shortcut=shortcut, stride=stride, biases=biases, layout="nchw")


@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
@pytest.mark.parametrize("shape, branch, shortcut, stride", (
    ((2, 8, 1, 1), None, False, 1),     # 1x1 map: every tap but the centre reads padding
    ((1, 6, 1, 1), 6, True, 2),
    ((3, 10, 1, 7), None, False, 1),    # one row
    ((2, 4, 7, 1), 6, True, 2),         # one column
    ((1, 6, 2, 3), 4, True, 2),
    ((1, 116, 28, 28), None, False, 1),  # ShuffleNetV2 x1.0's stage 2: many bands per image
    ((1, 116, 28, 28), 116, True, 2),   # stage 3's first unit
    ((2, 232, 7, 7), None, False, 1),   # stage 4: bands of a few rows
))
def test_parity_maps(layout, shape, branch, shortcut, stride):
    check_shufflenet_v2_unit_parity(shape, branch, shortcut=shortcut, stride=stride, layout=layout)


@pytest.mark.parametrize("padding", (0, 2, (2, 0)))
def test_parity_padding_down_sampling(padding):
    # padding 2 with a 3x3 kernel: whole output rows read only padding.
    check_shufflenet_v2_unit_parity((2, 6, 6, 7), 8, shortcut=True, stride=2, padding=padding)


def test_parity_down_sampling_at_stride_one():
    # The shortcut's weights without a stride: a unit that widens the map's channels and keeps its size.
    check_shufflenet_v2_unit_parity((2, 6, 8, 8), 12, shortcut=True, stride=1)


@pytest.mark.parametrize("kernel, stride, dilation", ((5, 1, 2), (3, 2, 1), (3, 1, 1)))
@pytest.mark.parametrize("batch", (1, 4))
def test_parity_bands_sharing_rows(kernel, stride, dilation, batch):
    # Maps tall enough for many bands per strip: consecutive bands keep the expanded rows they share.
    shortcut = stride != 1
    check_shufflenet_v2_unit_parity((batch, 32, 70, 40), 16 if shortcut else None, kernel, shortcut=shortcut,
                                    stride=stride, dilation=dilation, backward=False)


@pytest.mark.parametrize("threads", (1, 2, 3))
def test_parity_thread_counts(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_shufflenet_v2_unit_parity((1, 48, 30, 30), None)
        check_shufflenet_v2_unit_parity((2, 24, 14, 14), 48, 5, shortcut=True, stride=2)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_parity_dtypes(dtype, layout):
    check_shufflenet_v2_unit_parity((2, 8, 9, 9), None, dtype=dtype, layout=layout)
    check_shufflenet_v2_unit_parity((1, 8, 9, 9), 16, shortcut=True, stride=2, dtype=dtype, layout=layout)


@pytest.mark.parametrize("unit", UNITS)
def test_bfloat16_close_to_float32(unit):
    shape, branch, shortcut, stride = UNITS[unit]
    x = make_input(shape, "channels_last")
    weights = make_shufflenet_v2_unit_weights(shape[1], branch, shortcut=shortcut, requires_grad=False)
    expected = _unit(x, weights, stride=stride)
    y = _unit(x.bfloat16(), [None if w is None else w.bfloat16() for w in weights], stride=stride)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y.float(), expected, rtol=3e-2, atol=3e-2)


def test_first_half_is_copied_exactly():
    # Without the shortcut the even channels are the input's first half, bit for bit.
    x = make_input((2, 10, 6, 7), "channels_last")
    weights = make_shufflenet_v2_unit_weights(10, requires_grad=False)
    y = _unit(x, weights)
    assert torch.equal(y[:, 0::2], x[:, :5])


@pytest.mark.parametrize("unit", UNITS)
def test_reference_backend(unit):
    shape, branch, shortcut, stride = UNITS[unit]
    check_shufflenet_v2_unit_parity(shape, branch, shortcut=shortcut, stride=stride, backend="reference")


@pytest.mark.parametrize("value", (float("nan"), float("inf")))
@pytest.mark.parametrize("unit", UNITS)
def test_non_finite_depthwise_weight(value, unit):
    # A NaN or Inf depthwise weight spreads as in the unfused unit (NaN where it meets the zero padding too).
    shape, branch, shortcut, stride = UNITS[unit]
    x = make_input(shape, "channels_last")
    weights = make_shufflenet_v2_unit_weights(shape[1], branch, shortcut=shortcut, requires_grad=False)
    weights[2][1, 0, 0, 0] = value
    y = _unit(x, weights, stride=stride)
    expected = shufflenet_v2_unit_reference(x, *weights, stride, 1, 1, "relu")
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5, equal_nan=True)


# ---------------------------------------------------------------------------------------------------
# 2. Gradients: requested subsets, gradcheck, what the backward keeps


@pytest.mark.parametrize("wanted", ((0,), (1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (0, 9), (2, 7)))
@pytest.mark.parametrize("unit", UNITS)
def test_unrequested_grads(wanted, unit):
    shape, branch, shortcut, stride = UNITS[unit]
    if not shortcut and max(wanted) >= 7:
        pytest.skip("the stride-1 unit has no shortcut weights")
    x = make_input(shape, "channels_last")
    weights = make_shufflenet_v2_unit_weights(shape[1], branch, shortcut=shortcut, requires_grad=False)
    inputs = [x, *weights]
    for i in wanted:
        inputs[i].requires_grad_(True)
    y = _unit(inputs[0], inputs[1:], stride=stride)
    grads = torch.autograd.grad(y.sum(), [inputs[i] for i in wanted])
    leaves = [None if t is None else t.detach().double().requires_grad_(i in wanted) for i, t in enumerate(inputs)]
    ref = shufflenet_v2_unit_reference(*leaves, stride, 1, 1, "relu")
    ref_grads = torch.autograd.grad(ref.sum(), [leaves[i] for i in wanted])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("unit", UNITS)
def test_backward_op_returns_empty_for_unrequested(unit):
    shape, branch, shortcut, stride = UNITS[unit]
    x = make_input(shape, "channels_last")
    weights = make_shufflenet_v2_unit_weights(shape[1], branch, shortcut=shortcut, requires_grad=False)
    y = _unit(x, weights, stride=stride)
    go = torch.randn(y.shape)
    mask = [False, True, False, False, True, False, True, False, False, shortcut, False]
    grads = torch.ops.fusedops._shufflenet_v2_unit_backward(go, *_schema_args(x, weights, stride, 1), mask)
    assert [g.numel() > 0 for g in grads] == mask


def test_backward_op_leaves_absent_biases_empty():
    # Every gradient asked for, but the biases not given have none.
    shape, branch, shortcut, stride = DOWN
    x = make_input(shape, "channels_last")
    weights = make_shufflenet_v2_unit_weights(shape[1], branch, shortcut=True, biases={"dw"}, requires_grad=False)
    go = torch.randn(_unit(x, weights, stride=stride).shape)
    grads = torch.ops.fusedops._shufflenet_v2_unit_backward(go, *_schema_args(x, weights, stride, 1), [True] * 11)
    assert [g.numel() > 0 for g in grads] == [True] + [w is not None for w in weights]


@pytest.mark.parametrize("activation", ("relu", "hardswish", None))
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_gradcheck_float64(activation, unit, layout):
    shortcut = unit == "down"
    x = make_input((2, 4, 5, 6), layout, dtype=torch.float64, requires_grad=True)
    weights = make_shufflenet_v2_unit_weights(4, 3, shortcut=shortcut, dtype=torch.float64)
    inputs = [x] + [w for w in weights if w is not None]

    def fn(x, *ws):
        it = iter(ws)
        full = [None if w is None else next(it) for w in weights]
        return _unit(x, full, stride=2 if shortcut else 1, activation=activation)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_double_backward_raises():
    x = make_input((1, 4, 5, 5), "channels_last", dtype=torch.float64, requires_grad=True)
    weights = make_shufflenet_v2_unit_weights(4, dtype=torch.float64)
    (g,) = torch.autograd.grad(_unit(x, weights).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward .* of shufflenet_v2_unit is not supported"):
        g.sum().backward()


@pytest.mark.parametrize("unit", UNITS)
def test_backward_keeps_only_the_input(unit):
    # Autograd saves the input and the weights: no intermediate the size of the branch's maps.
    shortcut = unit == "down"
    x = make_input((2, 16, 16, 16), "channels_last", requires_grad=True)
    weights = make_shufflenet_v2_unit_weights(16, 32, shortcut=shortcut)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _unit(x, weights, stride=2 if shortcut else 1)
    assert max(t.numel() for t in saved) == x.numel()


@pytest.mark.parametrize("unit", UNITS)
def test_empty_batch(unit):
    shape, branch, shortcut, stride = UNITS[unit]
    x = make_input((0, *shape[1:]), "channels_last", requires_grad=True)
    weights = make_shufflenet_v2_unit_weights(shape[1], branch, shortcut=shortcut)
    y = _unit(x, weights, stride=stride)
    out_h, out_w = (4, 5) if shortcut else shape[2:]
    assert y.shape == (0, 2 * weights[4].shape[0], out_h, out_w)
    wanted = [x, weights[0], weights[2], weights[4]] + ([weights[6], weights[8]] if shortcut else [])
    grads = torch.autograd.grad(y.sum(), wanted)
    assert grads[0].shape == x.shape and all(float(g.abs().sum()) == 0 for g in grads)


def test_meta_tensors():
    x = torch.empty(2, 8, 9, 9, device="meta").to(memory_format=CL)
    weights = [None if w is None else w.to("meta")
               for w in make_shufflenet_v2_unit_weights(8, 16, shortcut=True, requires_grad=False)]
    y = torch.ops.fusedops.shufflenet_v2_unit(*_schema_args(x, weights, 2, 1))
    assert y.shape == (2, 32, 5, 5) and y.is_contiguous(memory_format=CL)
    x = torch.empty(2, 8, 9, 9, device="meta")
    weights = [None if w is None else w.to("meta") for w in make_shufflenet_v2_unit_weights(8, requires_grad=False)]
    y = torch.ops.fusedops.shufflenet_v2_unit(*_schema_args(x, weights, 1, 1))
    assert y.shape == (2, 8, 9, 9) and y.is_contiguous()


# ---------------------------------------------------------------------------------------------------
# 3. opcheck, compile, export


def _opcheck_args(layout, unit, requires_grad, activation="relu"):
    shortcut = unit == "down"
    x = make_input((2, 4, 6, 5), layout, dtype=torch.float64, requires_grad=requires_grad)
    weights = make_shufflenet_v2_unit_weights(4, 6, shortcut=shortcut, dtype=torch.float64,
                                              requires_grad=requires_grad)
    return _schema_args(x, weights, 2 if shortcut else 1, 1, activation=activation)


@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("requires_grad", (True, False))
def test_opcheck(layout, unit, requires_grad):
    torch.library.opcheck(torch.ops.fusedops.shufflenet_v2_unit.default, _opcheck_args(layout, unit, requires_grad))


@pytest.mark.parametrize("unit", UNITS)
def test_opcheck_backward_op(unit):
    args = _opcheck_args("channels_last", unit, False, "hardswish")
    go = torch.randn(torch.ops.fusedops.shufflenet_v2_unit(*args).shape, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fusedops._shufflenet_v2_unit_backward.default, (go, *args, [True] * 11))


@pytest.mark.parametrize("unit", UNITS)
def test_compile_fullgraph_matches_eager(unit):
    shortcut = unit == "down"
    x = make_input((2, 8, 10, 10), "channels_last", requires_grad=True)
    weights = make_shufflenet_v2_unit_weights(8, 16, shortcut=shortcut)

    def block(x, *w):
        return _unit(x, w, stride=2 if shortcut else 1) * 2

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    y, yc = block(x, *weights), compiled(x, *weights)
    torch.testing.assert_close(yc, y)
    wanted = [x, weights[0], weights[5]] + ([weights[6], weights[9]] if shortcut else [])
    g = torch.autograd.grad(y.sum(), wanted)
    gc = torch.autograd.grad(yc.sum(), wanted)
    for a, b in zip(gc, g):
        torch.testing.assert_close(a, b)


def test_export_dynamic_batch():
    weights = make_shufflenet_v2_unit_weights(8, 16, shortcut=True, requires_grad=False)

    class Unit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for i, w in enumerate(weights):
                self.register_buffer(f"w{i}", w)

        def forward(self, x):
            ws = [getattr(self, f"w{i}") for i in range(10)]
            return fusedops.shufflenet_v2_unit(x, *ws[:6], shortcut=tuple(ws[6:]), stride=2)

    x = make_input((2, 8, 9, 9), "channels_last")
    exported = torch.export.export(Unit(), (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    x3 = make_input((3, 8, 9, 9), "channels_last")
    torch.testing.assert_close(exported.module()(x3), Unit()(x3))


@pytest.mark.parametrize("unit", UNITS)
def test_functorch_grad_matches_autograd(unit):
    # Inside torch.func transforms the op runs as differentiable ATen ops after its checks.
    shortcut = unit == "down"
    x = make_input((2, 4, 5, 6), "channels_last", dtype=torch.float64)
    weights = make_shufflenet_v2_unit_weights(4, 6, shortcut=shortcut, dtype=torch.float64, requires_grad=False)
    stride = 2 if shortcut else 1

    def loss(x, ew, dw):
        return _unit(x, [ew, weights[1], dw, *weights[3:]], stride=stride, activation="silu").square().sum()

    got = torch.func.grad(loss, argnums=(0, 1, 2))(x, weights[0], weights[2])
    leaves = [t.detach().clone().requires_grad_() for t in (x, weights[0], weights[2])]
    expected = torch.autograd.grad(loss(*leaves), leaves)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


# ---------------------------------------------------------------------------------------------------
# 4. Arguments


def test_defaults_padding():
    x = make_input((1, 8, 9, 9), "channels_last")
    weights = make_shufflenet_v2_unit_weights(8, kernel=5, requires_grad=False)
    y = _unit(x, weights, dilation=2)  # padding 4: the map keeps its size
    torch.testing.assert_close(y, shufflenet_v2_unit_reference(x, *weights, 1, 4, 2, "relu"), rtol=1e-5, atol=1e-5)
    down = make_shufflenet_v2_unit_weights(8, 8, kernel=(3, 5), shortcut=True, requires_grad=False)
    y = _unit(x, down, stride=2)  # padding (1, 2)
    torch.testing.assert_close(y, shufflenet_v2_unit_reference(x, *down, 2, (1, 2), 1, "relu"), rtol=1e-5,
                               atol=1e-5)


def test_shortcut_as_a_list():
    x = make_input((1, 6, 7, 7), "nchw")
    weights = make_shufflenet_v2_unit_weights(6, 8, shortcut=True, requires_grad=False)
    y = fusedops.shufflenet_v2_unit(x, *weights[:6], shortcut=list(weights[6:]), stride=2)
    torch.testing.assert_close(y, _unit(x, weights, stride=2), rtol=0, atol=0)


def _bad_call_cases():
    x = make_input((1, 8, 9, 9), "channels_last")
    ew, eb, dw, db, pw, pb, sdw, sdb, spw, spb = make_shufflenet_v2_unit_weights(8, 8, shortcut=True,
                                                                                 requires_grad=False)
    sew, seb, sdww, sdwb, spww, spwb = make_shufflenet_v2_unit_weights(8, requires_grad=False)[:6]
    odd = make_input((1, 7, 9, 9), "channels_last")
    return [
        ("odd-channels", RuntimeError, r"input must have an even number of channels without the shortcut's weights",
         lambda: fusedops.shufflenet_v2_unit(odd, sew[:, :3], seb, sdww, sdwb, spww, spwb)),
        ("expand-weight-shape", RuntimeError, r"expand_weight must have shape \(out_channels, 4, 1, 1\)",
         lambda: fusedops.shufflenet_v2_unit(x, ew, eb, dw, db, pw, pb)),
        ("expand-weight-shape-down", RuntimeError, r"expand_weight must have shape \(out_channels, 8, 1, 1\)",
         lambda: fusedops.shufflenet_v2_unit(x, ew[:, :4], eb, dw, db, pw, pb, shortcut=(sdw, sdb, spw, spb),
                                             stride=2)),
        ("expand-weight-rank", RuntimeError, "expand_weight must be a 4-D tensor",
         lambda: fusedops.shufflenet_v2_unit(x, ew[:, :, 0], eb, dw, db, pw, pb)),
        ("shortcut-pw-missing", RuntimeError, "shortcut_dw_weight and shortcut_pw_weight must be given together.*"
         "got only shortcut_dw_weight",
         lambda: fusedops.shufflenet_v2_unit(x, ew, eb, dw, db, pw, pb, shortcut=(sdw, sdb, None, None), stride=2)),
        ("shortcut-dw-missing", RuntimeError, "got only shortcut_pw_weight",
         lambda: fusedops.shufflenet_v2_unit(x, ew, eb, dw, db, pw, pb, shortcut=(None, None, spw, spb), stride=2)),
        ("shortcut-bias-alone", RuntimeError, "shortcut_pw_bias is given without the shortcut's weights",
         lambda: fusedops.shufflenet_v2_unit(x, sew, seb, sdww, sdwb, spww, spwb, shortcut=(None, None, None, spb))),
        ("shortcut-not-a-tuple", TypeError, r"shortcut must be None or a tuple \(dw_weight, dw_bias, pw_weight",
         lambda: fusedops.shufflenet_v2_unit(x, ew, eb, dw, db, pw, pb, shortcut=(sdw, spw), stride=2)),
        ("shortcut-dw-kernel", RuntimeError, r"shortcut_dw_weight must have shape \(8, 1, 3, 3\)",
         lambda: fusedops.shufflenet_v2_unit(x, ew, eb, dw, db, pw, pb, shortcut=(sdw[..., :2], sdb, spw, spb),
                                             stride=2)),
        ("shortcut-pw-outputs", RuntimeError, "shortcut_pw_weight must have 8 output channels",
         lambda: fusedops.shufflenet_v2_unit(x, ew, eb, dw, db, pw, pb, shortcut=(sdw, sdb, spw[:6], spb[:6]),
                                             stride=2)),
        ("stride-2-without-shortcut", RuntimeError, "without the shortcut's weights the branch must keep the map's "
         "size.*maps 9x9 to 5x5",
         lambda: fusedops.shufflenet_v2_unit(x, sew, seb, sdww, sdwb, spww, spwb, stride=2)),
        ("padding-without-shortcut", RuntimeError, "without the shortcut's weights the branch must keep",
         lambda: fusedops.shufflenet_v2_unit(x, sew, seb, sdww, sdwb, spww, spwb, padding=0)),
        ("project-outputs-without-shortcut", RuntimeError, "project_weight must have 4 output channels",
         lambda: fusedops.shufflenet_v2_unit(x, sew, seb, sdww, sdwb, torch.randn(6, 4, 1, 1), None)),
        ("negative-padding", RuntimeError, r"padding must be non-negative, got \[-1, 1\]",
         lambda: fusedops.shufflenet_v2_unit(x, ew, eb, dw, db, pw, pb, shortcut=(sdw, sdb, spw, spb), stride=2,
                                             padding=(-1, 1))),
        ("input-3d", RuntimeError, "input must be a 4-D tensor",
         lambda: fusedops.shufflenet_v2_unit(x[0], sew, seb, sdww, sdwb, spww, spwb)),
        ("input-3d-schema", RuntimeError, r"input must be a 4-D \(N, C, H, W\) tensor, got 3-D",
         lambda: torch.ops.fusedops.shufflenet_v2_unit(x[0], sew, seb, sdww, sdwb, spww, spwb, None, None, None,
                                                       None, [1, 1], [1, 1], [1, 1], "relu")),
        ("dtype-mismatch", RuntimeError, "expand_weight dtype torch.float64 does not match input dtype torch.float32",
         lambda: fusedops.shufflenet_v2_unit(x, sew.double(), seb, sdww, sdwb, spww, spwb)),
        ("shortcut-dtype-mismatch", RuntimeError, "shortcut_pw_weight dtype torch.float64 does not match input dtype",
         lambda: fusedops.shufflenet_v2_unit(x, ew, eb, dw, db, pw, pb, shortcut=(sdw, sdb, spw.double(), spb),
                                             stride=2)),
        ("activation", ValueError, "activation must be one of",
         lambda: fusedops.shufflenet_v2_unit(x, sew, seb, sdww, sdwb, spww, spwb, activation="gelu")),
        ("input-int", RuntimeError, "input must be a floating-point tensor",
         lambda: fusedops.shufflenet_v2_unit(x.int(), sew.int(), None, sdww.int(), None, spww.int(), None)),
    ]


@pytest.mark.parametrize("case", _bad_call_cases(), ids=lambda case: case[0])
def test_bad_arguments_name_the_argument(case):
    _, error, message, call = case
    with pytest.raises(error, match=message):
        call()


@requires_gpu
def test_weights_on_another_device_are_refused():
    x = make_input((1, 8, 9, 9), "channels_last")
    weights = make_shufflenet_v2_unit_weights(8, requires_grad=False)
    weights[2] = weights[2].cuda()
    with pytest.raises(RuntimeError, match="dw_weight is on cuda:0 but input is on cpu"):
        _unit(x, weights)


# ---------------------------------------------------------------------------------------------------
# 5. Packed weights


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16))
@pytest.mark.parametrize("unit", UNITS)
def test_packed_weights_give_the_same_result(dtype, unit):
    from fusedops.ops.shufflenet_v2_unit import pack_weights

    shortcut = unit == "down"
    stride = 2 if shortcut else 1
    x = make_input((2, 8, 9, 9), "channels_last", dtype=dtype)
    weights = make_shufflenet_v2_unit_weights(8, 12, shortcut=shortcut, dtype=dtype, requires_grad=False)
    shortcut_args = tuple(weights[6:]) if shortcut else None
    packed = pack_weights(x, *weights[:6], shortcut=shortcut_args, stride=stride)
    assert packed.dim() == 1 and packed.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    expected = _unit(x, weights, stride=stride)
    torch.testing.assert_close(_unit(x, weights, stride=stride, packed_weights=packed), expected, rtol=0, atol=0)
    # Packed once, used for inputs of other sizes and layouts.
    x2 = make_input((1, 8, 5, 7), "nchw", dtype=dtype)
    torch.testing.assert_close(_unit(x2, weights, stride=stride, packed_weights=packed), _unit(x2, weights,
                                                                                               stride=stride),
                               rtol=0, atol=0)


def test_packed_weights_of_another_unit_are_refused():
    from fusedops.ops.shufflenet_v2_unit import pack_weights

    x = make_input((1, 8, 6, 6), "channels_last")
    weights = make_shufflenet_v2_unit_weights(8, requires_grad=False)
    other = make_shufflenet_v2_unit_weights(8, 8, shortcut=True, requires_grad=False)
    wider = make_input((1, 12, 6, 6), "channels_last")
    with pytest.raises(RuntimeError, match="packed_weights were not packed for this"):
        _unit(x, weights, packed_weights=pack_weights(x, *other[:6], shortcut=tuple(other[6:]), stride=2))
    with pytest.raises(RuntimeError, match="packed_weights were not packed for this"):
        _unit(wider, make_shufflenet_v2_unit_weights(12, requires_grad=False),
              packed_weights=pack_weights(x, *weights[:6]))
    with pytest.raises(RuntimeError, match="packed_weights were not packed for this"):
        _unit(x.double(), [None if w is None else w.double() for w in weights],
              packed_weights=pack_weights(x, *weights[:6]))
    assert pack_weights(x.to("meta"), *[w.to("meta") for w in weights[:6]]) is None
