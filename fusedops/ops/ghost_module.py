"""fusedops.ghost_module: GhostNet's Ghost module as one op. Public wrapper, fake kernels, autograd.

Kernels: csrc/cpu/ghost_module.cpp, csrc/cuda/ghost_module.cu, fusedops/ops/_triton/ghost_module.py; checks, composed
forward and backward (every native backend): csrc/shared/ghost_module.cpp; native autograd:
csrc/autograd/ghost_module.cpp; reference: fusedops/ops/_reference.py; schema: csrc/ghost_module.cpp; argument checks
and output shape: fusedops/ops/_geometry.py.
"""

import torch

from .. import _backend, _extension
from . import _args, _geometry, _library, _reference
from .activations import activation_name

NAME = "ghost_module"
BACKWARD_NAME = "_ghost_module_backward"


def ghost_module(input, primary_weight, primary_bias, cheap_weight, cheap_bias, out_channels, stride=1,
                 activation="relu", residual=None, packed_weights=None):
    r"""GhostNet's Ghost module (timm's ``GhostModule``) with eval-mode batch norms folded into the weights
    (:func:`fusedops.fuse_bn`):

    ``x1 = act(conv1x1(input, primary_weight, primary_bias, stride))``,
    ``x2 = act(depthwise_conv2d(x1, cheap_weight, cheap_bias, padding=k // 2))``,
    ``out = cat([x1, x2], 1)[:, :out_channels]``, plus ``residual`` when given (GhostNet's bottleneck adds its
    shortcut to the second Ghost module's output).

    Both halves are written straight into their channels of the output: no concatenation, no slice copy, and only
    the cheap channels the output keeps are computed. On CPU the module is one kernel over bands of output rows:
    the primary half of a band (with the depthwise halo) is computed into a per-thread tile, stored, and read from
    that tile by the depthwise stage while it is in cache. On CUDA and through Triton the module is one kernel over
    tiles of output pixels: the primary half of a tile with the depthwise halo is computed on chip (shared memory;
    Triton: a per-program scratch slot), its tile stored, and read there by the depthwise stage. The backward
    recomputes the primary half from the input, so training keeps only the input alive.

    Args:
        input: ``Tensor[N, C_in, H, W]``, any layout (channels_last is the fast one on CPU).
        primary_weight: ``Tensor[C_init, C_in, 1, 1]`` (GhostNet's primary convolutions are 1x1; a kxk one is
            refused).
        primary_bias: optional ``Tensor[C_init]``.
        cheap_weight: ``Tensor[C_init * m, 1, kH, kW]``, odd kH and kW (``m = ratio - 1``, the depth multiplier).
        cheap_bias: optional ``Tensor[C_init * m]``.
        out_channels: channels kept, ``C_init <= out_channels <= C_init * (1 + m)`` (timm:
            ``C_init = ceil(out_channels / ratio)``).
        stride: of the primary convolution, int or (int, int).
        activation: ``None``, ``"relu"``, ``"relu6"``, ``"hardswish"`` or ``"silu"``, after each half.
        residual: optional ``Tensor[N, out_channels, H_out, W_out]`` added to the output.
        packed_weights: optional, :func:`pack_weights` of these weights: the CPU kernel reads them as packed
            instead of packing them on every call. A copy: make it again after the weights change. Other backends
            ignore it.

    Returns:
        ``Tensor[N, out_channels, H_out, W_out]`` in the input's memory format.
    """
    out = _library.call_native_eagerly(NAME, input, input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                       residual, out_channels, stride, activation, packed_weights)
    if out is not NotImplemented:
        return out
    args = _normalize(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels, stride,
                      activation) + (packed_weights,)
    return _library.call_op(NAME, args, tensor_args=6, check=_geometry.check_ghost_module,
                            reference=_reference.ghost_module)


