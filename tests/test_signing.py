"""Signed events: the SDK signs, the daemon sets aside what a trusted key did not sign.

Against a real nats-server: services publish with their keys, a daemon with the trusted keys
folds the stream, and every refused message is quarantined with its reason and counted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import anyio
import msgspec
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from workledger.core import codec
from workledger.core import events as ev
from workledger.core.log import LogConfig, connect, envelope_subject, subject_for
from workledger.core.publisher import Publisher
from workledger.core.signing import (
    HEADER,
    KeyFileError,
    Signer,
    Verifier,
    load_signer,
    load_verifier,
    signed_bytes,
)
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio

SECRET = b"a-shared-secret-of-at-least-32-bytes!!"


def _ed25519_pair(keys: Path, trusted: Path, key_id: str, *, trust: bool = True) -> Path:
    """Write ``<key_id>.key`` for the service and, if trusted, ``<key_id>.pub`` for daemons."""
    private = Ed25519PrivateKey.generate()
    key_file = keys / f"{key_id}.key"
    key_file.write_bytes(private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    if trust:
        public = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        (trusted / f"{key_id}.pub").write_bytes(public)
    return key_file


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """Where services keep their signing keys."""
    (tmp_path / "keys").mkdir()
    return tmp_path / "keys"


@pytest.fixture
def trusted(tmp_path: Path) -> Path:
    """The daemon's directory of trusted keys."""
    (tmp_path / "trusted").mkdir()
    return tmp_path / "trusted"


def _signing(config: LogConfig, key_file: Path | None) -> LogConfig:
    return LogConfig(**{**_fields(config), "sign_key_file": str(key_file) if key_file else None})


def _verifying(config: LogConfig, trusted: Path) -> LogConfig:
    return LogConfig(**{**_fields(config), "verify_keys_dir": str(trusted)})


def _fields(config: LogConfig) -> dict[str, object]:
    return msgspec.structs.asdict(config)


async def _publish(config: LogConfig, *events: ev.Event) -> int:
    async with Publisher(config) as pub:
        last = 0
        for event in events:
            last = await pub.publish_and_wait(event)
        return last


async def _project(config: LogConfig, last: int) -> MemoryStore:
    store = MemoryStore()
    projector = Projector(ProjectorConfig(log=config), [store])
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)
        assert await projector.wait_for(last, timeout=10)
        tg.cancel_scope.cancel()
    assert projector.metrics.quarantined == store.stats().quarantined
    return store


def _reasons(store: MemoryStore) -> list[str]:
    """The reasons messages were set aside, in stream order."""
    return [q.reason for q in sorted(store.quarantined(), key=lambda q: q.seq)]


async def _publish_raw(
    config: LogConfig, subject: str, data: bytes, headers: dict[str, str]
) -> int:
    """What a service in another language does: a plain publish with our headers."""
    client = await connect(config)
    try:
        ack = await client.jetstream().publish(subject, data, headers=headers)
        return int(ack.seq)
    finally:
        await client.close()


# --- end to end ------------------------------------------------------------------------------


async def test_events_signed_with_the_shared_secret_are_applied(
    log_stream: LogConfig, keys: Path, trusted: Path
) -> None:
    """HMAC-SHA256: the service and the daemon share one secret; every event is applied."""
    (keys / "fleet.secret").write_bytes(SECRET + b"\n")
    (trusted / "fleet.secret").write_bytes(SECRET)
    events = [ev.TaskSubmitted(task=f"t-{n}", pool="gpu", queue="q") for n in range(5)]
    last = await _publish(_signing(log_stream, keys / "fleet.secret"), *events)
    store = await _project(_verifying(log_stream, trusted), last)
    assert store.stats().applied == 5
    assert store.stats().quarantined == 0


async def test_each_service_signs_with_its_own_ed25519_key(
    log_stream: LogConfig, keys: Path, trusted: Path
) -> None:
    """Two services, two identities, both trusted: both services' events are applied."""
    billing = _ed25519_pair(keys, trusted, "billing")
    render = _ed25519_pair(keys, trusted, "render")
    await _publish(_signing(log_stream, billing), ev.WorkerStarted(worker="w-1", pool="cpu"))
    last = await _publish(_signing(log_stream, render), ev.WorkerStarted(worker="w-2", pool="gpu"))
    store = await _project(_verifying(log_stream, trusted), last)
    assert store.stats().applied == 2
    assert _reasons(store) == []


async def test_unsigned_events_are_quarantined_with_the_reason(
    log_stream: LogConfig, keys: Path, trusted: Path
) -> None:
    """A verifying daemon sets aside an unsigned event and counts it; signed ones still apply."""
    key = _ed25519_pair(keys, trusted, "billing")
    await _publish(log_stream, ev.TaskSubmitted(task="sneaky", pool="gpu", queue="q"))
    last = await _publish(
        _signing(log_stream, key), ev.TaskSubmitted(task="honest", pool="gpu", queue="q")
    )
    store = await _project(_verifying(log_stream, trusted), last)
    assert store.stats().applied == 1
    assert store.task("honest") is not None
    assert store.task("sneaky") is None
    assert _reasons(store) == [
        "unsigned: no Wl-Signature header, and this daemon accepts only signed events"
    ]


