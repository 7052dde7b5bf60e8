"""fusedops.dwpw_conv2d (fused depthwise-separable convolution) on the native CPU kernels: parity of the
output and of every gradient with the unfused float64 reference, gradcheck, opcheck, torch.compile,
argument errors, and the DepthwiseSeparableConv2d module / fuse_bn."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusedops
from fusedops.ops import _reference

from conftest import assert_close_scaled, check_dwpw_parity, dwpw_reference, make_dwpw_weights, make_input, \
    requires_ops, to_layout

pytestmark = requires_ops

ACTS = (None, "relu", "relu6", "hardswish", "silu")


# ---------------------------------------------------------------------------------------------------
# 1. Parity grids

@pytest.mark.parametrize("layout", ("channels_last", "nchw", "noncontig"))
@pytest.mark.parametrize("channels, cout", ((5, 7), (16, 48), (24, 16), (37, 70)))
@pytest.mark.parametrize("batch", (1, 3))
def test_parity_channels(layout, channels, cout, batch):
    check_dwpw_parity((batch, channels, 9, 11), cout, layout=layout)


@pytest.mark.parametrize("kernel, stride, padding, dilation", (
    (3, 2, 1, 1), (5, 1, 2, 1), (5, 2, 2, 1), (3, 1, 2, 2), (3, (2, 1), (0, 1), 1), (7, 1, 3, 1),
    ((3, 5), 1, (1, 2), 1), (3, 1, 0, 1),
))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_parity_geometry(kernel, stride, padding, dilation, layout):
    check_dwpw_parity((2, 20, 13, 12), 33, kernel, stride=stride, padding=padding, dilation=dilation, layout=layout)


@pytest.mark.parametrize("mid, out", list(itertools.product(ACTS, ACTS)))
def test_parity_activations(mid, out):
    check_dwpw_parity((2, 19, 8, 9), 21, mid=mid, out=out, layout="channels_last" if mid != out else "nchw")


@pytest.mark.parametrize("multiplier", (2, 3))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_parity_depth_multiplier(multiplier, layout):
    check_dwpw_parity((2, 6, 9, 8), 17, multiplier=multiplier, stride=2, layout=layout, mid="hardswish")


@pytest.mark.parametrize("dw_bias, pw_bias", ((False, False), (True, False), (False, True)))
def test_parity_without_biases(dw_bias, pw_bias):
    check_dwpw_parity((2, 12, 7, 7), 20, dw_bias=dw_bias, pw_bias=pw_bias, layout="channels_last")
    check_dwpw_parity((1, 12, 7, 7), 20, dw_bias=dw_bias, pw_bias=pw_bias, layout="nchw")


@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
@pytest.mark.parametrize("shape, cout", (((1, 64, 30, 30), 96), ((1, 300, 7, 7), 200), ((3, 8, 40, 70), 12),
                                         ((1, 128, 14, 14), 1)))
def test_parity_bands_and_channel_splits(layout, shape, cout):
    """Shapes that take several bands per image, one band split over output-channel panels, and maps
    whose rows exceed the tile budget."""
    check_dwpw_parity(shape, cout, layout=layout, backward=shape[1] * shape[2] * shape[3] < 50000)


@pytest.mark.parametrize("layout, channels, cout, stride, kernel, padding", (
    ("channels_last", 24, 24, 1, 3, 1), ("nchw", 8, 120, 2, 5, 2), ("channels_last", 8, 120, (2, 1), 3, (0, 1)),
    ("channels_last", 64, 64, 3, 2, 0)))
def test_parity_backward_row_bands(layout, channels, cout, stride, kernel, padding):
    """Maps large enough for the backward to recompute the depthwise output in several row bands: windows
    overlapping across bands (their input gradients add up), and windows shorter than the stride (input
    rows no window reads get a zero gradient)."""
    check_dwpw_parity((1, channels, 220, 220), cout, kernel, stride=stride, padding=padding, layout=layout,
                      mid="hardswish")


@pytest.mark.parametrize("threads", (1, 3))
def test_parity_thread_counts(threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_dwpw_parity((2, 40, 15, 15), 50, layout="channels_last", stride=2)
        check_dwpw_parity((1, 40, 15, 15), 50, layout="nchw")
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16, torch.float64))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_parity_dtypes(dtype, layout):
    check_dwpw_parity((2, 16, 9, 10), 24, layout=layout, dtype=dtype, mid="hardswish", out=None)


@pytest.mark.parametrize("height, width", ((1, 1), (1, 2), (1, 3), (2, 2), (1, 5), (2, 3), (1, 7), (2, 4), (3, 3),
                                           (7, 7), (2, 13)))
@pytest.mark.parametrize("channels, cout", ((13, 29), (40, 300)))
def test_parity_gemm_block_heights(height, width, channels, cout):
    # Pixel counts (1-9, 26, 49) whose GEMM row blocks take every height of the micro-kernel (49 pixels: 7 blocks
    # of 7 rows); 300 output channels against few pixels take the transposed orientation, whose rows are channels.
    check_dwpw_parity((1, channels, height, width), cout)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
@pytest.mark.parametrize("multiplier", (1, 2))
def test_parity_transposed_gemm(dtype, layout, multiplier):
    """Few pixels and wide channels: the kernel packs the tile instead of the weights."""
    check_dwpw_parity((1, 48, 5, 6), 130, multiplier=multiplier, layout=layout, dtype=dtype, mid="hardswish",
                      out="relu6")


def test_unrequested_grads():
    x = make_input((2, 8, 9, 9), "channels_last", requires_grad=False)
    dw_w, dw_b, pw_w, pw_b = make_dwpw_weights(8, 12, 3)
    dw_b.requires_grad_(False)
    y = fusedops.dwpw_conv2d(x, dw_w, dw_b, pw_w, pw_b)
    go = torch.randn(y.shape)
    grads = torch.autograd.grad(y, [dw_w, pw_w, pw_b], go)
    leaves = [t.detach().double().requires_grad_() for t in (dw_w, pw_w, pw_b)]
    ref = dwpw_reference(x.double(), leaves[0], dw_b.double(), leaves[1], leaves[2], 1, 1, 1, "relu6", "relu6")
    for a, e in zip(grads, torch.autograd.grad(ref, leaves, go.double())):
        assert_close_scaled(a, e, rtol=1e-5, atol=1e-5)
    gi, gw, gb, gpw, gpb = torch.ops.fusedops._dwpw_conv2d_backward(
        go, x, dw_w.detach(), dw_b, pw_w.detach(), pw_b.detach(), [1, 1], [1, 1], [1, 1], "relu6", "relu6",
        [False, True, False, False, True])
    assert gi.numel() == 0 and gb.numel() == 0 and gpw.numel() == 0
    torch.testing.assert_close(gw, grads[0])
    torch.testing.assert_close(gpb, grads[2])


@pytest.mark.parametrize("out", ("relu6", "hardswish"))
def test_backward_saves_no_intermediate(out):
    """Training keeps the input and weights, never the (N, C*m, OH, OW) intermediate; with a relu/relu6
    output activation also the output itself (which the next layer keeps alive anyway), never a copy."""
    x = make_input((2, 16, 12, 12), "channels_last", requires_grad=True)
    weights = make_dwpw_weights(16, 32, 3)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fusedops.dwpw_conv2d(x, *weights, out_activation=out)
    shapes = [tuple(t.shape) for t in saved]
    assert any(t is x for t in saved)  # the input
    assert shapes.count((2, 16, 12, 12)) == 1  # not the depthwise output (same shape here)
    outputs = [t for t in saved if tuple(t.shape) == (2, 32, 12, 12)]
    if out == "relu6":
        assert len(outputs) == 1 and outputs[0].data_ptr() == y.data_ptr()
    else:
        assert not outputs


def test_empty_batch():
    x = torch.randn(0, 8, 5, 5, requires_grad=True)
    weights = make_dwpw_weights(8, 4, 3)
    y = fusedops.dwpw_conv2d(x, *weights)
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert weights[0].grad.abs().sum() == 0


def test_meta_tensors():
    x = torch.empty(2, 8, 10, 10, device="meta").to(memory_format=torch.channels_last)
    dw_w, dw_b, pw_w, pw_b = (t.detach().to("meta") for t in make_dwpw_weights(8, 12, 3))
    y = fusedops.dwpw_conv2d(x, dw_w, dw_b, pw_w, pw_b, stride=2)
    assert y.shape == (2, 12, 5, 5) and y.device.type == "meta"
    assert y.is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------------
# 2. gradcheck, opcheck, compile

@pytest.mark.parametrize("mid, out, layout", (("hardswish", "relu6", "nchw"), (None, "hardswish", "channels_last"),
                                              ("relu", None, "channels_last")))
def test_gradcheck_float64(mid, out, layout):
    x = make_input((2, 3, 6, 5), layout, dtype=torch.float64, requires_grad=True)
    weights = make_dwpw_weights(3, 4, 3, multiplier=2, dtype=torch.float64)

    def fn(*a):
        return fusedops.dwpw_conv2d(*a, stride=(2, 1), padding=1, mid_activation=mid, out_activation=out)

    assert torch.autograd.gradcheck(fn, (x, *weights), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_double_backward_raises():
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    weights = make_dwpw_weights(3, 4, 3, dtype=torch.float64)
    y = fusedops.dwpw_conv2d(x, *weights)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def _opcheck_args(layout, with_bias, stride, mult, mid, out, requires_grad):
    x = make_input((2, 5, 8, 9), layout, requires_grad=requires_grad)
    dw_w, dw_b, pw_w, pw_b = make_dwpw_weights(5, 7, 3, mult, with_bias, with_bias, requires_grad=requires_grad)
    return (x, dw_w, dw_b, pw_w, pw_b, [stride, stride], [1, 1], [1, 1], mid, out)


@pytest.mark.parametrize("layout, with_bias, stride, mult, mid, out, requires_grad", (
    ("nchw", True, 1, 1, "relu6", "relu6", True),
    ("channels_last", False, 2, 1, "hardswish", "none", True),
    ("noncontig", True, 1, 2, "relu", "hardswish", False),
))
def test_opcheck(layout, with_bias, stride, mult, mid, out, requires_grad):
    args = _opcheck_args(layout, with_bias, stride, mult, mid, out, requires_grad)
    torch.library.opcheck(torch.ops.fusedops.dwpw_conv2d.default, args)
    x = args[0]
    go = torch.randn(2, 7, 8 // stride if stride == 1 else 4, 9 if stride == 1 else 5)
    go = to_layout(go, layout if layout != "noncontig" else "nchw")
    torch.library.opcheck(torch.ops.fusedops._dwpw_conv2d_backward.default,
                          (go, *[a.detach() if isinstance(a, torch.Tensor) else a for a in args],
                           [True, True, with_bias, True, with_bias]))
    del x


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()

    def fn(x, dw_w, dw_b, pw_w, pw_b):
        y = fusedops.dwpw_conv2d(x, dw_w, dw_b, pw_w, pw_b, stride=2, mid_activation="hardswish")
        return fusedops.dwpw_conv2d(y, dw_w, None, pw_w, None, padding=2, dilation=2, out_activation=None)

    compiled = torch.compile(fn, fullgraph=True)
    for layout in ("nchw", "channels_last"):
        x = make_input((2, 12, 11, 10), layout, requires_grad=True)
        weights = make_dwpw_weights(12, 12, 3)
        inputs = (x, *weights)
        out_c = compiled(*inputs)
        out_e = fn(*inputs)
        torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
        go = torch.randn_like(out_e)
        for a, e in zip(torch.autograd.grad(out_c, inputs, go), torch.autograd.grad(out_e, inputs, go)):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# 3. Argument errors

def _bad_cases():
    x = torch.randn(2, 8, 9, 9)
    dw_w, dw_b, pw_w, pw_b = (t.detach() for t in make_dwpw_weights(8, 12, 3))
    good = dict(input=x, dw_weight=dw_w, dw_bias=dw_b, pw_weight=pw_w, pw_bias=pw_b)
    return [
        (dict(good, dw_weight=torch.randn(8, 2, 3, 3)), "dw_weight must have shape"),
        (dict(good, dw_weight=torch.randn(12, 1, 3, 3)), "dw_weight has 12 output channels"),
        (dict(good, dw_bias=torch.randn(7)), r"dw_bias must have shape \(8,\)"),
        (dict(good, pw_weight=torch.randn(12, 7, 1, 1)), r"pw_weight must have shape \(out_channels, 8, 1, 1\)"),
        (dict(good, pw_weight=torch.randn(12, 8, 3, 3)), r"pw_weight must have shape"),
        (dict(good, pw_bias=torch.randn(5)), r"pw_bias must have shape \(12,\)"),
        (dict(good, pw_weight=pw_w.double()), "pw_weight dtype torch.float64 does not match input dtype"),
        (dict(good, pw_bias=pw_b.double()), "pw_bias dtype torch.float64 does not match input dtype"),
        (dict(good, dw_weight=dw_w.double()), "dw_weight dtype torch.float64 does not match"),
        (dict(good, input=torch.randn(2, 8, 9)), "input must be a 4-D"),
        (dict(good, input=torch.randn(2, 8, 1, 1), padding=0), "smaller than the dilated kernel"),
        (dict(good, stride=0), "stride must be positive"),
        (dict(good, mid_activation="gelu"), "mid_activation must be one of"),
        (dict(good, out_activation="sigmoid"), "out_activation must be one of"),
    ]


@pytest.mark.parametrize("index", range(14))
@pytest.mark.parametrize("backend", ("native", "reference"))
def test_bad_arguments(index, backend):
    kwargs, message = _bad_cases()[index]
    if backend == "reference" and "smaller than the dilated" in message:
        message = "smaller than the dilated kernel"
    with fusedops.use_backend(backend), pytest.raises((RuntimeError, ValueError), match=message):
        fusedops.dwpw_conv2d(**kwargs)


@pytest.mark.parametrize("index", (0, 2, 3, 5, 6))
def test_op_rejects_bad_arguments(index):
    """The C++ op itself (reached without the Python wrapper) reports the same errors."""
    kwargs, message = _bad_cases()[index]
    args = (kwargs["input"], kwargs["dw_weight"], kwargs["dw_bias"], kwargs["pw_weight"], kwargs["pw_bias"],
            [1, 1], [1, 1], [1, 1], "relu6", "relu6")
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedops.dwpw_conv2d(*args)
    good = _bad_cases()[-1][0]
    with pytest.raises(RuntimeError, match="mid_activation must be one of"):
        torch.ops.fusedops.dwpw_conv2d(good["input"], good["dw_weight"], None, good["pw_weight"], None, [1, 1],
                                       [1, 1], [1, 1], "gelu", "relu")


def test_backward_rejects_bad_grad_output():
    x = torch.randn(2, 8, 9, 9)
    weights = [t.detach() for t in make_dwpw_weights(8, 12, 3)]
    with pytest.raises(RuntimeError, match="grad_output has shape"):
        torch.ops.fusedops._dwpw_conv2d_backward(torch.randn(2, 12, 9, 8), x, *weights, [1, 1], [1, 1], [1, 1],
                                                 "relu6", "relu6", [True] * 5)


# ---------------------------------------------------------------------------------------------------
# 4. DepthwiseSeparableConv2d and fuse_bn

def _randomize_bn(module):
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                if bn.affine:
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.normal_(0, 0.5)
                bn.running_mean.normal_(0, 0.5)
                bn.running_var.uniform_(0.5, 2.0)


class UnfusedSeparable(nn.Module):
    def __init__(self, module):
        super().__init__()
        d = module.dw
        self.dw = nn.Conv2d(d.in_channels, d.out_channels, d.kernel_size, d.stride, d.padding, d.dilation,
                            groups=d.in_channels, bias=d.bias is not None)
        self.bn_dw = nn.BatchNorm2d(d.out_channels) if module.norm else None
        self.pw = nn.Conv2d(d.out_channels, module.pw.out_channels, 1, bias=module.pw.bias is not None)
        self.bn_pw = nn.BatchNorm2d(module.pw.out_channels) if module.norm else None
        self.mid, self.out = module.mid_activation, module.out_activation
        self.to(module.dw.weight.dtype)
        self.load_state_dict(module.state_dict())

    def forward(self, x):
        x = self.dw(x)
        x = self.bn_dw(x) if self.bn_dw is not None else x
        x = _reference.activation(x, self.mid)
        x = self.pw(x)
        x = self.bn_pw(x) if self.bn_pw is not None else x
        return _reference.activation(x, self.out)


def test_fuse_bn():
    conv = nn.Conv2d(6, 10, 3, padding=1, bias=True).double()
    bn = nn.BatchNorm2d(10).double()
    _randomize_bn(bn)
    bn.eval()
    w, b = fusedops.fuse_bn(conv, bn)
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(x, w, b, padding=1), bn(conv(x)))
    conv_nb = nn.Conv2d(6, 6, 3, groups=6, bias=False).double()
    bn_na = nn.BatchNorm2d(6, affine=False).double()
    _randomize_bn(bn_na)
    bn_na.eval()
    w, b = fusedops.fuse_bn(conv_nb, bn_na)
    torch.testing.assert_close(F.conv2d(x, w, b, groups=6), bn_na(conv_nb(x)))
    with pytest.raises(ValueError, match="features"):
        fusedops.fuse_bn(conv, nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="track_running_stats"):
        fusedops.fuse_bn(conv, nn.BatchNorm2d(10, track_running_stats=False))


@pytest.mark.parametrize("config", (
    dict(kernel_size=3, stride=1),
    dict(kernel_size=5, stride=2, depth_multiplier=2, mid_activation="hardswish", out_activation=None),
    dict(kernel_size=3, stride=2, dilation=2, norm=False, mid_activation="relu"),
))
@pytest.mark.parametrize("layout", ("channels_last", "nchw"))
def test_module_parity_train_and_eval(config, layout):
    m = fusedops.nn.DepthwiseSeparableConv2d(12, 20, **config).double()
    _randomize_bn(m)
    ref = UnfusedSeparable(m).double()
    for mode in ("train", "eval", "train"):
        m.train(mode == "train")
        ref.train(mode == "train")
        x = make_input((3, 12, 11, 11), layout, dtype=torch.float64, requires_grad=True)
        xr = x.detach().clone().requires_grad_()
        y, yr = m(x), ref(xr)
        torch.testing.assert_close(y, yr)
        go = torch.randn_like(yr)
        params = [p for p in m.parameters()]
        ref_params = [p for p in ref.parameters()]
        g = torch.autograd.grad(y, [x, *params], go)
        gr = torch.autograd.grad(yr, [xr, *ref_params], go)
        for a, e in zip(g, gr):
            torch.testing.assert_close(a, e)
        for (name, b), (_, br) in zip(m.named_buffers(), ref.named_buffers()):
            torch.testing.assert_close(b, br, msg=name)


def test_module_eval_uses_fused_op_and_caches(monkeypatch):
    m = fusedops.nn.DepthwiseSeparableConv2d(8, 16).eval()
    _randomize_bn(m)
    ref = UnfusedSeparable(m).eval()
    x = make_input((2, 8, 9, 9), "channels_last")
    calls = []
    real = fusedops.nn.separable.dwpw_conv2d
    monkeypatch.setattr(fusedops.nn.separable, "dwpw_conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    folds = []
    real_fold = m._fold
    monkeypatch.setattr(m, "_fold", lambda: folds.append(1) or real_fold())
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
        m(x)
        assert len(calls) == 2 and len(folds) == 2  # folded on every call (unless frozen)
        # In-place changes of parameters and buffers are seen.
        m.bn_pw.running_var.mul_(2.0)
        ref.bn_pw.running_var.mul_(2.0)
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
        m.dw.weight.add_(0.1)
        ref.dw.weight.add_(0.1)
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
        assert len(folds) == 4
        # So is load_state_dict.
        sd = {k: v + 0.05 if v.is_floating_point() else v for k, v in m.state_dict().items()}
        m.load_state_dict(sd)
        ref.load_state_dict(sd)
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
    # With gradients recorded, the fold is differentiable and reaches the BN parameters.
    y = m(x)
    y.sum().backward()
    assert m.bn_dw.weight.grad is not None and m.dw.weight.grad is not None


def test_module_state_dict_round_trip():
    m = fusedops.nn.DepthwiseSeparableConv2d(8, 16, depth_multiplier=2)
    keys = set(m.state_dict())
    assert {"dw.weight", "bn_dw.weight", "bn_dw.running_mean", "pw.weight", "bn_pw.running_var"} <= keys
    assert "dw.bias" not in keys and "pw.bias" not in keys
    _randomize_bn(m)
    m2 = fusedops.nn.DepthwiseSeparableConv2d(8, 16, depth_multiplier=2)
    m2.load_state_dict(m.state_dict())
    m.eval()
    m2.eval()
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m2(x))
    assert "mid_activation='relu6'" in repr(m)


def test_module_traces_fullgraph():
    """torch.compile(fullgraph=True) traces the eval-mode module, folding included (no graph break)."""
    torch._dynamo.reset()
    m = fusedops.nn.DepthwiseSeparableConv2d(8, 16).eval()
    _randomize_bn(m)
    x = torch.randn(2, 8, 9, 9)
    compiled = torch.compile(m, fullgraph=True, backend="eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), m(x))


def test_backward_saved_output_argument():
    """The backward op's optional forward output: same gradients as without it, and a wrong one is refused."""
    x = torch.randn(2, 8, 9, 9).to(memory_format=torch.channels_last)
    dw_w, dw_b, pw_w, pw_b = (t.detach() for t in make_dwpw_weights(8, 12, 3))
    args = (x, dw_w, dw_b, pw_w, pw_b, [1, 1], [1, 1], [1, 1], "relu6", "relu6", [True] * 5)
    y = fusedops.dwpw_conv2d(x, dw_w, dw_b, pw_w, pw_b)
    grad = torch.randn_like(y)
    op = torch.ops.fusedops._dwpw_conv2d_backward
    with_output = op(grad, *args, y)
    without = op(grad, *args)
    for a, b in zip(with_output, without):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="output must be the forward's result"):
        op(grad, *args, y[:1])