def _normalize(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels, stride,
               activation):
    _args.check_tensor(input, "input", rank=4)
    _args.check_tensor(primary_weight, "primary_weight", rank=4)
    _args.check_tensor(cheap_weight, "cheap_weight", rank=4)
    for t, name in ((primary_bias, "primary_bias"), (cheap_bias, "cheap_bias")):
        if t is not None:
            _args.check_tensor(t, name, rank=1)
    if residual is not None:
        _args.check_tensor(residual, "residual", rank=4)
    if isinstance(out_channels, bool) or not isinstance(out_channels, int):
        raise TypeError(f"fusedops: out_channels must be an int, got {type(out_channels).__name__}")
    return (input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels,
            _args.pair(stride, "stride"), activation_name(activation, "activation"))


def pack_weights(input, primary_weight, primary_bias, cheap_weight, cheap_bias, out_channels, stride=1,
                 activation="relu", residual=None):
    """The weights of a :func:`ghost_module` call (same arguments) packed as the CPU kernel reads them, to pass as
    its ``packed_weights``: valid for every later call with weights of these values (a copy is taken), channel
    counts, kernel size and dtype, whatever the input's size. ``None`` where the call would not run the native CPU
    kernel (tensors on another device, another backend, a build without the extension)."""
    if input.device.type != "cpu" or _backend.resolve_for(input, NAME) != _backend.NATIVE:
        return None
    args = _normalize(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels, stride,
                      activation)
    return torch.ops.fusedops._ghost_module_pack_weights(*args)


def _fake(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels, stride, activation,
          packed_weights=None):
    _geometry.check_ghost_module(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels,
                                 stride, activation)
    return _args.empty_like_format(input, _geometry.ghost_module_output_shape(input, out_channels, stride))


def _fake_backward(grad_output, input, primary_weight, primary_bias, cheap_weight, cheap_bias, out_channels, stride,
                   activation, output_mask):
    _geometry.check_ghost_module_backward(grad_output, input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                          out_channels, stride, activation)

    def like(t, wanted):
        if not wanted or t is None:
            return input.new_empty(0)
        return t.new_empty(t.shape)

    grad_input = _args.empty_like_format(input, input.shape) if output_mask[0] else input.new_empty(0)
    weights = (primary_weight, primary_bias, cheap_weight, cheap_bias)
    return (grad_input,) + tuple(like(t, wanted) for t, wanted in zip(weights, output_mask[1:]))


# Tensor arguments of the schema that may need a gradient: input, the four weights and biases, the residual.
_TENSORS = 6


def _setup_context(ctx, inputs, output):
    # The backward recomputes the primary half from the input: only the input and the weights are kept.
    ctx.save_for_backward(*inputs[:5])
    ctx.module_args = inputs[6:9]  # out_channels, stride, activation


def _make_backward(ops):
    def backward(ctx, grad_output):
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad
        mask = [needs[i] and (saved[i] is not None) for i in range(5)]
        grads = ops._ghost_module_backward(grad_output, *saved, *ctx.module_args, mask)
        return tuple(g if m else None for g, m in zip(grads, mask)) + (grad_output if needs[5] else None,) + \
            (None,) * 4

    return backward


# The native op's autograd is C++ (csrc/autograd/ghost_module.cpp, the same formula as _make_backward).
_library.register_op_with_backward_op(NAME, BACKWARD_NAME, "ghost_module", _fake, _fake_backward, _make_backward,
                                      _setup_context)


# _ghost_module_depthwise (csrc/ghost_module.cpp): ghost_module, then a depthwise convolution of its output, as one
# CPU kernel for inference; GhostBottleneck calls it (ghost_module_then_depthwise).
DEPTHWISE_NAME = "_ghost_module_depthwise"