async def test_a_forged_or_altered_event_is_quarantined(
    log_stream: LogConfig, keys: Path, trusted: Path
) -> None:
    """A valid signature on other bytes, or on the same bytes under another subject, fails."""
    signer = load_signer(_ed25519_pair(keys, trusted, "billing"))
    event = codec.stamp(ev.TaskCompleted(task="t-1", pool="gpu"))
    subject, data = subject_for(log_stream.subject_prefix, event), codec.encode_json(event)
    signature = signer.header(subject, data)
    altered = data.replace(b"t-1", b"t-2")
    await _publish_raw(log_stream, subject.replace("t-1", "t-2"), altered, {HEADER: signature})
    moved = subject.replace(".gpu.", ".cpu.")
    last = await _publish_raw(log_stream, moved, data, {HEADER: signature})
    store = await _project(_verifying(log_stream, trusted), last)
    assert store.stats().applied == 0
    assert (
        _reasons(store)
        == ["forged or altered: the ed25519 signature of key 'billing' does not match"] * 2
    )


async def test_one_signature_covers_a_whole_envelope(
    log_stream: LogConfig, keys: Path, trusted: Path
) -> None:
    """The publisher signs each envelope once; the daemon verifies it once and applies every
    event in it."""
    signing = _signing(log_stream, _ed25519_pair(keys, trusted, "billing"))
    events = [ev.TaskSubmitted(task=f"t-{n}", pool="gpu", queue="q") for n in range(20)]
    # linger=60: only a full envelope goes out (the 20th event fills the second), never 9
    # events by themselves because the machine was slow between the two calls.
    async with Publisher(signing, batch_size=10, linger=60) as pub:
        await pub.publish_many(events[:-1])
        last = await pub.publish_and_wait(events[-1])
    store = await _project(_verifying(log_stream, trusted), last)
    assert last == 2  # two envelopes, two signatures
    assert (store.stats().applied, store.stats().quarantined) == (20, 0)


async def test_an_altered_or_unsigned_envelope_is_quarantined_whole(
    log_stream: LogConfig, keys: Path, trusted: Path
) -> None:
    """Changing one event of a signed envelope voids the signature of all of them; an
    unsigned envelope is refused like an unsigned event."""
    signer = load_signer(_ed25519_pair(keys, trusted, "billing"))
    events = [codec.stamp(ev.TaskCompleted(task=f"t-{n}", pool="gpu")) for n in range(3)]
    subject = envelope_subject(log_stream.subject_prefix, "gpu")
    data = codec.encode_envelope(events)
    signature = signer.header(subject, data)
    msg_id = codec.envelope_id(e.id for e in events)
    altered = data.replace(b"t-2", b"t-9")
    await _publish_raw(log_stream, subject, altered, {HEADER: signature, "Nats-Msg-Id": "a"})
    last = await _publish_raw(log_stream, subject, data, {"Nats-Msg-Id": msg_id})
    store = await _project(_verifying(log_stream, trusted), last)
    assert store.stats().applied == 0
    assert _reasons(store) == [
        "forged or altered: the ed25519 signature of key 'billing' does not match",
        "unsigned: no Wl-Signature header, and this daemon accepts only signed events",
    ]
    assert [q.size for q in store.quarantined()] == [len(data)] * 2


async def test_a_service_whose_key_is_not_trusted_is_rejected(
    log_stream: LogConfig, keys: Path, trusted: Path
) -> None:
    """An Ed25519 key outside the trusted set, under its own id or a trusted one, is refused."""
    _ed25519_pair(keys, trusted, "billing")
    rogue = _ed25519_pair(keys, trusted, "rogue", trust=False)
    await _publish(_signing(log_stream, rogue), ev.TaskSubmitted(task="t-1", pool="gpu", queue="q"))
    impostor = keys / "impostor"
    impostor.mkdir()
    posing = impostor / "billing.key"  # claims the trusted id with a key of its own
    posing.write_bytes(rogue.read_bytes())
    last = await _publish(
        _signing(log_stream, posing), ev.TaskSubmitted(task="t-2", pool="gpu", queue="q")
    )
    store = await _project(_verifying(log_stream, trusted), last)
    assert store.stats().applied == 0
    assert _reasons(store) == [
        "signed by untrusted key 'rogue' (not among the trusted keys)",
        "forged or altered: the ed25519 signature of key 'billing' does not match",
    ]


async def test_a_daemon_without_trusted_keys_applies_signed_and_unsigned_alike(
    log_stream: LogConfig, keys: Path, trusted: Path
) -> None:
    """Verification is opt-in: signing does not break a daemon that does not verify."""
    key = _ed25519_pair(keys, trusted, "billing")
    await _publish(log_stream, ev.TaskSubmitted(task="a", pool="gpu", queue="q"))
    last = await _publish(
        _signing(log_stream, key), ev.TaskSubmitted(task="b", pool="gpu", queue="q")
    )
    store = await _project(log_stream, last)
    assert store.stats().applied == 2


