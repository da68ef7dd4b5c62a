"""workledger's exceptions: callers never need to catch a nats-py or DuckDB type.

::

    WorkledgerError
    ├── InvalidEventError      an event that does not decode or validate
    ├── LogError               the log (NATS JetStream) refused or is unreachable
    │   ├── StreamNotFoundError
    │   ├── PublishError       an event could not be stored, after retries
    │   ├── GapError           messages the read models need are gone (retention)
    │   └── NatsServerError    the embedded nats-server did not start
    ├── StoreError             a read-model store failed
    └── DaemonUnavailableError the CLI could not reach a running daemon
"""

from __future__ import annotations

__all__ = [
    "DaemonUnavailableError",
    "GapError",
    "InvalidEventError",
    "LogError",
    "NatsServerError",
    "PublishError",
    "StoreError",
    "StreamNotFoundError",
    "WorkledgerError",
]


class WorkledgerError(Exception):
    """Base of every error workledger raises on purpose."""


class InvalidEventError(WorkledgerError, ValueError):
    """Raised when bytes or a dict are not a valid event; the message says why."""


class LogError(WorkledgerError):
    """Raised when the log (NATS JetStream) cannot do what was asked."""


class StreamNotFoundError(LogError):
    """Raised when the configured stream does not exist on the server."""


class PublishError(LogError):
    """Raised when an event could not be stored in the stream, after every retry."""


class GapError(LogError):
    """Raised when messages the read models have not applied are gone from the stream (its
    age or size limit removed them first), or the stream is behind the read models."""


class NatsServerError(LogError):
    """Raised when the embedded nats-server cannot be found or does not start."""


class StoreError(WorkledgerError):
    """Raised when a read-model store cannot read or write."""


class DaemonUnavailableError(WorkledgerError):
    """Raised when no daemon answers at the configured address."""