def test_backward_after_inplace_change_of_output_raises():
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    dw_w, dw_b, pw_w, pw_b = make_dwpw_weights(4, 5, 3)
    y = fusedops.dwpw_conv2d(x, dw_w, dw_b, pw_w, pw_b, out_activation="relu")
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


# ---------------------------------------------------------------------------------------------------
# 5. Packed weights


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16))
@pytest.mark.parametrize("shape, cout, multiplier, layout", (
    ((1, 64, 7, 7), 96, 1, "channels_last"),     # small map: the kernel's transposed orientation without packing
    ((2, 16, 12, 11), 24, 2, "nchw"),
    ((3, 24, 9, 9), 40, 1, "strided"),
))
def test_packed_weights_give_the_reference_result(dtype, shape, cout, multiplier, layout):
    from fusedops.ops.dwpw_conv2d import pack_weights

    x = make_input(shape, layout, dtype=dtype)
    weights = [t.detach() for t in make_dwpw_weights(shape[1], cout, 3, multiplier, dtype=dtype)]
    packed = pack_weights(x, *weights, stride=2, mid_activation="relu", out_activation="hardswish")
    assert packed.dim() == 1 and packed.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    y = fusedops.dwpw_conv2d(x, *weights, stride=2, mid_activation="relu", out_activation="hardswish",
                             packed_weights=packed)
    expected = dwpw_reference(x.double(), *[w.double() for w in weights], 2, 1, 1, "relu", "hardswish")
    tol = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 3e-2}[dtype]
    assert_close_scaled(y, expected, rtol=tol, atol=tol, name="output")
    # Packed once, used for inputs of other sizes and layouts.
    x2 = make_input((1, shape[1], 20, 17), "channels_last", dtype=dtype)
    torch.testing.assert_close(
        fusedops.dwpw_conv2d(x2, *weights, packed_weights=packed),
        fusedops.dwpw_conv2d(x2, *weights), rtol=tol, atol=tol)


