"""How fast ``workledger.workload.generate`` makes events, for the fleets benchmarks use.

Run: ``.venv/bin/python benchmarks/workload.py [--events N] [--repeat R] [--tasks T]``.
Each rate is the median of R runs of N events (setup included: announcing 100k workers is part
of the cost). ``--tasks T`` also reports how many events the 100k-worker fleet takes to submit
T tasks (benchmarks want ~1M tasks seen).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import statistics
import time

from workledger.core import events as ev
from workledger.workload import Workload, generate

WORKLOADS = {
    "default (200 workers, 4 pools)": Workload(),
    "16 pools x 6 queues, 2k workers": Workload(pools=16, queues_per_pool=6, workers=2_000),
    "100k workers": Workload(workers=100_000),
    "100k workers, no progress": Workload(workers=100_000, progress_reports=0),
}


def rate(workload: Workload, count: int, repeat: int) -> float:
    """Events per second, the median of ``repeat`` runs."""
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        collections.deque(itertools.islice(generate(workload), count), maxlen=0)
        seconds.append(time.perf_counter() - began)
    return count / statistics.median(seconds)


def events_for_tasks(workload: Workload, tasks: int) -> tuple[int, float]:
    """Events (and virtual seconds) until ``tasks`` tasks have been submitted."""
    seen = 0
    for count, event in enumerate(generate(workload), 1):
        if isinstance(event, ev.TaskSubmitted):
            seen += 1
            if seen >= tasks:
                assert event.at is not None
                return count, (event.at - workload.start).total_seconds()
    raise AssertionError("unreachable: the stream is endless")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=0)
    args = parser.parse_args(argv)
    for name, workload in WORKLOADS.items():
        print(f"  {name}  {rate(workload, args.events, args.repeat):,.0f} events/s", flush=True)
    if args.tasks:
        count, virtual = events_for_tasks(Workload(workers=100_000), args.tasks)
        print(f"  100k workers: {args.tasks:,} tasks after {count:,} events ({virtual:.1f} s)")


if __name__ == "__main__":
    main()
