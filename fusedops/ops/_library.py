"""Registration and the call path shared by every op.

Every op wrapper (``fusedops/ops/<op>.py``) is the same two steps: ``call_native_eagerly`` first (the
commonest call, before any Python work), else its own argument normalisation and ``call_op``, which picks the
implementation, runs the Python checks where no kernel does, and calls it.

Each op's schema is written once, in C++ (``csrc/<op>.cpp``), in the ``fusedops`` namespace, whose CPU
and CUDA kernels are the native ones. The Triton kernels are bound to a mirror namespace,
``fusedops_triton``, with the same schemas (copied from the C++ ones), so that both are real
``torch.library`` ops. Fake kernels are registered on both through this module, once per op, from the
op's own Python module (``fusedops/ops/<op>.py``); so is the Triton mirror's autograd, while the native
op's autograd is C++ (``csrc/autograd/<op>.cpp``).
"""

import importlib

import torch

from .. import _backend, _extension

NATIVE_NAMESPACE = "fusedops"
TRITON_NAMESPACE = "fusedops_triton"

_triton_library = None


def namespaces():
    """Namespaces whose ops exist in this process."""
    if not _extension.has_ops():
        return []
    return [NATIVE_NAMESPACE] + ([TRITON_NAMESPACE] if _extension.has_triton() else [])


def ops_for(impl: str):
    """The torch.ops namespace object that runs the resolved implementation NATIVE or TRITON."""
    return getattr(torch.ops, TRITON_NAMESPACE if impl == _backend.TRITON else NATIVE_NAMESPACE)


def call_native_eagerly(name: str, tensor, *args):
    """The commonest call of op `name` (``_backend.runs_native_eagerly(tensor)``) straight to the C++ op,
    which checks its arguments itself (same messages), before any Python check: the first line of every op
    wrapper, before its normalisation. NotImplemented when the call is not that one or has arguments of other
    types: the wrapper then normalises them and calls ``call_op``, which converts or refuses them."""
    if not _backend.runs_native_eagerly(tensor):
        return NotImplemented
    return eager_native(name)(*args)


def call_op(name: str, args: tuple, tensor_args: int, check, reference):
    """Every call of op `name` that ``call_native_eagerly`` left, with the wrapper's normalised `args`, whose
    first `tensor_args` are the tensors that may require grad: runs the implementation the backend resolves
    to. The native kernels check their arguments themselves and traced calls are checked by the fake kernel
    (both with the messages of `check`), so `check(*args)` runs only where neither does: before the
    reference implementation `reference(*args)` and the Triton kernels, on eager calls. (Dynamo refuses
    ``torch._check`` messages that close over tensors or symbolic sizes, so it must not trace `check`.)"""
    impl = _backend.resolve_for(args[0], name)
    if impl != _backend.NATIVE and not torch.compiler.is_dynamo_compiling():
        check(*args)
    if impl == _backend.REFERENCE:
        return reference(*args)
    return call(impl, name, args[:tensor_args], *args)


def call(impl: str, name: str, grad_inputs, *args):
    """Calls op `name` of the resolved implementation (NATIVE or TRITON) on `args`.

    Eager calls skip the Python layers of ``torch.ops``: a native op is called straight through the
    dispatcher (``eager_native``), whose Autograd kernel (``csrc/autograd/<op>.cpp``) itself steps below
    autograd when there is nothing to record. The Triton mirror's autograd is Python (~4 us a call, more
    than the kernel on small maps), so when autograd has nothing to record (grad mode off, or no tensor of
    `grad_inputs` requires grad: inference, frozen layers) that call enters below the autograd layer.
    Traced calls always take the regular path.
    """
    if torch.compiler.is_compiling():
        return getattr(ops_for(impl), name)(*args)
    if impl != _backend.TRITON:
        out = eager_native(name)(*args)
        return _torch_op(impl, name)(*args) if out is NotImplemented else out
    op = _torch_op(impl, name)
    if torch.is_grad_enabled():
        for t in grad_inputs:
            if t is not None and t.requires_grad:
                return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)


def eager_native(name: str):
    """The fast eager callable of native op `name` (``fusedops._C._eager_op``): the same dispatcher call
    as ``torch.ops.fusedops.<name>`` without its generic argument conversion, 1.2-2.5 us less a call
    (1x4x1x1 channel_shuffle 2.3 -> 1.05 us, 1x4x3x3 depthwise_conv2d 6.2 -> 3.7 us). It returns
    NotImplemented for arguments it leaves to torch.ops: non-plain types, ``__torch_function__``
    overrides. Eager calls only (Dynamo cannot trace it)."""
    op = _eager_native.get(name)
    if op is None:
        op = _eager_native[name] = _extension.eager_op(name)
    return op


def bound_native(name: str, template: tuple):
    """:func:`eager_native` of op `name` bound to the arguments of `template` (its leading arguments, ``...`` where
    each call gives one, in order): they are converted once, here, instead of on every call. None where one of
    them is not of a plain type."""
    return _extension.eager_op(name, template)


