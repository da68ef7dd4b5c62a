"""Reading JetStream's answer to a publish: stored, retry, or refused for good.

We read the replies ourselves instead of using nats-py's ``publish_async``: in nats-py 2.16
an API error in the reply raises inside its subscription callback, so that future never
resolves and the error only reaches the connection's error callback.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import msgspec

__all__ = ["Verdict", "read_reply"]

_NO_RESPONDERS = "503"
_UNAVAILABLE = 503  # JetStream busy or electing a leader: worth another try


class Verdict(enum.Enum):
    """What a reply means for the event."""

    STORED = "stored"
    NO_STREAM = "no stream"  # no stream listens on the subject (yet, or at all)
    RETRY = "retry"
    REFUSED = "refused"


class Reply(NamedTuple):
    """A verdict, the stream sequence when stored, and the server's words otherwise."""

    verdict: Verdict
    seq: int = 0
    reason: str = ""


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    seq: int = 0
    error: _ApiError | None = None


_decoder = msgspec.json.Decoder(_PubAck)


def read_reply(data: bytes, status: str | None) -> Reply:
    """Classify the reply to one publish (``status`` is its ``Status`` header, if any)."""
    if status == _NO_RESPONDERS:
        return Reply(Verdict.NO_STREAM, reason="no stream stores this subject")
    try:
        ack = _decoder.decode(data)
    except msgspec.DecodeError:
        return Reply(Verdict.RETRY, reason=f"unreadable reply {data[:80]!r}")
    if ack.error is None:
        return Reply(Verdict.STORED, seq=ack.seq)
    error = ack.error
    reason = f"{error.description} (code {error.code}/{error.err_code})"
    verdict = Verdict.RETRY if error.code == _UNAVAILABLE else Verdict.REFUSED
    return Reply(verdict, reason=reason)
