"""The benchmark harness and scripts run (tiny shapes, few rounds): tables, CSV rows and plots."""

import csv
import importlib.util

import pytest
import torch

from benchmarks import (bench_channel_shuffle, bench_depthwise_conv2d, bench_dwpw_conv2d, bench_inverted_residual,
                        bench_shufflenet_v2_unit, harness, plot, report)


def test_harness_times_tables_and_csv(tmp_path):
    x = torch.randn(64)
    case = harness.Case("unit", "tiny", "forward", {"fast": lambda: x.add(1), "slow": lambda: x.add(1).mul(2)},
                        baselines=["slow"], extra="note")
    result = harness.time_case(case, rounds=3, warmup=1, sample_ms=1)
    assert set(result.median_us) == {"fast", "slow"} and all(v > 0 for v in result.median_us.values())
    assert result.speedup["slow"] > 0
    table = harness.format_table([result], "title")
    assert "| tiny | forward |" in table and "fast vs slow" in table and "geomean" in table
    path = harness.append_csv([result], str(tmp_path / "r.csv"))
    rows = list(csv.DictReader(open(path)))
    assert [r["provider"] for r in rows] == ["fast", "slow"]
    assert rows[1]["speedup_of"] == "fast" and float(rows[1]["speedup"]) > 0
    assert rows[0]["threads"] == str(torch.get_num_threads()) and rows[0]["torch_version"] == torch.__version__
    assert rows[0]["cpu_caches"].startswith("l1d=") and ",l2=" in rows[0]["cpu_caches"]


def test_bench_main_appends_to_the_csv_named_or_none(tmp_path, monkeypatch, capsys):
    """A benchmark script's --csv: the file named gains the run's rows; '' writes none (the default file, here
    redirected to a path of its own, stays absent)."""
    x = torch.randn(8)
    case = harness.Case("unit", "tiny", "forward", {"fast": lambda: x.add(1), "slow": lambda: x.add(2)},
                        baselines=["slow"])

    def run(args):
        return [harness.time_case(case, rounds=2, warmup=1, sample_ms=1)]

    default = tmp_path / "default.csv"
    monkeypatch.setattr(harness, "RESULTS_CSV", str(default))
    named = tmp_path / "named.csv"
    harness.bench_main("tiny\n", run, argv=["--csv", str(named)])
    assert [r["provider"] for r in csv.DictReader(open(named))] == ["fast", "slow"]
    harness.bench_main("tiny\n", run, argv=["--csv", ""])
    assert not default.exists() and "appended to" not in capsys.readouterr().out.split("tiny")[-1]


def test_csv_written_before_a_column_was_added_gains_it(tmp_path):
    path = tmp_path / "old.csv"
    old_columns = [c for c in harness.CSV_COLUMNS if c != "cpu_caches"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_columns)
        writer.writeheader()
        writer.writerow({c: "old" for c in old_columns})
    x = torch.randn(8)
    case = harness.Case("unit", "tiny", "forward", {"a": lambda: x.add(1)}, baselines=[])
    harness.append_csv([harness.time_case(case, rounds=2, warmup=1, sample_ms=1)], str(path))
    rows = list(csv.DictReader(open(path)))
    assert list(rows[0]) == harness.CSV_COLUMNS
    assert rows[0]["case"] == "old" and rows[0]["cpu_caches"] == ""
    assert rows[1]["case"] == "tiny" and rows[1]["cpu_caches"] == harness.cpu_caches()


@pytest.mark.parametrize("layout", ["cl", "nchw"])
@pytest.mark.parametrize("mode", ["forward", "full"])
def test_depthwise_providers_agree(layout, mode):
    providers, baselines = bench_depthwise_conv2d.setup_depthwise(1, 16, 9, 2, 3, layout, mode, use_compile=False)
    assert f"fusedops_{layout}" in providers and f"eager_{layout}" in baselines
    for fn in providers.values():
        fn()
    if mode == "forward":
        ours = providers[f"fusedops_{layout}"]()
        eager = providers[f"eager_{layout}"]()
        torch.testing.assert_close(ours, eager)


@pytest.mark.parametrize("mode", ["forward", "full"])
def test_dwpw_providers_agree(mode):
    providers, baselines = bench_dwpw_conv2d.setup(1, 16, 24, 9, 2, mode, use_compile=False)
    assert baselines == ["eager"]
    for fn in providers.values():
        fn()
    if mode == "forward":
        torch.testing.assert_close(providers["fusedops"](), providers["eager"](), rtol=1e-4, atol=1e-4)


