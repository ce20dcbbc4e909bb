"""Webhook delivery throughput and latency: the real delivery path against a raw signed POST loop.

Run with ``python -m bench.webhooks [--events N] [--dead]``. One process starts a Temporal dev server, an in-process
worker with every workflow and activity, a loopback receiver that verifies signatures, and one webhook endpoint. Then:

1. **our path**: N run events go through what ``record_event`` does (event and deliveries stored in one
   transaction, the deliveries already claimed for the worker's outbox dispatcher, which signs, POSTs and records
   them in batches; with ``--dispatch workflow`` one delivery workflow started per delivery instead).
   Measured: deliveries per second (first event stored to last receipt) and event-to-receipt latency. The
   events are offered as fast as eight concurrent recorders store them, faster than any path delivers, so this
   latency is mostly the queue the burst builds (it grows with N: about N / 2 / rate). The path's own latency is
   measured next, with the same code, on events offered at a steady :data:`PACED_PER_S` per second (well below
   what it sustains): **paced** p50 and p99 event -> receipt, the figure to hold against a latency target.
2. **drain** (outbox only): N events stored first, with no dispatcher running, then one dispatcher started on
   its own: what claiming, signing, POSTing and recording cost without the stores' transactions beside them.
   Measured: deliveries per second (dispatcher start to last receipt).
3. **raw**: the same N envelopes, signed and POSTed one after another over one keep-alive aiohttp session.

With ``--dead``, 45 dead endpoints are then added to the same workspace (30 refusing connections, 15 accepting and
never answering within the timeout) and step 1 is measured again: the healthy endpoint's p50 event -> receipt and
deliveries per second beside them, next to the figures without them and the raw ceiling (the drill
``tests/webhook_e2e/test_dead_endpoints.py`` checks the behaviour; this measures it).

Every row also gives the process's CPU time per delivery (all threads: the stores, the dispatcher, the receiver,
which is in the same process), steadier than the rates on a shared machine. The ratio (ours / raw; with ``--dead``,
ours beside the dead endpoints / raw) is printed last.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from sqlalchemy.engine import Engine
from temporalio.client import Client

from activities.events import record_outbox_event, store_event_with_deliveries
from bench.common import bench_settings, dev_server, fmt, machine_line, percentile, print_table, progress
from quantapilot.db import create_all, make_engine, session_scope
from quantapilot.events.envelope import envelope_of_record
from quantapilot.events.record import EventRecord
from quantapilot.secretbox import load_keyring
from quantapilot.settings import Settings
from quantapilot.webhooks import verify_signature
from quantapilot.webhooks.dispatcher import Dispatcher
from quantapilot.webhooks.endpoints import create_endpoint
from quantapilot.webhooks.sender import prepare_request
from quantapilot.webhooks.starts import start_delivery_workflows
from tests.webhook_e2e.support import event_records, free_port
from worker import ServiceWorker, build_worker


class Receiver:
    """Counts verified deliveries by event id with their receipt time."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: dict[str, float] = {}
        self.rejected = 0
        self.done = asyncio.Event()
        self.expected = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify_signature(self.secret, request.headers, body):
            self.rejected += 1
            return web.Response(status=401)
        self.received.setdefault(request.headers["X-VC-Event-Id"], time.perf_counter())
        if len(self.received) >= self.expected:
            self.done.set()
        return web.Response(status=204)

    def reset(self, expected: int) -> None:
        """Start counting a new batch."""
        self.received.clear()
        self.expected = expected
        self.done = asyncio.Event()

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()


class Hanging:
    """A loopback server that accepts requests and never answers them (until stopped): a dead endpoint."""

    def __init__(self) -> None:
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base = ""

    async def _handle(self, request: web.Request) -> web.Response:
        await self._release.wait()
        return web.Response(status=503)

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        """Answer what is waiting, stop listening."""
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()


#: The paced phase: events offered at a steady rate well below what the path sustains, for its latency.
PACED_PER_S = 100.0
PACED_EVENTS = 200
DEAD_REFUSING = 30
DEAD_HANGING = 15


def _dead_endpoints(engine: Engine, settings: Settings, hanging: Hanging) -> int:
    """Add the dead endpoints (refusing, then hanging) to the workspace; return how many."""
    urls = [f"http://127.0.0.1:{free_port()}/gone{n}" for n in range(DEAD_REFUSING)]
    urls += [f"{hanging.base}/hang{n}" for n in range(DEAD_HANGING)]
    keyring = load_keyring(settings)
    with session_scope(engine) as session:
        for url in urls:
            create_endpoint(session=session, workspace="default", url=url, keyring=keyring)
    return len(urls)


