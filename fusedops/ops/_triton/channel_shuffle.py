"""Triton kernels of fusedops::channel_shuffle, concat_shuffle and _concat_shuffle_backward.

One gather kernel serves all three (see csrc/include/fusedops/shuffle_geometry.h): each program writes a
block of consecutive destination elements, in the destination's memory order (coalesced stores), reading
concatenated source channel ``(d % groups) * (C // groups) + d // groups`` for destination channel ``d``.
Sources are addressed through their strides, so channel slices such as ``x.chunk(2, 1)`` are read in place.
"""

import torch
import triton
import triton.language as tl
from torch._prims_common import suggest_memory_format

from .. import _geometry

BLOCK = 1024


@triton.jit
def _shuffle_kernel(
    src0, src1, dst0, dst1,
    total, C, H, W, groups, cpg, src_split, dst_split,
    s0n, s0c, s0h, s0w, s1n, s1c, s1h, s1w,
    d0n, d0c, d0h, d0w, d1n, d1c, d1h, d1w,
    CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    idx = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = idx < total
    if CHANNELS_LAST:
        d = idx % C
        pix = idx // C
        w = pix % W
        h = (pix // W) % H
        n = pix // (W * H)
    else:
        w = idx % W
        h = (idx // W) % H
        d = (idx // (W * H)) % C
        n = idx // (W * H * C)
    s = (d % groups) * cpg + d // groups
    in_first = s < src_split
    off0 = n * s0n + s * s0c + h * s0h + w * s0w
    off1 = n * s1n + (s - src_split) * s1c + h * s1h + w * s1w
    v0 = tl.load(src0 + off0, mask=mask & in_first)
    v1 = tl.load(src1 + off1, mask=mask & (s >= src_split))
    v = tl.where(in_first, v0, v1)
    to_first = d < dst_split
    tl.store(dst0 + (n * d0n + d * d0c + h * d0h + w * d0w), v, mask=mask & to_first)
    tl.store(dst1 + (n * d1n + (d - dst_split) * d1c + h * d1h + w * d1w), v, mask=mask & (d >= dst_split))


def _run(srcs, dsts, groups, channels_last):
    n, _, h, w = dsts[0].shape
    c = sum(t.shape[1] for t in dsts)
    total = n * c * h * w
    if total == 0:
        return
    src0, src1 = srcs[0], srcs[-1]
    dst0, dst1 = dsts[0], dsts[-1]
    src_split = src0.shape[1] if len(srcs) == 2 else c
    dst_split = dst0.shape[1] if len(dsts) == 2 else c
    grid = (triton.cdiv(total, BLOCK),)
    with torch.device(dst0.device):  # launch on the tensors' device (and its current stream)
        _shuffle_kernel[grid](
            src0, src1, dst0, dst1,
            total, c, h, w, groups, c // groups, src_split, dst_split,
            *src0.stride(), *src1.stride(), *dst0.stride(), *dst1.stride(),
            CHANNELS_LAST=channels_last, BLOCK=BLOCK,
        )


def channel_shuffle(input, groups):
    _geometry.check_channel_shuffle(input, groups)
    fmt = suggest_memory_format(input)
    out = torch.empty(input.shape, dtype=input.dtype, device=input.device, memory_format=fmt)
    _run([input], [out], groups, fmt == torch.channels_last)
    return out


def concat_shuffle(a, b, groups):
    _geometry.check_concat_shuffle(a, b, groups)
    fmt = _geometry.concat_memory_format(a, b)
    n, _, h, w = a.shape
    out = torch.empty((n, a.shape[1] + b.shape[1], h, w), dtype=a.dtype, device=a.device, memory_format=fmt)
    _run([a, b], [out], groups, fmt == torch.channels_last)
    return out


def concat_shuffle_backward(grad, channels_a, groups):
    _geometry.check_concat_shuffle_backward(grad, channels_a, groups)
    n, c, h, w = grad.shape
    fmt = suggest_memory_format(grad)
    opts = dict(dtype=grad.dtype, device=grad.device, memory_format=fmt)
    grad_a = torch.empty((n, channels_a, h, w), **opts)
    grad_b = torch.empty((n, c - channels_a, h, w), **opts)
    _run([grad], [grad_a, grad_b], c // groups if c else 1, fmt == torch.channels_last)
    return grad_a, grad_b
