"""Channel shuffle and ShuffleNetV2's concat+shuffle: fusedops vs PyTorch eager and torch.compile.

    python -m benchmarks.bench_channel_shuffle [--no-compile] [--quick]
"""

import torch
import torch.nn.functional as F

import fusedops
from . import harness, shapes


def _inference(fn, *args):
    def run():
        with torch.inference_mode():
            return fn(*args)
    return run


def _cat_shuffle(a, b):
    return F.channel_shuffle(torch.cat([a, b], 1), 2)


def _add_copy_yardsticks(providers, baselines, src):
    """Two speeds of light for an output-sized copy of `src`: "copy" into a preallocated tensor (the bytes
    alone) and "clone", a copy that returns a new tensor as the ops do (the bytes plus an output allocation
    and one op call: what any out-of-place op pays, ~1-3 us of the batch-1 rows)."""
    dst = torch.empty_like(src)
    providers["copy"] = lambda: dst.copy_(src)
    providers["clone"] = _inference(torch.clone, src)
    baselines.extend(["copy", "clone"])


def setup_channel_shuffle(N, C, H, layout, groups, use_compile):
    """fusedops.channel_shuffle vs F.channel_shuffle, with a same-size copy as the speed-of-light yardstick."""
    fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
    x = torch.randn(N, C, H, H).to(memory_format=fmt)
    providers = {
        "fusedops": _inference(fusedops.channel_shuffle, x, groups),
        "eager": _inference(F.channel_shuffle, x, groups),
    }
    baselines = ["eager"]
    if use_compile:
        compiled = harness.compile_fresh(lambda t: F.channel_shuffle(t, groups), fullgraph=True)
        providers["compile"] = _inference(compiled, x)
        baselines.append("compile")
    _add_copy_yardsticks(providers, baselines, x)
    return providers, baselines


def setup_concat_shuffle(N, C, H, layout, use_compile):
    """ShuffleNetV2 stride-1 unit's data movement: x.chunk(2) half + branch output -> cat -> shuffle(2)."""
    fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
    x = torch.randn(N, C, H, H).to(memory_format=fmt)
    a = x.chunk(2, 1)[0]
    b = torch.randn(N, C // 2, H, H).to(memory_format=fmt)
    providers = {
        "fusedops": _inference(fusedops.concat_shuffle, a, b, 2),
        "eager": _inference(_cat_shuffle, a, b),
    }
    baselines = ["eager"]
    if use_compile:
        providers["compile"] = _inference(harness.compile_fresh(_cat_shuffle, fullgraph=True), a, b)
        baselines.append("compile")
    # An output-sized source of real values (not empty_like: uninitialised bits can be NaN, and the test compares
    # the yardsticks' outputs).
    _add_copy_yardsticks(providers, baselines, torch.randn_like(x))
    return providers, baselines


def run(use_compile, quick, rounds):
    results = []
    shape_list = shapes.SHUFFLENET_V2[:2] if quick else shapes.SHUFFLENET_V2
    for N in shapes.BATCHES:
        for s in shape_list:
            for layout in ("nchw", "cl"):
                name = f"N={N} C={s['C']} {s['H']}x{s['H']} {layout}"
                for op, (providers, baselines) in (
                    ("channel_shuffle g2", setup_channel_shuffle(N, s["C"], s["H"], layout, 2, use_compile)),
                    ("concat_shuffle", setup_concat_shuffle(N, s["C"], s["H"], layout, use_compile)),
                ):
                    case = harness.Case("channel_shuffle", f"{op} {name}", "forward", providers, baselines)
                    r = harness.time_case(case, rounds=rounds)
                    # copy time / fusedops time: 100% means the op runs at the speed of a plain copy.
                    case.extra = (f"{r.median_us['copy'] / r.median_us['fusedops']:.0%} of copy speed, "
                                  f"{r.median_us['clone'] / r.median_us['fusedops']:.0%} of clone speed")
                    results.append(r)
                    print(harness.format_table([r]).splitlines()[2], flush=True)
    return results


def main(argv=None):
    return harness.bench_main(__doc__, lambda args: run(not args.no_compile, args.quick, args.rounds), argv=argv)


if __name__ == "__main__":
    main()
