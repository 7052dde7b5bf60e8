"""Markdown tables of benchmark runs from benchmarks/data/results.csv, split by mode and layout: per case
each provider's median time, the first provider's paired speed-up over each baseline, and the geometric
mean (min) of every speed-up column.

    python -m benchmarks.report --benchmark depthwise_conv2d [--commit SHA] [--since ISO] [--until ISO]
    python -m benchmarks.report --results-md [--output benchmarks/RESULTS.md]

Without --commit, the newest commit in the CSV for that benchmark; --since keeps rows from a timestamp on,
--until rows before one (to pick one run among several of the same commit). --results-md writes the
published tables (the runs listed in PUBLISHED_RUNS) to benchmarks/RESULTS.md, which the README links to.
"""

import argparse
import csv
import dataclasses
import os
from typing import Optional, Tuple

from . import harness

RESULTS_MD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


@dataclasses.dataclass
class Run:
    """One published benchmark run: the CSV rows of `benchmark` at `commit` (between `since` and `until`
    when the commit was measured more than once), the `modes` to show (all when None), and what a reader
    needs to know about it."""

    title: str
    benchmark: str
    commit: str
    command: str
    since: Optional[str] = None
    until: Optional[str] = None
    modes: Optional[Tuple[str, ...]] = None
    note: str = ""


