"""The ``fusedops`` command (also ``python -m fusedops``):

    fusedops bench --model mobilenet_v2 timm:ghostnet_100 --batch 1 8 [--threads 2] [--train]
    fusedops info
    fusedops check

``bench`` converts each model with :func:`fusedops.convert`, checks it against the original and times it
against the original in eager PyTorch (NCHW, channels_last), under torch.compile (with freezing for inference),
in ONNX Runtime and in OpenVINO (each when installed), interleaved, medians of rounds; it prints a Markdown
table, appends CSV rows and draws a PNG bar chart. Like the benchmark scripts it restarts itself under the glibc
allocator setting of every published figure (``--default-malloc`` keeps glibc's defaults). ``info`` prints what
was built and the backends this machine can run; ``check`` runs the parity check of every op on each of them.
"""

import argparse
import importlib.util
import os
import sys

import torch

import fusedops
from ._bench import harness

DEFAULT_MODELS = ["mobilenet_v2"]
DEFAULT_CSV = "fusedops_bench.csv"
DEFAULT_PNG = "fusedops_bench.png"
# The packages the optional parts of the command use, with what they are for.
OPTIONAL_PACKAGES = {"onnxruntime": "ONNX Runtime baseline", "openvino": "OpenVINO baseline",
                     "timm": "timm:<name> models", "matplotlib": "the bar chart", "tqdm": "the progress bar"}


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def info(args) -> int:
    from ._bench import parity

    print(f"fusedops {fusedops.__version__} (torch {torch.__version__})")
    for key, value in fusedops.build_info().items():
        print(f"  {key}: {value}")
    print("backends available on this machine:")
    for device in _devices():
        print(f"  {device}: {', '.join(parity.available_backends(device)) or 'none'}")
    print(f"threads: {torch.get_num_threads()}; allocator: {harness.allocator_setting()}")
    print("optional packages:")
    for package, use in OPTIONAL_PACKAGES.items():
        found = importlib.util.find_spec(package) is not None
        print(f"  {package}: {'installed' if found else 'not installed'} ({use})")
    return 0


def check(args) -> int:
    from ._bench import parity

    torch.manual_seed(0)
    passed = True
    for device in _devices():
        backends = args.backends or parity.available_backends(device)
        print(f"## {device}: {', '.join(backends)}\n")
        passed &= parity.check(device, backends, args.ops)
    print("all checks passed" if passed else "some checks FAILED")
    return 0 if passed else 1


class _Progress:
    """tqdm's bar over the cases, the stage of the current one beside it; plain lines on stderr without tqdm."""

    def __init__(self, total):
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, unit="case", dynamic_ncols=True, file=sys.stderr)
        self.case = ""

    def stage(self, what):
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.case}: {what}")
        else:
            print(f"[{self.case}] {what}", file=sys.stderr, flush=True)

    def write(self, line):
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def advance(self):
        if self.bar is not None:
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def bench(args) -> int:
    from ._bench import models

    if args.checkpoint and len(args.model) > 1:
        raise SystemExit("fusedops bench: --checkpoint holds the weights of one model; name one --model")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mode = models.TRAINING if args.train else models.INFERENCE
    skip = [name for name, flag in (("compile", args.no_compile), ("onnxruntime", args.no_ort),
                                    ("openvino", args.no_openvino)) if flag]
    print(harness.header(), flush=True)
    print(f"allocator: {harness.allocator_setting()} (GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}: "
          f"{'as every published figure' if harness.allocator_setting() == 'fault-free' else 'glibc defaults'})")
    progress = _Progress(len(args.model) * len(args.batch))
    results, setups = [], []
    try:
        for name in args.model:
            progress.case = name
            progress.stage("building")
            model = models.build_model(name, args.checkpoint)
            for batch in args.batch:
                progress.case = f"{name} N={batch}"
                setup = models.setup_case(name, model, batch, args.size, mode, skip, progress.stage)
                progress.stage("timing")
                result = harness.time_case(setup.case, rounds=args.rounds, sample_ms=args.sample_ms)
                progress.write(harness.format_table([result]).splitlines()[2])
                results.append(result)
                setups.append(setup)
                progress.advance()
    finally:
        progress.close()
    print()
    print(harness.format_table(results, f"fusedops.convert(model), {mode}, fp32 (us per batch, median of "
                                        "interleaved rounds)"))
    for note in dict.fromkeys(note for s in setups for note in s.notes):
        print(f"- {note}")
    if args.csv:
        print("\nrows appended to", harness.append_csv(results, args.csv))
    if args.png:
        _draw(results, args.png, mode)
    tolerance = setups[0].parity.tolerance
    failed = [s.case.name for s in setups if not s.parity.passed]
    if failed:
        print(f"parity check FAILED (worst relative error above {tolerance:.0e}): {', '.join(failed)}")
        return 1
    print(f"parity check passed: every converted model within {tolerance:.0e} of the original")
    return 0


