"""Fused depthwise-separable convolution (dwpw_conv2d): fusedops vs the unfused eager sequence and
torch.compile (freezing) of it, fp32, channels_last.

The unfused sequence is nn.Modules in eval mode: depthwise 3x3 conv, BN, ReLU6, 1x1 conv, BN, ReLU6.
fusedops runs fusedops.nn.DepthwiseSeparableConv2d in eval mode (the BNs folded once, cached). Forward
runs under inference_mode; "full" is forward + backward in train mode of the fused op with folded
weights (no BN) against the same sequence without BN; its "extra" column adds the peak memory one
training step holds above its inputs and parameters (harness.peak_memory_bytes), fused vs each baseline.

    python -m benchmarks.bench_dwpw_conv2d [--modes forward full] [--no-compile] [--quick]
"""

import torch
from torch import nn

import fusedops
from . import harness, shapes


def _sequence(C, Cout, stride, norm=True):
    layers = [nn.Conv2d(C, C, 3, stride, 1, groups=C, bias=not norm)]
    layers += [nn.BatchNorm2d(C)] if norm else []
    layers += [nn.ReLU6(), nn.Conv2d(C, Cout, 1, bias=not norm)]
    layers += [nn.BatchNorm2d(Cout)] if norm else []
    layers += [nn.ReLU6()]
    return nn.Sequential(*layers)


def _fused_from(seq, C, Cout, stride, norm=True):
    fused = fusedops.nn.DepthwiseSeparableConv2d(C, Cout, 3, stride, norm=norm)
    mapping = {"0": "dw", "1": "bn_dw", "3": "pw", "4": "bn_pw"} if norm else {"0": "dw", "2": "pw"}
    state = {}
    for k, v in seq.state_dict().items():
        head, rest = k.split(".", 1)
        state[f"{mapping[head]}.{rest}"] = v
    fused.load_state_dict(state)
    return fused


def setup(N, C, Cout, H, stride, mode, use_compile):
    x = torch.randn(N, C, H, H).to(memory_format=torch.channels_last)
    if mode == "forward":
        seq = _sequence(C, Cout, stride).to(memory_format=torch.channels_last)
        harness.randomize_batch_norms(seq)
        seq.eval()
        fused = fusedops.freeze(_fused_from(seq, C, Cout, stride).eval())

        def fwd(fn):
            def run():
                with torch.inference_mode():
                    return fn(x)
            return run

        with torch.inference_mode():
            torch.testing.assert_close(fused(x), seq(x), rtol=1e-4, atol=1e-4)
        providers = {"fusedops": fwd(fused), "eager": fwd(seq)}
        baselines = ["eager"]
        if use_compile:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            with torch.no_grad():
                compiled = torch.compile(seq)
                compiled(x)
            providers["compile_freezing"] = fwd(compiled)
            baselines.append("compile_freezing")
        return providers, baselines
    # full: forward + backward, biases instead of BN (train-mode BN is not fused).
    seq = _sequence(C, Cout, stride, norm=False).to(memory_format=torch.channels_last)
    fused = _fused_from(seq, C, Cout, stride, norm=False)
    xg = x.clone().requires_grad_()
    with torch.no_grad():
        grad = torch.randn_like(fused(x))

    def full(fn, params):
        def clear_grads():
            xg.grad = None
            for p in params:
                p.grad = None

        def run():
            clear_grads()
            fn(xg).backward(grad)
        run.reset = clear_grads
        return run

    providers = {"fusedops": full(fused, list(fused.parameters())), "eager": full(seq, list(seq.parameters()))}
    baselines = ["eager"]
    if use_compile:
        compiled = torch.compile(seq)
        providers["compile"] = full(compiled, list(seq.parameters()))
        baselines.append("compile")
    return providers, baselines


def run(modes, use_compile, quick, rounds):
    results = []
    shape_list = shapes.DWPW[:3] if quick else shapes.DWPW
    for mode in modes:
        for N in shapes.BATCHES:
            for s in shape_list:
                providers, baselines = setup(N, s["C"], s["Cout"], s["H"], s["stride"], mode, use_compile)
                name = f"N={N} {s['C']}->{s['Cout']} {s['H']}x{s['H']} s{s['stride']}"
                case = harness.Case("dwpw_conv2d", name, mode, providers, baselines)
                r = harness.time_case(case, rounds=rounds)
                oh = (s["H"] - 1) // s["stride"] + 1
                macs = N * oh * oh * s["C"] * (9 + s["Cout"])
                case.extra = f"{macs / r.median_us['fusedops'] / 1e3:.1f} GMAC/s"
                if mode == "full":
                    peaks = {p: harness.peak_memory_bytes(fn, fn.reset) / 2**20 for p, fn in providers.items()}
                    case.extra += "; peak MB " + " / ".join(f"{p} {mb:.1f}" for p, mb in peaks.items())
                results.append(r)
                print(harness.format_table([r]).splitlines()[2], flush=True)
    return results


def main(argv=None):
    return harness.bench_main(
        __doc__,
        lambda args: run(args.modes, not args.no_compile, args.quick, args.rounds),
        lambda parser: parser.add_argument("--modes", nargs="+", default=["forward"], choices=["forward", "full"]),
        argv,
    )


if __name__ == "__main__":
    main()
