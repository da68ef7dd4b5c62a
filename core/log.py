"""The log: one JetStream stream, its subject layout, and the connection to it.

Subjects carry the routing keys so that consumers can filter and deployments can partition
projections by pool::

    <prefix>.<pool>.<family>.<entity>.<verb>       e.g. workledger.gpu.task.t-42.started

Names that are not valid subject tokens are encoded (see :func:`encode_token`), never rejected.
An envelope of several events (docs/wire.md#envelopes) holds one pool's events and goes to
``<prefix>.<pool>.envelope``, so a daemon that consumes ``<prefix>.<pool>.>`` still sees it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import hashlib
import logging
import re
from collections.abc import Sequence
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig, StreamInfo

from workledger.core._nats_auth import (
    auth_options,
    identity,
    is_auth_failure,
    is_tls_failure,
    uses_tls,
)
from workledger.core._nats_errors import describe, translated
from workledger.core.errors import LogError
from workledger.core.events import Event

__all__ = [
    "LogConfig",
    "connect",
    "decode_token",
    "encode_token",
    "ensure_stream",
    "envelope_pool",
    "envelope_subject",
    "last_sequence",
    "stream_info",
    "subject_for",
]

_log = logging.getLogger(__name__)

_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]+")
_INBOX_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_NONE_TOKEN = "_"  # noqa: S105 (a subject token, not a password)
_ENCODED = "~"
_DIGEST = "~~"
# A long token is replaced by a digest: NATS closes the connection when a protocol line
# exceeds 4 KiB, and one oversized subject must not take the publisher down with it.
_MAX_TOKEN = 128
_SECRETS = frozenset({"token", "password"})
_DISCARD_TIMEOUT = 1.0
_ENVELOPE = "envelope"  # the last token of an envelope's subject; no event verb is one


class LogConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where the log lives and how it is shaped. Every field has a working local default.

    Durations are in seconds. ``max_age``/``max_bytes`` of ``None`` mean unlimited.
    ``connect_timeout`` bounds the *initial* connect; after that the client reconnects forever
    and callers bound their own waits.
    """

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    stream: str = "WORKLEDGER"
    subject_prefix: str = "workledger"
    duplicate_window: float = 120.0
    max_age: float | None = None
    max_bytes: int | None = None
    replicas: int = 1
    name: str = "workledger"
    connect_timeout: float = 5.0
    reconnect_wait: float = 0.5
    # Who we are to NATS (docs/security.md): at most one of token, user+password, nkey, creds.
    token: str | None = None
    user: str | None = None
    password: str | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None
    # TLS: a CA to verify the server, our certificate and key for mutual TLS.
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_hostname: str | None = None
    tls_handshake_first: bool = False
    # Per-identity reply subjects, so permissions can keep one identity from reading another's.
    inbox_prefix: str = "_INBOX"
    # Signed events (docs/wire.md#signatures): the key this process signs with, the keys it trusts.
    sign_key_file: str | None = None
    verify_keys_dir: str | None = None

    def __repr__(self) -> str:
        """Every field, with secrets masked: configs end up in logs and tracebacks."""
        shown = (
            f"{name}={'***' if name in _SECRETS and value else repr(value)}"
            for name, value in msgspec.structs.asdict(self).items()
        )
        return f"LogConfig({', '.join(shown)})"

    def __post_init__(self) -> None:
        self._check_names()
        self._check_credentials()

    def _check_names(self) -> None:
        if not _STREAM_NAME.fullmatch(self.stream):
            raise ValueError(f"stream name {self.stream!r} may use only A-Z a-z 0-9 _ -")
        tokens = self.subject_prefix.split(".")
        if not all(_PLAIN_TOKEN.fullmatch(token) for token in tokens):
            raise ValueError(
                f"subject prefix {self.subject_prefix!r} must be dot-separated tokens of "
                "A-Z a-z 0-9 _ - (no wildcards)"
            )
        if not self.servers:
            raise ValueError("at least one NATS server URL is needed")
        if not _INBOX_PREFIX.fullmatch(self.inbox_prefix):
            raise ValueError(f"inbox prefix {self.inbox_prefix!r}: subject tokens, no wildcards")

    def _check_credentials(self) -> None:
        """One way to authenticate, complete: a half-configured one would fail obscurely later."""
        methods = [self.token, self.user, self.nkey_seed_file, self.creds_file]
        if sum(method is not None for method in methods) > 1:
            raise ValueError("configure at most one of NATS token, user, nkey and creds file")
        if (self.user is None) != (self.password is None):
            raise ValueError("a NATS user needs a password, and a password needs a user")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("a TLS client certificate needs its key, and the key its certificate")

    @property
    def subjects(self) -> str:
        """The stream's subject filter: every subject under the prefix."""
        return f"{self.subject_prefix}.>"


