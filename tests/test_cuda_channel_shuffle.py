"""The CUDA channel-shuffle kernels (GPU tests skip without a GPU) and their registration."""

import pytest
import torch
import torch.nn.functional as F

import fusedops

from conftest import KERNEL_DEVICE, SHUFFLE_LAYOUTS, dense_layout, gpu_test, make_input, requires_cuda_kernels


@requires_cuda_kernels
def test_cuda_kernels_registered():
    for name in ("channel_shuffle", "concat_shuffle", "_concat_shuffle_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedops::{name}", "CUDA")


@gpu_test
@pytest.mark.parametrize("layout", SHUFFLE_LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("groups", [1, 2, 3, 4, 8])
def test_cuda_matches_torch(layout, dtype, groups):
    for cpg, hw in ((1, (1, 1)), (2, (3, 5)), (5, (8, 8)), (29, (28, 28))):
        # .to(KERNEL_DEVICE) copies the slices into dense tensors.
        x = make_input((2, groups * cpg) + hw, layout, dtype=dtype).to(KERNEL_DEVICE)
        x.requires_grad_(dtype != torch.float16)
        b = make_input((2, groups * cpg) + hw, dense_layout(layout), dtype=dtype).to(KERNEL_DEVICE)
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
