"""The command line as a user types it, against real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from workledger.core.log import LogConfig

from .conftest import read_all, run_in_thread
from .test_daemon_process import WORKLEDGER, daemon


def workledger(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run the CLI to completion."""
    return subprocess.run(
        [WORKLEDGER, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def nats_args(config: LogConfig) -> list[str]:
    return [
        "--nats",
        config.servers[0],
        "--stream",
        config.stream,
        "--subject-prefix",
        config.subject_prefix,
    ]


LINES = (
    "\n".join(
        [
            '{"type": "worker.started", "worker": "w 1", "pool": "etl", "slots": 2,'
            ' "task_keys": ["k"]}',
            "this is not json",
            '{"type": "task.submitted", "task": "job/1", "pool": "etl", "queue": "q"}',
            "",
            '{"type": "task.teleported", "task": "job/1"}',
            '{"type": "task.claimed", "task": "job/1", "worker": "w 1"}',
            '{"type": "task.claimed", "task": "job/2"}',
        ]
    )
    + "\n"
)


def test_publish_reports_each_bad_line_and_still_publishes_the_good_ones(
    log_stream: LogConfig,
) -> None:
    """Bad lines go to stderr with their number and reason; exit code 1; good lines land."""
    result = workledger("publish", *nats_args(log_stream), stdin=LINES)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("line ")]
    assert [e.split(":")[0] for e in errors] == ["line 2", "line 5", "line 7"]
    assert "unknown event type 'task.teleported'" in errors[1]
    assert "missing required field `worker`" in errors[2]
    stored = run_in_thread(read_all, log_stream)
    assert [m.event.type for m in stored] == ["worker.started", "task.submitted", "task.claimed"]
    assert all(m.msg_id == m.event.id and m.event.at is not None for m in stored)


def test_publish_exits_zero_when_every_line_is_valid(log_stream: LogConfig) -> None:
    """A clean file is a clean exit."""
    good = "\n".join(line for line in LINES.splitlines() if line.startswith('{"type": "worker'))
    assert workledger("publish", *nats_args(log_stream), stdin=good).returncode == 0


def test_query_commands_answer_from_a_running_daemon_as_tables_and_json(
    log_stream: LogConfig, tmp_path: Path
) -> None:
    """workers, slots, tasks and task read the daemon's API; --json is machine output."""
    workledger("publish", *nats_args(log_stream), stdin=LINES)
    with daemon(log_stream, tmp_path) as (_, client):
        client.health(wait_for=3, timeout=10)
        api = ["--api", client.base_url]
        workers = json.loads(workledger("workers", "--json", "--task-key", "k", *api).stdout)
        assert [(w["worker"]["worker"], w["free_slots"], w["tasks"]) for w in workers] == [
            ("w 1", 1, ["job/1"])
        ]
        assert json.loads(workledger("workers", "--json", "--task-key", "zz", *api).stdout) == []
        slots = json.loads(workledger("slots", "--json", "--pool", "etl", *api).stdout)
        assert [(h["task"], h["worker"], h["status"]) for h in slots["holders"]] == [
            ("job/1", "w 1", "PENDING")
        ]
        assert slots["counts"] == [
            {"pool": "etl", "queue": None, "held": 1},
            {"pool": "etl", "queue": "q", "held": 1},
        ]
        pending = json.loads(workledger("tasks", "--status", "PENDING", "--json", *api).stdout)
        assert [t["task"] for t in pending] == ["job/1"]
        for option, value, found in [
            ("--worker", "w 1", ["job/1"]),
            ("--worker", "w 2", []),
            ("--pool", "etl", ["job/1"]),
            ("--queue", "q", ["job/1"]),
            ("--queue", "other", []),
        ]:
            asked = json.loads(workledger("tasks", option, value, "--json", *api).stdout)
            assert ([t["task"] for t in asked], option, value) == (found, option, value)
        assert json.loads(workledger("task", "job/1", "--json", *api).stdout)["worker"] == "w 1"
        table = workledger("workers", *api).stdout
        assert "w 1" in table
        assert "ONLINE" in table
        missing = workledger("task", "nope", *api)
        assert (missing.returncode, "no task 'nope'" in missing.stderr) == (1, True)


def test_query_commands_say_clearly_when_no_daemon_answers() -> None:
    """No traceback: one line that says what to do."""
    result = workledger("workers", "--api", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "no workledger daemon at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_up_runs_nats_the_daemon_and_the_demo_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """`workledger up --demo` is the `make run` experience: it answers, then stops cleanly."""
    proc = subprocess.Popen(
        [
            WORKLEDGER,
            "up",
            "--demo",
            "--nats-port",
            "0",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        api = next(line.split()[1] for line in lines if line.strip().startswith("API"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = workledger("workers", "--json", "--api", api)
            if found.returncode == 0 and len(json.loads(found.stdout)) >= 10:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the demo's workers never showed up")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert (tmp_path / "nats" / "jetstream").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