# --- subjects --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def encode_token(name: str | None) -> str:
    """One valid NATS subject token for any name; deterministic, so filters can use it too.

    ``None`` → ``_``; a plain name (``[A-Za-z0-9][A-Za-z0-9_-]*``) → itself; anything else →
    ``~`` + base64url (no padding) of its UTF-8; if that exceeds 128 characters, ``~~`` + a
    digest (which :func:`decode_token` cannot invert: read the name from the event).
    """
    if name is None:
        return _NONE_TOKEN
    if _PLAIN_TOKEN.fullmatch(name) and len(name) <= _MAX_TOKEN:
        return name
    raw = name.encode("utf-8", "surrogatepass")
    token = _ENCODED + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(token) <= _MAX_TOKEN:
        return token
    digest = hashlib.blake2b(raw, digest_size=24).digest()
    return _DIGEST + base64.urlsafe_b64encode(digest).decode("ascii")


def decode_token(token: str) -> str | None:
    """The name :func:`encode_token` encoded.

    :raises ValueError: for a digest token (``~~``) or text no encoder produced.
    """
    if token == _NONE_TOKEN:
        return None
    if token.startswith(_DIGEST):
        raise ValueError(f"token {token!r} is a digest of a long name and cannot be decoded")
    if token.startswith(_ENCODED):
        body = token[1:]
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        return raw.decode("utf-8", "surrogatepass")
    if _PLAIN_TOKEN.fullmatch(token):
        return token
    raise ValueError(f"{token!r} is not a workledger subject token")


def subject_for(prefix: str, event: Event) -> str:
    """The subject an event is stored under: ``<prefix>.<pool>.<family>.<entity>.<verb>``."""
    verb = event.type.partition(".")[2]
    pool, entity = encode_token(event.pool_key), encode_token(event.entity_key)
    return f"{prefix}.{pool}.{event.family}.{entity}.{verb}"


def envelope_subject(prefix: str, pool: str | None) -> str:
    """The subject of an envelope of ``pool``'s events: ``<prefix>.<pool>.envelope``."""
    return f"{prefix}.{encode_token(pool)}.{_ENVELOPE}"


def envelope_pool(subject: str) -> str | None:
    """The pool token of an envelope's subject, or None if it is no envelope subject.

    The token is compared with :func:`encode_token` of each event's pool, not decoded: a
    digest token cannot be.
    """
    rest, _, last = subject.rpartition(".")
    token = rest.rpartition(".")[2]
    return token if last == _ENVELOPE and token and "." in rest else None


# --- connection ------------------------------------------------------------------------------


class _Refused(Exception):
    """Raised from the error callback to end a first connect that retrying cannot fix."""


