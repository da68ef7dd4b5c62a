"""Partitions by pool: the filter subjects a daemon uses select exactly its pools' events."""

from __future__ import annotations

from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from workledger.cli import main
from workledger.core import events as ev
from workledger.core.log import subject_for
from workledger.projections.partitions import UNPOOLED, KnownTasks, pool_subjects, split_pools
from workledger.stores.base import Batch, Sequenced


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


def _task_events(draws: list[tuple[int, bool]]) -> list[Sequenced]:
    """Events of tasks ``t<n>``, each in pool ``etl`` or without a pool, a worker's between."""
    events: list[ev.Event] = []
    for task, pooled in draws:
        events.append(ev.TaskCompleted(task=f"t{task}", pool="etl" if pooled else None))
        events.append(ev.WorkerHeartbeat(worker="w", pool="etl"))
    return [Sequenced(seq, "wl.x", event) for seq, event in enumerate(events, 1)]


def _admitted(known: KnownTasks, items: list[Sequenced], size: int) -> list[int]:
    kept = []
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        batch, skipped = known.admit(Batch(events=chunk, last_seq=chunk[-1].seq))
        assert skipped == len(chunk) - len(batch.events)
        kept += [item.seq for item in batch.events]
    return kept


def test_a_partition_keeps_pool_less_task_events_of_tasks_its_pools_named_before() -> None:
    """A pool-less event before the task's first pooled one, or of a task never pooled, is
    another partition's; every event with a pool, and every non-task event, is kept."""
    items = _task_events([(1, False), (1, True), (1, False), (2, False), (3, True)])
    known = KnownTasks()
    assert _admitted(known, items, len(items)) == [2, 3, 4, 5, 6, 8, 9, 10]
    assert [task in known for task in ("t1", "t2", "t3")] == [True, False, True]


@given(
    draws=st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=40),
    size=st.integers(1, 80),
    cut=st.integers(0, 80),
)
def test_what_a_partition_keeps_does_not_depend_on_batches_or_where_it_resumed(
    draws: list[tuple[int, bool]], size: int, cut: int
) -> None:
    """Batched any way, or resumed at any point from the tasks kept so far, it keeps what one
    pass over the whole stream keeps: so a rebuild or a restart keeps what the live daemon did."""
    items = _task_events(draws)
    whole = _admitted(KnownTasks(), items, len(items))
    assert _admitted(KnownTasks(), items, size) == whole
    cut = min(cut, len(items))
    before = _admitted(KnownTasks(), items[:cut], size)
    held = {items[seq - 1].event.task for seq in before if hasattr(items[seq - 1].event, "task")}
    assert before + _admitted(KnownTasks(held), items[cut:], size) == whole
