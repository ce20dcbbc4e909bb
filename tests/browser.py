"""Browser tests: Playwright's async API driving Debian's Chromium, one browser per session, a context per test.

Registered for the whole suite by ``pytest_plugins`` in ``tests/conftest.py``; a test asks for ``page`` (or
``context``, or ``browser`` for several contexts) and gets a fresh, isolated tab::

    async def test_review_page_approves(page: Page, tmp_path: Path) -> None:
        await open_url(page, f"{base}/ui/runs/{run_id}")
        await page.get_by_role("button", name="Approve").click()
        await page.screenshot(path=tmp_path / "approved.png")

Nothing downloads: the ``playwright`` wheel carries its node driver, and the browser is the system's
``chromium`` (``scripts/install-system-deps.sh``) passed as ``executable_path``, so ``playwright install`` and
``~/.cache/ms-playwright`` play no part. When a test fails, every page it still has open is saved as
``browser-failure-<n>.png``, ``.html`` and ``.txt`` in the test's ``tmp_path``, and the report names the files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Generator
from pathlib import Path

import playwright
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Error,
    Page,
    Playwright,
    Response,
    ViewportSize,
    async_playwright,
)

# The machine's flags. Playwright's own defaults already cover most of them; they are spelled out so the
# policy (no GPU, nothing that reaches beyond loopback, no first-run UI) does not rest on another project's
# defaults. The sandbox is off through ``chromium_sandbox=False`` (tests run as root, where it cannot start).
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Large enough that the Temporal Web UI lays its tables out in full (and screenshots show them).
VIEWPORT: ViewportSize = {"width": 1400, "height": 1000}
#: Starting Chromium is the slow part on a loaded 2-core machine; a hang still ends well inside pytest's timeout.
LAUNCH_TIMEOUT_MS = 60_000

_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


def chromium_path() -> str:
    """Path of Debian's chromium; skip when it is absent, except in CI where the install step must provide it."""
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: `make test` runs scripts/install-system-deps.sh for it")
        pytest.skip("chromium is not installed (scripts/install-system-deps.sh installs it)")
    return path


def _versions(executable: str) -> str:
    """Which Chromium the installed Playwright was built against, and which one is installed (for errors)."""
    browsers = Path(playwright.__file__).parent / "driver" / "package" / "browsers.json"
    try:
        targeted = next(
            b["browserVersion"] for b in json.loads(browsers.read_text())["browsers"] if b["name"] == "chromium"
        )
    except (OSError, ValueError, KeyError, StopIteration):
        targeted = "unknown"
    try:
        installed = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        installed = "unknown"
    return f"playwright targets Chromium {targeted}; {executable} is {installed or 'unknown'}"


@pytest.fixture(scope="session")
async def playwright_driver() -> AsyncIterator[Playwright]:
    """Playwright's node driver, started on the suite's session event loop."""
    chromium_path()  # skip (or fail in CI) before starting the driver
    async with async_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
async def browser(playwright_driver: Playwright, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    """One headless Chromium for the whole session (each test isolates itself in its own context).

    Playwright gives the browser a fresh temporary profile (user data dir) and removes it on close.
    """
    executable = chromium_path()
    # Chromium keeps its crash reports (it files one for a sandboxed srcdoc iframe, which the Web UI uses) and
    # GTK its dconf cache under the user's config and cache dirs whatever the profile: point those at the
    # session's tmp dir, so the user's home stays untouched and every session starts clean.
    home = tmp_path_factory.mktemp("chromium-home")
    try:
        launched = await playwright_driver.chromium.launch(
            executable_path=executable,
            headless=True,
            chromium_sandbox=False,
            args=CHROMIUM_ARGS,
            env={**os.environ, "XDG_CONFIG_HOME": str(home / "config"), "XDG_CACHE_HOME": str(home / "cache")},
            timeout=LAUNCH_TIMEOUT_MS,
        )
    except Error as exc:
        # The likeliest cause after a system upgrade: Debian's Chromium moved past the protocol Playwright speaks.
        raise RuntimeError(f"chromium did not start under Playwright ({_versions(executable)}): {exc}") from exc
    try:
        yield launched
    finally:
        await launched.close()


@pytest.fixture
async def context(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A fresh browser context (cookies, storage, cache of its own); on failure its pages are saved to tmp_path."""
    ctx = await browser.new_context(viewport=VIEWPORT)
    try:
        yield ctx
    finally:
        try:
            report = request.node.stash.get(_CALL_REPORT, None)
            if report is not None and report.failed:
                saved = await _save_pages(ctx, tmp_path)
                if saved:
                    request.node.add_report_section("teardown", "browser", "\n".join(str(p) for p in saved))
        finally:
            await ctx.close()


@pytest.fixture
async def page(context: BrowserContext) -> Page:
    """A new tab in the test's own context."""
    return await context.new_page()


async def open_url(page: Page, url: str, *, status: int | None = 200) -> Response:
    """Navigate to ``url``, wait for its load event, and check the document's HTTP status.

    Args:
        page: The tab to navigate.
        url: Where to go.
        status: The status the document must have; None accepts any (a test that inspects it itself).

    Returns:
        The document's response (headers, status, body).
    """
    response = await page.goto(url, wait_until="load")
    assert response is not None, f"{url}: no response (same-document navigation?)"
    if status is not None:
        assert response.status == status, f"{url}: HTTP {response.status}, wanted {status}"
    return response


async def page_text(page: Page) -> str:
    """The visible text of the page's main document."""
    return str(await page.evaluate("document.body ? document.body.innerText : ''"))


async def frames_text(page: Page) -> str:
    """Visible text of every frame, iframes included (the Web UI renders markdown inside a sandboxed iframe)."""
    parts: list[str] = []
    for frame in page.frames:
        try:
            parts.append(str(await frame.evaluate("document.body ? document.body.innerText : ''")))
        except Error:
            continue  # a frame detached while we read: it shows nothing any more
    return "\n".join(parts)


async def _save_pages(ctx: BrowserContext, directory: Path) -> list[Path]:
    """Write a PNG, the HTML and the text (iframes included) of every open page; a page that cannot be captured is skipped, not fatal."""
    saved: list[Path] = []
    for index, open_page in enumerate(ctx.pages, start=1):
        base = directory / f"browser-failure-{index}"
        try:
            await open_page.screenshot(path=base.with_suffix(".png"), timeout=10_000)
            saved.append(base.with_suffix(".png"))
            base.with_suffix(".html").write_text(await open_page.content(), encoding="utf-8")
            saved.append(base.with_suffix(".html"))
            base.with_suffix(".txt").write_text(await frames_text(open_page), encoding="utf-8")
            saved.append(base.with_suffix(".txt"))
        except Error:
            continue
    return saved


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the call phase's report where the ``context`` fixture's teardown can see whether the test failed."""
    report = yield
    if report.when == "call":
        item.stash[_CALL_REPORT] = report
    return report
