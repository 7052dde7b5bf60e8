"""Smoke check of a CPU-only build (`make check-cpu-only`): run from the folder that holds that build's
`fusedops` package, it checks that the package imported is that build, that it has its C++ kernels and no
CUDA kernels, and that every op runs and differentiates on CPU tensors with the reference's results (the
parity check of `fusedops check`, on every backend this build can run)."""

import os

import torch

import fusedops
from fusedops._bench import parity

here = os.path.abspath(os.getcwd())
assert os.path.abspath(fusedops.__file__).startswith(here), f"imported {fusedops.__file__}, not the build in {here}"
info = fusedops.build_info()
assert info["cpu"] and not info["cuda"], info
backends = parity.available_backends("cpu")
assert "native" in backends, backends

torch.manual_seed(0)
if not parity.check("cpu", backends):
    raise SystemExit("cpu-only build: parity check failed")
print("cpu-only build:", info)
