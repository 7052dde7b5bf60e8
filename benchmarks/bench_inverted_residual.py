"""Fused inverted-residual block (inverted_residual): fusedops vs torchvision's MobileNetV2 and MobileNetV3 blocks
in eager mode and under torch.compile (freezing), fp32, channels_last, eval mode (inference).

The baselines are ``torchvision.models.mobilenetv2.InvertedResidual`` in eval mode (1x1 conv, BN, ReLU6,
depthwise 3x3 conv, BN, ReLU6, 1x1 conv, BN, + input) and, for the squeeze-excitation blocks ("se" rows),
``torchvision.models.mobilenetv3.InvertedResidual`` (its SE with a hardsigmoid gate, ReLU or Hardswish);
fusedops runs ``fusedops.nn.InvertedResidual`` / ``InvertedResidualV3`` with the same weights, frozen (BNs folded
once). Forward under inference_mode.

``--fixed-cost`` times instead what a frozen block costs beyond its arithmetic: blocks of torchvision's
MobileNetV2 and MobileNetV3-Large, converted and frozen, called on a 1x1 map of one image (module, dispatch and
preparation, and the weights read once: almost no arithmetic), against a sum over as many float32 values as the
block's folded weights (its weights read once, warm as the block's are). The "above read" figure is the difference.

    python -m benchmarks.bench_inverted_residual [--no-compile] [--quick] [--blocks v2 se] [--fixed-cost]
"""

from functools import partial


import torch
import torchvision
from torch import nn
from torchvision.models import mobilenetv3
from torchvision.models.mobilenetv2 import InvertedResidual as TorchvisionInvertedResidual

import fusedops
from . import harness, shapes


def setup(N, C, H, reference, fused, use_compile, device="cpu"):
    """Providers for `fused` (a fusedops block) against its torchvision `reference` on an N x C x H x H input, on
    `device`. On a GPU fusedops runs twice: its CUDA kernels ("fusedops") and its Triton kernels ("fusedops_triton");
    PyTorch's convolutions there follow its TF32 setting (on by default for cuDNN), hence the looser parity check."""
    x = torch.randn(N, C, H, H, device=device).to(memory_format=torch.channels_last)
    reference = reference.to(device=device, memory_format=torch.channels_last)
    harness.randomize_batch_norms(reference)
    reference.eval()
    fused = fused.to(device=device, memory_format=torch.channels_last)
    fused.load_state_dict(reference.state_dict())
    fused = fusedops.freeze(fused.eval())

    def forward(fn):
        def run():
            with torch.inference_mode():
                return fn(x)
        return run

    def forward_triton(fn):
        def run():
            with torch.inference_mode(), fusedops.use_backend("triton"):
                return fn(x)
        return run

    tol = 1e-4 if x.device.type == "cpu" else 1e-2
    with torch.inference_mode():
        torch.testing.assert_close(fused(x), reference(x), rtol=tol, atol=tol)
    providers = {"fusedops": forward(fused), "eager": forward(reference)}
    if x.device.type == "cuda":
        providers["fusedops_triton"] = forward_triton(fused)
    if use_compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        compiled = harness.compile_fresh(reference)
        with torch.no_grad():
            compiled(x)
        providers["compile_freezing"] = forward(compiled)
    return providers, [p for p in providers if p != "fusedops"]


def _v2_case(N, s, use_compile):
    C, Cout, t, stride = s["C"], s["Cout"], s["t"], s["stride"]
    providers, baselines = setup(N, C, s["H"], TorchvisionInvertedResidual(C, Cout, stride, t),
                                 fusedops.nn.InvertedResidual(C, Cout, stride, t), use_compile)
    name = f"N={N} {C}->{Cout} t{t} {s['H']}x{s['H']} s{stride}"
    hidden, oh = C * t, (s["H"] - 1) // stride + 1
    macs = N * (s["H"] * s["H"] * C * hidden * (t != 1) + oh * oh * hidden * (9 + Cout))
    return providers, baselines, name, macs


def _se_case(N, s, use_compile):
    cnf = mobilenetv3.InvertedResidualConfig(s["C"], s["k"], s["E"], s["Cout"], True, s["act"], s["stride"], 1, 1.0)
    reference = mobilenetv3.InvertedResidual(cnf, partial(nn.BatchNorm2d, eps=0.001, momentum=0.01))
    providers, baselines = setup(N, s["C"], s["H"], reference, fusedops.nn.InvertedResidualV3.from_config(cnf),
                                 use_compile)
    name = f"N={N} se {s['C']}->{s['E']}->{s['Cout']} k{s['k']} {s['act']} {s['H']}x{s['H']} s{s['stride']}"
    oh = (s["H"] - 1) // s["stride"] + 1
    expand = s["H"] * s["H"] * s["C"] * s["E"] * (s["E"] != s["C"])
    macs = N * (expand + oh * oh * s["E"] * (s["k"] * s["k"] + s["Cout"]))
    return providers, baselines, name, macs


