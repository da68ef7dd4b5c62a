"""Command-line options shared by every command that talks to NATS (``cli`` and ``rebuild``).

A module of its own so that commands defined outside ``cli`` reuse them without importing the
CLI (which registers those commands: the import would be circular).

The security options (credentials, TLS, signing keys; docs/security.md) are not passed to the
command function: they are stored in the click context, and :func:`log_config` reads them from
there. So every command that takes ``log_options`` gains them without changing its signature,
and a command cannot forget to pass one on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from workledger.core.log import LogConfig

__all__ = ["log_config", "log_options", "partition_options"]

_F = TypeVar("_F", bound=Callable[..., Any])
_META = "workledger.security"
_FILE = click.Path(exists=True, dir_okay=False, readable=True)
_DIR = click.Path(exists=True, file_okay=False, readable=True)
_IN_ENV = "Prefer the environment variable: a flag's value shows in `ps`."


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Keep a security option's value in the context for :func:`log_config`."""
    if value is not None and param.name is not None:
        ctx.meta.setdefault(_META, {})[param.name] = value


def _security_option(flag: str, name: str, help: str, **kwargs: Any) -> Callable[[_F], _F]:
    envvar = "WORKLEDGER_" + flag.removeprefix("--").replace("-", "_").upper()
    return click.option(
        flag,
        name,
        envvar=envvar,
        show_envvar=True,
        expose_value=False,
        callback=_remember,
        help=help,
        **kwargs,
    )


_SECURITY_OPTIONS = [
    _security_option("--nats-token", "token", f"Token to authenticate to NATS. {_IN_ENV}"),
    _security_option("--nats-user", "user", "User name to authenticate to NATS."),
    _security_option("--nats-password", "password", f"Password of --nats-user. {_IN_ENV}"),
    _security_option("--nats-nkey", "nkey_seed_file", "File holding an nkey seed.", type=_FILE),
    _security_option("--nats-creds", "creds_file", "NATS credentials (.creds) file.", type=_FILE),
    _security_option("--nats-tls-ca", "tls_ca_file", "CA that signed NATS's cert.", type=_FILE),
    _security_option("--nats-tls-cert", "tls_cert_file", "Client cert (mTLS).", type=_FILE),
    _security_option("--nats-tls-key", "tls_key_file", "Key of --nats-tls-cert.", type=_FILE),
    _security_option("--nats-tls-hostname", "tls_hostname", "Name to verify NATS's cert for."),
    _security_option(
        "--nats-tls-first",
        "tls_handshake_first",
        "TLS before anything else (server: tls { handshake_first: true }).",
        is_flag=True,
        default=None,
    ),
    _security_option(
        "--nats-inbox-prefix", "inbox_prefix", "Reply subjects' prefix (default _INBOX)."
    ),
    _security_option(
        "--sign-key-file", "sign_key_file", "Sign published events with this key.", type=_FILE
    ),
    _security_option(
        "--verify-keys-dir", "verify_keys_dir", "Accept only events signed by these.", type=_DIR
    ),
]


def partition_options(func: _F) -> _F:
    """--pools and --filter-subject: which part of the stream a daemon (or a rebuild of its
    file) reads, passed as ``pools`` (a comma-separated text) and ``filter_subjects``."""
    func = click.option(
        "--pools",
        default="",
        envvar="WORKLEDGER_POOLS",
        help="Serve only these pools, comma-separated: their events, and the task events "
        "without a pool of their tasks.",
    )(func)
    return click.option(
        "--filter-subject",
        "filter_subjects",
        multiple=True,
        envvar="WORKLEDGER_FILTER_SUBJECTS",
        help="Consume only these subjects (partition the stream across daemons).",
    )(func)


def log_options(func: _F) -> _F:
    """--nats, --stream, --subject-prefix and the security options (credentials, TLS, signing
    keys), shared by every command that talks to NATS."""
    options = [
        click.option(
            "--nats",
            "servers",
            multiple=True,
            envvar="WORKLEDGER_NATS",
            help="NATS server URL (repeat for a cluster).",
        ),
        click.option(
            "--stream",
            default="WORKLEDGER",
            envvar="WORKLEDGER_STREAM",
            show_default=True,
            help="JetStream stream name.",
        ),
        click.option(
            "--subject-prefix",
            default="workledger",
            show_default=True,
            envvar="WORKLEDGER_SUBJECT_PREFIX",
            help="First token of every subject.",
        ),
    ]
    for option in reversed(options + _SECURITY_OPTIONS):
        func = option(func)
    return func


def log_config(servers: tuple[str, ...], stream: str, subject_prefix: str) -> LogConfig:
    """The LogConfig those options describe (no --nats: the local default server), with the
    security options of the running command.

    :raises click.UsageError: for a combination that cannot work (two ways to authenticate).
    """
    ctx = click.get_current_context(silent=True)
    security: dict[str, Any] = dict(ctx.meta.get(_META, {})) if ctx is not None else {}
    try:
        return LogConfig(
            servers=servers or LogConfig().servers,
            stream=stream,
            subject_prefix=subject_prefix,
            **security,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
