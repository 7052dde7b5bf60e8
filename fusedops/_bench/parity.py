"""The short parity check of every op on every backend this machine can run (``fusedops check``; ``make demo`` and
``make check-cpu-only`` run it too): each op's output and gradients, in float32, against the PyTorch
composition it replaces in float64 (the shuffles bit-exact, against PyTorch's float32), in NCHW and
channels_last."""

import dataclasses
import itertools
from typing import List, Tuple

import torch
import torch.nn.functional as F

import fusedops
from fusedops import _backend
from fusedops.ops import _reference

# The worst relative error (of the largest magnitude) a float32 result may have against the float64 reference.
FLOAT32_TOLERANCE = 1e-5


@dataclasses.dataclass
class ParityTable:
    """One op's check: per backend, how many cases ran and the worst relative error among them."""

    title: str
    tolerance: float
    rows: List[Tuple[str, int, float]]  # (backend, cases, worst relative error)

    @property
    def passed(self) -> bool:
        return all(worst <= self.tolerance for _, _, worst in self.rows)

    def __str__(self):
        lines = [f"### {self.title}", "", "| backend | cases | worst relative error | verdict |", "|---|---|---|---|"]
        lines += [f"| {backend} | {count} | {worst:.1e} | {'PASS' if worst <= self.tolerance else 'FAIL'} |"
                  for backend, count, worst in self.rows]
        return "\n".join(lines)


def available_backends(device) -> List[str]:
    """The backends that can run ops on `device` here (``auto`` aside: it is one of them)."""
    names = []
    for name in ("native", "triton", "reference"):
        try:
            with fusedops.use_backend(name):
                _backend.resolve(torch.device(device), "check")
            names.append(name)
        except RuntimeError:
            pass
    return names


def _max_rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def _worst_error(tensors, fused, reference):
    """Worst relative error of `fused(*leaves)` (fp32) against `reference(*leaves)` (fp64): output and the
    gradient of every tensor in `tensors`, for one random output gradient."""
    args = [t.detach().clone().requires_grad_() for t in tensors]
    ref_args = [t.detach().double().requires_grad_() for t in args]
    y = fused(*args)
    r = reference(*ref_args)
    g = torch.randn_like(r)
    grads = torch.autograd.grad(y, args, g.to(y.dtype))
    ref_grads = torch.autograd.grad(r, ref_args, g)
    return max([_max_rel_err(y, r)] + [_max_rel_err(a, b) for a, b in zip(grads, ref_grads)])


def _layouts(x):
    """`x` in NCHW and in channels_last."""
    return x, x.to(memory_format=torch.channels_last)


def _float_table(title, backends, cases):
    """A ParityTable of `cases`: (tensors, fused(backend) -> callable, reference callable) per case, run on each
    backend."""
    rows = []
    for backend in backends:
        worst = 0.0
        for tensors, fused, reference in cases:
            def on_backend(*args):
                with fusedops.use_backend(backend):
                    return fused(*args)
            worst = max(worst, _worst_error(tensors, on_backend, reference))
        rows.append((backend, len(cases), worst))
    return ParityTable(title, FLOAT32_TOLERANCE, rows)


def parity_depthwise(device, backends):
    """Forward and all gradients vs F.conv2d(groups=C) in float64, per backend and layout."""
    configs = [
        # N, C, H, W, k, stride, padding, dilation, multiplier, bias
        (2, 32, 15, 17, 3, 1, 1, 1, 1, True),
        (1, 24, 16, 16, 3, 2, 1, 1, 1, False),
        (3, 20, 11, 13, 5, 1, 2, 1, 1, True),
        (1, 16, 14, 14, 7, 2, 3, 1, 1, True),
        (2, 8, 12, 12, 3, 1, 2, 2, 2, True),
    ]
    cases = []
    for N, C, H, W, k, s, p, d, m, bias in configs:
        weights = [torch.randn(C * m, 1, k, k, device=device)] + ([torch.randn(C * m, device=device)] if bias else [])
        for x in _layouts(torch.randn(N, C, H, W, device=device)):
            cases.append(([x] + weights,
                          lambda x, w, b=None, s=s, p=p, d=d: fusedops.depthwise_conv2d(x, w, b, s, p, d),
                          lambda x, w, b=None, s=s, p=p, d=d, C=C: F.conv2d(x, w, b, s, p, d, groups=C)))
    return _float_table("depthwise_conv2d vs F.conv2d(groups=C): output and all gradients, fp32 vs fp64 reference",
                        backends, cases)