def run(use_compile, quick, rounds, blocks=("v2", "se")):
    results = []
    cases = []
    if "v2" in blocks:
        cases += [(_v2_case, s) for s in (shapes.INVERTED_RESIDUAL[2:5] if quick else shapes.INVERTED_RESIDUAL)]
    if "se" in blocks:
        cases += [(_se_case, s) for s in (shapes.INVERTED_RESIDUAL_SE[3:5] if quick else shapes.INVERTED_RESIDUAL_SE)]
    for N in shapes.BATCHES:
        for make_case, s in cases:
            providers, baselines, name, macs = make_case(N, s, use_compile)
            case = harness.Case("inverted_residual", name, "forward", providers, baselines)
            r = harness.time_case(case, rounds=rounds)
            case.extra = f"{macs / r.median_us['fusedops'] / 1e3:.1f} GMAC/s"
            results.append(r)
            print(harness.format_table([r]).splitlines()[2], flush=True)
    return results


# The blocks --fixed-cost times: (model, index in its features), from the smallest weights to the largest, with and
# without squeeze-excitation (MobileNetV3-Large's 5 and 13).
FIXED_COST_BLOCKS = (("mobilenet_v2", 2), ("mobilenet_v2", 5), ("mobilenet_v2", 12), ("mobilenet_v2", 15),
                     ("mobilenet_v3_large", 5), ("mobilenet_v3_large", 13))


def fixed_cost_case(model_name, index):
    """(providers, baselines, name, weight_bytes) of block `index` of torchvision's `model_name`, converted and
    frozen, on a 1x1 channels-last map of one image ("fusedops"), against a sum over a float32 tensor of as many
    values as the block's folded weights ("weights_read"). The block's output is checked against torchvision's."""
    reference = getattr(torchvision.models, model_name)().features[index]
    harness.randomize_batch_norms(reference)
    reference.eval()
    block = fusedops.freeze(fusedops.convert(reference).eval())
    in_channels = next(m for m in reference.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.randn(1, in_channels, 1, 1).to(memory_format=torch.channels_last)
    # The folded weights: the convolutions' weights and the batch norms' shifts (as biases).
    weight_values = sum(m.weight.numel() + (m.out_channels if m.bias is None else m.bias.numel())
                        for m in reference.modules() if isinstance(m, nn.Conv2d))
    weights = torch.randn(weight_values)
    with torch.inference_mode():
        torch.testing.assert_close(block(x), reference(x), rtol=1e-4, atol=1e-4)

    # Called under one inference_mode context for all the calls (run_fixed_cost), as a model's blocks are: entering
    # it costs about as much as a small block's whole fixed cost.
    providers = {"fusedops": lambda: block(x), "weights_read": weights.sum}
    return providers, ["weights_read"], f"N=1 {model_name}.features[{index}] 1x1 map", weights.nbytes


def run_fixed_cost(rounds):
    results = []
    for model_name, index in FIXED_COST_BLOCKS:
        providers, baselines, name, weight_bytes = fixed_cost_case(model_name, index)
        case = harness.Case("inverted_residual", name, "fixed cost", providers, baselines)
        with torch.inference_mode():
            r = harness.time_case(case, rounds=rounds)
        above = r.median_us["fusedops"] - r.median_us["weights_read"]
        case.extra = f"{weight_bytes / 1024:.0f} KiB of weights; {above:.1f} us above the read"
        results.append(r)
        print(harness.format_table([r]).splitlines()[2], flush=True)
    return results


def _arguments(parser):
    parser.add_argument("--blocks", nargs="+", choices=("v2", "se"), default=("v2", "se"),
                        help="MobileNetV2 blocks (v2), MobileNetV3's squeeze-excitation blocks (se), or both")
    parser.add_argument("--fixed-cost", action="store_true",
                        help="time the frozen blocks' fixed cost on a 1x1 map instead (module docstring)")


def _run(args):
    if args.fixed_cost:
        return run_fixed_cost(args.rounds)
    return run(not args.no_compile, args.quick, args.rounds, args.blocks)


def main(argv=None):
    return harness.bench_main(__doc__, _run, _arguments, argv)


if __name__ == "__main__":
    main()