def test_packed_weights_of_another_convolution_are_refused():
    from fusedops.ops.dwpw_conv2d import pack_weights

    x = make_input((1, 8, 6, 6), "channels_last")
    weights = [t.detach() for t in make_dwpw_weights(8, 16, 3)]
    other = [t.detach() for t in make_dwpw_weights(8, 12, 3)]
    with pytest.raises(RuntimeError, match="packed_weights were not packed for this block"):
        fusedops.dwpw_conv2d(x, *weights, packed_weights=pack_weights(x, *other))
    with pytest.raises(RuntimeError, match="packed_weights were not packed for this block"):
        fusedops.dwpw_conv2d(x.double(), *[w.double() for w in weights], packed_weights=pack_weights(x, *weights))
    assert pack_weights(x.to("meta"), *[w.to("meta") for w in weights]) is None


def _counted_module(monkeypatch, function):
    """A DepthwiseSeparableConv2d in eval mode with random batch-norm statistics, its unfused twin, an input, and
    the list that each call of `function` of fusedops.nn.separable (spied on) appends to."""
    module = fusedops.nn.separable
    m = fusedops.nn.DepthwiseSeparableConv2d(8, 16).eval()
    _randomize_bn(m)
    calls = []
    real = getattr(module, function)
    monkeypatch.setattr(module, function, lambda *a, **k: calls.append(1) or real(*a, **k))
    return m, UnfusedSeparable(m).eval(), make_input((1, 8, 7, 7), "channels_last"), calls