def _draw(results, path, mode):
    if importlib.util.find_spec("matplotlib") is None:
        print("no bar chart: matplotlib is not installed")
        return
    from ._bench.plot import draw_speedups

    print("bar chart:", draw_speedups(harness.result_rows(results), path, f"fusedops.convert(model), {mode}"))


def _parser():
    from ._bench import parity

    parser = argparse.ArgumentParser(prog="fusedops", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    bench_parser = commands.add_parser("bench", help="time converted models against eager, compile, ONNX Runtime, "
                                                     "OpenVINO")
    bench_parser.add_argument("--model", nargs="+", default=DEFAULT_MODELS,
                              help="torchvision classification models, or timm:<name> (default: %(default)s)")
    bench_parser.add_argument("--batch", nargs="+", type=int, default=[1, 8], help="batch sizes (default: 1 8)")
    bench_parser.add_argument("--size", type=int, default=224, help="image height and width (default: 224)")
    bench_parser.add_argument("--threads", type=int, default=None, help="torch and runtime threads")
    bench_parser.add_argument("--train", action="store_true",
                              help="time a training step (forward, backward, SGD step) and its peak memory")
    bench_parser.add_argument("--checkpoint", default=None, help="a state dict for the (one) model; default: "
                                                                 "random weights and batch-norm statistics")
    bench_parser.add_argument("--rounds", type=int, default=9, help="timed rounds per case (default: 9)")
    bench_parser.add_argument("--sample-ms", type=float, default=100.0,
                              help="how long each provider runs per round (default: 100)")
    bench_parser.add_argument("--csv", default=DEFAULT_CSV, help="CSV file to append rows to ('' for none)")
    bench_parser.add_argument("--png", default=DEFAULT_PNG, help="bar chart to write ('' for none)")
    bench_parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    bench_parser.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime")
    bench_parser.add_argument("--no-openvino", action="store_true", help="skip OpenVINO")
    harness.add_malloc_argument(bench_parser)
    bench_parser.set_defaults(run=bench)
    info_parser = commands.add_parser("info", help="what was built and the backends available here")
    info_parser.set_defaults(run=info)
    check_parser = commands.add_parser("check", help="parity check of every op on every available backend")
    check_parser.add_argument("--backends", nargs="+", choices=("native", "triton", "reference"), default=None,
                              help="only these backends (default: every one available)")
    check_parser.add_argument("--ops", nargs="+", choices=list(parity.CHECKS), default=None,
                              help="only these ops' checks (default: all)")
    check_parser.set_defaults(run=check)
    return parser


def main(argv=None) -> int:
    """Runs the command in `argv` (default: the process's arguments) in this process; returns its exit status."""
    args = _parser().parse_args(argv)
    return args.run(args)


def program() -> None:
    """The ``fusedops`` program: ``fusedops bench`` first restarts itself under the allocator setting."""
    argv = sys.argv[1:]
    if argv[:1] == ["bench"]:
        harness.rerun_under_fault_free_malloc("fusedops", argv)
    sys.exit(main(argv))
