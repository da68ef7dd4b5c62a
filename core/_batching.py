"""The publisher's envelopes: accepted events wait per pool until one message carries them.

Pure bookkeeping, no I/O: :class:`Buffers` says which messages to send (:class:`Sealed`) and
when a pool's linger timer must run; :mod:`workledger.core.publisher` sends them. The wire
format is :func:`workledger.core.codec.pack` (docs/wire.md#envelopes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import NamedTuple

from workledger.core import codec
from workledger.core.events import Event
from workledger.core.log import envelope_subject, subject_for

__all__ = ["Buffers", "Item", "Sealed"]

# What the envelope adds around its events' bytes, generously: a map header, "type",
# "envelope", "events" and an array header (msgpack), or the same in JSON; plus a comma each.
_ENVELOPE_OVERHEAD = 64


class Item(NamedTuple):
    """One accepted event, encoded, with whoever waits for its stream sequence."""

    event: Event
    data: bytes
    waiter: asyncio.Future[int] | None


class Sealed(NamedTuple):
    """One message to send: a lone event as today, or an envelope of several."""

    items: list[Item]
    subject: str
    data: bytes
    msg_id: str

    def describe(self) -> str:
        """How errors name it: the event, or the envelope with its first and last event."""
        if len(self.items) == 1:
            return f"event {self.items[0].event.id}"
        first, last = self.items[0].event.id, self.items[-1].event.id
        return f"envelope of {len(self.items)} events ({first} .. {last})"


class _Pool:
    __slots__ = ("items", "size", "timer")

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.size = _ENVELOPE_OVERHEAD
        self.timer: asyncio.TimerHandle | None = None


class Buffers:
    """Events waiting for their envelope, one buffer per pool (an envelope holds one pool).

    A buffer is sealed when it holds ``batch_size`` events, when the next event would take it
    over ``max_bytes``, or when its linger timer (started by its first event) calls
    ``on_linger(pool)``. A buffer sealed with one event is sent as that event alone.
    """

    def __init__(
        self,
        prefix: str,
        encoding: codec.Encoding,
        *,
        batch_size: int,
        linger: float,
        on_linger: Callable[[str | None], None],
    ) -> None:
        self.prefix = prefix
        self.encoding = encoding
        self.batch_size = batch_size
        self.linger = linger
        self.max_bytes = codec.MAX_ENVELOPE_BYTES  # the publisher lowers it to the server's
        self._on_linger = on_linger
        self._pools: dict[str | None, _Pool] = {}

    def __len__(self) -> int:
        """Events waiting in buffers."""
        return sum(len(pool.items) for pool in self._pools.values())

    def add(self, item: Item) -> Sequence[Sealed]:
        """Take an event; return the messages this seals (none, one, or two)."""
        if self.batch_size == 1:
            return (self._single(item),)
        key = item.event.pool_key
        pool = self._pools.get(key)
        size = len(item.data) + 1
        if pool is None or pool.size + size > self.max_bytes:
            return self._add_to_new(key, pool, item, size)
        items = pool.items  # the usual case, kept short: once per published event
        items.append(item)
        pool.size += size
        return (self._seal(key, pool),) if len(items) >= self.batch_size else ()

    def _add_to_new(
        self, key: str | None, full: _Pool | None, item: Item, size: int
    ) -> list[Sealed]:
        """Start the pool's next buffer with ``item``, sealing the one it would overflow."""
        sealed = [self._seal(key, full)] if full is not None else []
        pool = self._pools[key] = _Pool()
        pool.timer = asyncio.get_running_loop().call_later(self.linger, self._on_linger, key)
        pool.items.append(item)
        pool.size += size
        if len(pool.items) >= self.batch_size:
            sealed.append(self._seal(key, pool))
        return sealed

    def seal(self, key: str | None) -> Sealed | None:
        """Seal one pool's buffer now (its linger is over), if it holds anything."""
        pool = self._pools.get(key)
        return self._seal(key, pool) if pool is not None else None

    def seal_all(self) -> list[Sealed]:
        """Seal every buffer (flush, close)."""
        return [self._seal(key, pool) for key, pool in list(self._pools.items())]

    def _seal(self, key: str | None, pool: _Pool) -> Sealed:
        del self._pools[key]
        if pool.timer is not None:
            pool.timer.cancel()
        if len(pool.items) == 1:
            return self._single(pool.items[0])
        data = codec.pack([item.data for item in pool.items], self.encoding)
        msg_id = codec.envelope_id(item.event.id for item in pool.items)
        return Sealed(pool.items, envelope_subject(self.prefix, key), data, msg_id)

    def _single(self, item: Item) -> Sealed:
        return Sealed([item], subject_for(self.prefix, item.event), item.data, item.event.id)