def test_frozen_module_packs_once_and_again_after_a_load(monkeypatch):
    m, ref, x, packs = _counted_module(monkeypatch, "pack_weights")
    with torch.no_grad():
        m(x)
        assert packs == []  # not frozen: folded and laid out on every call
        m.freeze()
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
        assert len(packs) == 1
        sd = {k: v + 0.05 if v.is_floating_point() else v for k, v in m.state_dict().items()}
        m.load_state_dict(sd)
        ref.load_state_dict(sd)
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
        assert len(packs) == 2


def test_frozen_module_reuses_its_prepared_call_until_the_module_changes(monkeypatch):
    # After the first frozen call, the next ones go straight to the native op with the arguments it prepared;
    # reassigned geometry or a new fold takes the full fused path again, a batch norm in train mode the unfused one.
    m, ref, x, full_calls = _counted_module(monkeypatch, "dwpw_conv2d")
    m.freeze()
    with torch.no_grad():
        y = m(x)
        assert torch.equal(m(x), y) and len(full_calls) == 1
        torch.testing.assert_close(y, ref(x), rtol=1e-5, atol=1e-5)
        for conv in (m.dw, ref.dw):  # geometry reassigned: the prepared call no longer applies
            conv.padding, conv.dilation = (2, 2), (2, 2)
        y2 = m(x)
        torch.testing.assert_close(y2, ref(x), rtol=1e-5, atol=1e-5)
        assert torch.equal(m(x), y2) and len(full_calls) == 2
        sd = {k: v + 0.05 if v.is_floating_point() else v for k, v in m.state_dict().items()}
        m.load_state_dict(sd)
        ref.load_state_dict(sd)
        y3 = m(x)
        torch.testing.assert_close(y3, ref(x), rtol=1e-5, atol=1e-5)
        assert torch.equal(m(x), y3) and len(full_calls) == 3
        m.bn_pw.train()  # batch statistics: the unfused modules, not the prepared call
        ref.bn_pw.train()
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)
        m.bn_pw.eval()
        assert torch.equal(m(x), y3) and len(full_calls) == 3  # frozen: the running statistics' update not seen


def test_pack_weights_is_none_where_the_native_kernel_does_not_run():
    from fusedops.ops.dwpw_conv2d import pack_weights as pack_dwpw
    from fusedops.ops.inverted_residual import pack_weights as pack_block

    x = make_input((1, 8, 6, 6), "channels_last")
    dwpw = [t.detach() for t in make_dwpw_weights(8, 16, 3)]
    block = [torch.randn(24, 8, 1, 1), None, torch.randn(24, 1, 3, 3), None, torch.randn(8, 24, 1, 1)]
    assert pack_dwpw(x, *dwpw) is not None and pack_block(x, *block) is not None
    with fusedops.use_backend("reference"):
        assert pack_dwpw(x, *dwpw) is None and pack_block(x, *block) is None
