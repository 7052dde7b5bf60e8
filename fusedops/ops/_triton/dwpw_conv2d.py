"""Triton kernels of fusedops_triton::dwpw_conv2d and fusedops_triton::_dwpw_conv2d_backward.

Semantics: ``act_out(conv1x1(act_mid(depthwise(input, dw_weight) + dw_bias), pw_weight) + pw_bias)``.

Forward: one program per (image, tile of BLOCK_P output pixels, tile of BLOCK_N output channels). It loops
over the depthwise channels K in chunks of BLOCK_K: computes the depthwise outputs of its pixels for the
chunk in registers (a loop over the taps, borders masked, bias and middle activation fused), multiplies the
(BLOCK_P x BLOCK_K) tile with the (BLOCK_K x BLOCK_N) slice of the 1x1 weights into a register
accumulator (``tl.dot``). The depthwise output never leaves the chip; each output-channel tile recomputes
it (kH*kW multiply-adds per depthwise output, against BLOCK_N for the GEMM). Bias and output activation
are applied before the store. Tensors are addressed through their strides: any layout runs without copies.
fp32 GEMMs use exact fp32 products (input_precision="ieee"); fp16/bf16 tiles go through tensor cores in
their own dtype with fp32 accumulation.

Backward: only the input is saved, so every kernel recomputes the depthwise tiles it needs from it
(``z``, and ``a = act_mid(z)``) with the forward's own helper, ``_depthwise_tile``. The work goes in bands
of output rows (of whole images when they fit) so that the two intermediates below live in band-sized
buffers (fp32; fp64 for fp64), never in an (N, K, OH, OW) tensor. Per band:
  1. ``g = act_out'(u) * grad_output``, with ``u`` the output before its activation recomputed as in the
     forward (``_pointwise_tile``): one program per (image, pixel tile, OC tile), into a (pixels x OC)
     buffer. Without an output activation, g is grad_output itself. (The schema's optional ``output`` is
     not read: the tile is recomputed in the same pass that multiplies, so the output saves no GEMM here.)
  2. grad pw_weight = g^T a and grad pw_bias = sum g: one program per (OC tile, K tile, chunk of pixel
     tiles) recomputes ``a`` and accumulates ``tl.dot`` products in registers, into partial sums per
     chunk that carry over the bands and are summed once at the end (deterministic, no atomics).
  3. ``grad_z = act_mid'(z) * (g @ pw_weight)``: one program per (image, pixel tile, K tile) reduces over
     OC with ``tl.dot`` and recomputes ``z``, into a (pixels x K) buffer.
  4. The depthwise backward of grad_z through the Triton depthwise kernels (_common.py): the
     gather kernel writes grad_input, the two-stage reduction gives grad dw_weight / grad dw_bias.
The bands of output rows overlap in input rows (windows taller than the stride). Rather than accumulate
grad_input band after band (a full-size fp32 buffer, or read-modify-writes), each input row belongs to one
band: from its first output row's window start to the next band's. A band recomputes steps 1 and 3 for the
``(extent - 1) // stride`` output rows above it whose windows also reach into its input rows, so its
gather is complete and stores straight into grad_input; the weight gradients sum only its own rows.
All backward GEMMs take fp32 (fp64) operands, also for fp16/bf16: g and grad_z need fp32's range, and u
then matches the native backward's fp32 recomputation. fp32 runs them on exact products, fp16/bf16 as
tf32. The activation derivatives are aten's (threshold/hardtanh/hardswish_backward), boundaries included, and at a
NaN they give what aten's vectorised CPU loops give (see _activation_backward).
"""

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from .. import _geometry
from ._common import (acc_dtype, depthwise_grad_input, device_context, needs_int64, next_pow2, program_target,
                      vector_arg, weight_grad_partials)

# Looked up in this module at each launch, so that tests can force chunked reductions on small problems.
_needs_int64 = needs_int64
_program_target = program_target

ACT_CODES = {"none": 0, "relu": 1, "relu6": 2, "hardswish": 3, "silu": 4}


