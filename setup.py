"""Build script for the ``fusedops._C`` extension.

One extension holds every kernel:

* ``csrc/*.cpp`` (op schemas), ``csrc/runtime/*.cpp`` (the module and its eager entry), ``csrc/shared/*.cpp``
  (argument checks and code every backend shares), ``csrc/autograd/*.cpp`` (autograd kernels) and
  ``csrc/cpu/*.cpp`` (CPU kernels) are always built, optimised and vectorised for the build machine (AVX-512,
  else AVX2, else portable code);
* ``csrc/cuda/*.cu`` is added whenever a CUDA toolkit and a CUDA build of torch are found, GPU or not.

Environment:

``FUSEDOPS_CUDA``      unset: build CUDA when possible; ``0``: never; ``1``: always (fail if impossible).
``FUSEDOPS_CPU_ARCH``  ``native`` (default: what the build machine supports), ``avx512``, ``avx2`` or ``default``.
``TORCH_CUDA_ARCH_LIST``  honoured; without it and without a visible GPU, ``9.0`` is built.
``NVCC_FLAGS``         extra nvcc flags.  ``DEBUG=1``: ``-O0 -g``.  ``MAX_JOBS``: parallel ninja jobs.
``FUSEDOPS_OPT``       the C++ optimisation flag instead of ``-O3`` (``make sanitize`` builds with ``-O1``).
Optimised builds carry no debug information (``-g0``) except under sanitizer CFLAGS.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
# The folders of csrc/ whose .cpp files every build compiles ("" is csrc/ itself).
CPP_FOLDERS = ("", "runtime", "shared", "autograd", "cpu")
DEBUG = os.environ.get("DEBUG", "0") == "1"
# Without a GPU to ask, build for Hopper: the one architecture CI compiles for; users with a GPU get theirs.
DEFAULT_CUDA_ARCH = "9.0"


def _version():
    with open(os.path.join(ROOT, "fusedops", "_version.py")) as f:
        scope = {}
        exec(f.read(), scope)
        return scope["__version__"]


def _find_cuda_home():
    """CUDA_HOME if set, else /usr/local/cuda, else whatever torch guessed.

    torch guesses from the location of ``nvcc`` on PATH; a ``/usr/local/bin/nvcc`` symlink makes it guess
    ``/usr/local``, where ``libcudart`` is not found, so the conventional toolkit directory wins over that.
    """
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    return cpp_extension.CUDA_HOME


def _cuda_decision():
    """Returns (build_cuda, reason)."""
    flag = os.environ.get("FUSEDOPS_CUDA", "").strip()
    if flag == "0":
        return False, "FUSEDOPS_CUDA=0"
    cuda_home = _find_cuda_home()
    problems = []
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is not a CUDA build")
    if cuda_home is None:
        problems.append("no CUDA toolkit found (set CUDA_HOME or install to /usr/local/cuda)")
    if problems:
        if flag == "1":
            sys.exit("fusedops: FUSEDOPS_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
        return False, "; ".join(problems)
    return True, f"toolkit {cuda_home}, torch CUDA {torch.version.cuda}"


def _cpu_flags_of_build_machine():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_arch():
    arch = os.environ.get("FUSEDOPS_CPU_ARCH", "native").lower()
    if arch not in ("native", "avx512", "avx2", "default"):
        sys.exit(f"fusedops: FUSEDOPS_CPU_ARCH must be native, avx512, avx2 or default, not {arch!r}")
    if arch == "native":
        flags = _cpu_flags_of_build_machine()
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
            arch = "avx512"
        elif {"avx2", "fma"} <= flags:
            arch = "avx2"
        else:
            arch = "default"
    return arch


# ATen's Vectorized<T> picks its width from these macros, exactly as ATen's own per-capability kernels do.
CPU_ARCH_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mavx2", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "default": ["-DCPU_CAPABILITY=DEFAULT"],
}


def _release_debug_info():
    """``-g0`` for optimised builds: Python's own CFLAGS, which every extension build starts from, carry ``-g``,
    and full debug info of the -O3 kernels costs about a third of their compile time (see below) for no change
    in the code. Kept for the sanitizer build (CFLAGS with -fsanitize), whose reports want line numbers."""
    # csrc/cpu/shufflenet_v2_unit.cpp on the 2-vCPU Xeon, both compiled at once: 29.3 s with -g, 19.9 s
    # without; identical .text.
    return [] if "-fsanitize" in os.environ.get("CFLAGS", "") else ["-g0"]


def get_extensions():
    build_cuda, cuda_reason = _cuda_decision()
    cpu_arch = _cpu_arch()

    sources = sorted(path for folder in CPP_FOLDERS for path in glob.glob(os.path.join(CSRC, folder, "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cu")))

    opt = ["-O0", "-g"] if DEBUG else [os.environ.get("FUSEDOPS_OPT", "-O3")]
    cxx_flags = opt + ([] if DEBUG else _release_debug_info())
    cxx_flags += ["-std=c++20", "-fopenmp", "-fvisibility=hidden", f'-DFUSEDOPS_CPU_ARCH="{cpu_arch}"']
    cxx_flags += CPU_ARCH_FLAGS[cpu_arch]
    define_macros = []
    extra_link_args = ["-fopenmp"]
    include_dirs = [os.path.join(ROOT, CSRC, "include")]
    extension = cpp_extension.CppExtension

    if build_cuda:
        cuda_home = _find_cuda_home()
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        # Recorded for fusedops.build_info(); separators normalised so the macro survives the shell.
        arch_list = ",".join(os.environ["TORCH_CUDA_ARCH_LIST"].replace(";", " ").split()) if os.environ.get(
            "TORCH_CUDA_ARCH_LIST") else "native"
        cxx_flags.append(f'-DFUSEDOPS_CUDA_ARCH_LIST="{arch_list}"')
        extension = cpp_extension.CUDAExtension
        nvcc_flags = opt + ["-std=c++20", "--expt-relaxed-constexpr", "-lineinfo",
                            "-DWITH_CUDA", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"]
        nvcc_flags += os.environ.get("NVCC_FLAGS", "").split()
        extra_compile_args = {"cxx": cxx_flags + ["-DWITH_CUDA"], "nvcc": nvcc_flags}
        library_dirs = [os.path.join(cuda_home, "lib64")]
    else:
        extra_compile_args = {"cxx": cxx_flags}
        library_dirs = []

    print(
        "fusedops build: "
        f"cpu_arch={cpu_arch} cuda={'yes' if build_cuda else 'no'} ({cuda_reason}) "
        f"arch_list={os.environ.get('TORCH_CUDA_ARCH_LIST', '-') if build_cuda else '-'} debug={DEBUG} "
        f"sources={len(sources)}",
        flush=True,
    )
    return [
        extension(
            "fusedops._C",
            sources,
            include_dirs=include_dirs,
            library_dirs=library_dirs,
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]


setup(
    name="fusedops",
    version=_version(),
    packages=find_packages(include=["fusedops", "fusedops.*"]),
    ext_modules=get_extensions(),
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
