"""Which implementation an op runs: native kernels, Triton kernels, or the pure-PyTorch reference.

The choice is ``FUSEDOPS_BACKEND`` (read at import) or :func:`use_backend`, one of:

``auto``       CPU tensors: the C++ kernels. CUDA tensors: the CUDA kernels if compiled in, else Triton,
               else the reference. Falls back quietly (one warning) when the extension is missing.
``native``     the C++ / CUDA kernels; an error if they are not built for the tensor's device.
``triton``     the Triton kernels; on CPU tensors only through the Triton interpreter (TRITON_INTERPRET=1).
``reference``  the pure-PyTorch reference implementations.

Meta tensors (shape-only) run the ops' fake kernels under ``auto`` and ``native`` when the extension is
loaded, so they get exactly the shapes and memory formats the kernels produce.
"""

import contextlib
import os

import torch

from . import _extension

BACKENDS = ("auto", "native", "triton", "reference")

# Resolved implementations, as returned by resolve().
NATIVE, TRITON, REFERENCE = "native", "triton", "reference"


def _validate(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"fusedops: backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    return name


_default = _validate(os.environ.get("FUSEDOPS_BACKEND", "auto").strip().lower() or "auto")
# Innermost use_backend() last. A plain list (not thread-local) so torch.compile can trace the lookup.
_stack = []


def get_backend() -> str:
    """The backend in effect."""
    return _stack[-1] if _stack else _default


def set_backend(name: str) -> None:
    """Sets the process-wide default backend (what ``FUSEDOPS_BACKEND`` sets at import)."""
    global _default
    _default = _validate(name)


@contextlib.contextmanager
def use_backend(name: str):
    """Runs the ops called inside the ``with`` block on the given backend."""
    _stack.append(_validate(name))
    try:
        yield
    finally:
        _stack.pop()


def runs_native_eagerly(tensor) -> bool:
    """Whether an op call on `tensor` is the commonest one: eager (not traced), a plain CPU tensor, backend
    auto, the extension loaded. It runs the native kernel, so the op's wrapper may call it straight away
    (``_library.call_native_eagerly``) before any Python check: the C++ op checks its arguments itself.
    The one statement of the eager fast path's condition."""
    return (type(tensor) is torch.Tensor and tensor.is_cpu and not _stack and _default == "auto"
            and _extension.has_ops() and not torch.compiler.is_compiling())


def resolve_for(tensor, op_name: str) -> str:
    """resolve() for the device of `tensor`. The commonest call needs no ``tensor.device.type`` (~0.3 us): that
    of an op whose arguments the eager fast path left to the wrapper's regular path (e.g. padding="same")."""
    if runs_native_eagerly(tensor):
        return NATIVE
    return resolve(tensor.device, op_name)


def resolve(device, op_name: str) -> str:
    """The implementation (NATIVE, TRITON or REFERENCE) that runs `op_name` for tensors on `device`."""
    requested = get_backend()
    kind = device.type
    if requested == "reference":
        return REFERENCE
    if requested == "native":
        _extension.assert_has_ops(f"backend 'native' ({op_name})")
        if kind in ("cpu", "meta"):
            return NATIVE
        if kind == "cuda":
            if not _extension.has_cuda_kernels():
                raise RuntimeError(
                    f"fusedops: backend 'native' was asked for {op_name} on a CUDA tensor, but the CUDA kernels "
                    "were not compiled in (build with a CUDA toolkit, or FUSEDOPS_CUDA=1); use 'triton' or 'auto'."
                )
            return NATIVE
        raise RuntimeError(f"fusedops: backend 'native' has no kernels for device type {kind!r} ({op_name})")
    if requested == "triton":
        _check_triton_usable(kind, op_name)
        return TRITON
    # auto
    if kind == "cpu":
        if _extension.has_ops():
            return NATIVE
        _extension.warn_reference_fallback("the compiled extension fusedops._C is not available")
        return REFERENCE
    if kind == "cuda":
        if _extension.has_cuda_kernels():
            return NATIVE
        if _extension.has_ops() and _extension.has_triton():
            return TRITON
        _extension.warn_reference_fallback("neither the CUDA kernels nor Triton are available")
        return REFERENCE
    if kind == "meta" and _extension.has_ops():
        return NATIVE
    return REFERENCE


def _check_triton_usable(kind: str, op_name: str) -> None:
    if not _extension.has_triton():
        raise RuntimeError(f"fusedops: backend 'triton' was asked for {op_name}, but Triton is not installed")
    _extension.assert_has_ops(f"backend 'triton' ({op_name}; the op schemas live in the extension)")
    if kind == "cpu" and not _extension.triton_interpreter_enabled():
        raise RuntimeError(
            f"fusedops: backend 'triton' on CPU tensors ({op_name}) runs only through the Triton interpreter; "
            "set TRITON_INTERPRET=1 before starting Python (it is meant for testing)"
        )
    if kind not in ("cpu", "cuda"):
        raise RuntimeError(f"fusedops: backend 'triton' has no kernels for device type {kind!r} ({op_name})")
