"""Benchmark harness shared by every op and model benchmark (``benchmarks/``) and ``fusedops bench``.

Providers (callables) of one case are timed interleaved round-robin: each round takes one sample of every
provider (in this process, or in the provider's own where it has one: ONNX Runtime and OpenVINO, see
baselines.IsolatedRuntime), a sample runs enough calls to last ~`sample_ms`, and the reported figure
is the median per-call time over rounds. Rounds during which other processes used the CPU are dropped
(and retried), so a busy host does not leak into the figures. Speed-ups are medians of the per-round paired ratios, so
slow drifts of a noisy host cancel out. Results print as a table and are appended to a CSV file with
the machine, thread count, allocator setting, torch version and git commit.
"""

import csv
import dataclasses
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List

import torch

# The allocator setting under which numbers are comparable: without it glibc returns large activations
# to the OS after each call and page-faults them back on the next (up to 5x slower at batch 8). Every
# benchmark command restarts itself under it (rerun_under_fault_free_malloc).
FAULT_FREE_MALLOC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"

CSV_COLUMNS = [
    "timestamp", "git_sha", "machine", "threads", "allocator", "torch_version", "benchmark", "case", "mode",
    "provider", "median_us", "min_us", "rounds", "speedup_of", "speedup", "extra", "cpu_caches",
]


@dataclasses.dataclass
class Case:
    """One shape/config: `providers` maps a provider name to a zero-argument callable to time."""

    benchmark: str
    name: str
    mode: str
    providers: Dict[str, Callable[[], object]]
    baselines: List[str] = dataclasses.field(default_factory=list)  # providers the first one is compared to
    extra: str = ""  # free-form (e.g. bytes moved, copy time)


@dataclasses.dataclass
class Result:
    case: Case
    median_us: Dict[str, float]
    min_us: Dict[str, float]
    # baseline -> median paired ratio baseline_time / first_provider_time (the CSV column "speedup" of the
    # baseline's row, with "speedup_of" naming the first provider)
    speedup: Dict[str, float]
    rounds: int
    noisy: bool = False  # fewer quiet rounds than wanted: other processes ran during the measurement


def compile_fresh(fn, **options):
    """torch.compile for one benchmark case. Dynamo's caches are reset first: cases compile the same code
    for many shapes, which would otherwise run into its recompilation limit."""
    torch._dynamo.reset()
    return torch.compile(fn, **options)


def randomize_batch_norms(module) -> None:
    """Non-trivial running statistics and affine parameters for every nn.BatchNorm2d in `module`, so that the
    fused side's batch-norm folding does real work and its parity check before timing means something."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} ({os.cpu_count()} cpus)"


def cpu_caches() -> str:
    """The cache sizes the CPU kernels' tuning follows (FUSEDOPS_CPU_CACHES overrides included), e.g.
    "l1d=48K,l2=2M,l3=300M": figures from machines with other caches are told apart by it."""
    from fusedops import _extension

    sizes = _extension.build_info().get("cpu_caches")
    if not sizes:
        return ""

    def short(n):
        return f"{n >> 20}M" if n % (1 << 20) == 0 else f"{n >> 10}K"

    return ",".join(f"{k}={short(v)}" for k, v in sizes.items())


def allocator_setting() -> str:
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return "fault-free" if "mmap_max=0" in tunables else "default-glibc"


DEFAULT_MALLOC_FLAG = "--default-malloc"


def rerun_under_fault_free_malloc(module: str, argv) -> None:
    """Restarts this process as ``python -m <module> <argv>`` under FAULT_FREE_MALLOC unless it already runs under
    it or `--default-malloc` is in `argv`. glibc reads GLIBC_TUNABLES only at process start, so the setting cannot
    be switched on from inside; re-executing keeps every benchmark command comparable without the caller having
    to remember it. Only a program's entry point calls it (benchmarks' ``main``, the ``fusedops bench`` command),
    never code that runs inside another program such as a test."""
    if allocator_setting() == "fault-free" or DEFAULT_MALLOC_FLAG in argv:
        return
    env = dict(os.environ, GLIBC_TUNABLES=FAULT_FREE_MALLOC)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], env)


def git_sha() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _synchronizer():
    """What waits for queued GPU work: CUDA kernels launch asynchronously, so a timer that stops without
    waiting measures launches, not kernels. A no-op where CUDA was never initialised (CPU-only cases, and
    every run on a machine without a GPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.synchronize
    return lambda: None


def _time_calls(fn, calls: int, sync) -> float:
    """Seconds that `calls` consecutive calls of provider `fn` take: timed here, or where the provider runs
    (a provider in a process of its own, like baselines.IsolatedRuntime, has ``time_calls``)."""
    if hasattr(fn, "time_calls"):
        return fn.time_calls(calls)
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return time.perf_counter() - start


def _calibrate(fn, sample_ms: float, sync) -> int:
    """Calls of `fn` per sample: as many as last ~`sample_ms`, from one call timed, then ~20 ms of calls."""
    per_call = _time_calls(fn, 1, sync)
    if per_call < 0.02:
        calls = max(1, int(0.02 / max(per_call, 1e-7)))
        per_call = _time_calls(fn, calls, sync) / calls
    return max(1, int(sample_ms / 1000 / per_call))


def _busy_jiffies_all():
    """CPU time (jiffies) all processes spent busy, from /proc/stat; None where unavailable."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        return sum(values) - values[3] - values[4]  # minus idle and iowait
    except (OSError, ValueError, IndexError):
        return None


def _own_jiffies(worker_pids=()):
    """CPU time (jiffies) of this process and of the providers' own processes (`worker_pids`)."""
    total = 0
    for pid in ("self", *worker_pids):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, ValueError, IndexError):
            return None
    return total


