"""What fusedops is timed against: the model itself in eager PyTorch, under torch.compile with freezing, in ONNX
Runtime and in OpenVINO (the two CPU runtimes deployers pick; each only when installed)."""

import importlib.util
import io
import warnings

import torch

from . import harness


def inference(model, x):
    """A call of `model` on `x` under inference_mode."""
    def run():
        with torch.inference_mode():
            return model(x)
    return run


def compile_freezing(model):
    """torch.compile of `model` with Inductor's freezing (weights taken as constants and folded; what a deployer
    picks for inference), compiled on its first call."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    return harness.compile_fresh(model)


def missing_runtimes():
    """{name: why} for each of ONNX Runtime and OpenVINO that cannot be imported here."""
    packages = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
    return {name: f"{package} is not installed" for name, package in packages.items()
            if importlib.util.find_spec(package) is None}


def onnxruntime_session(model, x, threads):
    """A call of `model`, exported to ONNX, in an ONNX Runtime session of `threads` threads on `x`."""
    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated; the other one needs onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
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
    feed = {name: x.contiguous().numpy()}
    return lambda: session.run(None, feed)


def openvino_request(model, x, threads):
    """A call of `model`, converted by OpenVINO (traced on `x`) and compiled for its CPU plugin with `threads`
    threads, the latency hint and `x`'s precision, on `x`. The precision is set: on CPUs with bfloat16 units
    (AVX512_BF16, AMX) the plugin otherwise runs float32 models in bfloat16."""
    import openvino as ov

    ov_model = ov.convert_model(model, example_input=x)
    precision = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[x.dtype]
    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    feed = [x.contiguous().numpy()]
    return lambda: request.infer(feed)
