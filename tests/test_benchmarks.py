"""Keep the benchmark harness working: a tiny, untimed run of every benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_the_benchmark_harness_runs_end_to_end_on_a_tiny_workload() -> None:
    """Every benchmark prints a rate; no figure is asserted (timing belongs in benchmarks/)."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "run.py"), "--events", "500", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rates = [line for line in result.stdout.splitlines() if line.endswith("events/s")]
    assert len(rates) == 4
