"""The docs as specifications: README.md's Python runs, docs/wire.md matches the event classes.

Convention: every ```python block of README.md is executed, in order, in one namespace (like a
reader pasting them into one session). The snippets read ``WORKLEDGER_NATS``,
``WORKLEDGER_STREAM`` and ``WORKLEDGER_SUBJECT_PREFIX`` as the CLI does, so the test points them
at its own nats-server by setting those variables; the snippet text stays what a user runs.
Blocks that must not run are fenced as ``console`` or ``text`` instead.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from workledger.core.events import event_types
from workledger.core.log import LogConfig, encode_token
from workledger.projections.fold import Ledger
from workledger.projections.views import TaskStatus

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
WIRE = ROOT / "docs" / "wire.md"
COMMON_FIELDS = ("id", "at", "v")

_FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_ROW = re.compile(r"^\|\s*`([a-z_]+)`\s*\|([^|]*)\|\s*(yes|no)\s*\|", re.MULTILINE)


def code_blocks(markdown: str, language: str) -> list[str]:
    """The bodies of the fenced blocks whose info string starts with ``language``."""
    return [body for lang, body in _FENCE.findall(markdown) if lang == language]


def wire_section(markdown: str, heading: str) -> str:
    """The text under a ``#`` heading of docs/wire.md, up to the next heading of any level."""
    match = re.search(rf"^#+ {re.escape(heading)}\s*$(.*?)(?=^#|\Z)", markdown, re.M | re.S)
    assert match is not None, f"docs/wire.md has no section {heading!r}"
    return match.group(1)


def documented_fields(section: str) -> dict[str, bool]:
    """``{field: required}`` from a section's field table."""
    return {name: required == "yes" for name, _type, required in _ROW.findall(section)}


# --- README.md --------------------------------------------------------------------------------


def test_the_readme_has_python_blocks_to_run() -> None:
    """The SDK section shows code, so the runner below has something to check."""
    assert len(code_blocks(README.read_text(), "python")) >= 2


def test_the_readme_python_blocks_run_against_a_real_server(
    log_stream: LogConfig,
    read_stream: Callable[[LogConfig], Awaitable[list]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every README snippet runs as written, and its tasks end the way the text says."""
    monkeypatch.setenv("WORKLEDGER_NATS", log_stream.servers[0])
    monkeypatch.setenv("WORKLEDGER_STREAM", log_stream.stream)
    monkeypatch.setenv("WORKLEDGER_SUBJECT_PREFIX", log_stream.subject_prefix)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for number, block in enumerate(code_blocks(README.read_text(), "python"), start=1):
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)

    stored = asyncio.run(read_stream(log_stream))
    assert stored, "the README's snippets published nothing"
    assert all(m.msg_id == m.event.id for m in stored), "Nats-Msg-Id must be the event id"
    ledger = Ledger()
    for message in stored:
        ledger.apply(message.event)
    job1, job2 = ledger.task("job-1"), ledger.task("job-2")
    assert job1 is not None
    assert job1.status is TaskStatus.COMPLETED
    assert job2 is not None
    assert job2.status is TaskStatus.FAILED
    assert (job2.retries, job2.error) == (1, "out of memory")
    assert "job-1 completed; stored at stream sequence" in capsys.readouterr().out


def test_the_readme_links_to_the_wire_contract() -> None:
    """The README points at docs/wire.md, and the file is there."""
    assert "(docs/wire.md)" in README.read_text()
    assert WIRE.is_file()


# --- docs/wire.md -----------------------------------------------------------------------------


@pytest.mark.parametrize("tag", sorted(event_types()))
def test_every_event_type_is_documented_with_exactly_its_fields(tag: str) -> None:
    """The wire doc's table for each type lists its fields, and marks the required ones."""
    cls = event_types()[tag]
    actual = {
        f.name: f.required for f in msgspec.structs.fields(cls) if f.name not in COMMON_FIELDS
    }
    documented = documented_fields(wire_section(WIRE.read_text(), f"`{tag}`"))
    assert documented == actual


def test_the_fields_every_event_carries_are_documented() -> None:
    """``type``, ``id``, ``at`` and ``v`` are in the common table, all optional but ``type``."""
    documented = documented_fields(wire_section(WIRE.read_text(), "Fields every event carries"))
    assert documented == {"type": True} | dict.fromkeys(COMMON_FIELDS, False)
    for cls in event_types().values():
        names = {f.name for f in msgspec.structs.fields(cls)}
        assert set(COMMON_FIELDS) <= names, f"{cls.__name__} lacks a common field"


def test_the_wire_doc_documents_no_event_type_that_does_not_exist() -> None:
    """Every ``#### `x.y``` heading names a real event type."""
    headings = re.findall(r"^#### `([a-z]+\.[a-z]+)`", WIRE.read_text(), re.MULTILINE)
    assert sorted(headings) == sorted(event_types())


@pytest.mark.parametrize(
    ("name", "token"),
    [
        ("render-7", "render-7"),
        ("render node.1", "~cmVuZGVyIG5vZGUuMQ"),
        ("ml.gpu", "~bWwuZ3B1"),
        ("web hooks", "~d2ViIGhvb2tz"),
        ("_", "~Xw"),
    ],
)
def test_the_token_examples_in_the_wire_doc_are_what_the_encoder_produces(
    name: str, token: str
) -> None:
    """The doc's examples are the encoder's output, and the doc shows them."""
    assert encode_token(name) == token
    assert f"`{token}`" in WIRE.read_text()


def test_the_wire_doc_digest_length_is_right() -> None:
    """A name too long to spell out becomes ``~~`` plus 32 characters: 34 in all."""
    token = encode_token("x" * 600)
    assert token.startswith("~~")
    assert len(token) == 34
    assert "always 34 characters" in WIRE.read_text()


def test_the_wire_doc_names_the_stream_defaults() -> None:
    """The defaults the doc states are LogConfig's."""
    defaults = LogConfig()
    text = WIRE.read_text()
    assert f"`{defaults.stream}`" in text
    assert f"`{defaults.subject_prefix}`" in text
    assert f"| {defaults.duplicate_window:g} s |" in text
