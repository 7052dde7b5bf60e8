"""Whole-model inference latency: fusedops models vs the same model in plain PyTorch (torchvision's where
it has one, timm's for GhostNet) eager (NCHW, channels_last), torch.compile (freezing) and ONNX Runtime; same
weights and input.

    python -m benchmarks.bench_models [--models shufflenet_v2_x1_0] [--batches 1 8] [--no-compile] [--no-ort]
"""

import io

import torch
import torchvision

import fusedops
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


def _inference(model, x):
    def run():
        with torch.inference_mode():
            return model(x)
    return run


def _ort_session(model, x, threads):
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, opset_version=17, dynamo=False)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ORT's pool otherwise spins after each run and starves the torch threads of the providers timed next
    # in the same round (measured: fusedops and eager up to 1.6x slower right after an ORT call).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feed = {name: x.numpy()}
    return lambda: session.run(None, feed)


def setup_model(name, batch, resolution, use_compile, use_ort):
    reference = MODELS[name]().eval()
    ours = getattr(fusedops.models, name)().eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(batch, 3, resolution, resolution)
    x_cl = x.to(memory_format=torch.channels_last)
    ours_cl = fusedops.freeze(ours.to(memory_format=torch.channels_last))
    with torch.inference_mode():
        torch.testing.assert_close(ours_cl(x_cl), reference(x), rtol=1e-4, atol=1e-4)
    providers = {"fusedops_cl": _inference(ours_cl, x_cl)}
    providers["eager_nchw"] = _inference(reference, x)
    reference_cl = MODELS[name]().eval()
    reference_cl.load_state_dict(reference.state_dict())
    reference_cl = reference_cl.to(memory_format=torch.channels_last)
    providers["eager_cl"] = _inference(reference_cl, x_cl)
    if use_compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        providers["compile_freezing"] = _inference(harness.compile_fresh(reference), x)
    if use_ort:
        session = _ort_session(reference, x, torch.get_num_threads())
        if session is not None:
            providers["onnxruntime"] = session
    return providers, [p for p in providers if p != "fusedops_cl"]


def run(models, batches, use_compile, use_ort, rounds, resolution=224):
    results = []
    for name in models:
        for batch in batches:
            providers, baselines = setup_model(name, batch, resolution, use_compile, use_ort)
            case = harness.Case("models", f"{name} N={batch} {resolution}x{resolution}", "inference", providers,
                                baselines)
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
