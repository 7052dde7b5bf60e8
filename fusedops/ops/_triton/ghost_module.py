"""Triton kernel of fusedops_triton::ghost_module and of _ghost_bottleneck's Triton path, launcher of
fusedops_triton::_ghost_module_backward.

Semantics: ``cat([x1, act(depthwise(x1, cheap_weight) + cheap_bias)], 1)[:, :out_channels] [+ residual]`` with
``x1 = act(conv1x1(input, primary_weight, stride) + primary_bias)``.

Forward: one kernel, ``_ghost_fwd_kernel``, that writes both halves straight into the output. Its work items are
(image, TILE_H x TILE_W tile of output pixels, block of BLOCK_C primary channels), the channel blocks of a tile
adjacent (they read the same input pixels, from L2); a fixed number of programs (a few per SM) take them in turn.
Per item:
  1. x1 over the tile and the depthwise halo around it, (TILE_H + kH - 1) x (TILE_W + kW - 1) pixels flattened
     into BLOCK_HP lanes (a power of two): a GEMM over the input channels in chunks of BLOCK_K (``tl.dot``), bias
     and activation in registers, rounded to the output dtype (the depthwise reads x1 as the unfused composition
     stores it). The halo's pixels are also computed by the neighbouring tiles: no program waits for another.
  2. The tile's x1 [+ residual] into the output's first channels.
  3. When the block feeds cheap channels that the output keeps: x1 (halo included) into the program's slot of a
     scratch buffer, then, for each of them (depth multiplier m: cheap channel j reads x1 channel j // m), the
     kH x kW taps read back from the slot at their shifted pixels, bias, activation [+ residual], into the
     output's other channels. The slot is rewritten item after item, so the buffer (programs x BLOCK_HP x BLOCK_C)
     stays in cache. (Register tiles cannot be shifted along the pixels. ``tl.gather`` can, but the compiler makes
     it warp-local: one shuffle per source element a thread holds along the pixels, for each element gathered;
     a 256 x 32 fp16 halo tile took 256 shuffles a thread for each tap, ptx for sm_90. The slot takes one store
     of the tile and kH x kW loads of the tile's pixels, from cache.)
The map's zero padding is the taps outside it (the halo's pixels outside the map are never read): they are
skipped, not added as 0 * w, as in the depthwise kernels. Tensors are addressed through their strides: any layout
runs without copies. fp32 GEMMs use exact fp32 products, fp16/bf16 go through tensor cores in their own dtype;
everything accumulates in fp32 (fp64 for fp64).

_ghost_bottleneck (inference, ``ghost_bottleneck_forward``): two launches, as on CUDA: the first module, then the
second with DW_INPUT, under which step 1's GEMM reads, instead of its input's own pixels, the depthwise stage between
the modules computed from the first module's output for each halo lane and chunk of BLOCK_K channels (bias + the
taps inside the map, accumulated in fp32 / fp64, rounded to the dtype as the unfused sequence stores it): the stage's
output never reaches memory. It is recomputed for each channel block and for the halo, kH * kW loads and
multiply-adds per A element against BLOCK_C multiply-adds of the GEMM.

Backward: the native formula (ghost_module_backward_recomputed, csrc/shared/ghost_module.cpp), with the
depthwise Triton backward.
"""

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from .. import _geometry
from ..activations import activation, activation_backward
from ..ghost_module import _check_bottleneck
from ._common import acc_dtype, device_context, needs_int64, next_pow2, program_target, vector_arg
from .depthwise_conv2d import depthwise_conv2d_backward, depthwise_conv2d_forward
from .dwpw_conv2d import ACT_CODES, _activation, _dot

# Looked up in this module at each launch, so that tests can force the int64 indexing and several programs on
# small problems, and tests/triton_gpu_compile.py can record the launches of a GPU under the interpreter.
_needs_int64 = needs_int64
_program_target = program_target


def _interpreted(device):
    """Whether the kernel runs through the Triton interpreter: on CPU tensors."""
    return device.type == "cpu"


