"""Fan-out at volume: 20 concurrent runs, endpoints with and without filters, every delivery exactly once."""

from __future__ import annotations

import asyncio
import collections

import pytest

from tests.conftest import ApiFactory
from tests.support import eventually
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import FAST_FAIL_REPO, Receiver, create_endpoint, fast_run, finished_events

RUNS = 20
PLAIN_ENDPOINTS = 12


@pytest.mark.slow
async def test_webhooks_fanout_500_deliveries_exactly_once(
    make_stack: StackFactory, make_api: ApiFactory, receiver: Receiver
) -> None:
    stack = await make_stack()
    api = stack.api
    # Another workspace's endpoint, subscribed to everything, must receive none of this workspace's events.
    other_api = await make_api(stack.settings, workspace="other")
    await create_endpoint(other_api, receiver.url("/other"))
    secrets: dict[str, str] = {}
    for n in range(PLAIN_ENDPOINTS):
        secrets[f"/plain/{n}"] = (await create_endpoint(api, receiver.url(f"/plain/{n}")))["secret"]
    secrets["/failed"] = (await create_endpoint(api, receiver.url("/failed"), events=["run.failed"]))["secret"]
    repo_a = FAST_FAIL_REPO.format(name="alpha")
    secrets["/alpha"] = (
        await create_endpoint(api, receiver.url("/alpha"), repositories=[repo_a.upper().removesuffix(".GIT") + "/"])
    )["secret"]
    secrets["/lifecycle"] = (await create_endpoint(api, receiver.url("/lifecycle"), run_kinds=["lifecycle"]))["secret"]

    run_ids = await asyncio.gather(*(fast_run(api, "alpha" if i % 2 else "beta") for i in range(RUNS)))
    logs = await asyncio.gather(*(finished_events(api, run_id, timeout=60) for run_id in run_ids))
    events = {e["id"]: e for log in logs for e in log}
    assert len(events) == 2 * RUNS
    alpha_runs = {run_id for i, run_id in enumerate(run_ids) if i % 2}

    expected: set[tuple[str, str]] = set()
    for event_id, event in events.items():
        expected |= {(f"/plain/{n}", event_id) for n in range(PLAIN_ENDPOINTS)}
        if event["type"] == "run.failed":
            expected.add(("/failed", event_id))
        if event["run_id"] in alpha_runs:
            expected.add(("/alpha", event_id))
    assert len(expected) == 2 * RUNS * PLAIN_ENDPOINTS + RUNS + RUNS

    await eventually(
        lambda: asyncio.sleep(0, len(receiver.delivered())),
        lambda n: n >= len(expected),
        timeout=90,
        what="all deliveries",
    )
    got = collections.Counter((r.path, str(r.event["id"])) for r in receiver.delivered())
    assert set(got) == expected
    assert max(got.values()) == 1, [k for k, v in got.items() if v > 1][:5]
    assert all(r.verified(secrets[r.path]) for r in receiver.received)
    # Nothing for the lifecycle-only endpoint or the other workspace, and nothing answered anything but 2xx.
    assert not [r for r in receiver.received if r.path in ("/lifecycle", "/other")]
    assert len(receiver.received) == len(expected)
