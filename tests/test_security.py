"""NATS auth, TLS and least-privilege permissions, against a real nats-server configured for each.

Each test writes a nats-server config, starts its own server with it, and connects as workledger
does. Certificates, nkeys and operator-mode credentials are made in the test (nats_identities).
The permissions config is the one in docs/security.md, read from the file.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from click.testing import CliRunner

from tests.nats_identities import Certs, make_certs, make_operator, new_nkey, write_seed
from workledger.core import events as ev
from workledger.core.errors import LogError
from workledger.core.log import LogConfig, connect, ensure_stream, stream_info
from workledger.core.nats_server import EmbeddedNats
from workledger.core.publisher import Publisher
from workledger.projections.daemon import Projector, ProjectorConfig
from workledger.stores.memory import MemoryStore

pytestmark = pytest.mark.anyio

SECURITY_DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"
TOKEN = "s3cret-token-never-logged"
PASSWORDS = {"admin": "admin-pw", "billing": "billing-pw", "projector": "projector-pw"}


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    """A throwaway CA with a server certificate for 127.0.0.1 and a client certificate."""
    return make_certs(tmp_path / "certs")


def _serve(tmp_path: Path, config: str) -> EmbeddedNats:
    """A JetStream server (not started) with ``config`` as its config file."""
    conf = tmp_path / "server.conf"
    conf.write_text(config)
    return EmbeddedNats(tmp_path / "nats", config_file=conf)


@pytest.fixture
def server_config() -> list[str]:
    """Tests append the config text here; the ``secured`` fixture starts a server with it."""
    return []


@pytest.fixture
def secured(tmp_path: Path, server_config: list[str]) -> Iterator[EmbeddedNats]:
    """A server started with the config the test put in ``server_config``."""
    with _serve(tmp_path, "\n".join(server_config)) as server:
        yield server


def _config(server: EmbeddedNats, **security: object) -> LogConfig:
    suffix = uuid.uuid4().hex[:8]
    url = security.pop("url", server.url)
    return LogConfig(
        servers=(str(url),),
        stream=f"WL_{suffix}",
        subject_prefix=f"wl{suffix}",
        connect_timeout=10.0,
        reconnect_wait=0.1,
        **security,  # type: ignore[arg-type]
    )


async def _round_trip(config: LogConfig) -> int:
    """Create the stream, publish one event and wait for its ack: the connection really works."""
    client = await connect(config)
    try:
        await ensure_stream(client.jetstream(), config)
    finally:
        await client.close()
    async with Publisher(config) as pub:
        return await pub.publish_and_wait(ev.WorkerHeartbeat(worker="w-1", pool="gpu"))


async def _refusal(config: LogConfig) -> tuple[str, float]:
    began = time.monotonic()
    with pytest.raises(LogError) as caught:
        await connect(config)
    return str(caught.value), time.monotonic() - began


# --- credentials -----------------------------------------------------------------------------


async def test_a_token_server_admits_the_right_token(
    server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """With the server's token, workledger creates its stream and publishes."""
    server_config.append(f'authorization {{ token: "{TOKEN}" }}')
    server = request.getfixturevalue("secured")
    assert await _round_trip(_config(server, token=TOKEN)) == 1