def test_inverted_residual_fixed_cost_case():
    # A frozen MobileNetV3-Large block (squeeze-excitation) on a 1x1 map, checked against torchvision's inside the
    # case, and a read of as many values as its folded weights: 112 -> 672 -> 160 with a 168-channel SE, 5x5.
    providers, baselines, name, weight_bytes = bench_inverted_residual.fixed_cost_case("mobilenet_v3_large", 13)
    assert baselines == ["weights_read"] and "features[13]" in name
    assert weight_bytes == 4 * (112 * 672 + 672 + 672 * 25 + 672 + 168 * 672 + 168 + 672 * 168 + 672 + 160 * 672 + 160)
    with torch.inference_mode():
        assert providers["fusedops"]().shape == (1, 160, 1, 1)
        result = harness.time_case(harness.Case("inverted_residual", name, "fixed cost", providers, baselines),
                                   rounds=1, warmup=1, sample_ms=1.0)
    assert set(result.median_us) == {"fusedops", "weights_read"}


@pytest.mark.parametrize("layout", ["cl", "nchw"])
def test_shuffle_providers_agree(layout):
    for providers, _ in (bench_channel_shuffle.setup_channel_shuffle(1, 12, 5, layout, 2, use_compile=False),
                         bench_channel_shuffle.setup_concat_shuffle(1, 12, 5, layout, use_compile=False)):
        assert torch.equal(providers["fusedops"](), providers["eager"]())
        providers["copy"]()
        assert torch.equal(providers["clone"](), providers["copy"]())


@pytest.mark.parametrize("stride", [1, 2])
def test_shufflenet_v2_unit_providers_agree(stride):
    providers, baselines = bench_shufflenet_v2_unit.setup_unit(1, dict(C=8, Cout=8 * stride, H=9, stride=stride),
                                                               use_compile=False)
    assert baselines == ["eager"]
    torch.testing.assert_close(providers["fusedops"](), providers["eager"](), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_plot_draws_png(tmp_path):
    x = torch.randn(16)
    case = harness.Case("unit", "tiny", "forward", {"a": lambda: x.add(1), "b": lambda: x.mul(2)}, baselines=["b"])
    path = harness.append_csv([harness.time_case(case, rounds=2, warmup=1, sample_ms=1)], str(tmp_path / "r.csv"))
    out = tmp_path / "plot.png"
    plot.main(["--csv", path, "--benchmark", "unit", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_tables_per_op_and_layout(tmp_path, capsys):
    x = torch.randn(16)
    providers = {"ours": lambda: x.add(1), "base": lambda: x.mul(2)}
    cases = [harness.Case("unit", f"{op} N=1 C=4 {layout}", "forward", providers, baselines=["base"], extra="e")
             for op in ("alpha", "beta") for layout in ("nchw", "cl")]
    path = harness.append_csv([harness.time_case(c, rounds=2, warmup=1, sample_ms=1) for c in cases],
                              str(tmp_path / "r.csv"))
    report.main(["--csv", path, "--benchmark", "unit"])
    out = capsys.readouterr().out
    for heading in ("forward, alpha, nchw", "forward, alpha, cl", "forward, beta, nchw", "forward, beta, cl"):
        assert f"#### {heading}" in out
    tables = report.tables(list(csv.DictReader(open(path))))
    table = tables[("forward", "alpha", "cl")]
    assert "| alpha N=1 C=4 cl |" in table and "vs base" in table and "**geomean** (min)" in table
    assert "alpha N=1 C=4 nchw" not in table


needs_onnxruntime = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                       reason="onnxruntime is not installed")


@needs_onnxruntime
def test_isolated_runtime_is_timed_in_its_own_process():
    import os

    from fusedops._bench import baselines

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    runtime = baselines.IsolatedRuntime(baselines.onnxruntime_session, model, x, 1)
    try:
        assert runtime.pid != os.getpid() and runtime._process.is_alive()
        assert 0 < runtime.time_calls(3) < 5
        case = harness.Case("unit", "tiny", "forward", {"torch": lambda: model(x), "ort": runtime},
                            baselines=["ort"])
        result = harness.time_case(case, rounds=3, sample_ms=2)
        assert result.rounds == 3 and result.median_us["ort"] > 0 and result.speedup["ort"] > 0
    finally:
        runtime.close()
    assert not runtime._process.is_alive()


@needs_onnxruntime
def test_isolated_runtime_says_why_it_could_not_start():
    from fusedops._bench import baselines

    with pytest.raises(RuntimeError, match="onnxruntime_session in its own process: .*Error"):
        baselines.IsolatedRuntime(baselines.onnxruntime_session, "not a model", torch.randn(1, 3, 8, 8), 1)
