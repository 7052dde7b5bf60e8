"""Helpers of the reliability tests: tensors in every layout, float64 references, magnitude-scaled comparisons."""

import torch
import torch.nn.functional as F

# rtol / atol per dtype; atol is relative to the magnitude of the terms summed (the same computation on
# absolute values), which bounds the rounding error of any summation order.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
DTYPES = tuple(TOLERANCES)
LAYOUTS = ("nchw", "channels_last", "noncontig", "offset", "expanded")
ACTIVATIONS = (None, "relu", "relu6", "hardswish", "silu")
# Words a useful error message names (an argument, or the shape relation that failed).
ARGUMENT_WORDS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups", "kernel", "channels",
                  "dtype", "activation", "shape", "multiplier")


def laid_out(values, layout, dtype):
    """`values` (a float64 N,C,H,W tensor) in `dtype`, stored as `layout`: contiguous, channels_last, a permuted
    slice of a larger buffer, a view with a storage offset, or expanded (zero strides: the values become the
    first image's, or the first column's, repeated)."""
    n, c, h, w = values.shape
    if layout == "nchw":
        return values.to(dtype).contiguous()
    if layout == "channels_last":
        return values.to(dtype).contiguous(memory_format=torch.channels_last)
    if layout == "noncontig":
        base = torch.zeros(n, h, c, w + 2, dtype=dtype)
        base[..., 1:w + 1] = values.permute(0, 2, 1, 3).to(dtype)
        return base[..., 1:w + 1].permute(0, 2, 1, 3)
    if layout == "offset":
        flat = torch.zeros(values.numel() + 5, dtype=dtype)
        view = flat[5:].view(values.shape)
        view.copy_(values)
        return view
    if layout == "expanded":
        if n > 0:
            return values[:1].to(dtype).expand(n, c, h, w)
        return values.to(dtype)
    raise ValueError(layout)


def vector(values, strided, dtype):
    """A 1-D tensor holding `values`, contiguous or every other element of a larger one."""
    if not strided:
        return values.to(dtype)
    base = torch.zeros(2 * values.numel(), dtype=dtype)
    base[::2] = values
    return base[::2]


def as_reference(t):
    """float64 leaf with t's values and requires_grad."""
    if t is None:
        return None
    return t.detach().to(torch.float64).requires_grad_(t.requires_grad)


def assert_close_scaled(actual, expected, magnitude, dtype, what=""):
    """|actual - expected| <= rtol |expected| + atol magnitude (elementwise), NaN where expected is NaN."""
    rtol, atol = TOLERANCES[dtype]
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e, m = actual.detach().double(), expected.detach().double(), magnitude.detach().double()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{what}: NaN positions differ ({int(nan_a.sum())} vs {int(nan_e.sum())})"
    finite = torch.isfinite(e)
    assert torch.equal(a[~finite & ~nan_e], e[~finite & ~nan_e]), f"{what}: infinities differ"
    err = (a - e).abs()[finite]
    bound = (rtol * e.abs() + atol * m.clamp_min(1.0) if dtype != torch.float64 else
             rtol * e.abs() + atol * m)[finite]
    bad = err > bound
    if bad.any():
        i = int(bad.nonzero()[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {err.numel()} elements differ; first: actual "
                             f"{a[finite][i].item()!r}, expected {e[finite][i].item()!r}, bound {bound[i].item():.3g}")


def grads(output, inputs, grad_output):
    """Gradients of `output` with respect to those of `inputs` that require grad (None for the others)."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(output, wanted, grad_output, allow_unused=True) if wanted else ())
    return [next(got) if t is not None and t.requires_grad else None for t in inputs]


def depthwise_reference(x, w, b, stride, padding, dilation):
    if x.shape[0] > 0 and x.shape[1] > 0 and 0 in x.shape[2:] and min(padding) >= 0:
        # An empty map with padding: F.conv2d refuses it ("only zero batch or zero channel inputs"); the
        # convolution of its zero padding is defined all the same (the bias), and fusedops computes it: pad first.
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
        padding = (0, 0)
    return F.conv2d(x, w, b, stride, padding, dilation, groups=x.shape[1])


def activation(x, name):
    functions = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish, "silu": F.silu}
    return x if name in (None, "none") else functions[name](x)


def dwpw_reference(x, dw_w, dw_b, pw_w, pw_b, stride, padding, dilation, mid, out):
    y = activation(depthwise_reference(x, dw_w, dw_b, stride, padding, dilation), mid)
    return activation(F.conv2d(y, pw_w, pw_b), out)


def names_an_argument(message):
    return any(word in message.lower() for word in ARGUMENT_WORDS)


def raises_naming_an_argument(call, pytorch_error=None):
    """Runs `call`, which must raise a Python exception whose message names an argument (or is PyTorch's own
    `pytorch_error`, raised by a PyTorch op ours calls); returns the message."""
    try:
        call()
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        message = str(e)
        same = pytorch_error is not None and message == str(pytorch_error)
        assert same or names_an_argument(message), f"message names no argument: {message!r}"
        return message
    raise AssertionError("no exception where PyTorch's op raises")
