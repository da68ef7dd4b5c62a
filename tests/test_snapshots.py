"""In-memory snapshots taken in steps while batches go on folding: a restart from one, plus
the replay from its checkpoint, gives the store that never stopped."""

from __future__ import annotations

import tempfile
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workledger.core import events as ev
from workledger.core.errors import StoreError
from workledger.stores.base import Batch, Sequenced
from workledger.stores.memory import MemoryStore, write_snapshot

from .test_store_contract import answers, batched, t


def _restored(data: bytes, batches: list[Batch]) -> MemoryStore:
    """A store loaded from ``data``, then given the whole stream again (as a restarted daemon
    is: it skips what the snapshot's checkpoint covers)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.snapshot"
        write_snapshot(path, data)
        store = MemoryStore.load(path)
    for each in batches:
        store.apply(each)
    return store


@settings(max_examples=150, deadline=None)
@given(case=batched(), data=st.data())
def test_a_snapshot_taken_while_batches_fold_restores_the_store_that_never_stopped(
    case: tuple[list[ev.Event], list[Batch]], data: st.DataObject
) -> None:
    """Batches folded between any two steps of the snapshot (records read one or two at a
    time) are replayed on restart: nothing lost, nothing counted twice."""
    _, batches = case
    live = MemoryStore()
    before = data.draw(st.integers(0, len(batches)), label="batches before the snapshot")
    for each in batches[:before]:
        live.apply(each)
    pending = iter(batches[before:])
    snapshot = None
    for step in live.dump_in_steps(per_step=data.draw(st.integers(1, 2), label="per step")):
        snapshot = step
        if step is None and data.draw(st.booleans(), label="a batch between two steps"):
            for each in pending:
                live.apply(each)
                break
    for each in pending:
        live.apply(each)
    assert snapshot is not None
    restored = _restored(snapshot, batches)
    assert answers(restored) == answers(live)
    assert restored.read_model() == live.read_model()
    assert restored.stats() == live.stats()


def test_a_snapshot_in_the_first_format_still_loads() -> None:
    """Format 1 (one ``events`` list, before snapshots were taken in steps) is read as before."""
    events = [
        ev.TaskSubmitted(task="t", pool="p", queue="q", id="a", at=t(1)),
        ev.TaskCompleted(task="t", id="b", at=t(2)),
    ]
    old = {"format": 1, "checkpoint": 2, "applied": 2, "quarantined_total": 0}
    data = msgspec.msgpack.encode({**old, "events": events, "quarantine": []})
    store = _restored(data, [])
    view = store.task("t")
    assert view is not None
    assert (view.status.value, store.stats().checkpoint, store.stats().applied) == (
        "COMPLETED",
        2,
        2,
    )


def test_a_damaged_snapshot_is_a_clear_error_naming_its_file(tmp_path: Path) -> None:
    """Cut short, or with a part that holds no events: StoreError with the path, not a crash
    deep in the fold (the daemon stops with that line; the stream still holds everything)."""
    store = MemoryStore()
    submitted = ev.TaskSubmitted(task="t", pool="p", queue="q", id="a", at=t(1))
    store.apply(Batch(events=[Sequenced(1, "s", submitted)], last_seq=1))
    whole = store.dump()
    head = {"checkpoint": 1, "applied": 1, "quarantined_total": 0, "quarantine": []}
    no_events = msgspec.Raw(msgspec.msgpack.encode([1, 2]))
    not_events = msgspec.msgpack.encode({**head, "parts": [no_events]})
    for name, data in (("cut", whole[: len(whole) // 2]), ("parts", not_events)):
        path = tmp_path / f"{name}.snapshot"
        path.write_bytes(data)
        with pytest.raises(StoreError, match=f"cannot read snapshot .*{name}.snapshot"):
            MemoryStore.load(path)