def _endpoint(engine: Engine, url: str, settings: Settings) -> str:
    with session_scope(engine) as session:
        _endpoint_row, secret = create_endpoint(
            session=session, workspace="default", url=url, keyring=load_keyring(settings)
        )
    return secret


class Phase:
    """A measured phase's rate, latencies and process CPU time per delivery."""

    def __init__(self, count: int, elapsed: float, cpu: float, latencies: list[float] | None = None) -> None:
        self.rate = count / elapsed
        self.cpu_ms = cpu / count * 1000
        self.latencies = latencies or []


async def _ours(
    settings: Settings,
    engine: Engine,
    client: Client,
    receiver: Receiver,
    count: int,
    worker: ServiceWorker,
    *,
    pace_s: float | None = None,
) -> Phase:
    """Record ``count`` events as fast as eight concurrent recorders go, or with ``pace_s``, one every pace_s."""
    events = event_records(count, prefix="bench")
    receiver.reset(count)
    stored: dict[str, float] = {}
    cpu = time.process_time()
    started = time.perf_counter()

    async def _record(event: EventRecord) -> None:
        # What the record_event activity does: one transaction (its deliveries handed to the dispatcher, claimed),
        # or start workflows.
        if worker.dispatcher is not None:
            await record_outbox_event(engine, event, worker.dispatcher)
            stored[event.id] = time.perf_counter()
        else:
            _inserted, pending = await asyncio.to_thread(store_event_with_deliveries, engine, event, outbox=False)
            stored[event.id] = time.perf_counter()
            await start_delivery_workflows(
                client, task_queue=settings.task_queue, settings=settings, deliveries=pending
            )

    gate = asyncio.Semaphore(8)

    async def _bounded(event: EventRecord) -> None:
        async with gate:
            await _record(event)

    if pace_s is None:
        await asyncio.gather(*(_bounded(e) for e in events))
    else:
        recording: list[asyncio.Task[None]] = []
        for index, event in enumerate(events):
            # On a fixed schedule from the start (not pace_s after each store), so a slow store is not made up for
            # by a quieter offered load.
            await asyncio.sleep(max(0.0, started + index * pace_s - time.perf_counter()))
            recording.append(asyncio.create_task(_bounded(event)))
        await asyncio.gather(*recording)
    await asyncio.wait_for(receiver.done.wait(), timeout=120)
    cpu = time.process_time() - cpu
    elapsed = max(receiver.received.values()) - started
    latencies = [receiver.received[e.id] - stored[e.id] for e in events]
    return Phase(count, elapsed, cpu, latencies)


async def _drain(settings: Settings, engine: Engine, receiver: Receiver, count: int) -> Phase:
    """Store ``count`` events with no dispatcher running, then time one dispatcher delivering them all."""
    events = event_records(count, prefix="bench-drain")
    for event in events:
        store_event_with_deliveries(engine, event, outbox=True)
    receiver.reset(count)
    dispatcher = Dispatcher(settings, engine, keyring=load_keyring(settings), client=None, task_queue="bench")
    cpu = time.process_time()
    started = time.perf_counter()
    await dispatcher.start()
    try:
        await asyncio.wait_for(receiver.done.wait(), timeout=120)
    finally:
        cpu = time.process_time() - cpu
        await dispatcher.stop()
    return Phase(count, max(receiver.received.values()) - started, cpu)


async def _raw(receiver: Receiver, secret: str, count: int) -> Phase:
    envelopes = [envelope_of_record(e) for e in event_records(count, prefix="bench")]
    receiver.reset(count)
    cpu = time.process_time()
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        for attempt, envelope in enumerate(envelopes, start=1):
            body, headers = prepare_request(envelope, secrets=[secret], attempt=attempt)
            async with session.post(receiver.url, data=body, headers=headers) as response:
                await response.read()
    elapsed = time.perf_counter() - started
    return Phase(count, elapsed, time.process_time() - cpu)


