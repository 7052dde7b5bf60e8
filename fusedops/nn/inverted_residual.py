"""MobileNetV2's inverted-residual block (:class:`InvertedResidual`, one fused op in eval mode) and the
conv -> BN -> activation unit of torchvision's MobileNets (:class:`ConvBNActivation`, one convolution with the BN
folded in, in eval mode), both with torchvision's submodules and state-dict keys."""

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .. import _backend
from ..ops import _library
from ..ops.conv2d_activation import NAME as CONV_ACTIVATION_NAME
from ..ops.ghost_module import NAME as GHOST_NAME, pack_weights as ghost_pack_weights
from ..ops.activations import activation_name
from ..ops.inverted_residual import inverted_residual, pack_weights
from .depthwise import DepthwiseConv2d
from . import training
from .freeze import FoldedWeights
from .fuse import fold_bn
from .linear import linear, runs_linear_kernel

# The activation modules of the unfused path, in place as in torchvision's blocks.
_ACTIVATION_MODULES = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU}


def _activation_module(name: str) -> nn.Module:
    """The in-place activation module of the op's activation `name` (nn.Identity for "none")."""
    return nn.Identity() if name == "none" else _ACTIVATION_MODULES[name](inplace=True)


class ConvBNActivation(FoldedWeights, nn.Sequential):
    """conv (no bias) -> ``nn.BatchNorm2d`` -> activation (in place; left out for ``None``), laid out as
    torchvision's ``Conv2dNormActivation`` with its defaults (children ``0``, ``1``, ``2``; padding
    ``(kernel_size - 1) // 2 * dilation``), so state-dict keys are the same. ``conv`` is the convolution class
    (``nn.Conv2d`` or :class:`fusedops.nn.DepthwiseConv2d`).

    Eval mode runs one convolution with the batch norm folded into its weights and the activation applied in
    place on its output (the stems and heads of the models: one pass over the output instead of three, no
    batch-norm output allocated); on CPU without gradients, a 3x3 stem (at most four input channels) runs fusedops'
    direct convolution with the activation in its epilogue, and a 1x1 head on one image's small map fusedops'
    pointwise GEMM (:func:`folded_conv_activation`). :meth:`freeze` keeps the folded weights as for the fused
    blocks. Train mode runs
    the convolution, then on CPU the batch norm and activation as one op (``fusedops/nn/training.py``), elsewhere
    the batch norm and activation modules. ``bn_eps`` and ``bn_momentum`` are the batch norm's (MobileNetV3 uses
    0.001 and 0.01)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, groups: int = 1, dilation=1,
                 activation="relu6", conv=nn.Conv2d, device=None, dtype=None, *, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1):
        k = nn.modules.utils._pair(kernel_size)
        d = nn.modules.utils._pair(dilation)
        padding = ((k[0] - 1) // 2 * d[0], (k[1] - 1) // 2 * d[1])
        factory = dict(device=device, dtype=dtype)
        layers = [conv(in_channels, out_channels, k, stride, padding, d, groups, bias=False, **factory),
                  nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum, **factory)]
        name = activation_name(activation, "activation")
        if name != "none":
            layers.append(_ACTIVATION_MODULES[name](inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels
        self.activation = name

    def _fold(self):
        return _fold(self[0], self[1])

    def forward(self, input):
        layers = self._modules
        conv, bn = layers["0"], layers["1"]
        if _runs_unfused(conv, (bn,)):
            return training.conv_batch_norm_activation(self, input, self.activation, super().forward)
        return folded_conv_activation(self, conv, input, self.activation)


_IN_PLACE_ACTIVATIONS = {"none": lambda x: x, "relu": F.relu_, "relu6": lambda x: F.hardtanh_(x, 0.0, 6.0),
                         "hardswish": lambda x: F.hardswish(x, inplace=True), "silu": lambda x: F.silu(x, inplace=True)}


def _fold(conv, bn):
    return fold_bn(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


def folded_conv_activation(block, conv, input, activation):
    """The eval-mode output of a conv -> BN -> `activation` `block` (a :class:`FoldedWeights` whose fold is the
    convolution's weight and bias with the batch norm folded in): one convolution, the activation in place on its
    output (one pass over the output instead of three, no batch-norm output allocated). Without gradients on CPU:
    fusedops' direct convolution for a stem (:func:`_runs_direct`), its pointwise GEMM for a small 1x1 head
    (:func:`_runs_pointwise_gemm`), each with the activation in its epilogue."""
    gemm = _runs_pointwise_gemm(conv, input)
    if gemm:
        # Frozen and called before: the native call made then, without the fold and packing checks.
        out = block._call_prepared(input, (activation,))
        if out is not NotImplemented:
            return out
    folded = block._folded_weights()
    weight, bias = folded
    if gemm and not weight.requires_grad:
        return _pointwise_gemm(block, folded, input, activation)
    if weight.requires_grad and torch.is_grad_enabled():
        weight = _GradientWithStrides.apply(weight, conv.weight.stride())
    if not weight.requires_grad and _runs_direct(conv, input):
        return _library.eager_native(CONV_ACTIVATION_NAME)(input, weight, bias, conv.stride, conv.padding,
                                                          conv.dilation, activation)
    if not weight.requires_grad and _runs_as_matrix_product(conv, input):
        out = _matrix_product(input, weight, bias)
    else:
        out = F.conv2d(input, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return _IN_PLACE_ACTIVATIONS[activation](out)


# The most pixels (N * H * W) a channels-last 1x1 convolution runs as one GEMM (F.linear) instead of F.conv2d. On
# the 2-vCPU Xeon, 2 threads: the 7x7 heads at N=1 and 8 and the maps up to 56x56 at N=1 ran 1.0-1.8x faster as
# a GEMM (464->1024 7x7: 177 vs 324 us at N=1, 1156 vs 1342 us at N=8; 116->116 28x28 N=1: 85 vs 114 us), the
# larger maps at N=8 slower (24->144 56x56: 985 vs 634 us; 116->116 28x28: 686 vs 587 us). Inference only (no
# gradient recorded): a training step keeps one algorithm whatever the batch, so a batch split over processes
# (DistributedDataParallel) rounds as the whole batch in one process does.
_MATRIX_PRODUCT_MAX_PIXELS = 4096


# The most pixels of a channels-last 1x1 convolution on one image that runs as fusedops' pointwise GEMM instead of
# F.linear: the 7x7 heads at batch 1. Measured on the 2-vCPU Xeon, 2 threads, with the activation, frozen (packed
# weights), warm / cold weights: 160 -> 960 81 / 142 us against 113 / 190, 320 -> 1280 173 / 262 against 222 / 315.
# Several images split the GEMM by image, each reading all the weights: 8 images of one pixel, 960 -> 1280, 706
# against 289 us; of 7x7, 320 -> 1280 1274 / 1495 against 1236 / 1288. So one image only.
_POINTWISE_GEMM_MAX_PIXELS = 64


def _runs_pointwise_gemm(conv, input):
    """Whether the eval-mode 1x1 convolution of `conv` on `input` runs as fusedops' pointwise GEMM: an eager call of
    the native CPU kernels (_backend.runs_native_eagerly) on a channels-last map of one image and at most
    _POINTWISE_GEMM_MAX_PIXELS pixels."""
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
            and _backend.runs_native_eagerly(input) and input.dim() == 4 and input.shape[0] == 1
            and input.shape[2] * input.shape[3] <= _POINTWISE_GEMM_MAX_PIXELS
            and input.is_contiguous(memory_format=torch.channels_last))


def _pointwise_gemm(block, folded, input, activation):
    """activation(1x1 convolution of `input` by the folded (weight, bias)) through fusedops' pointwise GEMM: the
    ghost_module op without cheap channels (out_channels = the primary convolution's). Frozen, its weights are
    packed once and the call is kept (_call_prepared); else the kernel packs them per call, so that a frozen block
    gives the unfrozen one's bits."""
    weight, bias = folded
    channels = weight.shape[0]
    cheap = weight.new_zeros(channels, 1, 1, 1)  # read by no output channel
    packed = block._packed_weights(
        folded, input, GHOST_NAME,
        lambda: ghost_pack_weights(input, weight, bias, cheap, None, channels, 1, activation))
    arguments = (weight, bias, cheap, None, None, channels, [1, 1], activation, packed)
    if packed is not None:
        block._prepare_call(GHOST_NAME, folded, (activation,), arguments)
    return _library.eager_native(GHOST_NAME)(input, *arguments)


# The most taps per output pixel (input channels x kernel height x kernel width) of a convolution that runs through
# fusedops' direct convolution (_conv2d_activation) instead of F.conv2d: the models' 3x3 stems of an image (grayscale,
# RGB, RGBA), where oneDNN's convolution spends its time on K = 27 too short for its blocking. Measured on the 2-vCPU
# Xeon, 2 threads, batch 1, 224x224 stride 2 with the activation: 3x3 of 3 channels to 16-128 channels 1.2-2.0x
# faster; 5x5 (75 taps) 0.99-1.07x; 7x7 (147 taps, ResNet's stem) 0.86-0.95x, where oneDNN's blocking pays.
_DIRECT_MAX_TAPS = 36


def _runs_direct(conv, input):
    """Whether the eval-mode convolution of `conv` (groups 1, zero padding given as numbers) on `input` runs as
    fusedops' direct convolution: an eager call of the native CPU kernel (_backend.runs_native_eagerly), at most
    _DIRECT_MAX_TAPS taps per output pixel."""
    return (conv.groups == 1 and conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] <= _DIRECT_MAX_TAPS
            and not isinstance(conv.padding, str) and conv.padding_mode == "zeros"
            and _backend.runs_native_eagerly(input) and input.dim() == 4)


def _matrix_product(input, weight, bias):
    """The 1x1 convolution of a channels-last `input` by `weight` (+ `bias`) as one GEMM on the map's (pixels x
    channels) matrix: a view in and a view out (where _runs_as_matrix_product says so). A few pixels (the pooled
    heads at small batches) go through fusedops' _linear_activation (linear.runs_linear_kernel)."""
    pixels, weight = input.permute(0, 2, 3, 1), weight.flatten(1)
    if runs_linear_kernel(pixels, weight, bias):
        return linear(pixels, weight, bias).permute(0, 3, 1, 2)
    return F.linear(pixels, weight, bias).permute(0, 3, 1, 2)


def _runs_as_matrix_product(conv, input):
    return (conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
            and input.dim() == 4 and input.device.type == "cpu"
            and input.shape[0] * input.shape[2] * input.shape[3] <= _MATRIX_PRODUCT_MAX_PIXELS
            and input.is_contiguous(memory_format=torch.channels_last))


class _GradientWithStrides(torch.autograd.Function):
    """The identity, whose backward gives the gradient `strides` where they lay out the same elements: PyTorch's
    convolution of a folded 1x1 weight can return its gradient with other strides in size-1 dimensions (a
    channels_last input and a contiguous weight), which the fold's product would pass on to the weight's own
    gradient, and DistributedDataParallel warns about and copies (_library.with_strides)."""

    @staticmethod
    def forward(ctx, tensor, strides):
        ctx.strides = strides
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return _library.with_strides(grad, ctx.strides), None


def _runs_unfused(conv, batch_norms) -> bool:
    """Whether a block runs its submodules instead of the fused op or folded convolution: when a batch norm
    normalises with batch statistics (train mode, or no running statistics to fold) or the (depthwise) convolution
    `conv` pads other than with zeros (the op pads with zeros)."""
    if conv.padding_mode != "zeros":
        return True
    return any(_normalizes_by_batch(bn) for bn in batch_norms)


def _run_fused(block, input, folded, stages, activation, residual, se=None):
    """The fused :func:`fusedops.inverted_residual` call of an inverted-residual `block` (a :class:`FoldedWeights`):
    `folded` holds its six folded weights first (what :meth:`FoldedWeights._folded_weights` returned), `stages` are
    its Stages (the depthwise convolution's stride, padding and dilation), `se` the op's squeeze-excitation tuple or
    None."""
    dw = stages.dw[0]
    weights = folded[:6]
    args = (dw.stride, dw.padding, dw.dilation, activation)
    se_arg = {} if se is None else {"se": se}
    # Frozen: the CPU kernel's packed form of the folded weights is made once too (packing costs as much as the
    # arithmetic at batch 1 on small maps).
    packed = block._packed_weights(folded, input, "inverted_residual",
                                   lambda: pack_weights(input, *weights, *args, **se_arg, residual=residual))
    if packed is not None:
        # The schema's arguments after the input, for the next calls of this frozen fold (_call_prepared).
        rw, rb, ew, eb, gate, se_activation = (None, None, None, None, "hardsigmoid", "relu") if se is None else se
        block._prepare_call("inverted_residual", folded, _call_key(dw, activation, residual),
                            (*weights, rw, rb, ew, eb, *args, residual, se_activation, gate, packed), stages)
    return inverted_residual(input, *weights, *args, **se_arg, residual=residual, packed_weights=packed)


def _call_key(dw, activation, residual):
    """What a prepared call of a block depends on besides its frozen fold: the depthwise convolution's geometry
    and the block's activation and residual (compared by identity: reassigning any of them drops the call)."""
    return dw.stride, dw.padding, dw.dilation, activation, residual


def _call_prepared(block, input):
    """The frozen `block`'s output through the native call its fused path prepared (FoldedWeights._prepare_call),
    or None where that call does not apply: not prepared, the fold or the input declined
    (FoldedWeights._prepared_record; always under torch.compile, which traces the fused path), a batch norm of its
    stages normalising by batch, or the key changed. The stages are kept with the call, and the key is compared
    in place: finding the stages and building the key cost ~1.5 us a call, a third of the block's Python."""
    if torch.compiler.is_compiling():
        return None
    prepared = block._prepared_record(input)
    if prepared is None or _stages_run_unfused(prepared[4]):
        return None
    dw, (stride, padding, dilation, activation, residual) = prepared[4].dw[0], prepared[1]  # (_call_key's order)
    if (dw.stride is not stride or dw.padding is not padding or dw.dilation is not dilation
            or block.activation is not activation or block.use_res_connect is not residual):
        return None
    out = prepared[2](input)
    return None if out is NotImplemented else out


def _stages_run_unfused(stages) -> bool:
    """_runs_unfused for an inverted-residual block's `stages` (Stages), checked without building the list of its
    batch norms: it runs on every call, and a frozen block's whole fixed cost is ~10 us."""
    expand, (dw, dw_bn), _, (_, project_bn) = stages
    return (dw.padding_mode != "zeros" or _normalizes_by_batch(dw_bn) or _normalizes_by_batch(project_bn)
            or (expand is not None and _normalizes_by_batch(expand[1])))


def _normalizes_by_batch(bn) -> bool:
    """Whether batch norm `bn` normalises with batch statistics: train mode, or no running statistics to fold."""
    return bn.training or bn._buffers.get("running_mean") is None


class Stages(NamedTuple):
    """The stages of an inverted-residual block, as the fused op takes them: ``expand``, ``dw`` and ``project`` are
    (convolution, batch norm) pairs (``expand`` None without an expansion); ``se`` is None or (the
    squeeze-excitation module, its reducing 1x1 convolution, its expanding 1x1 convolution)."""

    expand: Optional[tuple]
    dw: tuple
    se: Optional[tuple]
    project: tuple


class InvertedResidualBlock(FoldedWeights, nn.Module):
    """What the fused inverted-residual blocks share, whatever their submodules' layout (torchvision's MobileNetV2
    and V3 blocks, timm's): the fold of their batch norms and the forward, one fused op in eval mode. A subclass
    sets ``activation`` (the op's name of the activation after the expansion and the depthwise stage) and
    ``use_res_connect``, and defines :meth:`_stages` and :meth:`_forward_unfused` (its submodules in sequence, plus
    the input when ``use_res_connect``: train mode)."""

    # Whether train mode runs the fused training path (fusedops/nn/training.py) where it applies: the blocks whose
    # train-mode forward is their stages in sequence plus the input, nothing else (timm's drop the path at random).
    _trains_fused = False

    def _stages(self) -> Stages:
        raise NotImplementedError

    def _forward_unfused(self, input):
        raise NotImplementedError

    def _squeeze_excitation_activations(self, se):
        """(gate, activation): the op's names of the squeeze-excitation module `se`'s gate and inner activation
        (read from its modules, so one swapped in after construction counts)."""
        return se.activation_names()

    def _fold(self):
        expand, dw, se, project = self._stages()
        expand_w, expand_b = (None, None) if expand is None else _fold(*expand)
        dw_w, dw_b = _fold(*dw)
        project_w, project_b = _fold(*project)
        se_weights = None if se is None else (se[1].weight, se[1].bias, se[2].weight, se[2].bias)
        return expand_w, expand_b, dw_w, dw_b, project_w, project_b, se_weights

    def forward(self, input):
        out = _call_prepared(self, input)
        if out is not None:
            return out
        stages = self._stages()
        if _stages_run_unfused(stages):
            if self._trains_fused and training.applies(input, stages):
                return training.inverted_residual(input, stages, self.activation, self.use_res_connect,
                                                  self._trained_squeeze_excitation_activations(stages.se))
            return self._forward_unfused(input)
        folded = self._folded_weights()
        se = stages.se
        se_args = None if se is None else (*folded[6], *self._squeeze_excitation_activations(se[0]))
        return _run_fused(self, input, folded, stages, self.activation, self.use_res_connect, se_args)

    def _trained_squeeze_excitation_activations(self, se):
        """The training path's `se_activations` for the squeeze-excitation stage `se` (Stages.se): its (gate,
        activation) names, or None without one, or where the op has no such activations (the path then runs the
        module as it is)."""
        if se is None:
            return None
        try:
            return self._squeeze_excitation_activations(se[0])
        except ValueError:
            return None

    def extra_repr(self) -> str:
        frozen = ", frozen=True" if self._frozen else ""
        return f"activation={self.activation!r}, use_res_connect={self.use_res_connect}{frozen}"


class InvertedResidual(InvertedResidualBlock):
    r"""MobileNetV2's inverted-residual block (Sandler et al. 2018): [1x1 expansion -> BN -> act] ->
    depthwise kxk -> BN -> act -> 1x1 projection -> BN (linear), plus the input when ``stride == 1`` and
    ``inp == oup``, running the fused :func:`fusedops.inverted_residual` op.

    A drop-in for ``torchvision.models.mobilenetv2.InvertedResidual(inp, oup, stride, expand_ratio)``: same
    constructor arguments, attributes (``stride``, ``use_res_connect``, ``out_channels``) and submodules, so
    the state-dict keys are the same and weights load either way. ``conv`` is an ``nn.Sequential`` of

    * ``conv.0``: 1x1 expansion ``inp -> hidden = round(inp * expand_ratio)`` as conv (``nn.Conv2d``), BN,
      activation; only when ``expand_ratio != 1`` (the later children move up by one without it);
    * ``conv.1``: depthwise ``hidden -> hidden`` as conv (:class:`fusedops.nn.DepthwiseConv2d`, an ``nn.Conv2d``
      with the same parameters), BN, activation;
    * ``conv.2``: 1x1 projection ``nn.Conv2d(hidden, oup, 1, bias=False)``; ``conv.3``: ``nn.BatchNorm2d(oup)``.

    Eval mode runs one fused op with the batch norms folded into the weights (:func:`fusedops.fuse_bn`). By
    default the weights are folded afresh on every call, so the result always reflects the current parameters
    and buffers, however they were written (optimizer steps, ``load_state_dict``, ``.data`` writes by EMA or
    weight-loading utilities, inference tensors); while gradients are being recorded the fold is
    differentiable, so gradients reach the unfolded parameters. Train mode has torchvision's semantics (batch
    statistics, running-stat updates, so outputs, gradients and statistics are torchvision's): on CPU through the
    fused training path (``fusedops/nn/training.py``: each batch norm and its activation one op each way, and two
    tensors of the expanded width kept for the backward instead of four), elsewhere through ``conv`` (plus the
    input) as torchvision's block.

    :meth:`freeze` (or :func:`fusedops.freeze` on a whole model) takes the folded weights as constants
    instead, as ``torch.jit.freeze`` does: they are folded once and reused, which saves the fold's few
    small tensor operations per call in deployment. A frozen module refolds after ``.to()``/``.cuda()``/
    ``.half()`` and friends, ``load_state_dict``, ``copy.deepcopy`` and unpickling, but not after any other
    change of its parameters or buffers, and its fused path records no gradients for them: call
    :meth:`unfreeze` (or :meth:`freeze` again) after changing weights.

    Args:
        inp, oup: input and output channels.
        stride: of the depthwise stage, int or (int, int).
        expand_ratio: hidden channels per input channel; 1 leaves out the expansion.
        kernel_size, dilation: of the depthwise stage (padding ``(kernel_size - 1) // 2 * dilation``, as
            torchvision's ``Conv2dNormActivation``).
        activation: after the expansion and the depthwise stage: ``None``, ``"relu"``, ``"relu6"`` (MobileNetV2)
            or ``"hardswish"``.
    """

    def __init__(self, inp: int, oup: int, stride, expand_ratio, *, kernel_size=3, dilation=1, activation="relu6",
                 device=None, dtype=None):
        super().__init__()
        self.stride = stride
        s = nn.modules.utils._pair(stride)
        hidden_dim = int(round(inp * expand_ratio))
        if hidden_dim < 1:
            raise ValueError(f"fusedops: InvertedResidual needs round(inp * expand_ratio) >= 1, got inp={inp}, "
                             f"expand_ratio={expand_ratio}")
        self.activation = activation_name(activation, "activation")
        self.use_res_connect = s == (1, 1) and inp == oup
        factory = dict(device=device, dtype=dtype)
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNActivation(inp, hidden_dim, 1, activation=self.activation, **factory))
        layers += [
            ConvBNActivation(hidden_dim, hidden_dim, kernel_size, stride, hidden_dim, dilation, self.activation,
                             conv=DepthwiseConv2d, **factory),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False, **factory),
            nn.BatchNorm2d(oup, **factory),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        # torchvision's marker of the blocks that reduce the resolution: its backbone extractors for detection and
        # segmentation find the stage boundaries by it.
        self._is_cn = max(s) > 1

    _trains_fused = True

    def _stages(self):
        layers = self._modules["conv"]._modules
        # The units' children through their _modules, by key: Sequential indexing costs ~0.5 us a lookup on every
        # call, and a list of the layers ~0.3 us.
        first = 1 if len(layers) == 4 else 0
        expand, dw = layers["0"]._modules if first else None, layers[str(first)]._modules
        return Stages(None if expand is None else (expand["0"], expand["1"]), (dw["0"], dw["1"]), None,
                      (layers[str(first + 1)], layers[str(first + 2)]))

    def _forward_unfused(self, input):
        conv = self._modules["conv"]
        return input + conv(input) if self.use_res_connect else conv(input)

    def folded_weights(self):
        """(expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias) of the fused op, batch
        norms folded in; the expansion's are ``None`` without one."""
        return self._folded_weights()[:6]
