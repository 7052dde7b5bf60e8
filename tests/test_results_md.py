"""benchmarks/RESULTS.md is what `python -m benchmarks.report --results-md` makes of the CSV (not edited by
hand, not stale), and every published run is found in the CSV."""

import csv
import os

from benchmarks import harness, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows():
    with open(harness.RESULTS_CSV) as f:
        return list(csv.DictReader(f))


def test_results_md_is_generated_from_the_csv():
    with open(report.RESULTS_MD) as f:
        committed = f.read()
    assert committed == report.results_markdown(_rows()), (
        "benchmarks/RESULTS.md differs from what `python -m benchmarks.report --results-md` writes: regenerate it")


def test_every_published_run_has_rows_and_a_geomean():
    rows = _rows()
    for run in report.PUBLISHED_RUNS:
        commit, selected = report.select(rows, run.benchmark, run.commit, run.since, run.until, run.modes)
        assert commit == run.commit and selected, run.title
        assert all(r["allocator"] == "fault-free" for r in selected), run.title
        tables = report.tables(selected)
        assert tables and all("**geomean**" in t for t in tables.values()), run.title


def test_readme_links_the_results():
    with open(os.path.join(ROOT, "README.md")) as f:
        assert "benchmarks/RESULTS.md" in f.read()


def test_two_runs_in_one_selection_are_refused():
    """A commit measured twice (here: with two cache settings) must be told apart by since/until: tables() refuses
    rows that measure the same case twice rather than showing one run's figures under the other's provenance."""
    rows = report.select(_rows(), "depthwise_conv2d", "e6cd2af")[1]
    try:
        report.tables(rows)
    except SystemExit as error:
        assert "measured twice" in str(error)
    else:
        raise AssertionError("two runs' rows made one table")
