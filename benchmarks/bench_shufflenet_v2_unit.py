"""ShuffleNetV2's unit (shufflenet_v2_unit): fusedops vs torchvision's ShuffleNetV2 unit in eager mode and under
torch.compile (freezing), fp32, channels_last, eval mode (inference).

The baseline is ``torchvision.models.shufflenetv2.InvertedResidual(C, Cout, stride)`` in eval mode (the branch:
1x1 conv, BN, ReLU, depthwise 3x3 conv, BN, 1x1 conv, BN, ReLU, on the input's second half at stride 1; at stride 2
on the whole input, beside the shortcut: depthwise 3x3 conv, BN, 1x1 conv, BN, ReLU; then concatenation and channel
shuffle); fusedops runs ``fusedops.nn.ShuffleNetV2Unit`` with the same weights, frozen (BNs folded and the branch's
weights packed once). Forward under inference_mode.

    python -m benchmarks.bench_shufflenet_v2_unit [--no-compile] [--quick]
"""

from torchvision.models.shufflenetv2 import InvertedResidual as TorchvisionShuffleNetV2Unit

import fusedops
from . import harness, shapes
from .bench_inverted_residual import setup


def _macs(N, s):
    """Multiply-adds of one unit: the branch (1x1, depthwise 3x3, 1x1) and, at stride 2, the shortcut (depthwise
    3x3, 1x1)."""
    C, H, stride = s["C"], s["H"], s["stride"]
    branch, oh = s["Cout"] // 2, (H - 1) // stride + 1
    branch_in = C if stride > 1 else branch
    macs = H * H * branch_in * branch + oh * oh * branch * (9 + branch)
    if stride > 1:
        macs += oh * oh * C * (9 + branch)
    return N * macs


def setup_unit(N, s, use_compile):
    """Providers for the unit of shape `s` (a shapes.SHUFFLENET_V2_UNIT entry) on an N-image batch."""
    return setup(N, s["C"], s["H"], TorchvisionShuffleNetV2Unit(s["C"], s["Cout"], s["stride"]),
                 fusedops.nn.ShuffleNetV2Unit(s["C"], s["Cout"], s["stride"]), use_compile)


def run(use_compile, quick, rounds):
    results = []
    for N in shapes.BATCHES:
        for s in (shapes.SHUFFLENET_V2_UNIT[2:4] if quick else shapes.SHUFFLENET_V2_UNIT):
            providers, baselines = setup_unit(N, s, use_compile)
            name = f"N={N} {s['C']}->{s['Cout']} {s['H']}x{s['H']} s{s['stride']}"
            case = harness.Case("shufflenet_v2_unit", name, "forward", providers, baselines)
            r = harness.time_case(case, rounds=rounds)
            case.extra = f"{_macs(N, s) / r.median_us['fusedops'] / 1e3:.1f} GMAC/s"
            results.append(r)
            print(harness.format_table([r]).splitlines()[2], flush=True)
    return results


def main(argv=None):
    return harness.bench_main(__doc__, lambda args: run(not args.no_compile, args.quick, args.rounds), None, argv)


if __name__ == "__main__":
    main()
