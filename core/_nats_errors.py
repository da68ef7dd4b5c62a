"""Where nats-py's exceptions become workledger's (STYLE #8): callers never catch a nats type."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import nats.errors
import nats.js.errors

from workledger.core.errors import LogError, StreamNotFoundError

__all__ = ["describe", "translated"]

# Raised by nats-py when JetStream does not answer: not enabled, or not there yet.
_NO_JETSTREAM = (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError)


def describe(exc: BaseException) -> str:
    """One line a person can act on, without nats-py's class-name noise."""
    if isinstance(exc, nats.js.errors.APIError):
        return f"{exc.description or 'JetStream API error'} (code {exc.code}/{exc.err_code})"
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return "no stream stores this subject"
    if isinstance(exc, nats.errors.TimeoutError | asyncio.TimeoutError):
        return "timed out waiting for the server"
    text = str(exc).removeprefix("nats: ")
    return text or type(exc).__name__


@contextmanager
def translated(action: str, *, stream: str | None = None) -> Iterator[None]:
    """Re-raise any nats-py error inside the block as a :class:`LogError` naming ``action``.

    A 404 becomes :class:`StreamNotFoundError` when ``stream`` names the stream asked for.
    """
    try:
        yield
    except nats.js.errors.NotFoundError as exc:
        if stream is not None:
            raise StreamNotFoundError(f"{action}: stream {stream!r} does not exist") from exc
        raise LogError(f"{action}: {describe(exc)}") from exc
    except _NO_JETSTREAM as exc:
        raise LogError(f"{action}: JetStream did not answer (is it enabled?)") from exc
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise LogError(f"{action}: {describe(exc)}") from exc