def parity_dwpw(device, backends):
    """dwpw_conv2d forward and all gradients vs the unfused float64 sequence, per backend and layout."""
    configs = [
        # N, C, C_out, H, k, stride, multiplier, mid, out
        (2, 32, 64, 15, 3, 1, 1, "relu6", "relu6"),
        (1, 24, 16, 16, 3, 2, 1, "hardswish", None),
        (3, 20, 40, 11, 5, 1, 1, "relu", "hardswish"),
        (2, 8, 30, 12, 3, 2, 2, None, "relu"),
    ]
    cases = []
    for N, C, Co, H, k, s, m, mid, out in configs:
        weights = [torch.randn(C * m, 1, k, k, device=device) / k, torch.randn(C * m, device=device),
                   torch.randn(Co, C * m, 1, 1, device=device) / (C * m) ** 0.5, torch.randn(Co, device=device)]
        for x in _layouts(torch.randn(N, C, H, H, device=device)):
            cases.append(([x] + weights,
                          lambda *args, s=s, k=k, mid=mid, out=out: fusedops.dwpw_conv2d(
                              *args, stride=s, padding=k // 2, mid_activation=mid, out_activation=out),
                          lambda *args, s=s, k=k, mid=mid, out=out: _reference.dwpw_conv2d(
                              *args, (s, s), (k // 2, k // 2), (1, 1), mid, out)))
    return _float_table("dwpw_conv2d vs depthwise conv -> act -> 1x1 conv -> act: output and all gradients, fp32 vs "
                        "fp64 reference", backends, cases)


def parity_inverted_residual(device, backends):
    """inverted_residual forward and all gradients vs the unfused float64 block, per backend and layout: with and
    without the expansion, the residual and a squeeze-excitation."""
    configs = [
        # N, C_in, C_hid, C_out, H, k, stride, activation, se (reduced channels, gate) or None
        (2, 16, 64, 16, 10, 3, 1, "relu6", None),
        (1, 16, 16, 24, 11, 3, 2, "relu6", None),
        (2, 24, 72, 24, 9, 5, 1, "hardswish", (16, "hardsigmoid")),
        (1, 16, 48, 32, 8, 3, 2, "silu", (8, "sigmoid")),
    ]

    def randn(*shape):
        return torch.randn(*shape, device=device)

    cases = []
    for N, Ci, Ch, Co, H, k, s, act, se in configs:
        expand = [randn(Ch, Ci, 1, 1) / Ci ** 0.5, randn(Ch)] if Ch != Ci else []
        weights = expand + [randn(Ch, 1, k, k) / k, randn(Ch), randn(Co, Ch, 1, 1) / Ch ** 0.5, randn(Co)]
        weights += [randn(se[0], Ch, 1, 1) / Ch ** 0.5, randn(se[0]), randn(Ch, se[0], 1, 1) / se[0] ** 0.5,
                    randn(Ch)] if se else []
        residual = s == 1 and Ci == Co

        def split(args, has_expand=bool(expand), has_se=bool(se)):
            """(input, expand weight and bias, dw weight and bias, project weight and bias, SE tensors or None)."""
            x, rest = args[0], list(args[1:])
            expand_args = (rest.pop(0), rest.pop(0)) if has_expand else (None, None)
            block, se_args = rest[:4], (rest[4:] if has_se else None)
            return x, expand_args, block, se_args

        def fused(*args, split=split, s=s, act=act, gate=se and se[1]):
            x, expand_args, block, se_args = split(args)
            return fusedops.inverted_residual(x, *expand_args, *block, stride=s, activation=act,
                                              se=(*se_args, gate) if se_args else None)

        def reference(*args, split=split, s=s, k=k, act=act, gate=se and se[1], residual=residual):
            x, expand_args, block, se_args = split(args)
            se_args = se_args or (None,) * 4
            return _reference.inverted_residual(x, *expand_args, *block, *se_args, (s, s), (k // 2, k // 2), (1, 1),
                                                act, residual, "relu", gate)

        for x in _layouts(randn(N, Ci, H, H)):
            cases.append(([x] + weights, fused, reference))
    return _float_table("inverted_residual vs [1x1 -> act ->] depthwise -> act -> [SE ->] 1x1 [+ input]: output and "
                        "all gradients, fp32 vs fp64 reference", backends, cases)


def parity_ghost_module(device, backends):
    """ghost_module forward and all gradients vs the unfused float64 module, per backend and layout: ratios 2 and 3,
    the cheap half cut, a stride, the residual."""
    configs = [
        # N, C_in, out_channels, ratio, H, dw kernel, stride, activation, residual
        (2, 16, 32, 2, 10, 3, 1, "relu", False),
        (1, 12, 19, 3, 9, 5, 2, "relu", False),
        (2, 24, 24, 2, 8, 3, 1, None, True),
    ]

    def randn(*shape):
        return torch.randn(*shape, device=device)

    cases = []
    for N, C, out, ratio, H, k, s, act, residual in configs:
        init = -(-out // ratio)
        oh = (H - 1) // s + 1
        weights = [randn(init, C, 1, 1) / C ** 0.5, randn(init), randn(init * (ratio - 1), 1, k, k) / k,
                   randn(init * (ratio - 1))]
        extra = [randn(N, out, oh, oh)] if residual else []

        def fused(x, pw, pb, cw, cb, *r, out=out, s=s, act=act):
            return fusedops.ghost_module(x, pw, pb, cw, cb, out, stride=s, activation=act,
                                         residual=r[0] if r else None)

        def reference(x, pw, pb, cw, cb, *r, out=out, s=s, act=act):
            return _reference.ghost_module(x, pw, pb, cw, cb, r[0] if r else None, out, (s, s), act or "none")

        for x in _layouts(randn(N, C, H, H)):
            cases.append(([x] + weights + extra, fused, reference))
    return _float_table("ghost_module vs cat([act(1x1), act(depthwise of it)])[:, :out] [+ residual]: output and all "
                        "gradients, fp32 vs fp64 reference", backends, cases)


def parity_shufflenet_v2_unit(device, backends):
    """shufflenet_v2_unit forward and all gradients vs the unfused float64 unit, per backend and layout: the stride-1
    unit (the input's first half kept) and the down-sampling unit (the shortcut), with and without biases."""
    configs = [
        # N, C_in, B (each half's channels), H, k, stride, activation, shortcut, biases
        (2, 24, 12, 10, 3, 1, "relu", False, True),
        (1, 16, 16, 11, 3, 2, "relu", True, True),
        (2, 12, 20, 9, 5, 2, "hardswish", True, False),
        (1, 32, 16, 8, 3, 1, None, False, False),
    ]

    def randn(*shape):
        return torch.randn(*shape, device=device)

    cases = []
    for N, C, B, H, k, s, act, shortcut, biases in configs:
        branch_in = C if shortcut else C // 2
        weights = [randn(B, branch_in, 1, 1) / branch_in ** 0.5, randn(B) if biases else None, randn(B, 1, k, k) / k,
                   randn(B) if biases else None, randn(B, B, 1, 1) / B ** 0.5, randn(B) if biases else None]
        weights += [randn(C, 1, k, k) / k, randn(C) if biases else None, randn(B, C, 1, 1) / C ** 0.5,
                    randn(B) if biases else None] if shortcut else [None] * 4
        given = [w is not None for w in weights]

        def full(args, given=given):
            """The ten weights and biases from the given ones (None for the others)."""
            it = iter(args)
            return [next(it) if g else None for g in given]

        def fused(x, *args, full=full, s=s, act=act, shortcut=shortcut):
            w = full(args)
            return fusedops.shufflenet_v2_unit(x, *w[:6], shortcut=tuple(w[6:]) if shortcut else None, stride=s,
                                               activation=act)

        def reference(x, *args, full=full, s=s, k=k, act=act):
            return _reference.shufflenet_v2_unit(x, *full(args), (s, s), (k // 2, k // 2), (1, 1), act or "none")

        for x in _layouts(randn(N, C, H, H)):
            cases.append(([x] + [w for w in weights if w is not None], fused, reference))
    return _float_table("shufflenet_v2_unit vs channel_shuffle(cat([x1 or dw -> 1x1 -> act, 1x1 -> act -> dw -> 1x1 "
                        "-> act]), 2): output and all gradients, fp32 vs fp64 reference", backends, cases)


def parity_shuffle(device, backends):
    """channel_shuffle and concat_shuffle vs F.channel_shuffle(torch.cat(...)): bit-exact, forward and backward."""
    rows = []
    for backend in backends:
        worst, count = 0.0, 0
        for (N, C, H, groups), layout in itertools.product(
            [(2, 12, 7, 2), (1, 24, 5, 3), (3, 16, 4, 4), (2, 58, 6, 2)], ("nchw", "channels_last")
        ):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = torch.randn(N, C, H, H, device=device).to(memory_format=fmt).requires_grad_()
            a, b = (t.detach().requires_grad_() for t in torch.randn(N, C, H, H, device=device).to(
                memory_format=fmt).chunk(2, 1))
            with fusedops.use_backend(backend):
                y = fusedops.channel_shuffle(x, groups)
                z = fusedops.concat_shuffle(a, b, 2)
            ry = F.channel_shuffle(x.detach(), groups)
            rz = F.channel_shuffle(torch.cat([a.detach(), b.detach()], 1), 2)
            gy, gz = torch.randn_like(ry), torch.randn_like(rz)
            (gx,) = torch.autograd.grad(y, x, gy)
            ga, gb = torch.autograd.grad(z, (a, b), gz)
            ref_gx = F.channel_shuffle(gy, C // groups)
            ref_ga, ref_gb = F.channel_shuffle(gz, C // 2).chunk(2, 1)
            for out, ref in ((y, ry), (z, rz), (gx, ref_gx), (ga, ref_ga), (gb, ref_gb)):
                worst = max(worst, 0.0 if torch.equal(out, ref) else float("inf"))
            count += 1
        rows.append((backend, count, worst))
    return ParityTable("channel_shuffle / concat_shuffle vs F.channel_shuffle(torch.cat(...)): bit-exact (error must "
                       "be 0), forward and backward", 0.0, rows)


# The checks by the op they are named after (channel_shuffle's checks concat_shuffle too).
CHECKS = {"depthwise_conv2d": parity_depthwise, "dwpw_conv2d": parity_dwpw,
          "inverted_residual": parity_inverted_residual, "ghost_module": parity_ghost_module,
          "shufflenet_v2_unit": parity_shufflenet_v2_unit, "channel_shuffle": parity_shuffle}


def check(device="cpu", backends=None, ops=None, out=print) -> bool:
    """Runs the checks of `ops` (default: every op) on `device` for `backends` (default: all that are available
    there), printing each table through `out`; True when all pass."""
    backends = available_backends(device) if backends is None else backends
    passed = True
    for op in ops or CHECKS:
        table = CHECKS[op](device, backends)
        out(str(table) + "\n")
        passed &= table.passed
    return passed
