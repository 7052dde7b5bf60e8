"""What ``fusedops bench`` times: a torchvision or timm model converted by :func:`fusedops.convert` against the
model itself in eager PyTorch (NCHW and channels_last), under torch.compile, in ONNX Runtime and in OpenVINO, after
a parity check of the converted model against the original."""

import copy
import dataclasses
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

import fusedops
from . import baselines, harness

TIMM_PREFIX = "timm:"
# The worst relative error (of the largest magnitude) the converted model's float32 output may have against the
# original's in inference: the two round differently (folded batch norms, fused kernels), through a whole network.
PARITY_TOLERANCE = 1e-4
# The same for a training step's output and gradients against the original in float64 (at least; see
# _training_parity): each train-mode batch norm divides by its batch's standard deviation, and its backward
# amplifies the forward's rounding where that deviation is small (few values per channel: small images, small
# batches; measured 3e-5 at 64x64, batch 4, for MobileNetV2).
TRAINING_PARITY_TOLERANCE = 1e-3
BENCHMARK = "fusedops bench"
INFERENCE, TRAINING = "inference", "training step"


def build_model(name: str, checkpoint: Optional[str] = None) -> torch.nn.Module:
    """The model `name` (a torchvision classification model's name, or ``timm:<name>``) in eval mode: with the
    state dict of `checkpoint`, else random weights and random batch-norm statistics (so that the converted model's
    folding does real work and the parity check means something)."""
    if name.startswith(TIMM_PREFIX):
        try:
            import timm
        except ImportError:
            raise SystemExit(f"fusedops bench: {name} needs timm (pip install timm)") from None
        model = timm.create_model(name[len(TIMM_PREFIX):], pretrained=False)
    else:
        import torchvision

        if name not in torchvision.models.list_models(module=torchvision.models):
            raise SystemExit(f"fusedops bench: {name!r} is not a torchvision classification model (timm models: "
                             f"{TIMM_PREFIX}<name>)")
        model = torchvision.models.get_model(name, weights=None)
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "model_state_dict"):  # the usual wrappers of training scripts
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        model.load_state_dict(state)
    else:
        harness.randomize_batch_norms(model)
    return model.eval()


@dataclasses.dataclass
class Parity:
    """The converted model against the original on the same input: the worst relative error of its output (and,
    for a training step, of every parameter's gradient)."""

    worst: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.worst <= self.tolerance

    def __str__(self):
        return f"parity {self.worst:.1e} {'PASS' if self.passed else 'FAIL'}"


def _relative_error(ours, theirs):
    return ((ours.double() - theirs.double()).abs().max() / theirs.double().abs().max().clamp_min(1e-30)).item()


def _inference_parity(fused, reference, x, x_cl):
    with torch.inference_mode():
        return Parity(_relative_error(fused(x_cl), reference(x)), PARITY_TOLERANCE)


def _training_parity(fused, reference, x, x_cl, labels):
    """One forward and backward in train mode of each (copies: running statistics are left alone), from the same
    random state (the same dropout masks), against the original in float64. The converted model passes when its
    output and gradients are within TRAINING_PARITY_TOLERANCE of the float64 ones, or no further than twice the
    original's own float32 run in the same layout (channels_last) is: train-mode batch norms amplify float32
    rounding by their batches' inverse standard deviations (GhostNet at 224x224, batch 8: PyTorch's own float32
    gradients are 3e-3 (NCHW) and 6e-3 (channels_last) off the float64 ones), which no tolerance fixed in advance
    covers for every model."""
    def step(model, inp):
        model = copy.deepcopy(model).train()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            out = model(inp)
        F.cross_entropy(out, labels).backward()
        # The gradients as one vector: some are rounding noise around zero (the bias of a batch norm whose output
        # the next train-mode batch norm re-centres), whose error relative to their own size says nothing.
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return out.detach(), grads

    exact = step(copy.deepcopy(reference).double(), x.double())

    def error(result):
        return max(_relative_error(a, e) for a, e in zip(result, exact))

    own = error(step(copy.deepcopy(reference).to(memory_format=torch.channels_last), x_cl))
    return Parity(error(step(fused, x_cl)), max(TRAINING_PARITY_TOLERANCE, 2 * own))


