"""The Temporal Web UI as the operators' console: a run filtered by its correlation id shows up in Chromium
(driven by Playwright, tests/browser.py)."""

from __future__ import annotations

import socket
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Page
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from quantapilot.db import create_all, make_engine
from quantapilot.settings import Settings
from quantapilot.temporal_dev import dev_server
from quantapilot.tokens import create_token
from tests.browser import chromium_path, frames_text, open_url, page_text
from tests.support import Api, eventually, make_remote
from worker import build_worker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
async def ui_env() -> AsyncIterator[tuple[WorkflowEnvironment, int]]:
    """A dev server with its Web UI and our search attributes."""
    chromium_path()  # skip (or fail in CI) before starting anything
    ui_port = free_port()
    async with dev_server(ui_port=ui_port) as env:
        yield env, ui_port


@pytest.mark.slow
async def test_web_ui_lists_run_filtered_by_correlation_id(
    ui_env: tuple[WorkflowEnvironment, int],
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    page: Page,
    tmp_path: Path,
) -> None:
    env, ui_port = ui_env
    settings = Settings(
        environment="test",
        state_dir=tmp_path / "state",
        temporal_address=env.client.service_client.config.target_host,
        task_queue=f"qp-ui-{uuid.uuid4().hex[:10]}",
        allowed_repo_patterns=["file://*"],
        command_repo_patterns=[],
        token_cache_seconds=0.0,
    )
    engine = make_engine(settings.database_url)
    create_all(engine)
    token, _ = create_token(engine, workspace="default", subject="operator")
    api = Api(client=await aiohttp_client(create_app(settings, client=env.client, engine=engine)), token=token)
    url = make_remote(tmp_path, {"README.md": "# UI demo\n\nShown in the Web UI.\n"})
    correlation_id = f"ui-{uuid.uuid4().hex[:12]}"

    async with build_worker(env.client, settings):
        code, body = await api.post("/run", {"repo_url": url, "branch": "main", "correlation_id": correlation_id})
        assert code == 202, body
        run_id = body["run_id"]
        await api.wait_gate(run_id, "anchor")
        # Another run that the filter must leave out.
        _, other = await api.post("/run", {"repo_url": url, "branch": "main", "correlation_id": "someone-else"})

        query = f'QpCorrelationId="{correlation_id}"'
        await open_url(
            page, f"http://127.0.0.1:{ui_port}/namespaces/default/workflows?query={urllib.parse.quote(query)}"
        )
        # The UI is a single-page app that fetches the list after load: poll its text until the run shows.
        text = await eventually(
            lambda: page_text(page), lambda t: run_id in t, timeout=60, interval=0.25, what="run listed in the Web UI"
        )
        shot = tmp_path / "web-ui-list.png"
        await page.screenshot(path=shot)
        # The run's own page tells its story: the static summary and the current details (gate, command).
        # A failure leaves the page's picture and HTML in tmp_path (tests/browser.py).
        described = await env.client.get_workflow_handle(f"repo-run/default/{run_id}").describe()
        wid = urllib.parse.quote(described.id, safe="")
        await open_url(
            page, f"http://127.0.0.1:{ui_port}/namespaces/default/workflows/{wid}/{described.run_id}/user-metadata"
        )
        story = await eventually(
            lambda: frames_text(page),
            lambda t: "Waiting at gate" in t,
            timeout=60,
            interval=0.25,
            what="current details on the run's page",
        )

    assert f"repo-run/default/{run_id}" in text
    assert other["run_id"] not in text
    assert "RepoRun" in text
    assert f"Repository run of {url} @ main" in story
    assert f"qp approve {run_id} anchor" in story
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
