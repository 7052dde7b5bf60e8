"""fusedops.ghost_module (GhostNet's Ghost module, batch norms folded) on the native CPU kernels: parity of the output
and of every gradient with the unfused float64 reference, gradcheck, opcheck, torch.compile and export, packed
weights, argument handling."""

import pytest
import torch

import fusedops
from fusedops.ops.ghost_module import pack_weights

from conftest import (CL, assert_ghost_matches, bottleneck_op, check_ghost_bottleneck, check_ghost_module_parity,
                      dw_stage, ghost_bottleneck_case, ghost_module_reference, make_ghost_module_weights, make_input,
                      requires_ops)

pytestmark = requires_ops

ACTS = (None, "relu", "relu6", "hardswish", "silu")


# ---------------------------------------------------------------------------------------------------
# 1. Parity grids


@pytest.mark.parametrize("layout", ("channels_last", "nchw", "noncontig"))
@pytest.mark.parametrize("ratio", (2, 3, 4))
@pytest.mark.parametrize("dw_size", (3, 5))
def test_parity_ratio_kernel_layout(layout, ratio, dw_size):
    # 13 output channels: not a multiple of any ratio, so the cheap half is cut.
    check_ghost_module_parity((2, 8, 9, 11), 13, ratio, dw_size, layout=layout)


@pytest.mark.parametrize("stride", (2, (2, 1), 3))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_parity_stride(stride, layout):
    check_ghost_module_parity((2, 6, 11, 10), 16, stride=stride, layout=layout)


@pytest.mark.parametrize("activation", ACTS)
def test_parity_activations(activation):
    check_ghost_module_parity((2, 10, 8, 9), 24, activation=activation)


@pytest.mark.parametrize("layout", ("channels_last", "nchw", "noncontig"))
@pytest.mark.parametrize("activation", (None, "relu"))
def test_parity_residual(layout, activation):
    # GhostNet's second Ghost module: no activation, the shortcut added inside the op.
    check_ghost_module_parity((2, 12, 7, 9), 20, activation=activation, residual=True, layout=layout)


def test_parity_without_biases():
    check_ghost_module_parity((2, 9, 8, 8), 18, biases=False)
    check_ghost_module_parity((1, 9, 8, 8), 17, 3, biases=False, layout="nchw")


@pytest.mark.parametrize("out_channels, ratio", ((8, 2), (9, 3), (16, 4), (5, 4)))
def test_parity_channel_edges(out_channels, ratio):
    # out == init * ratio (nothing cut), a single cheap channel, and out == init (no cheap channel at all: 5 with
    # ratio 4 has init 2, so out 5 keeps 3; out_channels=init is tested below).
    check_ghost_module_parity((2, 7, 6, 5), out_channels, ratio)


