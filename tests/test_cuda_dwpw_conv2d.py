"""CUDA kernels of fusedops::dwpw_conv2d and its backward, compared with the CPU kernels and the float64
unfused reference. All but the first test need a GPU."""

import pytest
import torch

import fusedops

from conftest import (KERNEL_DEVICE, assert_close_scaled, dwpw_reference, gpu_test, make_dwpw_weights, make_input,
                      requires_cuda_kernels)


@requires_cuda_kernels
def test_cuda_kernels_registered():
    for op in ("fusedops::dwpw_conv2d", "fusedops::_dwpw_conv2d_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op


@gpu_test
@pytest.mark.parametrize("layout", ("nchw", "channels_last"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16, torch.float64), ids=str)
@pytest.mark.parametrize("shape, cout, kernel, stride, multiplier, mid, out", (
    ((2, 32, 28, 28), 64, 3, 1, 1, "relu6", "relu6"),
    ((1, 37, 15, 13), 20, 5, 2, 1, "hardswish", "none"),
    ((3, 8, 9, 9), 300, 3, 2, 2, "relu", "hardswish"),
    ((2, 24, 10, 11), 40, 3, 1, 1, "silu", "silu"),
))
def test_cuda_parity(layout, dtype, shape, cout, kernel, stride, multiplier, mid, out):
    cpu = [make_input(shape, layout, dtype=dtype),
           *make_dwpw_weights(shape[1], cout, kernel, multiplier, dtype=dtype, requires_grad=False)]
    dev = [t.to(KERNEL_DEVICE).requires_grad_() for t in cpu]
    pad = kernel // 2
    y = fusedops.dwpw_conv2d(*dev, stride=stride, padding=pad, mid_activation=mid, out_activation=out)
    ref_in = [t.double().requires_grad_() for t in cpu]
    ref = dwpw_reference(*ref_in, stride, pad, 1, mid, out)
    tol = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 1e-2, torch.bfloat16: 4e-2}[dtype]
    assert_close_scaled(y.cpu(), ref, rtol=tol, atol=tol, name="output")
    go = torch.randn(ref.shape, dtype=torch.float64)
    grads = torch.autograd.grad(y, dev, go.to(dtype).to(KERNEL_DEVICE))
    ref_grads = torch.autograd.grad(ref, ref_in, go)
    for a, e in zip(grads, ref_grads):
        assert_close_scaled(a.cpu(), e, rtol=tol, atol=tol)
