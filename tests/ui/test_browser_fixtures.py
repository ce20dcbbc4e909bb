"""The browser fixtures (tests/browser.py) as a test author meets them, each in a pytest run of its own.

A separate run is the only way to watch a test fail on purpose and then look at what the fixture left behind;
it also lets the environment prove that nothing comes from Playwright's browser cache or a download.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import chromium_path

REPO = Path(__file__).resolve().parents[2]

# The suite's own asyncio and warning settings (pyproject.toml), so the inner run meets what a real test meets.
INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = session
asyncio_default_test_loop_scope = session
filterwarnings = error
"""

BROWSER_TESTS = """\
import functools
import http.server
import threading
from pathlib import Path

import pytest
from playwright.async_api import Page

from tests.browser import frames_text, open_url, page_text

PAGE = "<h1>Review the docs</h1><iframe sandbox srcdoc='<p>rendered inside the frame</p>'></iframe>"


async def test_fails_on_a_page(page: Page, tmp_path: Path) -> None:
    await page.set_content(PAGE)
    Path("failing-tmp").write_text(str(tmp_path))
    assert "Review the docs" in await page_text(page)
    assert "rendered inside the frame" in await frames_text(page)
    assert False, "failing on purpose"


async def test_passes_on_a_page(page: Page, tmp_path: Path) -> None:
    await page.set_content(PAGE)
    Path("passing-tmp").write_text(str(tmp_path))
    assert "rendered inside the frame" in await frames_text(page)


async def test_contexts_are_isolated(page: Page) -> None:
    # A cookie set by the earlier tests' pages must not be here: every test has a context of its own.
    assert await page.context.cookies() == []
    await page.context.add_cookies([{"name": "seen", "value": "1", "url": "http://127.0.0.1/"}])


async def test_contexts_are_isolated_too(page: Page) -> None:
    assert await page.context.cookies() == []
    await page.context.add_cookies([{"name": "seen", "value": "1", "url": "http://127.0.0.1/"}])


async def test_open_url_checks_the_status(page: Page, tmp_path: Path) -> None:
    (tmp_path / "here.html").write_text("<p>here</p>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        serving = threading.Thread(target=server.serve_forever)
        serving.start()
        try:
            base = f"http://127.0.0.1:{server.server_address[1]}"
            assert (await open_url(page, f"{base}/here.html")).status == 200
            assert "here" in await page_text(page)
            assert (await open_url(page, f"{base}/missing.html", status=404)).status == 404
            with pytest.raises(AssertionError, match="HTTP 404, wanted 200"):
                await open_url(page, f"{base}/missing.html")
        finally:
            server.shutdown()
            serving.join()
"""


def run_inner(tmp_path: Path, tests: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``tests`` in a fresh pytest process with only the browser plugin, in ``tmp_path``."""
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_inner.py").write_text(tests)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "CI"))}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "pytest_asyncio.plugin",
            "-p",
            "tests.browser",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            f"--basetemp={tmp_path / 'basetemp'}",
            "test_inner.py",
        ],
        cwd=tmp_path,
        # Only the plugins a browser test needs: starting every installed one would double this test's time.
        env={**base, "PYTHONPATH": str(REPO), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **env},
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )


@pytest.mark.slow
def test_browser_fixture_saves_failing_pages_and_needs_no_browser_download(tmp_path: Path) -> None:
    chromium_path()  # skip (or fail in CI) without chromium, like every browser test
    # A HOME and a browsers path with nothing in them: the run must not reach for ~/.cache/ms-playwright.
    (tmp_path / "home").mkdir()
    result = run_inner(
        tmp_path, BROWSER_TESTS, HOME=str(tmp_path / "home"), PLAYWRIGHT_BROWSERS_PATH=str(tmp_path / "no-browsers")
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 failed, 4 passed" in output, output
    assert "FAILED test_inner.py::test_fails_on_a_page" in output, output

    failing = Path((tmp_path / "failing-tmp").read_text())
    shot = failing / "browser-failure-1.png"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<h1>Review the docs</h1>" in (failing / "browser-failure-1.html").read_text()
    assert "rendered inside the frame" in (failing / "browser-failure-1.txt").read_text()
    assert str(shot) in output  # the report tells where to look

    passing = Path((tmp_path / "passing-tmp").read_text())
    assert not list(passing.glob("browser-failure-*"))
    assert not (tmp_path / "no-browsers").exists()
    assert not list((tmp_path / "home").iterdir())


SKIPPED_WITHOUT_CHROMIUM = """\
async def test_needs_a_browser(page) -> None:
    raise AssertionError("ran without chromium")
"""


def test_browser_fixture_skips_without_chromium_outside_ci(tmp_path: Path) -> None:
    result = run_inner(tmp_path, SKIPPED_WITHOUT_CHROMIUM, PATH=str(tmp_path / "empty-path"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 skipped" in output, output
    assert "chromium is not installed" in output, output


def test_browser_fixture_fails_without_chromium_in_ci(tmp_path: Path) -> None:
    result = run_inner(tmp_path, SKIPPED_WITHOUT_CHROMIUM, PATH=str(tmp_path / "empty-path"), CI="true")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 error" in output, output
    assert "scripts/install-system-deps.sh" in output, output
    assert "ran without chromium" not in output, output
