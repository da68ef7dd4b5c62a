"""Where the daemon stands against the stream: gone, behind, or past what the stream still holds.

The read models are exact only if every message after their checkpoint is applied. Three things
break that, and each must be said plainly instead of folding on as if nothing happened:

- the stream was deleted while the daemon read it;
- the stream holds fewer messages than the read models applied (deleted and recreated, or
  another stream under the same name);
- messages the read models lack expired (the stream's age or size limit) before they were read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nats.aio.msg import Msg

from workledger.core.errors import GapError, StreamNotFoundError
from workledger.core.log import LogConfig, stream_info

__all__ = ["check_not_behind", "expired", "gap_error", "skipped", "stream_seq", "stream_state"]

_RECOVERY = (
    "the read models cannot be completed from this stream. Accept the loss and carry on with "
    "`workledger project --allow-gap` (the missing count is the `missed` metric); "
    "`workledger rebuild` rebuilds the DuckDB file from the oldest message the stream holds"
)

_ACK_PREFIX = f"{Msg.Ack.Prefix0}.{Msg.Ack.Prefix1}."
_V1_TOKENS, _V1_STREAM_SEQ, _V2_MIN_TOKENS = 9, 5, 11  # as nats-py's Msg.Metadata reads them


async def stream_state(js: Any, config: LogConfig) -> Any:
    """The stream's state (``first_seq``, ``last_seq``, ``messages``).

    :raises StreamNotFoundError: saying the stream is gone and what to do.
    """
    try:
        return (await stream_info(js, config)).state
    except StreamNotFoundError:
        raise StreamNotFoundError(
            f"stream {config.stream!r} no longer exists (deleted while the daemon read it?); "
            "the daemon stops rather than fold a log that is gone. If it was deleted on "
            "purpose, move the daemon's data dir aside before starting it again"
        ) from None


def stream_seq(msg: Any) -> int:
    """A JetStream message's stream sequence, read from its reply subject alone.

    nats-py's ``msg.metadata`` parses every field (a datetime, two dataclasses) at about ten
    times the cost, once per message on the daemon's hot path. The reply is
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...`` (9 tokens), or with a domain and
    an account hash (11 or more); anything else goes through ``metadata``, which says what is
    wrong with it.
    """
    reply = getattr(msg, "reply", None)
    if reply and reply.startswith(_ACK_PREFIX):
        tokens = reply.split(".")
        if len(tokens) == _V1_TOKENS:
            return int(tokens[_V1_STREAM_SEQ])
        if len(tokens) >= _V2_MIN_TOKENS:
            return int(tokens[Msg.Ack.StreamSeq])
    return int(msg.metadata.sequence.stream)


def check_not_behind(state: Any, checkpoint: int, stream: str) -> None:
    """The stream must reach the read models' checkpoint.

    :raises GapError: if it ends before it (it was recreated, or it is another stream).
    """
    if int(state.last_seq) < checkpoint:
        raise GapError(
            f"stream {stream!r} ends at sequence {state.last_seq} but the read models already "
            f"applied up to {checkpoint}: it was deleted and recreated, or is another stream. "
            "Move the daemon's data dir aside (or point it at the right stream) and start again"
        )


def expired(state: Any, received: int) -> tuple[int, int] | None:
    """The sequences after ``received`` that the stream no longer holds, as ``(first, last)``."""
    first = int(state.first_seq)
    return (received + 1, first - 1) if first > received + 1 else None


def skipped(done: int, seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Holes in a run of delivered sequences that should follow ``done`` one by one."""
    holes = []
    previous = done
    for seq in seqs:
        if seq > previous + 1:
            holes.append((previous + 1, seq - 1))
        previous = max(previous, seq)
    return holes


def gap_error(stream: str, first: int, last: int) -> GapError:
    """The error for messages ``first..last`` gone before they were applied."""
    count = last - first + 1
    return GapError(
        f"stream {stream!r} no longer holds messages {first}..{last} ({count} messages, "
        f"removed by its age or size limit before the daemon read them): {_RECOVERY}"
    )
