"""The review pages in a real browser (Playwright driving Debian's Chromium, tests/browser.py).

An approver opens the review_url of a webhook delivery, reads the rendered docs and the diff, types a reason and
approves: the run merges the docs. A rejection, a tampered and an expired link, and the inbox after sign-in.
Screenshots of each step are saved in the test's tmp_path.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Page
from sqlalchemy.engine import Engine
from temporalio.client import Client

from api.app import create_app
from quantapilot.review.links import ReviewLink
from tests.browser import chromium_path, open_url, page_text
from tests.review.support import Review, gate_requested_url, link_token, repo_files, trigger
from tests.support import Api, eventually, make_remote, remote_file
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import Receiver, create_endpoint

pytestmark = [
    pytest.mark.slow,
    pytest.mark.one_pass(
        "sqlite",
        why="what a browser renders and sends: the same review routes, sign-in, inbox and decisions run on "
        "PostgreSQL over HTTP in test_review_http.py, test_review_docs.py and test_review_deadline.py",
    ),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    """The stack with its API listening where review links point."""

    api: Api
    base: str
    settings: Any


@pytest.fixture
async def served(
    make_stack: StackFactory,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    client: Client,
    engine: Engine,
) -> Served:
    chromium_path()  # skip (or fail in CI) before starting anything
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    stack = await make_stack(public_base_url=base)
    # The browser's API: the same settings, on the port the links name.
    await aiohttp_client(create_app(stack.settings, client=client, engine=engine), server_kwargs={"port": port})
    return Served(api=stack.api, base=base, settings=stack.settings)


async def test_browser_approver_opens_webhook_link_reads_docs_and_diff_and_approves(
    served: Served, receiver: Receiver, page: Page, tmp_path: Path
) -> None:
    api = served.api
    await create_endpoint(api, receiver.url())
    remote = make_remote(tmp_path, repo_files(tmp_path))
    run_id = await trigger(api, remote)
    review = Review(run_id, await gate_requested_url(receiver, run_id))
    assert review.review_url.startswith(f"{served.base}/ui/runs/{run_id}/gates/anchor?t=")

    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    response = await open_url(page, review.review_url)
    assert "default-src 'none'" in (await response.all_headers())["content-security-policy"]
    await page.screenshot(path=tmp_path / "1-review.png", full_page=True)
    text = await page_text(page)
    assert "0 of 1 approvals" in text and "Hostile project" in text
    # The hostile README is text on the page, never markup: no alert fired, no script element exists.
    assert "<script>alert('readme')</script>" in text
    assert await page.locator("script, iframe").count() == 0
    assert await page.locator("#page-list li").count() >= 2
    assert await page.locator("#files tbody tr").count() >= 2
    assert "+" in await page.locator("#diff-summary").inner_text()
    assert await page.locator("#patch span.add").count() > 5
    first_file = (await page.locator("#files tbody tr td code").first.inner_text()).strip()
    assert first_file.endswith(".md") and remote_file(remote, "main", first_file) is None

    await page.get_by_label("Reason").fill("docs and diff read in the browser")
    await page.get_by_role("button", name="Approve").click()
    await page.wait_for_load_state("load")
    await page.screenshot(path=tmp_path / "2-approved.png", full_page=True)
    assert "review-link approved gate anchor" in await page_text(page)

    status = await api.wait_state(run_id, "completed")
    gate = status["gates"][0]
    assert (gate["decided_by"], gate["source"], gate["reason"]) == (
        "review-link",
        "link",
        "docs and diff read in the browser",
    )
    # Merged: the docs PR's files are on the base branch now.
    assert remote_file(remote, "main", first_file) is not None
    assert dialogs == []

    # The same link afterwards: it says who decided.
    await open_url(page, review.review_url, status=409)
    assert "already decided by review-link" in await page_text(page)
    await page.screenshot(path=tmp_path / "3-replayed.png")


async def test_browser_rejection_needs_a_reason_and_fails_the_run(
    served: Served, receiver: Receiver, page: Page, tmp_path: Path
) -> None:
    api = served.api
    await create_endpoint(api, receiver.url())
    run_id = await trigger(api, make_remote(tmp_path, repo_files(tmp_path, readme="# Plain\n\nFine.\n")))
    review = Review(run_id, await gate_requested_url(receiver, run_id))
    await open_url(page, review.review_url)
    await page.get_by_role("button", name="Reject").click()
    await page.wait_for_load_state("load")
    assert "A reason is needed" in await page_text(page)
    await page.screenshot(path=tmp_path / "1-no-reason.png")
    assert (await api.status(run_id))["gates"][0]["status"] == "pending"

    await open_url(page, review.review_url)
    await page.get_by_label("Reason").fill("the overview page is wrong")
    await page.get_by_role("button", name="Reject").click()
    await page.wait_for_load_state("load")
    await page.screenshot(path=tmp_path / "2-rejected.png")
    assert "review-link rejected gate anchor" in await page_text(page)
    status = await api.wait_state(run_id, "failed")
    assert status["error"]["code"] == "GATE_REJECTED"
    assert status["gates"][0]["reason"] == "the overview page is wrong"


async def test_browser_tampered_and_expired_links_get_a_clear_page(served: Served, page: Page, tmp_path: Path) -> None:
    api = served.api
    run_id = await trigger(api, make_remote(tmp_path, repo_files(tmp_path)))
    code, body = await api.post(f"/v1/runs/{run_id}/gates/anchor/links", {})
    assert code == 201, body
    good = Review(run_id, body["url"])
    base = good.review_url.split("?t=", 1)[0]
    tampered = good.token[:-3] + ("xyz" if not good.token.endswith("xyz") else "abc")
    await open_url(page, f"{base}?t={tampered}", status=403)
    assert "altered" in await page_text(page)
    assert await page.get_by_role("button", name="Approve").count() == 0
    await page.screenshot(path=tmp_path / "1-tampered.png")

    expired = link_token(
        served.settings, ReviewLink("default", run_id, "anchor", None, datetime.now(UTC) - timedelta(minutes=1))
    )
    await open_url(page, f"{base}?t={expired}", status=403)
    assert "expired" in await page_text(page)
    await page.screenshot(path=tmp_path / "2-expired.png")
    assert (await api.status(run_id))["gates"][0]["status"] == "pending"


async def test_browser_sign_in_inbox_and_decide_as_ui(served: Served, page: Page, tmp_path: Path) -> None:
    api = served.api
    run_id = await trigger(api, make_remote(tmp_path, repo_files(tmp_path)))
    await open_url(page, f"{served.base}/ui/")  # redirected to the sign-in form
    assert page.url.startswith(f"{served.base}/ui/login")
    await page.get_by_label("API token").fill("qp_wrong")
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_load_state("load")
    assert "unknown, expired or revoked" in await page_text(page)

    await page.get_by_label("API token").fill(api.token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_load_state("load")
    cookies = {c["name"]: c for c in await page.context.cookies()}
    session = cookies["qp_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict" and api.token not in session["value"]
    row = page.locator("#inbox tbody tr", has_text=run_id)

    async def listed() -> int:
        # Temporal's visibility store catches up with the run's search attributes shortly after the gate opens.
        count = await row.count()
        if count == 0:
            await page.reload(wait_until="load")
        return count

    assert await eventually(listed, lambda n: n == 1, timeout=20, what="run in the inbox") == 1
    await page.screenshot(path=tmp_path / "1-inbox.png", full_page=True)
    assert "0 of 1" in await row.inner_text()

    await row.get_by_role("link", name=run_id).click()
    await page.wait_for_load_state("load")
    assert page.url == f"{served.base}/ui/runs/{run_id}/gates/anchor"
    await page.get_by_label("Reason").fill("signed in and read it")
    await page.get_by_role("button", name="Approve").click()
    await page.wait_for_load_state("load")
    await page.screenshot(path=tmp_path / "2-approved.png")
    status = await api.wait_state(run_id, "completed")
    assert (status["gates"][0]["decided_by"], status["gates"][0]["source"]) == ("tester", "ui")

    await open_url(page, f"{served.base}/ui/docs")
    await page.screenshot(path=tmp_path / "3-docs.png", full_page=True)
    first = page.locator("#pages tbody tr a").first
    await first.click()
    await page.wait_for_load_state("load")
    assert "Version" in await page_text(page)
    await page.screenshot(path=tmp_path / "4-doc.png", full_page=True)
    await open_url(page, f"{served.base}/ui/")
    assert await page.locator("#empty").count() == 1


TWO_OF_THREE = (
    "version: 1\ngate_definitions:\n  anchor:\n    required_approvals: 2\n    approvers: [alice, bob, carol]\n"
)


async def test_browser_two_of_three_gate_needs_two_approver_links(served: Served, page: Page, tmp_path: Path) -> None:
    api = served.api
    remote = make_remote(tmp_path, repo_files(tmp_path, readme="# Two of three\n\nFine.\n", yml=TWO_OF_THREE))
    run_id = await trigger(api, remote)

    async def mint(approver: str) -> Review:
        code, body = await api.post(f"/v1/runs/{run_id}/gates/anchor/links", {"approver": approver})
        assert code == 201, body
        assert body["approver"] == approver
        return Review(run_id, body["url"])

    alice, bob = await mint("alice"), await mint("bob")
    await open_url(page, alice.review_url)
    assert "0 of 2 approvals" in await page_text(page)
    await page.screenshot(path=tmp_path / "1-alice-opens.png", full_page=True)
    first_file = (await page.locator("#files tbody tr td code").first.inner_text()).strip()
    assert first_file.endswith(".md") and remote_file(remote, "main", first_file) is None
    await page.get_by_label("Reason").fill("alice read the docs")
    await page.get_by_role("button", name="Approve").click()
    await page.wait_for_load_state("load")
    await page.screenshot(path=tmp_path / "2-alice-approved.png", full_page=True)
    text = await page_text(page)
    # One approval of two: the page says so and never that the gate passed.
    assert "1 of 2 approvals" in text and "alice approved gate anchor" in text
    assert "Gate anchor approved" not in text
    status = await api.status(run_id)
    assert status["state"] == "waiting_for_gate"
    gate = status["gates"][0]
    assert (gate["status"], gate["approval_progress"]) == ("pending", "1 of 2 approvals")
    assert remote_file(remote, "main", first_file) is None
    assert [(a["subject"], a["approved"]) for a in gate["approvals"]] == [("alice", True)]

    # Bob's page shows alice's approval counted, and his approval passes the gate.
    await open_url(page, bob.review_url)
    text = await page_text(page)
    assert "1 of 2 approvals" in text and "alice approved" in text
    await page.screenshot(path=tmp_path / "3-bob-opens.png", full_page=True)
    await page.get_by_label("Reason").fill("bob agrees")
    await page.get_by_role("button", name="Approve").click()
    await page.wait_for_load_state("load")
    await page.screenshot(path=tmp_path / "4-bob-approved.png", full_page=True)
    assert "Gate anchor approved" in await page_text(page)

    final = await api.wait_state(run_id, "completed")
    gate = final["gates"][0]
    assert (gate["status"], gate["decided_by"]) == ("approved", "bob")
    assert [a["subject"] for a in gate["approvals"]] == ["alice", "bob"]
    # Merged: the docs PR's files are on the base branch now.
    assert remote_file(remote, "main", first_file) is not None
