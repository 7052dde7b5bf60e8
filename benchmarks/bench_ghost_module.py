"""Fused Ghost module (ghost_module): fusedops vs timm's GhostNet ``GhostModule`` in eager mode and under
torch.compile (freezing), fp32, channels_last, eval mode (inference).

The baseline is ``timm.models.ghostnet.GhostModule(C, Cout)`` in eval mode (1x1 conv, BN, ReLU, depthwise 3x3 conv,
BN, ReLU, concatenation, slice); fusedops runs ``fusedops.nn.GhostModule`` with the same weights, frozen (BNs
folded once). Forward under inference_mode. Needs timm. ``--device cuda`` times them on a GPU, fusedops through its
CUDA kernels and its Triton kernels.

    python -m benchmarks.bench_ghost_module [--no-compile] [--quick] [--device cuda]
"""

from timm.models.ghostnet import GhostModule as TimmGhostModule

import fusedops
from . import harness, shapes
from .bench_inverted_residual import setup


def run(use_compile, quick, rounds, device="cpu"):
    results = []
    for N in shapes.BATCHES:
        for s in (shapes.GHOST_MODULE[1:3] if quick else shapes.GHOST_MODULE):
            C, Cout, H = s["C"], s["Cout"], s["H"]
            providers, baselines = setup(N, C, H, TimmGhostModule(C, Cout), fusedops.nn.GhostModule(C, Cout),
                                         use_compile, device)
            case = harness.Case("ghost_module", f"N={N} {C}->{Cout} {H}x{H}", "forward", providers, baselines)
            r = harness.time_case(case, rounds=rounds)
            init = -(-Cout // 2)
            macs = N * H * H * (C * init + (Cout - init) * 9)
            case.extra = f"{macs / r.median_us['fusedops'] / 1e3:.1f} GMAC/s"
            results.append(r)
            print(harness.format_table([r]).splitlines()[2], flush=True)
    return results


def main(argv=None):
    def add_arguments(parser):
        parser.add_argument("--device", default="cpu", help="the device the modules run on (cpu or cuda)")

    return harness.bench_main(__doc__, lambda args: run(not args.no_compile, args.quick, args.rounds, args.device),
                              add_arguments, argv)


if __name__ == "__main__":
    main()
