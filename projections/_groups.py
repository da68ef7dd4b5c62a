"""Task groups raise ExceptionGroups; callers of workledger should see one plain error.

anyio wraps whatever a task raises in an ExceptionGroup, even a single error. A caller that
catches :class:`~workledger.core.errors.WorkledgerError` (the CLI turns it into one line)
would miss it and print a traceback instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio

from workledger.core.errors import WorkledgerError

__all__ = ["plain_errors"]


@asynccontextmanager
async def plain_errors() -> AsyncIterator[None]:
    """Re-raise a group whose only errors are workledger errors as the first of them.

    Asynchronous only so that it shares one line with the task group it unwraps::

        async with plain_errors(), anyio.create_task_group() as tg: ...
    """
    try:
        yield
    except BaseExceptionGroup as group:
        errors = [e for e in _leaves(group) if not isinstance(e, _cancelled())]
        if errors and all(isinstance(e, WorkledgerError) for e in errors):
            raise errors[0] from group
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            yield from _leaves(error)
        else:
            yield error


def _cancelled() -> type[BaseException]:
    return anyio.get_cancelled_exc_class()
