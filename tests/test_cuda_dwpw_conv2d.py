"""CUDA kernels of fusedops::dwpw_conv2d and its backward, compared with the CPU kernels and the float64
unfused reference. All but the first test need a GPU."""

import pytest
import torch

import fusedops
from fusedops.ops import _reference

from conftest import KERNEL_DEVICE, gpu_test, requires_cuda_kernels, assert_close_scaled

@requires_cuda_kernels
def test_cuda_kernels_registered():
    for op in ("fusedops::dwpw_conv2d", "fusedops::_dwpw_conv2d_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


def _inputs(shape, cout, kernel, multiplier, layout, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    k = c * multiplier
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    tensors = [x, torch.randn(k, 1, kernel, kernel, generator=g, dtype=torch.float64) / kernel,
               0.5 * torch.randn(k, generator=g, dtype=torch.float64),
               torch.randn(cout, k, 1, 1, generator=g, dtype=torch.float64) / k ** 0.5,
               0.5 * torch.randn(cout, generator=g, dtype=torch.float64)]
    return [t.to(dtype) for t in tensors]


@gpu_test
@pytest.mark.parametrize("layout", ("nchw", "cl"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16, torch.float64))
@pytest.mark.parametrize("shape, cout, kernel, stride, multiplier, mid, out", (
    ((2, 32, 28, 28), 64, 3, 1, 1, "relu6", "relu6"),
    ((1, 37, 15, 13), 20, 5, 2, 1, "hardswish", "none"),
    ((3, 8, 9, 9), 300, 3, 2, 2, "relu", "hardswish"),
))
def test_cuda_parity(layout, dtype, shape, cout, kernel, stride, multiplier, mid, out):
    cpu = _inputs(shape, cout, kernel, multiplier, layout, dtype)
    dev = [t.to(KERNEL_DEVICE).requires_grad_() for t in cpu]
    pad = kernel // 2
    y = fusedops.dwpw_conv2d(*dev, stride=stride, padding=pad, mid_activation=mid, out_activation=out)
    ref_in = [t.double().requires_grad_() for t in cpu]
    ref = _reference.dwpw_conv2d(*ref_in, (stride, stride), (pad, pad), (1, 1), mid, out)
    tol = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 1e-2, torch.bfloat16: 4e-2}[dtype]
    assert_close_scaled(y.cpu(), ref, rtol=tol, atol=tol, name="output")
    go = torch.randn(ref.shape, dtype=torch.float64)
    grads = torch.autograd.grad(y, dev, go.to(dtype).to(KERNEL_DEVICE))
    ref_grads = torch.autograd.grad(ref, ref_in, go)
    for a, e in zip(grads, ref_grads):
        assert_close_scaled(a.cpu(), e, rtol=tol, atol=tol)