class _Callbacks:
    """nats-py's callbacks, saying one line per event instead of a traceback per attempt.

    While the connection is down, only the first failed attempt is logged as a warning;
    the rest go to debug until it is back. Before the first connect succeeds, a refusal of
    our credentials or a TLS failure ends the attempt at once (:class:`_Refused`): nats-py
    would otherwise retry the same credentials until the connect timeout.
    """

    def __init__(self, client: Client, config: LogConfig) -> None:
        self.client = client
        self.config = config
        self.servers = ", ".join(config.servers)
        self.connected = False
        self.quiet = False
        self.last_error: BaseException | None = None

    async def error(self, exc: Exception) -> None:
        self.last_error = exc
        if not self.connected and _fatal(exc):
            raise _Refused(self.refusal(exc))
        # Closing on purpose is not news: tasks nats-py still runs then (an ordered consumer's
        # flow-control reply) fail with "connection closed".
        closing = self.client.is_closed
        level = logging.DEBUG if self.quiet or not self.connected or closing else logging.WARNING
        _log.log(level, "NATS error at %s: %s", self.servers, self.describe(exc))
        self.quiet = self.quiet or isinstance(exc, OSError | nats.errors.Error)

    def describe(self, exc: BaseException) -> str:
        return self.refusal(exc) if _fatal(exc) else describe(exc)

    def refusal(self, exc: BaseException) -> str:
        """The one line a user needs when NATS will not let us in."""
        if is_auth_failure(exc):
            who, reason = identity(self.config), describe(exc).strip("'")
            return f"NATS refused the credentials for {who} at {self.servers}: {reason}"
        return f"TLS with NATS at {self.servers} failed: {describe(exc)}"

    async def disconnected(self) -> None:
        if self.connected and not self.client.is_closed:  # closing on purpose is not news
            _log.warning("disconnected from NATS at %s; reconnecting", self.servers)

    async def reconnected(self) -> None:
        self.quiet = False
        _log.warning("reconnected to NATS at %s", self.servers)

    async def closed(self) -> None:
        _log.debug("connection to NATS at %s closed", self.servers)


def _fatal(exc: BaseException) -> bool:
    return is_auth_failure(exc) or is_tls_failure(exc) or isinstance(exc, _TlsNotOffered)


async def connect(config: LogConfig) -> Client:
    """Connect to NATS with our callbacks; reconnects forever once connected.

    :raises LogError: "cannot reach NATS at ..." if no server answers within
        ``config.connect_timeout``; "NATS refused the credentials for ..." or "TLS with NATS
        at ... failed" at once when retrying cannot help.
    """
    client = _StrictTlsClient(require_tls=uses_tls(config))
    callbacks = _Callbacks(client, config)
    options = _connect_options(config, callbacks)
    try:
        await asyncio.wait_for(client.connect(**options), config.connect_timeout)
    except _Refused as exc:
        await _discard(client)
        raise LogError(str(exc)) from None
    except (OSError, nats.errors.Error, TimeoutError, ValueError) as exc:
        await _discard(client)
        reason = describe(callbacks.last_error or exc)
        raise LogError(f"cannot reach NATS at {callbacks.servers}: {reason}") from None
    callbacks.connected = True
    return client


class _TlsNotOffered(nats.errors.Error):
    """The server did not ask for TLS although we require it."""

    def __str__(self) -> str:
        return "the server does not offer TLS, but TLS is configured; not sending credentials"


class _StrictTlsClient(Client):
    """nats-py upgrades to TLS only when the server asks for it, so a server (or anyone in
    between) that does not ask would receive our CONNECT, credentials included, in the
    clear. When TLS is configured, this refuses to send CONNECT over plaintext."""

    def __init__(self, *, require_tls: bool) -> None:
        super().__init__()
        self._require_tls = require_tls

    def _connect_command(self) -> bytes:
        info = self._server_info or {}
        offered = info.get("tls_required") or self.options.get("tls_handshake_first")
        if self._require_tls and not offered:
            raise _TlsNotOffered
        command: bytes = super()._connect_command()
        return command


def _connect_options(config: LogConfig, callbacks: _Callbacks) -> dict[str, Any]:
    return {
        "servers": list(config.servers),
        "name": config.name,
        "error_cb": callbacks.error,
        "disconnected_cb": callbacks.disconnected,
        "reconnected_cb": callbacks.reconnected,
        "closed_cb": callbacks.closed,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": config.reconnect_wait,
        "connect_timeout": config.connect_timeout,
        **auth_options(config),
    }


async def _discard(client: Client) -> None:
    """Close a client whose first connect failed, whatever state it was left in.

    Bounded: after a failed TLS handshake nats-py waits for the plaintext stream, which
    asyncio handed to the TLS layer, to close, and that never happens.
    """
    try:
        await asyncio.wait_for(client.close(), _DISCARD_TIMEOUT)
    except (OSError, nats.errors.Error, AttributeError, AssertionError, TimeoutError, _Refused):
        # _Refused: closing reports the same TLS failure to the error callback once more.
        _log.debug("closing a client that never connected failed", exc_info=True)


# --- the stream ------------------------------------------------------------------------------


