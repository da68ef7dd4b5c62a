"""How a :class:`~workledger.core.log.LogConfig`'s credentials and TLS settings reach nats-py.

Kept apart from ``log.py`` so that the one place secrets are handled is small enough to read
in one go. Nothing here logs a secret: :func:`identity` names *who* connects (the user, the
nkey's public key, the creds file) and never *how* they prove it.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Protocol

import nats.errors

from workledger.core.errors import LogError

__all__ = ["auth_options", "identity", "is_auth_failure", "is_tls_failure", "uses_tls"]


class _Settings(Protocol):
    """The part of :class:`~workledger.core.log.LogConfig` read here (a protocol: no cycle)."""

    @property
    def servers(self) -> tuple[str, ...]: ...
    @property
    def token(self) -> str | None: ...
    @property
    def user(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def nkey_seed_file(self) -> str | None: ...
    @property
    def creds_file(self) -> str | None: ...
    @property
    def tls_ca_file(self) -> str | None: ...
    @property
    def tls_cert_file(self) -> str | None: ...
    @property
    def tls_key_file(self) -> str | None: ...
    @property
    def tls_hostname(self) -> str | None: ...
    @property
    def tls_handshake_first(self) -> bool: ...
    @property
    def inbox_prefix(self) -> str: ...


_AUTH_VIOLATION = "authorization violation"
_AUTH_EXPIRED = "authorization expired"  # a creds file whose user JWT has expired


def uses_tls(config: _Settings) -> bool:
    """Whether this connection must be encrypted: a ``tls://`` URL or any TLS setting."""
    if any(server.startswith("tls://") for server in config.servers):
        return True
    return bool(config.tls_ca_file or config.tls_cert_file or config.tls_handshake_first)


def auth_options(config: _Settings) -> dict[str, Any]:
    """nats-py ``connect`` keyword arguments for the credentials, TLS and inbox prefix.

    :raises LogError: if a key, creds or certificate file cannot be read.
    """
    _check_readable(config)
    options: dict[str, Any] = {"inbox_prefix": config.inbox_prefix}
    if config.token:
        options["token"] = config.token
    if config.user:
        options["user"], options["password"] = config.user, config.password or ""
    if config.nkey_seed_file:
        options["nkeys_seed"] = config.nkey_seed_file
    if config.creds_file:
        options["user_credentials"] = config.creds_file
    if uses_tls(config):
        options["tls"] = _ssl_context(config)
        options["tls_handshake_first"] = config.tls_handshake_first
        if config.tls_hostname:
            options["tls_hostname"] = config.tls_hostname
    return options


def identity(config: _Settings) -> str:
    """Who this config connects as, for error messages: never the secret itself."""
    if config.user:
        return f"user {config.user!r}"
    if config.nkey_seed_file:
        return f"the nkey in {config.nkey_seed_file}"
    if config.creds_file:
        return f"the credentials in {config.creds_file}"
    if config.token:
        return "the token"
    if config.tls_cert_file:
        return f"the client certificate {config.tls_cert_file}"
    return "an anonymous client (no credentials configured)"


def is_auth_failure(exc: BaseException) -> bool:
    """The server said no to our credentials: retrying with the same ones cannot help."""
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    text = str(exc).lower()
    return _AUTH_VIOLATION in text or _AUTH_EXPIRED in text


def is_tls_failure(exc: BaseException) -> bool:
    """A TLS handshake or certificate problem, which a retry will not fix either."""
    return isinstance(exc, ssl.SSLError)


def _ssl_context(config: _Settings) -> ssl.SSLContext:
    """A verifying client context: the configured CA (else the system's), our cert for mTLS."""
    context = ssl.create_default_context(cafile=config.tls_ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls_cert_file:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context


def _check_readable(config: _Settings) -> None:
    """Name a missing file ourselves: nats-py would fail later, deep inside connect."""
    files = {
        "nkey seed file": config.nkey_seed_file,
        "credentials file": config.creds_file,
        "TLS CA file": config.tls_ca_file,
        "TLS certificate": config.tls_cert_file,
        "TLS key": config.tls_key_file,
    }
    for what, path in files.items():
        if path is not None and not Path(path).is_file():
            raise LogError(f"the NATS {what} {path} does not exist or is not a file")
