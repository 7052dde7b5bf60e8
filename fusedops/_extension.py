"""Loading of the compiled extension ``fusedops._C`` and what it was built with."""

import importlib
import os
import warnings
from typing import Optional

import torch

from ._version import __version__

try:
    from . import _C  # registers the torch.ops.fusedops schemas and native kernels

    _LOAD_ERROR = None
except ImportError as e:  # source tree without a build, or a build against another torch
    _LOAD_ERROR = e

_warned_fallback = False

# Fixed for the life of the process; read once so that code traced by torch.compile sees constants.
_HAS_OPS = _LOAD_ERROR is None
_HAS_CUDA_KERNELS = _HAS_OPS and torch.ops.fusedops._cuda_version() != -1
_HAS_TRITON = importlib.util.find_spec("triton") is not None
# Triton reads TRITON_INTERPRET when its kernels are defined, so it must be set before start-up.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def has_ops() -> bool:
    """True when the native extension is loaded (C++ CPU kernels and the op schemas)."""
    return _HAS_OPS


def has_cuda_kernels() -> bool:
    """True when the CUDA kernels were compiled into the extension."""
    return _HAS_CUDA_KERNELS


def has_triton() -> bool:
    """True when Triton can be imported (it is not imported until a Triton kernel first runs)."""
    return _HAS_TRITON


def triton_interpreter_enabled() -> bool:
    return _TRITON_INTERPRET


def eager_op(name: str, template: Optional[tuple] = None):
    """The fast eager callable of native op `name` (csrc/runtime/eager_call.cpp): the op's result, or
    NotImplemented for arguments it leaves to ``torch.ops`` (non-plain types, ``__torch_function__``).
    With `template` (the op's leading arguments, ``...`` where each call gives one), bound to those arguments,
    converted once: None where one is not of a plain type."""
    return _C._eager_op(name) if template is None else _C._eager_op(name, template)


def shared_facts() -> dict:
    """Facts that C++ defines and Python must agree with, read once from ``fusedops._C._shared_facts()``:

    ``double_backward_message``: the error of differentiating a backward op, with an ``{op}`` placeholder for
    the forward op's name; ``dwpw_saved_output_activations`` and ``dwpw_saved_output_dtypes``: the output
    activations and dtypes for which dwpw_conv2d's autograd saves its output for the backward. Only what runs
    with the extension loaded asks (the Triton mirrors and the fake kernels exist only then).
    """
    global _shared_facts
    if _shared_facts is None:
        assert_has_ops("fusedops._extension.shared_facts()")
        _shared_facts = dict(_C._shared_facts())
    return _shared_facts


_shared_facts = None


def assert_has_ops(what: str = "the native backend") -> None:
    if not has_ops():
        raise RuntimeError(
            f"fusedops: {what} needs the compiled extension fusedops._C, which failed to load "
            f"({_LOAD_ERROR}). Build it with `pip install --no-build-isolation .` (see README)."
        )


def warn_reference_fallback(reason: str) -> None:
    """Warns once per process that ops run the slow pure-PyTorch reference instead of native kernels."""
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(f"fusedops: {reason}; falling back to the pure-PyTorch reference implementation.", stacklevel=3)


def build_info() -> dict:
    """What this installation can run: versions, which kernels were compiled in, and for which CPU/GPU."""
    info = {
        "version": __version__,
        "torch": torch.__version__,
        "cpu": has_ops(),
        "cuda": has_cuda_kernels(),
        "cuda_version": None,
        "cuda_arch_list": [],
        "triton": has_triton(),
        "cpu_capability": None,
        "cpu_caches": None,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda_available": torch.cuda.is_available(),
        "load_error": None if _LOAD_ERROR is None else str(_LOAD_ERROR),
    }
    if has_ops():
        info["cpu_capability"] = torch.ops.fusedops._cpu_arch()
        if hasattr(torch.ops.fusedops, "_cpu_caches"):
            info["cpu_caches"] = dict(zip(("l1d", "l2", "l3"), torch.ops.fusedops._cpu_caches()))
        version = torch.ops.fusedops._cuda_version()
        if version != -1:
            info["cuda_version"] = f"{version // 1000}.{(version % 1000) // 10}"
            info["cuda_arch_list"] = [a for a in torch.ops.fusedops._cuda_arch_list().split(",") if a]
    return info
