"""Every Triton kernel compiled for sm_80 and sm_90 by the real Triton GPU compiler (no GPU needed).

See tests/triton_gpu_compile.py: launch configurations are recorded under the interpreter, then compiled
in a process without it; shared memory must fit the device and registers must not spill. Slow (minutes):
runs only with FUSEDOPS_TRITON_GPU_COMPILE=1 (make test-triton-compile).
"""

import importlib.util
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))

pytestmark = [
    pytest.mark.skipif(os.environ.get("FUSEDOPS_TRITON_GPU_COMPILE", "0") != "1",
                       reason="slow: set FUSEDOPS_TRITON_GPU_COMPILE=1 (make test-triton-compile)"),
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton"),
]


def test_triton_kernels_compile_for_gpus(tmp_path):
    configs = tmp_path / "configs.json"
    script = os.path.join(HERE, "triton_gpu_compile.py")
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, script, "record", str(configs)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, script, "compile", str(configs), "80", "90"], env=env,
                         capture_output=True, text=True)
    failures = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert run.returncode == 0 and not failures, "\n".join(failures) or (run.stdout + run.stderr)[-4000:]
