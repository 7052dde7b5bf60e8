"""Builds and loads the test-only CPU emulation of the CUDA kernels (csrc/testing/cuda_emu).

The kernels of ``csrc/cuda/*.cu`` are compiled unchanged by the host compiler against the emulation's
headers, together with the host code they call, into a library that registers them as the ``fusedops``
ops' CPU kernels, replacing the C++ CPU kernels for the rest of the process. Load it only in a test process
of its own: ``FUSEDOPS_CUDA_EMU=1 pytest tests/test_cuda_*.py`` (``make test-cuda-emu``).

``FUSEDOPS_CUDA_EMU_TREE=DIR`` takes the kernels from DIR/cuda/*.cu and DIR/include/fusedops/cuda/ instead
of csrc/ (the mutation check, tests/cuda_emu_mutations.py, builds altered copies that way), into a library
of its own. ``FUSEDOPS_CUDA_EMU_SANITIZE=1`` builds it with AddressSanitizer and UndefinedBehaviorSanitizer (the Python
process must then start with libasan preloaded; see the Makefile's ``test-cuda-emu-sanitize``).
"""

import glob
import os
import subprocess

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = os.path.join(ROOT, "csrc", "testing", "cuda_emu")

# Host code the CUDA sources call (csrc/shared/: geometry, checks, the dwpw banded backward), compiled into
# the library because fusedops._C exports no symbols. It defines no schemas (those are fusedops._C's).
HOST_SOURCES = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "csrc", "shared", "*.cpp")))


def sanitized():
    return os.environ.get("FUSEDOPS_CUDA_EMU_SANITIZE", "0") == "1"


def _tree():
    return os.environ.get("FUSEDOPS_CUDA_EMU_TREE")


def _wrappers(build_dir):
    """One C++ translation unit per source: `#include`s of the unchanged files (the .cu suffix would send
    them to nvcc)."""
    # The runtime, and the kernels of the emulation's own tests (tests/test_cuda_emu_self_test.py).
    sources = [os.path.join(EMU, "runtime.cpp"), os.path.join(EMU, "self_test.cpp")]
    cuda_dir = os.path.join(_tree(), "cuda") if _tree() else os.path.join(ROOT, "csrc", "cuda")
    for path in sorted(glob.glob(os.path.join(cuda_dir, "*.cu"))) + [
            os.path.join(ROOT, p) for p in HOST_SOURCES]:
        stem = "_".join(os.path.relpath(path, _tree() or ROOT).split(os.sep)).replace(".", "_")
        wrapper = os.path.join(build_dir, f"{stem}.cpp")
        text = f'#include "{path}"\n'
        if not os.path.exists(wrapper) or open(wrapper).read() != text:
            with open(wrapper, "w") as f:
                f.write(text)
        sources.append(wrapper)
    return sources


def load():
    """Builds (incrementally) and loads the emulated kernels; returns the library's path."""
    name = "fusedops_cuda_emu" + ("_sanitized" if sanitized() else "") + ("_tree" if _tree() else "")
    build_dir = os.path.join(ROOT, "build", name)
    os.makedirs(build_dir, exist_ok=True)
    flags = ["-std=c++20", "-O1", "-fvisibility=hidden", "-DFUSEDOPS_CUDA_EMULATION", "-Wno-unknown-pragmas"]
    ldflags = []
    if sanitized():
        flags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
        ldflags += ["-fsanitize=address,undefined"]
    cpp_extension.load(
        name=name,
        sources=_wrappers(build_dir),
        extra_include_paths=[os.path.join(EMU, "include")] + ([os.path.join(_tree(), "include")] if _tree() else [])
        + [os.path.join(ROOT, "csrc", "include")],
        extra_cflags=flags,
        extra_ldflags=ldflags,
        build_directory=build_dir,
        is_python_module=False,
        verbose=os.environ.get("FUSEDOPS_CUDA_EMU_VERBOSE", "0") == "1",
    )
    library = os.path.join(build_dir, f"{name}.so")
    _register_static_shared(library)
    return library


def _register_static_shared(library):
    """Tells the runtime where the kernels' static __shared__ arrays are, so that it poisons them before
    every block: the function-local statics of namespace fusedops::cuda (mangled _ZZN8fusedops4cuda...)."""
    out = subprocess.run(["nm", "-S", "--defined-only", library], capture_output=True, text=True, check=True).stdout
    offsets, sizes = [], []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[2] in "bBdD" and fields[3].startswith("_ZZN8fusedops4cuda"):
            offsets.append(int(fields[0], 16))
            sizes.append(int(fields[1], 16))
    assert offsets, f"no static __shared__ arrays found in {library}"
    torch.ops.fusedops_emu.register_static_shared(offsets, sizes)


def configure(multiprocessors=132, schedule="forward", seed=0):
    """Multiprocessor count reported to the host code, and the order threads and blocks run in."""
    order = {"forward": 0, "reversed": 1, "random": 2}[schedule]
    torch.ops.fusedops_emu.configure(multiprocessors, order, seed)


def counters():
    """(kernel launches, blocks run) so far."""
    launches, blocks = torch.ops.fusedops_emu.counters()
    return launches, blocks


if __name__ == "__main__":  # builds ahead of the tests
    print(load())
