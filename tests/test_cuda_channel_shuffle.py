"""The CUDA channel-shuffle kernels (GPU tests skip without a GPU) and their registration."""

import pytest
import torch
import torch.nn.functional as F

import fusedops
from fusedops import _extension

from conftest import CUDA_EMULATED, KERNEL_DEVICE

CL = torch.channels_last
needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and _extension.has_cuda_kernels()) and not CUDA_EMULATED,
                               reason="needs a CUDA GPU and the CUDA kernels")


@pytest.mark.skipif(not _extension.has_cuda_kernels(), reason="the CUDA kernels were not compiled in")
def test_cuda_kernels_registered():
    for name in ("channel_shuffle", "concat_shuffle", "_concat_shuffle_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedops::{name}", "CUDA")


def make(shape, dtype, layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=CL)
    elif layout == "slice":
        x = torch.cat([x, x], 1).chunk(2, 1)[1]
    elif layout == "cl_slice":
        x = torch.cat([x, x], 1).contiguous(memory_format=CL).chunk(2, 1)[0]
    return x.to(KERNEL_DEVICE)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("layout", ["nchw", "cl", "slice", "cl_slice"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_cuda_matches_torch(layout, dtype, groups):
    for cpg, hw in ((1, (1, 1)), (2, (3, 5)), (5, (8, 8)), (29, (28, 28))):
        x = make((2, groups * cpg) + hw, dtype, layout).requires_grad_(dtype != torch.float16)
        b = make((2, groups * cpg) + hw, dtype, "cl" if "cl" in layout else "nchw", seed=1)
        b.requires_grad_(x.requires_grad)
        with fusedops.use_backend("native"):
            y = fusedops.channel_shuffle(x, groups)
            z = fusedops.concat_shuffle(x, b, groups)
        expected = F.channel_shuffle(x.detach().cpu(), groups)
        assert torch.equal(y.cpu(), expected) and y.stride() == expected.stride()
        expected_z = F.channel_shuffle(torch.cat([x.detach().cpu(), b.detach().cpu()], 1), groups)
        assert torch.equal(z.cpu(), expected_z) and z.stride() == expected_z.stride()
        if x.requires_grad:
            with fusedops.use_backend("native"):
                grad_x, grad_b = torch.autograd.grad(z, (x, b), z)
            assert torch.equal(grad_x, x) and torch.equal(grad_b, b)