# A round is dropped when other processes used more than this many jiffies (10 ms each) of CPU while it
# ran: on this 2-core machine a concurrent compile stalls OpenMP barriers and inflates times up to 100x.
MAX_FOREIGN_JIFFIES_PER_ROUND = 2


def time_case(case: Case, rounds: int = 15, warmup: int = 3, sample_ms: float = 25.0, max_rounds=None) -> Result:
    names = list(case.providers)
    for name in names:
        for _ in range(warmup):
            case.providers[name]()
    sync = _synchronizer()  # after the warm-up, which initialises CUDA for GPU cases
    iters = {name: _calibrate(case.providers[name], sample_ms, sync) for name in names}
    samples = {name: [] for name in names}
    noisy = {name: [] for name in names}
    max_rounds = max_rounds or 3 * rounds
    # Providers in processes of their own: their CPU time is the case's, not another process'.
    workers = [fn.pid for fn in case.providers.values() if getattr(fn, "pid", None) is not None]
    taken = 0
    while len(samples[names[0]]) < rounds and taken < max_rounds:
        taken += 1
        all0, own0 = _busy_jiffies_all(), _own_jiffies(workers)
        round_times = {}
        for name in names:
            n = iters[name]
            round_times[name] = _time_calls(case.providers[name], n, sync) / n * 1e6
        all1, own1 = _busy_jiffies_all(), _own_jiffies(workers)
        clean = None in (all0, own0, all1, own1) or (all1 - all0) - (own1 - own0) <= MAX_FOREIGN_JIFFIES_PER_ROUND
        for name, t in round_times.items():
            (samples if clean else noisy)[name].append(t)
    is_noisy = len(samples[names[0]]) < max(3, rounds // 3)
    if is_noisy:  # too few quiet rounds: report them all, flagged (†) in the table and the CSV
        samples = {n: samples[n] + noisy[n] for n in names}
    first = names[0]
    speedup = {
        b: statistics.median(sb / sf for sb, sf in zip(samples[b], samples[first])) for b in case.baselines
    }
    return Result(
        case=case,
        median_us={n: statistics.median(s) for n, s in samples.items()},
        min_us={n: min(s) for n, s in samples.items()},
        speedup=speedup,
        rounds=len(samples[first]),
        noisy=is_noisy,
    )


def peak_memory_bytes(fn, reset=None) -> int:
    """Peak bytes of CPU tensor memory that one call of `fn` holds at once, above what was live before it.

    Read from the profiler's allocator events, so allocations inside C++ kernels count too; memory
    allocated before the call (inputs, parameters, the kernels' persistent per-thread scratch after the
    warm-up call) does not. `reset` (e.g. dropping the warm-up call's gradients) runs before the measured
    call, so that freeing what the warm-up left behind does not offset the peak.
    """
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up: first-call caches and scratch are not what one training step costs
    if reset is not None:
        reset()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def geomean(values):
    values = [v for v in values if v > 0]
    if not values:
        return float("nan")
    prod = 1.0
    for v in values:
        prod *= v
    return prod ** (1.0 / len(values))


def format_table(results: List[Result], title: str = "") -> str:
    """Markdown table: per case, each provider's median time and the first provider's speed-ups."""
    if not results:
        return ""
    providers = []
    for r in results:
        for p in r.case.providers:
            if p not in providers:
                providers.append(p)
    baselines = []
    for r in results:
        for b in r.case.baselines:
            if b not in baselines:
                baselines.append(b)
    first = list(results[0].case.providers)[0]
    head = ["case", "mode"] + [f"{p} us" for p in providers] + [f"{first} vs {b}" for b in baselines] + ["extra"]
    lines = []
    if title:
        lines.append(f"### {title}")
        lines.append("")
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in results:
        row = [r.case.name + (" †" if r.noisy else ""), r.case.mode]
        row += [f"{r.median_us[p]:.1f}" if p in r.median_us else "-" for p in providers]
        row += [f"{r.speedup[b]:.2f}x" if b in r.speedup else "-" for b in baselines]
        row.append(r.case.extra)
        lines.append("| " + " | ".join(row) + " |")
    by_mode = {}
    for r in results:
        by_mode.setdefault(r.case.mode, []).append(r)
    for mode, rs in by_mode.items():
        parts = []
        for b in baselines:
            vals = [r.speedup[b] for r in rs if b in r.speedup]
            if vals:
                parts.append(f"vs {b}: geomean {geomean(vals):.2f}x (min {min(vals):.2f}x)")
        if parts:
            lines.append("")
            lines.append(f"{mode}: " + "; ".join(parts))
    if any(r.noisy for r in results):
        lines.append("")
        lines.append("† other processes used the CPU during most rounds of this case: treat its figures with care.")
    return "\n".join(lines)


def result_rows(results: List[Result]) -> List[dict]:
    """The CSV rows (CSV_COLUMNS) of `results`: one per case and provider, the baselines' with their speed-up."""
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    common = {
        "timestamp": stamp,
        "git_sha": git_sha(),
        "machine": machine_description(),
        "threads": torch.get_num_threads(),
        "allocator": allocator_setting(),
        "torch_version": torch.__version__,
        "cpu_caches": cpu_caches(),
    }
    rows = []
    for r in results:
        first = list(r.case.providers)[0]
        for p in r.case.providers:
            row = dict(common, benchmark=r.case.benchmark, case=r.case.name, mode=r.case.mode, provider=p,
                       median_us=f"{r.median_us[p]:.3f}", min_us=f"{r.min_us[p]:.3f}", rounds=r.rounds,
                       speedup_of="", speedup="", extra=r.case.extra + (" [noisy host]" if r.noisy else ""))
            if p != first and p in r.speedup:
                row["speedup_of"], row["speedup"] = first, f"{r.speedup[p]:.4f}"
            rows.append(row)
    return rows


def append_csv(results: List[Result], path: str) -> str:
    """Appends the rows of `results` to the CSV file `path` (created, with its header, when new)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    new = not os.path.exists(path)
    if not new:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != CSV_COLUMNS:  # written before a column was added: rewritten with it, empty
                old_rows = list(reader)
                new = True
        if new:
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="", extrasaction="ignore")
                writer.writeheader()
                writer.writerows(old_rows)
            new = False
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(result_rows(results))
    return path


def header() -> str:
    return (f"machine: {machine_description()}; caches: {cpu_caches()}; threads: {torch.get_num_threads()}; "
            f"allocator: {allocator_setting()}; torch {torch.__version__}; commit {git_sha()}")


def add_malloc_argument(parser) -> None:
    parser.add_argument(DEFAULT_MALLOC_FLAG, action="store_true",
                        help="keep glibc's default allocator settings (by default the benchmark restarts itself "
                             "under FAULT_FREE_MALLOC, as every published figure was measured)")
