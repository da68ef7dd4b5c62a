"""Test helpers: a projector on a real stream, and waiting until it has read everything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from workledger.core.log import LogConfig, connect, stream_info
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.stores.memory import MemoryStore


@asynccontextmanager
async def projecting(
    config: LogConfig, filter_subjects: tuple[str, ...] = (), *, pools: tuple[str, ...] = ()
) -> AsyncIterator[tuple[Projector, MemoryStore]]:
    """A projector folding ``config``'s stream into a fresh MemoryStore for the block."""
    store = MemoryStore()
    settings = ProjectorConfig(log=config, filter_subjects=filter_subjects, pools=pools)
    projector = Projector(settings, [store])
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)
        yield projector, store
        tg.cancel_scope.cancel()


async def last_seq(config: LogConfig) -> int:
    """The stream's last sequence now."""
    nc = await connect(config)
    try:
        return int((await stream_info(nc.jetstream(), config)).state.last_seq)
    finally:
        await nc.close()


async def caught_up(config: LogConfig, projector: Projector, timeout: float = 10) -> None:  # noqa: ASYNC109
    """Wait until the projector has applied everything the stream holds now."""
    assert await projector.wait_for(await last_seq(config), timeout=timeout), "projector lags"
