"""fusedops.inverted_residual (MobileNetV2's block, batch norms folded) on the native CPU kernels: parity of the
output and of every gradient with the unfused float64 reference, gradcheck, opcheck, torch.compile and export,
argument handling."""

import pytest
import torch

import fusedops

from conftest import (CL, check_inverted_residual_parity, inverted_residual_reference, make_input,
                      make_inverted_residual_weights, make_squeeze_excitation, requires_ops)

pytestmark = requires_ops

ACTS = (None, "relu", "relu6", "hardswish", "silu")
# The schema's squeeze-excitation arguments of a block without one.
NO_SE_TENSORS = (None, None, None, None)
NO_SE_NAMES = ("relu", "hardsigmoid")


# ---------------------------------------------------------------------------------------------------
# 1. Parity grids


@pytest.mark.parametrize("layout", ("channels_last", "nchw", "noncontig"))
@pytest.mark.parametrize("expand", (True, False))
@pytest.mark.parametrize("batch", (1, 3))
def test_parity_layouts(layout, expand, batch):
    # Expand ratio 6 and 1 (MobileNetV2's first block), residual on (stride 1, C_in == C_out).
    check_inverted_residual_parity((batch, 8, 9, 11), 48, 8, expand=expand, layout=layout)


@pytest.mark.parametrize("kernel, stride, dilation", (
    (3, 2, 1), (5, 1, 1), (5, 2, 1), (7, 1, 1), (3, 1, 2), (5, 1, 2), ((3, 5), 1, 1), (3, (2, 1), 1), (1, 1, 1),
))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_parity_geometry(kernel, stride, dilation, layout):
    check_inverted_residual_parity((2, 12, 13, 10), 36, 12, kernel, stride=stride, dilation=dilation, layout=layout)


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("expand", (True, False))
def test_parity_activations(activation, expand):
    check_inverted_residual_parity((2, 10, 8, 9), 30, 14, activation=activation, expand=expand)


@pytest.mark.parametrize("residual", (True, False))
def test_parity_residual_explicit(residual):
    check_inverted_residual_parity((2, 16, 7, 7), 32, 16, residual=residual, layout="nchw")


def test_parity_without_biases():
    check_inverted_residual_parity((2, 9, 8, 8), 27, 9, biases=False)
    check_inverted_residual_parity((1, 9, 8, 8), 27, 9, biases=False, expand=False, layout="nchw")


@pytest.mark.parametrize("padding", (0, 3, (2, 0)))
def test_parity_padding(padding):
    # padding 3 with a 3x3 kernel: whole output rows read only padding (bands of no input rows).
    check_inverted_residual_parity((2, 6, 6, 7), 18, 10, padding=padding)


@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
@pytest.mark.parametrize("shape, hidden, cout, stride", (
    ((1, 24, 56, 56), 144, 24, 1),   # MobileNetV2 block 3: many bands per image
    ((1, 16, 48, 40), 96, 24, 2),    # block 2 (stride 2), odd band heights
    ((3, 32, 28, 28), 192, 32, 1),
    ((1, 160, 7, 7), 960, 160, 1),  # the last stage: bands of a few rows, wide hidden tile
    ((2, 64, 1, 1), 384, 64, 1),    # 1x1 map
))
def test_parity_mobilenet_v2_shapes(layout, shape, hidden, cout, stride):
    check_inverted_residual_parity(shape, hidden, cout, stride=stride, layout=layout)


@pytest.mark.parametrize("height, width", ((1, 1), (1, 2), (1, 3), (2, 2), (1, 5), (2, 3), (1, 7), (2, 4), (3, 3),
                                           (7, 7), (2, 13)))
def test_parity_gemm_block_heights(height, width):
    # Pixel counts (1-9, 26, 49) and channel counts (45 hidden, 13 out) whose GEMM row blocks take every height of
    # the micro-kernel (49 pixels: 7 blocks of 7 rows), in both of its orientations.
    check_inverted_residual_parity((1, 10, height, width), 45, 13, residual=False)
    check_inverted_residual_parity((2, 13, height, width), 78, 13, layout="nchw", backward=False)


