"""Fan-out: 500 events from 20 concurrent runs each delivered exactly once; disabled endpoints cost nothing."""

from __future__ import annotations

import asyncio
import collections

import pytest
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from temporalio.client import Client

from quantapilot.webhooks.contracts import WEBHOOK_DELIVERY_WORKFLOW, delivery_workflow_id
from quantapilot.webhooks.tables import WebhookDelivery
from tests.conftest import ApiFactory
from tests.lifecycle_e2e.helpers import TARGET_INPUTS, new_account, start
from tests.support import Api, eventually
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import (
    Receiver,
    all_status,
    create_endpoint,
    fast_run,
    finished_events,
    wait_deliveries,
)

RUNS = 20
# A lifecycle target run waiting at its gate: run.started and gate.requested, PAUSES pause/resume pairs, then
# gate.decided, stage.completed and run.completed. No git, no clone: the events are the cost.
PAUSES = 10
EVENTS_PER_RUN = 2 + 2 * PAUSES + 3
# How long to keep listening once every delivery arrived: a duplicate from a retried attempt would land in it
# (retries here wait milliseconds, an activity retry about a second).
SETTLE_S = 3.0


async def busy_run(api: Api, n: int) -> str:
    """One run that emits EVENTS_PER_RUN events: pause and resume it at its gate, then approve it."""
    run_id = await start(api, new_account(), "target", TARGET_INPUTS, correlationId=f"fanout-{n}")
    await api.wait_gate(run_id, "business_case", timeout=90)
    for cycle in range(PAUSES):
        code, body = await api.post(f"/v1/runs/{run_id}/pause", {"reason": f"cycle {cycle}"})
        assert code == 200 and body["state"] == "paused", body
        code, body = await api.post(f"/v1/runs/{run_id}/resume")
        assert code == 200, body
    code, body = await api.decide(run_id, "business_case", True, "numbers agreed")
    assert code == 200, body
    return run_id


@pytest.mark.slow
async def test_webhooks_fanout_500_deliveries_exactly_once(
    make_stack: StackFactory, make_api: ApiFactory, receiver: Receiver, engine: Engine
) -> None:
    stack = await make_stack()
    api = stack.api
    # Another workspace's endpoint, subscribed to everything, must receive none of this workspace's events.
    other_api = await make_api(stack.settings, workspace="other")
    await create_endpoint(other_api, receiver.url("/other"))
    healthy = await create_endpoint(api, receiver.url("/all"))
    completed = await create_endpoint(api, receiver.url("/completed"), events=["run.completed"])
    secrets = {"/all": healthy["secret"], "/completed": completed["secret"]}
    # Filtered by run kind: these are all lifecycle runs.
    await create_endpoint(api, receiver.url("/repository"), run_kinds=["repository"])

    run_ids = await asyncio.gather(*(busy_run(api, n) for n in range(RUNS)))
    logs = await asyncio.gather(*(finished_events(api, run_id, timeout=90) for run_id in run_ids))
    assert all(log[-1]["type"] == "run.completed" and len(log) == EVENTS_PER_RUN for log in logs)
    events = {e["id"]: e for log in logs for e in log}
    assert len(events) == RUNS * EVENTS_PER_RUN == 500

    expected = {("/all", event_id) for event_id in events}
    expected |= {("/completed", i) for i, e in events.items() if e["type"] == "run.completed"}
    assert len(expected) == 500 + RUNS

    await eventually(
        lambda: asyncio.sleep(0, len(receiver.delivered())),
        lambda n: n >= len(expected),
        timeout=90,
        what="all deliveries",
    )
    # Reaching the count proves nothing about duplicates still on their way: keep listening a while.
    await asyncio.sleep(SETTLE_S)
    got = collections.Counter((r.path, str(r.event["id"])) for r in receiver.delivered())
    assert max(got.values()) == 1, [k for k, v in got.items() if v > 1][:5]
    assert set(got) == expected
    assert all(r.verified(secrets[r.path]) for r in receiver.received)
    # Nothing for the repository-only endpoint or the other workspace, and nothing answered anything but 2xx.
    assert not [r for r in receiver.received if r.path in ("/repository", "/other")]
    assert len(receiver.received) == len(expected)
    # The delivery log agrees: one delivery per event and endpoint, all delivered.
    with Session(engine) as session:
        rows = session.exec(
            select(WebhookDelivery.status, func.count())
            .where(col(WebhookDelivery.endpoint_id).in_([healthy["id"], completed["id"]]))
            .group_by(col(WebhookDelivery.status))
        ).all()
    assert [tuple(r) for r in rows] == [("delivered", len(expected))]


@pytest.mark.parametrize("dispatch", ["outbox", "workflow"])
async def test_webhooks_disabled_endpoints_cost_no_delivery_and_no_workflow(
    make_stack: StackFactory, receiver: Receiver, client: Client, engine: Engine, dispatch: str
) -> None:
    stack = await make_stack(webhook_dispatch=dispatch)
    api = stack.api
    live = await create_endpoint(api, receiver.url("/live"))
    dead = [await create_endpoint(api, receiver.url(f"/dead{n}")) for n in range(5)]
    for endpoint in dead:
        resp = await api.client.patch(
            f"/v1/webhooks/endpoints/{endpoint['id']}", json={"enabled": False}, headers=api.headers()
        )
        assert resp.status == 200
    run_id = await fast_run(api)
    await finished_events(api, run_id)
    rows = await wait_deliveries(api, live["id"], all_status("delivered", 2))
    # The disabled endpoints got no delivery row at all...
    with Session(engine) as session:
        per_endpoint = dict(
            session.exec(
                select(WebhookDelivery.endpoint_id, func.count()).group_by(col(WebhookDelivery.endpoint_id))
            ).all()
        )
    assert per_endpoint == {live["id"]: 2}
    # ...and no delivery workflow was started for them: the only ones on this queue are the live endpoint's, and
    # through the outbox there are none at all (a healthy endpoint costs no workflow per event either).
    query = f"WorkflowType = '{WEBHOOK_DELIVERY_WORKFLOW}' AND TaskQueue = '{stack.settings.task_queue}'"
    expected = {delivery_workflow_id(r["id"]) for r in rows} if dispatch == "workflow" else set()

    async def started() -> set[str]:
        return {w.id async for w in client.list_workflows(query)}

    assert await eventually(started, lambda ids: ids == expected, what="delivery workflows") == expected
    await asyncio.sleep(1.0)
    assert await started() == expected
    assert {r.path for r in receiver.received} == {"/live"}
