"""Helpers of the webhook end-to-end tests: a scriptable loopback receiver and API shortcuts."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import standardwebhooks
import stripe
from aiohttp import web

from quantapilot.events.record import EventRecord
from quantapilot.models import RunKind
from quantapilot.settings import Settings
from quantapilot.webhooks import verify_signature
from quantapilot.webhooks.signing import SIGNATURE_HEADER
from tests.support import Api, eventually

# A repository URL the test worker refuses at once (only file:// is allowed): the run records run.started and
# run.failed within a second, which makes it the cheapest real source of events.
FAST_FAIL_REPO = "https://git.example.test/team/{name}.git"


@dataclass
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float

    @property
    def event(self) -> dict[str, Any]:
        """The parsed envelope."""
        value: dict[str, Any] = json.loads(self.body)
        return value

    def verified(self, secret: str) -> bool:
        """Whether ``secret`` verifies the request's signature."""
        return verify_signature(secret, self.headers, self.body)

    def verified_standard(self, whsec: str) -> bool:
        """Whether the Standard Webhooks reference implementation accepts the request under ``whsec``."""
        try:
            standardwebhooks.Webhook(whsec).verify(self.body, self.headers)
        except standardwebhooks.WebhookVerificationError:
            return False
        return True

    def verified_stripe(self, secret: str) -> bool:
        """Whether Stripe's verifier accepts the request's ``X-VC-Signature`` under ``secret``."""
        try:
            stripe.WebhookSignature.verify_header(self.body, self.headers.get(SIGNATURE_HEADER), secret, tolerance=300)
        except stripe.SignatureVerificationError:
            return False
        return True


Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


async def ok(request: web.Request, count: int) -> web.StreamResponse:
    """Answer 200."""
    return web.json_response({"ok": True})


@dataclass
class Receiver:
    """An aiohttp server on 127.0.0.1 that records every request and answers as ``behaviour`` says.

    ``behaviour(request, n)`` gets the request and how many requests its path has had (from 1).
    """

    port: int = 0
    behaviour: Behaviour = ok
    received: list[Received] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _counts: dict[str, int] = field(default_factory=dict)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        count = self._counts[request.path] = self._counts.get(request.path, 0) + 1
        # Recorded on arrival (status 0 until answered), so the list is in arrival order.
        record = Received(request.path, dict(request.headers), body, 0, time.monotonic())
        self.received.append(record)
        response = await self.behaviour(request, count)
        record.status = response.status
        return response

    async def start(self) -> Self:
        """Listen (on ``port``, or a free one)."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, path: str = "/hook") -> str:
        """URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self.port}{path}"

    def delivered(self, path: str | None = None) -> list[Received]:
        """Requests answered 2xx (on ``path``, or all)."""
        return [r for r in self.received if 200 <= r.status < 300 and (path is None or r.path == path)]

    def event_ids(self, path: str | None = None) -> list[str]:
        """Event ids of the 2xx-answered requests."""
        return [str(r.event["id"]) for r in self.delivered(path)]

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


def free_port() -> int:
    """A port nothing listens on (yet)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """An API client and the settings its worker runs with."""

    api: Api
    settings: Settings


async def create_endpoint(api: Api, url: str, **extra: Any) -> dict[str, Any]:
    """Create an endpoint (asserts 201); the answer includes its secret."""
    code, body = await api.post("/v1/webhooks/endpoints", {"url": url, **extra})
    assert code == 201, body
    return dict(body)


async def fast_run(api: Api, name: str = "repo") -> str:
    """Trigger a run that fails at once (two events); return its id."""
    code, body = await api.post("/v1/runs", {"repo_url": FAST_FAIL_REPO.format(name=name), "branch": "main"})
    assert code == 202, body
    return str(body["run_id"])


TERMINAL_EVENTS = frozenset({"run.failed", "run.completed", "run.cancelled"})


async def finished_events(api: Api, run_id: str, *, timeout: float = 30) -> list[dict[str, Any]]:
    """Wait until the run's log ends with its final event, then return the log.

    Reads the event log (the database), not the status query: a worker busy with hundreds of deliveries
    answers queries slowly, and a test should not measure that.
    """

    async def _log() -> list[dict[str, Any]]:
        code, body = await api.get(f"/v1/runs/{run_id}/events")
        return list(body["events"]) if code == 200 else []

    return await eventually(
        _log, lambda events: bool(events) and events[-1]["type"] in TERMINAL_EVENTS, timeout=timeout, what="run end"
    )


async def assert_gapless_logs(api: Api, run_ids: list[str]) -> None:
    """Each run's event log (read again now) numbers its events 1..n without a gap, each event once."""
    for run_id in run_ids:
        code, body = await api.get(f"/v1/runs/{run_id}/events")
        assert code == 200, body
        events = list(body["events"])
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), run_id
        assert len({e["id"] for e in events}) == len(events), run_id


async def deliveries(api: Api, endpoint_id: str, **query: str) -> list[dict[str, Any]]:
    """The endpoint's delivery log (asserts 200)."""
    params = "&".join(f"{k}={v}" for k, v in {"limit": "200", **query}.items())
    code, body = await api.get(f"/v1/webhooks/endpoints/{endpoint_id}/deliveries?{params}")
    assert code == 200, body
    return list(body["deliveries"])


async def wait_deliveries(
    api: Api, endpoint_id: str, until: Callable[[list[dict[str, Any]]], bool], *, timeout: float = 30
) -> list[dict[str, Any]]:
    """Poll the delivery log until ``until`` holds."""
    return await eventually(
        lambda: deliveries(api, endpoint_id), until, timeout=timeout, interval=0.1, what="delivery log"
    )


def all_status(status: str, count: int) -> Callable[[list[dict[str, Any]]], bool]:
    """A delivery-log predicate: exactly ``count`` deliveries, all in ``status``."""
    return lambda rows: len(rows) == count and all(r["status"] == status for r in rows)


def disabled_record_after(status: str) -> Callable[[list[dict[str, Any]]], bool]:
    """A delivery-log predicate: the ``webhook.endpoint_disabled`` record on top of one delivery in ``status``.

    The log is newest first; the record is written by the attempt that disabled the endpoint.
    """

    def _holds(rows: list[dict[str, Any]]) -> bool:
        if len(rows) != 2:
            return False
        record, cause = rows
        return (
            (record["event_type"], record["status"], record["attempt_count"], record["run_id"])
            == ("webhook.endpoint_disabled", "disabled", 0, None)
            and record["attempts"] == []
            and record["next_retry_at"] is None
            and cause["status"] == status
        )

    return _holds


def assert_same_instant(left: str, right: str) -> None:
    """Two ISO timestamps name the same instant (``Z`` or ``+00:00``)."""
    assert datetime.fromisoformat(left) == datetime.fromisoformat(right), (left, right)


def event_records(count: int, *, prefix: str) -> list[EventRecord]:
    """``count`` events of one made-up run (``<prefix>-<hex>``), as the worker records them, for the outbox."""
    run_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    return [
        EventRecord(
            id=f"evt_{uuid.uuid4().hex}",
            run_id=run_id,
            workspace="default",
            run_kind=RunKind.REPOSITORY,
            seq=seq,
            type="run.started" if seq == 1 else "gate.requested",
            created_at=datetime.now(UTC),
            data={"run_id": run_id, "seq": seq},
        )
        for seq in range(1, count + 1)
    ]