async def main(count: int, dispatch: str, *, dead: bool = False) -> None:
    """Run the measurements and print the table and the ratio."""
    print(machine_line())
    progress("starting the dev server")
    crowded: Phase | None = None
    async with dev_server() as env:
        with tempfile.TemporaryDirectory(prefix="qp-bench-webhooks-") as tmp:
            settings = bench_settings(
                Path(tmp) / "state",
                env.client,
                webhook_allow_private=True,
                webhook_timeout_s=10.0,
                webhook_dispatch=dispatch,
            )
            engine = make_engine(settings.database_url)
            create_all(engine)
            receiver = Receiver("")
            await receiver.start()
            hanging = Hanging()
            await hanging.start()
            receiver.secret = _endpoint(engine, receiver.url, settings)
            try:
                worker = build_worker(env.client, settings)
                async with worker:
                    progress(f"warm-up: {count // 10} deliveries")
                    await _ours(settings, engine, env.client, receiver, max(count // 10, 10), worker)
                    progress(f"our path ({dispatch}): {count} deliveries")
                    ours = await _ours(settings, engine, env.client, receiver, count, worker)
                    progress(f"our path ({dispatch}), paced at {PACED_PER_S:.0f} events/s: {PACED_EVENTS} deliveries")
                    paced = await _ours(
                        settings, engine, env.client, receiver, PACED_EVENTS, worker, pace_s=1 / PACED_PER_S
                    )
                    if dead:
                        added = _dead_endpoints(engine, settings, hanging)
                        progress(f"our path ({dispatch}) beside {added} dead endpoints: {count} deliveries")
                        crowded = await _ours(settings, engine, env.client, receiver, count, worker)
                drain = None
                if dispatch == "outbox" and not dead:
                    progress(f"drain: {count} stored deliveries, one dispatcher")
                    drain = await _drain(settings, engine, receiver, count)
                progress(f"raw loop: {count} signed POSTs")
                raw = await _raw(receiver, receiver.secret, count)
            finally:
                await hanging.stop()
                await receiver.stop()
                engine.dispose()
    rows = [
        [
            f"{dispatch} dispatch (store, sign, POST, record)",
            fmt(ours.rate),
            fmt(percentile(ours.latencies, 50) * 1000),
            fmt(percentile(ours.latencies, 99) * 1000),
            fmt(ours.cpu_ms, 3),
        ]
    ]
    rows.append(
        [
            f"{dispatch} dispatch, events paced at {PACED_PER_S:.0f}/s",
            fmt(paced.rate),
            fmt(percentile(paced.latencies, 50) * 1000),
            fmt(percentile(paced.latencies, 99) * 1000),
            fmt(paced.cpu_ms, 3),
        ]
    )
    if crowded is not None:
        rows.append(
            [
                f"{dispatch} dispatch, healthy endpoint beside {DEAD_REFUSING + DEAD_HANGING} dead",
                fmt(crowded.rate),
                fmt(percentile(crowded.latencies, 50) * 1000),
                fmt(percentile(crowded.latencies, 99) * 1000),
                fmt(crowded.cpu_ms, 3),
            ]
        )
    if drain is not None:
        rows.append(["outbox drain of stored deliveries", fmt(drain.rate), "-", "-", fmt(drain.cpu_ms, 3)])
    rows.append(["raw signed aiohttp POST loop", fmt(raw.rate), "-", "-", fmt(raw.cpu_ms, 3)])
    print_table(
        "Webhook deliveries to a loopback receiver",
        ["path", "deliveries/s", "p50 event->receipt ms", "p99 event->receipt ms", "CPU ms/delivery"],
        rows,
    )
    if crowded is not None:
        print(
            f"\np50 event->receipt beside dead endpoints: {percentile(crowded.latencies, 50) * 1000:.0f} ms "
            f"(alone {percentile(ours.latencies, 50) * 1000:.0f} ms, target < 100 ms)"
        )
        print(f"ratio ours/raw beside dead endpoints: {crowded.rate / raw.rate:.3f} (alone {ours.rate / raw.rate:.3f})")
        return
    if drain is not None:
        print(f"\nratio drain/raw: {drain.rate / raw.rate:.3f}")
    print(f"\np50 event->receipt at {PACED_PER_S:.0f} events/s: {percentile(paced.latencies, 50) * 1000:.0f} ms")
    print(f"\nratio ours/raw: {ours.rate / raw.rate:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300, help="deliveries per measured batch")
    parser.add_argument(
        "--dispatch", choices=["outbox", "workflow"], default="outbox", help="delivery path (QP_WEBHOOK_DISPATCH)"
    )
    parser.add_argument(
        "--dead",
        action="store_true",
        help=f"measure again beside {DEAD_REFUSING + DEAD_HANGING} dead endpoints (refusing and hanging)",
    )
    args = parser.parse_args()
    asyncio.run(main(args.events, args.dispatch, dead=args.dead))
