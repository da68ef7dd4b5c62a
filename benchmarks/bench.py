"""Every benchmark of issue 6 in one run, with a summary table against the targets.

Run: ``make bench`` (full sizes: minutes, GBs of disk for the rebuild), ``make bench-quick``
(tiny sizes, seconds; what the test suite runs), or
``.venv/bin/python benchmarks/bench.py [--quick] [--only SECTION ...] [--events N] ...``.

Each section runs in a fresh interpreter (one section's heap never weighs on the next's
figures) and prints its figures as it goes; then the summary table: figure, value, unit,
target, x target (>= 1 means met, by how much), met. It is written to
``benchmarks/results/latest.json`` and ``latest.md`` (``--out``). Figures are medians of
``--repeat`` runs where a section repeats; compare ratios on one machine, not absolute
numbers across machines.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REBUILD_TARGET_EVENTS, REBUILD_TARGET_SECONDS = 10_000_000, 60.0

Section = Callable[[argparse.Namespace], dict[str, float]]


class Target(msgspec.Struct, frozen=True):
    """``value op threshold``, e.g. ``>= 500_000``; ``label`` is how the table shows it."""

    op: str
    threshold: float
    label: str

    def met(self, value: float) -> bool:
        return value >= self.threshold if self.op == ">=" else value < self.threshold

    def ratio(self, value: float) -> float:
        """How many times better than the target (>= 1 when met)."""
        if self.op == ">=":
            return value / self.threshold
        return self.threshold / value if value > 0 else float("inf")


class Figure(msgspec.Struct, frozen=True, kw_only=True):
    section: str
    name: str
    value: float
    unit: str
    target: str = ""
    ratio: float | None = None
    met: bool | None = None


class Report(msgspec.Struct, kw_only=True):
    machine: dict[str, str]
    settings: dict[str, Any]
    figures: list[Figure]
    failed: dict[str, str]


# --- sections: each returns {key: value}; a key's unit and target come from describe() -----


def _module(name: str) -> Any | None:
    """A sibling benchmark module, or None while it does not exist or does not import."""
    try:
        return __import__(name)
    except ImportError:
        return None


def _call(function: Callable[..., dict[str, float]], **available: Any) -> dict[str, float]:
    """Call another engineer's ``figures(...)`` with the knobs its signature names."""
    names = inspect.signature(function).parameters
    return function(**{k: v for k, v in available.items() if k in names})


def _extra(module: str, args: argparse.Namespace, **knobs: Any) -> dict[str, float]:
    """``<module>.figures()`` when present, its keys prefixed with the module's name."""
    found = _module(module)
    function = getattr(found, "figures", None)
    if function is None:
        print(f"  ({module}.figures not available: skipped)")
        return {}
    figures = _call(function, repeat=args.repeat, seed=0, **knobs)
    return {f"{module}: {key}": value for key, value in figures.items()}


def section_decode(args: argparse.Namespace) -> dict[str, float]:
    import run  # noqa: PLC0415 (sections import in their own interpreter)

    return run.bench_decode(run.history(args.events), args.repeat)


def section_fold(args: argparse.Namespace) -> dict[str, float]:
    import run  # noqa: PLC0415

    items = run.history(args.events)
    figures = run.bench_fold_ledger(items, args.repeat) | run.bench_fold_memory(items, args.repeat)
    # What a daemon's in-memory store is handed under a heavy load of envelopes of 100
    loaded = run.load_batch(items)
    figures |= run.bench_fold_memory(items, args.repeat, loaded, f"fold memory b{loaded}")
    figures |= run.bench_fold_duckdb(items, args.repeat)
    return figures | _extra("duckdb_apply", args, events=args.events)


def section_workload(args: argparse.Namespace) -> dict[str, float]:
    """The generator's rate per fleet shape (``benchmarks/workload.py``)."""
    found = _module("workload")
    if found is None or not hasattr(found, "WORKLOADS"):
        return _extra("workload", args, events=args.events)
    return {  # a shape's warm-up (events skipped before timing) is left out of a quick run
        f"workload: {name}": found.rate(shape, args.events, args.repeat, 0 if args.quick else skip)
        for name, (shape, skip) in found.WORKLOADS.items()
    }


