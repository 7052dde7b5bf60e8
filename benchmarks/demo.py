"""The main job: what this build can run, a parity check of every op against PyTorch, and the benchmark
tables (fusedops vs PyTorch eager and torch.compile) on this machine.

    python -m benchmarks.demo [--quick] [--no-compile]
"""

import argparse
import itertools

import torch
import torch.nn.functional as F

import fusedops
from fusedops import _backend
from . import bench_depthwise_conv2d, harness


def _available_backends(device):
    names = []
    for name in ("native", "triton", "reference"):
        try:
            with fusedops.use_backend(name):
                _backend.resolve(torch.device(device), "demo")
            names.append(name)
        except RuntimeError:
            pass
    return names


def _max_rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def parity_depthwise(device="cpu"):
    """Forward and all gradients vs F.conv2d(groups=C) in float64, per backend and layout."""
    configs = [
        # N, C, H, W, k, stride, padding, dilation, multiplier, bias
        (2, 32, 15, 17, 3, 1, 1, 1, 1, True),
        (1, 24, 16, 16, 3, 2, 1, 1, 1, False),
        (3, 20, 11, 13, 5, 1, 2, 1, 1, True),
        (1, 16, 14, 14, 7, 2, 3, 1, 1, True),
        (2, 8, 12, 12, 3, 1, 2, 2, 2, True),
    ]
    rows = []
    for backend in _available_backends(device):
        worst, count = 0.0, 0
        for (N, C, H, W, k, s, p, d, m, bias), layout in itertools.product(configs, ("nchw", "channels_last")):
            x = torch.randn(N, C, H, W, device=device)
            if layout == "channels_last":
                x = x.to(memory_format=torch.channels_last)
            w = torch.randn(C * m, 1, k, k, device=device)
            b = torch.randn(C * m, device=device) if bias else None
            args = [t.detach().clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
            ref_args = [t.detach().double().requires_grad_() for t in args]
            with fusedops.use_backend(backend):
                y = fusedops.depthwise_conv2d(args[0], args[1], args[2] if bias else None, s, p, d)
            r = F.conv2d(ref_args[0], ref_args[1], ref_args[2] if bias else None, s, p, d, groups=C)
            g = torch.randn_like(r)
            grads = torch.autograd.grad(y, args, g.to(y.dtype))
            ref_grads = torch.autograd.grad(r, ref_args, g)
            errs = [_max_rel_err(y, r)] + [_max_rel_err(a, b_) for a, b_ in zip(grads, ref_grads)]
            worst = max(worst, *errs)
            count += 1
        rows.append((backend, count, worst))
    print("### depthwise_conv2d parity vs F.conv2d(groups=C) (float32 vs float64 reference; output and all grads)")
    print()
    print("| backend | configs x layouts | worst relative error | verdict |")
    print("|---|---|---|---|")
    ok = True
    for backend, count, worst in rows:
        passed = worst < 1e-5
        ok &= passed
        print(f"| {backend} | {count} | {worst:.1e} | {'PASS' if passed else 'FAIL'} |")
    print()
    return ok


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer shapes and rounds")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print("fusedops build:", fusedops.build_info())
    print(harness.header())
    print()
    ok = parity_depthwise()
    results = bench_depthwise_conv2d.run(["forward", "full"], not args.no_compile, args.quick, 5 if args.quick else 11)
    print()
    print(harness.format_table(results, "depthwise_conv2d, fp32 (us per call, median of paired rounds)"))
    print("\nappended to", harness.append_csv(results))
    if not ok:
        raise SystemExit("parity check failed")


if __name__ == "__main__":
    main()
