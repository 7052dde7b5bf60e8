"""Triton kernels of fusedops_triton::dwpw_conv2d and fusedops_triton::_dwpw_conv2d_backward.

Semantics: ``act_out(conv1x1(act_mid(depthwise(input, dw_weight) + dw_bias), pw_weight) + pw_bias)``.

Forward: one program per (image, tile of BLOCK_P output pixels, tile of BLOCK_N output channels). It loops
over the depthwise channels K in chunks of BLOCK_K: computes the depthwise outputs of its pixels for the
chunk in registers (taps unrolled, borders masked, bias and middle activation fused), and multiplies the
(BLOCK_P x BLOCK_K) tile with the (BLOCK_K x BLOCK_N) slice of the 1x1 weights into a register
accumulator (``tl.dot``). The depthwise output never leaves the chip; each output-channel tile recomputes
it (kH*kW multiply-adds per depthwise output, against BLOCK_N for the GEMM). Bias and output activation
are applied before the store. Tensors are addressed through their strides: any layout runs without copies.
fp32 GEMMs use exact fp32 products (input_precision="ieee"); fp16/bf16 tiles go through tensor cores in
their own dtype with fp32 accumulation.

Backward: band-wise recomputation with torch ops on the device (the algorithm of the native backward,
csrc/dwpw_conv2d.cpp): per band of output rows the depthwise output is recomputed, so only the input is
kept for training.
"""

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from .depthwise_conv2d import _acc_dtype, _device_context, _needs_int64, _next_pow2

ACT_CODES = {"none": 0, "relu": 1, "relu6": 2, "hardswish": 3}


@triton.jit
def _activation(x, ACT: tl.constexpr):
    if ACT == 1:
        x = tl.maximum(x, 0.0)
    elif ACT == 2:
        x = tl.minimum(tl.maximum(x, 0.0), 6.0)
    elif ACT == 3:
        x = x * tl.minimum(tl.maximum(x + 3.0, 0.0), 6.0) / 6.0
    return x


