"""Webhook deliveries end to end: real runs emit events, real workflows deliver them to loopback receivers."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from sqlalchemy.engine import Engine
from sqlmodel import Session

from quantapilot.db import utcnow
from quantapilot.webhooks.sender import ATTEMPT_HEADER, EVENT_ID_HEADER, EVENT_TYPE_HEADER, USER_AGENT
from quantapilot.webhooks.signing import standard_secret
from quantapilot.webhooks.tables import WebhookEndpoint
from tests.support import make_remote
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import (
    Receiver,
    all_status,
    assert_same_instant,
    create_endpoint,
    deliveries,
    disabled_record_after,
    fast_run,
    finished_events,
    free_port,
    ok,
    wait_deliveries,
)


async def test_webhooks_signed_envelope_matches_event_log(make_stack: StackFactory, receiver: Receiver) -> None:
    stack = await make_stack()
    api = stack.api
    endpoint = await create_endpoint(api, receiver.url(), description="ops dashboard")
    run_id = await fast_run(api)
    events = await finished_events(api, run_id)
    assert [e["type"] for e in events] == ["run.started", "run.failed"]

    rows = await wait_deliveries(api, endpoint["id"], all_status("delivered", 2))
    assert all(r["attempt_count"] == 1 and r["attempts"][0]["status_code"] == 200 for r in rows)
    assert all(r["attempts"][0]["latency_ms"] >= 0 and r["next_retry_at"] is None for r in rows)

    got = {r.event["id"]: r for r in receiver.delivered()}
    assert set(got) == {e["id"] for e in events}
    for event in events:
        request = got[event["id"]]
        assert request.verified(endpoint["secret"])
        assert not request.verified("whsec_someone-else")
        # The reference verifiers accept the very same request: Stripe's for X-VC-Signature, Standard
        # Webhooks' own for webhook-signature, whose webhook-id is the event id.
        assert request.verified_stripe(endpoint["secret"]) and not request.verified_stripe("whsec_someone-else")
        assert request.verified_standard(endpoint["standard_webhooks_secret"])
        assert not request.verified_standard(standard_secret("whsec_someone-else"))
        assert request.headers["webhook-id"] == event["id"]
        assert request.headers["webhook-timestamp"] == request.headers["X-VC-Signature"].split(",")[0][2:]
        assert request.headers[EVENT_ID_HEADER] == event["id"]
        assert request.headers[EVENT_TYPE_HEADER] == event["type"]
        assert request.headers[ATTEMPT_HEADER] == "1"
        assert request.headers["User-Agent"] == USER_AGENT
        body = request.event
        # The envelope is the event log's record: same id, type, sequence, timestamps and payload.
        assert body["data"] == event["data"]
        assert (body["type"], body["seq"], body["run_id"], body["workspace"]) == (
            event["type"],
            event["seq"],
            run_id,
            "default",
        )
        assert body["created_at"].rstrip("Z").replace("+00:00", "") == event["created_at"].rstrip("Z").replace(
            "+00:00", ""
        )


async def test_webhooks_run_completes_while_receiver_down_then_delivered(
    make_stack: StackFactory, tmp_path: Path
) -> None:
    stack = await make_stack()
    api = stack.api
    port = free_port()
    endpoint = await create_endpoint(api, f"http://127.0.0.1:{port}/hook")
    url = make_remote(tmp_path, {"README.md": "# Demo\n"})
    code, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main"})
    assert code == 202, body
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    code, _ = await api.decide(run_id, "anchor", True)
    assert code == 200
    # Nobody listens, yet the run completes: deliveries never hold a run up.
    await api.wait_state(run_id, "completed")
    events = await api.events(run_id)
    assert len(events) == 5

    rows = await deliveries(api, endpoint["id"])
    assert len(rows) == 5 and all(r["status"] == "pending" for r in rows)
    failing = await wait_deliveries(api, endpoint["id"], lambda rs: all(r["attempt_count"] >= 2 for r in rs))
    for row in failing:
        assert row["attempts"][0]["outcome"] == "retry"
        assert row["attempts"][0]["status_code"] is None
        assert row["attempts"][0]["error"].startswith("connection failed")
        # No address or host name leaks into the log.
        assert "127.0.0.1" not in row["attempts"][0]["error"]
    code, ep = await api.get(f"/v1/webhooks/endpoints/{endpoint['id']}")
    assert ep["failing_since"] is not None

    async with Receiver(port=port) as receiver:
        await wait_deliveries(api, endpoint["id"], all_status("delivered", 5))
        assert sorted(receiver.event_ids()) == sorted(e["id"] for e in events)
        assert all(r.verified(endpoint["secret"]) for r in receiver.delivered())
    code, ep = await api.get(f"/v1/webhooks/endpoints/{endpoint['id']}")
    assert ep["failing_since"] is None and ep["enabled"] is True


async def test_webhooks_slow_receiver_times_out_and_is_retried(make_stack: StackFactory) -> None:
    release = asyncio.Event()

    async def slow_first(request: web.Request, count: int) -> web.StreamResponse:
        if count == 1:
            # Longer than the sender's timeout; the sender gives up on this answer.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), timeout=3)
        return web.json_response({"ok": True})

    stack = await make_stack(webhook_timeout_s=0.5)
    async with Receiver(behaviour=slow_first) as receiver:
        endpoint = await create_endpoint(stack.api, receiver.url(), events=["run.started"])
        await fast_run(stack.api)
        rows = await wait_deliveries(stack.api, endpoint["id"], all_status("delivered", 1))
        release.set()
    attempts = rows[0]["attempts"]
    assert [a["outcome"] for a in attempts] == ["retry", "delivered"]
    assert attempts[0]["error"] == "timeout: no answer within 0.5 s"
    assert attempts[0]["status_code"] is None
    assert [r.headers["X-VC-Delivery-Attempt"] for r in receiver.received] == ["1", "2"]


async def test_webhooks_500_then_200_honours_retry_after(make_stack: StackFactory, receiver: Receiver) -> None:
    async def flaky(request: web.Request, count: int) -> web.StreamResponse:
        if count == 1:
            return web.json_response({"busy": True}, status=500, headers={"Retry-After": "1"})
        return web.json_response({"ok": True})

    receiver.behaviour = flaky
    stack = await make_stack()
    endpoint = await create_endpoint(stack.api, receiver.url(), events=["run_failed"])
    assert endpoint["events"] == ["run.failed"]  # the seed's alias is stored as the dotted name
    await fast_run(stack.api)
    rows = await wait_deliveries(stack.api, endpoint["id"], all_status("delivered", 1))
    attempts = rows[0]["attempts"]
    assert [(a["outcome"], a["status_code"]) for a in attempts] == [("retry", 500), ("delivered", 200)]
    assert attempts[0]["error"] == "HTTP 500"
    first, second = receiver.received
    assert first.event["id"] == second.event["id"]
    # The schedule alone would wait ~20 ms; the receiver asked for a second.
    assert second.at - first.at >= 1.0
    assert first.verified(endpoint["secret"]) and second.verified(endpoint["secret"])
    # A retry keeps its webhook-id (consumers dedupe by it) and is signed afresh.
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == first.event["id"]
    assert second.verified_standard(standard_secret(endpoint["secret"]))


async def test_webhooks_gone_disables_endpoint_and_announces_it(make_stack: StackFactory, receiver: Receiver) -> None:
    async def gone(request: web.Request, count: int) -> web.StreamResponse:
        if request.path == "/gone":
            return web.Response(status=410)
        return web.json_response({"ok": True})

    receiver.behaviour = gone
    stack = await make_stack()
    api = stack.api
    watcher = await create_endpoint(api, receiver.url("/watch"), events=["webhook.endpoint_disabled"])
    doomed = await create_endpoint(api, receiver.url("/gone"), events=["run.started"])
    run_id = await fast_run(api)
    record, gone_row = await wait_deliveries(api, doomed["id"], disabled_record_after("gone"))
    assert gone_row["attempts"][0]["status_code"] == 410

    code, ep = await api.get(f"/v1/webhooks/endpoints/{doomed['id']}")
    assert code == 200 and ep["enabled"] is False and ep["disabled_reason"] == "gone"
    await wait_deliveries(api, watcher["id"], all_status("delivered", 1))
    (notice,) = receiver.delivered("/watch")
    assert notice.verified(watcher["secret"])
    event = notice.event
    assert event["type"] == "webhook.endpoint_disabled" and event["run_id"] is None
    assert event["data"]["endpoint_id"] == doomed["id"] and event["data"]["reason"] == "gone"
    assert event["data"]["last_status_code"] == 410
    assert event["data"]["delivery_id"] == gone_row["id"] and event["data"]["event_id"] == gone_row["event_id"]
    assert run_id  # the run's own events never reach the watcher (it subscribed to one type only)
    # The durable record in the disabled endpoint's own log is the event the watcher got, and was never sent.
    assert record["event_id"] == event["id"] and record["data"] == event["data"]
    assert_same_instant(record["created_at"], event["created_at"])
    assert gone_row["data"] is None  # a run event: its payload is in the run's log

    # A disabled endpoint gets nothing more, and redelivery to it is refused until it is enabled again.
    await finished_events(api, await fast_run(api, "second"))
    assert len(receiver.received) == 2
    for row in (gone_row, record):
        code, body = await api.post(f"/v1/webhooks/deliveries/{row['id']}/redeliver")
        assert code == 409, body
    code, one = await api.get(f"/v1/webhooks/deliveries/{record['id']}")
    assert code == 200 and one["data"] == event["data"] and one["attempts"] == []


async def test_webhooks_endpoint_failing_five_days_is_disabled(
    make_stack: StackFactory, receiver: Receiver, engine: Engine
) -> None:
    async def broken(request: web.Request, count: int) -> web.StreamResponse:
        if request.path == "/broken":
            return web.Response(status=503)
        return web.json_response({"ok": True})

    receiver.behaviour = broken
    stack = await make_stack()
    api = stack.api
    watcher = await create_endpoint(api, receiver.url("/watch"), events=["webhook_endpoint_disabled"])
    broken_ep = await create_endpoint(api, receiver.url("/broken"), events=["run.started"])
    # The endpoint has been failing for a little over five days (its earlier deliveries are not shown).
    with Session(engine) as session:
        row = session.get(WebhookEndpoint, broken_ep["id"])
        assert row is not None
        row.failing_since = utcnow() - timedelta(days=5, minutes=1)
        session.add(row)
        session.commit()
    await fast_run(api)
    record, failed = await wait_deliveries(api, broken_ep["id"], disabled_record_after("failed"))
    assert failed["attempts"][0]["status_code"] == 503
    code, ep = await api.get(f"/v1/webhooks/endpoints/{broken_ep['id']}")
    assert ep["enabled"] is False and ep["disabled_reason"] == "failing"
    await wait_deliveries(api, watcher["id"], all_status("delivered", 1))
    notice = receiver.delivered("/watch")[0].event
    assert notice["data"]["reason"] == "failing"
    assert record["event_id"] == notice["id"]
    assert record["data"] == {
        "endpoint_id": broken_ep["id"],
        "reason": "failing",
        "delivery_id": failed["id"],
        "event_id": failed["event_id"],
        "last_status_code": 503,
        "last_error": "HTTP 503",
    }

    # Enabling it again starts a fresh five days; redelivery then succeeds once the receiver is healthy.
    resp = await api.client.patch(
        f"/v1/webhooks/endpoints/{broken_ep['id']}", json={"enabled": True}, headers=api.headers()
    )
    assert resp.status == 200 and (await resp.json())["failing_since"] is None
    receiver.behaviour = ok
    code, body = await api.post(f"/v1/webhooks/deliveries/{failed['id']}/redeliver")
    assert code == 202, body
    rows = await wait_deliveries(
        api, broken_ep["id"], lambda rs: [r["status"] for r in rs] == ["disabled", "delivered"]
    )
    # The record outlives the re-enabling, which clears the endpoint's own fields: the log still says when
    # and why the endpoint was disabled.
    code, ep = await api.get(f"/v1/webhooks/endpoints/{broken_ep['id']}")
    assert ep["enabled"] is True and ep["disabled_reason"] is None
    assert rows[0] == record


async def test_webhooks_disabled_endpoint_is_recorded_without_any_subscriber(
    make_stack: StackFactory, receiver: Receiver
) -> None:
    async def gone(request: web.Request, count: int) -> web.StreamResponse:
        return web.Response(status=410)

    receiver.behaviour = gone
    stack = await make_stack()
    api = stack.api
    # The only endpoint of the workspace: nobody else could be told, so the record is all there is.
    doomed = await create_endpoint(api, receiver.url("/gone"), events=["run.started"])
    await fast_run(api)
    record, gone_row = await wait_deliveries(api, doomed["id"], disabled_record_after("gone"))
    assert record["data"]["reason"] == "gone" and record["data"]["delivery_id"] == gone_row["id"]
    (only,) = await deliveries(api, doomed["id"], status="disabled")
    assert only == record
    assert len(receiver.received) == 1  # the record was never sent anywhere

    # Once enabled again, redelivering the record tells the consumer itself what happened, signed as usual.
    resp = await api.client.patch(
        f"/v1/webhooks/endpoints/{doomed['id']}", json={"enabled": True}, headers=api.headers()
    )
    assert resp.status == 200
    receiver.behaviour = ok
    code, body = await api.post(f"/v1/webhooks/deliveries/{record['id']}/redeliver")
    assert code == 202, body
    await wait_deliveries(api, doomed["id"], lambda rs: rs[0]["id"] == record["id"] and rs[0]["status"] == "delivered")
    notice = receiver.delivered()[-1]
    assert notice.verified(doomed["secret"]) and notice.event["id"] == record["event_id"]
    assert notice.event["type"] == "webhook.endpoint_disabled" and notice.event["data"] == record["data"]


async def test_webhooks_carry_the_triggers_trace_context(make_stack: StackFactory, receiver: Receiver) -> None:
    stack = await make_stack()
    api = stack.api
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    endpoint = await create_endpoint(api, receiver.url())
    resp = await api.client.post(
        "/v1/runs",
        json={"repo_url": "https://git.example.test/team/traced.git", "branch": "main"},
        headers={**api.headers(), "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )
    run_id = (await resp.json())["run_id"]
    events = await finished_events(api, run_id)
    assert {e["trace_id"] for e in events} == {trace}
    await wait_deliveries(api, endpoint["id"], all_status("delivered", 2))
    parents = [r.headers["traceparent"] for r in receiver.delivered()]
    assert len(parents) == 2
    for parent in parents:
        version, trace_id, span_id, flags = parent.split("-")
        assert (version, trace_id, flags) == ("00", trace, "01")
        assert len(span_id) == 16
    # The trace id rides in the header only: the signed body stays the documented envelope.
    assert all("trace_id" not in r.event for r in receiver.delivered())


async def test_webhooks_abort_header_stops_retrying_that_delivery(make_stack: StackFactory, receiver: Receiver) -> None:
    async def refuse(request: web.Request, count: int) -> web.StreamResponse:
        if request.headers["X-VC-Event-Type"] == "run.started":
            return web.json_response({"error": "cannot process"}, status=422, headers={"webhook-delivery": "abort"})
        return web.json_response({"ok": True})

    receiver.behaviour = refuse
    stack = await make_stack()
    endpoint = await create_endpoint(stack.api, receiver.url())
    await fast_run(stack.api)
    rows = await wait_deliveries(
        stack.api, endpoint["id"], lambda rs: len(rs) == 2 and all(r["status"] != "pending" for r in rs)
    )
    by_type = {r["event_type"]: r for r in rows}
    aborted = by_type["run.started"]
    assert aborted["status"] == "failed" and aborted["attempt_count"] == 1 and aborted["next_retry_at"] is None
    assert [(a["outcome"], a["status_code"]) for a in aborted["attempts"]] == [("aborted", 422)]
    assert aborted["last_error"] == "HTTP 422: the receiver asked to stop retrying (webhook-delivery: abort)"
    assert by_type["run.failed"]["status"] == "delivered"
    # Asked once, never again; and the endpoint is not counted as failing for answering on purpose.
    await asyncio.sleep(0.5)
    assert [r.event["type"] for r in receiver.received].count("run.started") == 1
    code, ep = await stack.api.get(f"/v1/webhooks/endpoints/{endpoint['id']}")
    assert code == 200 and ep["enabled"] is True and ep["failing_since"] is None


@pytest.mark.parametrize("status", [429, 503])
async def test_webhooks_429_and_503_retry_after_throttle_the_whole_endpoint(
    make_stack: StackFactory, receiver: Receiver, status: int
) -> None:
    async def rate_limited(request: web.Request, count: int) -> web.StreamResponse:
        if count == 1:
            return web.json_response({"slow": "down"}, status=status, headers={"Retry-After": "3"})
        return web.json_response({"ok": True})

    receiver.behaviour = rate_limited
    stack = await make_stack()
    endpoint = await create_endpoint(stack.api, receiver.url(), events=["run.started"])
    await fast_run(stack.api, "one")
    await wait_deliveries(stack.api, endpoint["id"], lambda rs: len(rs) == 1 and rs[0]["attempt_count"] == 1)
    code, ep = await stack.api.get(f"/v1/webhooks/endpoints/{endpoint['id']}")
    assert code == 200 and ep["throttled_until"] is not None
    # Another delivery to the same endpoint, made while it is throttled, waits too (the schedule alone would
    # send it at once) and keeps its attempt numbers: the wait was no attempt.
    await fast_run(stack.api, "two")
    rows = await wait_deliveries(stack.api, endpoint["id"], all_status("delivered", 2))
    first, *rest = receiver.received
    assert first.status == status and len(rest) == 2
    assert all(r.at - first.at >= 3.0 for r in rest), [r.at - first.at for r in rest]
    by_attempts = sorted((a["attempt"], a["outcome"], a["status_code"]) for r in rows for a in r["attempts"])
    assert by_attempts == [(1, "delivered", 200), (1, "retry", status), (2, "delivered", 200)]
