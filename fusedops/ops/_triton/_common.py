"""Triton pieces shared by the kernels of several ops: tile shapes and launch settings, and the depthwise
backward kernels, which the dwpw_conv2d backward runs for its depthwise stage (see depthwise_conv2d.py for
the layout and the reduction scheme they follow).

Nothing here imports the op modules: they import from here.
"""

import contextlib

import torch
import triton
import triton.language as tl

# Kernels with more taps than this unroll only their KW loop (the KH loop stays a loop), which bounds
# the code size for large-kernel depthwise convolutions (e.g. 31x31).
MAX_UNROLLED_TAPS = 64


# ---------------------------------------------------------------------------------------------------
# Tile shapes and launch settings


def next_pow2(v):
    return triton.next_power_of_2(max(1, int(v)))


def tile(channels_last, rows, cols, channels):
    """(BLOCK_H, BLOCK_W, BLOCK_C) of a (pixels x channels) tile over a rows x cols map with `channels`.

    About 1024 elements per tile (8 per thread with 4 warps) keeps enough loads in flight per thread
    without spilling. channels_last: channels are contiguous, so the tile takes up to 64 of them
    (256 B per pixel in fp32: full, vectorised transactions) and a small pixel rectangle (rows of up to
    8 columns). NCHW: columns are contiguous, so the tile takes runs of up to 32 columns of as many rows
    as fit, and fills the rest with channels, which keeps small late-layer maps (7x7, 14x14) from
    leaving most of the tile masked. All sizes are powers of two (Triton block shapes), clamped to the
    problem so tiny maps and channel counts do not waste lanes. The table is fixed (no autotuning):
    the same configurations run on the GPU and under the Triton interpreter in tests.
    """
    target = 1024
    if channels_last:
        block_c = min(64, next_pow2(channels))
        block_w = min(8, next_pow2(cols))
        block_h = min(next_pow2(rows), max(1, target // (block_c * block_w)))
    else:
        block_w = min(32, next_pow2(cols))
        block_h = min(next_pow2(rows), max(1, 256 // block_w))
        block_c = min(next_pow2(channels), max(1, target // (block_h * block_w)))
    return block_h, block_w, block_c


def num_warps(block_h, block_w, block_c):
    """Warps of the forward and grad_input kernels: 4 elements per thread for full 1024-element tiles.
    Their unrolled taps keep several loads per element in flight, so 8 warps lose no parallelism and
    need far fewer registers per thread than 4 warps with 8 elements each (ptxas for sm_90, 3x3 fp32:
    forward about 65-85 instead of 105-150, grad_input about 115-145 instead of 170-250)."""
    return 8 if block_h * block_w * block_c >= 1024 else 4


def acc_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def needs_int64(*tensors):
    """True when an offset inside one image (or the weight) may not fit in int32."""
    limit = 2**31 - 1
    for t in tensors:
        span = sum((s - 1) * abs(st) for s, st in zip(t.shape[1:], t.stride()[1:]) if s > 0)
        if span > limit or (t.dim() == 4 and t.shape[0] > 0 and abs(t.stride(0)) > limit):
            return True
    return False


def vector_arg(t, stand_in):
    """A per-channel (1-D) tensor argument as the kernels read it, channel i at element i (a strided view copied), or
    `stand_in` for an absent one (a pointer the kernel never reads)."""
    return stand_in if t is None else t.contiguous()


def device_context(t):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def program_target(device):
    """How many programs the grad_weight reduction aims for: a few per SM on a GPU. Under the
    interpreter (CPU tensors) programs run one after another, so fewer, longer ones are faster."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1


# ---------------------------------------------------------------------------------------------------
# Depthwise pixel tiles


@triton.jit
def pixel_tile(tile, tiles_w, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Rows and columns of a BLOCK_H x BLOCK_W pixel tile, flattened to BLOCK_H * BLOCK_W."""
    th = tile // tiles_w
    tw = tile % tiles_w
    p = tl.arange(0, BLOCK_H * BLOCK_W)
    rows = th * BLOCK_H + p // BLOCK_W
    cols = tw * BLOCK_W + p % BLOCK_W
    return rows, cols



# ---------------------------------------------------------------------------------------------------
# grad_input: gather over the output pixels whose window covers each input pixel


@triton.jit
def _bwd_input_row(acc, g_img, g_ch, w_ch, th0, tw0, mask_p, mask_c, kh, OH, OW,
                   sgh, sgw, swh, sww, stride_h, stride_w, dil_h, dil_w, KW: tl.constexpr, ACC: tl.constexpr):
    """Adds the KW taps of kernel row `kh` to the grad_input accumulator.

    Input row ih receives output row oh through tap kh when ih + pad_h - kh * dil_h == oh * stride_h;
    th0 = ih + pad_h. Negative numerators are masked before their quotient is used, so the rounding
    direction of // and % on negative integers does not matter.
    """
    th = th0 - kh * dil_h
    oh = th // stride_h
    mask_h = mask_p & (th >= 0) & (th % stride_h == 0) & (oh < OH)
    row = g_img + oh * sgh
    for kw in tl.static_range(KW):
        tw = tw0 - kw * dil_w
        ow = tw // stride_w
        m = mask_h & (tw >= 0) & (tw % stride_w == 0) & (ow < OW)
        gv = tl.load(row[:, None] + (ow * sgw)[:, None] + g_ch[None, :],
                     mask=m[:, None] & mask_c[None, :], other=0.0)
        wv = tl.load(w_ch + kh * swh + kw * sww, mask=mask_c, other=0.0)
        # Taps outside grad_output add nothing, not 0 * w (NaN for a NaN or Inf weight, where PyTorch has none).
        acc += tl.where(m[:, None], gv.to(ACC) * wv.to(ACC)[None, :], 0.0)
    return acc


@triton.jit
def _depthwise_bwd_input_kernel(
    g_ptr, w_ptr, dx_ptr,
    C, H, W, OH, OW, MULT,
    sgn, sgc, sgh, sgw,
    swo, swh, sww,
    sdn, sdc, sdh, sdw,
    tiles_h, tiles_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, UNROLL_KH: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    INT64: tl.constexpr, ACC: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_c = tl.program_id(1)
    tiles = tiles_h * tiles_w
    n = pid // tiles
    ih, iw = pixel_tile(pid % tiles, tiles_w, BLOCK_H, BLOCK_W)
    ci = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = (ih < H) & (iw < W)
    mask_c = ci < C
    if INT64:
        ih = ih.to(tl.int64)
        iw = iw.to(tl.int64)
        ci = ci.to(tl.int64)

    g_img = g_ptr + n.to(tl.int64) * sgn
    th0 = ih + pad_h
    tw0 = iw + pad_w
    acc = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=ACC)
    for j in range(MULT):
        oc = ci * MULT + j
        g_ch = oc * sgc
        w_ch = w_ptr + oc * swo
        if UNROLL_KH:
            for kh in tl.static_range(KH):
                acc = _bwd_input_row(acc, g_img, g_ch, w_ch, th0, tw0, mask_p, mask_c, kh, OH, OW,
                                     sgh, sgw, swh, sww, stride_h, stride_w, dil_h, dil_w, KW, ACC)
        else:
            for kh in range(KH):
                acc = _bwd_input_row(acc, g_img, g_ch, w_ch, th0, tw0, mask_p, mask_c, kh, OH, OW,
                                     sgh, sgw, swh, sww, stride_h, stride_w, dil_h, dil_w, KW, ACC)

    dx = dx_ptr + n.to(tl.int64) * sdn + (ih * sdh + iw * sdw)[:, None] + (ci * sdc)[None, :]
    tl.store(dx, acc.to(dx_ptr.dtype.element_ty), mask=mask_p[:, None] & mask_c[None, :])


# ---------------------------------------------------------------------------------------------------
# grad_weight / grad_bias: partial sums per (chunk of pixel tiles, channel, tap)


@triton.jit
def _depthwise_bwd_weight_kernel(
    g_ptr, x_ptr, pw_ptr, pb_ptr,
    H, W, OC, OH, OW, MULT,
    sgn, sgc, sgh, sgw,
    sxn, sxc, sxh, sxw,
    tiles_h, tiles_w, total_tiles, tiles_per_chunk,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KW: tl.constexpr, TAPS: tl.constexpr, COMPUTE_GW: tl.constexpr, COMPUTE_GB: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    INT64: tl.constexpr, ACC: tl.constexpr,
):
    tap = tl.program_id(0)
    pid_c = tl.program_id(1)
    chunk = tl.program_id(2)
    kh = tap // KW
    kw = tap % KW
    oc = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = oc < OC
    ci = oc // MULT
    if INT64:
        oc = oc.to(tl.int64)
        ci = ci.to(tl.int64)
    g_ch = oc * sgc
    x_ch = ci * sxc
    tiles = tiles_h * tiles_w
    first = chunk * tiles_per_chunk
    last = tl.minimum(first + tiles_per_chunk, total_tiles)

    acc_w = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=ACC)
    acc_b = tl.zeros([BLOCK_H * BLOCK_W, BLOCK_C], dtype=ACC)
    for t in range(first, last):
        n = t // tiles
        oh, ow = pixel_tile(t % tiles, tiles_w, BLOCK_H, BLOCK_W)
        mask_p = (oh < OH) & (ow < OW)
        if INT64:
            oh = oh.to(tl.int64)
            ow = ow.to(tl.int64)
        g = g_ptr + n.to(tl.int64) * sgn + (oh * sgh + ow * sgw)[:, None] + g_ch[None, :]
        gv = tl.load(g, mask=mask_p[:, None] & mask_c[None, :], other=0.0).to(ACC)
        if COMPUTE_GB:
            acc_b += gv
        if COMPUTE_GW:
            ih = oh * stride_h - pad_h + kh * dil_h
            iw = ow * stride_w - pad_w + kw * dil_w
            m = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            x = x_ptr + n.to(tl.int64) * sxn + (ih * sxh + iw * sxw)[:, None] + x_ch[None, :]
            xv = tl.load(x, mask=m[:, None] & mask_c[None, :], other=0.0)
            acc_w += tl.where(m[:, None], gv * xv.to(ACC), 0.0)  # the padding adds nothing, not 0 * grad

    # The partial buffers hold up to 65535 chunks: chunks * OC * TAPS can pass 2^31 where the tensors' own
    # offsets fit int32 (e.g. a large batch of small maps), so the chunk offset is int64.
    part = chunk.to(tl.int64) * OC + oc
    if COMPUTE_GW:
        tl.store(pw_ptr + part * TAPS + tap, tl.sum(acc_w, axis=0), mask=mask_c)
    if COMPUTE_GB:
        tl.store(pb_ptr + part, tl.sum(acc_b, axis=0), mask=mask_c & (tap == 0))




# ---------------------------------------------------------------------------------------------------
# Depthwise backward launchers. The callers pass `int64` (needs_int64 of the tensors the kernel indexes) and
# `target` (program_target of the device) in, so that each op module decides them where its tests can set them.


def depthwise_grad_input(grad_output, weight, grad_input, mult, conv, channels_last, int64):
    """grad_input of a depthwise convolution from grad_output: the gather kernel, over every element of
    grad_input (which may be a band of input rows: `conv` is (stride_h, stride_w, pad_h, pad_w, dil_h, dil_w)
    relative to the band, where input row i takes output row j through tap kh when
    i + pad_h - kh * dil_h == j * stride_h)."""
    n, c, h, w = grad_input.shape
    block_h, block_w, block_c = tile(channels_last, h, w, c)
    tiles_h, tiles_w = triton.cdiv(h, block_h), triton.cdiv(w, block_w)
    kh, kw = weight.shape[2], weight.shape[3]
    _depthwise_bwd_input_kernel[(n * tiles_h * tiles_w, triton.cdiv(c, block_c))](
        grad_output, weight, grad_input,
        c, h, w, grad_output.shape[2], grad_output.shape[3], mult,
        *grad_output.stride(),
        weight.stride(0), weight.stride(2), weight.stride(3),
        *grad_input.stride(),
        tiles_h, tiles_w,
        *conv,
        KH=kh, KW=kw, UNROLL_KH=kh * kw <= MAX_UNROLLED_TAPS,
        BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c,
        INT64=int64, ACC=acc_dtype(grad_input.dtype),
        num_warps=num_warps(block_h, block_w, block_c),
    )


# The grad_weight / grad_bias reduction's first stage adds at most this many pixel tiles into one accumulator.
MAX_TILES_PER_CHUNK = 32


def weight_grad_partials(grad_output, input, kh, kw, mult, conv, channels_last, want_w, want_b, partial_dtype,
                         target, int64):
    """Partial sums of grad weight (chunks, K, kH*kW) and grad bias (chunks, K), each None when not wanted:
    the two-stage reduction's first stage, over chunks of (image, row tile, column tile) tiles, about `target`
    programs in all. `conv` is (stride_h, stride_w, pad_h, pad_w, dil_h, dil_w); grad_output may be a band of
    output rows."""
    n, k, out_h, out_w = grad_output.shape
    taps = kh * kw
    block_h, block_w, block_c = tile(channels_last, out_h, out_w, k)
    tiles_h, tiles_w = triton.cdiv(out_h, block_h), triton.cdiv(out_w, block_w)
    total_tiles = n * tiles_h * tiles_w
    c_tiles = triton.cdiv(k, block_c)
    grid_taps = taps if want_w else 1
    # Enough chunks to fill the GPU, and enough that no chunk sums more than MAX_TILES_PER_CHUNK tiles in a row
    # (the chunks' partials are then summed by torch's cascade sum: float32 rounding error near PyTorch's own
    # reductions), but never more than the tiles to share (nor the grid limit).
    chunks = max(triton.cdiv(target, grid_taps * c_tiles), triton.cdiv(total_tiles, MAX_TILES_PER_CHUNK))
    chunks = max(1, min(total_tiles, 65535, chunks))
    tiles_per_chunk = triton.cdiv(total_tiles, chunks)
    chunks = triton.cdiv(total_tiles, tiles_per_chunk)
    # An unwanted buffer is never written: the wanted one stands in for its pointer argument.
    part_w = torch.empty((chunks, k, taps), dtype=partial_dtype, device=input.device) if want_w else None
    part_b = torch.empty((chunks, k), dtype=partial_dtype, device=input.device) if want_b else None
    with device_context(input):
        _depthwise_bwd_weight_kernel[(grid_taps, c_tiles, chunks)](
            grad_output, input, part_w if want_w else part_b, part_b if want_b else part_w,
            input.shape[2], input.shape[3], k, out_h, out_w, mult,
            *grad_output.stride(),
            *input.stride(),
            tiles_h, tiles_w, total_tiles, tiles_per_chunk,
            *conv,
            KW=kw, TAPS=taps, COMPUTE_GW=want_w, COMPUTE_GB=want_b,
            BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c,
            INT64=int64, ACC=acc_dtype(input.dtype),
            num_warps=4,
        )
    return part_w, part_b
