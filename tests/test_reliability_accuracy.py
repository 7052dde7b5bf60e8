"""Accuracy of the weight and bias gradients' reductions: float32 error against a float64 reference close to
PyTorch's own (blocked / pairwise partial sums, not one long running sum)."""

import pytest
import torch

from conftest import requires_triton


def _relative_error(actual, expected):
    return ((actual.double() - expected) / expected).abs().max().item()


@pytest.mark.triton
@requires_triton
def test_triton_parameter_gradients_sum_in_short_chunks():
    """More pixel tiles than one chunk may add in a row: several chunks, summed afterwards, and the result
    as accurate as PyTorch's."""
    from fusedops.ops._triton import _common
    from fusedops.ops._triton import depthwise_conv2d as triton_dw

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n, c, h, w = 80, 2, 8, 8  # 80 tiles of 8x8 pixels: at least 3 chunks
    x = (torch.randn(n, c, h, w, dtype=torch.float64) + 1.0)
    weight = torch.randn(c, 1, 3, 3, dtype=torch.float64)
    go = torch.randn(n, c, h, w, dtype=torch.float64) + 0.5
    xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
    br = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(xr, wr, br, 1, 1, 1, c).backward(go)
    f32 = [t.float().to(device) for t in (go, x, weight)]
    _, gw, gb = triton_dw.depthwise_conv2d_backward(*f32, [1, 1], [1, 1], [1, 1], [False, True, True])
    assert _common.MAX_TILES_PER_CHUNK < n
    assert _relative_error(gb.cpu(), br.grad) < 2e-6
    assert _relative_error(gw.cpu(), wr.grad) < 2e-5
