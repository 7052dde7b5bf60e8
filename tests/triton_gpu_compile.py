"""Compiles every Triton kernel of fusedops for real GPUs (sm_80, sm_90), with no GPU present.

The Triton interpreter runs the kernels' logic in the parity tests, but not the GPU compiler, which
rejects programs the interpreter accepts and decides shared memory and registers. Two phases, each in a
process of its own (the interpreter replaces triton.jit at import):

``record``   (TRITON_INTERPRET=1) calls the Triton wrappers over a grid of problems covering their
             launch configurations (dtypes, layouts, kernel sizes, strides, multipliers, biases,
             activations, output masks, map sizes up to the largest tiles, the Ghost kernel with the
             depthwise stage inside it) with launches intercepted:
             each distinct (kernel, argument types, constexprs, num_warps) is written out, not run.
             The selection to compile covers every value of each constexpr, dtype and num_warps, and
             each kernel's largest tile per dtype (see select).
``compile``  compiles each recorded configuration with ``triton.compile`` for each target, checks its
             shared memory against the device's limit and, with ptxas -v, that it spills no more than
             a few bytes of registers; prints one line per kernel and configuration, a JSON summary last.
"""

import itertools
import json
import math
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Opt-in shared memory per block (bytes): sm_80 (A100) 163 KiB, sm_90 (H100) 227 KiB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
# Spill stores + loads (bytes per thread) tolerated: a few registers' worth is noise, more is a regression.
MAX_SPILL_BYTES = 64


def _block(entry):
    return math.prod(v for k, v in entry["constexprs"].items() if k.startswith("BLOCK") and isinstance(v, int))


def _size(entry):
    """The tile's size, then its kernel's taps (with those of a depthwise stage inside it): what decides a
    configuration's shared memory and registers."""
    c = entry["constexprs"]
    return _block(entry), c.get("KH", 1) * c.get("KW", 1) * c.get("DW_KH", 1) * c.get("DW_KW", 1)


def _first_pointer(entry):
    return next((v for v in entry["signature"].values() if v.startswith("*")), "")


def _variant(entry):
    """A kernel's variants compiled separately at their largest tile for each dtype: the Ghost kernel with and
    without the depthwise stage inside it (DW_INPUT: _ghost_bottleneck's second module)."""
    return entry["kernel"], _first_pointer(entry), entry["constexprs"].get("DW_INPUT", False)


def _features(entry):
    k = entry["kernel"]
    return ({(k, "dtype", _first_pointer(entry)), (k, "options", json.dumps(entry["options"], sort_keys=True))}
            | {(k, name, json.dumps(v)) for name, v in entry["constexprs"].items()})


def select(configs):
    """The configurations to compile: for each kernel (variant) and dtype the largest tile with the most taps (the
    most shared memory and registers), then, greedily, configurations until every value each constexpr, dtype and
    num_warps takes is compiled at least once (all ~2000 distinct ones would take hours)."""
    configs = sorted(configs, key=_size, reverse=True)
    chosen, seen = [], set()
    for entry in configs:
        if _variant(entry) not in seen:
            seen.add(_variant(entry))
            chosen.append(entry)
    covered = set().union(*(_features(e) for e in chosen))
    while True:
        best = max(configs, key=lambda e: len(_features(e) - covered))
        if not _features(best) - covered:
            return chosen
        chosen.append(best)
        covered |= _features(best)


