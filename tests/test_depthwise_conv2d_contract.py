"""The contract of the fusedops.depthwise_conv2d op on CPU: memory formats of the output and of grad_input,
gradcheck and double backward, torch.library.opcheck, torch.compile and torch.export, argument errors from
the wrapper and from the C++ op, empty batches and meta tensors."""

import pytest
import torch

import fusedops

from conftest import (
    LAYOUTS,
    depthwise_reference,
    make_input,
    outputs_and_grads,
    pair,
    param_id,
    requires_ops,
    to_layout,
)

pytestmark = requires_ops


# ---------------------------------------------------------------------------------------------------
# Memory format of the output and of grad_input

FORMAT_CASES = [
    dict(kernel=3, stride=1, padding=1),                  # NHWC: grad_input as a forward convolution
    dict(kernel=3, stride=2, padding=1),                  # NHWC: grad_input by gathering
    dict(kernel=3, stride=1, padding=1, multiplier=2),    # generic (channels_last) / plane (NCHW) paths
    dict(kernel=2, stride=1, padding="same"),             # "same" with an even kernel pads the input first
    dict(kernel=(3, 5), stride=1, padding="same", dilation=2),
]


@pytest.mark.parametrize("case", FORMAT_CASES, ids=lambda c: "-".join(f"{k}{param_id(v)}" for k, v in c.items()))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("backend", ("native", "reference"))
def test_memory_format_follows_input(case, layout, backend):
    case = dict(case)
    multiplier = case.pop("multiplier", 1)
    kernel = case.pop("kernel")
    kh, kw = pair(kernel)
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
# float64 gradcheck; double backward is refused with a clear error

GRADCHECK_CASES = [
    dict(shape=(2, 3, 6, 7), kernel=3, stride=1, padding=1, dilation=1, multiplier=1, bias=True),
    dict(shape=(2, 3, 7, 6), kernel=3, stride=2, padding=1, dilation=1, multiplier=1, bias=True),
    dict(shape=(1, 4, 7, 7), kernel=3, stride=1, padding=2, dilation=2, multiplier=1, bias=False),
    dict(shape=(2, 2, 6, 5), kernel=(3, 2), stride=(2, 1), padding=(1, 0), dilation=1, multiplier=2, bias=True),
    dict(shape=(1, 3, 8, 8), kernel=5, stride=3, padding=2, dilation=(1, 2), multiplier=1, bias=True),
]


def _gradcheck_inputs(case, layout):
    c = dict(case)
    kh, kw = pair(c["kernel"])
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
# torch.library.opcheck

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
    ref = torch.autograd.grad(depthwise_reference(x, w.requires_grad_(), None, 1, 1, 1), w, go)[0]
    torch.testing.assert_close(gw, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# torch.compile and torch.export

def _compile_inputs(layout, batch=2, size=(10, 11)):
    x = make_input((batch, 24, *size), layout, requires_grad=True)
    w = torch.randn(24, 1, 3, 3, requires_grad=True)
    b = torch.randn(24, requires_grad=True)
    return x, w, b


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
            for a, e in zip(outputs_and_grads(compiled, x, w, b), outputs_and_grads(_fn, x, w, b)):
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
# Bad arguments: clear errors naming the argument, from the wrapper and from the C++ op

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
        ("weight-dtype", (x, w.double(), None, one, zero, one),
         r"weight dtype torch.float64 does not match input dtype torch.float32"),
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
    with pytest.raises(RuntimeError, match=r"grad_output has shape \[2, 4, 6, 6\] but the convolution's output has "
                                           r"shape \(2, 4, 4, 4\)"):
        backward(torch.randn(2, 4, 6, 6, device="meta"), *meta)
    # through autograd, a wrong-shaped gradient is refused before reaching the kernel
    with fusedops.use_backend("native"):
        out = fusedops.depthwise_conv2d(x, w)
    with pytest.raises(RuntimeError, match="shape"):
        out.backward(torch.randn(2, 4, 6, 6))


# ---------------------------------------------------------------------------------------------------
# Empty batches and meta tensors

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
