"""Argument normalisation and checks shared by the public op wrappers and the fake kernels.

Checks use ``torch._check`` so that the same code validates eager calls and traced (fake/symbolic)
calls; every message names the offending argument. The checks here look only at metadata that is never
symbolic (type, rank, dtype, device) and raise directly: Dynamo cannot trace a ``torch._check`` whose
message closes over a tensor, and these run in the public wrappers, which Dynamo traces.
"""

import numbers

import torch
from torch._prims_common import suggest_memory_format


def pair(value, name: str):
    """An int or a 2-sequence of ints -> tuple of 2 ints."""
    if type(value) is int:  # the common case first: this runs on every call
        return (value, value)
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        return value
    if isinstance(value, bool):
        raise TypeError(f"fusedops: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, numbers.Integral):
        return (int(value), int(value))
    if isinstance(value, (tuple, list, torch.Size)) and len(value) == 2:
        if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
            return (int(value[0]), int(value[1]))
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], numbers.Integral):
        return (int(value[0]), int(value[0]))
    raise TypeError(f"fusedops: {name} must be an int or a pair of ints, got {value!r}")


def check_tensor(t, name: str, *, rank=None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fusedops: {name} must be a torch.Tensor, got {type(t).__name__}")
    if rank is not None and t.dim() != rank:
        raise RuntimeError(f"fusedops: {name} must be a {rank}-D tensor, got {t.dim()}-D with shape {tuple(t.shape)}")


def check_same(t, ref, name: str, ref_name: str) -> None:
    """Same dtype and device as the reference tensor."""
    check_same_dtype(t, ref, name, ref_name)
    check_same_device(t, ref, name, ref_name)


def check_same_dtype(t, ref, name: str, ref_name: str) -> None:
    if t.dtype != ref.dtype:
        raise RuntimeError(f"fusedops: {name} dtype {t.dtype} does not match {ref_name} dtype {ref.dtype}")


def check_same_device(t, ref, name: str, ref_name: str) -> None:
    if t.device != ref.device:
        raise RuntimeError(f"fusedops: {name} is on {t.device} but {ref_name} is on {ref.device}; both must be on "
                           "the same device")


def check_floating(t, name: str) -> None:
    if not t.is_floating_point():
        raise RuntimeError(f"fusedops: {name} must be a floating-point tensor, got {t.dtype}")


def empty_like_format(t, shape):
    """An uninitialised tensor of `shape` in `t`'s suggested memory format (what the kernels return)."""
    return torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=suggest_memory_format(t))