def _problems():
    """(op, kwargs) of the wrapper calls whose launches are recorded."""
    dtypes = ["float32", "float16", "bfloat16", "float64"]
    for dtype, layout, (n, c, h, w), (k, stride, mult) in itertools.product(
            dtypes, ["nchw", "cl"], [(2, 8, 9, 11), (2, 96, 64, 64), (1, 3, 5, 130)],
            [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (7, 1, 1), (7, 2, 1), (1, 1, 1), (3, 1, 2), ((3, 5), 2, 1)]):
        yield "depthwise", dict(dtype=dtype, layout=layout, shape=(n, c, h, w), kernel=k, stride=stride, mult=mult)
    for dtype, layout, (mid, out), (shape, cout), bias, (k, stride) in itertools.product(
            dtypes, ["nchw", "cl"], [("relu6", "none"), ("hardswish", "relu"), ("none", "hardswish"),
                                     ("relu", "relu6"), ("silu", "silu")],
            [((2, 16, 9, 9), 24), ((2, 144, 56, 56), 32), ((1, 960, 7, 7), 320)], [True, False],
            [(3, 1), (5, 2), (7, 1)]):
        yield "dwpw", dict(dtype=dtype, layout=layout, shape=shape, cout=cout, mid=mid, out=out, bias=bias, kernel=k,
                           stride=stride)
    for dtype, layout in itertools.product(dtypes, ["nchw", "cl"]):
        yield "shuffle", dict(dtype=dtype, layout=layout)
    acts = ["relu", "none", "hardswish", "relu6", "silu"]
    for i, (dtype, layout, (shape, out, ratio), kernel, stride) in enumerate(itertools.product(
            dtypes, ["nchw", "cl"],
            [((2, 16, 56, 56), 32, 2), ((1, 160, 7, 7), 480, 2), ((2, 8, 9, 11), 13, 3), ((1, 960, 14, 14), 80, 4),
             ((2, 3, 1, 1), 4, 2)],
            [3, 5, (3, 5), 1], [1, 2])):
        yield "ghost", dict(dtype=dtype, layout=layout, shape=shape, out=out, ratio=ratio, kernel=kernel,
                            stride=stride, act=acts[i % len(acts)], bias=i % 3 != 0, residual=i % 2 == 0)
    # _ghost_bottleneck: GhostNet's stride-2 bottlenecks without squeeze-excitation (16 -> 48 -> 24 at 112x112,
    # 40 -> 240 -> 80 at 28x28), a 960-channel stride-1 one, small maps, both cheap kernels and depthwise stages.
    for i, (dtype, layout, (shape, mid, out), (kernel, dw)) in enumerate(itertools.product(
            dtypes, ["nchw", "cl"],
            [((1, 16, 112, 112), 48, 24), ((2, 40, 28, 28), 240, 80), ((1, 160, 7, 7), 960, 160),
             ((2, 8, 9, 11), 13, 8)],
            [(3, (3, 2)), (5, (5, 2)), (3, (5, (2, 1))), (5, None)])):
        yield "bottleneck", dict(dtype=dtype, layout=layout, shape=shape, mid=mid, out=out, kernel=kernel, dw=dw,
                                 act=acts[i % len(acts)], second_act=acts[(i + 1) % len(acts)], bias=i % 3 != 0,
                                 residual=i % 2 == 0)