@triton.jit
def _dwpw_fwd_kernel(
    x_ptr, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, out_ptr,
    H, W, K, OC, OH, OW, MULT,
    sxn, sxc, sxh, sxw,
    swk, swh, sww,
    spo, spk,
    son, soc, soh, sow,
    tiles_p,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_DWB: tl.constexpr, HAS_PWB: tl.constexpr,
    MID: tl.constexpr, OUT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    INT64: tl.constexpr, ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid // tiles_p
    tp = pid % tiles_p
    if INT64:
        n = n.to(tl.int64)
    p = tp * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = p < OH * OW
    oh = p // OW
    ow = p % OW
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = co < OC
    x_img = x_ptr + n * sxn
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask_k = k < K
        c = k // MULT
        if HAS_DWB:
            dw = tl.load(dwb_ptr + k, mask=mask_k, other=0.0).to(ACC)[None, :] + tl.zeros((BLOCK_P, BLOCK_K), ACC)
        else:
            dw = tl.zeros((BLOCK_P, BLOCK_K), dtype=ACC)
        for kh in tl.static_range(KH):
            ih = oh * stride_h - pad_h + kh * dil_h
            ok_h = mask_p & (ih >= 0) & (ih < H)
            for kw in tl.static_range(KW):
                iw = ow * stride_w - pad_w + kw * dil_w
                ok = ok_h & (iw >= 0) & (iw < W)
                xv = tl.load(x_img + ih[:, None] * sxh + iw[:, None] * sxw + c[None, :] * sxc,
                             mask=ok[:, None] & mask_k[None, :], other=0.0).to(ACC)
                wv = tl.load(dww_ptr + k * swk + kh * swh + kw * sww, mask=mask_k, other=0.0).to(ACC)
                dw += xv * wv[None, :]
        a = _activation(dw, MID)
        a = tl.where(mask_k[None, :], a, 0.0)
        wp = tl.load(pww_ptr + co[None, :] * spo + k[:, None] * spk, mask=mask_k[:, None] & mask_n[None, :],
                     other=0.0)
        if IEEE:
            acc += tl.dot(a.to(DOT_DTYPE), wp.to(DOT_DTYPE), input_precision="ieee").to(ACC)
        else:
            acc += tl.dot(a.to(DOT_DTYPE), wp.to(DOT_DTYPE)).to(ACC)
    if HAS_PWB:
        acc += tl.load(pwb_ptr + co, mask=mask_n, other=0.0).to(ACC)[None, :]
    y = _activation(acc, OUT)
    o = out_ptr + n * son + co[None, :] * soc + oh[:, None] * soh + ow[:, None] * sow
    tl.store(o, y.to(out_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_n[None, :])


def _geometry(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out):
    # The checks of the public wrapper (and fake kernel), so a direct call fails the same way.
    from ..dwpw_conv2d import _check

    _check(input, dw_weight, dw_bias, pw_weight, pw_bias, tuple(stride), tuple(padding), tuple(dilation), mid, out)
    n, c, h, w = input.shape
    k, _, kh, kw = dw_weight.shape
    oc = pw_weight.shape[0]
    out_h = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return n, c, h, w, k, k // c, kh, kw, oc, out_h, out_w


def _blocks(pixels, k, oc, device):
    """(BLOCK_P, BLOCK_K, BLOCK_N): GEMM tiles of at least 16 (tl.dot), clamped to the problem."""
    block_p = max(16, min(64, _next_pow2(pixels)))
    block_k = max(16, min(32, _next_pow2(k)))
    block_n = max(16, min(64, _next_pow2(oc)))
    return block_p, block_k, block_n


def dwpw_conv2d_forward(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out):
    n, c, h, w, k, mult, kh, kw, oc, out_h, out_w = _geometry(
        input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out)
    fmt = suggest_memory_format(input)
    y = torch.empty((n, oc, out_h, out_w), dtype=input.dtype, device=input.device, memory_format=fmt)
    if y.numel() == 0:
        return y
    block_p, block_k, block_n = _blocks(out_h * out_w, k, oc, input.device)
    tiles_p = triton.cdiv(out_h * out_w, block_p)
    grid = (n * tiles_p, triton.cdiv(oc, block_n))
    acc = _acc_dtype(input.dtype)
    if input.dtype in (torch.float16, torch.bfloat16):
        dot_dtype = tl.float16 if input.dtype == torch.float16 else tl.bfloat16
    else:
        dot_dtype = acc
    with _device_context(input):
        _dwpw_fwd_kernel[grid](
            input, dw_weight, dw_bias if dw_bias is not None else dw_weight, pw_weight,
            pw_bias if pw_bias is not None else pw_weight, y,
            h, w, k, oc, out_h, out_w, mult,
            *input.stride(),
            dw_weight.stride(0), dw_weight.stride(2), dw_weight.stride(3),
            pw_weight.stride(0), pw_weight.stride(1),
            *y.stride(),
            tiles_p,
            stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
            KH=kh, KW=kw, HAS_DWB=dw_bias is not None, HAS_PWB=pw_bias is not None,
            MID=ACT_CODES[mid], OUT=ACT_CODES[out],
            BLOCK_P=block_p, BLOCK_K=block_k, BLOCK_N=block_n,
            INT64=_needs_int64(input, y), ACC=acc, DOT_DTYPE=dot_dtype, IEEE=input.dtype == torch.float32,
            num_warps=4,
        )
    return y


def _act(x, kind):
    from .. import _reference

    return _reference.activation(x, kind)


def _act_backward(grad, z, kind):
    if kind == "none":
        return grad
    if kind == "relu":
        return torch.ops.aten.threshold_backward(grad, z, 0)
    if kind == "relu6":
        return torch.ops.aten.hardtanh_backward(grad, z, 0, 6)
    return torch.ops.aten.hardswish_backward(grad, z)


def dwpw_conv2d_backward(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid,
                         out, output_mask, band_elements=1 << 22):
    n, c, h, w, k, mult, kh, kw, oc, out_h, out_w = _geometry(
        input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out)
    if grad_output.device != input.device or grad_output.dtype != input.dtype:
        raise RuntimeError("fusedops: grad_output must have the dtype and device of input")
    if tuple(grad_output.shape) != (n, oc, out_h, out_w):
        raise RuntimeError(f"fusedops: grad_output has shape {tuple(grad_output.shape)}, not the output shape")
    dtype = input.dtype
    op = torch.float64 if dtype == torch.float64 else torch.float32
    fmt = suggest_memory_format(input)
    dww = dw_weight.to(op)
    dwb = None if dw_bias is None else dw_bias.to(op)
    pww = pw_weight.reshape(oc, k).to(op)
    pwb = None if pw_bias is None else pw_bias.to(op)
    gx = torch.empty(input.shape, dtype=op, device=input.device, memory_format=fmt).zero_() if output_mask[0] else None
    gdww = torch.zeros_like(dww) if output_mask[1] else None
    gdwb = torch.zeros(k, dtype=op, device=input.device) if output_mask[2] else None
    gpww = torch.zeros_like(pww) if output_mask[3] else None
    gpwb = torch.zeros(oc, dtype=op, device=input.device) if output_mask[4] else None
    need_dw = output_mask[0] or output_mask[1] or output_mask[2]
    per_row = max(1, (k + oc) * out_w)
    rows = max(1, min(out_h, band_elements // per_row))
    images = 1 if rows < out_h else max(1, min(n, band_elements // (per_row * out_h)))
    ext_h = dilation[0] * (kh - 1) + 1
    for n0 in range(0, n, images):
        n1 = min(n, n0 + images)
        for r0 in range(0, out_h, rows):
            r1 = min(out_h, r0 + rows)
            lo, hi = r0 * stride[0] - padding[0], (r1 - 1) * stride[0] - padding[0] + ext_h
            in_lo, in_hi = max(lo, 0), min(hi, h)
            x = input[n0:n1, :, in_lo:max(in_lo, in_hi)].to(op)
            x = torch.nn.functional.pad(x, (0, 0, in_lo - lo, hi - max(in_lo, in_hi)))
            band_pad = (0, padding[1])
            z = torch.nn.functional.conv2d(x, dww, dwb, tuple(stride), band_pad, tuple(dilation), groups=c)
            a = _act(z, mid)
            a_mat = a.permute(0, 2, 3, 1).reshape(-1, k)
            go = grad_output[n0:n1, :, r0:r1].to(op).permute(0, 2, 3, 1).reshape(-1, oc)
            if out != "none":
                u = a_mat @ pww.t() if pwb is None else torch.addmm(pwb, a_mat, pww.t())
                go = _act_backward(go, u, out)
            if gpww is not None:
                gpww.addmm_(go.t(), a_mat)
            if gpwb is not None:
                gpwb.add_(go.sum(0))
            if not need_dw:
                continue
            grad_a = (go @ pww).reshape(n1 - n0, r1 - r0, out_w, k).permute(0, 3, 1, 2)
            grad_z = _act_backward(grad_a, z, mid)
            bx, bw, bb = torch.ops.aten.convolution_backward(
                grad_z, x, dww, [k], list(stride), list(band_pad), list(dilation), False, [0, 0], c,
                [output_mask[0], output_mask[1], output_mask[2]])
            if gdww is not None:
                gdww.add_(bw)
            if gdwb is not None:
                gdwb.add_(bb)
            if gx is not None and in_hi > in_lo:
                gx[n0:n1, :, in_lo:in_hi].add_(bx[:, :, in_lo - lo:in_hi - lo])
    empty = input.new_empty(0)
    return (
        empty if gx is None else gx.to(dtype),
        empty if gdww is None else gdww.to(dtype).contiguous(),
        empty if gdwb is None else gdwb.to(dtype),
        empty if gpww is None else gpww.reshape(pw_weight.shape).to(dtype).contiguous(),
        empty if gpwb is None else gpwb.to(dtype),
    )