@dataclasses.dataclass
class Setup:
    """One case ready to time, with what was found on the way."""

    case: harness.Case
    parity: Parity
    conversion: fusedops.ConversionReport
    notes: List[str]
    peak_memory: Dict[str, float] = dataclasses.field(default_factory=dict)  # provider -> MiB (training steps)


def _training_step(model, inp, labels):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(inp), labels).backward()
        optimizer.step()

    step.reset = lambda: optimizer.zero_grad(set_to_none=True)
    return step


def setup_case(name, model, batch, size, mode, skip=(), stage=lambda what: None) -> Setup:
    """The case of `model` (in eval mode; left as it is) at batch `batch` of `size` x `size` images in `mode`
    (INFERENCE or TRAINING): fusedops first, then the baselines not named in `skip` ("compile", "onnxruntime",
    "openvino") that can run here. `stage(what)` is told what is being done (for a progress display)."""
    threads = torch.get_num_threads()
    x = torch.randn(batch, 3, size, size)
    x_cl = x.to(memory_format=torch.channels_last)
    stage("converting")
    # convert() shares the parameters with the model it converts and makes them channels_last: a copy, so that the
    # baselines keep theirs.
    fused, conversion = fusedops.convert(copy.deepcopy(model), report=True)
    reference_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    notes = []
    if mode == INFERENCE:
        stage("parity check")
        fused = fusedops.freeze(fused.eval())
        parity = _inference_parity(fused, model, x, x_cl)
        providers = {"fusedops": baselines.inference(fused, x_cl), "eager_nchw": baselines.inference(model, x),
                     "eager_cl": baselines.inference(reference_cl, x_cl)}
        if "compile" not in skip:
            stage("torch.compile (freezing)")
            compiled = baselines.compile_freezing(copy.deepcopy(model))
            providers["compile_freezing"] = baselines.inference(compiled, x)
            providers["compile_freezing"]()  # compiles
        missing = baselines.missing_runtimes()
        for runtime, make in (("onnxruntime", baselines.onnxruntime_session),
                              ("openvino", baselines.openvino_request)):
            if runtime in skip:
                continue
            if runtime in missing:
                notes.append(f"{runtime} skipped: {missing[runtime]}")
                continue
            stage(f"{runtime} export")
            try:
                providers[runtime] = baselines.IsolatedRuntime(make, model, x, threads)
            except Exception as e:  # a model the runtime cannot take is a note, not the end of the run
                notes.append(f"{runtime} skipped for {name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    else:
        with torch.no_grad():
            num_classes = model(x[:1]).shape[1]
        labels = torch.randint(num_classes, (batch,))
        stage("parity check")
        parity = _training_parity(fused, model, x, x_cl, labels)
        providers = {"fusedops": _training_step(fused.train(), x_cl, labels),
                     "eager_nchw": _training_step(copy.deepcopy(model).train(), x, labels),
                     "eager_cl": _training_step(reference_cl.train(), x_cl, labels)}
        if "compile" not in skip:
            stage("torch.compile")
            compiled = harness.compile_fresh(copy.deepcopy(model).train())
            providers["compile"] = _training_step(compiled, x, labels)
            providers["compile"]()  # compiles
        notes.append("ONNX Runtime and OpenVINO run inference only: not in training steps")
    case = harness.Case(BENCHMARK, f"{name} N={batch} {size}x{size}", mode, providers,
                        [p for p in providers if p != "fusedops"])
    setup = Setup(case, parity, conversion, notes)
    if mode == TRAINING:
        stage("peak memory")
        setup.peak_memory = {p: harness.peak_memory_bytes(step, step.reset) / 2**20 for p, step in providers.items()}
    replaced = len(conversion.replaced)
    case.extra = f"{parity}; {replaced} modules fused, {len(conversion.left_alone)} kept"
    if setup.peak_memory:
        case.extra += "; peak MiB " + " / ".join(f"{p} {mb:.1f}" for p, mb in setup.peak_memory.items())
    return setup
