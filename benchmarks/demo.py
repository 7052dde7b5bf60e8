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
from . import bench_channel_shuffle, bench_depthwise_conv2d, bench_dwpw_conv2d, bench_models, harness


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


def _parity_table(title, rows, tolerance):
    print(f"### {title}")
    print()
    print("| backend | cases | worst relative error | verdict |")
    print("|---|---|---|---|")
    ok = True
    for backend, count, worst in rows:
        passed = worst <= tolerance
        ok &= passed
        print(f"| {backend} | {count} | {worst:.1e} | {'PASS' if passed else 'FAIL'} |")
    print()
    return ok


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
            tensors = [x, torch.randn(C * m, 1, k, k, device=device)]
            tensors += [torch.randn(C * m, device=device)] if bias else []

            def fused(x, w, b=None):
                with fusedops.use_backend(backend):
                    return fusedops.depthwise_conv2d(x, w, b, s, p, d)

            def reference(x, w, b=None):
                return F.conv2d(x, w, b, s, p, d, groups=C)

            worst = max(worst, _worst_error(tensors, fused, reference))
            count += 1
        rows.append((backend, count, worst))
    return _parity_table("depthwise_conv2d vs F.conv2d(groups=C): output and all gradients, fp32 vs fp64 reference",
                         rows, 1e-5)


def parity_dwpw(device="cpu"):
    """dwpw_conv2d forward and all gradients vs the unfused float64 sequence, per backend and layout."""
    from fusedops.ops import _reference

    configs = [
        # N, C, C_out, H, k, stride, multiplier, mid, out
        (2, 32, 64, 15, 3, 1, 1, "relu6", "relu6"),
        (1, 24, 16, 16, 3, 2, 1, "hardswish", None),
        (3, 20, 40, 11, 5, 1, 1, "relu", "hardswish"),
        (2, 8, 30, 12, 3, 2, 2, None, "relu"),
    ]
    rows = []
    for backend in _available_backends(device):
        worst, count = 0.0, 0
        for (N, C, Co, H, k, s, m, mid, out), layout in itertools.product(configs, ("nchw", "channels_last")):
            x = torch.randn(N, C, H, H, device=device)
            if layout == "channels_last":
                x = x.to(memory_format=torch.channels_last)
            tensors = [x, torch.randn(C * m, 1, k, k, device=device) / k, torch.randn(C * m, device=device),
                       torch.randn(Co, C * m, 1, 1, device=device) / (C * m) ** 0.5, torch.randn(Co, device=device)]

            def fused(*args):
                with fusedops.use_backend(backend):
                    return fusedops.dwpw_conv2d(*args, stride=s, padding=k // 2, mid_activation=mid,
                                                out_activation=out)

            def reference(*args):
                return _reference.dwpw_conv2d(*args, (s, s), (k // 2, k // 2), (1, 1), mid, out)

            worst = max(worst, _worst_error(tensors, fused, reference))
            count += 1
        rows.append((backend, count, worst))
    return _parity_table("dwpw_conv2d vs depthwise conv -> act -> 1x1 conv -> act: output and all gradients, fp32 vs "
                         "fp64 reference", rows, 1e-5)


def parity_shuffle(device="cpu"):
    """channel_shuffle and concat_shuffle vs F.channel_shuffle(torch.cat(...)): bit-exact, forward and backward."""
    rows = []
    for backend in _available_backends(device):
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
    return _parity_table("channel_shuffle / concat_shuffle vs F.channel_shuffle(torch.cat(...)): bit-exact "
                         "(error must be 0), forward and backward", rows, 0.0)


def main(argv=None):
    harness.run_under_fault_free_malloc(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_malloc_argument(parser)
    parser.add_argument("--quick", action="store_true", help="fewer shapes and rounds")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime baseline")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print("fusedops build:", fusedops.build_info())
    print(harness.header())
    print()
    ok = parity_depthwise() & parity_dwpw() & parity_shuffle()
    rounds = 5 if args.quick else 9
    use_compile = not args.no_compile
    sections = [
        ("depthwise_conv2d, fp32 (us per call, median of interleaved rounds)",
         lambda: bench_depthwise_conv2d.run(["forward", "full"], use_compile, args.quick, rounds)),
        ("dwpw_conv2d (fused depthwise-separable block, BN folded), fp32 channels_last (us per call)",
         lambda: bench_dwpw_conv2d.run(["forward"], use_compile, args.quick, rounds)),
        ("channel_shuffle / concat_shuffle, fp32 (us per call)",
         lambda: bench_channel_shuffle.run(use_compile, args.quick, rounds)),
        ("ShuffleNetV2 1.0x and MobileNetV1 1.0x inference, 224x224, fp32 (us per batch)",
         lambda: bench_models.run(["shufflenet_v2_x1_0", "mobilenet_v1"], [1, 8], use_compile, not args.no_ort,
                                  rounds)),
    ]
    tables = []
    for title, run in sections:
        print(f"\n## {title}", flush=True)
        results = run()
        harness.append_csv(results)
        tables.append(harness.format_table(results, title))
    print("\n\n# Summary\n")
    print("\n\n".join(tables))
    print("\nrows appended to", harness.RESULTS_CSV)
    if not ok:
        raise SystemExit("parity check failed")


if __name__ == "__main__":
    main()