def test_out_channels_equal_to_init_runs_no_cheap_channel():
    x = make_input((2, 6, 5, 5), "channels_last")
    pw, pb, cw, cb = make_ghost_module_weights(6, 8, requires_grad=False)  # init 4
    y = fusedops.ghost_module(x, pw, pb, cw, cb, 4)
    torch.testing.assert_close(y, ghost_module_reference(x, pw, pb, cw, cb, 4, 1, "relu"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
@pytest.mark.parametrize("shape, out_channels, dw_size", (
    ((1, 16, 112, 112), 16, 3),   # GhostNet's first bottleneck: many bands per image
    ((1, 24, 56, 56), 72, 3),
    ((2, 40, 28, 28), 120, 5),
    ((1, 112, 14, 14), 672, 3),
    ((1, 160, 7, 7), 960, 5),     # the last stage: whole 7x7 images in one band
    ((2, 64, 1, 1), 128, 3),      # 1x1 map
))
def test_parity_ghostnet_shapes(layout, shape, out_channels, dw_size):
    check_ghost_module_parity(shape, out_channels, dw_size=dw_size, layout=layout, backward=shape[0] > 1)


@pytest.mark.parametrize("threads", (1, 2))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("pixels", (1, 2))
@pytest.mark.parametrize("channels", (40, 100, 120, 136, 200))
def test_pointwise_of_one_or_two_pixels(channels, pixels, dtype, threads):
    # Tiles of one or two pixels (1x1 maps: the late blocks at batch 1) run blocks of several GEMM panels
    # (pointwise_micro_panels). The channel counts end a block with a partial panel of more or less than a vector
    # and leave panels over for the one-panel kernel (40: 1.25 panels of float32; 100, 120: 4 panels, the last
    # cut; 136, 200). A pixel's sums are added in the order of the kernels of taller tiles: its outputs are the same
    # bits in a tile of three pixels, and match the float64 reference.
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = make_input((1, 24, 1, pixels), "channels_last", dtype=dtype)
        pw, pb, cw, cb = make_ghost_module_weights(24, 2 * channels, dtype=dtype, requires_grad=False)
        y = fusedops.ghost_module(x, pw, pb, cw, cb, channels, activation="relu6")
        ref = ghost_module_reference(x.double(), pw.double(), pb.double(), cw.double(), cb.double(), channels, 1,
                                     "relu6")
        tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
        torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol)
        wider = torch.cat([x, x[..., :1], x[..., :1]], dim=3)[..., :3].contiguous(memory_format=CL)
        y3 = fusedops.ghost_module(wider, pw, pb, cw, cb, channels, activation="relu6")
        assert torch.equal(y3[..., :pixels], y)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", (1, 2, 3))
def test_parity_thread_counts(threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_ghost_module_parity((3, 8, 23, 10), 20, 3, 5, backward=False)
        check_ghost_module_parity((1, 8, 40, 12), 16, residual=True, layout="nchw", backward=False)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("threads", (2, 3))
@pytest.mark.parametrize("ratio, out_channels, residual", ((2, 130, False), (3, 99, True), (4, 200, False)))
def test_parity_channel_slices(threads, ratio, out_channels, residual):
    # Small maps at batch 1 split the primary's channels between the threads instead of the rows (a 7x7 map is one
    # strip, which would run on one thread): slices of whole GEMM panels, uneven ones included (65, 33 and 50
    # primary channels), each with its cheap channels and its part of the residual.
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_ghost_module_parity((1, 24, 7, 7), out_channels, ratio, residual=residual)
        check_ghost_module_parity((1, 24, 6, 8), out_channels, ratio, dw_size=5, residual=residual, backward=False)
        check_ghost_module_parity((1, 24, 7, 7), out_channels, ratio, dtype=torch.bfloat16, backward=False)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_parity_dtypes(dtype, layout):
    check_ghost_module_parity((2, 8, 9, 7), 14, 3, dtype=dtype, layout=layout, residual=True)


def test_empty_batch():
    x = make_input((0, 8, 6, 6), "channels_last", requires_grad=True)
    weights = make_ghost_module_weights(8, 12)
    y = fusedops.ghost_module(x, *weights, 12)
    assert y.shape == (0, 12, 6, 6)
    grads = torch.autograd.grad(y.sum(), [x, weights[0], weights[2]])
    assert grads[0].shape == x.shape
    assert torch.count_nonzero(grads[1]) == 0 and torch.count_nonzero(grads[2]) == 0


# ---------------------------------------------------------------------------------------------------
# 2. Gradients


@pytest.mark.parametrize("activation", ("relu", "hardswish", None))
@pytest.mark.parametrize("ratio", (2, 3))
def test_gradcheck_float64(activation, ratio):
    x = make_input((2, 3, 5, 4), "channels_last", dtype=torch.float64, requires_grad=True)
    weights = make_ghost_module_weights(3, 5, ratio, dtype=torch.float64)
    res = make_input((2, 5, 5, 4), "nchw", dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x, *w: fusedops.ghost_module(x, *w[:4], 5, activation=activation, residual=w[4]),
                             (x, *weights, res))


@pytest.mark.parametrize("wanted", ((True, False, False, False, False), (False, True, False, True, False),
                                    (False, False, True, False, True)))
def test_unrequested_grads(wanted):
    x = make_input((2, 6, 7, 7), "channels_last", requires_grad=wanted[0])
    weights = make_ghost_module_weights(6, 10, 3, requires_grad=False)
    for w, want in zip(weights, wanted[1:]):
        w.requires_grad_(want)
    y = fusedops.ghost_module(x, *weights, 10)
    leaves = [t for t, want in zip([x, *weights], wanted) if want]
    grads = torch.autograd.grad(y.square().sum(), leaves)
    ref_leaves = [t.detach().double().requires_grad_(want) for t, want in zip([x, *weights], wanted)]
    ref = ghost_module_reference(*ref_leaves, 10, 1, "relu")
    ref_grads = torch.autograd.grad(ref.square().sum(), [t for t, want in zip(ref_leaves, wanted) if want])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


def test_backward_op_returns_empty_for_unrequested():
    x = make_input((1, 4, 5, 5), "channels_last")
    pw, pb, cw, cb = make_ghost_module_weights(4, 6, requires_grad=False)
    go = torch.randn(1, 6, 5, 5)
    grads = torch.ops.fusedops._ghost_module_backward(go, x, pw, pb, cw, cb, 6, [1, 1], "relu",
                                                      [False, True, False, False, True])
    assert [g.numel() == 0 for g in grads] == [True, False, True, True, False]


def test_double_backward_raises():
    x = make_input((1, 4, 5, 5), "channels_last", dtype=torch.float64, requires_grad=True)
    weights = make_ghost_module_weights(4, 6, dtype=torch.float64)
    y = fusedops.ghost_module(x, *weights, 6)
    (g,) = torch.autograd.grad(y.square().sum(), [x], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward .* of ghost_module is not supported"):
        g.sum().backward()


def test_backward_keeps_only_the_input():
    # The saved tensors are the input and the weights: the primary half is recomputed, not kept.
    x = make_input((2, 8, 16, 16), "channels_last", requires_grad=True)
    weights = make_ghost_module_weights(8, 32)
    y = fusedops.ghost_module(x, *weights, 32)
    saved = [t.data_ptr() for t in (x, *weights)]
    node = y.grad_fn
    kept = [getattr(node, name) for name in dir(node) if name.startswith("_saved_")]
    tensors = [t for t in kept if isinstance(t, torch.Tensor)]
    assert all(t.data_ptr() in saved for t in tensors)


# ---------------------------------------------------------------------------------------------------
# 3. opcheck, compile, export


def _opcheck_args(layout, ratio, stride, requires_grad, residual):
    x = make_input((2, 4, 6, 5), layout, dtype=torch.float64, requires_grad=requires_grad)
    weights = make_ghost_module_weights(4, 7, ratio, dtype=torch.float64, requires_grad=requires_grad)
    out_h, out_w = (6 - 1) // stride + 1, (5 - 1) // stride + 1
    res = make_input((2, 7, out_h, out_w), layout, dtype=torch.float64, requires_grad=requires_grad) \
        if residual else None
    return (x, *weights, res, 7, [stride, stride], "relu")


@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
@pytest.mark.parametrize("ratio", (2, 3))
@pytest.mark.parametrize("stride", (1, 2))
@pytest.mark.parametrize("requires_grad, residual", ((True, True), (True, False), (False, False)))
def test_opcheck(layout, ratio, stride, requires_grad, residual):
    torch.library.opcheck(torch.ops.fusedops.ghost_module.default,
                          _opcheck_args(layout, ratio, stride, requires_grad, residual))


def test_opcheck_backward_op():
    args = _opcheck_args("channels_last", 3, 1, False, False)
    go = torch.randn(2, 7, 6, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fusedops._ghost_module_backward.default,
                          (go, *args[:5], *args[6:], [True] * 5))


def test_compile_fullgraph_matches_eager():
    x = make_input((2, 8, 10, 10), "channels_last", requires_grad=True)
    weights = make_ghost_module_weights(8, 12, 3)
    res = make_input((2, 12, 10, 10), "channels_last", requires_grad=True)

    def block(x, res, *w):
        return fusedops.ghost_module(x, *w, 12, residual=res) * 2

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    y, yc = block(x, res, *weights), compiled(x, res, *weights)
    torch.testing.assert_close(yc, y)
    g = torch.autograd.grad(y.sum(), [x, res, weights[0], weights[2]])
    gc = torch.autograd.grad(yc.sum(), [x, res, weights[0], weights[2]])
    for a, b in zip(gc, g):
        torch.testing.assert_close(a, b)


def test_export_dynamic_batch():
    weights = make_ghost_module_weights(8, 16, requires_grad=False)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, w in zip(("pw", "pb", "cw", "cb"), weights):
                self.register_buffer(name, w)

        def forward(self, x):
            return fusedops.ghost_module(x, self.pw, self.pb, self.cw, self.cb, 16)

    x = make_input((2, 8, 9, 9), "channels_last")
    exported = torch.export.export(Block(), (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    x3 = make_input((3, 8, 9, 9), "channels_last")
    torch.testing.assert_close(exported.module()(x3), Block()(x3))


def test_meta_tensors():
    x = torch.empty(2, 8, 9, 9, device="meta").to(memory_format=CL)
    weights = [w.to("meta") for w in make_ghost_module_weights(8, 20, 3, requires_grad=False)]
    y = torch.ops.fusedops.ghost_module(x, *weights, None, 20, [2, 2], "relu")
    assert y.shape == (2, 20, 5, 5) and y.is_contiguous(memory_format=CL)


# ---------------------------------------------------------------------------------------------------
# 4. Arguments


def test_bad_arguments_name_the_argument():
    x = make_input((1, 8, 9, 9), "channels_last")
    pw, pb, cw, cb = make_ghost_module_weights(8, 16, requires_grad=False)
    # The native op's check (eager) or the wrapper's (other paths), with the same words.
    with pytest.raises((RuntimeError, ValueError), match="activation must be one of"):
        fusedops.ghost_module(x, pw, pb, cw, cb, 16, activation="gelu")
    with pytest.raises(TypeError, match="out_channels must be an int"):
        fusedops.ghost_module(x, pw, pb, cw, cb, 16.0)
    with pytest.raises(RuntimeError, match=r"out_channels must be between 8 \(primary_weight's output channels\) "
                       r"and 16"):
        fusedops.ghost_module(x, pw, pb, cw, cb, 17)
    with pytest.raises(RuntimeError, match=r"primary_weight must have shape \(out_channels, 8, 1, 1\)"):
        fusedops.ghost_module(x, torch.randn(8, 8, 3, 3), pb, cw, cb, 16)
    with pytest.raises(RuntimeError, match="cheap_weight must have an odd kernel size"):
        fusedops.ghost_module(x, pw, pb, torch.randn(8, 1, 2, 2), cb, 16)
    with pytest.raises(RuntimeError, match="cheap_weight has 12 output channels, which is not a positive multiple"):
        fusedops.ghost_module(x, pw, pb, torch.randn(12, 1, 3, 3), None, 16)
    with pytest.raises(RuntimeError, match=r"residual must have the output's shape \[1, 16, 9, 9\]"):
        fusedops.ghost_module(x, pw, pb, cw, cb, 16, residual=torch.randn(1, 16, 9, 8))
    with pytest.raises(RuntimeError, match="residual dtype torch.float64 does not match input dtype"):
        fusedops.ghost_module(x, pw, pb, cw, cb, 16, residual=torch.randn(1, 16, 9, 9, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="stride must be positive"):
        fusedops.ghost_module(x, pw, pb, cw, cb, 16, stride=0)
    with pytest.raises(RuntimeError, match="input has an empty map"):
        fusedops.ghost_module(make_input((1, 8, 0, 4), "nchw"), pw, pb, cw, cb, 16)


# ---------------------------------------------------------------------------------------------------
# 5. Packed weights


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16))
@pytest.mark.parametrize("ratio", (2, 3))
def test_packed_weights_give_the_same_result(dtype, ratio):
    x = make_input((2, 8, 9, 9), "channels_last", dtype=dtype)
    weights = make_ghost_module_weights(8, 15, ratio, dtype=dtype, requires_grad=False)
    packed = pack_weights(x, *weights, 15)
    assert packed.dim() == 1 and packed.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    expected = fusedops.ghost_module(x, *weights, 15)
    torch.testing.assert_close(fusedops.ghost_module(x, *weights, 15, packed_weights=packed), expected, rtol=0,
                               atol=0)
    # Packed once, used for inputs of other sizes and layouts.
    x2 = make_input((1, 8, 5, 7), "nchw", dtype=dtype)
    torch.testing.assert_close(fusedops.ghost_module(x2, *weights, 15, packed_weights=packed),
                               fusedops.ghost_module(x2, *weights, 15), rtol=0, atol=0)


def test_packed_weights_of_another_module_are_refused():
    x = make_input((1, 8, 9, 9), "channels_last")
    packed = pack_weights(x, *make_ghost_module_weights(8, 16, requires_grad=False), 16)
    other = make_ghost_module_weights(8, 16, dw_size=5, requires_grad=False)
    with pytest.raises(RuntimeError, match="packed_weights were not packed for this block"):
        fusedops.ghost_module(x, *other, 16, packed_weights=packed)


def test_reference_backend_matches():
    x = make_input((2, 8, 9, 9), "nchw")
    weights = make_ghost_module_weights(8, 13, 3, requires_grad=False)
    with fusedops.use_backend("reference"):
        expected = fusedops.ghost_module(x, *weights, 13, activation="hardswish")
    torch.testing.assert_close(fusedops.ghost_module(x, *weights, 13, activation="hardswish"), expected, rtol=1e-5,
                               atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# 6. The module followed by a depthwise convolution (_ghost_module_depthwise: GhostNet's stride-2 bottlenecks)


def _then_depthwise_case(shape, out_channels, ratio, dw_size, dtype=torch.float32, layout="channels_last",
                         cheap_size=3):
    x = make_input(shape, layout, dtype=dtype)
    weights = make_ghost_module_weights(shape[1], out_channels, ratio, cheap_size, dtype=dtype, requires_grad=False)
    k = dw_size
    dw_w = (torch.randn(out_channels, 1, k, k, dtype=torch.float64) / k).to(dtype)
    dw_b = (0.5 * torch.randn(out_channels, dtype=torch.float64)).to(dtype)
    return x, weights, dw_w, dw_b


def _then_depthwise_reference(x, weights, out_channels, stride, activation, dw_w, dw_b, dw_stride):
    """ghost_module then a depthwise convolution, unfused, in float64."""
    up = [None if t is None else t.double() for t in weights]
    module = ghost_module_reference(x.double(), *up, out_channels, stride, activation)
    k = dw_w.shape[2]
    return torch.nn.functional.conv2d(module, dw_w.double(), None if dw_b is None else dw_b.double(), dw_stride,
                                      k // 2, 1, out_channels)


def _then_depthwise(x, weights, out_channels, stride, activation, dw_w, dw_b, dw_stride, packed=None):
    s, ds = (stride, stride) if isinstance(stride, int) else stride, \
        (dw_stride, dw_stride) if isinstance(dw_stride, int) else dw_stride
    return torch.ops.fusedops._ghost_module_depthwise(x, *weights, out_channels, list(s), activation or "none", dw_w,
                                                      dw_b, list(ds), packed)


def _check_then_depthwise(shape, out_channels, ratio=2, dw_size=3, dw_stride=2, *, stride=1, activation="relu",
                          dtype=torch.float32, layout="channels_last", cheap_size=3, biases=True):
    x, weights, dw_w, dw_b = _then_depthwise_case(shape, out_channels, ratio, dw_size, dtype, layout, cheap_size)
    if not biases:
        weights[1] = weights[3] = dw_b = None
    y = _then_depthwise(x, weights, out_channels, stride, activation, dw_w, dw_b, dw_stride)
    expected = _then_depthwise_reference(x, weights, out_channels, stride, activation, dw_w, dw_b, dw_stride)
    assert y.dtype == dtype and y.shape == expected.shape
    assert_ghost_matches(y, expected, dtype, layout)
    return y


@pytest.mark.parametrize("layout", ("channels_last", "nchw", "noncontig"))
@pytest.mark.parametrize("ratio, out_channels", ((2, 13), (3, 12), (4, 9)))
@pytest.mark.parametrize("dw_size, dw_stride", ((3, 2), (5, 2), (3, 1), (5, (2, 1))))
def test_then_depthwise_parity(layout, ratio, out_channels, dw_size, dw_stride):
    _check_then_depthwise((2, 8, 13, 11), out_channels, ratio, dw_size, dw_stride, layout=layout)


@pytest.mark.parametrize("activation", ACTS)
def test_then_depthwise_activations(activation):
    _check_then_depthwise((2, 6, 9, 10), 10, activation=activation)


@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_then_depthwise_dtypes(dtype, layout):
    _check_then_depthwise((2, 8, 9, 7), 14, 3, dtype=dtype, layout=layout)


def test_then_depthwise_edges():
    _check_then_depthwise((1, 5, 4, 4), 7, 2, 5, 3, biases=False)  # map barely larger than the kernel
    _check_then_depthwise((3, 8, 11, 9), 10, 2, 3, 2, stride=2)  # a strided primary convolution
    _check_then_depthwise((2, 8, 9, 9), 8, 2, 3, 2, cheap_size=5)  # out_channels == init: no cheap channel kept
    _check_then_depthwise((1, 4, 1, 1), 6, 3, 3, 2)


@pytest.mark.parametrize("shape, out_channels, dw_size", (
    ((1, 16, 112, 112), 48, 3),  # GhostNet's first stride-2 bottleneck
    ((2, 24, 56, 56), 72, 5),
    ((2, 40, 28, 28), 240, 3),
    ((3, 112, 14, 14), 672, 5),
))
def test_then_depthwise_ghostnet_shapes(shape, out_channels, dw_size):
    _check_then_depthwise(shape, out_channels, 2, dw_size, 2)


@pytest.mark.parametrize("threads", (1, 2, 3))
def test_then_depthwise_thread_counts(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_then_depthwise((3, 8, 31, 17), 12, 2, 3, 2)
        _check_then_depthwise((1, 8, 40, 12), 12, 3, 5, 2)
    finally:
        torch.set_num_threads(before)


def test_then_depthwise_packed_weights_and_wrapper():
    from fusedops.ops.ghost_module import ghost_module_then_depthwise

    x, weights, dw_w, dw_b = _then_depthwise_case((2, 8, 10, 10), 16, 2, 3)
    packed = pack_weights(x, *weights, 16)
    y = _then_depthwise(x, weights, 16, 1, "relu", dw_w, dw_b, 2)
    torch.testing.assert_close(_then_depthwise(x, weights, 16, 1, "relu", dw_w, dw_b, 2, packed), y, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(ghost_module_then_depthwise(x, *weights, 16, (1, 1), "relu", dw_w, dw_b, (2, 2),
                                                               packed), y, rtol=0, atol=0)
    # Gradients wanted: the two differentiable ops, the same function.
    xg = x.detach().requires_grad_()
    composed = ghost_module_then_depthwise(xg, *weights, 16, (1, 1), "relu", dw_w, dw_b, (2, 2))
    assert composed.grad_fn is not None
    torch.testing.assert_close(composed, y, rtol=1e-6, atol=1e-6)


def test_then_depthwise_non_finite_weights_match_the_two_ops():
    x, weights, dw_w, dw_b = _then_depthwise_case((1, 8, 7, 7), 12, 3, 3)
    dw_w[3, 0, 1, 1] = float("inf")
    weights[2][1, 0, 0, 0] = float("nan")
    y = _then_depthwise(x, weights, 12, 1, "relu", dw_w, dw_b, 2)
    module = fusedops.ghost_module(x, *weights, 12)
    expected = fusedops.depthwise_conv2d(module, dw_w, dw_b, 2, 1)
    torch.testing.assert_close(y, expected, equal_nan=True)


def test_then_depthwise_empty_batch_and_meta():
    x, weights, dw_w, dw_b = _then_depthwise_case((0, 8, 6, 6), 12, 2, 3)
    assert _then_depthwise(x, weights, 12, 1, "relu", dw_w, dw_b, 2).shape == (0, 12, 3, 3)
    meta = [t.to("meta") for t in (x.new_empty(2, 8, 7, 6).to(memory_format=CL), *weights, dw_w, dw_b)]
    y = torch.ops.fusedops._ghost_module_depthwise(*meta[:5], 12, [1, 1], "relu", meta[5], meta[6], [2, 2])
    assert y.shape == (2, 12, 4, 3) and y.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_then_depthwise_opcheck(layout):
    x, weights, dw_w, dw_b = _then_depthwise_case((2, 4, 7, 6), 7, 3, 3, torch.float64, layout)
    torch.library.opcheck(torch.ops.fusedops._ghost_module_depthwise.default,
                          (x, *weights, 7, [1, 1], "relu", dw_w, dw_b, [2, 2]))


def test_then_depthwise_bad_arguments_name_the_argument():
    x, weights, dw_w, dw_b = _then_depthwise_case((1, 8, 9, 9), 16, 2, 3)
    with pytest.raises(RuntimeError, match=r"dw_weight must have shape \(out_channels=16, 1, kH, kW\) with odd"):
        _then_depthwise(x, weights, 16, 1, "relu", torch.randn(8, 1, 3, 3), dw_b, 2)
    with pytest.raises(RuntimeError, match=r"dw_weight must have shape \(out_channels=16, 1, kH, kW\) with odd"):
        _then_depthwise(x, weights, 16, 1, "relu", torch.randn(16, 1, 2, 2), dw_b, 2)
    with pytest.raises(RuntimeError, match="dw_stride must be positive"):
        _then_depthwise(x, weights, 16, 1, "relu", dw_w, dw_b, 0)
    with pytest.raises(RuntimeError, match=r"dw_bias must have shape \(16,\)"):
        _then_depthwise(x, weights, 16, 1, "relu", dw_w, torch.randn(15), 2)
    with pytest.raises(RuntimeError, match="dw_weight dtype torch.float64 does not match input dtype"):
        _then_depthwise(x, weights, 16, 1, "relu", dw_w.double(), dw_b, 2)
    with pytest.raises(RuntimeError, match="out_channels must be between"):
        _then_depthwise(x, weights, 17, 1, "relu", torch.randn(17, 1, 3, 3), None, 2)


# ---------------------------------------------------------------------------------------------------
# 7. The module of a squeeze-excited input (_ghost_module_excited: GhostNet's bottlenecks with a squeeze-excitation)


def _excited_case(shape, out_channels, ratio=2, reduced=None, dtype=torch.float32, layout="channels_last",
                  residual=False, stride=1):
    n, c, h, w = shape
    s = reduced or max(1, c // 4)
    x = make_input(shape, layout, dtype=dtype)
    weights = make_ghost_module_weights(c, out_channels, ratio, dtype=dtype, requires_grad=False)

    def randn(*size, scale=1.0):
        return (scale * torch.randn(size, dtype=torch.float64)).to(dtype)

    se = [randn(s, c, 1, 1, scale=c ** -0.5), randn(s, scale=0.5), randn(c, s, 1, 1, scale=2 * s ** -0.5),
          randn(c, scale=0.5)]
    oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
    res = make_input((n, out_channels, oh, ow), layout, dtype=dtype) if residual else None
    return x, se, weights, res


def _excited_reference(x, se, weights, res, out_channels, stride, activation, se_activation, se_gate):
    """The squeeze-excitation then ghost_module, unfused, in float64."""
    from fusedops.ops import _reference

    up = [None if t is None else t.double() for t in (x, *se, *weights, res)]
    x64, rw, rb, ew, eb, pw, pb, cw, cb, r64 = up
    gated = _reference.squeeze_excitation(x64, rw, rb, ew, eb, se_activation, se_gate)
    return ghost_module_reference(gated, pw, pb, cw, cb, out_channels, stride, activation, r64)


def _excited(x, se, weights, res, out_channels, stride, activation, se_activation="relu", se_gate="hardsigmoid",
             packed=None):
    s = (stride, stride) if isinstance(stride, int) else stride
    return torch.ops.fusedops._ghost_module_excited(x, *se, se_activation, se_gate, *weights, res, out_channels,
                                                    list(s), activation or "none", packed)


def _check_excited(shape, out_channels, ratio=2, *, stride=1, activation=None, se_activation="relu",
                   se_gate="hardsigmoid", dtype=torch.float32, layout="channels_last", residual=True, reduced=None,
                   biases=True):
    x, se, weights, res = _excited_case(shape, out_channels, ratio, reduced, dtype, layout, residual, stride)
    if not biases:
        se[1] = se[3] = weights[1] = weights[3] = None
    y = _excited(x, se, weights, res, out_channels, stride, activation, se_activation, se_gate)
    expected = _excited_reference(x, se, weights, res, out_channels, stride, activation, se_activation, se_gate)
    assert y.dtype == dtype and y.shape == expected.shape
    assert_ghost_matches(y, expected, dtype, layout)


@pytest.mark.parametrize("layout", ("channels_last", "nchw", "noncontig"))
@pytest.mark.parametrize("ratio, out_channels", ((2, 13), (3, 12)))
@pytest.mark.parametrize("residual", (True, False))
def test_excited_parity(layout, ratio, out_channels, residual):
    _check_excited((2, 20, 9, 7), out_channels, ratio, layout=layout, residual=residual)


@pytest.mark.parametrize("se_activation, se_gate", (("relu", "hardsigmoid"), ("silu", "sigmoid"),
                                                    ("hardswish", "hardsigmoid")))
@pytest.mark.parametrize("activation", (None, "relu"))
def test_excited_activations_and_gates(se_activation, se_gate, activation):
    _check_excited((2, 16, 6, 5), 12, activation=activation, se_activation=se_activation, se_gate=se_gate)


@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_excited_dtypes(dtype, layout):
    _check_excited((2, 24, 7, 7), 14, 3, dtype=dtype, layout=layout)


def test_excited_edges():
    _check_excited((3, 8, 5, 5), 8, stride=2, residual=False)  # the pooling sees every pixel, the module every other
    _check_excited((1, 12, 1, 1), 6, biases=False)
    _check_excited((2, 5, 4, 3), 9, 3, reduced=1)


@pytest.mark.parametrize("shape, out_channels", (
    ((2, 960, 7, 7), 160),  # GhostNet's last stage
    ((1, 672, 14, 14), 112),
    ((3, 72, 28, 28), 40),
))
def test_excited_ghostnet_shapes(shape, out_channels):
    _check_excited(shape, out_channels, reduced=shape[1] // 4)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_excited_gates_scale_the_weights_or_the_pixels(dtype, layout):
    # 20 primary channels (one 32-column panel) on 28x28: the gates scale a copy of the weights; 96 primary channels
    # on 5x5: the input pixels, the smaller.
    _check_excited((2, 40, 28, 28), 40, dtype=dtype, layout=layout)
    _check_excited((2, 64, 5, 5), 192, dtype=dtype, layout=layout)


@pytest.mark.parametrize("threads", (1, 2, 3))
@pytest.mark.parametrize("batch", (1, 2, 5))
def test_excited_thread_counts(threads, batch):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check_excited((batch, 40, 11, 13), 24)
    finally:
        torch.set_num_threads(before)


def test_excited_packed_weights_and_wrapper():
    from fusedops.ops.ghost_module import ghost_module_excited

    x, se, weights, res = _excited_case((2, 16, 8, 8), 16, residual=True)
    packed = pack_weights(x, *weights, 16, activation=None, residual=res)
    y = _excited(x, se, weights, res, 16, 1, None)
    torch.testing.assert_close(_excited(x, se, weights, res, 16, 1, None, packed=packed), y, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(ghost_module_excited(x, *se, "relu", "hardsigmoid", *weights, 16, (1, 1), "none",
                                                        residual=res, packed_weights=packed), y, rtol=0, atol=0)
    # Gradients wanted: the differentiable ops, the same function.
    xg = x.detach().requires_grad_()
    composed = ghost_module_excited(xg, *se, "relu", "hardsigmoid", *weights, 16, (1, 1), "none", residual=res)
    assert composed.grad_fn is not None
    torch.testing.assert_close(composed, y, rtol=1e-5, atol=1e-5)


def test_excited_non_finite_cheap_weight_matches_the_ops():
    x, se, weights, res = _excited_case((2, 8, 6, 6), 12, residual=True)
    weights[2][1, 0, 0, 0] = float("inf")
    y = _excited(x, se, weights, res, 12, 1, None)
    from fusedops.ops.ghost_module import ghost_module_excited

    xg = x.detach().requires_grad_()  # the unfused ops
    expected = ghost_module_excited(xg, *se, "relu", "hardsigmoid", *weights, 12, (1, 1), "none", residual=res)
    torch.testing.assert_close(y, expected.detach(), equal_nan=True, rtol=1e-5, atol=1e-5)


def test_excited_empty_batch_and_meta():
    x, se, weights, res = _excited_case((0, 8, 6, 6), 12, residual=True)
    assert _excited(x, se, weights, res, 12, 1, None).shape == (0, 12, 6, 6)
    x, se, weights, _ = _excited_case((2, 8, 6, 6), 12)
    meta = [None if t is None else t.to("meta") for t in (x, *se, *weights)]
    y = torch.ops.fusedops._ghost_module_excited(meta[0], *meta[1:5], "relu", "hardsigmoid", *meta[5:], None, 12,
                                                 [2, 2], "relu")
    assert y.shape == (2, 12, 3, 3) and y.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_excited_opcheck(layout):
    x, se, weights, res = _excited_case((2, 8, 5, 6), 7, 3, dtype=torch.float64, layout=layout, residual=True)
    torch.library.opcheck(torch.ops.fusedops._ghost_module_excited.default,
                          (x, *se, "relu", "hardsigmoid", *weights, res, 7, [1, 1], "none"))


def test_excited_bad_arguments_name_the_argument():
    x, se, weights, res = _excited_case((1, 16, 6, 6), 16, residual=True)
    rw, rb, ew, eb = se
    with pytest.raises(RuntimeError, match=r"se_reduce_weight must have shape \(out_channels, 16, 1, 1\)"):
        _excited(x, [torch.randn(4, 12, 1, 1), rb, ew, eb], weights, res, 16, 1, None)
    with pytest.raises(RuntimeError, match=r"se_expand_weight must have shape \(16, 4, 1, 1\)"):
        _excited(x, [rw, rb, torch.randn(12, 4, 1, 1), None], weights, res, 16, 1, None)
    with pytest.raises(RuntimeError, match="se_reduce_bias"):
        _excited(x, [rw, torch.randn(5), ew, eb], weights, res, 16, 1, None)
    with pytest.raises(RuntimeError, match="se_gate must be 'hardsigmoid' or 'sigmoid'; got 'tanh'"):
        _excited(x, se, weights, res, 16, 1, None, se_gate="tanh")
    with pytest.raises(RuntimeError, match="se_activation must be one of"):
        _excited(x, se, weights, res, 16, 1, None, se_activation="gelu")
    with pytest.raises(RuntimeError, match=r"residual must have the output's shape \[1, 16, 6, 6\]"):
        _excited(x, se, weights, torch.randn(1, 16, 6, 5), 16, 1, None)
    with pytest.raises(RuntimeError, match="se_expand_weight dtype torch.float64 does not match input dtype"):
        _excited(x, [rw, rb, ew.double(), eb], weights, res, 16, 1, None)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_excited_non_contiguous_squeeze_excitation_weights(dtype):
    x, se, weights, res = _excited_case((2, 12, 5, 5), 10, dtype=dtype, residual=True)
    se[0] = se[0].flatten(1).t().contiguous().t()[:, :, None, None]  # (S, C, 1, 1), columns apart
    se[2] = se[2].flatten(1).t().contiguous().t()[:, :, None, None]
    assert not se[0].is_contiguous() and not se[2].is_contiguous()
    y = _excited(x, se, weights, res, 10, 1, None)
    expected = _excited_reference(x, se, weights, res, 10, 1, None, "relu", "hardsigmoid")
    tol = {torch.float32: 2e-5, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol * expected.abs().max().item())


# ---------------------------------------------------------------------------------------------------
# 8. Two modules, the depthwise stage between them and the shortcut (_ghost_bottleneck: GhostNet's bottlenecks without
#    squeeze-excitation)


@pytest.mark.parametrize("layout", ("channels_last", "nchw", "noncontig"))
@pytest.mark.parametrize("ratio, mid_channels", ((2, 13), (3, 12), (4, 9)))
@pytest.mark.parametrize("dw_size, second_dw_size", ((3, 3), (5, 3), (3, 5)))
def test_bottleneck_parity(layout, ratio, mid_channels, dw_size, second_dw_size):
    # 13 input channels: the second module's cheap half is cut too (init 7 with ratio 2, 5 with 3, 4 with 4).
    check_ghost_bottleneck((2, 13, 11, 9), mid_channels, ratio, dw_size, second_dw_size=second_dw_size, layout=layout)


@pytest.mark.parametrize("layout", ("channels_last", "nchw", "noncontig"))
@pytest.mark.parametrize("depthwise", ((3, 2), (5, 2), (3, 1), (5, (2, 1)), (3, 3)))
@pytest.mark.parametrize("residual", ("tensor", None))
def test_bottleneck_with_depthwise_stage_parity(layout, depthwise, residual):
    # A stride-2 bottleneck: the depthwise stage between the modules, a projecting shortcut given as a tensor.
    check_ghost_bottleneck((2, 8, 13, 11), 18, 3, depthwise=depthwise, residual=residual, out_channels=12,
                           layout=layout)


@pytest.mark.parametrize("activation, second_activation", ((None, None), ("relu", "relu"), ("hardswish", None),
                                                           ("silu", "relu6")))
def test_bottleneck_activations(activation, second_activation):
    check_ghost_bottleneck((2, 6, 9, 10), 10, activation=activation, second_activation=second_activation)
    check_ghost_bottleneck((2, 6, 9, 10), 10, activation=activation, second_activation=second_activation,
                      depthwise=(3, 2), residual="tensor", out_channels=8)


@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16, torch.float16))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_bottleneck_dtypes(dtype, layout):
    check_ghost_bottleneck((2, 8, 9, 7), 14, 3, dtype=dtype, layout=layout)
    check_ghost_bottleneck((2, 8, 9, 7), 14, 3, dtype=dtype, layout=layout, depthwise=(5, 2), residual="tensor",
                      out_channels=10)


def test_bottleneck_edges():
    check_ghost_bottleneck((1, 5, 4, 4), 7, 2, 5, biases=False)  # map smaller than the 5x5 kernels' reach
    check_ghost_bottleneck((2, 8, 9, 9), 8, 2, 3, second_ratio=3)  # ratios apart: the modules' multipliers differ
    check_ghost_bottleneck((3, 4, 1, 1), 6, 3, 3)  # 1x1 maps
    check_ghost_bottleneck((1, 6, 2, 30), 12, 2, 3)  # two rows
    check_ghost_bottleneck((2, 8, 7, 7), 4, 2, 3)  # mid_channels == the first module's init: no cheap channel kept
    check_ghost_bottleneck((1, 5, 4, 4), 7, 2, 3, depthwise=(5, 2), biases=False, residual=None)
    check_ghost_bottleneck((2, 4, 1, 3), 6, 3, 3, depthwise=(3, 2), residual="tensor", out_channels=5)
    check_ghost_bottleneck((1, 6, 17, 5), 10, 2, 3, depthwise=(3, 4), residual="tensor", out_channels=6)


@pytest.mark.parametrize("shape, mid_channels, dw_size, depthwise, out_channels", (
    ((1, 16, 112, 112), 16, 3, None, None),  # GhostNet's bottlenecks without squeeze-excitation
    ((2, 24, 56, 56), 72, 3, None, None),
    ((2, 80, 14, 14), 184, 3, None, None),
    ((3, 160, 7, 7), 960, 5, None, None),
    ((1, 16, 112, 112), 48, 3, (3, 2), 24),
    ((2, 40, 28, 28), 240, 3, (3, 2), 80),
))
def test_bottleneck_ghostnet_shapes(shape, mid_channels, dw_size, depthwise, out_channels):
    check_ghost_bottleneck(shape, mid_channels, 2, dw_size, depthwise=depthwise, out_channels=out_channels,
                      residual="input" if depthwise is None else "tensor")


@pytest.mark.parametrize("threads", (1, 2, 3))
def test_bottleneck_thread_counts(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_ghost_bottleneck((3, 8, 31, 17), 12, 2, 3)
        check_ghost_bottleneck((1, 8, 40, 12), 12, 3, 5)
        check_ghost_bottleneck((1, 16, 120, 64), 32, 2, 3)  # bands of the 768 KiB tile budget, several per strip
        check_ghost_bottleneck((1, 16, 7, 7), 48, 2, 3)  # one strip: at 2 and 3 threads, the ops one after another
        check_ghost_bottleneck((3, 8, 31, 17), 12, 2, 3, depthwise=(3, 2), residual="tensor", out_channels=10)
        check_ghost_bottleneck((1, 16, 150, 96), 48, 2, 3, depthwise=(5, 2), residual="tensor", out_channels=24)
    finally:
        torch.set_num_threads(before)


def test_bottleneck_packed_weights_and_wrapper():
    from fusedops.ops.ghost_module import ghost_bottleneck

    x, first, second = ghost_bottleneck_case((2, 8, 10, 10), 16, 2, 3)
    packed = pack_weights(x, *first, 16)
    second_packed = pack_weights(x.new_empty(2, 16, 10, 10), *second, 8, activation=None, residual=x)
    y = bottleneck_op(x, first, second, 16)
    torch.testing.assert_close(bottleneck_op(x, first, second, 16, packed=packed, second_packed=second_packed), y,
                               rtol=0, atol=0)
    args = (*first, 16, "relu", None, None, (1, 1), *second, 8, "none", x, packed, second_packed)
    with torch.no_grad():
        torch.testing.assert_close(ghost_bottleneck(x, *args), y, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="packed_weights"):  # each module's own packing, in its place
        bottleneck_op(x, first, second, 16, packed=second_packed, second_packed=packed)
    # Gradients wanted: the differentiable ops, the same function.
    xg = x.detach().requires_grad_()
    composed = ghost_bottleneck(xg, *args[:-3], xg)
    assert composed.grad_fn is not None
    torch.testing.assert_close(composed, y, rtol=1e-6, atol=1e-6)
    dw = dw_stage(16, 3, 2)
    res = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        fused = ghost_bottleneck(x, *first, 16, "relu", dw[0], dw[1], (2, 2), *second, 8, "none", res)
    composed = ghost_bottleneck(xg, *first, 16, "relu", dw[0], dw[1], (2, 2), *second, 8, "none", res)
    assert composed.grad_fn is not None
    torch.testing.assert_close(composed, fused, rtol=1e-6, atol=1e-6)


def test_bottleneck_non_finite_weights_match_the_ops():
    x, first, second = ghost_bottleneck_case((1, 8, 7, 7), 12, 3, 3)
    first[2][1, 0, 0, 0] = float("nan")
    second[2][0, 0, 1, 1] = float("inf")
    y = bottleneck_op(x, first, second, 12)
    expected = fusedops.ghost_module(fusedops.ghost_module(x, *first, 12), *second, 8, activation=None, residual=x)
    torch.testing.assert_close(y, expected, equal_nan=True)
    x, first, second = ghost_bottleneck_case((1, 8, 9, 9), 12, 3, 3)
    dw = dw_stage(12, 3, 2)
    dw[0][2, 0, 1, 1] = float("inf")
    y = bottleneck_op(x, first, second, 12, dw=dw, residual=None)
    expected = fusedops.ghost_module(fusedops.depthwise_conv2d(fusedops.ghost_module(x, *first, 12), dw[0], dw[1], 2,
                                                               1), *second, 8, activation=None)
    torch.testing.assert_close(y, expected, equal_nan=True)


def test_bottleneck_empty_batch_and_meta():
    x, first, second = ghost_bottleneck_case((0, 8, 6, 6), 12, 2, 3)
    assert bottleneck_op(x, first, second, 12).shape == (0, 8, 6, 6)
    assert bottleneck_op(x, first, second, 12, dw=dw_stage(12, 3, 2), residual=None).shape == (0, 8, 3, 3)
    meta = [t.to("meta") for t in (x.new_empty(2, 8, 7, 6).to(memory_format=CL), *first, *second)]
    y = torch.ops.fusedops._ghost_bottleneck(*meta[:5], 12, "relu", None, None, [1, 1], *meta[5:], 8, "none", meta[0])
    assert y.shape == (2, 8, 7, 6) and y.is_contiguous(memory_format=CL)
    dw_w = torch.empty(12, 1, 3, 3, device="meta")
    y = torch.ops.fusedops._ghost_bottleneck(*meta[:5], 12, "relu", dw_w, None, [2, 2], *meta[5:], 8, "none", None)
    assert y.shape == (2, 8, 4, 3) and y.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_bottleneck_opcheck(layout):
    x, first, second = ghost_bottleneck_case((2, 5, 7, 6), 7, 3, 3, dtype=torch.float64, layout=layout)
    torch.library.opcheck(torch.ops.fusedops._ghost_bottleneck.default,
                          (x, *first, 7, "relu", None, None, [1, 1], *second, 5, "none", x))
    dw_w, dw_b, _ = dw_stage(7, 3, 2, dtype=torch.float64)
    res = make_input((2, 5, 4, 3), layout, dtype=torch.float64)
    torch.library.opcheck(torch.ops.fusedops._ghost_bottleneck.default,
                          (x, *first, 7, "relu", dw_w, dw_b, [2, 2], *second, 5, "none", res))


def test_bottleneck_bad_arguments_name_the_argument():
    x, first, second = ghost_bottleneck_case((1, 8, 9, 9), 16, 2, 3)
    first_module, second_module = r"_ghost_bottleneck's first module", r"_ghost_bottleneck's second module"
    with pytest.raises(RuntimeError, match=first_module + r".*out_channels must be between 8 .* and 16"):
        bottleneck_op(x, first, second, 17)
    with pytest.raises(RuntimeError, match=second_module + r".*primary_weight must have shape \(out_channels, 16"):
        bottleneck_op(x, first, [torch.randn(4, 12, 1, 1), *second[1:]], 16)
    with pytest.raises(RuntimeError, match=second_module + ".*out_channels must be between 2 .* and 4 .*got 8"):
        bottleneck_op(x, first, [torch.randn(2, 16, 1, 1), None, torch.randn(2, 1, 3, 3), None], 16)
    with pytest.raises(RuntimeError, match=second_module + ".*cheap_weight dtype torch.float64 does not match"):
        bottleneck_op(x, first, [second[0], second[1], second[2].double(), second[3]], 16)
    with pytest.raises(RuntimeError, match=second_module + ".*activation must be one of"):
        bottleneck_op(x, first, second, 16, second_activation="gelu")
    with pytest.raises(RuntimeError, match=first_module + ".*activation must be one of"):
        bottleneck_op(x, first, second, 16, activation="gelu")
    with pytest.raises(RuntimeError, match=second_module + r".*residual must have the output's shape \[1, 8, 5, 5\]"):
        bottleneck_op(x, first, second, 16, dw=dw_stage(16, 3, 2))  # the input is not the shortcut now
    with pytest.raises(RuntimeError, match=r"dw_weight must have shape \(mid_channels=16, 1, kH, kW\) with odd"):
        bottleneck_op(x, first, second, 16, dw=(torch.randn(16, 1, 2, 2), None, 2), residual=None)
    with pytest.raises(RuntimeError, match="dw_stride must be positive"):
        bottleneck_op(x, first, second, 16, dw=(torch.randn(16, 1, 3, 3), None, 0), residual=None)
    with pytest.raises(RuntimeError, match="dw_bias is given without dw_weight"):
        bottleneck_op(x, first, second, 16, dw=(None, torch.randn(16), 1))
