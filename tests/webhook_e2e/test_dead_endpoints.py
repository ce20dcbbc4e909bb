"""Drill: 50 endpoints of one workspace, 45 of them dead: run status stays answerable, the healthy ones get every event.

Behaviour only; how fast the healthy endpoints get their events beside the dead ones is measured by
``python -m bench.webhooks --dead`` (their p50 next to the raw ceiling, in the same run).
"""

from __future__ import annotations

import asyncio
import collections
from types import TracebackType
from typing import Any, Self

import pytest

from tests.support import Api, eventually
from tests.webhook_e2e.conftest import StackFactory
from tests.webhook_e2e.support import Receiver, create_endpoint, fast_run, finished_events, free_port

RUNS = 6
CONCURRENCY = 2  # attempts in flight per endpoint (webhook_endpoint_concurrency)


def _path(endpoint: dict[str, Any]) -> str:
    return "/" + str(endpoint["url"]).rsplit("/", 1)[1]


class Hanging(asyncio.Protocol):
    """One connection of a server that reads a request and never answers it: the slowest kind of dead endpoint.

    Counted at the socket, not by polling in a handler: a request is in flight from its first bytes until the
    client closes the connection (``connection_lost`` runs as the loop sees the close), so a dispatcher that gives
    up on it (its timeout) and sends the next one is never counted twice by a lagging check.
    """

    def __init__(
        self, in_flight: collections.Counter[str], most: collections.Counter[str], open_: set[asyncio.BaseTransport]
    ) -> None:
        self._in_flight = in_flight
        self._most = most
        self._open = open_
        self._path: str | None = None
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._open.add(transport)

    def data_received(self, data: bytes) -> None:
        if self._path is None and b" " in data:
            self._path = data.split(b" ", 2)[1].decode("ascii", "replace")
            self._in_flight[self._path] += 1
            self._most[self._path] = max(self._most[self._path], self._in_flight[self._path])

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._open.discard(self._transport)
        if self._path is not None:
            self._in_flight[self._path] -= 1


class HangingServer:
    """A loopback server of :class:`Hanging` connections, with the most requests each path had in flight at once."""

    def __init__(self) -> None:
        self.in_flight: collections.Counter[str] = collections.Counter()
        self.most: collections.Counter[str] = collections.Counter()
        self._open: set[asyncio.BaseTransport] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Hanging(self.in_flight, self.most, self._open), "127.0.0.1", 0)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for transport in list(self._open):
            transport.close()
        await self._server.wait_closed()

    def url(self, path: str) -> str:
        """The URL of ``path`` on this server."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}{path}"


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
    stack = await make_stack(webhook_timeout_s=2.0, webhook_endpoint_concurrency=CONCURRENCY)
    api = stack.api
    async with Receiver() as healthy, HangingServer() as hanging:
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
        hung = dict(hanging.most)
    for endpoint in live:
        assert all(r.verified(endpoint["secret"]) for r in healthy.delivered(_path(endpoint)))
    assert hung, "the hanging endpoints were attempted"
    # A dead endpoint never holds more than its share of the dispatcher.
    assert max(hung.values()) <= CONCURRENCY, hung
