"""Draws benchmarks/data/results.csv: per case, the first provider's speed-up over each baseline.

    python -m benchmarks.plot [--benchmark depthwise_conv2d] [--out benchmarks/data/depthwise_conv2d.png]
"""

import argparse
import csv
import os

from fusedops._bench.plot import draw_speedups
from . import harness


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=harness.RESULTS_CSV)
    parser.add_argument("--benchmark", default="depthwise_conv2d")
    parser.add_argument("--mode", default=None, help="only this mode (forward, full, inference)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    with open(args.csv) as f:
        rows = [r for r in csv.DictReader(f) if r["benchmark"] == args.benchmark and r["speedup"]]
    if args.mode:
        rows = [r for r in rows if r["mode"] == args.mode]
    if not rows:
        raise SystemExit(f"no rows for benchmark {args.benchmark!r} in {args.csv}")
    out = args.out or os.path.join(harness.DATA_DIR, f"{args.benchmark}.png")
    print("wrote", draw_speedups(rows, out, args.benchmark))


if __name__ == "__main__":
    main()
