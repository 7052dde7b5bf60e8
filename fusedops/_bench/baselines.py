"""What fusedops is timed against: the model itself in eager PyTorch, under torch.compile with freezing, in ONNX
Runtime and in OpenVINO (the two CPU runtimes deployers pick; each only when installed)."""

import importlib.util
import io
import multiprocessing
import time
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


class IsolatedRuntime:
    """A runtime baseline (:func:`onnxruntime_session`, :func:`openvino_request`) in a process of its own, where its
    calls are timed; the harness runs it in its rounds like any provider (:meth:`time_calls`, :attr:`pid`).

    Why: once an ONNX Runtime session or an OpenVINO request has run in a process, PyTorch code in that process runs
    slower for as long as it lives, with no page faults and no CPU time spent by the runtimes' threads. Measured on
    the 2-vCPU Xeon, timm's GhostNet converted by fusedops, batch 8, 2 threads, fault-free allocator: 21 ms a call,
    24 ms after an ONNX Runtime session ran, 27 ms after an OpenVINO request (1 thread: 41 and 49 ms); in the
    interleaved benchmark, 24.2 ms without the two runtimes against 31.8 ms with them, and eager and torch.compile
    10-14% slower too. The runtimes themselves time the same in a process of their own (GhostNet batch 8: OpenVINO
    25.3 ms alone, 25.6 ms in the benchmark). A deployment runs one of them, not all in one process.

    The worker is started with the ``spawn`` method (a fresh interpreter: nothing of this process' heap or threads),
    inherits the environment (the allocator setting), builds the runtime from `model` and `x` as the in-process
    function does, and ends with this object (or this process)."""

    def __init__(self, make, model, x, threads):
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve_runtime, args=(child, make.__name__, model, x, threads),
                                        daemon=True)
        self._process.start()
        child.close()
        try:
            status, detail = self._connection.recv()
        except EOFError:
            status, detail = "error", f"the worker process ended (exit code {self._process.exitcode})"
        if status != "ready":
            self.close()
            raise RuntimeError(f"{make.__name__} in its own process: {detail}")
        self.pid = self._process.pid

    def time_calls(self, calls: int) -> float:
        """Seconds that `calls` consecutive calls took, timed in the worker."""
        self._connection.send(calls)
        return self._connection.recv()

    def __call__(self):
        self.time_calls(1)

    def close(self):
        if self._process.is_alive():
            try:
                self._connection.send(None)
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
        self._connection.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _serve_runtime(connection, make_name, model, x, threads):
    """The worker of :class:`IsolatedRuntime`: builds the runtime's call, says "ready" (or why not), then answers each
    number of calls with the seconds they took, until it gets None or the connection closes."""
    try:
        run = globals()[make_name](model, x, threads)
        run()  # the first call (allocations, lazy initialisation) is not timed
    except Exception as e:  # a model the runtime cannot take is the caller's note, not a crash
        connection.send(("error", f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
        return
    connection.send(("ready", None))
    while True:
        try:
            calls = connection.recv()
        except EOFError:
            return
        if calls is None:
            return
        start = time.perf_counter()
        for _ in range(calls):
            run()
        connection.send(time.perf_counter() - start)
