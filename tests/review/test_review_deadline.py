"""A gate with a timeout: its deadline in gate.requested and the run status, links that expire by it, the page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from quantapilot.review.links import LinkError, load_link_key, verify_token
from tests.review.support import Review, gate_requested_url, page, repo_files, sign_in, trigger
from tests.support import eventually, make_remote
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import Receiver, create_endpoint

BASE = "http://review.example.test:8443"
# Ten minutes: far shorter than the links' TTL (a day here), long enough for the test.
SHORT_GATE = "version: 1\ngate_definitions:\n  anchor: {timeout_s: 600}\n"


def instant(text: str) -> datetime:
    """An RFC 3339 instant as served."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.mark.slow
async def test_review_links_of_a_gate_with_a_short_timeout_expire_at_its_deadline(
    make_stack: StackFactory, receiver: Receiver, tmp_path: Path
) -> None:
    stack = await make_stack(public_base_url=BASE, review_link_ttl=86400)
    api = stack.api
    await create_endpoint(api, receiver.url())
    run_id = await trigger(api, make_remote(tmp_path, repo_files(tmp_path, yml=SHORT_GATE)))

    # The event announces the timeout and the deadline (RFC 3339, UTC), and the status shows the same deadline.
    (requested,) = [e for e in await api.events(run_id) if e["type"] == "gate.requested"]
    data = requested["data"]
    assert data["timeout_s"] == 600 and data["deadline"].endswith("Z"), data
    deadline = instant(data["deadline"])
    assert deadline - instant(requested["created_at"]) == timedelta(seconds=600)
    gate = (await api.status(run_id))["gates"][0]
    assert gate["status"] == "pending" and instant(gate["deadline"]) == deadline

    # The webhook's review_url expires at the deadline, not a day after the event.
    key = load_link_key(stack.settings)
    review = Review(run_id, await gate_requested_url(receiver, run_id))
    assert verify_token(key, review.token).expires_at == deadline.replace(microsecond=0)
    # So does a link minted now, and its expires_at says so.
    code, body = await api.post(f"/v1/runs/{run_id}/gates/anchor/links", {})
    assert code == 201, body
    assert instant(body["expires_at"]) == deadline.replace(microsecond=0)
    minted = Review(run_id, body["url"])
    assert verify_token(key, minted.token).expires_at == deadline.replace(microsecond=0)
    # After the deadline the link is refused (the gate itself times out then too).
    with pytest.raises(LinkError, match="expired"):
        verify_token(key, minted.token, now=deadline + timedelta(seconds=1))

    code, html, _ = await page(api.client, review.path_and_query)
    assert code == 200, html
    shown = deadline.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert "Decide by <time datetime=" in html and shown in html

    # Signed in, the inbox row of the gate says by when.
    await sign_in(api)
    in_inbox = deadline.isoformat(timespec="seconds")

    async def inbox() -> str:
        # Temporal's visibility store lists the waiting run shortly after the gate opens.
        return (await page(api.client, "/ui/"))[1]

    html = await eventually(inbox, lambda text: run_id in text, timeout=20, what="the run in the inbox")
    assert f'<td class="deadline">{in_inbox}</td>' in html, html


@pytest.mark.slow
async def test_review_gate_without_timeout_has_no_deadline(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await make_stack(public_base_url=BASE, review_link_ttl=86400)
    api = stack.api
    run_id = await trigger(api, make_remote(tmp_path, repo_files(tmp_path)))
    (requested,) = [e for e in await api.events(run_id) if e["type"] == "gate.requested"]
    assert "deadline" not in requested["data"] and "timeout_s" not in requested["data"]
    assert (await api.status(run_id))["gates"][0]["deadline"] is None
    code, body = await api.post(f"/v1/runs/{run_id}/gates/anchor/links", {})
    assert code == 201, body
    # The TTL alone: a day from now.
    left = instant(body["expires_at"]) - datetime.now(UTC)
    assert timedelta(hours=23) < left <= timedelta(days=1)
    code, html, _ = await page(api.client, Review(run_id, requested["data"]["review_url"]).path_and_query)
    assert code == 200 and "Decide by" not in html
