"""Keep the benchmark harness working: tiny, untimed runs (timing belongs in benchmarks/)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"

# What issue 6 asks `make bench` to cover; queries.py names its own figures, matched by prefix.
EXPECTED = [
    "decode json",
    "decode msgpack",
    "fold ledger",
    "fold memory",
    "fold duckdb",
    "publish b1",
    "end to end b1",
    "end to end b100",
    "end to end b100 sustained",
    "latency p50",
    "latency p99",
    "latency p50 memory",
    "latency p99 memory",
    "latency load",
    "latency drained",
    "active workers by task key",
    "slot counts, all pools",
    "utilization per worker over a day",
    "utilization per pool in minute buckets over a day",
    "rebuild seconds",
    "rebuild rate",
    "rebuild load seconds",
    "rebuild derive seconds",
    "rebuild live derivation seconds",
    "memory store per worker",
    "memory store per task",
    "memory ledger per worker",
    "memory ledger per task",
]
TARGETED = ["fold ledger", "fold memory", "fold duckdb", "end to end b1", "rebuild rate"]


def _run(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_hot_path_benchmarks_print_a_rate_each() -> None:
    """run.py on 500 events prints decode (2), the fold alone, memory and DuckDB fold rates."""
    result = _run(str(BENCHMARKS / "run.py"), "--events", "500", "--repeat", "1", timeout=120)
    assert result.returncode == 0, result.stderr
    rates = [line for line in result.stdout.splitlines() if line.endswith("events/s")]
    assert len(rates) == 5


def test_the_duckdb_append_paths_all_still_run() -> None:
    """duckdb_apply.py --appends (outside make bench) on 500 events: a positive rate per path."""
    argv = ["--events", "500", "--repeat", "1", "--appends"]
    result = _run(str(BENCHMARKS / "duckdb_apply.py"), *argv, timeout=120)
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split("append paths")[1].splitlines()[1:]
    assert len(paths) == 4
    assert all(float(line.split()[-1].replace(",", "")) > 0 for line in paths)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_bench_quick_covers_every_figure_of_the_issue_with_its_target(
    tmp_path: Path,
) -> None:
    """Given the quick sizes, every section runs, the summary table lists every figure the
    issue names, the targeted ones carry a met/not-met mark, and JSON and markdown are written.
    No figure's value is asserted, but for every rate being above 0."""
    result = _run(str(BENCHMARKS / "bench.py"), "--quick", "--out", str(tmp_path), timeout=580)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Summary" in result.stdout
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["failed"] == {}
    assert {"date", "cores", "python", "nats-server"} <= set(report["machine"])
    names = [figure["name"] for figure in report["figures"]]
    missing = [want for want in EXPECTED if not any(n.startswith(want) for n in names)]
    assert missing == []
    assert [f["name"] for f in report["figures"] if not math.isfinite(f["value"])] == []
    # a rate of 0 is a harness bug (a count read before the run it counts), not a slow machine
    rates = [f for f in report["figures"] if f["unit"] == "events/s"]
    assert rates
    assert [f["name"] for f in rates if f["value"] <= 0] == []
    marked = {f["name"]: f["met"] for f in report["figures"] if f["met"] is not None}
    assert set(TARGETED) <= set(marked)
    assert any(n.startswith("active workers by task key") and n.endswith("p99 ms") for n in marked)
    markdown = (tmp_path / "latest.md").read_text()
    assert "| section | figure | value | unit | target | x target | met |" in markdown