def _cheap_sources(primary_weight, cheap_weight, out_channels):
    """(channels of the primary half the kept cheap channels read, the depthwise filters that compute them)."""
    init = primary_weight.shape[0]
    multiplier = cheap_weight.shape[0] // init
    sources = -(-(out_channels - init) // multiplier)
    return sources, sources * multiplier


@triton.jit
def _depthwise_stage(x_img, dw_ptr, db_ptr, k, mask_k, ih0, iw0, in_map, IH, IW, sxc, sxh, sxw, sdf, sdh, sdw,
                     DW_KH: tl.constexpr, DW_KW: tl.constexpr, HAS_DB: tl.constexpr, BLOCK_HP: tl.constexpr,
                     BLOCK_K: tl.constexpr, ACC: tl.constexpr):
    """The depthwise stage's output (bias + the DW_KH x DW_KW taps from tap (0, 0) at (ih0, iw0) of the IH x IW map
    at x_img) for the halo lanes' pixels and channels k, in ACC; 0 on the lanes outside the map and on channels past
    the last: the GEMM's A tile of a module whose input is the stage's output."""
    if HAS_DB:
        a = tl.load(db_ptr + k, mask=mask_k, other=0.0).to(ACC)[None, :] + tl.zeros((BLOCK_HP, BLOCK_K), ACC)
    else:
        a = tl.zeros((BLOCK_HP, BLOCK_K), dtype=ACC)
    x_ch = x_img + k * sxc
    for kh in range(DW_KH):
        ih = ih0 + kh
        ok_h = in_map & (ih >= 0) & (ih < IH)
        for kw in range(DW_KW):
            iw = iw0 + kw
            ok = ok_h & (iw >= 0) & (iw < IW)
            xv = tl.load(x_ch[None, :] + (ih * sxh + iw * sxw)[:, None], mask=ok[:, None] & mask_k[None, :],
                         other=0.0).to(ACC)
            wv = tl.load(dw_ptr + k * sdf + kh * sdh + kw * sdw, mask=mask_k, other=0.0).to(ACC)
            # The padding's taps are skipped, not added as 0 * w, as in the depthwise kernels.
            a = tl.where(ok[:, None], a + xv * wv[None, :], a)
    return tl.where(in_map[:, None], a, 0.0)


@triton.jit
def _ghost_fwd_kernel(
    x_ptr, pw_ptr, pb_ptr, cw_ptr, cb_ptr, res_ptr, out_ptr, scratch_ptr, dw_ptr, db_ptr,
    C, INIT, KEPT, SOURCES, MULT, OH, OW, IH, IW,
    sxn, sxc, sxh, sxw,
    spo, spk,
    scf, sch, scw,
    sdf, sdh, sdw,
    srn, src, srh, srw,
    son, soc, soh, sow,
    items, tiles, tiles_w, c_blocks,
    stride_h, stride_w,
    KH: tl.constexpr, KW: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    HAS_PB: tl.constexpr, HAS_CB: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr,
    DW_INPUT: tl.constexpr, DW_KH: tl.constexpr, DW_KW: tl.constexpr, HAS_DB: tl.constexpr,
    BLOCK_HP: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
    INT64: tl.constexpr, ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, IEEE: tl.constexpr,
):
    # DW_INPUT (_ghost_bottleneck's second module): the module's input is a depthwise stage's output (kernel
    # DW_KH x DW_KW, padding k // 2, stride (stride_h, stride_w)) of x, an IH x IW map whose pixels the GEMM never
    # reads itself; the primary convolution's stride is 1. Without it dw_ptr, db_ptr, IH, IW and sd* are unused.
    PH: tl.constexpr = KH // 2
    PW: tl.constexpr = KW // 2
    HALO_H: tl.constexpr = TILE_H + KH - 1
    HALO_W: tl.constexpr = TILE_W + KW - 1
    BLOCK_P: tl.constexpr = TILE_H * TILE_W
    dtype = out_ptr.dtype.element_ty
    pid = tl.program_id(0)
    # Halo lane q: pixel (h0 - PH + q // HALO_W, w0 - PW + q % HALO_W) of a tile at (h0, w0); lanes past the halo
    # (the power-of-two rounding) are masked.
    q = tl.arange(0, BLOCK_HP)
    qr = q // HALO_W
    qc = q % HALO_W
    own = (qr >= PH) & (qr < PH + TILE_H) & (qc >= PW) & (qc < PW + TILE_W)
    # Tile pixel p, (h0 + p // TILE_W, w0 + p % TILE_W), reads through tap (kh, kw) halo lane base + kh * HALO_W + kw.
    p = tl.arange(0, BLOCK_P)
    pr = p // TILE_W
    pc = p % TILE_W
    base = pr * HALO_W + pc
    cl = tl.arange(0, BLOCK_C)
    # The program's scratch slot: x1 of its current tile and halo, (BLOCK_HP, BLOCK_C), channels contiguous.
    slot = scratch_ptr + pid.to(tl.int64) * (BLOCK_HP * BLOCK_C)

    for item in range(pid, items, tl.num_programs(0)):
        cb = item % c_blocks
        t = item // c_blocks
        # The image index is int64 even without INT64: n * (image stride) passes 2^31 in a batch whose images each
        # fit int32 offsets (needs_int64 looks at one image).
        n = (t // tiles).to(tl.int64)
        t = t % tiles
        h0 = (t // tiles_w) * TILE_H
        w0 = (t % tiles_w) * TILE_W
        c = cb * BLOCK_C + cl
        mask_c = c < INIT
        if INT64:
            c = c.to(tl.int64)

        # 1. x1 over the tile and its halo.
        oh = h0 - PH + qr
        ow = w0 - PW + qc
        in_map = (qr < HALO_H) & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
        if INT64:
            oh = oh.to(tl.int64)
            ow = ow.to(tl.int64)
        if DW_INPUT:
            x_img = x_ptr + n * sxn
            # The depthwise stage's input pixel under tap (0, 0) of each halo lane's pixel.
            ih0 = oh * stride_h - DW_KH // 2
            iw0 = ow * stride_w - DW_KW // 2
        else:
            x_px = x_ptr + n * sxn + oh * stride_h * sxh + ow * stride_w * sxw
        acc = tl.zeros((BLOCK_HP, BLOCK_C), dtype=ACC)
        for k0 in range(0, C, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            mask_k = k < C
            if INT64:
                k = k.to(tl.int64)  # k * sxc passes 2^31 where the image does
            if DW_INPUT:
                # Rounded to the output dtype, as the unfused sequence stores the depthwise stage's output.
                a = _depthwise_stage(x_img, dw_ptr, db_ptr, k, mask_k, ih0, iw0, in_map, IH, IW, sxc, sxh, sxw,
                                     sdf, sdh, sdw, DW_KH, DW_KW, HAS_DB, BLOCK_HP, BLOCK_K, ACC).to(dtype)
            else:
                a = tl.load(x_px[:, None] + k[None, :] * sxc, mask=in_map[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(pw_ptr + k[:, None] * spk + c[None, :] * spo, mask=mask_k[:, None] & mask_c[None, :],
                        other=0.0)
            acc = _dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), acc, IEEE)
        if HAS_PB:
            acc += tl.load(pb_ptr + c, mask=mask_c, other=0.0).to(ACC)[None, :]
        # Rounded to the output dtype once: what the primary channels hold and what the depthwise reads.
        x1 = _activation(acc, ACT).to(dtype)

        # 2. The tile's own pixels of x1 [+ residual] into the output's first INIT channels.
        mask = (in_map & own)[:, None] & mask_c[None, :]
        y = x1
        if HAS_RES:
            r = tl.load(res_ptr + n * srn + (oh * srh + ow * srw)[:, None] + (c * src)[None, :], mask=mask,
                        other=0.0)
            y = (y.to(ACC) + r.to(ACC)).to(dtype)
        tl.store(out_ptr + n * son + (oh * soh + ow * sow)[:, None] + (c * soc)[None, :], y, mask=mask)

        # 3. The cheap channels of the block's primary channels that the output keeps.
        if cb * BLOCK_C < SOURCES:
            # Every thread has read the previous tile's taps before x1 overwrites them, and x1 is whole before any
            # thread reads its taps (the slot stays in L1/L2: it is rewritten tile after tile).
            tl.debug_barrier()
            tl.store(slot + q[:, None] * BLOCK_C + cl[None, :], x1)
            tl.debug_barrier()
            ph = h0 + pr
            pw = w0 + pc
            mask_p = (ph < OH) & (pw < OW)
            if INT64:
                ph = ph.to(tl.int64)
                pw = pw.to(tl.int64)
            for j in range(MULT):
                f = c * MULT + j
                mask_f = mask_c & (f < KEPT)
                if HAS_CB:
                    z = tl.load(cb_ptr + f, mask=mask_f, other=0.0).to(ACC)[None, :] + \
                        tl.zeros((BLOCK_P, BLOCK_C), ACC)
                else:
                    z = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
                for kh in range(KH):
                    ih = ph + (kh - PH)
                    ok_h = mask_p & (ih >= 0) & (ih < OH)
                    for kw in range(KW):
                        iw = pw + (kw - PW)
                        ok = ok_h & (iw >= 0) & (iw < OW)
                        xv = tl.load(slot + (base + (kh * HALO_W + kw))[:, None] * BLOCK_C + cl[None, :],
                                     mask=ok[:, None] & mask_f[None, :], other=0.0).to(ACC)
                        wv = tl.load(cw_ptr + f * scf + kh * sch + kw * scw, mask=mask_f, other=0.0).to(ACC)
                        # The taps outside the map (x1's zero padding) are skipped, not added as 0 * w: that is NaN
                        # for a NaN or Inf weight, where PyTorch has none.
                        z = tl.where(ok[:, None], z + xv * wv[None, :], z)
                mask_pf = mask_p[:, None] & mask_f[None, :]
                # Rounded before the residual is added, as the composition adds it to the stored cheap half.
                y2 = _activation(z, ACT).to(dtype)
                ch = INIT + f
                if HAS_RES:
                    r2 = tl.load(res_ptr + n * srn + (ph * srh + pw * srw)[:, None] + (ch * src)[None, :],
                                 mask=mask_pf, other=0.0)
                    y2 = (y2.to(ACC) + r2.to(ACC)).to(dtype)
                tl.store(out_ptr + n * son + (ph * soh + pw * sow)[:, None] + (ch * soc)[None, :], y2, mask=mask_pf)


# Halo lanes (BLOCK_HP) of a program at most: with BLOCK_C channels they size the GEMM's accumulator.
_MAX_HALO = 256


def _tile(out_h, out_w, kh, kw):
    """(TILE_H, TILE_W, BLOCK_HP) for an out_h x out_w map: the power-of-two tile whose programs spend the fewest
    lanes over the map, counting the halo's GEMM lanes (the haloed tile rounded up to a power of two), the
    depthwise's lanes and a fixed cost per program; ties go to the larger tile. With 3x3 kernels 112x112 maps get
    8x16 tiles (180 halo pixels in 256 lanes), 56x56 maps 4x32 (204 in 256), 7x7 maps one 8x8 tile (100 in 128).
    Kernels too large for any tile within the limit take 1x1 tiles."""
    best = None
    th = 1
    while th <= next_pow2(out_h):
        tw = 1
        while tw <= next_pow2(out_w):
            halo = max(16, next_pow2((th + kh - 1) * (tw + kw - 1)))
            if halo <= _MAX_HALO or (th, tw) == (1, 1):
                cost = triton.cdiv(out_h, th) * triton.cdiv(out_w, tw) * (halo + th * tw + 64)
                key = (cost, -th * tw)
                if best is None or key < best[0]:
                    best = (key, (th, tw, halo))
            tw *= 2
        th *= 2
    return best[1]


def ghost_module_forward(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels,
                         stride, act, packed_weights=None):
    # packed_weights is the CPU kernel's copy of the weights: not needed here.
    # The op's own checks, so that a direct call fails as on every other backend.
    _geometry.check_ghost_module(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels,
                                 stride, act)
    return _forward(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels, stride, act)


def ghost_bottleneck_forward(input, primary_weight, primary_bias, cheap_weight, cheap_bias, mid_channels, activation,
                             dw_weight, dw_bias, dw_stride, second_primary_weight, second_primary_bias,
                             second_cheap_weight, second_cheap_bias, out_channels, second_activation, residual):
    """fusedops::_ghost_bottleneck (:func:`fusedops.ops.ghost_module.ghost_bottleneck`, inference: no autograd) in
    two launches of ``_ghost_fwd_kernel``, as on CUDA: the first module, then the second, whose GEMM computes the
    depthwise stage between them (where there is one) from the first module's output as it reads its input, so the
    stage's output never reaches memory. The first module's output makes one round trip: the second module's tiles
    need a halo of it that other programs compute."""
    _check_bottleneck(input, primary_weight, primary_bias, cheap_weight, cheap_bias, mid_channels, activation,
                      dw_weight, dw_bias, dw_stride, second_primary_weight, second_primary_bias, second_cheap_weight,
                      second_cheap_bias, out_channels, second_activation, residual)
    # Both outputs in the input's format (the native op's), whatever suggest_memory_format makes of the first one's
    # strides where they fit both formats (one channel, 1x1 maps).
    fmt = suggest_memory_format(input)
    x = _forward(input, primary_weight, primary_bias, cheap_weight, cheap_bias, None, mid_channels, (1, 1), activation,
                 memory_format=fmt)
    depthwise = None if dw_weight is None else (dw_weight, dw_bias, (int(dw_stride[0]), int(dw_stride[1])))
    return _forward(x, second_primary_weight, second_primary_bias, second_cheap_weight, second_cheap_bias, residual,
                    out_channels, (1, 1), second_activation, depthwise=depthwise, memory_format=fmt)


def _forward(input, primary_weight, primary_bias, cheap_weight, cheap_bias, residual, out_channels, stride, act,
             depthwise=None, memory_format=None):
    """Launches ``_ghost_fwd_kernel`` on checked arguments. `depthwise`: (weight, bias, stride) of a depthwise stage
    (padding k // 2) between `input` and the module, computed inside the kernel (`stride` is then (1, 1)): the output
    has the stage's output map. `memory_format`: the output's, the input's suggested one by default."""
    n, c, in_h, in_w = input.shape
    if depthwise is None:
        shape = _geometry.ghost_module_output_shape(input, out_channels, stride)
    else:
        dw_weight, dw_bias, stride = depthwise
        shape = (n, out_channels, (in_h - 1) // stride[0] + 1, (in_w - 1) // stride[1] + 1)
    out = torch.empty(shape, dtype=input.dtype, device=input.device,
                      memory_format=memory_format or suggest_memory_format(input))
    if out.numel() == 0:
        return out
    init = primary_weight.shape[0]
    out_h, out_w = shape[2:]
    kh, kw = cheap_weight.shape[2:]
    mult = cheap_weight.shape[0] // init
    sources, _ = _cheap_sources(primary_weight, cheap_weight, out_channels)
    tile_h, tile_w, block_hp = _tile(out_h, out_w, kh, kw)
    # GEMM tiles of at least 16 (tl.dot), at most 4096 accumulators a program. fp32 and fp64 take K in chunks of
    # 16: their products run on FMA units, where a longer chunk only adds registers (ptxas, sm_80, fp32 128 x 16
    # accumulators: 416 bytes of spills in chunks of 32, none in chunks of 16). So does the depthwise stage's A tile,
    # summed in fp32 whatever the dtype (sm_80, fp16 256 x 32 with 5x5 kernels: 208 bytes of spills, none at 16).
    half = input.dtype in (torch.float16, torch.bfloat16) and depthwise is None
    block_k = max(16, min(32 if half else 16, next_pow2(c)))
    block_c = max(16, min(32, next_pow2(init), 4096 // block_hp))
    c_blocks = triton.cdiv(init, block_c)
    tiles_w = triton.cdiv(out_w, tile_w)
    tiles = triton.cdiv(out_h, tile_h) * tiles_w
    acc = acc_dtype(input.dtype)
    dot_dtype = acc
    if input.dtype == torch.float16:
        dot_dtype = tl.float16
    elif input.dtype == torch.bfloat16 and not _interpreted(input.device):
        # The Triton interpreter multiplies bfloat16 tiles as their raw 16-bit integers: it gets them as float32,
        # whose products are exact, as a tensor core's bfloat16 products are.
        dot_dtype = tl.bfloat16
    items = n * tiles * c_blocks
    programs = max(1, min(items, _program_target(input.device)))
    # One slot per program, rewritten tile after tile. Without cheap channels kept it is never used: the output
    # stands in for its pointer, as for the other absent tensors.
    scratch = torch.empty((programs, block_hp, block_c), dtype=input.dtype, device=input.device) if sources else out
    res = residual if residual is not None else out
    if depthwise is None:
        # Unused without the depthwise stage: constants, so that they add no specialisation of the kernel.
        dw_weight = dw_bias = None
        dw_args = (0, 0, 0, 0, 0)
        dw_kh = dw_kw = 1
    else:
        dw_args = (in_h, in_w, dw_weight.stride(0), dw_weight.stride(2), dw_weight.stride(3))
        dw_kh, dw_kw = dw_weight.shape[2:]
    with device_context(input):
        _ghost_fwd_kernel[(programs,)](
            input, primary_weight, vector_arg(primary_bias, primary_weight), cheap_weight,
            vector_arg(cheap_bias, cheap_weight), res, out, scratch,
            dw_weight if dw_weight is not None else primary_weight, vector_arg(dw_bias, primary_weight),
            c, init, out_channels - init, sources, mult, out_h, out_w, *dw_args[:2],
            *input.stride(),
            primary_weight.stride(0), primary_weight.stride(1),
            cheap_weight.stride(0), cheap_weight.stride(2), cheap_weight.stride(3),
            *dw_args[2:],
            *res.stride(),
            *out.stride(),
            items, tiles, tiles_w, c_blocks,
            stride[0], stride[1],
            KH=kh, KW=kw, TILE_H=tile_h, TILE_W=tile_w,
            HAS_PB=primary_bias is not None, HAS_CB=cheap_bias is not None, HAS_RES=residual is not None,
            ACT=ACT_CODES[act],
            DW_INPUT=depthwise is not None, DW_KH=dw_kh, DW_KW=dw_kw, HAS_DB=dw_bias is not None,
            BLOCK_HP=block_hp, BLOCK_K=block_k, BLOCK_C=block_c,
            INT64=_needs_int64(input, out, res), ACC=acc, DOT_DTYPE=dot_dtype, IEEE=dot_dtype == tl.float32,
            num_warps=8 if block_hp * block_c >= 4096 else 4,
        )
    return out


def ghost_module_backward(grad_output, input, primary_weight, primary_bias, cheap_weight, cheap_bias, out_channels,
                          stride, act, output_mask):
    _geometry.check_ghost_module_backward(grad_output, input, primary_weight, primary_bias, cheap_weight, cheap_bias,
                                          out_channels, stride, act)
    if input.dtype in (torch.float16, torch.bfloat16):
        # Half and bfloat16 recompute in float, as the native backward, then round the gradients once.
        up = [None if t is None else t.float() for t in (grad_output, input, primary_weight, primary_bias,
                                                         cheap_weight, cheap_bias)]
        grads = ghost_module_backward(*up, out_channels, stride, act, output_mask)
        return tuple(g.to(input.dtype) for g in grads)
    empty = input.new_empty(0)
    init = primary_weight.shape[0]
    want_primary = any(output_mask[:3])
    z1 = F.conv2d(input, primary_weight, primary_bias, tuple(stride))
    x1 = activation(z1, act)
    grad_x1 = grad_output[:, :init].clone(memory_format=suggest_memory_format(input)) if want_primary else None
    grad_cw = torch.zeros_like(cheap_weight) if output_mask[3] else empty
    grad_cb = torch.zeros_like(cheap_bias) if output_mask[4] and cheap_bias is not None else empty
    if out_channels > init and (want_primary or output_mask[3] or output_mask[4]):
        sources, filters = _cheap_sources(primary_weight, cheap_weight, out_channels)
        kh, kw = cheap_weight.shape[2:]
        padding = (kh // 2, kw // 2)
        weight = cheap_weight[:filters]
        z2 = depthwise_conv2d_forward(x1[:, :sources], weight, None if cheap_bias is None else cheap_bias[:filters],
                                      (1, 1), padding, (1, 1))
        # The filters past the output's last channel (at most multiplier - 1) get no gradient: zeros.
        grad_x2 = torch.zeros_like(z2)
        grad_x2[:, :out_channels - init] = grad_output[:, init:]
        grad_z2 = activation_backward(grad_x2, z2, act)
        gs, gw, gb = depthwise_conv2d_backward(grad_z2, x1[:, :sources], weight, (1, 1), padding, (1, 1),
                                               [want_primary, output_mask[3],
                                                output_mask[4] and cheap_bias is not None])
        if want_primary:
            grad_x1[:, :sources] += gs
        if output_mask[3]:
            grad_cw[:filters] = gw
        if output_mask[4] and cheap_bias is not None:
            grad_cb[:filters] = gb
    grad_input, grad_pw, grad_pb = empty, empty, empty
    if want_primary:
        grad_z1 = activation_backward(grad_x1, z1, act)
        gi, gw, gb = torch.ops.aten.convolution_backward(
            grad_z1, input, primary_weight, [init], list(stride), [0, 0], [1, 1], False, [0, 0], 1,
            [output_mask[0], output_mask[1], output_mask[2] and primary_bias is not None])
        grad_input = gi.contiguous(memory_format=suggest_memory_format(input)) if output_mask[0] else empty
        grad_pw = gw.contiguous() if output_mask[1] else empty
        grad_pb = gb if output_mask[2] and primary_bias is not None else empty
    return grad_input, grad_pw, grad_pb, grad_cw, grad_cb
