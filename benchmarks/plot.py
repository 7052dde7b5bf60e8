"""Draws benchmarks/data/results.csv: per case, the first provider's speed-up over each baseline.

    python -m benchmarks.plot [--benchmark depthwise_conv2d] [--out benchmarks/data/depthwise_conv2d.png]
"""

import argparse
import csv
import os

from . import harness


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=harness.RESULTS_CSV)
    parser.add_argument("--benchmark", default="depthwise_conv2d")
    parser.add_argument("--mode", default=None, help="only this mode (forward, full, inference)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.csv) as f:
        rows = [r for r in csv.DictReader(f) if r["benchmark"] == args.benchmark and r["speedup"]]
    if args.mode:
        rows = [r for r in rows if r["mode"] == args.mode]
    if not rows:
        raise SystemExit(f"no rows for benchmark {args.benchmark!r} in {args.csv}")
    # Latest run of each (case, mode, baseline).
    latest = {}
    for r in rows:
        latest[(r["case"], r["mode"], r["provider"])] = r
    cases = sorted({(c, m) for c, m, _ in latest})
    baselines = sorted({p for _, _, p in latest})
    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(cases)), 5))
    width = 0.8 / max(1, len(baselines))
    for i, b in enumerate(baselines):
        xs, ys = [], []
        for j, (c, m) in enumerate(cases):
            r = latest.get((c, m, b))
            if r:
                xs.append(j + i * width)
                ys.append(float(r["speedup"]))
        ax.bar(xs, ys, width, label=f"vs {b}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
    ax.set_xticklabels([f"{c} [{m}]" for c, m in cases], rotation=75, ha="right", fontsize=7)
    first = next(iter(latest.values()))["speedup_of"]
    ax.set_ylabel("speed-up of fusedops (x)")
    ax.set_title(f"{args.benchmark}: {first} speed-up (threads {rows[-1]['threads']}, {rows[-1]['allocator']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = args.out or os.path.join(harness.DATA_DIR, f"{args.benchmark}.png")
    fig.savefig(out, dpi=120)
    print("wrote", out)


if __name__ == "__main__":
    main()
