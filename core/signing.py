"""Signed events: who published an event, checked by the daemon (docs/wire.md#signatures).

NATS permissions say which *connections* may publish; they cannot say which service wrote an
event once several share a role, nor protect the log from a credential that leaked. A signature
can: the publisher signs the exact bytes it sends, together with the subject, and a daemon that
is given the trusted keys sets aside (quarantines) every event that is unsigned, forged,
altered, or signed by a key it does not trust.

Two kinds of key, one header::

    Wl-Signature: alg=hmac-sha256, key=<key id>, sig=<base64 of the MAC>
    Wl-Signature: alg=ed25519, key=<key id>, sig=<base64 of the signature>

both computed over ``workledger-sig-v1\\n`` + subject + ``\\n`` + payload. A shared HMAC secret
is simplest; Ed25519 gives each service an identity of its own whose private key never leaves
it. Keys live in files whose name (without the suffix) is the key id: ``billing.key`` (Ed25519
private key, PEM) or ``billing.secret`` (HMAC secret) to sign; ``billing.pub`` (PEM) or
``billing.secret`` in the directory of trusted keys to verify.

An envelope of events (docs/wire.md#envelopes) is one message with one signature over all of
it: verifying costs once per envelope, and a change to any of its events voids the signature
for all of them, so the daemon quarantines the envelope whole.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from workledger.core.errors import WorkledgerError

__all__ = [
    "HEADER",
    "HMAC_MIN_SECRET",
    "KeyFileError",
    "Signer",
    "Verifier",
    "load_signer",
    "load_verifier",
    "signed_bytes",
]

HEADER = "Wl-Signature"
HMAC_MIN_SECRET = 32  # bytes: a guessable secret would make every signature worthless
_CONTEXT = b"workledger-sig-v1\n"
_HMAC, _ED25519 = "hmac-sha256", "ed25519"
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PEM = b"-----BEGIN"
_SignFunction: TypeAlias = Callable[[bytes], bytes]
_VerifyFunction: TypeAlias = Callable[[bytes, bytes], bool]


class KeyFileError(WorkledgerError, ValueError):
    """Raised when a signing or verification key file is missing, unreadable or of no known
    kind; the message names the file."""


def signed_bytes(subject: str, payload: bytes) -> bytes:
    """What a signature covers: a context string, the subject and the payload, exactly."""
    return _CONTEXT + subject.encode("utf-8") + b"\n" + payload


class Signer:
    """Signs what a publisher sends; made by :func:`load_signer` or the two constructors."""

    def __init__(self, key_id: str, algorithm: str, sign: _SignFunction) -> None:
        _check_key_id(key_id)
        self.key_id = key_id
        self.algorithm = algorithm
        self._sign = sign

    @classmethod
    def hmac(cls, key_id: str, secret: bytes) -> Signer:
        """An HMAC-SHA256 signer with a shared secret (at least 32 bytes)."""
        _check_secret(secret, key_id)
        return cls(key_id, _HMAC, lambda data: hmac.digest(secret, data, hashlib.sha256))

    @classmethod
    def ed25519(cls, key_id: str, key: Ed25519PrivateKey) -> Signer:
        """An Ed25519 signer: this service's own identity."""
        return cls(key_id, _ED25519, key.sign)

    def header(self, subject: str, payload: bytes) -> str:
        """The ``Wl-Signature`` header value for one message."""
        signature = base64.b64encode(self._sign(signed_bytes(subject, payload))).decode()
        return f"alg={self.algorithm}, key={self.key_id}, sig={signature}"

    def __repr__(self) -> str:
        return f"<Signer {self.algorithm} key={self.key_id}>"  # never the key itself


