"""The per-op benchmark suite: what this build can run, the parity check of every op against PyTorch (as
`fusedops check`), and the per-op and model benchmark tables (fusedops vs PyTorch eager and torch.compile) on this
machine. The main job (`make demo`) is the `fusedops` command on whole converted models.

    python -m benchmarks.demo [--quick] [--no-compile]
"""

import argparse

import torch

import fusedops
from fusedops._bench import parity
from . import bench_channel_shuffle, bench_depthwise_conv2d, bench_dwpw_conv2d, bench_models, harness


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
    ok = parity.check()
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