@triton.jit
def _activation(x, ACT: tl.constexpr):
    if ACT == 1:
        x = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch.relu
    elif ACT == 2:
        x = tl.minimum(tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL), 6.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACT == 3:
        x = x * tl.minimum(tl.maximum(x + 3.0, 0.0, propagate_nan=tl.PropagateNan.ALL), 6.0,
                           propagate_nan=tl.PropagateNan.ALL) / 6.0
    elif ACT == 4:
        x = x / (1.0 + tl.exp(-x))
    return x


@triton.jit
def _activation_backward(grad, x, ACT: tl.constexpr):
    """grad * act'(x), written as aten's threshold_backward / hardtanh_backward / hardswish_backward /
    silu_backward (same boundaries). At a NaN x each gives what their vectorised CPU loops give, the float32
    composition the kernels are held to: threshold_backward passes grad, hardtanh_backward 0 (it keeps grad only
    where min < x < max), hardswish_backward NaN (grad * (x / 3 + 1/2) unless x <= -3 or x >= 3). Their scalar
    loops (mixed layouts, a loop's tail) and PyTorch's CUDA kernels pass grad through at a NaN in all three."""
    if ACT == 1:
        grad = tl.where(x <= 0.0, 0.0, grad)
    elif ACT == 2:
        grad = tl.where((x > 0.0) & (x < 6.0), grad, 0.0)
    elif ACT == 3:
        grad = tl.where(x <= -3.0, 0.0, tl.where(x >= 3.0, grad, grad * (x / 3.0 + 0.5)))
    elif ACT == 4:
        sigmoid = 1.0 / (1.0 + tl.exp(-x))
        grad = grad * sigmoid * (1.0 + x * (1.0 - sigmoid))
    return grad


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b; IEEE: exact fp32 products instead of tf32 (other dtypes ignore it)."""
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _depthwise_tile(
    x_img, dww_ptr, dwb_ptr, oh, ow, mask_p, k, mask_k, H, W, MULT,
    sxc, sxh, sxw, swk, swh, sww,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_DWB: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, INT64: tl.constexpr, ACC: tl.constexpr,
):
    """The depthwise output z (bias added, before the middle activation) of pixels (oh, ow) x depthwise
    channels k of one image, a (BLOCK_P x BLOCK_K) tile. Masked channels give exactly 0 (so does every
    activation of them); masked pixels give the bias."""
    c = k // MULT
    if INT64:
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
        c = c.to(tl.int64)
    if HAS_DWB:
        z = tl.load(dwb_ptr + k, mask=mask_k, other=0.0).to(ACC)[None, :] + tl.zeros((BLOCK_P, BLOCK_K), ACC)
    else:
        z = tl.zeros((BLOCK_P, BLOCK_K), dtype=ACC)
    # Loops over the taps, not unrolled (tl.static_range): unrolled, the GPU compiler pipelined every tap's gather
    # through shared memory and kept them live in registers (fp32 64x32x64 tiles 3x3: 171 KiB of shared memory,
    # over sm_80's limit, and 2-3 KB of spills; 7x7: 424 KiB and 10 KB); as loops 8-32 KiB and no spills.
    for kh in range(KH):
        ih = oh * stride_h - pad_h + kh * dil_h
        ok_h = mask_p & (ih >= 0) & (ih < H)
        for kw in range(KW):
            iw = ow * stride_w - pad_w + kw * dil_w
            ok = ok_h & (iw >= 0) & (iw < W)
            xv = tl.load(x_img + ih[:, None] * sxh + iw[:, None] * sxw + c[None, :] * sxc,
                         mask=ok[:, None] & mask_k[None, :], other=0.0).to(ACC)
            wv = tl.load(dww_ptr + k * swk + kh * swh + kw * sww, mask=mask_k, other=0.0).to(ACC)
            # The padding's taps are skipped (z kept), not added as 0 * w: that is NaN for a NaN or Inf weight, where
            # PyTorch has none. Selecting z itself rather than masking the product (z += where(ok, xv * w, 0)) keeps
            # ptxas from spilling: the masked product spilled 72 bytes of registers in the 7x7 silu forward on sm_90,
            # the select on z none (168 registers; at most 8 bytes, on sm_80, in the other configurations).
            z = tl.where(ok[:, None], z + xv * wv[None, :], z)
    return z


@triton.jit
def _pointwise_tile(
    x_img, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, oh, ow, mask_p, co, mask_n, H, W, K, MULT,
    sxc, sxh, sxw, swk, swh, sww, spo, spk,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_DWB: tl.constexpr, HAS_PWB: tl.constexpr, MID: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    INT64: tl.constexpr, ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr,
):
    """u = act_mid(z) @ pw_weight^T + pw_bias (before the output activation) of pixels (oh, ow) x output
    channels co, a (BLOCK_P x BLOCK_N) tile; the GEMM's operands are cast to DOT_DTYPE."""
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        mask_k = k < K
        z = _depthwise_tile(x_img, dww_ptr, dwb_ptr, oh, ow, mask_p, k, mask_k, H, W, MULT,
                            sxc, sxh, sxw, swk, swh, sww, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                            KH, KW, HAS_DWB, BLOCK_P, BLOCK_K, INT64, ACC)
        # Redundant (masked channels are 0 already), but with it ptxas spills less (sm_90).
        a = tl.where(mask_k[None, :], _activation(z, MID), 0.0)
        wp = tl.load(pww_ptr + co[None, :] * spo + k[:, None] * spk, mask=mask_k[:, None] & mask_n[None, :],
                     other=0.0)
        acc = _dot(a.to(DOT_DTYPE), wp.to(DOT_DTYPE), acc, IEEE)
    if HAS_PWB:
        acc += tl.load(pwb_ptr + co, mask=mask_n, other=0.0).to(ACC)[None, :]
    return acc


