"""Fused inverted-residual block (inverted_residual): fusedops vs torchvision's MobileNetV2 block in eager mode
and under torch.compile (freezing), fp32, channels_last, eval mode (inference).

The baseline is ``torchvision.models.mobilenetv2.InvertedResidual`` in eval mode (1x1 conv, BN, ReLU6,
depthwise 3x3 conv, BN, ReLU6, 1x1 conv, BN, + input); fusedops runs ``fusedops.nn.InvertedResidual`` with the
same weights, frozen (BNs folded once). Forward under inference_mode.

    python -m benchmarks.bench_inverted_residual [--no-compile] [--quick]
"""

import torch
from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionInvertedResidual

import fusedops
from . import harness, shapes


def setup(N, C, Cout, H, t, stride, use_compile):
    x = torch.randn(N, C, H, H).to(memory_format=torch.channels_last)
    reference = TorchvisionInvertedResidual(C, Cout, stride, t).to(memory_format=torch.channels_last)
    harness.randomize_batch_norms(reference)
    reference.eval()
    fused = fusedops.nn.InvertedResidual(C, Cout, stride, t).to(memory_format=torch.channels_last)
    fused.load_state_dict(reference.state_dict())
    fused = fusedops.freeze(fused.eval())

    def forward(fn):
        def run():
            with torch.inference_mode():
                return fn(x)
        return run

    with torch.inference_mode():
        torch.testing.assert_close(fused(x), reference(x), rtol=1e-4, atol=1e-4)
    providers = {"fusedops": forward(fused), "eager": forward(reference)}
    if use_compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = harness.compile_fresh(reference)
        with torch.no_grad():
            compiled(x)
        providers["compile_freezing"] = forward(compiled)
    return providers, [p for p in providers if p != "fusedops"]


def run(use_compile, quick, rounds):
    results = []
    shape_list = shapes.INVERTED_RESIDUAL[2:5] if quick else shapes.INVERTED_RESIDUAL
    for N in shapes.BATCHES:
        for s in shape_list:
            providers, baselines = setup(N, s["C"], s["Cout"], s["H"], s["t"], s["stride"], use_compile)
            name = f"N={N} {s['C']}->{s['Cout']} t{s['t']} {s['H']}x{s['H']} s{s['stride']}"
            case = harness.Case("inverted_residual", name, "forward", providers, baselines)
            r = harness.time_case(case, rounds=rounds)
            hidden, oh = s["C"] * s["t"], (s["H"] - 1) // s["stride"] + 1
            macs = N * (s["H"] * s["H"] * s["C"] * hidden * (s["t"] != 1) + oh * oh * hidden * (9 + s["Cout"]))
            case.extra = f"{macs / r.median_us['fusedops'] / 1e3:.1f} GMAC/s"
            results.append(r)
            print(harness.format_table([r]).splitlines()[2], flush=True)
    return results


def main(argv=None):
    return harness.bench_main(__doc__, lambda args: run(not args.no_compile, args.quick, args.rounds), None, argv)


if __name__ == "__main__":
    main()