@pytest.mark.parametrize("kernel, stride, dilation", ((5, 1, 2), (3, 2, 1), (7, 1, 1), (3, 3, 1)))
@pytest.mark.parametrize("batch", (1, 4))
def test_parity_bands_sharing_rows(kernel, stride, dilation, batch):
    # Maps tall enough for many bands per strip: consecutive bands keep the expanded rows they share.
    check_inverted_residual_parity((batch, 16, 70, 40), 96, 16, kernel, stride=stride, dilation=dilation,
                                   backward=False)


@pytest.mark.parametrize("threads", (1, 2, 3))
def test_parity_thread_counts(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_inverted_residual_parity((1, 24, 30, 30), 144, 24)
        check_inverted_residual_parity((2, 40, 14, 14), 240, 80, kernel=5, stride=2)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_parity_dtypes(dtype, layout):
    check_inverted_residual_parity((2, 8, 9, 9), 48, 8, dtype=dtype, layout=layout)
    check_inverted_residual_parity((1, 8, 9, 9), 48, 16, stride=2, expand=False, dtype=dtype, layout=layout)


def test_low_precision_rounds_like_the_unfused_sequence():
    # bfloat16: the project output is rounded before the residual add, as in the unfused sequence.
    x = make_input((2, 16, 8, 8), "channels_last", dtype=torch.bfloat16)
    weights = make_inverted_residual_weights(16, 64, 16, dtype=torch.bfloat16, requires_grad=False)
    y = fusedops.inverted_residual(x, *weights)
    with fusedops.use_backend("reference"):
        expected = fusedops.inverted_residual(x, *weights)
    torch.testing.assert_close(y.float(), expected.float(), rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------------------
# 2. Gradients: requested subsets, gradcheck, what the backward keeps


@pytest.mark.parametrize("wanted", ((0,), (1, 2), (3, 4), (5, 6), (0, 5), (2,)))
def test_unrequested_grads(wanted):
    x = make_input((2, 6, 7, 7), "channels_last")
    weights = make_inverted_residual_weights(6, 24, 6, requires_grad=False)
    inputs = [x, *weights]
    for i in wanted:
        inputs[i].requires_grad_(True)
    y = fusedops.inverted_residual(*inputs)
    grads = torch.autograd.grad(y.sum(), [inputs[i] for i in wanted])
    leaves = [t.detach().double().requires_grad_(i in wanted) for i, t in enumerate(inputs)]
    ref = inverted_residual_reference(*leaves, 1, 1, 1, "relu6", True)
    ref_grads = torch.autograd.grad(ref.sum(), [leaves[i] for i in wanted])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5)


def test_backward_op_returns_empty_for_unrequested():
    x = make_input((1, 4, 5, 5), "channels_last")
    weights = make_inverted_residual_weights(4, 8, 4, requires_grad=False)
    go = torch.randn(1, 4, 5, 5)
    mask = [False, True, False, False, False, False, True] + [False] * 4
    grads = torch.ops.fusedops._inverted_residual_backward(go, x, *weights, *NO_SE_TENSORS, [1, 1], [1, 1], [1, 1],
                                                           "relu6", True, *NO_SE_NAMES, mask)
    assert [g.numel() == 0 for g in grads] == [True, False, True, True, True, True, False, True, True, True, True]


@pytest.mark.parametrize("activation", ("relu6", "hardswish", None))
@pytest.mark.parametrize("expand", (True, False))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_gradcheck_float64(activation, expand, layout):
    x = make_input((2, 3, 5, 6), layout, dtype=torch.float64, requires_grad=True)
    weights = make_inverted_residual_weights(3, 6, 3, expand=expand, dtype=torch.float64)
    inputs = [x] + [w for w in weights if w is not None]

    def fn(x, *ws):
        it = iter(ws)
        full = [None if w is None else next(it) for w in weights]
        return fusedops.inverted_residual(x, *full, activation=activation)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_double_backward_raises():
    x = make_input((1, 4, 5, 5), "channels_last", dtype=torch.float64, requires_grad=True)
    weights = make_inverted_residual_weights(4, 8, 4, dtype=torch.float64)
    (g,) = torch.autograd.grad(fusedops.inverted_residual(x, *weights).sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward .* of inverted_residual is not supported"):
        g.sum().backward()


def test_backward_keeps_only_the_input():
    # Autograd saves the input and the weights: no intermediate the size of the expanded map.
    x = make_input((2, 8, 16, 16), "channels_last", requires_grad=True)
    weights = make_inverted_residual_weights(8, 48, 8)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fusedops.inverted_residual(x, *weights)
    assert max(t.numel() for t in saved) == x.numel()


def test_empty_batch():
    x = make_input((0, 8, 6, 6), "channels_last", requires_grad=True)
    weights = make_inverted_residual_weights(8, 16, 8)
    y = fusedops.inverted_residual(x, *weights)
    assert y.shape == (0, 8, 6, 6)
    grads = torch.autograd.grad(y.sum(), [x, weights[0], weights[2], weights[5]])
    assert grads[0].shape == x.shape and all(float(g.abs().sum()) == 0 for g in grads)


def test_meta_tensors():
    x = torch.empty(2, 8, 9, 9, device="meta").to(memory_format=CL)
    weights = [None if w is None else w.detach().to("meta")
               for w in make_inverted_residual_weights(8, 32, 16, requires_grad=False)]
    y = torch.ops.fusedops.inverted_residual(x, *weights, *NO_SE_TENSORS, [2, 2], [1, 1], [1, 1], "relu6", False,
                                             *NO_SE_NAMES)
    assert y.shape == (2, 16, 5, 5) and y.is_contiguous(memory_format=CL)


# ---------------------------------------------------------------------------------------------------
# 3. opcheck, compile, export


def _opcheck_args(layout, expand, stride, requires_grad, activation="relu6"):
    x = make_input((2, 4, 6, 5), layout, dtype=torch.float64, requires_grad=requires_grad)
    weights = make_inverted_residual_weights(4, 12, 4, expand=expand, dtype=torch.float64,
                                             requires_grad=requires_grad)
    return (x, *weights, *NO_SE_TENSORS, [stride, stride], [1, 1], [1, 1], activation, stride == 1, *NO_SE_NAMES)


@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
@pytest.mark.parametrize("expand", (True, False))
@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("requires_grad", (True, False))
def test_opcheck(layout, expand, stride, requires_grad):
    torch.library.opcheck(torch.ops.fusedops.inverted_residual.default,
                          _opcheck_args(layout, expand, stride, requires_grad))


def test_opcheck_backward_op():
    args = _opcheck_args("channels_last", True, 1, False, "hardswish")
    go = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fusedops._inverted_residual_backward.default,
                          (go, *args, [True] * 11))


def test_compile_fullgraph_matches_eager():
    x = make_input((2, 8, 10, 10), "channels_last", requires_grad=True)
    weights = make_inverted_residual_weights(8, 32, 8)

    def block(x, *w):
        return fusedops.inverted_residual(x, *w, activation="relu6") * 2

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    y, yc = block(x, *weights), compiled(x, *weights)
    torch.testing.assert_close(yc, y)
    g = torch.autograd.grad(y.sum(), [x, weights[0]])
    gc = torch.autograd.grad(yc.sum(), [x, weights[0]])
    for a, b in zip(gc, g):
        torch.testing.assert_close(a, b)


def test_export_dynamic_batch():
    weights = make_inverted_residual_weights(8, 32, 8, requires_grad=False)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, w in zip(("ew", "eb", "dw", "db", "pw", "pb"), weights):
                self.register_buffer(name, w)

        def forward(self, x):
            return fusedops.inverted_residual(x, self.ew, self.eb, self.dw, self.db, self.pw, self.pb)

    x = make_input((2, 8, 9, 9), "channels_last")
    exported = torch.export.export(Block(), (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    x3 = make_input((3, 8, 9, 9), "channels_last")
    torch.testing.assert_close(exported.module()(x3), Block()(x3))


# ---------------------------------------------------------------------------------------------------
# 4. Arguments


def test_defaults_padding_and_residual():
    x = make_input((1, 8, 9, 9), "channels_last")
    weights = make_inverted_residual_weights(8, 24, 8, kernel=5, requires_grad=False)
    y = fusedops.inverted_residual(x, *weights, dilation=2)  # padding 4, residual on
    expected = inverted_residual_reference(x, *weights, 1, 4, 2, "relu6", True)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    # Stride 2 or other output channels: no residual.
    y2 = fusedops.inverted_residual(x, *weights, stride=2)
    torch.testing.assert_close(y2, inverted_residual_reference(x, *weights, 2, 2, 1, "relu6", False),
                               rtol=1e-5, atol=1e-5)


def test_residual_with_mismatched_shapes_is_an_error():
    x = make_input((1, 8, 9, 9), "channels_last")
    weights = make_inverted_residual_weights(8, 24, 16, requires_grad=False)
    with pytest.raises(RuntimeError, match="residual needs the block's output to have the input's shape"):
        fusedops.inverted_residual(x, *weights, residual=True)
    with pytest.raises(RuntimeError, match="residual needs"):
        fusedops.inverted_residual(x, *make_inverted_residual_weights(8, 24, 8, requires_grad=False), stride=2,
                                   residual=True)


def test_bad_arguments_name_the_argument():
    x = make_input((1, 8, 9, 9), "channels_last")
    ew, eb, dw, db, pw, pb = make_inverted_residual_weights(8, 24, 8, requires_grad=False)
    with pytest.raises(ValueError, match="activation must be one of"):
        fusedops.inverted_residual(x, ew, eb, dw, db, pw, pb, activation="gelu")
    with pytest.raises(TypeError, match=r"se must be None or a tuple \(reduce_weight, reduce_bias"):
        fusedops.inverted_residual(x, ew, eb, dw, db, pw, pb, se=(pw, pb, "sigmoid"))
    reduce, expand = torch.randn(4, 24, 1, 1), torch.randn(24, 4, 1, 1)
    with pytest.raises(TypeError, match="se's gate must be 'hardsigmoid' or 'sigmoid'"):
        fusedops.inverted_residual(x, ew, eb, dw, db, pw, pb, se=(reduce, None, expand, None, None))
    with pytest.raises(RuntimeError, match="se_gate must be 'hardsigmoid' or 'sigmoid'; got 'tanh'"):
        fusedops.inverted_residual(x, ew, eb, dw, db, pw, pb, se=(reduce, None, expand, None, "tanh"))
    with pytest.raises(ValueError, match="se_activation must be one of"):
        fusedops.inverted_residual(x, ew, eb, dw, db, pw, pb, se=(reduce, None, expand, None, "sigmoid", "gelu"))
    with pytest.raises(RuntimeError, match=r"se_expand_weight must have shape \(24, 4, 1, 1\)"):
        fusedops.inverted_residual(x, ew, eb, dw, db, pw, pb, se=(reduce, None, expand[:8], None, "sigmoid"))
    with pytest.raises(TypeError, match="residual must be"):
        fusedops.inverted_residual(x, ew, eb, dw, db, pw, pb, residual="yes")
    with pytest.raises(RuntimeError, match="expand_bias is given without expand_weight"):
        fusedops.inverted_residual(x, None, eb, dw[:8], db[:8], pw[:, :8], pb)
    with pytest.raises(RuntimeError, match=r"dw_weight must have shape \(8, 1, kH, kW\)"):
        fusedops.inverted_residual(x, None, None, dw, db, pw, pb)
    with pytest.raises(RuntimeError, match="project_weight must have shape"):
        fusedops.inverted_residual(x, ew, eb, dw, db, pw[:, :10], pb)


# ---------------------------------------------------------------------------------------------------
# 5. Packed weights


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16))
@pytest.mark.parametrize("expand", (True, False))
def test_packed_weights_give_the_same_result(dtype, expand):
    from fusedops.ops.inverted_residual import pack_weights

    x = make_input((2, 8, 9, 9), "channels_last", dtype=dtype)
    weights = make_inverted_residual_weights(8, 32, 8, expand=expand, dtype=dtype, requires_grad=False)
    packed = pack_weights(x, *weights)
    assert packed.dim() == 1 and packed.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    expected = fusedops.inverted_residual(x, *weights)
    # Packed once, used for inputs of other sizes and layouts.
    torch.testing.assert_close(fusedops.inverted_residual(x, *weights, packed_weights=packed), expected, rtol=0,
                               atol=0)
    x2 = make_input((1, 8, 5, 7), "nchw", dtype=dtype)
    torch.testing.assert_close(fusedops.inverted_residual(x2, *weights, packed_weights=packed),
                               fusedops.inverted_residual(x2, *weights), rtol=0, atol=0)


def test_packed_weights_of_another_block_are_refused():
    from fusedops.ops.inverted_residual import pack_weights

    x = make_input((1, 8, 6, 6), "channels_last")
    weights = make_inverted_residual_weights(8, 32, 8, requires_grad=False)
    other = make_inverted_residual_weights(8, 24, 8, requires_grad=False)
    with pytest.raises(RuntimeError, match="packed_weights were not packed for this block"):
        fusedops.inverted_residual(x, *weights, packed_weights=pack_weights(x, *other))
    with pytest.raises(RuntimeError, match="packed_weights were not packed for this block"):
        fusedops.inverted_residual(x.double(), *[w.double() for w in weights],
                                   packed_weights=pack_weights(x, *weights))
    assert pack_weights(x.to("meta"), *[w.to("meta") for w in weights]) is None


def test_frozen_module_packs_once_and_repacks_after_a_load():
    block = fusedops.nn.InvertedResidual(8, 8, 1, 4).eval()
    x = make_input((1, 8, 7, 7), "channels_last")
    fusedops.freeze(block)
    with torch.no_grad():
        y = block(x)
        packed = block._packed[1]
        block(x)
        assert block._packed[1] is packed
        state = {k: v + 0.1 if k.endswith("weight") else v for k, v in block.state_dict().items()}
        block.load_state_dict(state)
        y2 = block(x)
        assert block._packed[1] is not packed
        fusedops.unfreeze(block)
        torch.testing.assert_close(y2, block(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(y, y2)


# ---------------------------------------------------------------------------------------------------
# 6. Squeeze-excitation (MobileNetV3, EfficientNet)


@pytest.mark.parametrize("case", (
    dict(shape=(1, 8, 9, 9), hidden=32, cout=8, se=dict(squeeze=8)),
    dict(shape=(3, 8, 9, 9), hidden=32, cout=8, se=dict(squeeze=8, gate="sigmoid", activation="silu"),
         activation="silu"),
    dict(shape=(2, 6, 11, 10), hidden=36, cout=10, stride=2, kernel=5, activation="hardswish", se=dict(squeeze=12)),
    dict(shape=(1, 16, 12, 12), hidden=16, cout=16, expand=False, se=dict(squeeze=8, biases=False), biases=False),
    dict(shape=(4, 16, 7, 7), hidden=16, cout=24, expand=False, stride=2, activation="relu",
         se=dict(squeeze=4, gate="sigmoid")),
    dict(shape=(1, 12, 8, 8), hidden=72, cout=12, dilation=2, se=dict(squeeze=24, activation=None)),
))
@pytest.mark.parametrize("layout", ("channels_last", "nchw", "strided"))
def test_squeeze_excitation_parity(case, layout):
    case = dict(case)
    shape, hidden, cout = case.pop("shape"), case.pop("hidden"), case.pop("cout")
    check_inverted_residual_parity(shape, hidden, cout, layout=layout, **case)


@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16, torch.float16))
def test_squeeze_excitation_dtypes(dtype):
    check_inverted_residual_parity((2, 8, 7, 7), 24, 8, dtype=dtype, activation="hardswish", se=dict(squeeze=8))


@pytest.mark.parametrize("threads", (2, 3))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
@pytest.mark.parametrize("shape, hidden, cout, se", (
    ((1, 40, 7, 7), 240, 40, None),              # 3 vectors of outputs, the last one half full
    ((1, 160, 7, 7), 960, 72, dict(squeeze=24)),  # 5 vectors, 5 panels' worth split at a panel's middle
    ((1, 96, 14, 14), 576, 96, None),             # 196 pixels: even chunks
))
def test_parity_project_shared_by_vectors(shape, hidden, cout, se, layout, threads):
    # One image, whole: the project GEMM's items are single vectors of output channels, a thread's run of them
    # starting or ending in the middle of a panel.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_inverted_residual_parity(shape, hidden, cout, layout=layout, se=se, backward=False)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("threads", (2, 3))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
@pytest.mark.parametrize("case", (
    dict(shape=(1, 48, 1, 1), hidden=288, cout=48, se=dict(squeeze=72)),  # a 1x1 map, residual
    dict(shape=(1, 32, 4, 4), hidden=192, cout=40, kernel=5, activation="silu",
         se=dict(squeeze=48, gate="sigmoid", activation="silu")),
    dict(shape=(1, 24, 6, 7), hidden=144, cout=24, stride=2, activation="hardswish", se=dict(squeeze=36)),
    dict(shape=(1, 96, 3, 3), hidden=96, cout=96, expand=False, se=dict(squeeze=24, biases=False), biases=False),
    dict(shape=(1, 64, 5, 5), hidden=384, cout=64),  # no squeeze-excitation
    dict(shape=(1, 40, 2, 2), hidden=240, cout=40, dtype=torch.float64, se=dict(squeeze=64)),
    dict(shape=(1, 40, 2, 3), hidden=240, cout=40, dtype=torch.bfloat16, se=dict(squeeze=64)),
))
def test_parity_hidden_slices(case, layout, threads):
    # One image on a small map: each thread takes a slice of the hidden channels through expand, depthwise, the
    # squeeze-excitation's reduce (a partial vector per slice), its gates and the project GEMM (a partial output
    # per slice, added up afterwards).
    case = dict(case)
    shape, hidden, cout = case.pop("shape"), case.pop("hidden"), case.pop("cout")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_inverted_residual_parity(shape, hidden, cout, layout=layout, backward=False, **case)
    finally:
        torch.set_num_threads(before)


def test_squeeze_excitation_large_map_expands_in_slices():
    # 96x96 expanded slices of 64 channels exceed a band's tile budget: the image is expanded a few panels at a
    # time.
    check_inverted_residual_parity((1, 8, 96, 96), 64, 8, stride=2, se=dict(squeeze=16), backward=False)


@pytest.mark.parametrize("threads", (1, 2))
def test_squeeze_excitation_rounds_of_images(threads):
    # 5 images whose depthwise maps (28x28x192 floats, 600 KB each) exceed the kernel's image budget together: they
    # run in rounds (the last one short), each image as strips of rows or whole.
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        check_inverted_residual_parity((5, 16, 28, 28), 192, 16, activation="hardswish",
                                       se=dict(squeeze=48, gate="sigmoid"), backward=False)
        check_inverted_residual_parity((3, 16, 28, 28), 192, 24, stride=2, se=dict(squeeze=48), backward=False)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("threads", (1, 2))
def test_squeeze_excitation_threads_agree(threads):
    # Whole images in parallel (batch >= threads) and one image at a time with the threads splitting each step
    # give the same values.
    x = make_input((3, 8, 10, 10), "channels_last")
    weights = make_inverted_residual_weights(8, 48, 8, requires_grad=False)
    se = make_squeeze_excitation(48, 12, requires_grad=False)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        y = fusedops.inverted_residual(x, *weights, se=se)
        single = [fusedops.inverted_residual(x[i:i + 1], *weights, se=se) for i in range(3)]
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(y, torch.cat(single), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gate", ("hardsigmoid", "sigmoid"))
@pytest.mark.parametrize("expand", (True, False))
def test_squeeze_excitation_gradcheck_float64(gate, expand):
    x = make_input((2, 3, 5, 6), "channels_last", dtype=torch.float64, requires_grad=True)
    weights = make_inverted_residual_weights(3, 6, 3, expand=expand, dtype=torch.float64)
    se = make_squeeze_excitation(6 if expand else 3, 2, gate=gate, activation="silu", dtype=torch.float64)
    inputs = [x] + [w for w in weights if w is not None] + list(se[:4])

    def fn(x, *ws):
        it = iter(ws)
        full = [None if w is None else next(it) for w in weights]
        return fusedops.inverted_residual(x, *full, activation="hardswish", se=(*it, *se[4:]))

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_squeeze_excitation_backward_op_returns_only_requested():
    x = make_input((1, 4, 5, 5), "channels_last")
    weights = make_inverted_residual_weights(4, 8, 4, requires_grad=False)
    se = make_squeeze_excitation(8, 2, requires_grad=False)
    go = torch.randn(1, 4, 5, 5)
    mask = [False, False, False, False, False, True, False, True, False, False, True]
    grads = torch.ops.fusedops._inverted_residual_backward(go, x, *weights, *se[:4], [1, 1], [1, 1], [1, 1], "relu6",
                                                           True, "relu", "hardsigmoid", mask)
    assert [g.numel() > 0 for g in grads] == mask


@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
@pytest.mark.parametrize("requires_grad", (True, False))
def test_squeeze_excitation_opcheck(layout, requires_grad):
    x = make_input((2, 4, 6, 5), layout, dtype=torch.float64, requires_grad=requires_grad)
    weights = make_inverted_residual_weights(4, 12, 4, dtype=torch.float64, requires_grad=requires_grad)
    se = make_squeeze_excitation(12, 4, gate="sigmoid", dtype=torch.float64, requires_grad=requires_grad)
    args = (x, *weights, *se[:4], [1, 1], [1, 1], [1, 1], "hardswish", True, "silu", "sigmoid")
    torch.library.opcheck(torch.ops.fusedops.inverted_residual.default, args)
    go = torch.randn(2, 4, 6, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fusedops._inverted_residual_backward.default,
                          (go, *[a.detach() if isinstance(a, torch.Tensor) else a for a in args], [True] * 11))


def test_squeeze_excitation_compile_fullgraph_matches_eager():
    x = make_input((2, 8, 10, 10), "channels_last", requires_grad=True)
    weights = make_inverted_residual_weights(8, 32, 8)
    se = make_squeeze_excitation(32, 8)

    def block(x, *w):
        return fusedops.inverted_residual(x, *w[:6], activation="hardswish", se=(*w[6:], "hardsigmoid", "relu"))

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    y, yc = block(x, *weights, *se[:4]), compiled(x, *weights, *se[:4])
    torch.testing.assert_close(yc, y)
    g = torch.autograd.grad(y.sum(), [x, se[0], se[3]])
    gc = torch.autograd.grad(yc.sum(), [x, se[0], se[3]])
    for a, b in zip(gc, g):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_squeeze_excitation_packed_weights(dtype):
    from fusedops.ops.inverted_residual import pack_weights

    x = make_input((2, 8, 9, 9), "channels_last", dtype=dtype)
    weights = make_inverted_residual_weights(8, 32, 8, dtype=dtype, requires_grad=False)
    se = make_squeeze_excitation(32, 8, gate="sigmoid", dtype=dtype, requires_grad=False)
    packed = pack_weights(x, *weights, se=se)
    expected = fusedops.inverted_residual(x, *weights, se=se)
    torch.testing.assert_close(fusedops.inverted_residual(x, *weights, se=se, packed_weights=packed), expected,
                               rtol=0, atol=0)
    # Packed without the squeeze-excitation (or with another width): refused.
    with pytest.raises(RuntimeError, match="packed_weights were not packed for this block"):
        fusedops.inverted_residual(x, *weights, se=se, packed_weights=pack_weights(x, *weights))
    with pytest.raises(RuntimeError, match="packed_weights were not packed for this block"):
        fusedops.inverted_residual(x, *weights, packed_weights=packed)
