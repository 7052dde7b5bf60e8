"""The benchmark harness (``fusedops/_bench/harness.py``, which the ``fusedops bench`` command shares) with what
only the benchmark scripts of this folder have: their results file, and their restart under the allocator
setting when run as ``python -m benchmarks.<script>``."""

import os
import sys

from fusedops._bench import harness as _harness
from fusedops._bench.harness import (  # noqa: F401  (the names the benchmark scripts use)
    CSV_COLUMNS, DEFAULT_MALLOC_FLAG, FAULT_FREE_MALLOC, Case, Result, add_malloc_argument, allocator_setting,
    cpu_caches,
    compile_fresh, format_table, geomean, header, machine_description, peak_memory_bytes, randomize_batch_norms,
    result_rows, time_case,
)

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
RESULTS_CSV = os.path.join(DATA_DIR, "results.csv")


def run_under_fault_free_malloc(argv=None) -> None:
    """Restarts the running benchmark module under FAULT_FREE_MALLOC (harness.rerun_under_fault_free_malloc).
    Only for `python -m benchmarks.<module>` runs; calls from tests do nothing."""
    argv = sys.argv[1:] if argv is None else argv
    main = sys.modules.get("__main__")
    module = getattr(getattr(main, "__spec__", None), "name", None)
    if module and module.startswith("benchmarks."):
        _harness.rerun_under_fault_free_malloc(module, argv)


def append_csv(results, path=None) -> str:
    """Appends `results` to `path`, by default this folder's results file."""
    return _harness.append_csv(results, path or RESULTS_CSV)


def bench_main(doc, run, add_arguments=None, argv=None):
    """The command line every benchmark script shares: --rounds, --threads, --csv, --no-compile, --quick
    plus the script's own options; runs `run(args)` (a list of Results), prints and appends the table."""
    import argparse

    import torch

    run_under_fault_free_malloc(argv)
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_malloc_argument(parser)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baselines")
    parser.add_argument("--quick", action="store_true", help="fewer shapes")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--csv", default=RESULTS_CSV,
                        help=f"CSV to append to (default {RESULTS_CSV}; '' for none, as fusedops bench takes it)")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(header(), flush=True)
    results = run(args)
    print()
    print(format_table(results, doc.strip().splitlines()[0]))
    if args.csv:
        print("\nappended to", append_csv(results, args.csv))
    return results