class Verifier:
    """The trusted keys, by id; :meth:`check` says why a message is refused, or ``None``."""

    def __init__(self) -> None:
        self._keys: dict[str, tuple[str, _VerifyFunction]] = {}

    def trust_hmac(self, key_id: str, secret: bytes) -> None:
        """Accept HMAC-SHA256 signatures made with ``secret`` under ``key_id``."""
        _check_key_id(key_id)
        _check_secret(secret, key_id)
        self._keys[key_id] = (_HMAC, _hmac_check(secret))

    def trust_ed25519(self, key_id: str, key: Ed25519PublicKey) -> None:
        """Accept Ed25519 signatures by the private half of ``key`` under ``key_id``."""
        _check_key_id(key_id)
        self._keys[key_id] = (_ED25519, _ed25519_check(key))

    @property
    def key_ids(self) -> list[str]:
        """The ids of the trusted keys, sorted."""
        return sorted(self._keys)

    def check(self, subject: str, payload: bytes, headers: Mapping[str, str] | None) -> str | None:
        """``None`` if the message is signed by a trusted key; else the reason to set it aside."""
        value = (headers or {}).get(HEADER)
        if value is None:
            return f"unsigned: no {HEADER} header, and this daemon accepts only signed events"
        try:
            algorithm, key_id, signature = _parse(value)
        except ValueError as exc:
            return f"malformed {HEADER} header: {exc}"
        trusted = self._keys.get(key_id)
        if trusted is None:
            return f"signed by untrusted key {key_id!r} (not among the trusted keys)"
        if trusted[0] != algorithm:
            return f"key {key_id!r} is a trusted {trusted[0]} key, but this claims {algorithm}"
        if not trusted[1](signed_bytes(subject, payload), signature):
            return f"forged or altered: the {algorithm} signature of key {key_id!r} does not match"
        return None


# --- loading keys from files -----------------------------------------------------------------


def load_signer(path: str | Path) -> Signer:
    """The signer in ``path``: an Ed25519 private key (PEM) or an HMAC secret; its file name,
    less the suffix, is the key id.

    :raises KeyFileError: naming the file, if it cannot be read or is neither.
    """
    path = Path(path)
    data = _read(path)
    if not data.startswith(_PEM):
        return Signer.hmac(path.stem, data.strip())
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a usable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}; event signing takes Ed25519 keys")
    return Signer.ed25519(path.stem, key)


def load_verifier(directory: str | Path) -> Verifier:
    """The trusted keys in ``directory``: ``<id>.pub`` (Ed25519, PEM) and ``<id>.secret``
    (HMAC). Other files are ignored, but a private key there is refused: it belongs only to
    the service that signs with it.

    :raises KeyFileError: if the directory holds no key, or a key file is unusable.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"{directory}: not a directory of trusted keys")
    verifier = Verifier()
    for path in sorted(directory.iterdir()):
        _trust_file(verifier, path)
    if not verifier.key_ids:
        raise KeyFileError(f"{directory}: no trusted keys (<id>.pub or <id>.secret files)")
    return verifier


def _trust_file(verifier: Verifier, path: Path) -> None:
    if path.suffix == ".secret":
        verifier.trust_hmac(path.stem, _read(path).strip())
    elif path.suffix == ".pub":
        verifier.trust_ed25519(path.stem, _public_key(path))
    elif path.suffix == ".key" or _read(path).startswith(b"-----BEGIN PRIVATE"):
        raise KeyFileError(f"{path}: a private key among the trusted keys; copy only its .pub")


def _public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(_read(path))
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}; event signing takes Ed25519 keys")
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None


# --- the small parts -------------------------------------------------------------------------


def _hmac_check(secret: bytes) -> _VerifyFunction:
    def check(data: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(hmac.digest(secret, data, hashlib.sha256), signature)

    return check


def _ed25519_check(key: Ed25519PublicKey) -> _VerifyFunction:
    def check(data: bytes, signature: bytes) -> bool:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    return check


def _parse(value: str) -> tuple[str, str, bytes]:
    """``alg=..., key=..., sig=...`` in any order; unknown parameters are ignored."""
    fields = dict(part.strip().partition("=")[::2] for part in value.split(","))
    missing = [name for name in ("alg", "key", "sig") if not fields.get(name)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    if fields["alg"] not in (_HMAC, _ED25519):
        raise ValueError(f"unknown algorithm {fields['alg']!r}")
    try:
        signature = base64.b64decode(fields["sig"], validate=True)
    except binascii.Error:
        raise ValueError("sig is not base64") from None
    return fields["alg"], fields["key"], signature


def _check_key_id(key_id: str) -> None:
    if not _KEY_ID.fullmatch(key_id):
        raise KeyFileError(f"key id {key_id!r}: 1-64 of A-Z a-z 0-9 _ . - (it is the file name)")


def _check_secret(secret: bytes, key_id: str) -> None:
    if len(secret) < HMAC_MIN_SECRET:
        raise KeyFileError(
            f"HMAC secret {key_id!r} has {len(secret)} bytes; use at least {HMAC_MIN_SECRET} "
            "(e.g. `openssl rand -base64 48`)"
        )