def _torch_op(impl: str, name: str):
    op = _torch_ops.get((impl, name))
    if op is None:
        overload = getattr(ops_for(impl), name).default
        # OpOverload.__call__ only forwards to the C++ operator handle `_op` (~0.4 us a call on top).
        op = _torch_ops[(impl, name)] = getattr(overload, "_op", overload)
    return op


# op name -> its eager_native callable; (implementation, op name) -> the callable of the default overload.
_eager_native = {}
_torch_ops = {}


def define_triton_mirror(name: str, module: str, launcher: str) -> None:
    """Defines ``fusedops_triton::<name>`` with the schema of ``fusedops::<name>``, implemented by
    ``fusedops.ops._triton.<module>.<launcher>`` (imported on first call, so TRITON_INTERPRET and the
    CUDA context are settled by then)."""
    global _triton_library
    if TRITON_NAMESPACE not in namespaces():
        return
    if _triton_library is None:
        _triton_library = torch.library.Library(TRITON_NAMESPACE, "DEF")
    schema = str(getattr(torch.ops.fusedops, name).default._schema)
    _triton_library.define(schema.split("::", 1)[1])
    resolved = []

    def kernel(*args):
        if not resolved:
            resolved.append(getattr(importlib.import_module(f"fusedops.ops._triton.{module}"), launcher))
        return resolved[0](*args)

    # CPU: the Triton interpreter runs the same kernels on CPU tensors (testing only; the Python wrapper
    # refuses CPU tensors unless TRITON_INTERPRET=1).
    for key in ("CUDA", "CPU"):
        _triton_library.impl(name, kernel, key)


def register_fake(name: str, fn) -> None:
    for ns in namespaces():
        torch.library.register_fake(f"{ns}::{name}")(fn)


def register_triton_autograd(name: str, make_backward, setup_context) -> None:
    """Autograd of the Triton mirror of op `name`; `make_backward(ops)` returns the backward function that
    calls the backward op in namespace `ops`. The native op's autograd is C++ (``csrc/autograd/<op>.cpp``,
    the same formula without the Python cost of a training step)."""
    if TRITON_NAMESPACE in namespaces():
        backward = make_backward(getattr(torch.ops, TRITON_NAMESPACE))

        def setup_context_and_strides(ctx, inputs, output):
            setup_context(ctx, inputs, output)
            ctx.gradient_strides = [t.stride() if isinstance(t, torch.Tensor) and t.requires_grad else None
                                    for t in inputs]

        def backward_with_strides(ctx, *grads):
            return tuple(with_strides(g, strides) for g, strides in zip(backward(ctx, *grads), ctx.gradient_strides))

        torch.library.register_autograd(f"{TRITON_NAMESPACE}::{name}", backward_with_strides,
                                        setup_context=setup_context_and_strides)


def with_strides(grad, strides):
    """`grad` with exactly its argument's `strides` where the two lay out the same elements (they differ only in the
    strides of size-1 dimensions): a view. As the native ops' autograd does (``with_strides`` in
    ``csrc/include/fusedops/autograd.h``): DistributedDataParallel compares every stride with its bucket views."""
    if grad is None or strides is None or grad.stride() == strides or grad.dim() != len(strides):
        return grad
    if any(size != 1 and stride != wanted for size, stride, wanted in zip(grad.shape, grad.stride(), strides)):
        return grad
    return grad.as_strided(grad.shape, strides, grad.storage_offset())


def register_no_double_backward(name: str, forward_name: str) -> None:
    """Differentiating the Triton mirror of the backward op `name` raises a clear error instead of returning
    wrong gradients (the native backward ops raise the same error from C++, ``csrc/autograd/<op>.cpp``)."""

    if TRITON_NAMESPACE in namespaces():
        message = _extension.shared_facts()["double_backward_message"].format(op=forward_name)

        def backward(ctx, *grads):
            raise RuntimeError(message)

        torch.library.register_autograd(f"{TRITON_NAMESPACE}::{name}", backward,
                                        setup_context=lambda ctx, inputs, output: None)


def register_op_with_backward_op(name: str, backward_name: str, triton_module: str, fake, fake_backward,
                                 make_backward, setup_context) -> None:
    """Everything Python registers for an op `name` whose backward is an op of its own, `backward_name`
    (without a derivative): the Triton mirrors of both (launchers ``<triton_module>_forward`` and
    ``<triton_module>_backward`` in ``fusedops.ops._triton.<triton_module>``), their fake kernels, the
    Triton mirror's autograd formula (the native one is C++), and the clear error of double backward."""
    define_triton_mirror(name, triton_module, f"{triton_module}_forward")
    define_triton_mirror(backward_name, triton_module, f"{triton_module}_backward")
    register_fake(name, fake)
    register_fake(backward_name, fake_backward)
    register_triton_autograd(name, make_backward, setup_context)
    register_no_double_backward(backward_name, name)