# What benchmarks/RESULTS.md shows. A new run replaces its entry here, then `--results-md` rewrites the file.
PUBLISHED_RUNS = [
    Run("depthwise_conv2d", "depthwise_conv2d", "e6cd2af",
        "python -m benchmarks.bench_depthwise_conv2d --modes forward full --rounds 21", until="2026-12-06T02:50:00",
        note="Measured on a 2-vCPU Intel Xeon (48 KiB L1d, 2 MiB L2 per core); the cache-dependent choices follow "
             "the L2 (cpu/streaming.h: the forward streams past the caches above 12x the L2, here 24 MB, the "
             "backward above 8x, 16 MB). Mode `forward` is inference; `full` is forward + backward (grad input + "
             "grad weight). NCHW 5x5/7x7 kernels and 3x3 stride 2 (maps up to 56x56) run through channels-last "
             "tiles; NCHW 3x3 stride 1 as in-place sweeps of each plane with one load per kernel row (the side taps "
             "shifted out of it in registers); the other NCHW float geometries as masked in-place sweeps. \"copy\" "
             "is a same-size copy into a preallocated tensor in the same layout (the in-cache speed of light); the "
             "N=8 maps of 12-48 MB stream from beyond the L2, where copy and both convolutions are bound by the "
             "~55-60 GB/s the two cores draw."),
    Run("depthwise_conv2d with another machine's cache sizes (FUSEDOPS_CPU_CACHES=l1d=32K,l2=1M,l3=32M)",
        "depthwise_conv2d", "e6cd2af",
        "FUSEDOPS_CPU_CACHES=l1d=32K,l2=1M,l3=32M python -m benchmarks.bench_depthwise_conv2d --modes forward full "
        "--rounds 21 --no-compile", since="2026-12-06T02:53:00",
        note="The same Intel Xeon running the choices the AMD EPYC host (Zen 4: 32 KiB L1d, 1 MiB L2 per core) "
             "derives from its caches: streaming above 12 MB (forward) and 8 MB (backward), dwpw tiles of 256 KiB, "
             "the same kernels as the run above."),
    Run("dwpw_conv2d inference (depthwise 3x3 -> BN -> ReLU6 -> 1x1 -> BN -> ReLU6, BN folded)", "dwpw_conv2d",
        "50039c7", "python -m benchmarks.bench_dwpw_conv2d", modes=("forward",),
        note="This run caught the host in a slow phase (30-77 GMAC/s; quieter runs reach 130-200 GMAC/s on the "
             "same kernels), so compare its ratios. The 1.2-1.4x shapes are GEMM-bound: the pointwise "
             "micro-kernel runs at 150-200 GMAC/s there in quiet phases, about this 2-core machine's FMA peak, "
             "where oneDNN's 1x1 already runs close to it."),
    Run("dwpw_conv2d training step (biases instead of BN; peak memory)", "dwpw_conv2d", "a3b9210",
        "python -m benchmarks.bench_dwpw_conv2d --modes full", modes=("full",),
        note="Peak memory is what one step (forward, backward, gradients) holds at once above its inputs and "
             "parameters, read from the allocator (`harness.peak_memory_bytes`). The backward recomputes the "
             "depthwise output in bands of ~1M elements instead of saving it, and reads the ReLU6 derivative "
             "from the saved output."),
    Run("inverted_residual inference (torchvision's MobileNetV2 block, BN folded; channels_last)", "inverted_residual",
        "800daa3", "python -m benchmarks.bench_inverted_residual --blocks v2",
        note="Measured on a 2-vCPU Intel Xeon (2 MiB L2 per core), not the AMD host of the other tables. fusedops "
             "runs a frozen fusedops.nn.InvertedResidual (weights folded and packed once); eager and "
             "torch.compile(freezing) run torchvision's block with the same weights. The expanded (hidden) map "
             "never reaches memory: bands of rows go expand GEMM -> depthwise -> project GEMM in cache. The host "
             "ran about 30% slower than at the previous run of this table, on both sides (N=8 160->320 7x7: "
             "1534 us for fusedops, 1528 us for torch.compile)."),
    Run("inverted_residual inference, MobileNetV3's squeeze-excitation blocks (torchvision's block, BN folded; "
        "channels_last)", "inverted_residual", "48dca06", "python -m benchmarks.bench_inverted_residual --blocks se",
        note="Measured on a 2-vCPU Intel Xeon (2 MiB L2 per core). fusedops runs a frozen "
             "fusedops.nn.InvertedResidualV3 (weights folded and packed once); eager and torch.compile(freezing) run "
             "torchvision's mobilenetv3.InvertedResidual with the same weights. The squeeze-excitation pools each "
             "image's whole depthwise map: these blocks keep one image's depthwise map in a tile (not the expanded "
             "one), compute the gate for a round of images at once and scale on the way into the project GEMM."),
    Run("inverted_residual fixed cost: frozen blocks on a 1x1 map, against one read of their weights",
        "inverted_residual", "dc86dba", "python -m benchmarks.bench_inverted_residual --fixed-cost --rounds 21",
        modes=("fixed cost",),
        note="Measured on the 2-vCPU AMD EPYC (Zen 3, AVX2; 512 KiB L2 per core), 2 threads. Blocks of torchvision's "
             "MobileNetV2 and MobileNetV3-Large, converted and frozen, called on a 1x1 map of one image under "
             "inference_mode (the module, its checks, the dispatcher, the kernel's set-up, and its weights read "
             "once: almost no arithmetic), against a sum over as many float32 values as the block's folded weights. "
             "\"above the read\" in the last column is the difference (the target: at most 10 us). Since the run "
             "before (dea233f) a frozen block's prepared call binds its weights and options once "
             "(`_eager_op(name, template)`, csrc/runtime/eager_call.cpp) instead of converting them on every call: "
             "six alternating runs of the same command against the commit before (77238c5), medians of the six "
             "blocks' figures above the read, 6.5, 6.8, 6.2, 6.6, 8.0 and 14.8 us before, 5.0, 5.2, 5.1, 5.1, 5.7 "
             "and 8.4 us after."),
    Run("ghost_module inference (timm's GhostNet GhostModule, ratio 2, 3x3 cheap operation, ReLU, BN folded; "
        "channels_last)", "ghost_module", "f12a53a", "python -m benchmarks.bench_ghost_module",
        note="Measured on a 2-vCPU Intel Xeon (2 MiB L2 per core). fusedops runs a frozen fusedops.nn.GhostModule "
             "(weights folded and packed once); eager (channels_last) and torch.compile(freezing) run timm's "
             "GhostModule with the same weights. Bands of rows go primary GEMM -> store -> depthwise from the "
             "cached tile -> store, both halves written into their channels of the output (no concatenation or "
             "slice)."),
    Run("shufflenet_v2_unit inference (torchvision's ShuffleNetV2 unit, BN folded; channels_last)",
        "shufflenet_v2_unit", "7e37d11", "python -m benchmarks.bench_shufflenet_v2_unit",
        note="Measured on a 2-vCPU Intel Xeon (2 MiB L2 per core). fusedops runs a frozen "
             "fusedops.nn.ShuffleNetV2Unit (weights folded and packed once); eager (channels_last) and "
             "torch.compile(freezing) run torchvision's shufflenetv2.InvertedResidual with the same weights. The "
             "branch runs as the inverted-residual kernel's bands on its half of the input in place, its outputs "
             "interleaved with the other half (or the shortcut's output, from the fused dwpw kernel) on the way "
             "out: no split copy, concatenation or shuffle. Shapes: ShuffleNetV2 1.0x at 224x224, each unit's "
             "input channels -> output channels."),
    Run("channel_shuffle and concat_shuffle (groups 2)", "channel_shuffle", "81860f5",
        "python -m benchmarks.bench_channel_shuffle",
        note="\"copy\" is a copy into a preallocated tensor, \"clone\" the same copy returning a new tensor "
             "(as the op does): at batch 1 the output allocation and the call itself take longer than the "
             "1.5-7 us copy."),
    Run("fusedops.convert(model), inference, 224x224: the main job (torchvision's and timm's models converted; "
        "channels_last)", "fusedops bench", "f66cb4b",
        "fusedops bench --model mobilenet_v2 mobilenet_v3_large shufflenet_v2_x1_0 timm:ghostnet_100 --batch 1 8 "
        "--threads 2 --rounds 9",
        note="Measured on a 2-vCPU Intel Xeon (AVX-512, AMX; 2 MiB L2 per core), 2 threads. fusedops runs the "
             "converted model (each block one fused op; ShuffleNetV2 one shufflenet_v2_unit op per unit), frozen by "
             "the benchmark; every baseline runs the original model with the same weights (random, with randomised "
             "batch-norm statistics): eager PyTorch in NCHW and channels_last, torch.compile with Inductor's "
             "freezing, ONNX Runtime and OpenVINO (its CPU plugin held to float32: INFERENCE_PRECISION_HINT f32; "
             "left to itself it runs float32 models in bfloat16 on this CPU's AMX units). ONNX Runtime and OpenVINO "
             "run and are timed in processes of their own, in the same interleaved rounds: PyTorch code ran slower in "
             "a process where either had run (fusedops' GhostNet at batch 8: 21 ms, 24 ms after an ONNX Runtime "
             "session, 27 ms after an OpenVINO request), while the runtimes timed the same either way. GhostNet's "
             "bottlenecks without squeeze-excitation run as one kernel each (the shortcut computed first); those with "
             "one run their stride-2 depthwise stage inside the first Ghost module's kernel where its output would "
             "leave L2, and their squeeze-excitation inside the second one's. The stems (3 input channels) run "
             "fusedops' direct convolution with the activation in its epilogue, and at batch 1 the 7x7 heads "
             "fusedops' pointwise GEMM. The host's speed varies by up to 30% between runs minutes apart, more for "
             "PyTorch code than for the runtimes; compare ratios within one run. "
             "\"parity\" is the largest difference from the original's output, relative to its largest value."),
    Run("fusedops.convert(model), inference, 224x224: the main job on an AMD EPYC with AVX2 only (Zen 3)",
        "fusedops bench", "dc86dba",
        "fusedops bench --model mobilenet_v2 mobilenet_v3_large shufflenet_v2_x1_0 timm:ghostnet_100 --batch 1 8 "
        "--threads 2 --rounds 9", since="2026-12-08T01:12:00", until="2026-12-08T01:13:00",
        note="Measured on a 2-vCPU AMD EPYC of the Zen 3 generation (AVX2 and FMA, no AVX-512; 32 KiB L1d and "
             "512 KiB L2 per core), 2 threads, with the same build flags (native: AVX2 here) and the same "
             "baselines as the run above. The kernels' cache-dependent choices follow this L2 (a quarter of the "
             "Xeon's): MobileNetV2's 14x14 blocks at batch 1, for one, run as strips of rows instead of whole "
             "images (their 451 KB depthwise map is more than half this L2). The host's speed varies more than "
             "the Xeon's, and this run fell in a slow phase (every time about 1.5x that of the run before, 0aa8966, "
             "where MobileNetV3-Large at batch 1 was 0.90-1.03x ONNX Runtime over two runs minutes apart): compare "
             "ratios within a row. Since then the frozen blocks' prepared calls bind their arguments once (~1.5-6 us "
             "less per block call)."),
    Run("fusedops.convert(model), training step, 224x224 (forward, backward, SGD; channels_last)", "fusedops bench",
        "2507f64",
        "fusedops bench --model mobilenet_v2 timm:ghostnet_100 mobilenet_v3_large timm:efficientnet_b0 --train "
        "--batch 8 --threads 2 --rounds 7; fusedops bench --model mobilenet_v2 timm:ghostnet_100 --train --batch 32 "
        "--threads 2 --rounds 5", modes=("training step",),
        note="Measured on a 2-vCPU Intel Xeon, 2 threads. The converted models train through the fused training "
             "path (batch statistics; each batch norm and its activation one op each way; the inverted residuals "
             "keep one tensor of the expanded width for the backward). \"peak MiB\" is what one step holds at once, "
             "read from the allocator (`harness.peak_memory_bytes`). MobileNetV2 at batch 8 ran 1.19-1.24x eager "
             "channels_last over four runs on this host. The harness flagged every batch-32 run of the session as "
             "sharing the CPU, with nothing else running."),
    Run("fusedops.convert(model), training step, 224x224, on an AMD EPYC with AVX2 only (Zen 3)", "fusedops bench",
        "dc86dba",
        "fusedops bench --model mobilenet_v2 timm:ghostnet_100 mobilenet_v3_large timm:efficientnet_b0 --train "
        "--batch 8 --threads 2 --rounds 7; fusedops bench --model mobilenet_v2 --train --batch 32 --threads 2 "
        "--rounds 5", since="2026-12-08T01:03:00", until="2026-12-08T01:08:00", modes=("training step",),
        note="Measured on the 2-vCPU AMD EPYC (Zen 3, AVX2) of the inference run above, 2 threads (the host flagged "
             "the batch-32 run as shared; compare ratios within a row). Since the run before (093af15: MobileNetV2 "
             "at batch 8 1.19x eager channels_last, EfficientNet-B0 0.98x), the inverted residuals' expansion batch "
             "norm and activation run inside the depthwise convolution forward and backward "
             "(_batch_norm_activation_depthwise and its backward, fusedops/nn/training.py): the depthwise input is "
             "never written, neither in the forward nor recomputed in the backward. Profiled over three MobileNetV2 "
             "steps at batch 8, those stages took 55 -> 41 ms forward and 137 -> 101 ms backward; "
             "fusedops bench on the same host, minutes apart, gave 1.19-1.21x eager channels_last before and "
             "1.22-1.25x after."),
    Run("Whole models, inference, 224x224 (fusedops model in channels_last)", "models", "50039c7",
        "python -m benchmarks.bench_models",
        note="The models still run their 1x1 convolutions, BatchNorms and activations as separate PyTorch ops "
             "(ShuffleNetV2) or fuse only the separable blocks (MobileNetV1): torch.compile with freezing and "
             "ONNX Runtime fold BN into the convolutions and fuse the activations everywhere."),
    Run("MobileNetV2 and MobileNetV1, inference, 224x224 (fusedops model in channels_last, frozen)", "models",
        "0604bb4", "python -m benchmarks.bench_models --models mobilenet_v2 mobilenet_v1",
        note="Measured on a 2-vCPU Intel Xeon, not the AMD host of the table above. MobileNetV2 runs one fused "
             "inverted_residual op per block and its stem and head as convolutions with the BN folded in; "
             "MobileNetV1 still runs its stem conv, BN and ReLU as separate ops."),
    Run("MobileNetV3 and MobileNetV2, inference, 224x224 (fusedops model in channels_last, frozen)", "models",
        "48dca06", "python -m benchmarks.bench_models --models mobilenet_v3_large mobilenet_v3_small mobilenet_v2",
        note="Measured on a 2-vCPU Intel Xeon. Every inverted residual (with its squeeze-excitation in MobileNetV3) "
             "is one fused op; the stems and heads are convolutions with the BN folded in and the activation in "
             "place; the classifiers (Linear layers) are PyTorch's. Frozen blocks call the native op with "
             "arguments prepared once (~10 us of Python a block)."),
    Run("GhostNet 1.0, inference, 224x224 (fusedops model in channels_last, frozen)", "models", "f12a53a",
        "python -m benchmarks.bench_models --models ghostnet_100",
        note="Measured on a 2-vCPU Intel Xeon. The baselines run timm's ghostnet_100 with the same weights. Each "
             "Ghost module is one fused op (the bottleneck's shortcut added inside its second one; a projecting "
             "shortcut is one fused dwpw op); the stride-2 depthwise stages and the squeeze-excitations run as "
             "separate ops; the stem folds its BN."),
]


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
            cells = by_case.setdefault(r["case"], {})
            if r["provider"] in cells:
                # Two runs of one commit in the selection: one would silently replace the other's figures.
                raise SystemExit(f"{r['case']} ({r['mode']}, {r['provider']}) measured twice in one run's rows "
                                 f"(at {cells[r['provider']]['timestamp']} and {r['timestamp']}): narrow the run "
                                 "with since/until")
            cells[r["provider"]] = r
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