async def stream_info(js: JetStreamContext, config: LogConfig) -> StreamInfo:
    """The stream's configuration and state (``.state.last_seq``, ``.state.messages``).

    :raises StreamNotFoundError: if the configured stream does not exist.
    """
    with translated(f"reading stream {config.stream!r}", stream=config.stream):
        return await js.stream_info(config.stream)


async def last_sequence(
    js: JetStreamContext, config: LogConfig, subjects: Sequence[str] = ()
) -> int:
    """The stream's last sequence; with ``subjects`` (wildcards too), the last of a message on
    one of them, or 0 if none holds one.

    :raises StreamNotFoundError: if the configured stream does not exist.
    """
    state = (await stream_info(js, config)).state  # first, so a missing stream is named
    if not subjects:
        return int(state.last_seq)
    found = 0
    for subject in subjects:
        with translated(f"reading the last message on {subject!r} in stream {config.stream!r}"):
            try:
                message = await js.get_last_msg(config.stream, subject)
                found = max(found, message.seq or 0)
            except nats.js.errors.NotFoundError:  # nothing on that subject yet
                continue
    return found


# While a cluster forms, JetStream does not answer yet (no meta leader: a timeout), or says it
# is "temporarily unavailable" (10008) or has "no suitable peers" for the replicas (10005: a
# peer not yet seen online). A daemon started beside its NATS nodes waits that out.
_FORMING_CODES = frozenset({10005, 10008})
_FORMING_PATIENCE = 30.0  # seconds, then the last answer is the error
_FORMING_PAUSE = 0.5


async def ensure_stream(js: JetStreamContext, config: LogConfig) -> None:
    """Create the stream, or check an existing one covers our subjects and apply our limits.
    Retried for a while as long as JetStream answers as a cluster still forming does.

    :raises LogError: if an existing stream (ours or another) claims conflicting subjects,
        or JetStream refuses the stream, or still does not answer after the wait.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _FORMING_PATIENCE
    with translated(f"creating stream {config.stream!r}"):
        while True:
            try:
                return await _create_or_reconcile(js, config)
            except (TimeoutError, nats.js.errors.APIError) as exc:  # nats-py's timeouts too
                forming = not isinstance(exc, nats.js.errors.APIError) or (
                    exc.err_code in _FORMING_CODES
                )
                if not forming or loop.time() >= deadline:
                    raise
                _log.warning(
                    "stream %s not ready (%s): the cluster may still be forming, trying again",
                    config.stream,
                    describe(exc),
                )
                await asyncio.sleep(_FORMING_PAUSE)


async def _create_or_reconcile(js: JetStreamContext, config: LogConfig) -> None:
    try:
        info = await js.stream_info(config.stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(_stream_config(config))
        _log.info("created stream %s for %s", config.stream, config.subjects)
        return
    await _reconcile(js, info.config, config)


def _stream_config(config: LogConfig) -> StreamConfig:
    return StreamConfig(
        name=config.stream,
        subjects=[config.subjects],
        storage=StorageType.FILE,
        **_limits(config),
    )


def _limits(config: LogConfig) -> dict[str, Any]:
    """Our limits in nats-py's terms: 0 and -1 mean unlimited there."""
    return {
        "duplicate_window": config.duplicate_window,
        "max_age": config.max_age or 0.0,
        "max_bytes": config.max_bytes if config.max_bytes is not None else -1,
        "num_replicas": config.replicas,
    }


async def _reconcile(js: JetStreamContext, current: StreamConfig, config: LogConfig) -> None:
    if config.subjects not in (current.subjects or []):
        raise LogError(
            f"stream {config.stream!r} exists with subjects {current.subjects}, which do not "
            f"include {config.subjects!r}; choose another stream name or subject prefix"
        )
    wanted = _limits(config)
    if any(not _same(getattr(current, key), value) for key, value in wanted.items()):
        await js.update_stream(dataclasses.replace(current, **wanted))
        _log.info("updated limits of stream %s: %s", config.stream, wanted)


def _same(current: object, wanted: object) -> bool:
    if isinstance(current, float | int) and isinstance(wanted, float | int):
        return abs(current - wanted) < 1e-6
    return current == wanted
