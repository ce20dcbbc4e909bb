"""The review page over HTTP: a webhook's review_url opens it, its headers and escaping, CSRF, refusals, scopes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from quantapilot.review.links import ReviewLink
from quantapilot.tokens import create_token
from tests.review.support import (
    Review,
    active_content,
    form_fields,
    gate_requested_url,
    link_token,
    page,
    post_form,
    repo_files,
    trigger,
)
from tests.support import Api, captured_json_logs, make_remote
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import Receiver, create_endpoint

BASE = "http://review.example.test:8443"


@pytest.mark.slow
async def test_review_link_from_webhook_shows_docs_and_diff_safely_and_approves(
    make_stack: StackFactory, receiver: Receiver, tmp_path: Path
) -> None:
    stack = await make_stack(public_base_url=BASE)
    api = stack.api
    await create_endpoint(api, receiver.url())
    with captured_json_logs(logging.DEBUG) as logs:
        run_id = await trigger(api, make_remote(tmp_path, repo_files(tmp_path)))
        review = Review(run_id, await gate_requested_url(receiver, run_id))
        assert review.review_url.startswith(f"{BASE}/ui/runs/{run_id}/gates/anchor?t=v1.")

        code, html, headers = await page(api.client, review.path_and_query)
        assert code == 200, html
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
        assert headers["Cache-Control"] == "no-store"
        assert headers["Referrer-Policy"] == "no-referrer"
        # The run, the gate, what is needed.
        for text in (run_id, "review-1", "0 of 1 approvals", "waiting_for_gate", "Accept the anchor documentation"):
            assert text in html, text
        # The docs as rendered pages and the diff from git, with the hostile README shown as text only.
        assert 'id="page-list"' in html and "Hostile project" in html
        assert 'id="files"' in html and ".md</code>" in html
        assert "&lt;script&gt;alert(" in html
        assert "onerror=alert" in html  # present, as text
        assert active_content(html) == []

        fields = form_fields(html)
        assert fields["t"] == review.token and fields["csrf"]
        decision = f"/ui/runs/{run_id}/gates/anchor/decision"
        # A form without its token (another site's), or with another form's: refused, nothing changes.
        code, text = await post_form(api.client, decision, {"t": review.token, "decision": "approve"})
        assert code == 403 and "another site" in text
        code, text = await post_form(api.client, decision, {**fields, "csrf": "0" * 64, "decision": "approve"})
        assert code == 403
        code, text = await post_form(api.client, decision, {**fields, "decision": "reject", "reason": "  "})
        assert code == 422 and "reason" in text
        assert (await api.status(run_id))["gates"][0]["status"] == "pending"

        code, text = await post_form(api.client, decision, {**fields, "decision": "approve", "reason": "docs read"})
        assert code == 200, text
        assert "review-link approved gate anchor" in text
        status = await api.wait_state(run_id, "completed")
        gate = status["gates"][0]
        assert (gate["status"], gate["decided_by"], gate["source"], gate["reason"]) == (
            "approved",
            "review-link",
            "link",
            "docs read",
        )
        # Replayed after the decision: a page that says who decided, and nothing changes.
        code, text = await post_form(api.client, decision, {**fields, "decision": "reject", "reason": "too late"})
        assert code == 409 and "already decided by review-link" in text
        code, text, _ = await page(api.client, review.path_and_query)
        assert code == 409
        assert (await api.status(run_id))["gates"][0]["status"] == "approved"
    # The link's signature never reaches a log line (the access log has the path, never the query or form).
    tag = review.token.rsplit(".", 1)[1]
    lines = [str(line) for line in logs.lines]
    assert any(f"/ui/runs/{run_id}/gates/anchor" in line for line in lines), "the access log was not captured"
    assert not [line for line in lines if tag in line or review.token in line]


@pytest.mark.slow
async def test_review_link_refusals_change_nothing(make_stack: StackFactory, tmp_path: Path) -> None:
    stack = await make_stack(public_base_url=BASE)
    api = stack.api
    run_id = await trigger(api, make_remote(tmp_path, repo_files(tmp_path)))
    code, body = await api.post(f"/v1/runs/{run_id}/gates/anchor/links", {})
    assert code == 201, body
    assert body["url"].startswith(f"{BASE}/ui/runs/{run_id}/gates/anchor?t=")
    good = Review(run_id, body["url"])
    path = f"/ui/runs/{run_id}/gates/anchor"

    version, claims, tag = good.token.split(".")
    tampered_tag = f"{version}.{claims}.{'A' if tag[0] != 'A' else 'B'}{tag[1:]}"
    other_claims = f"{version}.{claims[:-2]}{'AA' if claims[-2:] != 'AA' else 'BB'}.{tag}"
    expired = link_token(
        stack.settings,
        ReviewLink("default", run_id, "anchor", None, datetime.now(UTC) - timedelta(seconds=5)),
    )
    other_run = link_token(
        stack.settings,
        ReviewLink("default", "rr_" + "0" * 32, "anchor", None, datetime.now(UTC) + timedelta(hours=1)),
    )
    other_workspace = link_token(
        stack.settings,
        ReviewLink("elsewhere", run_id, "anchor", None, datetime.now(UTC) + timedelta(hours=1)),
    )
    cases = {
        "altered": (tampered_tag, 403, "altered"),
        "claims": (other_claims, 403, "altered"),
        "expired": (expired, 403, "expired"),
        "other run": (other_run, 403, "another gate"),
        "other workspace": (other_workspace, 404, "no such run"),
        "garbage": ("v1.%%%", 403, "malformed"),
    }
    for name, (token, status, words) in cases.items():
        code, html, headers = await page(api.client, path, params={"t": token})
        assert (code, words in html) == (status, True), (name, code, html)
        assert headers["Cache-Control"] == "no-store"
        code, html = await post_form(api.client, path + "/decision", {"t": token, "decision": "approve", "csrf": "x"})
        assert code == status, (name, code, html)
    # Without a link or a sign-in: the sign-in form, with no query carried along.
    code, _, headers = await page(api.client, path)
    assert code == 303 and headers["Location"] == f"/ui/login?next={path}"
    assert (await api.status(run_id))["gates"][0]["status"] == "pending"

    # The good link still works, and another run's path refuses it.
    code, html, _ = await page(api.client, good.path_and_query)
    assert code == 200 and 'name="csrf"' in html
    code, html, _ = await page(api.client, f"/ui/runs/rr_{'1' * 32}/gates/anchor", params={"t": good.token})
    assert code == 403 and "another gate" in html


@pytest.mark.slow
async def test_review_url_in_event_log_only_for_deciders_and_approver_links(
    make_stack: StackFactory, engine: Engine, tmp_path: Path
) -> None:
    stack = await make_stack(public_base_url=BASE)
    api = stack.api
    yml = "version: 1\ngate_definitions:\n  anchor:\n    approvers: [carol]\n"
    run_id = await trigger(api, make_remote(tmp_path, repo_files(tmp_path, yml=yml)))

    reader_token, _ = create_token(engine, workspace="default", subject="reader", scopes=("runs:read",))
    reader = Api(client=api.client, token=reader_token)
    requested = [e for e in await reader.events(run_id) if e["type"] == "gate.requested"]
    assert requested and "review_url" not in requested[0]["data"]
    requested = [e for e in await api.events(run_id) if e["type"] == "gate.requested"]
    holder = Review(run_id, requested[0]["data"]["review_url"])
    assert holder.review_url.startswith(f"{BASE}/ui/runs/{run_id}/gates/anchor?t=")
    # Computed, not stored: the same URL each time it is served.
    again = [e for e in await api.events(run_id) if e["type"] == "gate.requested"]
    assert again[0]["data"]["review_url"] == holder.review_url

    # The gate names its approvers: the holder's link only shows the page.
    code, html, _ = await page(api.client, holder.path_and_query)
    assert code == 200 and 'id="view-only"' in html and 'name="csrf"' not in html and "carol" in html
    code, html = await post_form(
        api.client, f"/ui/runs/{run_id}/gates/anchor/decision", {"t": holder.token, "decision": "approve"}
    )
    assert code == 403

    code, body = await reader.post(f"/v1/runs/{run_id}/gates/anchor/links", {"approver": "carol"})
    assert code == 403, body
    code, body = await api.post(f"/v1/runs/{run_id}/gates/anchor/links", {"approver": "dave"})
    assert code == 422, body
    code, body = await api.post(f"/v1/runs/{run_id}/gates/anchor/links", {"approver": "carol", "extra": 1})
    assert code == 422, body
    code, body = await api.post(f"/v1/runs/{run_id}/gates/anchor/links", {"approver": "carol"})
    assert code == 201, body
    assert body["approver"] == "carol" and datetime.fromisoformat(body["expires_at"]) > datetime.now(UTC)
    carol = Review(run_id, body["url"])
    code, html, _ = await page(api.client, carol.path_and_query)
    assert code == 200 and "(as carol)" in html
    fields = form_fields(html)
    code, html = await post_form(
        api.client, f"/ui/runs/{run_id}/gates/anchor/decision", {**fields, "decision": "approve", "reason": "ok"}
    )
    assert code == 200, html
    status = await api.wait_state(run_id, "completed")
    assert (status["gates"][0]["decided_by"], status["gates"][0]["source"]) == ("carol", "link")
    code, body = await api.post(f"/v1/runs/{run_id}/gates/anchor/links", {})
    assert code == 409, body
