"""Whole-model inference latency: fusedops models vs the same model in plain PyTorch (torchvision's where
it has one, timm's for GhostNet) eager (NCHW, channels_last), torch.compile (freezing) and ONNX Runtime; same
weights and input.

    python -m benchmarks.bench_models [--models shufflenet_v2_x1_0] [--batches 1 8] [--no-compile] [--no-ort]
"""

import torch
import torchvision

import fusedops
from fusedops._bench import baselines
from fusedops.models._reference_mobilenet_v1 import reference_mobilenet_v1
from . import harness

# fusedops model name -> the plain-PyTorch model with the same architecture and parameter names
# (torchvision's where it has one; MobileNetV1 is not in torchvision).
MODELS = {
    "shufflenet_v2_x1_0": torchvision.models.shufflenet_v2_x1_0,
    "shufflenet_v2_x0_5": torchvision.models.shufflenet_v2_x0_5,
    "mobilenet_v1": reference_mobilenet_v1,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
    "mobilenet_v3_large": torchvision.models.mobilenet_v3_large,
    "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
    "ghostnet_100": lambda: _timm_model("ghostnet_100"),
}


def _timm_model(name):
    import timm

    return timm.create_model(name)


def setup_model(name, batch, resolution, use_compile, use_ort):
    reference = MODELS[name]().eval()
    ours = getattr(fusedops.models, name)().eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(batch, 3, resolution, resolution)
    x_cl = x.to(memory_format=torch.channels_last)
    ours_cl = fusedops.freeze(ours.to(memory_format=torch.channels_last))
    with torch.inference_mode():
        torch.testing.assert_close(ours_cl(x_cl), reference(x), rtol=1e-4, atol=1e-4)
    providers = {"fusedops_cl": baselines.inference(ours_cl, x_cl)}
    providers["eager_nchw"] = baselines.inference(reference, x)
    reference_cl = MODELS[name]().eval()
    reference_cl.load_state_dict(reference.state_dict())
    reference_cl = reference_cl.to(memory_format=torch.channels_last)
    providers["eager_cl"] = baselines.inference(reference_cl, x_cl)
    if use_compile:
        providers["compile_freezing"] = baselines.inference(baselines.compile_freezing(reference), x)
    if use_ort and "onnxruntime" not in baselines.missing_runtimes():
        providers["onnxruntime"] = baselines.IsolatedRuntime(baselines.onnxruntime_session, reference, x,
                                                             torch.get_num_threads())
    return providers, [p for p in providers if p != "fusedops_cl"]


def run(models, batches, use_compile, use_ort, rounds, resolution=224):
    results = []
    for name in models:
        for batch in batches:
            providers, compared = setup_model(name, batch, resolution, use_compile, use_ort)
            case = harness.Case("models", f"{name} N={batch} {resolution}x{resolution}", "inference", providers,
                                compared)
            r = harness.time_case(case, rounds=rounds, sample_ms=100)
            results.append(r)
            print(harness.format_table([r]).splitlines()[2], flush=True)
    return results


def _arguments(parser):
    parser.add_argument("--models", nargs="+", default=["shufflenet_v2_x1_0"], choices=sorted(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime baseline")


def main(argv=None):
    return harness.bench_main(
        __doc__,
        lambda args: run(args.models, args.batches, not args.no_compile, not args.no_ort, args.rounds),
        _arguments,
        argv,
    )


if __name__ == "__main__":
    main()
