"""Partitions by pool: the filter subjects a daemon uses select exactly its pools' events."""

from __future__ import annotations

from click.testing import CliRunner

from workledger.cli import main
from workledger.core import events as ev
from workledger.core.log import subject_for
from workledger.projections.partitions import UNPOOLED, pool_subjects, split_pools


def _selects(filter_subject: str, subject: str) -> bool:
    """NATS matching for the one shape we generate: literal tokens, then ``>``."""
    head = filter_subject.removesuffix(">").split(".")[:-1]
    return subject.split(".")[: len(head)] == head


def test_a_pool_filter_selects_that_pools_events_and_no_other_pool() -> None:
    """``ml.gpu`` is encoded like the publisher encodes it, so ``ml`` is not selected."""
    (gpu,) = pool_subjects("wl", ["ml.gpu"])
    assert gpu == "wl.~bWwuZ3B1.>"
    assert _selects(gpu, subject_for("wl", ev.WorkerHeartbeat(worker="w", pool="ml.gpu")))
    assert not _selects(gpu, subject_for("wl", ev.WorkerHeartbeat(worker="w", pool="ml")))


def test_task_events_without_a_pool_fall_outside_every_pool_filter() -> None:
    """They route under ``_``, which is why the instrumentation always sends the pool."""
    subject = subject_for("wl", ev.TaskCompleted(task="t"))
    assert subject.split(".")[1] == UNPOOLED
    assert not any(_selects(f, subject) for f in pool_subjects("wl", ["etl", "_"]))


def test_the_pools_option_is_a_comma_separated_list_that_tolerates_blanks() -> None:
    """Spaces inside a name are kept; blank entries vanish; duplicates collapse to one filter."""
    assert split_pools(" etl, web hooks,, ") == ("etl", "web hooks")
    assert split_pools("") == ()
    assert pool_subjects("wl", ["etl", "etl"]) == ("wl.etl.>",)


def test_every_daemon_command_offers_pools_and_replicas_with_environment_variables() -> None:
    """Compose configures daemons through WORKLEDGER_POOLS and WORKLEDGER_REPLICAS."""
    for command in ("project", "up"):
        params = {p.name: p for p in main.commands[command].params}
        assert params["pools"].envvar == "WORKLEDGER_POOLS"
        assert params["replicas"].envvar == "WORKLEDGER_REPLICAS"
    result = CliRunner().invoke(main, ["project", "--replicas", "0"])
    assert result.exit_code == 2, "a stream has at least one replica"
