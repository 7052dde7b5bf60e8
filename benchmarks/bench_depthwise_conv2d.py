"""Depthwise conv2d: fusedops vs PyTorch eager (NCHW, channels_last) and torch.compile.

    python -m benchmarks.bench_depthwise_conv2d [--modes forward full] [--no-compile] [--quick]
"""

import torch
import torch.nn.functional as F

import fusedops
from . import harness, shapes


def _tensors(N, C, H, k, layout, requires_grad):
    x = torch.randn(N, C, H, H)
    if layout == "cl":
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(C, 1, k, k) * 0.1
    if requires_grad:
        x.requires_grad_()
        w.requires_grad_()
    return x, w


class _EagerDepthwise(torch.nn.Module):
    def __init__(self, stride, padding):
        super().__init__()
        self.stride, self.padding = stride, padding

    def forward(self, x, w):
        return F.conv2d(x, w, None, self.stride, self.padding, 1, x.shape[1])


def _forward_fn(fn, x, w):
    def run():
        with torch.inference_mode():
            return fn(x, w)
    return run


def _full_fn(fn, x, w, grad):
    def run():
        x.grad = None
        w.grad = None
        fn(x, w).backward(grad)
    return run


def setup_depthwise(N, C, H, stride, k, layout, mode, use_compile):
    """The providers for one shape, layout ("cl" or "nchw") and mode ("forward" or "full")."""
    pad = k // 2
    full = mode == "full"
    x, w = _tensors(N, C, H, k, layout, full)
    out_h = (H + 2 * pad - k) // stride + 1
    grad = torch.randn(N, C, out_h, out_h)
    if layout == "cl":
        grad = grad.to(memory_format=torch.channels_last)
    ours = lambda a, b: fusedops.depthwise_conv2d(a, b, None, stride, pad)  # noqa: E731
    eager = _EagerDepthwise(stride, pad)
    make = (lambda fn, a, b: _full_fn(fn, a, b, grad)) if full else _forward_fn
    providers = {f"fusedops_{layout}": make(ours, x, w), f"eager_{layout}": make(eager, x, w)}
    baselines = [f"eager_{layout}"]
    if layout == "cl":
        xn, wn = _tensors(N, C, H, k, "nchw", full)
        gn = grad.contiguous()
        providers["eager_nchw"] = (lambda fn, a, b: _full_fn(fn, a, b, gn))(eager, xn, wn) if full else \
            _forward_fn(eager, xn, wn)
        baselines.append("eager_nchw")
    if use_compile:
        compiled = harness.compile_fresh(_EagerDepthwise(stride, pad), fullgraph=True)
        providers[f"compile_{layout}"] = make(compiled, x, w)
        baselines.append(f"compile_{layout}")
    # In-cache bandwidth yardstick: a copy of the input-sized tensor in the same layout.
    src = x.detach().clone(memory_format=torch.preserve_format)
    dst = torch.empty_like(src)
    providers["copy"] = lambda: dst.copy_(src)
    return providers, baselines


def run(modes, use_compile, quick, rounds):
    results = []
    shape_list = shapes.DEPTHWISE_MOBILENET[:3] if quick else shapes.DEPTHWISE_MOBILENET
    for mode in modes:
        for N in shapes.BATCHES:
            for s in shape_list:
                for layout in ("cl", "nchw"):
                    providers, baselines = setup_depthwise(N, s["C"], s["H"], s["stride"], s["k"], layout, mode,
                                                           use_compile)
                    name = f"N={N} C={s['C']} {s['H']}x{s['H']} s{s['stride']} k{s['k']} {layout}"
                    case = harness.Case("depthwise_conv2d", name, mode, providers, baselines)
                    r = harness.time_case(case, rounds=rounds)
                    esize = 4
                    out_h = (s["H"] + 2 * (s["k"] // 2) - s["k"]) // s["stride"] + 1
                    in_bytes = N * s["C"] * s["H"] ** 2 * esize
                    out_bytes = N * s["C"] * out_h ** 2 * esize
                    ours = r.median_us[f"fusedops_{layout}"]
                    gbps = (in_bytes + out_bytes) / ours / 1e3
                    copy_gbps = 2 * in_bytes / r.median_us["copy"] / 1e3
                    case.extra = f"{gbps:.0f} GB/s ({gbps / copy_gbps:.0%} of copy {copy_gbps:.0f} GB/s)" \
                        if mode == "forward" else ""
                    results.append(r)
                    print(harness.format_table([r]).splitlines()[2], flush=True)
    return results


def main(argv=None):
    return harness.bench_main(
        __doc__,
        lambda args: run(args.modes, not args.no_compile, args.quick, args.rounds),
        lambda parser: parser.add_argument("--modes", nargs="+", default=["forward", "full"],
                                           choices=["forward", "full"]),
        argv,
    )


if __name__ == "__main__":
    main()