def test_the_cli_signs_and_rebuild_verifies(
    log_stream: LogConfig, keys: Path, trusted: Path, tmp_path: Path
) -> None:
    """``publish`` signs with WORKLEDGER_SIGN_KEY_FILE; ``rebuild --verify-keys-dir`` checks."""
    from workledger.cli import main

    key = _ed25519_pair(keys, trusted, "billing")
    base = ["--nats", log_stream.servers[0], "--stream", log_stream.stream]
    base += ["--subject-prefix", log_stream.subject_prefix]
    line = '{"type": "task.submitted", "task": "t-1", "pool": "gpu", "queue": "q"}\n'
    runner = CliRunner()
    signed = runner.invoke(
        main, ["publish", *base], input=line, env={"WORKLEDGER_SIGN_KEY_FILE": str(key)}
    )
    assert signed.exit_code == 0, signed.output
    assert runner.invoke(main, ["publish", *base], input=line).exit_code == 0
    duckdb = str(tmp_path / "rebuilt.duckdb")
    args = ["rebuild", *base, "--duckdb", duckdb, "--no-progress", "--verify-keys-dir", trusted]
    rebuilt = runner.invoke(main, [str(arg) for arg in args])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "1 events up to stream sequence 2, 1 set aside" in rebuilt.output


# --- the header, as another language would compute it ----------------------------------------


def test_the_hmac_header_is_the_documented_recipe() -> None:
    """base64(HMAC-SHA256(secret, "workledger-sig-v1\\n" + subject + "\\n" + payload))."""
    subject, payload = "workledger.gpu.task.t-1.completed", b'{"type":"task.completed"}'
    expected = hmac.new(
        SECRET, b"workledger-sig-v1\n" + subject.encode() + b"\n" + payload, hashlib.sha256
    ).digest()
    header = Signer.hmac("fleet", SECRET).header(subject, payload)
    assert header == f"alg=hmac-sha256, key=fleet, sig={base64.b64encode(expected).decode()}"


def test_the_ed25519_header_verifies_with_the_public_key_alone() -> None:
    """Any Ed25519 library can check it: the signature is over signed_bytes(subject, payload)."""
    private = Ed25519PrivateKey.generate()
    header = Signer.ed25519("billing", private).header("s.a.b", b"{}")
    signature = base64.b64decode(header.rpartition("sig=")[2])
    private.public_key().verify(signature, signed_bytes("s.a.b", b"{}"))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("alg=ed25519, key=billing", "malformed Wl-Signature header: missing sig"),
        (
            "alg=rsa, key=billing, sig=AAAA",
            "malformed Wl-Signature header: unknown algorithm 'rsa'",
        ),
        ("alg=ed25519, key=billing, sig=***", "malformed Wl-Signature header: sig is not base64"),
        (
            "alg=hmac-sha256, key=billing, sig=AAAA",
            "key 'billing' is a trusted ed25519 key, but this claims hmac-sha256",
        ),
    ],
)
def test_a_malformed_or_mismatched_header_has_its_own_reason(value: str, reason: str) -> None:
    """Each way a header can be wrong is named, so a producer knows what to fix."""
    verifier = Verifier()
    verifier.trust_ed25519("billing", Ed25519PrivateKey.generate().public_key())
    assert verifier.check("s", b"{}", {HEADER: value}) == reason


def test_a_short_hmac_secret_is_refused(tmp_path: Path) -> None:
    """A guessable secret makes every signature worthless, so it is refused when loaded."""
    (tmp_path / "weak.secret").write_text("hunter2\n")
    with pytest.raises(KeyFileError, match="has 7 bytes; use at least 32"):
        load_signer(tmp_path / "weak.secret")


def test_a_private_key_among_the_trusted_keys_is_refused(keys: Path, trusted: Path) -> None:
    """A daemon needs only public keys; finding a private one there is a deployment mistake."""
    key = _ed25519_pair(keys, trusted, "billing")
    (trusted / "leaked.key").write_bytes(key.read_bytes())
    with pytest.raises(KeyFileError, match="a private key among the trusted keys"):
        load_verifier(trusted)


def test_a_key_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    """RSA (or any other) keys are not event-signing keys: the error says so."""
    rsa = generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (tmp_path / "svc.key").write_bytes(pem)
    with pytest.raises(KeyFileError, match="event signing takes Ed25519 keys"):
        load_signer(tmp_path / "svc.key")


def test_an_empty_trust_directory_is_refused(trusted: Path) -> None:
    """Verifying against no key would quarantine everything: refuse it at start instead."""
    with pytest.raises(KeyFileError, match="no trusted keys"):
        load_verifier(trusted)


def test_a_signer_never_shows_its_key() -> None:
    """repr names the algorithm and the key id only."""
    assert repr(Signer.hmac("fleet", SECRET)) == "<Signer hmac-sha256 key=fleet>"
