"""Markdown tables of one benchmark run from benchmarks/data/results.csv, split by mode and layout (the
form of the README's tables): per case each provider's median time, the first provider's paired speed-up
over each baseline, and the geometric mean (min) of every speed-up column.

    python -m benchmarks.report --benchmark depthwise_conv2d [--commit SHA] [--since ISO] [--until ISO]

Without --commit, the newest commit in the CSV for that benchmark; --since keeps rows from a timestamp on,
--until rows before one (to pick one run among several of the same commit).
"""

import argparse
import csv

from . import harness


def _group(case):
    """(op, layout) of a case name such as "concat_shuffle N=8 C=116 28x28 cl" ("" where absent)."""
    op = case.split(" N=", 1)[0] if " N=" in case else ""
    last = case.rsplit(" ", 1)[-1]
    return op, last if last in ("cl", "nchw") else ""


def tables(rows):
    """{(mode, op, layout): markdown table} of rows of one benchmark run."""
    groups = {}
    for r in rows:
        groups.setdefault((r["mode"], *_group(r["case"])), []).append(r)
    out = {}
    for key, group in groups.items():
        cases, providers, baselines = [], [], []
        by_case = {}
        for r in group:
            if r["case"] not in by_case:
                cases.append(r["case"])
            by_case.setdefault(r["case"], {})[r["provider"]] = r
            if r["provider"] not in providers:
                providers.append(r["provider"])
            if r["speedup"] and r["provider"] not in baselines:
                baselines.append(r["provider"])
        first = providers[0]
        head = ["case"] + providers + [f"vs {b}" for b in baselines] + ["extra"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        ratios = {b: [] for b in baselines}
        for case in cases:
            cells = by_case[case]
            row = [case] + [f"{float(cells[p]['median_us']):.1f}" if p in cells else "-" for p in providers]
            for b in baselines:
                if b in cells and cells[b]["speedup"]:
                    ratios[b].append(float(cells[b]["speedup"]))
                    row.append(f"{float(cells[b]['speedup']):.2f}x")
                else:
                    row.append("-")
            row.append(cells[first]["extra"] if first in cells else "")
            lines.append("| " + " | ".join(row) + " |")
        summary = [f"**{harness.geomean(v):.2f}x** ({min(v):.2f}x)" if v else "-" for v in ratios.values()]
        lines.append("| **geomean** (min) |" + " |" * len(providers) + " " + " | ".join(summary) + " | |")
        out[key] = "\n".join(lines)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=harness.RESULTS_CSV)
    parser.add_argument("--benchmark", required=True)
    parser.add_argument("--commit", default=None)
    parser.add_argument("--since", default=None, help="keep rows with a timestamp >= this (ISO 8601)")
    parser.add_argument("--until", default=None, help="keep rows with a timestamp < this (ISO 8601)")
    args = parser.parse_args(argv)
    with open(args.csv) as f:
        rows = [r for r in csv.DictReader(f) if r["benchmark"] == args.benchmark]
    if not rows:
        raise SystemExit(f"no rows for benchmark {args.benchmark!r} in {args.csv}")
    commit = args.commit or rows[-1]["git_sha"]
    rows = [r for r in rows if r["git_sha"] == commit and (args.since is None or r["timestamp"] >= args.since)
            and (args.until is None or r["timestamp"] < args.until)]
    first = rows[0]
    print(f"{args.benchmark} at {commit}: {first['machine']}, {first['threads']} threads, {first['allocator']} "
          f"allocator, torch {first['torch_version']}")
    for key, table in tables(rows).items():
        print(f"\n#### {', '.join(k for k in key if k)}\n")
        print(table)


if __name__ == "__main__":
    main()
