"""The `fusedops` command (fusedops/cli.py): info, check, and bench on tiny configurations (32x32 images, one
round): the table, the CSV rows and the bar chart it writes, its parity verdict, its training-step mode, and its
restart under the benchmarks' allocator setting."""

import csv
import importlib
import importlib.util
import os
import subprocess
import sys
import tomllib

import pytest
import torch
import torchvision

import fusedops
from fusedops import cli
from fusedops._bench import baselines, harness, models, parity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The smallest bench run: a 32x32 image, one short round, no torch.compile (seconds to compile).
TINY = ["--size", "32", "--rounds", "1", "--sample-ms", "5", "--no-compile", "--threads", "1"]
pytestmark = pytest.mark.usefixtures("keep_threads")  # --threads sets the process's thread count


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_info_prints_build_and_backends(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for key, value in fusedops.build_info().items():
        assert f"  {key}: {value}\n" in out
    assert f"  cpu: {', '.join(parity.available_backends('cpu'))}\n" in out
    assert "reference" in parity.available_backends("cpu")
    installed = importlib.util.find_spec("onnxruntime") is not None
    assert f"onnxruntime: {'installed' if installed else 'not installed'}" in out


def test_check_passes_and_prints_a_table_per_backend(capsys):
    assert cli.main(["check", "--ops", "channel_shuffle", "--backends", "native", "reference"]) == 0
    out = capsys.readouterr().out
    assert "| native | 8 | 0.0e+00 | PASS |" in out and "| reference | 8 | 0.0e+00 | PASS |" in out
    assert "FAIL" not in out and "all checks passed" in out


def test_check_fails_on_a_wrong_op(monkeypatch, capsys):
    real = fusedops.concat_shuffle
    monkeypatch.setattr(fusedops, "concat_shuffle", lambda a, b, groups=2: real(b, a, groups))
    assert cli.main(["check", "--ops", "channel_shuffle", "--backends", "native"]) == 1
    out = capsys.readouterr().out
    assert "| native | 8 | inf | FAIL |" in out and "some checks FAILED" in out


def test_check_sees_an_error_of_ten_float32_tolerances(monkeypatch):
    real = fusedops.inverted_residual
    monkeypatch.setattr(fusedops, "inverted_residual", lambda *args, **kwargs: real(*args, **kwargs) * (1 + 1e-4))
    table = parity.parity_inverted_residual("cpu", ["native"])
    assert not table.passed and "| native | 8 | 1.0e-04 | FAIL |" in str(table)


def test_inverted_residual_check_covers_every_variant():
    table = parity.parity_inverted_residual("cpu", ["native"])
    assert table.passed and table.rows[0][:2] == ("native", 8)  # 4 blocks, NCHW and channels_last
    assert 0 < table.rows[0][2] <= parity.FLOAT32_TOLERANCE  # fp32 against fp64: not exact, within tolerance


def test_bench_inference_table_csv_and_chart(tmp_path, capsys):
    out_csv, out_png = tmp_path / "rows.csv", tmp_path / "chart.png"
    status = cli.main(["bench", "--model", "mobilenet_v3_small", "--batch", "1", "2", *TINY, "--csv", str(out_csv),
                       "--png", str(out_png)])
    assert status == 0
    out = capsys.readouterr().out
    rows = _rows(out_csv)
    expected = ["fusedops", "eager_nchw", "eager_cl"] + [
        runtime for runtime in ("onnxruntime", "openvino") if runtime not in baselines.missing_runtimes()]
    for batch in (1, 2):
        case = f"mobilenet_v3_small N={batch} 32x32"
        case_rows = [r for r in rows if r["case"] == case]
        assert [r["provider"] for r in case_rows] == expected
        assert all(r["mode"] == "inference" and r["benchmark"] == models.BENCHMARK for r in case_rows)
        assert all(float(r["median_us"]) > 0 for r in case_rows)
        assert all(r["speedup_of"] == "fusedops" and float(r["speedup"]) > 0 for r in case_rows[1:])
        assert "parity" in case_rows[0]["extra"] and "PASS" in case_rows[0]["extra"]
        assert f"| {case}" in out
    assert rows[0]["threads"] == "1" and rows[0]["allocator"] == harness.allocator_setting()
    assert "fusedops vs eager_cl" in out and "parity check passed" in out
    for runtime, why in baselines.missing_runtimes().items():
        assert f"{runtime} skipped: {why}" in out
    assert out_png.read_bytes()[:8] == PNG_MAGIC


def test_bench_training_step_reports_peak_memory(tmp_path, capsys):
    out_csv = tmp_path / "rows.csv"
    # 64x64, batch 4: the train-mode batch norms at the network's 2x2 end see 16 values per channel (at 32x32 and
    # batch 2, two: the gradients are then ill-conditioned, see models.TRAINING_PARITY_TOLERANCE).
    assert cli.main(["bench", "--model", "mobilenet_v3_small", "--batch", "4", "--train", *TINY, "--size", "64",
                     "--csv", str(out_csv), "--png", ""]) == 0
    rows = _rows(out_csv)
    assert [r["provider"] for r in rows] == ["fusedops", "eager_nchw", "eager_cl"]
    assert all(r["mode"] == models.TRAINING for r in rows)
    extra = rows[0]["extra"]
    assert "PASS" in extra and "peak MiB fusedops" in extra and "eager_cl" in extra.split("peak MiB", 1)[1]
    assert "run inference only" in capsys.readouterr().out


@pytest.fixture
def wrong_conversion(monkeypatch):
    """fusedops.convert returning a model whose classifier bias is off by one (the converted copy shares the
    original's parameter, which this shifts after converting)."""
    real_convert = fusedops.convert

    def convert_with_a_wrong_classifier(model, **kwargs):
        converted = real_convert(model, **kwargs)
        with torch.no_grad():
            model.classifier[-1].bias.add_(1.0)  # the copy it converted shares this parameter
        return converted

    monkeypatch.setattr(fusedops, "convert", convert_with_a_wrong_classifier)


def test_bench_reports_a_converted_model_that_differs(wrong_conversion, tmp_path, capsys):
    status = cli.main(["bench", "--model", "mobilenet_v3_small", "--batch", "1", *TINY, "--no-ort", "--no-openvino",
                       "--csv", str(tmp_path / "rows.csv"), "--png", ""])
    assert status == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "parity check FAILED" in out and "mobilenet_v3_small N=1 32x32" in out


def test_bench_training_parity_catches_a_model_that_differs(wrong_conversion, tmp_path, capsys):
    # The training step's tolerance follows the original's own float32 error against float64: it must still fail a
    # converted model that computes something else.
    status = cli.main(["bench", "--model", "mobilenet_v3_small", "--batch", "4", "--train", *TINY, "--size", "64",
                       "--csv", str(tmp_path / "rows.csv"), "--png", ""])
    assert status == 1
    assert "parity check FAILED" in capsys.readouterr().out


def test_bench_runs_a_timm_model_convert_partly_understands(tmp_path):
    pytest.importorskip("timm")
    out_csv = tmp_path / "rows.csv"
    assert cli.main(["bench", "--model", "timm:ghostnet_100", "--batch", "1", *TINY, "--no-ort", "--no-openvino",
                     "--csv", str(out_csv), "--png", ""]) == 0
    extra = _rows(out_csv)[0]["extra"]
    assert "PASS" in extra and " kept" in extra


def test_build_model_loads_a_checkpoint(tmp_path):
    original = torchvision.models.mobilenet_v3_small()
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": original.state_dict(), "epoch": 3}, path)
    loaded = models.build_model("mobilenet_v3_small", str(path))
    assert not loaded.training
    for (name, theirs), mine in zip(original.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(theirs, mine), name


def test_bench_refuses_unknown_models():
    with pytest.raises(SystemExit, match="not a torchvision classification model"):
        models.build_model("mobilenet_v9")


def test_python_m_fusedops_bench_restarts_under_the_fault_free_allocator(tmp_path):
    out_csv = tmp_path / "rows.csv"
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "fusedops", "bench", "--model", "mobilenet_v3_small", "--batch", "1",
                           *TINY, "--no-ort", "--no-openvino", "--csv", str(out_csv), "--png", ""],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"allocator: fault-free (GLIBC_TUNABLES='{harness.FAULT_FREE_MALLOC}'" in done.stdout
    assert {r["allocator"] for r in _rows(out_csv)} == {"fault-free"}


def test_console_script_is_the_program():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["fusedops"]
    module, _, function = target.partition(":")
    assert getattr(importlib.import_module(module), function) is cli.program


def test_bench_without_tqdm_and_matplotlib(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed: importing it fails
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out_png = tmp_path / "chart.png"
    assert cli.main(["bench", "--model", "mobilenet_v3_small", "--batch", "1", *TINY, "--no-ort", "--no-openvino",
                     "--csv", "", "--png", str(out_png)]) == 0
    captured = capsys.readouterr()
    assert "[mobilenet_v3_small N=1] timing" in captured.err  # the stages, one line each, instead of a bar
    assert "no bar chart: matplotlib is not installed" in captured.out and not out_png.exists()
