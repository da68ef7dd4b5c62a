"""How fast ``workledger.workload.generate`` makes events, for the fleets benchmarks use.

Run: ``.venv/bin/python benchmarks/workload.py [--events N] [--repeat R] [--tasks T]``.
Each rate is events per CPU second of this process (the machine is shared and wall time swings
3x with the neighbours' load), the median of R runs of N events, from the start (announcing
100k workers is part of the cost) or after a warm-up (the steady state a 10M-event run mostly
sees). ``--tasks T`` also reports how many events the 100k-worker fleet takes to submit T
tasks (benchmarks want ~1M tasks seen).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import statistics
import time

from workledger.core import events as ev
from workledger.workload import Workload, generate

HUNDRED_K = Workload(workers=100_000)
# name -> (workload, events skipped before timing: 0 counts announcing the fleet)
WORKLOADS = {
    "default (200 workers, 4 pools)": (Workload(), 0),
    "16 pools x 6 queues, 2k workers": (Workload(pools=16, queues_per_pool=6, workers=2_000), 0),
    "100k workers, from the start": (HUNDRED_K, 0),
    "100k workers, after 1M events": (HUNDRED_K, 1_000_000),
    "100k workers, no progress, after 1M": (
        Workload(workers=100_000, progress_reports=0),
        1_000_000,
    ),
}


def rate(workload: Workload, count: int, repeat: int, skip: int = 0) -> float:
    """Events per second, the median of ``repeat`` runs (each skips ``skip`` events first)."""
    seconds = []
    for _ in range(repeat):
        stream = generate(workload)
        collections.deque(itertools.islice(stream, skip), maxlen=0)
        began = time.process_time()
        collections.deque(itertools.islice(stream, count), maxlen=0)
        seconds.append(time.process_time() - began)
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
    for name, (workload, skip) in WORKLOADS.items():
        events_per_second = rate(workload, args.events, args.repeat, skip)
        print(f"  {name}  {events_per_second:,.0f} events/s", flush=True)
    if args.tasks:
        count, virtual = events_for_tasks(Workload(workers=100_000), args.tasks)
        print(f"  100k workers: {args.tasks:,} tasks after {count:,} events ({virtual:.1f} s)")


if __name__ == "__main__":
    main()
