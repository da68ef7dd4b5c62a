"""Identities for NATS made offline, in the test: TLS certificates, nkeys, operator-mode creds.

Certificates come from ``trustme`` (a throwaway CA). nkeys and the JWTs of NATS's decentralised
auth are made with the ``nkeys`` package alone: a JWT here is ``header.claims.signature`` in
base64url, signed with the issuer's Ed25519 nkey (``alg: ed25519-nkey``), which is all that
nats-server checks. So a creds file is tested without the ``nsc`` tool.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import nkeys
import trustme

_JETSTREAM_LIMITS = {
    "subs": -1,
    "data": -1,
    "payload": -1,
    "imports": -1,
    "exports": -1,
    "wildcards": True,
    "conn": -1,
    "leaf": -1,
    "mem_storage": -1,
    "disk_storage": -1,
    "streams": -1,
    "consumer": -1,
}


class Certs(NamedTuple):
    """PEM files: a CA, a server certificate for 127.0.0.1, a client certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_certs(directory: Path) -> Certs:
    """A fresh CA and the certificates it issued, written under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("daemon@workledger.test")
    paths = Certs(*(directory / name for name in Certs._fields))
    ca.cert_pem.write_to_path(str(paths.ca))
    server.cert_chain_pems[0].write_to_path(str(paths.server_cert))
    server.private_key_pem.write_to_path(str(paths.server_key))
    client.cert_chain_pems[0].write_to_path(str(paths.client_cert))
    client.private_key_pem.write_to_path(str(paths.client_key))
    return paths


def new_nkey(prefix: int = nkeys.PREFIX_BYTE_USER) -> nkeys.KeyPair:
    """A new nkey pair (a user's by default): ``.seed`` is secret, ``.public_key`` is not."""
    return nkeys.from_seed(bytearray(nkeys.encode_seed(os.urandom(32), prefix)))


def write_seed(path: Path, key: nkeys.KeyPair) -> Path:
    """An nkey seed file, as ``nk -gen user`` would write it."""
    path.write_bytes(bytes(key.seed) + b"\n")
    return path


class Operator(NamedTuple):
    """A server config in operator mode, and a creds file for one user of its account."""

    server_config: str
    creds: Path


def make_operator(directory: Path) -> Operator:
    """An operator, a JetStream-enabled account with one user, and a system account."""
    operator, account, system, user = (
        new_nkey(nkeys.PREFIX_BYTE_OPERATOR),
        new_nkey(nkeys.PREFIX_BYTE_ACCOUNT),
        new_nkey(nkeys.PREFIX_BYTE_ACCOUNT),
        new_nkey(),
    )
    op_jwt = _jwt(operator, operator, "operator", {"type": "operator"})
    account_jwt = _jwt(operator, account, "app", {"type": "account", "limits": _JETSTREAM_LIMITS})
    system_jwt = _jwt(operator, system, "SYS", {"type": "account"})  # no JetStream: not allowed
    user_claims = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    creds = directory / "user.creds"
    creds.write_text(_creds(_jwt(account, user, "service", user_claims), user))
    config = (
        f"operator: {op_jwt}\n"
        f"system_account: {_public(system)}\n"
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n  {_public(account)}: {account_jwt}\n"
        f"  {_public(system)}: {system_jwt}\n}}\n"
    )
    return Operator(config, creds)


def _public(key: nkeys.KeyPair) -> str:
    return bytes(key.public_key).decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: nkeys.KeyPair, subject: nkeys.KeyPair, name: str, nats: dict[str, Any]) -> str:
    claims: dict[str, Any] = {
        "iat": int(time.time()),
        "iss": _public(issuer),
        "name": name,
        "sub": _public(subject),
        "nats": {**nats, "version": 2},
    }
    digest = hashlib.sha256(json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = issuer.sign(f"{header}.{body}".encode())
    return f"{header}.{body}.{_b64(signature)}"


def _creds(user_jwt: str, user: nkeys.KeyPair) -> str:
    seed = bytes(user.seed).decode()
    return (
        f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