def select(all_rows, benchmark, commit=None, since=None, until=None, modes=None):
    """The rows of one run of `benchmark`: at `commit` (the newest in the CSV when None), within [since, until)."""
    rows = [r for r in all_rows if r["benchmark"] == benchmark]
    if not rows:
        raise SystemExit(f"no rows for benchmark {benchmark!r}")
    commit = commit or rows[-1]["git_sha"]
    rows = [r for r in rows if r["git_sha"] == commit and (since is None or r["timestamp"] >= since)
            and (until is None or r["timestamp"] < until) and (modes is None or r["mode"] in modes)]
    if not rows:
        raise SystemExit(f"no rows for benchmark {benchmark!r} at {commit} in that time range")
    return commit, rows


def provenance(benchmark, commit, rows) -> str:
    first = rows[0]
    caches = f" (caches {first['cpu_caches']})" if first.get("cpu_caches") else ""
    return (f"{benchmark} at {commit}, {first['timestamp'][:16]} UTC: {first['machine']}{caches}, {first['threads']} "
            f"threads, {first['allocator']} allocator, torch {first['torch_version']}")


def results_markdown(all_rows) -> str:
    """benchmarks/RESULTS.md: every run of PUBLISHED_RUNS, its provenance, notes and tables."""
    out = ["# Benchmark results", "",
           "Generated by `python -m benchmarks.report --results-md` from `benchmarks/data/results.csv` "
           "(edit `PUBLISHED_RUNS` in `benchmarks/report.py`, not this file).", "",
           "Times in us (medians of interleaved rounds); ratios are medians of per-round paired ratios, "
           "baseline time / fusedops time, so > 1 means fusedops is faster. Every run uses the fault-free "
           f"allocator setting `GLIBC_TUNABLES={harness.FAULT_FREE_MALLOC}` on both sides. The development "
           "host is shared and its speed drifts between runs: compare ratios, not times, across runs; single "
           "ratios move by ~10% between runs."]
    for run in PUBLISHED_RUNS:
        commit, rows = select(all_rows, run.benchmark, run.commit, run.since, run.until, run.modes)
        out += ["", f"## {run.title}", "", provenance(run.benchmark, commit, rows) + ".", "",
                f"Command: `{run.command}`."]
        if run.note:
            out += ["", run.note]
        for key, table in tables(rows).items():
            out += ["", f"#### {', '.join(k for k in key if k)}", "", table]
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", default=harness.RESULTS_CSV)
    parser.add_argument("--benchmark")
    parser.add_argument("--commit", default=None)
    parser.add_argument("--since", default=None, help="keep rows with a timestamp >= this (ISO 8601)")
    parser.add_argument("--until", default=None, help="keep rows with a timestamp < this (ISO 8601)")
    parser.add_argument("--results-md", action="store_true", help="write the published runs' tables")
    parser.add_argument("--output", default=RESULTS_MD, help="with --results-md: the file to write")
    args = parser.parse_args(argv)
    with open(args.csv) as f:
        all_rows = list(csv.DictReader(f))
    if args.results_md:
        with open(args.output, "w") as f:
            f.write(results_markdown(all_rows))
        print("wrote", args.output)
        return
    if not args.benchmark:
        parser.error("--benchmark is required without --results-md")
    commit, rows = select(all_rows, args.benchmark, args.commit, args.since, args.until)
    print(provenance(args.benchmark, commit, rows))
    for key, table in tables(rows).items():
        print(f"\n#### {', '.join(k for k in key if k)}\n")
        print(table)


if __name__ == "__main__":
    main()