async def test_a_wrong_token_fails_at_once_with_a_clear_error(
    server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """A refused credential ends the connect in well under its timeout, naming no secret."""
    server_config.append(f'authorization {{ token: "{TOKEN}" }}')
    server = request.getfixturevalue("secured")
    message, took = await _refusal(_config(server, token="wrong-token"))
    assert message == (
        f"NATS refused the credentials for the token at {server.url}: Authorization Violation"
    )
    assert took < 2.0, "the connect retried a credential the server had refused"
    assert "wrong-token" not in message


async def test_no_credentials_on_a_server_that_needs_them_says_so(
    server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """An anonymous client is told that it sent nothing, not that the server is unreachable."""
    server_config.append(f'authorization {{ token: "{TOKEN}" }}')
    message, _ = await _refusal(_config(request.getfixturevalue("secured")))
    assert "refused the credentials for an anonymous client (no credentials configured)" in message


async def test_user_and_password_authenticate_and_a_wrong_password_names_the_user(
    server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """user/password works; the refusal names the user and never the password."""
    server_config.append('authorization { users = [{user: alice, password: "pa55word"}] }')
    server = request.getfixturevalue("secured")
    assert await _round_trip(_config(server, user="alice", password="pa55word")) == 1
    message, _ = await _refusal(_config(server, user="alice", password="guess"))
    assert "refused the credentials for user 'alice'" in message
    assert "guess" not in message


async def test_an_nkey_seed_file_authenticates(
    tmp_path: Path, server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """The server knows only the public key; the client signs its nonce with the seed file."""
    known, stranger = new_nkey(), new_nkey()
    public = bytes(known.public_key).decode()
    server_config.append(f"authorization {{ users = [{{nkey: {public}}}] }}")
    server = request.getfixturevalue("secured")
    seed = write_seed(tmp_path / "service.nk", known)
    assert await _round_trip(_config(server, nkey_seed_file=str(seed))) == 1
    other = write_seed(tmp_path / "stranger.nk", stranger)
    message, _ = await _refusal(_config(server, nkey_seed_file=str(other)))
    assert f"refused the credentials for the nkey in {other}" in message


async def test_a_creds_file_authenticates_in_operator_mode(
    tmp_path: Path, server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """A user JWT signed by an account the operator trusts, from a .creds file, gets in."""
    operator = make_operator(tmp_path)
    server_config.append(operator.server_config)
    server = request.getfixturevalue("secured")
    assert await _round_trip(_config(server, creds_file=str(operator.creds))) == 1


async def test_a_missing_key_file_is_named_before_connecting(nats_server: EmbeddedNats) -> None:
    """A typo in a path says which file, instead of failing deep inside nats-py."""
    missing = "/nonexistent/service.nk"
    with pytest.raises(LogError, match=re.escape(f"nkey seed file {missing} does not exist")):
        await connect(_config(nats_server, nkey_seed_file=missing))


# --- TLS -------------------------------------------------------------------------------------


def _tls_server(certs: Certs, *extra: str) -> str:
    """A ``tls`` block with the server certificate from our CA, plus ``extra`` settings."""
    settings = [
        f'cert_file: "{certs.server_cert}"',
        f'key_file: "{certs.server_key}"',
        f'ca_file: "{certs.ca}"',
        "timeout: 2",
        *extra,
    ]
    return f"tls {{ {', '.join(settings)} }}"


async def test_tls_with_the_generated_ca_verifies_the_server(
    certs: Certs, server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """With our CA the client verifies the server's certificate and the log works over TLS."""
    server_config.append(_tls_server(certs))
    server = request.getfixturevalue("secured")
    config = _config(server, tls_ca_file=str(certs.ca))
    assert await _round_trip(config) == 1
    client = await connect(config)
    try:
        assert client._transport._io_writer.get_extra_info("ssl_object") is not None
    finally:
        await client.close()


async def test_a_server_certificate_from_an_unknown_ca_is_refused_at_once(
    certs: Certs, tmp_path: Path, server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """Trusting another CA (or only the system's), the client will not talk to this server."""
    server_config.append(_tls_server(certs))
    server = request.getfixturevalue("secured")
    other_ca = make_certs(tmp_path / "other").ca
    message, took = await _refusal(_config(server, tls_ca_file=str(other_ca)))
    assert message.startswith(f"TLS with NATS at {server.url} failed: ")
    assert "certificate verify failed" in message
    assert took < 2.0


async def test_a_plaintext_client_is_refused_by_a_tls_server(
    certs: Certs, server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """A client that skips the TLS upgrade is cut off by the server before anything else."""
    server_config.append(_tls_server(certs))
    server = request.getfixturevalue("secured")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        info = sock.recv(4096)
        assert b'"tls_required":true' in info
        sock.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
        answer = sock.recv(4096)
    assert b"PONG" not in answer


async def test_a_client_configured_for_tls_refuses_a_server_that_does_not_offer_it(
    certs: Certs, server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """Credentials are never sent in the clear to a server (or a man in the middle) without TLS."""
    server_config.append(f'authorization {{ token: "{TOKEN}" }}')
    server = request.getfixturevalue("secured")
    message, took = await _refusal(_config(server, token=TOKEN, tls_ca_file=str(certs.ca)))
    assert "the server does not offer TLS, but TLS is configured" in message
    assert took < 2.0
    assert "authentication error" not in server.log_path.read_text()


async def test_mutual_tls_admits_a_client_certificate_and_refuses_none(
    certs: Certs, server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """With ``verify: true`` the server wants our certificate: with it we get in, without not."""
    server_config.append(_tls_server(certs, "verify: true"))
    server = request.getfixturevalue("secured")
    mutual = _config(
        server,
        tls_ca_file=str(certs.ca),
        tls_cert_file=str(certs.client_cert),
        tls_key_file=str(certs.client_key),
    )
    assert await _round_trip(mutual) == 1
    with pytest.raises(LogError, match="NATS at"):
        await connect(_config(server, tls_ca_file=str(certs.ca)))


async def test_tls_handshake_first_works_with_a_server_that_expects_it(
    certs: Certs, server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """With handshake_first nothing, not even the server's INFO, crosses the wire in the clear."""
    server_config.append(_tls_server(certs, "handshake_first: true"))
    server = request.getfixturevalue("secured")
    config = _config(server, tls_ca_file=str(certs.ca), tls_handshake_first=True)
    assert await _round_trip(config) == 1


# --- configuration and the CLI ---------------------------------------------------------------


def test_a_log_config_never_shows_its_secrets() -> None:
    """repr (so every log line and traceback) masks the token and the password."""
    shown = repr(LogConfig(user="alice", password="pa55word")) + repr(LogConfig(token=TOKEN))
    assert "pa55word" not in shown
    assert TOKEN not in shown
    assert "password='***'" not in shown
    assert "password=***" in shown
    assert "user='alice'" in shown


def test_two_ways_to_authenticate_at_once_are_refused() -> None:
    """A token and a user together is a mistake; so is a certificate without its key."""
    with pytest.raises(ValueError, match="at most one of NATS token, user, nkey and creds"):
        LogConfig(token=TOKEN, user="alice", password="x")
    with pytest.raises(ValueError, match="needs a password"):
        LogConfig(user="alice")
    with pytest.raises(ValueError, match="certificate needs its key"):
        LogConfig(tls_cert_file="client.pem")


def test_the_cli_takes_credentials_from_the_environment(
    server_config: list[str], request: pytest.FixtureRequest
) -> None:
    """``workledger publish`` with WORKLEDGER_NATS_TOKEN set publishes; a wrong one is one line."""
    server_config.append(f'authorization {{ token: "{TOKEN}" }}')
    server = request.getfixturevalue("secured")
    config = _config(server, token=TOKEN)
    anyio.run(_round_trip, config, backend="asyncio")
    from workledger.cli import main

    line = '{"type": "worker.heartbeat", "worker": "w-2", "pool": "gpu"}\n'
    args = ["publish", "--nats", server.url, "--stream", config.stream]
    args += ["--subject-prefix", config.subject_prefix]
    runner = CliRunner()
    ok = runner.invoke(main, args, input=line, env={"WORKLEDGER_NATS_TOKEN": TOKEN})
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(main, args, input=line, env={"WORKLEDGER_NATS_TOKEN": "nope"})
    assert refused.exit_code == 1
    assert "Error: NATS refused the credentials for the token" in refused.output
    assert "Traceback" not in refused.output


def test_help_names_the_environment_variables_and_shows_no_secret() -> None:
    """Every NATS command lists the security options; a secret in the environment stays hidden."""
    from workledger.cli import main

    env = {"WORKLEDGER_NATS_TOKEN": TOKEN, "WORKLEDGER_NATS_PASSWORD": "pa55word"}
    for command in ("project", "up", "publish", "rebuild"):
        shown = CliRunner().invoke(main, [command, "--help"], env=env).output
        for option in ("--nats-token", "--nats-creds", "--nats-tls-ca", "--verify-keys-dir"):
            assert option in shown, f"{command} lacks {option}"
        assert "WORKLEDGER_NATS_TOKEN" in shown
        assert TOKEN not in shown
        assert "pa55word" not in shown


# --- least-privilege permissions -------------------------------------------------------------


def _documented_permissions(stream: str, prefix: str) -> str:
    """docs/security.md's server config, for this test's stream and subject prefix."""
    block = re.search(r"^```conf\n(.*?)^```", SECURITY_DOC.read_text(), re.M | re.S)
    assert block is not None, "docs/security.md has no ```conf block"
    return block.group(1).replace("WORKLEDGER", stream).replace("workledger.>", f"{prefix}.>")


class _Roles:
    """The three users of the documented config, on one server and one stream."""

    def __init__(self, server: EmbeddedNats, stream: str, prefix: str) -> None:
        self.server = server

        def as_user(name: str, **extra: object) -> LogConfig:
            return LogConfig(
                servers=(server.url,),
                stream=stream,
                subject_prefix=prefix,
                user=name,
                password=PASSWORDS[name],
                connect_timeout=10.0,
                reconnect_wait=0.1,
                **extra,  # type: ignore[arg-type]
            )

        self.admin = as_user("admin")
        self.publisher = as_user("billing")
        self.daemon = as_user("projector", inbox_prefix="_INBOX_daemon")


@pytest.fixture
def roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Roles]:
    """A server running docs/security.md's permissions; the admin has created the stream."""
    suffix = uuid.uuid4().hex[:8]
    stream, prefix = f"WL_{suffix}", f"wl{suffix}"
    for user, password in PASSWORDS.items():
        monkeypatch.setenv(f"WL_{user.upper()}_PASSWORD", password)
    with _serve(tmp_path, _documented_permissions(stream, prefix)) as server:
        granted = _Roles(server, stream, prefix)
        anyio.run(_create_stream, granted.admin, backend="asyncio")
        yield granted


async def _create_stream(config: LogConfig) -> None:
    client = await connect(config)
    try:
        await ensure_stream(client.jetstream(), config)
    finally:
        await client.close()


async def _publish(config: LogConfig, count: int) -> None:
    async with Publisher(config) as pub:
        for number in range(count):
            await pub.publish(ev.TaskSubmitted(task=f"t-{number}", pool="gpu", queue="q"))


async def _stored(config: LogConfig) -> int:
    client = await connect(config)
    try:
        return int((await stream_info(client.jetstream(), config)).state.messages)
    finally:
        await client.close()


def _violations(server: EmbeddedNats) -> list[tuple[str, str, str]]:
    """``(user, "Publish" or "Subscription", subject)`` for each refusal the server logged."""
    pattern = r'user:(\w+)" - (Publish|Subscription) Violation - Subject "([^"]*)"'
    return re.findall(pattern, server.log_path.read_text())


async def test_a_publisher_can_publish_events(roles: _Roles) -> None:
    """The publisher role appends events (and gets their acks) with no violation."""
    await _publish(roles.publisher, 10)
    assert await _stored(roles.admin) == 10
    assert _violations(roles.server) == []


async def test_a_publisher_cannot_delete_the_stream(
    roles: _Roles, caplog: pytest.LogCaptureFixture
) -> None:
    """Deleting (or purging) the stream is refused by the server; the stream stays."""
    caplog.set_level(logging.WARNING, logger="workledger.core.log")
    await _publish(roles.publisher, 3)
    client = await connect(roles.publisher)
    try:
        with pytest.raises(Exception):  # noqa: B017, PT011 (the API call times out: no answer)
            await client.jetstream(timeout=1.0).delete_stream(roles.publisher.stream)
        with pytest.raises(Exception):  # noqa: B017, PT011
            await client.jetstream(timeout=1.0).purge_stream(roles.publisher.stream)
        stream = roles.publisher.stream
        logged = f'permissions violation for publish to "$js.api.stream.delete.{stream.lower()}"'
        # The server's -ERR reaches the client's error callback asynchronously: wait for it.
        with anyio.move_on_after(10):
            while logged not in caplog.text:  # noqa: ASYNC110 (polling a log, no event to wait on)
                await anyio.sleep(0.05)
    finally:
        await client.close()
    assert await _stored(roles.admin) == 3
    refused = _violations(roles.server)
    assert ("billing", "Publish", f"$JS.API.STREAM.DELETE.{stream}") in refused
    assert ("billing", "Publish", f"$JS.API.STREAM.PURGE.{stream}") in refused
    assert logged in caplog.text, "the refusal is logged once, naming the subject"


async def test_a_publisher_cannot_publish_outside_the_prefix_nor_read_events(
    roles: _Roles,
) -> None:
    """Another subject is refused, and so is a consumer on the stream (others' events)."""
    client = await connect(roles.publisher)
    try:
        await client.publish("elsewhere.orders", b"{}")
        await client.flush()
        with pytest.raises(Exception):  # noqa: B017, PT011 (times out: the request is refused)
            await client.jetstream(timeout=1.0).subscribe(
                f"{roles.publisher.subject_prefix}.>", stream=roles.publisher.stream
            )
    finally:
        await client.close()
    refused = _violations(roles.server)
    assert ("billing", "Publish", "elsewhere.orders") in refused
    create = f"$JS.API.CONSUMER.CREATE.{roles.publisher.stream}"
    assert any(subject.startswith(create) for _, _, subject in refused)


async def test_a_daemon_can_consume_and_project_every_event(roles: _Roles) -> None:
    """The daemon role folds the whole stream, past flow control, with no violation."""
    count = 20_000
    await _publish(roles.publisher, count)
    store = MemoryStore()
    projector = Projector(ProjectorConfig(log=roles.daemon), [store])
    async with anyio.create_task_group() as tg:
        await tg.start(projector.run)
        assert await projector.wait_for(count, timeout=60)
        tg.cancel_scope.cancel()
    assert store.stats().applied == count
    assert _violations(roles.server) == []


async def test_a_daemon_cannot_publish_events(roles: _Roles) -> None:
    """An event published with the daemon's credentials never reaches the stream."""
    await _publish(roles.publisher, 2)
    client = await connect(roles.daemon)
    try:
        subject = f"{roles.daemon.subject_prefix}.gpu.task.t-x.completed"
        await client.publish(subject, b'{"type": "task.completed", "task": "t-x"}')
        await client.flush()
        await asyncio.sleep(0.2)
    finally:
        await client.close()
    assert await _stored(roles.admin) == 2
    assert ("projector", "Publish", subject) in _violations(roles.server)


async def test_a_daemon_without_its_private_inbox_is_told_which_subscription_was_refused(
    roles: _Roles, caplog: pytest.LogCaptureFixture
) -> None:
    """Forgetting --nats-inbox-prefix gives a named violation, not a silent hang."""
    caplog.set_level(logging.WARNING)
    wrong = LogConfig(**{**_fields(roles.daemon), "inbox_prefix": "_INBOX"})
    with pytest.raises(LogError):
        await _stored(wrong)
    assert [kind for _, kind, _ in _violations(roles.server)] == ["Subscription"]
    assert "permissions violation for subscription to" in caplog.text


def _fields(config: LogConfig) -> dict[str, object]:
    return msgspec.structs.asdict(config)
