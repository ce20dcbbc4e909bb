"""The outbox dispatcher: one asyncio task group per worker that drains due deliveries in batches.

Instead of a workflow per delivery, each worker runs a :class:`Dispatcher` (started and stopped by ``worker.py``):

- **Claiming.** A loop claims due deliveries in batches (:func:`quantapilot.webhooks.outbox.claim_due`) whenever it
  is woken (:meth:`Dispatcher.wake`, called in-process when this worker records an event or a batch settles) or a
  short poll interval passes (backing off from :data:`POLL_MIN_S` to :data:`POLL_MAX_S` while idle), so deliveries
  recorded by another process (a redelivery through the API, another worker) are picked up within ~0.1 s.
- **Handed over by this process's stores.** An event recorded by this worker's ``record_event`` can arrive
  already claimed: the store asks :meth:`Dispatcher.lease` for a claim, writes it on the deliveries of healthy
  endpoints in the event's own transaction (:mod:`quantapilot.webhooks.outbox_store`), and
  :meth:`Dispatcher.adopt` starts their sends with no claim query. They are claims like any other (same lease,
  renewal, fencing), so two dispatchers still never send one, and a crash before they are sent leaves them to be
  claimed once the lease runs out.
- **Sending.** Every attempt goes over one shared :class:`aiohttp.ClientSession` with keep-alive. At most
  ``webhook_endpoint_concurrency`` attempts run per endpoint, and an endpoint with twice that many claimed is
  left out of the next claims, so a slow endpoint holds a bounded share of the dispatcher and never delays the
  others (an attempt answered with a success stops counting at once, a failure only once it is recorded). A
  failing endpoint (no success since it started failing) is throttled as a whole: one attempt at a
  time probes it, and healthy endpoints' deliveries are claimed before failing ones'.
- **Recording.** Answers queue up and one recorder writes all that are ready in one transaction
  (:func:`~quantapilot.webhooks.outbox_record.record_results`, set-based for successes); a database outage only delays
  it (it retries), and a claim taken over meanwhile is fenced by its token. Claims and records run in the
  dispatcher's own threads, never behind the worker's activities in the default executor.
- **Leases.** A claim holds for ``webhook_claim_lease_s`` (at least three HTTP timeouts) and is renewed while its
  attempts run; an attempt whose lease might have run out (renewals failing) is not sent, so two dispatchers never
  send the same claimed delivery. A worker killed mid-batch leaves its claims to run out: another dispatcher
  (or the restarted worker) re-claims them after the lease, so nothing is lost.

What each answer does (retry schedule, 410, 5 days failing, throttle, abort, rotation overlap) is decided by
:mod:`quantapilot.webhooks.delivery`, the same code the delivery workflows use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Final, TypeVar

import aiohttp
from sqlalchemy.engine import Engine
from temporalio.client import Client

from quantapilot.db import one_writer, session_scope, utcnow
from quantapilot.events.envelope import EventEnvelope
from quantapilot.observability import WEBHOOK_DELIVERIES
from quantapilot.review.links import with_review_url
from quantapilot.secretbox import KeyRing
from quantapilot.settings import Settings
from quantapilot.webhooks.contracts import DeliverAttemptInput, outbox_owner
from quantapilot.webhooks.delivery import AttemptVerdict, PreparedAttempt
from quantapilot.webhooks.outbox import ClaimBatch, Claimed, claim_due, release_claims, renew_claims
from quantapilot.webhooks.outbox_record import record_results
from quantapilot.webhooks.outbox_store import HandedDelivery, Lease, StoredEvent
from quantapilot.webhooks.sender import post_event, prepare_request
from quantapilot.webhooks.starts import start_amqp_publish
from quantapilot.webhooks.tables import DeliveryOutcome, DeliveryResult

log = logging.getLogger("quantapilot.webhooks.dispatcher")

#: Poll interval right after work, and the idle backoff's ceiling (seconds).
POLL_MIN_S: Final = 0.01
POLL_MAX_S: Final = 0.1
#: Failing endpoints' due retries are claimed at most this often (seconds).
FAILING_CLAIM_EVERY_S: Final = 0.1
#: Deliveries claimed by one statement at most.
CLAIM_BATCH: Final = 100
#: Wait after a database error before claiming or recording again (seconds).
DB_RETRY_S: Final = 0.5
#: Threads of the dispatcher's own for its database steps (claim, record, renew, release) on PostgreSQL.
DB_THREADS: Final = 2

_T = TypeVar("_T")


class Dispatcher:
    """Drains the webhook outbox of one database from inside a worker.

    Args:
        settings: Service settings (timeouts, lease, concurrency, retry scale, private-address policy).
        engine: Database engine holding the webhook tables.
        keyring: Opens the signing secrets.
        client: Temporal client, to start the AMQP publication of a ``webhook.endpoint_disabled`` event.
        task_queue: The worker's task queue (for those publications).
    """

    def __init__(
        self, settings: Settings, engine: Engine, *, keyring: KeyRing, client: Client | None, task_queue: str
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._keyring = keyring
        self._client = client
        self._task_queue = task_queue
        self._lease_s = settings.webhook_claim_lease_s
        self._per_endpoint = settings.webhook_endpoint_concurrency
        self._wake = asyncio.Event()
        self._record_wake = asyncio.Event()
        self._closing = False
        self._http: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sends: set[asyncio.Task[None]] = set()
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._claimed: dict[str, Claimed] = {}  # delivery id -> claim, until recorded or released
        self._by_endpoint: Counter[str] = Counter()  # claimed, until recorded or released
        # Claimed, and neither recorded nor answered with a success: what an endpoint holds of the dispatcher. A
        # success waiting for the recorder does not count, so a healthy endpoint's next deliveries are claimed
        # while the previous ones are being recorded instead of after; a failure counts until it is recorded
        # (which makes the endpoint failing), so a dead endpoint answering at once is not claimed again and again.
        self._holding: Counter[str] = Counter()
        self._held: set[str] = set()  # the delivery ids counted in _holding
        self._failing: set[str] = set()  # failing endpoints with an attempt in flight (probed one at a time)
        self._deadlines: dict[str, float] = {}  # claim token -> monotonic time its lease may run out
        self._results: list[tuple[Claimed, DeliveryResult]] = []
        self._stop_task: asyncio.Task[None] | None = None
        # Endpoints whose deliveries a store of this process left unclaimed (saturated, throttled, ...), with the
        # adoption's stamp: none of theirs is handed over until a claim has taken what was due (see _claim_some),
        # so a steady stream of fresh events handed straight over never starves the older ones waiting for a claim.
        self._backlog: dict[str, int] = {}
        self._stamp = 0
        self._next_failing_claim = 0.0
        # SQLite takes one writer at a time and a writer that finds the lock taken sleeps in steps of up to 0.1 s
        # (its busy handler): one thread queues the claim behind the record here instead, and it starts the
        # moment the record commits.
        threads = 1 if engine.dialect.name == "sqlite" else DB_THREADS
        self._db_threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="webhook-dispatcher-db")

    # -- lifecycle --

    async def start(self) -> None:
        """Open the HTTP session and start claiming, sending, recording and renewing."""
        if self._tasks or self._closing:
            return
        connector = aiohttp.TCPConnector(limit=self._settings.webhook_dispatch_inflight, limit_per_host=0)
        self._http = aiohttp.ClientSession(connector=connector, trust_env=False)
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="webhook-dispatcher-claim"),
            asyncio.create_task(self._record_loop(), name="webhook-dispatcher-record"),
            asyncio.create_task(self._renew_loop(), name="webhook-dispatcher-renew"),
        ]

    def wake(self) -> None:
        """Look for due deliveries now (an event was just recorded); cheap, callable any number of times."""
        self._wake.set()

    def lease(self) -> Lease | None:
        """A claim for the deliveries an event store of this process is about to create (see :meth:`adopt`).

        Call it on the event loop, just before the store; None when the dispatcher takes nothing now (not started,
        stopping, every slot taken): the store then leaves every delivery to the claim loop.
        """
        free = self._settings.webhook_dispatch_inflight - len(self._claimed)
        if not self._tasks or self._closing or free <= 0:
            return None
        saturated = frozenset(self._saturated()) | self._backlog.keys()
        return Lease(
            token=secrets.token_hex(16),
            until=utcnow() + timedelta(seconds=self._lease_s),
            started=time.monotonic(),
            keyring=self._keyring,
            limit=min(free, CLAIM_BATCH),
            exclude=saturated,
        )

    def adopt(self, lease: Lease | None, stored: StoredEvent | None, envelope: EventEnvelope | None) -> None:
        """Send the deliveries a store handed over claimed under ``lease``; wake the claim loop for the rest.

        Args:
            lease: What :meth:`lease` gave the store (None: it claimed nothing).
            stored: What the store wrote (None: nothing, a redo).
            envelope: The stored event's envelope (what every handed delivery sends).
        """
        handed = stored.handed if stored is not None and lease is not None and envelope is not None else []
        if handed and lease is not None and envelope is not None:
            if self._closing:
                # Stopping: never sent; freed with the other unsent claims if the stop has not freed them yet,
                # else claimed again once the lease runs out (the crash cover).
                for delivery in handed:
                    self._claimed.setdefault(delivery.delivery_id, self._handed_claim(lease, delivery, envelope))
            else:
                self._deadlines[lease.token] = lease.started + self._lease_s
                for delivery in handed:
                    self._take(self._handed_claim(lease, delivery, envelope))
        if stored is not None and stored.left:
            self._stamp += 1
            for endpoint_id in stored.left:
                self._backlog[endpoint_id] = self._stamp
        if stored is None or stored.created > len(handed):
            self.wake()

    def _handed_claim(self, lease: Lease, delivery: HandedDelivery, envelope: EventEnvelope) -> Claimed:
        """The claim of a handed delivery: its first attempt, as :func:`claim_due` would prepare it."""
        inp = DeliverAttemptInput(
            delivery_id=delivery.delivery_id,
            attempt=1,
            schedule_index=1,
            workflow_id=outbox_owner(delivery.delivery_id),
            retry_scale=self._settings.webhook_retry_scale,
            timeout_s=self._settings.webhook_timeout_s,
        )
        prepared = PreparedAttempt(url=delivery.url, secrets=delivery.secrets, envelope=envelope)
        return Claimed(delivery.delivery_id, delivery.endpoint_id, lease.token, inp, prepared)

    def _saturated(self) -> list[str]:
        """Endpoints left out of the next claims: enough in flight already, or failing with a probe out."""
        return [e for e in self._by_endpoint if self._holding[e] >= 2 * self._per_endpoint or e in self._failing]

    async def stop(self) -> None:
        """Stop: cancel attempts in flight, record what was answered, free unsent claims, close the session.

        Idempotent, and safe to call concurrently: every caller waits for the same shutdown.
        """
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        self._closing = True
        self._wake.set()
        claim, record, renew = self._tasks or (None, None, None)
        if claim is not None:
            await claim  # it leaves at its next turn; a claim already running in a thread finishes first
        for task in list(self._sends):
            task.cancel()
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)
        if record is not None:
            self._record_wake.set()
            await record  # writes the answers already in, then leaves
        if renew is not None:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
        if self._claimed:
            # Cancelled or never sent: due again at once for the next dispatcher instead of after the lease.
            leftover = [(c.delivery_id, c.token) for c in self._claimed.values()]
            try:
                await self._in_db_thread(self._release, leftover)
            except Exception:
                log.warning("could not free %d webhook claims; they are re-claimed after the lease", len(leftover))
        if self._http is not None:
            await self._http.close()
        # A step may still run in a thread (a renewal whose waiting task was cancelled above) with a pooled
        # connection checked out; the owner disposes of the engine once this returns, which would leave that
        # connection to the garbage collector, still open.
        await asyncio.to_thread(self._db_threads.shutdown, wait=True, cancel_futures=True)

    # -- database steps (in the dispatcher's own threads) --

    async def _in_db_thread(self, step: Callable[..., _T], *args: Any) -> _T:
        """Run a database step in the dispatcher's own threads.

        Not ``asyncio.to_thread``: the default executor has a handful of threads (cores + 4) shared by every
        activity of the worker, so a claim would queue behind whatever they do (the record_event activities of a
        burst of events, each in the executor for a whole transaction) and a fresh event would wait for them
        before it is even looked for. On PostgreSQL two threads, so a claim and a record overlap; on SQLite one.
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_threads, functools.partial(step, *args))

    def _claim(self, token: str, limit: int, exclude: Sequence[str], failing: bool) -> ClaimBatch:
        with one_writer(self._engine), session_scope(self._engine) as session:
            return claim_due(
                session=session,
                token=token,
                now=utcnow(),
                lease_s=self._lease_s,
                limit=limit,
                keyring=self._keyring,
                retry_scale=self._settings.webhook_retry_scale,
                timeout_s=self._settings.webhook_timeout_s,
                exclude_endpoints=exclude,
                failing=failing,
            )

    def _record(self, results: Sequence[tuple[Claimed, DeliveryResult]]) -> list[AttemptVerdict]:
        with one_writer(self._engine), session_scope(self._engine) as session:
            return record_results(session=session, results=results, now=utcnow())

    def _renew(self, tokens: Sequence[str]) -> None:
        with one_writer(self._engine), session_scope(self._engine) as session:
            renew_claims(session=session, tokens=tokens, until=utcnow() + timedelta(seconds=self._lease_s))

    def _release(self, claims: Sequence[tuple[str, str]]) -> None:
        with one_writer(self._engine), session_scope(self._engine) as session:
            release_claims(session=session, claims=claims)

    # -- loops --

    async def _claim_loop(self) -> None:
        idle = POLL_MIN_S
        while not self._closing:
            self._wake.clear()
            # Healthy endpoints' deliveries first, each claim's sends starting before the next claim is made.
            found = False
            # Failing endpoints' retries are claimed at most every FAILING_CLAIM_EVERY_S: a few dozen dead
            # endpoints answering at once (refused connections) must not keep the database busy for fresh events.
            failing_due = time.monotonic() >= self._next_failing_claim
            for failing in (False, True) if failing_due else (False,):
                try:
                    found = await self._claim_some(failing=failing) or found
                except Exception:
                    log.exception("claiming webhook deliveries failed; trying again shortly")
                    idle = DB_RETRY_S
                    break
            if failing_due:
                self._next_failing_claim = time.monotonic() + FAILING_CLAIM_EVERY_S
            if found:
                idle = POLL_MIN_S
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle)
            idle = min(idle * 2, POLL_MAX_S)

    async def _claim_some(self, *, failing: bool) -> bool:
        """Claim one batch (healthy or failing endpoints), start its sends; tell whether anything was due."""
        free = self._settings.webhook_dispatch_inflight - len(self._claimed)
        if free <= 0 or self._closing:
            return False
        token = secrets.token_hex(16)
        saturated = self._saturated()
        started = time.monotonic()
        stamp = self._stamp
        limit = min(free, CLAIM_BATCH)
        batch = await self._in_db_thread(self._claim, token, limit, saturated, failing)
        if not failing and len(batch.sends) + len(batch.settled) < limit:
            # Everything due of the endpoints not left out was claimed: what stores left before this claim
            # started is taken (a store adopted since may have left more: its stamp is newer).
            left_out = set(saturated)
            self._backlog = {e: n for e, n in self._backlog.items() if n > stamp or e in left_out}
        if batch.sends:
            self._deadlines[token] = started + self._lease_s
        for claimed in batch.sends:
            self._take(claimed)
        await self._announce(batch.settled)
        return bool(batch.sends or batch.settled)

    def _take(self, claimed: Claimed) -> None:
        self._claimed[claimed.delivery_id] = claimed
        self._by_endpoint[claimed.endpoint_id] += 1
        self._holding[claimed.endpoint_id] += 1
        self._held.add(claimed.delivery_id)
        if claimed.failing:
            self._failing.add(claimed.endpoint_id)
        task = asyncio.create_task(self._send(claimed))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _forget(self, claimed: Claimed) -> None:
        self._unhold(claimed)
        self._claimed.pop(claimed.delivery_id, None)
        self._by_endpoint[claimed.endpoint_id] -= 1
        if self._by_endpoint[claimed.endpoint_id] <= 0:
            del self._by_endpoint[claimed.endpoint_id]
            self._gates.pop(claimed.endpoint_id, None)
            self._failing.discard(claimed.endpoint_id)
        if not any(c.token == claimed.token for c in self._claimed.values()):
            self._deadlines.pop(claimed.token, None)

    async def _send(self, claimed: Claimed) -> None:
        result = await self._attempt(claimed)
        if result is None:
            return
        if result.outcome is DeliveryOutcome.DELIVERED:
            self._unhold(claimed)
        WEBHOOK_DELIVERIES.labels(result.outcome.value).inc()
        self._results.append((claimed, result))
        self._record_wake.set()

    def _unhold(self, claimed: Claimed) -> None:
        """The claim no longer holds a share of its endpoint (answered with a success, recorded or left)."""
        if claimed.delivery_id not in self._held:
            return
        self._held.discard(claimed.delivery_id)
        endpoint_id = claimed.endpoint_id
        self._holding[endpoint_id] -= 1
        left = self._holding[endpoint_id]
        if left <= 0:
            del self._holding[endpoint_id]
        if left == 2 * self._per_endpoint - 1:
            self._wake.set()  # it was left out of the claims (saturated): its next deliveries may be claimed now

    async def _attempt(self, claimed: Claimed) -> DeliveryResult | None:
        """Sign and POST one claimed delivery (None: not sent, its lease may run out first)."""
        gate = self._gates.setdefault(claimed.endpoint_id, asyncio.Semaphore(self._per_endpoint))
        timeout_s = self._settings.webhook_timeout_s
        async with gate:
            deadline = self._deadlines.get(claimed.token, 0.0)
            if time.monotonic() + timeout_s + _LEASE_MARGIN_S >= deadline:
                # The lease may run out during this attempt (renewals failing): another dispatcher may take the
                # row over, so sending now could send it twice. Leave it; it is re-claimed after the lease.
                log.warning("webhook delivery %s: lease too short to send; left for re-claim", claimed.delivery_id)
                self._forget(claimed)
                return None
            # gate.requested gains its review_url here, at delivery: never in a history, a row or a log line.
            envelope = with_review_url(self._settings, claimed.prepared.envelope)
            body, headers = prepare_request(envelope, secrets=claimed.prepared.secrets, attempt=claimed.inp.attempt)
            assert self._http is not None
            return await post_event(
                self._http,
                claimed.prepared.url,
                body,
                headers,
                timeout_s=timeout_s,
                allow_private=self._settings.webhook_allow_private,
            )

    async def _record_loop(self) -> None:
        while True:
            if not self._results:
                if self._closing:
                    return
                await self._record_wake.wait()
                self._record_wake.clear()
                continue
            results, self._results = self._results, []
            try:
                verdicts = await self._in_db_thread(self._record, results)
            except Exception:
                if self._closing:
                    log.warning("could not record %d webhook attempts; they are re-sent after the lease", len(results))
                    for claimed, _ in results:
                        self._forget(claimed)
                    return
                log.exception("recording webhook attempts failed; trying again shortly")
                self._results[:0] = results  # kept in order, still under their claims (renewed meanwhile)
                await asyncio.sleep(DB_RETRY_S)
                continue
            for claimed, _ in results:
                self._forget(claimed)
            await self._announce(verdicts)
            self._wake.set()  # slots are free again, and a settled batch may have made new deliveries

    async def _renew_loop(self) -> None:
        every = self._lease_s / 4
        while True:
            await asyncio.sleep(every)
            tokens = list(self._deadlines)
            if not tokens:
                continue
            started = time.monotonic()
            try:
                await self._in_db_thread(self._renew, tokens)
            except Exception:
                log.warning("renewing webhook claims failed; trying again in %.0f s", every)
                continue
            for token in tokens:
                if token in self._deadlines:
                    self._deadlines[token] = started + self._lease_s

    async def _announce(self, verdicts: Sequence[AttemptVerdict]) -> None:
        """Publish (AMQP) the ``webhook.endpoint_disabled`` events these verdicts recorded."""
        disabled = [v.disabled for v in verdicts if v.disabled is not None]
        if not disabled:
            return
        self._wake.set()  # their webhook deliveries are in the outbox already
        if not self._settings.amqp_url or self._client is None:
            return
        for envelope in disabled:
            try:
                await start_amqp_publish(self._client, task_queue=self._task_queue, envelope=envelope)
            except Exception:
                log.exception("could not start the AMQP publication of %s", envelope.id)


# Room left in a lease beyond one attempt's timeout before it is sent (renewal runs every quarter lease).
_LEASE_MARGIN_S: Final = 1.0
