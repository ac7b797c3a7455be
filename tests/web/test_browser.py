"""A real browser walks the triage path: findings table -> finding -> reproduce -> campaign.

Headless Chromium from Debian (/usr/bin/chromium) driven by Playwright from PyPI;
never ``playwright install`` (browser downloads fail on CI machines). The server is the
real app under uvicorn on a free loopback port. FARM_WEB_SCREENSHOT=path also
saves a screenshot of the findings page there (docs/findings-page.png).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import WEB_TOKEN, Filled, fill

from farm.store import db
from farm.web import create_app

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _need_browser() -> None:
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "playwright is not installed: .venv/bin/pip install -e '.[dev]'"
    if reason is None and not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing: apt-get install chromium"
    if reason is not None:
        if os.environ.get("FARM_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Filled]]:
    """The app on a filled SQLite database, served by uvicorn in a thread."""
    _need_browser()
    import uvicorn

    url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'farm.sqlite'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    filled = fill(db.session_factory(engine), url)
    engine.dispose()
    app = create_app(url, web_token=WEB_TOKEN, cache_ttl=0)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 10 s")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", filled
    server.should_exit = True
    thread.join(timeout=10)
    app.state.web.engine.dispose()


def test_findings_to_reproduction(served: tuple[str, Filled]) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, filled = served
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda msg: problems.append(msg.text) if msg.type == "error" else None,
            )
            page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))  # alert(1)

            page.goto(f"{base}/findings")
            expect(page.get_by_role("heading", name="Findings")).to_be_visible()
            table = page.locator("table.findings")
            expect(table).to_contain_text("WARNING in zap_pte_range")
            # the hostile title is shown as text, not run
            expect(table).to_contain_text("<script>alert(NUM)</script>")
            if os.environ.get("FARM_WEB_SCREENSHOT"):
                page.screenshot(path=os.environ["FARM_WEB_SCREENSHOT"])

            # sort by count, then follow the most frequent finding
            page.get_by_role("link", name="count", exact=True).click()
            page.get_by_role("link", name="count ▾", exact=True).wait_for()
            first = table.locator("tbody tr").first.get_by_role("link").first
            expect(first).to_have_text("BUG: Bad rss-counter state")
            first.click()
            expect(page.locator("h1")).to_have_text("BUG: Bad rss-counter state")
            expect(page.locator("pre.report")).to_contain_text("MM_SHMEMPAGES")

            form = page.locator("#reproduce-form")
            form.get_by_label("runs per kernel").fill("3")
            form.locator("input[name=web_token]").fill(WEB_TOKEN)
            form.get_by_role("button", name="reproduce").click()

            page.wait_for_url("**/campaigns/repro-*")
            expect(page.locator(".flash")).to_contain_text("Reproduction queued")
            expect(page.locator("h1 .status")).to_have_text("running")
            expect(page.locator("dl.facts")).to_contain_text(filled.tokens["rss"])
            expect(page.locator("dl.facts")).to_contain_text("0 / 6")  # 3 runs x 2 kernels

            # back on the finding, the reproduction is listed as pending
            page.goto(f"{base}/findings/{filled.findings['rss']}")
            expect(page.locator("#reproduce table")).to_contain_text("repro-")

            # the hostile trial: escaped, control characters visible, no script ran
            page.goto(f"{base}/trials/{filled.trials['adhoc-xss']}")
            expect(page.locator("pre.console")).to_contain_text("<script>alert(1)</script>")
            expect(page.locator("pre.console")).to_contain_text("\\x1b[31mred")
        finally:
            browser.close()
    assert problems == []
