"""Recovering an endpoint: every delivery of a window that did not arrive is sent again, the rest left alone."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web
from sqlalchemy.engine import Engine

from quantapilot.db import utcnow
from quantapilot.tokens import ALL_SCOPES, create_token
from quantapilot.webhooks.signing import standard_secret
from schemas import validator
from tests.conftest import ApiFactory
from tests.support import Api
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import Receiver, all_status, create_endpoint, fast_run, finished_events, wait_deliveries


def _settled(count: int) -> Any:
    return lambda rows: len(rows) == count and all(r["status"] != "pending" for r in rows)


async def test_webhooks_recover_resends_the_failed_deliveries_of_the_window(
    make_stack: StackFactory, receiver: Receiver
) -> None:
    down = True

    async def flaky(request: web.Request, count: int) -> web.StreamResponse:
        # "Down" answers abort, so each delivery fails after one attempt instead of retrying for days.
        if down:
            return web.json_response({"down": True}, status=500, headers={"webhook-delivery": "abort"})
        return web.json_response({"ok": True})

    receiver.behaviour = flaky
    stack = await make_stack()
    api = stack.api
    endpoint = await create_endpoint(api, receiver.url())
    path = f"/v1/webhooks/endpoints/{endpoint['id']}/recover"
    start = utcnow()
    await finished_events(api, await fast_run(api, "early"))
    early = await wait_deliveries(api, endpoint["id"], _settled(2))
    assert {r["status"] for r in early} == {"failed"}
    middle = utcnow()
    await finished_events(api, await fast_run(api, "late"))
    rows = await wait_deliveries(api, endpoint["id"], _settled(4))
    late_ids = {r["id"] for r in rows} - {r["id"] for r in early}
    down = False

    # Only the window [middle, now) is re-sent: the two late deliveries, not the two early ones.
    code, body = await api.post(path, {"since": middle.isoformat()})
    assert code == 202, body
    assert body["recovered"] == 2 and body["more"] is False and body["endpoint_id"] == endpoint["id"]
    assert list(validator("api.schema.json", "WebhookRecovery").iter_errors(body)) == []
    rows = await wait_deliveries(
        api, endpoint["id"], lambda rs: sum(r["status"] == "delivered" for r in rs) == 2 and _settled(4)(rs)
    )
    by_id = {r["id"]: r for r in rows}
    assert {i for i, r in by_id.items() if r["status"] == "delivered"} == late_ids
    # The same delivery row, attempts counting on, the receiver verifying both signature schemes.
    assert all(by_id[i]["attempt_count"] == 2 for i in late_ids)
    arrived = receiver.delivered()
    assert {r.event["id"] for r in arrived} == {by_id[i]["event_id"] for i in late_ids}
    assert all(r.verified(endpoint["secret"]) for r in arrived)
    assert all(r.verified_standard(standard_secret(endpoint["secret"])) for r in arrived)

    # The whole window: the early two now; delivered ones are never sent again.
    code, body = await api.post(path, {"since": start.isoformat(), "until": utcnow().isoformat()})
    assert code == 202 and body["recovered"] == 2, body
    await wait_deliveries(api, endpoint["id"], all_status("delivered", 4))
    code, body = await api.post(path, {"since": start.isoformat()})
    assert code == 202 and body["recovered"] == 0, body
    assert len(receiver.delivered()) == 4


async def test_webhooks_recover_refuses_bad_input_with_envelopes(
    make_stack: StackFactory, make_api: ApiFactory, engine: Engine, receiver: Receiver
) -> None:
    stack = await make_stack(worker=False)
    api = stack.api
    endpoint = await create_endpoint(api, receiver.url())
    path = f"/v1/webhooks/endpoints/{endpoint['id']}/recover"
    now = utcnow()
    hour_ago = (now - timedelta(hours=1)).isoformat()

    async def refused(body: Any, status: int, code: str, client: Api = api, at: str = path) -> dict[str, Any]:
        resp = await client.client.post(at, json=body, headers=client.headers())
        answer = await resp.json()
        assert resp.status == status, (body, answer)
        assert answer["error"]["code"] == code, (body, answer)
        assert list(validator("error.schema.json").iter_errors(answer)) == []
        return dict(answer)

    for body in (
        {},  # since is required
        {"since": hour_ago, "until": (now - timedelta(hours=2)).isoformat()},  # until before since
        {"since": hour_ago, "until": hour_ago},  # an empty window
        {"since": "yesterday"},
        {"since": "2026-13-01T00:00:00Z"},
        {"since": "2026-01-01T00:00:00"},  # no time zone: which instant is meant?
        {"since": 1767225600},
        {"since": hour_ago, "extra": True},
        [hour_ago],
    ):
        await refused(body, 422, "VALIDATION_ERROR")
    answer = await refused({"since": (now + timedelta(hours=1)).isoformat()}, 422, "VALIDATION_ERROR")
    assert answer["error"]["details"] == [{"path": "since", "reason": "in_future"}]

    # Unknown endpoint, and another workspace's: the same 404.
    await refused({"since": hour_ago}, 404, "NOT_FOUND", at="/v1/webhooks/endpoints/we_" + "0" * 24 + "/recover")
    theirs = await make_api(stack.settings, workspace="other")
    await refused({"since": hour_ago}, 404, "NOT_FOUND", client=theirs)
    # Without the scope.
    token, _ = create_token(
        engine, workspace="default", subject="reader", scopes=[s for s in ALL_SCOPES if s != "webhooks:manage"]
    )
    answer = await refused({"since": hour_ago}, 403, "AUTHORIZATION_ERROR", client=Api(client=api.client, token=token))
    assert answer["error"]["details"] == {"scope": "webhooks:manage"}
    # A disabled endpoint would send nothing: enable it first.
    resp = await api.client.patch(
        f"/v1/webhooks/endpoints/{endpoint['id']}", json={"enabled": False}, headers=api.headers()
    )
    assert resp.status == 200
    await refused({"since": hour_ago}, 409, "CONFLICT")
    assert receiver.received == []