def _call(op, p):
    import torch

    from fusedops.ops._triton import channel_shuffle, depthwise_conv2d, dwpw_conv2d, ghost_module

    dtype = getattr(torch, p["dtype"])
    fmt = torch.channels_last if p["layout"] == "cl" else torch.contiguous_format
    if op == "shuffle":
        x = torch.zeros(2, 12, 5, 7, dtype=dtype).contiguous(memory_format=fmt)
        channel_shuffle.channel_shuffle(x, 3)
        channel_shuffle.concat_shuffle(x, x, 3)
        return
    n, c, h, w = p["shape"]
    x = torch.zeros(n, c, h, w, dtype=dtype).contiguous(memory_format=fmt)
    if op == "ghost":
        kh, kw = (p["kernel"], p["kernel"]) if isinstance(p["kernel"], int) else p["kernel"]
        init = -(-p["out"] // p["ratio"])
        cheap = init * (p["ratio"] - 1)
        bias = p["bias"]
        pw, pb = torch.zeros(init, c, 1, 1, dtype=dtype), torch.zeros(init, dtype=dtype) if bias else None
        cw, cb = torch.zeros(cheap, 1, kh, kw, dtype=dtype), torch.zeros(cheap, dtype=dtype) if bias else None
        stride = (p["stride"],) * 2
        res = None
        if p["residual"]:
            res = torch.zeros(n, p["out"], (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1,
                              dtype=dtype).contiguous(memory_format=fmt)
        ghost_module.ghost_module_forward(x, pw, pb, cw, cb, res, p["out"], stride, p["act"])
        return
    if op == "bottleneck":
        k, bias, mid, out = p["kernel"], p["bias"], p["mid"], p["out"]

        def module(cin, cout):
            init = -(-cout // 2)
            return [torch.zeros(init, cin, 1, 1, dtype=dtype), torch.zeros(init, dtype=dtype) if bias else None,
                    torch.zeros(init, 1, k, k, dtype=dtype), torch.zeros(init, dtype=dtype) if bias else None]

        dw_weight = dw_bias = None
        dw_stride = (1, 1)
        if p["dw"] is not None:
            dk, ds = p["dw"]
            dw_stride = (ds, ds) if isinstance(ds, int) else ds
            dw_weight = torch.zeros(mid, 1, dk, dk, dtype=dtype)
            dw_bias = torch.zeros(mid, dtype=dtype) if bias else None
            h, w = (h - 1) // dw_stride[0] + 1, (w - 1) // dw_stride[1] + 1
        res = torch.zeros(n, out, h, w, dtype=dtype).contiguous(memory_format=fmt) if p["residual"] else None
        ghost_module.ghost_bottleneck_forward(x, *module(c, mid), mid, p["act"], dw_weight, dw_bias, dw_stride,
                                              *module(mid, out), out, p["second_act"], res)
        return
    if op == "depthwise":
        kh, kw = (p["kernel"], p["kernel"]) if isinstance(p["kernel"], int) else p["kernel"]
        oc = c * p["mult"]
        wt = torch.zeros(oc, 1, kh, kw, dtype=dtype)
        args = ((p["stride"],) * 2, (kh // 2, kw // 2), (1, 1))
        y = depthwise_conv2d.depthwise_conv2d_forward(x, wt, torch.zeros(oc, dtype=dtype), *args)
        for mask in ([True, True, True], [True, False, False], [False, True, False], [False, False, True]):
            depthwise_conv2d.depthwise_conv2d_backward(torch.zeros_like(y), x, wt, *args, mask)
        return
    k = c
    ks = p["kernel"]
    dww, dwb = torch.zeros(k, 1, ks, ks, dtype=dtype), torch.zeros(k, dtype=dtype) if p["bias"] else None
    pww, pwb = torch.zeros(p["cout"], k, 1, 1, dtype=dtype), torch.zeros(p["cout"], dtype=dtype) if p["bias"] else None
    args = ((p["stride"],) * 2, (ks // 2,) * 2, (1, 1), p["mid"], p["out"])
    y = dwpw_conv2d.dwpw_conv2d_forward(x, dww, dwb, pww, pwb, *args)
    masks = [[True] * 5, [True, False, False, False, False], [False, True, True, False, False],
             [False, False, False, True, True]]
    for mask in masks:
        if not p["bias"]:
            mask = [m and i not in (2, 4) for i, m in enumerate(mask)]
        if any(mask):
            dwpw_conv2d.dwpw_conv2d_backward(torch.zeros_like(y), x, dww, dwb, pww, pwb, *args, mask)


def record(path):
    assert os.environ.get("TRITON_INTERPRET") == "1", "record runs under the Triton interpreter"
    import triton.language as tl
    from triton.runtime import interpreter
    from triton.runtime.jit import mangle_type

    configs = {}

    def intercept(self, *args, grid, warmup, **kwargs):
        names = self.arg_names
        params = {p.name: p for p in __import__("inspect").signature(self.fn).parameters.values()}
        values = dict(zip(names, args))
        options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        values.update(kwargs)
        signature, constexprs = {}, {}
        for name in names:
            v = values.get(name, params[name].default)
            if "constexpr" in str(params[name].annotation):
                signature[name] = "constexpr"
                constexprs[name] = {"dtype": str(v)} if isinstance(v, tl.dtype) else v
            else:
                signature[name] = mangle_type(v)
        entry = dict(module=self.fn.__module__, kernel=self.fn.__name__, signature=signature, constexprs=constexprs,
                     options=options)
        configs[json.dumps(entry, sort_keys=True)] = entry
        # Not run: only the configuration matters here.

    interpreter.InterpretedFunction.run = intercept
    sys.path.insert(0, ROOT)
    from fusedops.ops._triton import ghost_module

    # The launches a GPU gets (the interpreter's own are made on CPU tensors).
    ghost_module._interpreted = lambda device: False
    for op, p in _problems():
        _call(op, p)
    chosen = select(list(configs.values()))
    with open(path, "w") as f:
        json.dump(chosen, f, indent=0)
    print(f"{len(configs)} configurations recorded, {len(chosen)} selected")


def _ptxas():
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return path if os.path.exists(path) else "ptxas"


def _spills(ptx, arch):
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        arch_name = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        run = subprocess.run([_ptxas(), "-v", f"--gpu-name={arch_name}", src, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(run.stderr)
    stores = sum(int(m) for m in re.findall(r"(\d+) bytes spill stores", run.stderr))
    loads = sum(int(m) for m in re.findall(r"(\d+) bytes spill loads", run.stderr))
    regs = max([int(m) for m in re.findall(r"Used (\d+) registers", run.stderr)] or [0])
    return stores + loads, regs


def compile_all(path, archs):
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "compile needs the real triton.jit"
    import importlib

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sys.path.insert(0, ROOT)
    with open(path) as f:
        configs = json.load(f)
    failures, results = [], []
    for entry in configs:
        fn = getattr(importlib.import_module(entry["module"]), entry["kernel"])
        constexprs = {k: (tl.dtype(v["dtype"]) if isinstance(v, dict) else v) for k, v in entry["constexprs"].items()}
        for arch in archs:
            what = f"{entry['kernel']} sm_{arch} {entry['options']} {entry['constexprs']} " + \
                   ",".join(v for v in entry["signature"].values() if v.startswith("*"))
            try:
                src = ASTSource(fn, entry["signature"], constexprs)
                kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(entry["options"]))
                shared = kernel.metadata.shared
                spill, regs = _spills(kernel.asm["ptx"], arch)
                problems = []
                if shared > SHARED_LIMIT[arch]:
                    problems.append(f"shared memory {shared} B > {SHARED_LIMIT[arch]} B")
                if spill > MAX_SPILL_BYTES:
                    problems.append(f"{spill} bytes of register spills")
                results.append(dict(kernel=entry["kernel"], arch=arch, shared=shared, regs=regs, spill=spill))
                print(f"{'FAIL' if problems else 'ok  '} {what}: shared {shared} B, {regs} regs, spills {spill} B"
                      + (": " + "; ".join(problems) if problems else ""), flush=True)
                if problems:
                    failures.append(what + ": " + "; ".join(problems))
            except Exception as e:  # noqa: BLE001  (reported with the configuration)
                msg = str(e).strip().splitlines()
                failures.append(what + ": " + (msg[-1] if msg else type(e).__name__))
                print(f"FAIL {what}: {type(e).__name__}: {' '.join(msg[-3:])}", flush=True)
    print(json.dumps(dict(compiled=len(results), failures=failures)))
    return failures


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record(sys.argv[2])
    else:
        sys.exit(1 if compile_all(sys.argv[2], [int(a) for a in sys.argv[3:]] or [80, 90]) else 0)
