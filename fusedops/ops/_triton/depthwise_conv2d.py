"""Triton kernels of fusedops_triton::depthwise_conv2d and fusedops_triton::_depthwise_conv2d_backward.

Semantics: ``F.conv2d(input, weight, bias, stride, padding, dilation, groups=C)`` with weight
(C*multiplier, 1, kH, kW); output channel ``oc`` reads input channel ``oc // multiplier``.

Layout. Every kernel works on a 2-D register tile of (pixels x channels): the pixel axis is a
BLOCK_H x BLOCK_W rectangle of one image, flattened (``p // BLOCK_W``, ``p % BLOCK_W`` with BLOCK_W a
power of two, so the compiler still sees runs of BLOCK_W consecutive columns), and the channel axis is
BLOCK_C consecutive channels. Tensors are addressed through their strides, so NCHW, channels_last and
strided views all run natively, without copies; only the tile shape depends on the layout
(see ``_tile``): for channels_last the channel axis is the long, contiguous one (coalesced and
vectorised loads along C), for NCHW the W axis is (runs of up to 32 columns per channel).

Accumulation is in fp32 (fp64 for fp64 tensors); results are cast to the tensor dtype on store.

Kernels (the two backward ones are in _common.py, as the dwpw_conv2d backward runs them too):
  * forward: one program per (image, output-pixel tile, output-channel tile); the kernel taps are
    unrolled (KH, KW are constexpr; for very large kernels only the KW loop is unrolled), borders are
    handled by masks, the bias is fused.
  * grad_input: a gather (transposed convolution, any stride/dilation): one program per
    (image, input-pixel tile, input-channel tile) sums, over the multiplier's output channels and the
    taps, the output gradients whose window covers each input pixel.
  * grad_weight / grad_bias: a deterministic two-stage reduction over N*OH*OW. The pixel tiles of the
    whole batch are split into chunks; one program per (tap, channel tile, chunk) accumulates
    grad_output * input for its tap over its chunk in a (pixels x channels) register tile and writes one
    partial sum per channel into an fp32 buffer (chunks, OC, kH*kW); grad_bias comes from the tap-0
    programs into (chunks, OC). A final sum over the chunk axis (fixed order, no atomics) gives the
    gradients. The programs of the kH*kW taps of one tile are adjacent in launch order, so the
    grad_output/input tiles they share are served from L2.
"""

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from .. import _geometry
from ._common import (MAX_UNROLLED_TAPS, acc_dtype, depthwise_grad_input, device_context, needs_int64, num_warps,
                      pixel_tile, program_target, tile, vector_arg, weight_grad_partials)

# Looked up in this module at each launch, so that tests can force the int64 indexing and a chunked
# grad_weight reduction on small problems.
_needs_int64 = needs_int64
_program_target = program_target
_MAX_UNROLLED_TAPS = MAX_UNROLLED_TAPS


@triton.jit
def _fwd_row(acc, x_img, x_ch, w_ch, ih0, iw0, mask_p, mask_c, kh, H, W,
             sxh, sxw, swh, sww, dil_h, dil_w, KW: tl.constexpr, ACC: tl.constexpr):
    """Adds the KW taps of kernel row `kh` to the forward accumulator."""
    ih = ih0 + kh * dil_h
    mask_h = mask_p & (ih >= 0) & (ih < H)
    row = x_img + ih * sxh
    for kw in tl.static_range(KW):
        iw = iw0 + kw * dil_w
        m = mask_h & (iw >= 0) & (iw < W)
        xv = tl.load(row[:, None] + (iw * sxw)[:, None] + x_ch[None, :],
                     mask=m[:, None] & mask_c[None, :], other=0.0)
        wv = tl.load(w_ch + kh * swh + kw * sww, mask=mask_c, other=0.0)
        # The padding adds nothing, not 0 * w (NaN for a NaN or Inf weight, where PyTorch has none).
        acc += tl.where(m[:, None], xv.to(ACC) * wv.to(ACC)[None, :], 0.0)
    return acc


@triton.jit
def _depthwise_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    H, W, OC, OH, OW, MULT,
    sxn, sxc, sxh, sxw,
    swo, swh, sww,
    syn, syc, syh, syw,
    tiles_h, tiles_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, UNROLL_KH: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    INT64: tl.constexpr, ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    tiles = tiles_h * tiles_w
    n = pid // tiles
    oh, ow = pixel_tile(pid % tiles, tiles_w, BLOCK_H, BLOCK_W)
    oc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = (oh < OH) & (ow < OW)
    mask_c = oc < OC
    ci = oc // MULT
    if INT64:
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
        oc = oc.to(tl.int64)
        ci = ci.to(tl.int64)

    x_img = x_ptr + n.to(tl.int64) * sxn
    x_ch = ci * sxc
    w_ch = w_ptr + oc * swo
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    acc = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=ACC)
    if UNROLL_KH:
        for kh in tl.static_range(KH):
            acc = _fwd_row(acc, x_img, x_ch, w_ch, ih0, iw0, mask_p, mask_c, kh, H, W,
                           sxh, sxw, swh, sww, dil_h, dil_w, KW, ACC)
    else:
        for kh in range(KH):
            acc = _fwd_row(acc, x_img, x_ch, w_ch, ih0, iw0, mask_p, mask_c, kh, H, W,
                           sxh, sxw, swh, sww, dil_h, dil_w, KW, ACC)
    if HAS_BIAS:
        bv = tl.load(b_ptr + oc, mask=mask_c, other=0.0)
        acc += bv.to(ACC)[None, :]

    y = y_ptr + n.to(tl.int64) * syn + (oh * syh + ow * syw)[:, None] + (oc * syc)[None, :]
    tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])



