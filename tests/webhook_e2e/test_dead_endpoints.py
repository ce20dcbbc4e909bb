"""Drill: 50 endpoints of one workspace, 45 of them dead: run status stays answerable, the healthy ones get every event.

Behaviour only; how fast the healthy endpoints get their events beside the dead ones is measured by
``python -m bench.webhooks --dead`` (their p50 next to the raw ceiling, in the same run).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest
from aiohttp import web

from tests.support import Api, eventually
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import Receiver, create_endpoint, fast_run, finished_events, free_port

RUNS = 6
CONCURRENCY = 2  # attempts in flight per endpoint (webhook_endpoint_concurrency)


def _path(endpoint: dict[str, Any]) -> str:
    return "/" + str(endpoint["url"]).rsplit("/", 1)[1]


async def _statuses(api: Api, run_ids: list[str]) -> list[int]:
    codes = []
    for run_id in run_ids:
        code, _ = await api.get(f"/v1/runs/{run_id}")
        codes.append(code)
    return codes


@pytest.mark.slow
async def test_webhooks_fifty_endpoints_45_dead_status_answers_and_healthy_get_every_event(
    make_stack: StackFactory,
) -> None:
    release = asyncio.Event()
    in_flight: collections.Counter[str] = collections.Counter()
    most: collections.Counter[str] = collections.Counter()

    async def hang(request: web.Request, count: int) -> web.StreamResponse:
        # Never answers within the timeout: the slowest kind of dead endpoint.
        in_flight[request.path] += 1
        most[request.path] = max(most[request.path], in_flight[request.path])
        try:
            # Until the dispatcher gives up (its timeout closes the connection), so what is counted is what it has
            # in flight there.
            while not release.is_set() and request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.05)
        finally:
            in_flight[request.path] -= 1
        return web.Response(status=503)

    stack = await make_stack(webhook_timeout_s=2.0, webhook_endpoint_concurrency=CONCURRENCY)
    api = stack.api
    async with Receiver() as healthy, Receiver(behaviour=hang) as hanging:
        live = [await create_endpoint(api, healthy.url(f"/live{n}")) for n in range(5)]
        dead = [await create_endpoint(api, f"http://127.0.0.1:{free_port()}/gone{n}") for n in range(30)]
        dead += [await create_endpoint(api, hanging.url(f"/hang{n}")) for n in range(15)]
        assert len(dead) + len(live) == 50
        run_ids: list[str] = []
        for n in range(RUNS):
            run_ids.append(await fast_run(api, f"crowded{n}"))
            # Status stays answerable: every run's status, every time (a worker drowned in deliveries answered 503).
            assert await _statuses(api, run_ids) == [200] * len(run_ids)
            await asyncio.sleep(0.3)
        events = [e for run_id in run_ids for e in await finished_events(api, run_id)]
        expected = {e["id"] for e in events}
        assert len(expected) == 2 * RUNS
        for endpoint in live:
            path = _path(endpoint)

            async def received(at: str = path) -> set[str]:
                return set(healthy.event_ids(at))

            await eventually(received, lambda got: got >= expected, timeout=60, what=f"every event at {path}")
        # While the dead endpoints are still being retried, status is still answered.
        assert await _statuses(api, run_ids) == [200] * len(run_ids)
        hung = dict(most)
        release.set()
    for endpoint in live:
        assert all(r.verified(endpoint["secret"]) for r in healthy.delivered(_path(endpoint)))
    assert hung, "the hanging endpoints were attempted"
    # A dead endpoint never holds more than its share of the dispatcher.
    assert max(hung.values()) <= CONCURRENCY, hung
