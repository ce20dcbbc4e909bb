"""Lifecycle events reach webhooks (stage runs and telemetry over HTTP, delivered signed), and filters keep them apart."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from quantapilot.webhooks.sender import ATTEMPT_HEADER, EVENT_ID_HEADER, EVENT_TYPE_HEADER, USER_AGENT
from tests.lifecycle_e2e.helpers import KPI, TARGET_INPUTS, account_events, new_account, samples, start, types
from tests.support import eventually
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import (
    FAST_FAIL_REPO,
    Receiver,
    all_status,
    assert_same_instant,
    create_endpoint,
    fast_run,
    finished_events,
    wait_deliveries,
)

SUBSCRIBED = ("run.started", "stage.completed", "realization.updated", "run.completed")


async def test_webhooks_deliver_lifecycle_and_telemetry_events(make_stack: StackFactory, receiver: Receiver) -> None:
    stack = await make_stack()
    api = stack.api
    # One of the names in the seed's spelling; gate events of the same runs are filtered out.
    endpoint = await create_endpoint(
        api,
        receiver.url("/lifecycle"),
        events=["run_started", "stage.completed", "realization.updated", "run.completed"],
        run_kinds=["lifecycle"],
    )
    assert tuple(endpoint["events"]) == SUBSCRIBED
    # A repository-only endpoint receives none of it.
    repository_only = await create_endpoint(api, receiver.url("/repository"), run_kinds=["repository"])
    account = new_account()

    # The target stage: business case approved at its gate, which activates the KPI targets.
    target_id = await start(api, account, "target", TARGET_INPUTS, correlationId="crm-deal-42")
    await api.wait_gate(target_id, "business_case")
    code, gate = await api.decide(target_id, "business_case", True, "numbers agreed")
    assert code == 200, gate
    assert (await api.wait_state(target_id, "completed", "failed"))["state"] == "completed"
    target_log = await api.events(target_id)
    assert types(target_log) == ["run.started", "gate.requested", "gate.decided", "stage.completed", "run.completed"]

    # Telemetry refreshes the account's realization: a realization.updated on the account's own stream.
    code, body = await api.post("/v1/telemetry/events", samples(account, [175.0]))
    assert code == 202 and body["refreshesScheduled"] == 1, body
    stream = await eventually(
        lambda: account_events(api, account), lambda evs: len(evs) >= 1, timeout=60, what="telemetry refresh"
    )
    (telemetry_update,) = stream

    # The realization stage run: its own realization.updated (source "run") in the run's log.
    realization_id = await start(api, account, "realization")
    assert (await api.wait_state(realization_id, "completed", "failed"))["state"] == "completed"
    realization_log = await api.events(realization_id)
    assert types(realization_log) == ["run.started", "stage.completed", "realization.updated", "run.completed"]

    expected = [e for e in (*target_log, *realization_log) if e["type"] in SUBSCRIBED] + [telemetry_update]
    assert len(expected) == 8
    await wait_deliveries(api, endpoint["id"], all_status("delivered", len(expected)))
    assert await account_events(api, account) == stream  # no later refresh slipped in

    got = {r.event["id"]: r for r in receiver.delivered("/lifecycle")}
    assert sorted(got) == sorted(e["id"] for e in expected)
    assert len(receiver.received) == len(expected)  # once each, nothing to the repository-only endpoint
    code, rows = await api.get(f"/v1/webhooks/endpoints/{repository_only['id']}/deliveries")
    assert code == 200 and rows["deliveries"] == []
    for event in expected:
        request = got[event["id"]]
        assert request.verified(endpoint["secret"])
        assert not request.verified(repository_only["secret"])
        assert request.headers[EVENT_ID_HEADER] == event["id"]
        assert request.headers[EVENT_TYPE_HEADER] == event["type"]
        assert request.headers[ATTEMPT_HEADER] == "1"
        assert request.headers["User-Agent"] == USER_AGENT
        envelope = request.event
        assert set(envelope) == {"id", "type", "created_at", "workspace", "run_id", "seq", "correlation_id", "data"}
        assert {k: envelope[k] for k in ("id", "type", "workspace", "run_id", "seq", "correlation_id", "data")} == {
            "id": event["id"],
            "type": event["type"],
            "workspace": "default",
            "run_id": event["run_id"],
            "seq": event["seq"],
            "correlation_id": event["correlation_id"],
            "data": event["data"],
        }
        assert_same_instant(envelope["created_at"], event["created_at"])

    by_type = _by_type(got[e["id"]].event for e in expected)
    assert [e["run_id"] for e in by_type["run.started"]] == [target_id, realization_id]
    assert by_type["run.started"][0]["correlation_id"] == "crm-deal-42"
    assert by_type["run.started"][0]["data"]["account_id"] == account
    assert [(e["run_id"], e["data"]["stage"]) for e in by_type["stage.completed"]] == [
        (target_id, "target"),
        (realization_id, "realization"),
    ]
    assert [e["run_id"] for e in by_type["run.completed"]] == [target_id, realization_id]
    from_telemetry, from_run = sorted(by_type["realization.updated"], key=lambda e: e["data"]["source"] != "telemetry")
    # The telemetry refresh belongs to the account's stream (an ar_ id), not to any run.
    assert from_telemetry["data"]["source"] == "telemetry" and from_telemetry["run_id"].startswith("ar_")
    assert from_telemetry["data"]["account_id"] == account and from_telemetry["seq"] == 1
    assert from_telemetry["data"]["kpis"] == {KPI: "at_risk"} and from_telemetry["data"]["samples"] == 1
    assert from_run["data"]["source"] == "run" and from_run["run_id"] == realization_id


def _by_type(envelopes: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for envelope in envelopes:
        grouped.setdefault(envelope["type"], []).append(envelope)
    return grouped


async def test_webhooks_repository_filter_admits_only_runs_of_those_repositories(
    make_stack: StackFactory, receiver: Receiver
) -> None:
    stack = await make_stack()
    api = stack.api
    wanted = FAST_FAIL_REPO.format(name="wanted")
    # Spelled differently from the trigger (case, ".GIT", a trailing slash): the filter compares normalized URLs.
    endpoint = await create_endpoint(api, receiver.url("/filtered"), repositories=[wanted.upper() + "/"])
    wanted_run = await fast_run(api, "wanted")
    other_run = await fast_run(api, "other")
    account = new_account()
    lifecycle_run = await start(api, account, "opportunity")
    wanted_log = await finished_events(api, wanted_run)
    await finished_events(api, other_run)
    assert (await api.wait_state(lifecycle_run, "completed", "failed"))["state"] == "completed"
    await wait_deliveries(api, endpoint["id"], all_status("delivered", len(wanted_log)))
    # Only the wanted repository's run: not the other repository's, not the lifecycle run (it has none).
    assert sorted(r.event["id"] for r in receiver.delivered("/filtered")) == sorted(e["id"] for e in wanted_log)
    assert {r.event["run_id"] for r in receiver.delivered("/filtered")} == {wanted_run}
