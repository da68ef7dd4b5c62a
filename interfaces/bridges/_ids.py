"""Deterministic event ids for bridges, so two bridges relaying the same source store it once.

An id made from the source event's identity (and shaped like a UUIDv7, time-ordered by the
source's timestamp) is the same whichever bridge computes it; JetStream's duplicate window
then drops the second copy, which makes running a spare bridge safe.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime

__all__ = ["stable_id"]

_MS_BITS = (1 << 48) - 1
_RAND_B_BITS = (1 << 62) - 1


def stable_id(at: datetime, *parts: object) -> str:
    """A UUIDv7-shaped id: ``at`` in milliseconds, then 74 bits of a digest of ``parts``."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=10).digest()
    millis = int(at.timestamp() * 1000) & _MS_BITS
    rand_a = int.from_bytes(digest[:2], "big") & 0xFFF
    rand_b = int.from_bytes(digest[2:], "big") & _RAND_B_BITS
    value = millis << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return str(uuid.UUID(int=value))