def section_publish(args: argparse.Namespace) -> dict[str, float]:
    import publish  # noqa: PLC0415
    import run  # noqa: PLC0415

    from workledger.core.nats_server import EmbeddedNats  # noqa: PLC0415

    items = run.history(args.events)
    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp)) as server:
        return publish.bench_publish(server.url, items, args.repeat)


def section_envelopes(args: argparse.Namespace) -> dict[str, float]:
    """Publish and a one-process pipeline by envelope size (``benchmarks/envelopes.py``)."""
    import run  # noqa: PLC0415

    bench = getattr(_module("envelopes"), "bench_envelopes", None)
    if bench is None:
        return _extra("envelopes", args, events=args.events)
    figures = bench(run.history(args.events), args.repeat)
    return {f"envelopes: {key}": value for key, value in figures.items()}


def section_e2e(args: argparse.Namespace) -> dict[str, float]:
    import pipeline  # noqa: PLC0415

    return pipeline.bench_end_to_end(args.events, args.repeat, [1])


def section_e2e_envelopes(args: argparse.Namespace) -> dict[str, float]:
    import pipeline  # noqa: PLC0415
    import publish  # noqa: PLC0415

    if not publish.batching():
        print("  (the Publisher has no batch_size: skipped)")
        return {}
    # Also over ~10 s (`--sustained-events`): how a long catch-up or a heavy load runs, once
    # the daemon has seen the load (its DuckDB lane then gathers row groups).
    sizes = [publish.ENVELOPE]
    figures = pipeline.bench_end_to_end(args.events, args.repeat, sizes)
    return figures | pipeline.bench_end_to_end(
        args.sustained_events, args.repeat, sizes, " sustained"
    )


def section_latency(args: argparse.Namespace) -> dict[str, float]:
    import latency  # noqa: PLC0415

    return latency.bench_latency(args.rate, args.latency_seconds)


def section_queries(args: argparse.Namespace) -> dict[str, float]:
    figures = getattr(_module("queries"), "figures", None)
    if figures is None:
        raise RuntimeError("benchmarks/queries.py with figures() is needed for this section")
    return _call(figures, workers=args.workers, tasks=args.tasks, samples=args.samples)


def section_rebuild(args: argparse.Namespace) -> dict[str, float]:
    import rebuild  # noqa: PLC0415

    return rebuild.bench_rebuild(args.rebuild_events, args.rebuild_dir, args.rebuild_batch_size)


def section_growth(args: argparse.Namespace) -> dict[str, float]:
    """A live derivation on a file of ``--events`` events and on one ten times as long."""
    return _extra("derive_growth", args, small=args.events, large=10 * args.events)


def section_memory(args: argparse.Namespace) -> dict[str, float]:
    import memory  # noqa: PLC0415

    return memory.bench_memory(args.workers, args.tasks)


SECTIONS: dict[str, Section] = {
    "decode": section_decode,
    "fold": section_fold,
    "workload": section_workload,
    "publish": section_publish,
    "envelopes": section_envelopes,
    "e2e": section_e2e,
    "e2e-envelopes": section_e2e_envelopes,
    "latency": section_latency,
    "queries": section_queries,
    "rebuild": section_rebuild,
    "growth": section_growth,
    "memory": section_memory,
}


# --- units and targets ---------------------------------------------------------------------


def describe(key: str, args: argparse.Namespace) -> tuple[str, Target | None]:
    """The unit of a figure and its target from issue 6, if it has one (ratios have none)."""
    unit = _unit(key)
    return unit, None if unit == "x" else _target(key, args)


def _target(key: str, args: argparse.Namespace) -> Target | None:
    rebuild_rate = REBUILD_TARGET_EVENTS / REBUILD_TARGET_SECONDS
    load = 0.99 * args.rate
    live_p99 = key.endswith("p99 ms") and "utilization" not in key and "build" not in key
    rules = [
        (key in ("fold ledger", "fold memory"), Target(">=", 500_000, ">= 500k")),
        (key == "fold duckdb", Target(">=", 300_000, ">= 300k")),
        (key.startswith("end to end"), Target(">=", 100_000, ">= 100k")),
        (live_p99, Target("<", 1.0, "< 1")),
        (key == "rebuild rate", Target(">=", rebuild_rate, ">= 167k (10M in 60 s)")),
        (
            key == "rebuild seconds" and args.rebuild_events == REBUILD_TARGET_EVENTS,
            Target("<", REBUILD_TARGET_SECONDS, "< 60"),
        ),
        (key in ("latency load", "latency drained"), Target(">=", load, f">= {load:,.0f}")),
    ]
    return next((target for hit, target in rules if hit), None)


