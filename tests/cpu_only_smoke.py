"""Smoke check of a CPU-only build (`make check-cpu-only`): run from the folder that holds that build's
`fusedops` package, it checks that the package imported is that build, that it has its C++ kernels and no
CUDA kernels, and that every op runs and differentiates on CPU tensors with the reference's results."""

import os

import torch
import torch.nn.functional as F

import fusedops

here = os.path.abspath(os.getcwd())
assert os.path.abspath(fusedops.__file__).startswith(here), f"imported {fusedops.__file__}, not the build in {here}"
info = fusedops.build_info()
assert info["cpu"] and not info["cuda"], info

torch.manual_seed(0)
x = torch.randn(2, 8, 9, 7, dtype=torch.float64, requires_grad=True)
w = torch.randn(8, 1, 3, 3, dtype=torch.float64, requires_grad=True)
pw = torch.randn(6, 8, 1, 1, dtype=torch.float64, requires_grad=True)
b = torch.randn(8, dtype=torch.float64, requires_grad=True)

checks = {
    "depthwise_conv2d": (lambda: fusedops.depthwise_conv2d(x, w, b, padding=1),
                         lambda: F.conv2d(x, w, b, padding=1, groups=8)),
    "dwpw_conv2d": (lambda: fusedops.dwpw_conv2d(x, w, b, pw, None, stride=2),
                    lambda: F.hardtanh(F.conv2d(F.hardtanh(F.conv2d(x, w, b, 2, 1, groups=8), 0, 6), pw), 0, 6)),
    "inverted_residual": (lambda: fusedops.inverted_residual(x, None, None, w, b, pw, None),
                          lambda: F.conv2d(F.hardtanh(F.conv2d(x, w, b, 1, 1, groups=8), 0, 6), pw)),
    "ghost_module": (lambda: fusedops.ghost_module(x, pw[:4], None, w[:4], b[:4], 7),
                     lambda: torch.cat([F.relu(F.conv2d(x, pw[:4])),
                                        F.relu(F.conv2d(F.relu(F.conv2d(x, pw[:4])), w[:4], b[:4], 1, 1, groups=4))],
                                       1)[:, :7]),
    "channel_shuffle": (lambda: fusedops.channel_shuffle(x, 2), lambda: F.channel_shuffle(x, 2)),
    "concat_shuffle": (lambda: fusedops.concat_shuffle(x, x * 2, 4),
                       lambda: F.channel_shuffle(torch.cat([x, x * 2], 1), 4)),
}
for name, (fused, reference) in checks.items():
    out, expected = fused(), reference()
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.sum(), (x, w), allow_unused=True)
    expected_grads = torch.autograd.grad(expected.sum(), (x, w), allow_unused=True)
    for g, e in zip(grads, expected_grads):
        assert (g is None) == (e is None), name
        if g is not None:
            torch.testing.assert_close(g, e)
    print(f"{name}: ok")
print("cpu-only build:", info)
