"""The live fleet page in a real headless Chromium, against a real daemon and nats-server.

Debian's ``chromium`` drives it through Playwright, which never downloads a browser of its
own here (``executable_path``). Without a browser the tests skip with the reason, except in CI
(``CI`` set), where ``.ci/run`` installs one and a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workledger.core import events as ev
from workledger.core.log import LogConfig

from .test_feed import daemon, publish

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 15_000


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return found or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must have it (.ci/run installs Debian's chromium)")
    pytest.skip(f"{reason}: `apt-get install chromium` and `pip install -e '.[dev]'` to run it")


@pytest.fixture
def page() -> Iterator[Any]:
    """A fresh page in headless Chromium that fails the test on any script error."""
    executable = _chromium()
    if executable is None:
        _missing("no chromium browser is installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    errors: list[str] = []
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        yield tab
        browser.close()
    assert errors == [], "the page's script failed"


def fleet() -> list[ev.Event]:
    """A pool with a limit, a worker holding one task, and a failure."""
    return [
        ev.PoolCreated(pool="etl", concurrency_limit=4),
        ev.QueueCreated(pool="etl", queue="ingest", concurrency_limit=2),
        ev.WorkerStarted(worker="w1", pool="etl", slots=2, heartbeat_interval=60),
        ev.TaskSubmitted(task="t1", pool="etl", queue="ingest"),
        ev.TaskClaimed(task="t1", worker="w1"),
        ev.TaskSubmitted(task="t0", pool="etl", queue="ingest"),
        ev.TaskFailed(task="t0", error="ValueError: row 7 has 3 columns"),
    ]


def test_the_page_shows_the_fleet_then_follows_the_feed_without_reloading(
    log_stream: LogConfig, tmp_path: Path, page: Any
) -> None:
    """Workers, slots and failures render from the API; new events appear in place."""
    from playwright.sync_api import expect

    seqs = publish(log_stream, fleet())
    with daemon(log_stream, tmp_path / "state") as (_, api):
        _wait_applied(api, seqs[-1])
        page.goto(f"{api}/")
        expect(page.locator("#feed-state")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        w1 = page.locator('tr[data-worker="w1"]')
        expect(w1).to_contain_text("ONLINE", timeout=WAIT_MS)
        expect(w1.locator('[data-task="t1"]')).to_be_visible()
        expect(page.locator('[data-pool="etl"] .pool-head').first).to_contain_text("1 held")
        expect(page.locator('[data-pool="etl"]')).to_contain_text("limit 4")
        expect(page.locator('[data-queue="ingest"]')).to_contain_text("limit 2")
        expect(page.locator('#failures [data-task="t0"]')).to_contain_text("row 7 has 3 columns")
        page.evaluate("window.__notReloaded = true")

        publish(
            log_stream,
            [
                ev.WorkerStarted(worker="w2", pool="etl", slots=1, heartbeat_interval=60),
                ev.TaskSubmitted(task="t2", pool="etl", queue="ingest"),
                ev.TaskClaimed(task="t2", worker="w2"),
                ev.TaskCompleted(task="t1"),
            ],
        )
        expect(page.locator('tr[data-worker="w2"] [data-task="t2"]')).to_be_visible(timeout=WAIT_MS)
        expect(w1.locator('[data-task="t1"]')).to_have_count(0, timeout=WAIT_MS)
        expect(w1).to_contain_text("idle")
        expect(page.locator("#tile-online")).to_have_text("2 / 2")
        assert page.evaluate("window.__notReloaded") is True
        page.screenshot(path=str(tmp_path / "fleet.png"), full_page=True)


def test_behind_a_token_the_page_asks_for_it_once_then_goes_live(
    log_stream: LogConfig, tmp_path: Path, page: Any
) -> None:
    """A daemon with an API token: the page asks for it, a wrong one is refused, the right
    one signs the page in (a cookie: an EventSource sends no header) and the feed goes live."""
    from playwright.sync_api import expect

    seqs = publish(log_stream, fleet())
    with daemon(log_stream, tmp_path / "state", api_token="s3cret") as (_, api):
        _wait_applied(api, seqs[-1], token="s3cret")
        page.goto(f"{api}/")
        expect(page.locator("#signin")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator('tr[data-worker="w1"]')).to_have_count(0)
        page.fill("#token", "wrong")
        page.click("#signin button")
        expect(page.locator("#signin-error")).to_have_text("wrong token", timeout=WAIT_MS)
        page.fill("#token", "s3cret")
        page.click("#signin button")
        expect(page.locator("#signin")).to_be_hidden(timeout=WAIT_MS)
        expect(page.locator("#feed-state")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        expect(page.locator('tr[data-worker="w1"] [data-task="t1"]')).to_be_visible()
        publish(log_stream, [ev.TaskCompleted(task="t1")])
        expect(page.locator('tr[data-worker="w1"] [data-task="t1"]')).to_have_count(
            0, timeout=WAIT_MS
        )
        cookies = page.context.cookies()
        assert [c["httpOnly"] for c in cookies] == [True]
        assert "s3cret" not in cookies[0]["value"]


def test_text_from_the_data_is_shown_as_text_never_run_as_markup(
    log_stream: LogConfig, tmp_path: Path, page: Any
) -> None:
    """A worker named like an HTML tag is displayed literally; nothing in it runs."""
    from playwright.sync_api import expect

    hostile = '<img src=x onerror="window.__ran=1">'
    error = "<script>window.__ran=2</script>"
    with daemon(log_stream, tmp_path / "state") as (_, api):
        page.goto(f"{api}/fleet")
        expect(page.locator("#feed-state")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        publish(
            log_stream,
            [
                ev.WorkerStarted(worker=hostile, pool="etl", slots=1),
                ev.TaskSubmitted(task="t9", pool="etl", queue="q"),
                ev.TaskClaimed(task="t9", worker=hostile),
                ev.TaskFailed(task="t9", error=error),
            ],
        )
        expect(page.locator("td.worker").first).to_have_text(hostile, timeout=WAIT_MS)
        expect(page.locator('#failures [data-task="t9"]')).to_contain_text(error)
        assert page.locator("main img, main script").count() == 0
        assert page.evaluate("window.__ran") is None


def _wait_applied(api: str, seq: int, token: str | None = None) -> None:
    import httpx

    params = {"wait_for": seq, "timeout": 10}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    health = httpx.get(f"{api}/v1/checkpoint", params=params, headers=headers, timeout=15).json()
    assert health["checkpoint"] >= seq