def _unit(key: str) -> str:
    if key.endswith(" ms") or key.startswith("latency p") or key in ("latency max", "latency mean"):
        return "ms"
    if key.endswith("seconds"):
        return "s"
    if key.endswith("bytes") or key.startswith("memory"):
        return "bytes"
    if key == "latency samples" or key.endswith("per message"):
        return "events"
    if key.endswith("/ ratio"):
        return "x"
    return "events/s"


def ratios(values: dict[str, float]) -> dict[str, float]:
    """Figures against each other, where both were measured in this run."""
    pairs = {
        "decode msgpack / json": ("decode msgpack", "decode json"),
        "fold duckdb / memory": ("fold duckdb", "fold memory"),
        "publish b100 / b1": ("publish b100", "publish b1"),
        "end to end b100 / b1": ("end to end b100", "end to end b1"),
        "end to end b1 / publish b1": ("end to end b1", "publish b1"),
        "rebuild / load": ("rebuild rate", "rebuild load rate"),
    }
    return {
        f"{name} / ratio": values[a] / values[b]
        for name, (a, b) in pairs.items()
        if a in values and values.get(b)
    }


def figures_of(section: str, values: dict[str, float], args: argparse.Namespace) -> list[Figure]:
    out = []
    for key, value in values.items():
        unit, target = describe(key, args)
        name = key.removesuffix(" / ratio")
        if target is None:
            out.append(Figure(section=section, name=name, value=value, unit=unit))
            continue
        out.append(
            Figure(
                section=section,
                name=name,
                value=value,
                unit=unit,
                target=target.label,
                ratio=target.ratio(value),
                met=target.met(value),
            )
        )
    return out


# --- running -------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    """What the figures were taken on, for the report's header."""
    import duckdb  # noqa: PLC0415
    import run  # noqa: PLC0415

    from workledger.core.nats_server import find_nats_server  # noqa: PLC0415

    nats = subprocess.run(
        [str(find_nats_server()), "--version"], capture_output=True, text=True, check=False
    )
    commit = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "memory": f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB",
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "nats-server": nats.stdout.strip() or "unknown",
        "duckdb": duckdb.__version__,
        "msgspec": msgspec.__version__,
        "platform": platform.platform(),
        "commit": commit.stdout.strip() or "unknown",
        "events from": run.source(),
    }


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown"
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")


def run_section(name: str, args: argparse.Namespace, argv: list[str]) -> dict[str, float]:
    """Run one section in a fresh interpreter; its output goes straight to ours.

    :raises RuntimeError: with the section's first error when it fails.
    """
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        command = [sys.executable, __file__, *argv, "--section", name, "--result", str(result)]
        done = subprocess.run(command, check=False)
        found = json.loads(result.read_text()) if result.exists() else {}
        if done.returncode != 0 or "error" in found:
            raise RuntimeError(found.get("error") or f"exit status {done.returncode}")
        values: dict[str, float] = found["figures"]
        return values


def child(args: argparse.Namespace) -> None:
    """``--section``: measure one section here and write its figures to ``--result``."""
    try:
        values = SECTIONS[args.section](args)
    except Exception as exc:
        args.result.write_text(json.dumps({"error": _first_cause(exc)}))
        raise
    for key, value in values.items():
        unit, _ = describe(key, args)
        print(f"  {key:<58} {_format(value, unit):>14} {unit}", flush=True)
    args.result.write_text(json.dumps({"figures": values}))