# ---------------------------------------------------------------------------------------------------
# Launchers


def _launch_geometry(input, weight, stride, padding, dilation):
    """(N, C, H, W, OC, multiplier, kH, kW, OH, OW) of arguments that passed the op's checks, on a device the
    Triton kernels run on."""
    if input.device.type == "cpu":
        from ..._extension import triton_interpreter_enabled

        if not triton_interpreter_enabled():
            raise RuntimeError("fusedops: the Triton depthwise_conv2d kernels run on CPU tensors only through "
                               "the Triton interpreter; set TRITON_INTERPRET=1 before starting Python")
    elif input.device.type != "cuda":
        raise RuntimeError(f"fusedops: the Triton depthwise_conv2d kernels need CUDA tensors, got {input.device}")
    n, c, h, w = input.shape
    oc, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
    _, _, out_h, out_w = _geometry.depthwise_output_shape(input, weight, stride, padding, dilation)
    return n, c, h, w, oc, oc // c, kh, kw, out_h, out_w


def _conv_args(stride, padding, dilation):
    return (int(stride[0]), int(stride[1]), int(padding[0]), int(padding[1]), int(dilation[0]), int(dilation[1]))


def depthwise_conv2d_forward(input, weight, bias, stride, padding, dilation):
    # The op's own checks, so that a direct call fails as on every other backend.
    _geometry.check_depthwise(input, weight, bias, stride, padding, dilation)
    n, c, h, w, oc, mult, kh, kw, out_h, out_w = _launch_geometry(input, weight, stride, padding, dilation)
    fmt = suggest_memory_format(input)
    out = torch.empty((n, oc, out_h, out_w), dtype=input.dtype, device=input.device, memory_format=fmt)
    if out.numel() == 0:
        return out
    block_h, block_w, block_c = tile(fmt == torch.channels_last, out_h, out_w, oc)
    tiles_h, tiles_w = triton.cdiv(out_h, block_h), triton.cdiv(out_w, block_w)
    grid = (n * tiles_h * tiles_w, triton.cdiv(oc, block_c))
    has_bias = bias is not None
    # float64 unrolls half as many taps: its values take two registers each (7x7 unrolled spilled 632 B, sm_90).
    unroll_kh = kh * kw <= (_MAX_UNROLLED_TAPS // 2 if input.dtype == torch.float64 else _MAX_UNROLLED_TAPS)
    with device_context(input):
        _depthwise_fwd_kernel[grid](
            input, weight, vector_arg(bias, weight), out,
            h, w, oc, out_h, out_w, mult,
            *input.stride(),
            weight.stride(0), weight.stride(2), weight.stride(3),
            *out.stride(),
            tiles_h, tiles_w,
            *_conv_args(stride, padding, dilation),
            KH=kh, KW=kw, UNROLL_KH=unroll_kh, HAS_BIAS=has_bias,
            BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c,
            INT64=_needs_int64(input, out), ACC=acc_dtype(input.dtype),
            num_warps=num_warps(block_h, block_w, block_c),
        )
    return out


def depthwise_conv2d_backward(grad_output, input, weight, stride, padding, dilation, output_mask):
    _geometry.check_depthwise_backward(grad_output, input, weight, stride, padding, dilation)
    oc, mult, kh, kw = _launch_geometry(input, weight, stride, padding, dilation)[4:8]
    if len(output_mask) != 3:
        raise RuntimeError(f"fusedops: output_mask must have 3 elements, got {len(output_mask)}")
    want_input, want_weight, want_bias = (bool(m) for m in output_mask)
    fmt = suggest_memory_format(input)
    channels_last = fmt == torch.channels_last
    conv = _conv_args(stride, padding, dilation)
    empty = input.new_empty(0)

    grad_input = empty
    if want_input:
        grad_input = torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=fmt)
        if grad_input.numel() > 0:
            with device_context(input):
                depthwise_grad_input(grad_output, weight, grad_input, mult, conv, channels_last,
                                     _needs_int64(grad_output, grad_input))

    grad_weight = grad_bias = empty
    if want_weight or want_bias:
        taps = kh * kw
        partial_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        if grad_output.numel() == 0:
            partial_w = torch.zeros((1, oc, taps), dtype=partial_dtype, device=input.device)
            partial_b = torch.zeros((1, oc), dtype=partial_dtype, device=input.device)
        else:
            partial_w, partial_b = weight_grad_partials(grad_output, input, kh, kw, mult, conv, channels_last,
                                                        want_weight, want_bias, partial_dtype,
                                                        _program_target(input.device),
                                                        _needs_int64(grad_output, input))
        if want_weight:
            grad_weight = partial_w.sum(0).to(input.dtype).view(oc, 1, kh, kw)
        if want_bias:
            grad_bias = partial_b.sum(0).to(weight.dtype)
    return grad_input, grad_weight, grad_bias