@triton.jit
def _program_tile(tiles_p, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, INT64: tl.constexpr):
    """(image, pixel indices, output channels) of a program of the (image x pixel tile, channel tile) grid."""
    pid = tl.program_id(0)
    # The image index is int64 even without INT64: n * (image stride) passes 2^31 in a batch whose images each
    # fit int32 offsets (needs_int64 looks at one image).
    n = (pid // tiles_p).to(tl.int64)
    tp = pid % tiles_p
    co = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    if INT64:
        tp = tp.to(tl.int64)  # before the multiply: tp * BLOCK_P may pass 2^31 on a huge plane
        co = co.to(tl.int64)
    p = tp * BLOCK_P + tl.arange(0, BLOCK_P)
    return n, p, co


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
    n, p, co = _program_tile(tiles_p, BLOCK_P, BLOCK_N, INT64)
    oh = p // OW
    ow = p % OW
    mask_p = oh < OH  # not p < OH * OW: that product is int32 even where p is int64
    mask_n = co < OC
    u = _pointwise_tile(x_ptr + n * sxn, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, oh, ow, mask_p, co, mask_n,
                        H, W, K, MULT, sxc, sxh, sxw, swk, swh, sww, spo, spk,
                        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                        KH, KW, HAS_DWB, HAS_PWB, MID, BLOCK_P, BLOCK_K, BLOCK_N, INT64, ACC, DOT_DTYPE, IEEE)
    y = _activation(u, OUT)
    o = out_ptr + n * son + co[None, :] * soc + oh[:, None] * soh + ow[:, None] * sow
    tl.store(o, y.to(out_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_n[None, :])


# ---------------------------------------------------------------------------------------------------
# Backward. Each kernel covers ROWS output rows from row ROW0 of a band of images: x_ptr points at the
# band's first image, and pixel p of an image is output row ROW0 + p // OW, column p % OW (row p // OW of
# the band's buffers and of its grad_output view).


@triton.jit
def _dwpw_bwd_out_kernel(
    x_ptr, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, go_ptr, g_ptr,
    H, W, K, OC, OW, MULT, ROWS, ROW0,
    sxn, sxc, sxh, sxw,
    swk, swh, sww,
    spo, spk,
    son, soc, soh, sow,
    sgn, sgc, sgh, sgw,
    tiles_p,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_DWB: tl.constexpr, HAS_PWB: tl.constexpr,
    MID: tl.constexpr, OUT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    INT64: tl.constexpr, ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr,
):
    """g = act_out'(u) * grad_output, per (image, pixel tile, output-channel tile)."""
    n, p, co = _program_tile(tiles_p, BLOCK_P, BLOCK_N, INT64)
    r = p // OW
    ow = p % OW
    mask_p = r < ROWS  # not p < ROWS * OW: that product is int32 even where p is int64
    mask_n = co < OC
    u = _pointwise_tile(x_ptr + n * sxn, dww_ptr, dwb_ptr, pww_ptr, pwb_ptr, ROW0 + r, ow, mask_p, co, mask_n,
                        H, W, K, MULT, sxc, sxh, sxw, swk, swh, sww, spo, spk,
                        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                        KH, KW, HAS_DWB, HAS_PWB, MID, BLOCK_P, BLOCK_K, BLOCK_N, INT64, ACC, DOT_DTYPE, IEEE)
    mask = mask_p[:, None] & mask_n[None, :]
    go = tl.load(go_ptr + n * son + co[None, :] * soc + (r * soh + ow * sow)[:, None], mask=mask, other=0.0)
    g = _activation_backward(go.to(ACC), u, OUT)
    tl.store(g_ptr + n * sgn + co[None, :] * sgc + (r * sgh + ow * sgw)[:, None], g, mask=mask)


@triton.jit
def _dwpw_bwd_pw_weight_kernel(
    x_ptr, dww_ptr, dwb_ptr, g_ptr, gw_ptr, gb_ptr,
    H, W, K, OC, OW, MULT, ROWS, ROW0,
    sxn, sxc, sxh, sxw,
    swk, swh, sww,
    sgn, sgc, sgh, sgw,
    tiles_p, total_tiles, tiles_per_chunk,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_DWB: tl.constexpr, MID: tl.constexpr,
    COMPUTE_GW: tl.constexpr, COMPUTE_GB: tl.constexpr, ACCUMULATE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    INT64: tl.constexpr, ACC: tl.constexpr, IEEE: tl.constexpr,
):
    """Partial sums of g^T a into gw (chunks, OC, K) and of g into gb (chunks, OC) over the pixel tiles of
    one chunk, per (output-channel tile, depthwise-channel tile, chunk); gb from the first K tile only.
    ACCUMULATE adds them to the sums of the previous bands."""
    pid_k = tl.program_id(1)
    chunk = tl.program_id(2)
    co = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    if INT64:
        co = co.to(tl.int64)
        k = k.to(tl.int64)
    mask_n = co < OC
    mask_k = k < K
    first = chunk * tiles_per_chunk
    last = tl.minimum(first + tiles_per_chunk, total_tiles)
    acc_w = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC)
    acc_b = tl.zeros((BLOCK_N,), dtype=ACC)
    for t in range(first, last):
        n = (t // tiles_p).to(tl.int64)  # always int64, as in _program_tile
        tp = t % tiles_p
        if INT64:
            tp = tp.to(tl.int64)
        p = tp * BLOCK_P + tl.arange(0, BLOCK_P)
        r = p // OW
        ow = p % OW
        mask_p = r < ROWS
        # Masked pixels load g = 0, which cancels their recomputed activations (act_mid of the bias).
        gt = tl.load(g_ptr + n * sgn + co[:, None] * sgc + (r * sgh + ow * sgw)[None, :],
                     mask=mask_n[:, None] & mask_p[None, :], other=0.0).to(ACC)
        if COMPUTE_GB:
            acc_b += tl.sum(gt, axis=1)
        if COMPUTE_GW:
            z = _depthwise_tile(x_ptr + n * sxn, dww_ptr, dwb_ptr, ROW0 + r, ow, mask_p, k, mask_k, H, W, MULT,
                                sxc, sxh, sxw, swk, swh, sww, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                                KH, KW, HAS_DWB, BLOCK_P, BLOCK_K, INT64, ACC)
            acc_w = _dot(gt, _activation(z, MID), acc_w, IEEE)
    if COMPUTE_GW:
        gw = gw_ptr + (chunk * OC + co)[:, None] * K + k[None, :]
        mask_w = mask_n[:, None] & mask_k[None, :]
        if ACCUMULATE:
            acc_w += tl.load(gw, mask=mask_w, other=0.0)
        tl.store(gw, acc_w, mask=mask_w)
    if COMPUTE_GB:
        gb = gb_ptr + chunk * OC + co
        mask_b = mask_n & (pid_k == 0)
        if ACCUMULATE:
            acc_b += tl.load(gb, mask=mask_b, other=0.0)
        tl.store(gb, acc_b, mask=mask_b)


@triton.jit
def _dwpw_bwd_mid_kernel(
    x_ptr, dww_ptr, dwb_ptr, pww_ptr, g_ptr, gz_ptr,
    H, W, K, OC, OW, MULT, ROWS, ROW0,
    sxn, sxc, sxh, sxw,
    swk, swh, sww,
    spo, spk,
    sgn, sgc, sgh, sgw,
    szn, szc, szh, szw,
    tiles_p,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, HAS_DWB: tl.constexpr, MID: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    INT64: tl.constexpr, ACC: tl.constexpr, IEEE: tl.constexpr,
):
    """grad_z = act_mid'(z) * (g @ pw_weight), per (image, pixel tile, depthwise-channel tile)."""
    pid = tl.program_id(0)
    n = (pid // tiles_p).to(tl.int64)  # always int64, as in _program_tile
    tp = pid % tiles_p
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    if INT64:
        tp = tp.to(tl.int64)
        k = k.to(tl.int64)
    p = tp * BLOCK_P + tl.arange(0, BLOCK_P)
    r = p // OW
    ow = p % OW
    mask_p = r < ROWS
    mask_k = k < K
    g_px = g_ptr + n * sgn + (r * sgh + ow * sgw)[:, None]
    grad_a = tl.zeros((BLOCK_P, BLOCK_K), dtype=ACC)
    for c0 in range(0, OC, BLOCK_N):
        co = c0 + tl.arange(0, BLOCK_N)
        if INT64:
            co = co.to(tl.int64)
        mask_n = co < OC
        g = tl.load(g_px + co[None, :] * sgc, mask=mask_p[:, None] & mask_n[None, :], other=0.0).to(ACC)
        wp = tl.load(pww_ptr + co[:, None] * spo + k[None, :] * spk, mask=mask_n[:, None] & mask_k[None, :],
                     other=0.0).to(ACC)
        grad_a = _dot(g, wp, grad_a, IEEE)
    if MID != 0:
        z = _depthwise_tile(x_ptr + n * sxn, dww_ptr, dwb_ptr, ROW0 + r, ow, mask_p, k, mask_k, H, W, MULT,
                            sxc, sxh, sxw, swk, swh, sww, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                            KH, KW, HAS_DWB, BLOCK_P, BLOCK_K, INT64, ACC)
        grad_a = _activation_backward(grad_a, z, MID)
    gz = gz_ptr + n * szn + k[None, :] * szc + (r * szh + ow * szw)[:, None]
    tl.store(gz, grad_a, mask=mask_p[:, None] & mask_k[None, :])


def _launch_geometry(input, dw_weight, pw_weight, stride, padding, dilation):
    """(N, C, H, W, K, multiplier, kH, kW, OC, OH, OW) of arguments that passed the op's checks."""
    n, c, h, w = input.shape
    k, _, kh, kw = dw_weight.shape
    _, oc, out_h, out_w = _geometry.dwpw_output_shape(input, dw_weight, pw_weight, stride, padding, dilation)
    return n, c, h, w, k, k // c, kh, kw, oc, out_h, out_w


def _blocks(pixels, k, oc, dtype):
    """(BLOCK_P, BLOCK_K, BLOCK_N): GEMM tiles of at least 16 (tl.dot), clamped to the problem. float64 tiles have
    at most 32 pixels: at 64 its accumulators spill registers (ptxas, sm_80 and sm_90)."""
    block_p = max(16, min(32 if dtype == torch.float64 else 64, next_pow2(pixels)))
    block_k = max(16, min(32, next_pow2(k)))
    block_n = max(16, min(64, next_pow2(oc)))
    return block_p, block_k, block_n


def dwpw_conv2d_forward(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out,
                        packed_weights=None):
    # packed_weights is the CPU kernel's copy of the weights: not needed here.
    # The op's own checks, so that a direct call fails as on every other backend.
    _geometry.check_dwpw(input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid, out)
    n, c, h, w, k, mult, kh, kw, oc, out_h, out_w = _launch_geometry(input, dw_weight, pw_weight, stride, padding,
                                                                     dilation)
    fmt = suggest_memory_format(input)
    y = torch.empty((n, oc, out_h, out_w), dtype=input.dtype, device=input.device, memory_format=fmt)
    if y.numel() == 0:
        return y
    block_p, block_k, block_n = _blocks(out_h * out_w, k, oc, input.dtype)
    tiles_p = triton.cdiv(out_h * out_w, block_p)
    grid = (n * tiles_p, triton.cdiv(oc, block_n))
    acc = acc_dtype(input.dtype)
    if input.dtype in (torch.float16, torch.bfloat16):
        dot_dtype = tl.float16 if input.dtype == torch.float16 else tl.bfloat16
    else:
        dot_dtype = acc
    with device_context(input):
        _dwpw_fwd_kernel[grid](
            input, dw_weight, vector_arg(dw_bias, dw_weight), pw_weight, vector_arg(pw_bias, pw_weight), y,
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


def _band_buffer(channels_last, images, channels, rows, cols, dtype, device):
    """An (images, channels, rows, cols) buffer in the input's layout, so that the depthwise kernels' tiles
    suit both it and grad_input."""
    if channels_last:
        return torch.empty((images, rows, cols, channels), dtype=dtype, device=device).permute(0, 3, 1, 2)
    return torch.empty((images, channels, rows, cols), dtype=dtype, device=device)


def _depthwise_grad_weight(gz, x, dw_weight, mult, stride, pad_h, pad_w, dilation, channels_last, want_w, want_b,
                           partial_dtype):
    """(grad dw_weight as (K, kH*kW), grad dw_bias) of the band gz (a view of output rows whose row 0 reads
    input row -pad_h + kh * dilation), each None when not wanted."""
    kh, kw = dw_weight.shape[2:]
    conv = (stride[0], stride[1], pad_h, pad_w, dilation[0], dilation[1])
    part_w, part_b = weight_grad_partials(gz, x, kh, kw, mult, conv, channels_last, want_w, want_b, partial_dtype,
                                          _program_target(x.device), _needs_int64(gz, x))
    return (None if part_w is None else part_w.sum(0)), (None if part_b is None else part_b.sum(0))


def dwpw_conv2d_backward(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, dilation, mid,
                         out, output_mask, output=None, band_elements=1 << 22):
    _geometry.check_dwpw_backward(grad_output, input, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding,
                                  dilation, mid, out, output)
    n, c, h, w, k, mult, kh, kw, oc, out_h, out_w = _launch_geometry(input, dw_weight, pw_weight, stride, padding,
                                                                     dilation)
    want_x, want_dww, want_dwb, want_pww, want_pwb = (bool(m) for m in output_mask)
    want_pw = want_pww or want_pwb
    need_gz = want_x or want_dww or want_dwb
    stride, padding, dilation = (tuple(int(v) for v in pair) for pair in (stride, padding, dilation))
    dtype, device = input.dtype, input.device
    op = torch.float64 if dtype == torch.float64 else torch.float32
    fmt = suggest_memory_format(input)
    channels_last = fmt == torch.channels_last
    gx = torch.empty(input.shape, dtype=dtype, device=device, memory_format=fmt) if want_x else None
    gdww = torch.zeros((k, kh * kw), dtype=op, device=device) if want_dww else None
    gdwb = torch.zeros(k, dtype=op, device=device) if want_dwb else None
    gpw = torch.zeros((1, oc, k), dtype=op, device=device) if want_pww else None
    gpb = torch.zeros((1, oc), dtype=op, device=device) if want_pwb else None
    if grad_output.numel() == 0 or not (need_gz or want_pw):
        if want_x:
            gx.zero_()
        return _gradients(input, dw_weight, pw_weight, gx, gdww, gdwb, gpw, gpb)

    acc = acc_dtype(dtype)
    # Every backward GEMM takes fp32 (fp64) operands: g and grad_z need fp32's range, and the recomputed u then
    # matches the fp32 computation of the native backward. fp16/bf16 run them as tf32, within their tolerances.
    ieee = dtype == torch.float32
    per_row = max(1, (k + oc) * out_w)
    rows = max(1, min(out_h, band_elements // per_row))
    images = 1 if rows < out_h else max(1, min(n, band_elements // (per_row * out_h)))
    # The output rows above a band whose windows reach into its input rows (see the module docstring).
    halo = (dilation[0] * (kh - 1)) // stride[0] if want_x and rows < out_h else 0
    buf_rows = min(out_h, rows + halo)
    g_buf = None if out == "none" else _band_buffer(channels_last, images, oc, buf_rows, out_w, op, device)
    gz_buf = _band_buffer(channels_last, images, k, buf_rows, out_w, op, device) if need_gz else None
    int64 = _needs_int64(input, grad_output, pw_weight, *(b for b in (g_buf, gz_buf) if b is not None))
    block_p, block_k, block_n = _blocks(rows * out_w, k, oc, dtype)
    # Smaller pixel tiles than the forward's: with them ptxas (sm_90, 3x3) spills at most a few bytes in these
    # kernels, against hundreds of bytes at 64 pixels (KBs in the pw_weight one, whose g tile is BLOCK_N x BLOCK_P).
    block_p = min(block_p, 32)
    pw_block_p = 16
    if want_pw:
        oc_tiles = triton.cdiv(oc, block_n)
        k_tiles = triton.cdiv(k, block_k) if want_pww else 1
        # Set by the first (largest) band: the partial sums carry over the bands, chunk by chunk.
        tiles = images * triton.cdiv(rows * out_w, pw_block_p)
        pw_chunks = max(1, min(tiles, 65535, triton.cdiv(_program_target(device), oc_tiles * k_tiles)))
        gpw = torch.empty((pw_chunks, oc, k), dtype=op, device=device) if want_pww else None
        gpb = torch.empty((pw_chunks, oc), dtype=op, device=device) if want_pwb else None
    dwb_arg = vector_arg(dw_bias, dw_weight)
    dw_strides = (dw_weight.stride(0), dw_weight.stride(2), dw_weight.stride(3))
    pw_strides = (pw_weight.stride(0), pw_weight.stride(1))
    conv = (*stride, *padding, *dilation)
    common = dict(KH=kh, KW=kw, HAS_DWB=dw_bias is not None, MID=ACT_CODES[mid], BLOCK_K=block_k, BLOCK_N=block_n,
                  INT64=int64, ACC=acc, IEEE=ieee, num_warps=4)

    bands = [(n0, r0) for n0 in range(0, n, images) for r0 in range(0, out_h, rows)]
    with device_context(input):
        for band, (n0, r0) in enumerate(bands):
            n1, r1 = min(n, n0 + images), min(out_h, r0 + rows)
            nb = n1 - n0
            # Rows [c0, r1) of g and grad_z; the band's own rows are [r0, r1).
            c0 = max(0, r0 - halo)
            x = input[n0:n1]
            tiles_p = triton.cdiv((r1 - c0) * out_w, block_p)
            if g_buf is None:
                g = grad_output[n0:n1, :, c0:r1]
            else:
                g = g_buf[:nb, :, :r1 - c0]
                go = grad_output[n0:n1, :, c0:r1]
                _dwpw_bwd_out_kernel[(nb * tiles_p, triton.cdiv(oc, block_n))](
                    x, dw_weight, dwb_arg, pw_weight, vector_arg(pw_bias, pw_weight), go, g,
                    h, w, k, oc, out_w, mult, r1 - c0, c0,
                    *x.stride(), *dw_strides, *pw_strides, *go.stride(), *g.stride(),
                    tiles_p, *conv,
                    HAS_PWB=pw_bias is not None, OUT=ACT_CODES[out], DOT_DTYPE=acc, BLOCK_P=block_p, **common,
                )
            if want_pw:
                g_own = g[:, :, r0 - c0:]
                own_tiles_p = triton.cdiv((r1 - r0) * out_w, pw_block_p)
                _dwpw_bwd_pw_weight_kernel[(oc_tiles, k_tiles, pw_chunks)](
                    x, dw_weight, dwb_arg, g_own, gpw if want_pww else gpb, gpb if want_pwb else gpw,
                    h, w, k, oc, out_w, mult, r1 - r0, r0,
                    *x.stride(), *dw_strides, *g_own.stride(),
                    own_tiles_p, nb * own_tiles_p, triton.cdiv(nb * own_tiles_p, pw_chunks), *conv,
                    COMPUTE_GW=want_pww, COMPUTE_GB=want_pwb, ACCUMULATE=band > 0, BLOCK_P=pw_block_p,
                    **common,
                )
            if not need_gz:
                continue
            gz = gz_buf[:nb, :, :r1 - c0]
            _dwpw_bwd_mid_kernel[(nb * tiles_p, triton.cdiv(k, block_k))](
                x, dw_weight, dwb_arg, pw_weight, g, gz,
                h, w, k, oc, out_w, mult, r1 - c0, c0,
                *x.stride(), *dw_strides, *pw_strides, *g.stride(), *gz.stride(),
                tiles_p, *conv, BLOCK_P=block_p, **common,
            )
            if want_x:
                # The band's input rows [i0, i1): from its first window's start to the next band's.
                i0 = 0 if r0 == 0 else min(max(r0 * stride[0] - padding[0], 0), h)
                i1 = h if r1 == out_h else min(max(r1 * stride[0] - padding[0], 0), h)
                if i1 > i0:
                    dx = gx[n0:n1, :, i0:i1]
                    # dx's input row i takes gz's output row j through tap kh when
                    # i + pad_h - kh * dilation == j * stride, with pad_h relative to the band's rows.
                    pad_h = i0 + padding[0] - c0 * stride[0]
                    conv_band = (stride[0], stride[1], pad_h, padding[1], dilation[0], dilation[1])
                    depthwise_grad_input(gz, dw_weight, dx, mult, conv_band, channels_last, _needs_int64(gz, dx))
            if want_dww or want_dwb:
                # Output row r0 + j reads input row (r0 + j) * stride - padding + kh * dilation of x.
                bw, bb = _depthwise_grad_weight(gz[:, :, r0 - c0:], x, dw_weight, mult, stride,
                                                padding[0] - r0 * stride[0], padding[1], dilation, channels_last,
                                                want_dww, want_dwb, op)
                if want_dww:
                    gdww += bw
                if want_dwb:
                    gdwb += bb
    return _gradients(input, dw_weight, pw_weight, gx, gdww, gdwb, gpw, gpb)


def _gradients(input, dw_weight, pw_weight, gx, gdww, gdwb, gpw, gpb):
    """The op's 5 results from the accumulators (None: not wanted): input dtype, the weights' shapes."""
    dtype = input.dtype
    empty = input.new_empty(0)
    return (
        empty if gx is None else gx,
        empty if gdww is None else gdww.to(dtype).view(dw_weight.shape),
        empty if gdwb is None else gdwb.to(dtype),
        empty if gpw is None else gpw.sum(0).to(dtype).view(pw_weight.shape),
        empty if gpb is None else gpb.sum(0).to(dtype),
    )