def ghost_module_then_depthwise(input, primary_weight, primary_bias, cheap_weight, cheap_bias, out_channels, stride,
                                activation, dw_weight, dw_bias, dw_stride, packed_weights=None):
    """``depthwise_conv2d(ghost_module(input, ...), dw_weight, dw_bias, dw_stride, padding=k // 2)`` (no activation
    after it): one native CPU kernel where that pays (:func:`ghost_module_then_depthwise_fuses`), the module's output
    rows computed into a per-thread tile that the depthwise convolution reads, never written to memory; otherwise
    the two ops. Arguments as :func:`ghost_module`'s (``stride``, ``dw_stride``: pairs;
    ``activation``: the op's name) and :func:`fusedops.depthwise_conv2d`'s."""
    if ghost_module_then_depthwise_fuses(input, out_channels, stride, primary_weight, primary_bias, cheap_weight,
                                         cheap_bias, dw_weight, dw_bias):
        return torch.ops.fusedops._ghost_module_depthwise(input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                                         out_channels, stride, activation, dw_weight, dw_bias,
                                                         dw_stride, packed_weights)
    from .depthwise_conv2d import depthwise_conv2d

    module = ghost_module(input, primary_weight, primary_bias, cheap_weight, cheap_bias, out_channels, stride,
                          activation, packed_weights=packed_weights)
    padding = (dw_weight.shape[2] // 2, dw_weight.shape[3] // 2)
    return depthwise_conv2d(module, dw_weight, dw_bias, dw_stride, padding)


def ghost_module_then_depthwise_fuses(input, out_channels, stride, *weights):
    """Whether :func:`ghost_module_then_depthwise` runs its one kernel for these tensors: CPU, the native backend,
    no gradient wanted (the kernel has no backward), not compiling (the graph keeps the two differentiable ops), and
    a module output that would not stay in the L2 cache between the two ops.

    Where it would stay there, the kernel's strips of rows cost more than the round trip saves. GhostNet's stride-2
    bottlenecks on a 2-vCPU Xeon (2 MiB L2, 2 threads), time fused / two ops: batch 8, 0.84x at 112x112 (16->48,
    19 MiB of module output), 0.93x at 56x56, 0.88x at 28x28, 0.99x at 14x14 (4.2 MiB); batch 1, 0.91x at 112x112
    (2.4 MiB), but 1.03x at 56x56 (0.9 MiB) and 1.14x at 14x14 (0.5 MiB, 672 channels)."""
    if not _runs_inference_natively(input, *weights):
        return False
    n, _, h, w = _geometry.ghost_module_output_shape(input, out_channels, stride)
    return n * out_channels * h * w * input.element_size() > _l2_cache_bytes()


def _runs_inference_natively(input, *tensors, devices=("cpu",)):
    """Whether the inference-only kernels (_ghost_module_depthwise, _ghost_module_excited: CPU; _ghost_bottleneck: CPU
    and CUDA) may take a call on these tensors: on one of `devices`, the native backend, not compiling, and no
    gradient recorded through any of them."""
    return _runs_inference(_backend.NATIVE, input, tensors, devices)


def _runs_inference(impl, input, tensors, devices):
    """Whether a call on these tensors resolves to `impl` (NATIVE or TRITON) on one of `devices`, outside a traced
    graph (which keeps the differentiable ops), with no gradient recorded through any of them."""
    return (input.device.type in devices and not torch.compiler.is_compiling()
            and _backend.resolve_for(input, NAME) == impl
            and not (torch.is_grad_enabled()
                     and any(t is not None and t.requires_grad for t in (input, *tensors))))


def _l2_cache_bytes():
    global _L2_BYTES
    if _L2_BYTES is None:
        _L2_BYTES = int(torch.ops.fusedops._cpu_caches()[1])
    return _L2_BYTES


_L2_BYTES = None


def _check_following_depthwise(module_output, dw_weight, dw_bias, dw_stride, channels_name):
    """The checks of the depthwise stage after a module (_ghost_module_depthwise's; _ghost_bottleneck's between its
    modules), as the CPU kernels' following_depthwise_geometry makes them, on a tensor of the module output's shape
    (dw_stride checked for two elements by the caller). Returns the stage's output (height, width)."""
    channels = module_output.shape[1]
    torch._check(dw_stride[0] > 0 and dw_stride[1] > 0,
                 lambda: f"fusedops: dw_stride must be positive, got {list(dw_stride)}")
    kh, kw = dw_weight.shape[2], dw_weight.shape[3]
    torch._check(dw_weight.dim() == 4 and dw_weight.shape[0] == channels and dw_weight.shape[1] == 1
                 and kh % 2 == 1 and kw % 2 == 1,
                 lambda: f"fusedops: dw_weight must have shape ({channels_name}={channels}, 1, kH, kW) with odd kH "
                 f"and kW (padding k // 2), got {list(dw_weight.shape)}")
    _geometry.check_depthwise(module_output, dw_weight, dw_bias, dw_stride, (kh // 2, kw // 2), (1, 1), "dw_weight",
                              "dw_bias", channels)
    _, _, h, w = module_output.shape
    return (h - 1) // dw_stride[0] + 1, (w - 1) // dw_stride[1] + 1


def _fake_depthwise(input, primary_weight, primary_bias, cheap_weight, cheap_bias, out_channels, stride, activation,
                    dw_weight, dw_bias, dw_stride, packed_weights=None):
    _geometry.check_ghost_module(input, primary_weight, primary_bias, cheap_weight, cheap_bias, None, out_channels,
                                 stride, activation)
    _geometry.check_pair(dw_stride, "dw_stride")
    module_output = input.new_empty(_geometry.ghost_module_output_shape(input, out_channels, stride))
    h, w = _check_following_depthwise(module_output, dw_weight, dw_bias, dw_stride, "out_channels")
    return _args.empty_like_format(input, (input.shape[0], out_channels, h, w))


if _extension.has_ops():
    torch.library.register_fake(f"fusedops::{DEPTHWISE_NAME}")(_fake_depthwise)


# _ghost_module_excited (csrc/ghost_module.cpp): ghost_module of the input gated by its squeeze-excitation, as one
# CPU kernel for inference; GhostBottleneck calls it (ghost_module_excited).
EXCITED_NAME = "_ghost_module_excited"


def ghost_module_excited_fuses(input, *tensors):
    """Whether :func:`ghost_module_excited` runs its one kernel for these tensors: CPU, the native backend, no
    gradient wanted (the kernel has no backward), not compiling (the graph keeps the differentiable ops)."""
    return _runs_inference_natively(input, *tensors)


def ghost_module_excited(input, se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, se_activation,
                         se_gate, primary_weight, primary_bias, cheap_weight, cheap_bias, out_channels, stride,
                         activation, residual=None, packed_weights=None):
    """``ghost_module(input * gate, ...)`` with ``gate = se_gate(conv1x1(se_activation(conv1x1(mean_hw(input),
    se_reduce_weight, se_reduce_bias)), se_expand_weight, se_expand_bias))`` (GhostNet's squeeze-excitation and the
    Ghost module after it): one native CPU kernel where :func:`ghost_module_excited_fuses`, whose gates scale the
    module's GEMM input on its way in (the gated input is never written); otherwise the squeeze-excitation as
    PyTorch ops (the reference's), then :func:`ghost_module`. ``se_activation``: an activation name; ``se_gate``:
    ``"hardsigmoid"`` or ``"sigmoid"``; the rest as :func:`ghost_module`'s (``stride`` a pair)."""
    se = (se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias)
    module = (primary_weight, primary_bias, cheap_weight, cheap_bias)
    if ghost_module_excited_fuses(input, *se, *module, residual):
        return torch.ops.fusedops._ghost_module_excited(input, *se, se_activation, se_gate, *module, residual,
                                                        out_channels, stride, activation, packed_weights)
    gated = _reference.squeeze_excitation(input, *se, se_activation, se_gate)
    return ghost_module(gated, *module, out_channels, stride, activation, residual=residual,
                        packed_weights=packed_weights)


def _fake_excited(input, se_reduce_weight, se_reduce_bias, se_expand_weight, se_expand_bias, se_activation, se_gate,
                  primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels, stride, activation,
                  packed_weights=None):
    _geometry.check_ghost_module(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels,
                                 stride, activation)
    return _args.empty_like_format(input, _geometry.ghost_module_output_shape(input, out_channels, stride))


if _extension.has_ops():
    torch.library.register_fake(f"fusedops::{EXCITED_NAME}")(_fake_excited)


# _ghost_bottleneck (csrc/ghost_module.cpp): GhostNet's bottleneck without squeeze-excitation (two Ghost modules, the
# stride-2 depthwise stage between them where there is one, the shortcut added) as one CPU kernel for inference;
# GhostBottleneck calls it (ghost_bottleneck).
BOTTLENECK_NAME = "_ghost_bottleneck"


def ghost_bottleneck_fuses(input, *tensors):
    """Whether :func:`ghost_bottleneck` runs its native kernel for these tensors: CPU or CUDA, the native backend, no
    gradient wanted (the kernel has no backward), not compiling (the graph keeps the differentiable ops). (On the
    Triton backend the same calls run its Triton kernels: :func:`ghost_bottleneck_runs_triton`.)"""
    return _runs_inference_natively(input, *tensors, devices=("cpu", "cuda"))


def ghost_bottleneck_runs_triton(input, *tensors):
    """Whether :func:`ghost_bottleneck` runs its Triton kernels (``ghost_bottleneck_forward`` in
    fusedops/ops/_triton/ghost_module.py) for these tensors: the call resolves to the Triton backend (CUDA tensors;
    CPU tensors under the Triton interpreter), no gradient wanted, not compiling."""
    return _runs_inference(_backend.TRITON, input, tensors, ("cpu", "cuda"))


def ghost_bottleneck(input, primary_weight, primary_bias, cheap_weight, cheap_bias, mid_channels, activation,
                     dw_weight, dw_bias, dw_stride, second_primary_weight, second_primary_bias, second_cheap_weight,
                     second_cheap_bias, out_channels, second_activation, residual, packed_weights=None,
                     second_packed_weights=None):
    """``ghost_module(x, second_primary_weight, ..., out_channels, 1, second_activation, residual=residual)`` of
    ``x = ghost_module(input, primary_weight, ..., mid_channels, 1, activation)``, then, where ``dw_weight`` is given,
    ``x = depthwise_conv2d(x, dw_weight, dw_bias, dw_stride, padding=k // 2)``: GhostNet's bottleneck without
    squeeze-excitation, batch norms folded, its shortcut passed as ``residual`` (the input for an identity one).
    Without gradients and outside a traced graph: on the native backend the native op
    (:func:`ghost_bottleneck_fuses`), on the CPU one kernel in which everything between the input and the output is
    computed into per-thread tiles, never written to memory, on CUDA two, the depthwise stage computed inside the
    second module's (the first module's output makes one round trip); on the Triton backend the same two kernels as
    on CUDA, in Triton (:func:`ghost_bottleneck_runs_triton`). Otherwise (gradients wanted, compiling, the reference
    backend) the ops one after another. ``activation``, ``second_activation``: the op's names; ``dw_stride``: a
    pair; ``packed_weights``, ``second_packed_weights``: :func:`pack_weights` of each module's arguments (the CPU
    kernel's; the other backends ignore them)."""
    first = (primary_weight, primary_bias, cheap_weight, cheap_bias)
    second = (second_primary_weight, second_primary_bias, second_cheap_weight, second_cheap_bias)
    if ghost_bottleneck_fuses(input, *first, dw_weight, dw_bias, *second, residual):
        return torch.ops.fusedops._ghost_bottleneck(input, *first, mid_channels, activation, dw_weight, dw_bias,
                                                    dw_stride, *second, out_channels, second_activation, residual,
                                                    packed_weights, second_packed_weights)
    if ghost_bottleneck_runs_triton(input, *first, dw_weight, dw_bias, *second, residual):
        from ._triton.ghost_module import ghost_bottleneck_forward

        return ghost_bottleneck_forward(input, *first, mid_channels, activation, dw_weight, dw_bias, dw_stride,
                                        *second, out_channels, second_activation, residual)
    x = ghost_module(input, *first, mid_channels, 1, activation, packed_weights=packed_weights)
    if dw_weight is not None:
        from .depthwise_conv2d import depthwise_conv2d

        x = depthwise_conv2d(x, dw_weight, dw_bias, dw_stride, (dw_weight.shape[2] // 2, dw_weight.shape[3] // 2))
    return ghost_module(x, *second, out_channels, 1, second_activation, residual=residual,
                        packed_weights=second_packed_weights)


def _check_bottleneck(input, primary_weight, primary_bias, cheap_weight, cheap_bias, mid_channels, activation,
                      dw_weight, dw_bias, dw_stride, second_primary_weight, second_primary_bias, second_cheap_weight,
                      second_cheap_bias, out_channels, second_activation, residual):
    """_ghost_bottleneck's checks (the fake kernel's and the Triton launcher's; the native kernels': C++
    ghost_bottleneck_geometry), each module's errors saying which module, as the kernels'. Returns the output's
    shape."""
    try:
        _geometry.check_ghost_module(input, primary_weight, primary_bias, cheap_weight, cheap_bias, None,
                                     mid_channels, (1, 1), activation)
    except RuntimeError as e:
        raise RuntimeError("fusedops: _ghost_bottleneck's first module (out_channels: mid_channels): "
                           f"{_without_prefix(e)}") from None
    n, _, h, w = input.shape

    def shaped(*shape):
        # A stand-in of that shape on the input's device and dtype, for the checks: one element expanded, no memory
        # (the Triton launcher checks real tensors).
        return input.new_empty((1, 1, 1, 1)).expand(shape)

    _geometry.check_pair(dw_stride, "dw_stride")
    if dw_weight is not None:
        h, w = _check_following_depthwise(shaped(n, mid_channels, h, w), dw_weight, dw_bias, dw_stride, "mid_channels")
    else:
        torch._check(dw_bias is None, lambda: "fusedops: dw_bias is given without dw_weight")
    try:
        _geometry.check_ghost_module(shaped(n, mid_channels, h, w), second_primary_weight,
                                     second_primary_bias, second_cheap_weight, second_cheap_bias, residual,
                                     out_channels, (1, 1), second_activation)
    except RuntimeError as e:
        raise RuntimeError("fusedops: _ghost_bottleneck's second module (second_primary_weight, second_primary_bias, "
                           "second_cheap_weight, second_cheap_bias, out_channels, second_activation, residual; its "
                           "input: the first module's output, after the depthwise stage where there is one): "
                           f"{_without_prefix(e)}") from None
    return (n, out_channels, h, w)


def _fake_bottleneck(input, primary_weight, primary_bias, cheap_weight, cheap_bias, mid_channels, activation,
                     dw_weight, dw_bias, dw_stride, second_primary_weight, second_primary_bias, second_cheap_weight,
                     second_cheap_bias, out_channels, second_activation, residual, packed_weights=None,
                     second_packed_weights=None):
    return _args.empty_like_format(input, _check_bottleneck(
        input, primary_weight, primary_bias, cheap_weight, cheap_bias, mid_channels, activation, dw_weight, dw_bias,
        dw_stride, second_primary_weight, second_primary_bias, second_cheap_weight, second_cheap_bias, out_channels,
        second_activation, residual))


def _without_prefix(error):
    return str(error).removeprefix("fusedops: ")


if _extension.has_ops():
    torch.library.register_fake(f"fusedops::{BOTTLENECK_NAME}")(_fake_bottleneck)
