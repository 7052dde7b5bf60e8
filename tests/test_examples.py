"""The examples run, on tiny configurations: examples/transfer_learning.py."""

import importlib.util
import os

import pytest
import torch

import fusedops

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
pytestmark = pytest.mark.usefixtures("keep_threads")  # --threads sets the process's thread count


def _example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_transfer_learning_trains_the_head_then_the_last_blocks(capsys):
    unfrozen = 2
    result = _example("transfer_learning").main(["--images", "60", "--size", "32", "--batch", "16", "--threads", "1",
                                                 "--head-epochs", "2", "--finetune-epochs", "1",
                                                 "--unfreeze", str(unfrozen)])
    history, fused, plain, initial = result["history"], result["fused"], result["plain"], result["initial"]
    assert [(row["phase"], row["epoch"]) for row in history] == [("head", 1), ("head", 2), ("fine-tune", 1)]
    out = capsys.readouterr().out
    assert out.count("test accuracy fused") == 3 and "epoch time fused" in out
    # the converted model is the unconverted one on fused blocks, and trains the same
    assert isinstance(fused.features[-2], fusedops.nn.InvertedResidual)
    for row in history:
        # Adam turns rounding differences of near-zero gradients into whole steps: close, not equal
        assert abs(row["fused_loss"] - row["plain_loss"]) <= 1e-2 * row["plain_loss"], row
        assert abs(row["fused_accuracy"] - row["plain_accuracy"]) <= 1 / result["test_images"] + 1e-9, row
        assert row["fused_seconds"] > 0 and row["plain_seconds"] > 0
    assert history[1]["fused_loss"] < history[0]["fused_loss"]  # the head learns
    # what was frozen stayed as it was, batch-norm statistics included; the head and the last blocks moved
    frozen = len(fused.features) - unfrozen
    fused_state, plain_state = fused.state_dict(), plain.state_dict()
    for name, value in fused_state.items():
        block = int(name.split(".")[1]) if name.startswith("features.") else None
        if block is not None and block < frozen or "running" in name or "num_batches" in name:
            assert torch.equal(value, initial[name]), name
        elif name.endswith("weight") and value.dim() > 1:
            ours, theirs = (value - initial[name]).flatten(), (plain_state[name] - initial[name]).flatten()
            assert ours.abs().max() > 1e-4, name
            assert torch.nn.functional.cosine_similarity(ours, theirs, dim=0) > 0.99, name  # the same way (Adam)