def _first_cause(exc: BaseException) -> str:
    """The first leaf of an exception group (task groups wrap what failed), in one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def _format(value: float, unit: str) -> str:
    if unit in ("ms", "x"):
        return f"{value:,.3f}" if value < 10 else f"{value:,.1f}"
    if unit == "s":
        return f"{value:,.2f}"
    return f"{value:,.0f}"


# --- the summary ---------------------------------------------------------------------------


def table(figures: list[Figure]) -> list[list[str]]:
    rows = [["section", "figure", "value", "unit", "target", "x target", "met"]]
    for f in figures:
        ratio = "" if f.ratio is None else f"{f.ratio:,.2f}"
        met = "" if f.met is None else ("yes" if f.met else "NO")
        rows.append([f.section, f.name, _format(f.value, f.unit), f.unit, f.target, ratio, met])
    return rows


def markdown(report: Report) -> str:
    lines = [f"Machine: {', '.join(f'{k} {v}' for k, v in report.machine.items())}.", ""]
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items())
    lines += [f"Settings: {settings}.", ""]
    rows = table(report.figures)
    lines.append("| " + " | ".join(rows[0]) + " |")
    lines.append("|" + "|".join(["---", "---", "---:", "---", "---", "---:", "---"]) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines += [f"| {name} | failed: {why} | | | | | |" for name, why in report.failed.items()]
    return "\n".join(lines) + "\n"


def plain(report: Report) -> str:
    rows = table(report.figures)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {2, 5}
    out = []
    for row in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    out += [f"{name}: FAILED ({why})" for name, why in report.failed.items()]
    return "\n".join(out)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    keys: tuple[str, ...] = ("events", "sustained_events", "repeat", "workers", "tasks")
    keys += ("samples", "rate", "latency_seconds")
    keys += ("rebuild_events", "rebuild_batch_size", "quick")
    return {k: getattr(args, k) for k in keys}


def driver(args: argparse.Namespace, argv: list[str]) -> int:
    header = machine()
    print(f"workledger benchmarks, {header['date']}")
    for key, value in header.items():
        print(f"  {key}: {value}")
    values: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    for name in args.only or list(SECTIONS):
        print(f"\n[{name}]", flush=True)
        began = time.perf_counter()
        try:
            values[name] = run_section(name, args, argv)
        except (RuntimeError, OSError, ValueError) as exc:
            failed[name] = str(exc)
            print(f"  FAILED: {exc}")
        print(f"  ({time.perf_counter() - began:,.1f} s)", flush=True)
    everything = {k: v for section in values.values() for k, v in section.items()}
    values["ratios"] = ratios(everything)
    figures = [f for name, found in values.items() for f in figures_of(name, found, args)]
    report = Report(machine=header, settings=settings_of(args), figures=figures, failed=failed)
    print("\nSummary\n")
    print(plain(report))
    _write(report, args.out)
    return 1 if failed else 0


def _write(report: Report, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_bytes(msgspec.json.format(msgspec.json.encode(report)))
    (out / "latest.md").write_text(markdown(report))
    print(f"\nwritten: {out / 'latest.json'}, {out / 'latest.md'}")


QUICK = {
    "events": 2000,
    "sustained_events": 2000,
    "repeat": 1,
    "workers": 1000,
    "tasks": 5000,
    "samples": 10,
    "rate": 2000.0,
    "latency_seconds": 1.0,
    "rebuild_events": 5000,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument(
        "--only", action="append", choices=list(SECTIONS), help="run this section (repeatable)"
    )
    parser.add_argument("--events", type=int, default=200_000, help="decode, fold, publish, e2e")
    parser.add_argument(
        "--sustained-events", type=int, default=1_000_000, help="e2e-envelopes, sustained"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--workers", type=int, default=100_000, help="queries and memory")
    parser.add_argument("--tasks", type=int, default=1_000_000, help="queries and memory")
    parser.add_argument("--samples", type=int, default=200, help="calls per query")
    parser.add_argument("--rate", type=float, default=10_000.0, help="latency: events/s offered")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="latency: duration")
    parser.add_argument("--rebuild-events", type=int, default=REBUILD_TARGET_EVENTS)
    parser.add_argument("--rebuild-dir", type=Path, default=None, help="default: the temp dir")
    parser.add_argument(
        "--rebuild-batch-size",
        type=int,
        default=None,
        help="events per message in the replayed stream (default 100: the SDK's envelopes)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    parser.add_argument("--section", choices=list(SECTIONS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv}
        for key, value in QUICK.items():
            if key not in given:
                setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.section:
        child(args)
        return
    sys.exit(driver(args, argv))


if __name__ == "__main__":
    main()
