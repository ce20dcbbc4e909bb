"""The outbox: claiming due deliveries in batches, recording their attempts in batches (database side).

A delivery in the outbox is a ``pending`` row with ``next_attempt_at`` set (fan-out and redelivery put it
there, owned by :func:`~quantapilot.webhooks.contracts.outbox_owner`). A dispatcher
(:mod:`quantapilot.webhooks.dispatcher`) claims the due rows whose claim is free or has run out: one statement
writes a fresh ``claim_token`` and a lease (``claimed_until``) on them, and on PostgreSQL it locks them with
``FOR UPDATE SKIP LOCKED``, so two dispatchers never claim the same row (on SQLite writes are serialised).

What an attempt decides is :mod:`quantapilot.webhooks.delivery`, unchanged, and claiming and recording are
set-based around it so a batch costs a few statements, not a few per delivery:

- :func:`claim_due` claims with one ``UPDATE ... RETURNING`` that hands back what the send needs of each row, then
  loads the batch's endpoints, signing secrets and events with one query each. A delivery in the common case
  (enabled, unthrottled endpoint with secrets, event present: exactly when
  :func:`~quantapilot.webhooks.delivery.prepare_attempt` would prepare it) is prepared from those; any other goes
  through ``prepare_attempt`` itself (which may settle it without sending: disabled endpoint, throttled endpoint,
  missing secret).
- :func:`record_results` takes the batch back from its claims with one fenced ``UPDATE ... RETURNING`` (a
  dispatcher whose lease ran out, another one having taken the row over, records nothing), records the successes
  on healthy endpoints with one executemany UPDATE and one executemany upsert of their attempt rows (what
  :func:`~quantapilot.webhooks.delivery.record_outcome`'s ``delivered`` branch writes), and hands every other
  answer to ``record_outcome`` one by one, in order; then it moves ``next_attempt_at`` to the verdict's delay (a
  retry, a throttle) or clears it (settled).

Every function takes the session keyword-only and only flushes: the caller owns the transaction.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, Table, bindparam, func, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col

from quantapilot.db import utcnow
from quantapilot.events.envelope import aware
from quantapilot.events.table import RunEvent
from quantapilot.secretbox import KeyRing
from quantapilot.webhooks.contracts import DeliverAttemptInput, DeliverAttemptResult
from quantapilot.webhooks.delivery import (
    AttemptVerdict,
    PreparedAttempt,
    event_envelope,
    prepare_attempt,
    record_outcome,
    throttle_wait,
)
from quantapilot.webhooks.rotation import active_secrets_of
from quantapilot.webhooks.tables import (
    ATTEMPTS_TABLE,
    DELIVERIES_TABLE,
    ENDPOINTS_TABLE,
    DeliveryOutcome,
    DeliveryResult,
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
)

log = logging.getLogger("quantapilot.webhooks")


@dataclass(frozen=True)
class Claimed:
    """A claimed delivery ready to send: the attempt's input, what to send, and the claim that holds it."""

    delivery_id: str
    endpoint_id: str
    token: str
    inp: DeliverAttemptInput
    prepared: PreparedAttempt
    # The endpoint is failing (no success since its last failure): it gets one attempt in flight at a time.
    failing: bool = False


@dataclass
class ClaimBatch:
    """What one claim found: deliveries to send, and verdicts of those settled without sending."""

    sends: list[Claimed] = field(default_factory=list)
    settled: list[AttemptVerdict] = field(default_factory=list)


def _due(now: datetime) -> list[ColumnElement[bool]]:
    return [
        col(WebhookDelivery.status) == DeliveryStatus.PENDING.value,
        col(WebhookDelivery.next_attempt_at).is_not(None),
        col(WebhookDelivery.next_attempt_at) <= now,
        or_(col(WebhookDelivery.claimed_until).is_(None), col(WebhookDelivery.claimed_until) < now),
    ]


_EVENTS: Table = RunEvent.__table__  # type: ignore[attr-defined]

# What the claim hands back of each row (RETURNING): enough to build the attempt and find what it sends.
_CLAIM_COLUMNS = (
    DELIVERIES_TABLE.c.id,
    DELIVERIES_TABLE.c.endpoint_id,
    DELIVERIES_TABLE.c.event_id,
    DELIVERIES_TABLE.c.payload,
    DELIVERIES_TABLE.c.attempts,
    DELIVERIES_TABLE.c.schedule_base,
    DELIVERIES_TABLE.c.workflow_id,
    DELIVERIES_TABLE.c.next_attempt_at,
)


def _attempt_input(row: Row[Any], *, retry_scale: float, timeout_s: float) -> DeliverAttemptInput:
    attempt = row.attempts + 1
    return DeliverAttemptInput(
        delivery_id=row.id,
        attempt=attempt,
        schedule_index=max(1, attempt - row.schedule_base),
        workflow_id=row.workflow_id or "",
        retry_scale=retry_scale,
        timeout_s=timeout_s,
    )


def aware_or_min(value: datetime | None) -> datetime:
    """A stored time made comparable (SQLite hands back naive UTC); None sorts first."""
    return aware(value) if value is not None else datetime.min.replace(tzinfo=UTC)


def apply_verdict(row: WebhookDelivery, verdict: AttemptVerdict, *, now: datetime) -> None:
    """Move a claimed row's place in the outbox after a verdict and free its claim (flush is the caller's)."""
    result = verdict.result
    if result.done:
        row.next_attempt_at = None
    else:
        row.next_attempt_at = now + timedelta(seconds=result.delay_s or 0.0)
    row.claim_token = None
    row.claimed_until = None


def claim_due(
    *,
    session: Session,
    token: str,
    now: datetime,
    lease_s: float,
    limit: int,
    keyring: KeyRing,
    retry_scale: float,
    timeout_s: float,
    exclude_endpoints: Sequence[str] = (),
    failing: bool = False,
) -> ClaimBatch:
    """Claim up to ``limit`` due deliveries under ``token`` and prepare their attempts.

    Args:
        session: Database session (commit before sending: the claim must be durable first).
        token: The claim token written on the claimed rows (fences :func:`record_results`).
        now: The current time.
        lease_s: How long the claim holds unless renewed (:func:`renew_claims`).
        limit: At most this many rows.
        keyring: Opens the signing secrets.
        retry_scale: The retry schedule's scale (settings).
        timeout_s: The HTTP timeout of one attempt.
        exclude_endpoints: Endpoints this dispatcher already has enough in flight for (not claimed now).
        failing: Claim the deliveries of failing endpoints (``failing_since`` set) instead of healthy ones:
            claimed separately, so the retries of dead endpoints never make a fresh event wait.

    Returns:
        The deliveries to send and the verdicts of those settled without sending.
    """
    # A plain read first: an idle outbox costs one indexed SELECT per poll, no write lock.
    since = col(WebhookEndpoint.failing_since)
    probe = (
        select(col(WebhookDelivery.id))
        .join(WebhookEndpoint, col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id))
        .where(*_due(now))
    )
    probe = probe.where(since.is_not(None) if failing else since.is_(None))
    if exclude_endpoints:
        probe = probe.where(col(WebhookDelivery.endpoint_id).not_in(list(exclude_endpoints)))
    if session.scalars(probe.limit(1)).first() is None:
        return ClaimBatch()
    chosen: Select[Any]
    if failing:
        # One delivery per failing endpoint at a time: a dead endpoint's backlog is retried one by one, each
        # delivery on its own schedule, never as a burst.
        # Window functions cannot be locked FOR UPDATE; the UPDATE below re-checks the claim on each row it
        # locks, so two dispatchers still never both claim one.
        rank = (
            func.row_number()
            .over(
                partition_by=col(WebhookDelivery.endpoint_id),
                order_by=(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id)),
            )
            .label("rank")
        )
        ranked = probe.add_columns(rank).subquery()
        chosen = select(ranked.c.id).where(ranked.c.rank == 1).limit(limit)
    else:
        # SKIP LOCKED: rows another dispatcher is claiming right now are left to it (a no-op on SQLite, whose
        # writes are serialised anyway).
        chosen = (
            probe.order_by(col(WebhookDelivery.next_attempt_at))
            .limit(limit)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        )
    # Chosen once, as a materialised CTE: as a plain ``IN (subquery)`` PostgreSQL may plan a nested-loop semi-join
    # that rescans the subquery for every row, each rescan skipping the rows this statement has just claimed (SKIP
    # LOCKED), so LIMIT bounded nothing and one claim took every due row (tests/webhook_e2e/test_outbox_claims.py).
    picked = chosen.cte("picked").prefix_with("MATERIALIZED", dialect="postgresql")
    # The claim itself also hands back what the send needs from the delivery row (RETURNING): no ORM load of
    # the rows claimed.
    claimed = session.execute(
        update(DELIVERIES_TABLE)
        .where(DELIVERIES_TABLE.c.id.in_(select(picked.c.id)), *_due(now))
        .values(claim_token=token, claimed_until=now + timedelta(seconds=lease_s))
        .returning(*_CLAIM_COLUMNS)
    ).all()
    batch = ClaimBatch()
    if not claimed:
        return batch
    rows = sorted(claimed, key=lambda r: (aware_or_min(r.next_attempt_at), r.id))
    # What the sends need, one query each for the whole batch: the endpoints, their signing secrets, the events.
    endpoint_ids = sorted({r.endpoint_id for r in rows})
    endpoints = {
        e.id: e for e in session.scalars(select(WebhookEndpoint).where(col(WebhookEndpoint.id).in_(endpoint_ids)))
    }
    at = utcnow()  # the clock prepare_attempt reads for the throttle and the secrets' expiry
    signing = active_secrets_of(endpoint_ids, session=session, keyring=keyring, now=at)
    event_ids = sorted({r.event_id for r in rows if r.payload is None})
    events = (
        {e.id: e for e in session.execute(select(*_EVENTS.c).where(_EVENTS.c.id.in_(event_ids)))} if event_ids else {}
    )
    probing: set[str] = set()
    unclaim: list[str] = []
    for row in rows:
        endpoint = endpoints.get(row.endpoint_id)
        failing = endpoint is not None and endpoint.enabled and endpoint.failing_since is not None
        if failing and row.endpoint_id in probing:
            # A failing endpoint is throttled as a whole: one attempt at a time probes it; the rest stay due.
            unclaim.append(row.id)
            continue
        if failing:
            probing.add(row.endpoint_id)
        inp = _attempt_input(row, retry_scale=retry_scale, timeout_s=timeout_s)
        # The common case, decided here without the per-row ORM path, is exactly the one in which
        # prepare_attempt returns a PreparedAttempt: the row is owned (inp.workflow_id is the row's own
        # workflow_id) and pending (the claim's WHERE), its endpoint is enabled and not throttled at `at`, it has
        # signing secrets that all decrypt (active_secrets_of leaves an endpoint out otherwise) and its event
        # exists. Anything else goes through prepare_attempt itself, so every other verdict is its decision.
        secrets = signing.get(row.endpoint_id)
        envelope = event_envelope(row.payload, events.get(row.event_id))
        if (
            endpoint is not None
            and endpoint.enabled
            and throttle_wait(endpoint, now=at) is None
            and secrets
            and envelope is not None
        ):
            prepared = PreparedAttempt(url=endpoint.url, secrets=secrets, envelope=envelope)
            batch.sends.append(Claimed(row.id, row.endpoint_id, token, inp, prepared, failing=failing))
            continue
        settled = _prepare_one(session, inp, keyring=keyring, now=now)
        if isinstance(settled, PreparedAttempt):
            batch.sends.append(Claimed(row.id, row.endpoint_id, token, inp, settled, failing=failing))
        else:
            batch.settled.append(settled)
    if unclaim:
        session.execute(
            update(DELIVERIES_TABLE)
            .where(DELIVERIES_TABLE.c.id.in_(unclaim), DELIVERIES_TABLE.c.claim_token == token)
            .values(claim_token=None, claimed_until=None)
        )
    session.flush()
    return batch


def _prepare_one(
    session: Session, inp: DeliverAttemptInput, *, keyring: KeyRing, now: datetime
) -> PreparedAttempt | AttemptVerdict:
    """Prepare one claimed delivery through the state machine (the uncommon cases of :func:`claim_due`).

    Returns:
        What to send; or the verdict of a delivery settled without sending (its claim freed): disabled or
        throttled endpoint, a signing secret no configured key opens (failed, endpoint disabled), no event.
    """
    prepared = prepare_attempt(session, inp, keyring=keyring)
    if isinstance(prepared, AttemptVerdict):
        row = session.get(WebhookDelivery, inp.delivery_id)
        if row is not None:
            apply_verdict(row, prepared, now=now)
            session.add(row)
    return prepared


def record_results(
    *, session: Session, results: Sequence[tuple[Claimed, DeliveryResult]], now: datetime
) -> list[AttemptVerdict]:
    """Record the answers of sent attempts (one transaction for the batch); fenced by each claim's token.

    The first statement takes the batch back from its claims: it frees the claim of every row still held under
    the token it was sent under and returns those rows, so a row another dispatcher has taken over meanwhile (or a
    redelivery reset) is left out before anything is written, on PostgreSQL (the rows stay locked until the
    commit) and on SQLite (that UPDATE opens the write transaction, so nothing changes under what follows).
    Successes on healthy endpoints are then recorded with two set-based statements
    (:func:`_record_deliveries`); every other answer goes through
    :func:`~quantapilot.webhooks.delivery.record_outcome` one by one.

    Returns:
        The verdicts of the attempts recorded, in the order of ``results`` (a fenced one is left out: its new
        owner decides).
    """
    if not results:
        return []
    # A delivery answered twice in one batch (re-claimed under a new token while an attempt under the old one
    # was still out) cannot be fenced by one statement for both: those go row by row, as before.
    times = Counter(claimed.delivery_id for claimed, _ in results)
    pairs = sorted({(c.delivery_id, c.token) for c, _ in results if times[c.delivery_id] == 1})
    held = (
        {
            row.id: row
            for row in session.execute(
                update(DELIVERIES_TABLE)
                .where(tuple_(DELIVERIES_TABLE.c.id, DELIVERIES_TABLE.c.claim_token).in_(pairs))
                .values(claim_token=None, claimed_until=None)
                .returning(*_RECORD_COLUMNS)
            )
        }
        if pairs
        else {}
    )
    ours = [(c, r) for c, r in results if c.delivery_id in held]
    for claimed, _ in results:
        if times[claimed.delivery_id] == 1 and claimed.delivery_id not in held:
            _claim_lost(claimed)
    fast_ids = _fast_path(
        session, ours, held, also_slow={c.endpoint_id for c, _ in results if times[c.delivery_id] > 1}
    )
    verdicts: list[tuple[int, AttemptVerdict]] = []
    if fast_ids:
        fast = [(c, r) for c, r in ours if c.delivery_id in fast_ids]
        recorded = _record_deliveries(session, fast, held)
        verdicts += [(i, recorded[c.delivery_id]) for i, (c, _) in enumerate(results) if c.delivery_id in fast_ids]
    # Every other answer, in the batch's order, through the state machine (each endpoint either all here or
    # all in the bulk above: see _fast_path).
    for index, (claimed, result) in enumerate(results):
        if claimed.delivery_id in fast_ids:
            continue
        if times[claimed.delivery_id] == 1:
            if claimed.delivery_id not in held:
                continue
            row = session.get(WebhookDelivery, claimed.delivery_id)
        else:
            row = session.get(WebhookDelivery, claimed.delivery_id, with_for_update=True, populate_existing=True)
            if row is None or row.claim_token != claimed.token:
                _claim_lost(claimed)
                continue
        verdict = record_outcome(session, claimed.inp, result)
        if row is not None:
            apply_verdict(row, verdict, now=now)
            session.add(row)
        verdicts.append((index, verdict))
    session.flush()
    return [verdict for _, verdict in sorted(verdicts, key=lambda v: v[0])]


def _claim_lost(claimed: Claimed) -> None:
    # The lease ran out and another dispatcher holds the row, or a redelivery reset it: not ours to record.
    log.warning("webhook delivery %s: claim lost before recording; left to its new owner", claimed.delivery_id)


# What the fencing UPDATE hands back of each row: what record_outcome would check before recording.
_RECORD_COLUMNS = (
    DELIVERIES_TABLE.c.id,
    DELIVERIES_TABLE.c.endpoint_id,
    DELIVERIES_TABLE.c.status,
    DELIVERIES_TABLE.c.workflow_id,
    DELIVERIES_TABLE.c.attempts,
    DELIVERIES_TABLE.c.claim_token,
)


def _fast_path(
    session: Session,
    ours: Sequence[tuple[Claimed, DeliveryResult]],
    held: dict[str, Row[Any]],
    *,
    also_slow: set[str],
) -> set[str]:
    """The deliveries whose answers :func:`_record_deliveries` may record in bulk.

    A delivery qualifies when :func:`~quantapilot.webhooks.delivery.record_outcome` would take its
    ``delivered`` branch and that branch changes nothing but the delivery and its attempt row:

    - the answer is ``delivered`` (:func:`~quantapilot.webhooks.delivery.classify_answer` said 2xx);
    - the row is still owned by the attempt's workflow id and pending (``record_outcome``'s own checks);
    - its endpoint is healthy (``failing_since`` is None), so ``mark_delivered``'s clearing of the failing
      streak is a no-op (the ORM writes nothing for an unchanged value either);
    - no answer of this batch for the same endpoint goes through ``record_outcome`` (``also_slow``: endpoints
      of deliveries answered twice): ``record_outcome`` handles a batch in order, and a retry before a success
      on one endpoint (or after it) changes that endpoint's state in between; such an endpoint's answers all go
      through ``record_outcome``, in order, so the bulk never reorders what one endpoint sees.
    """
    slow_endpoints = set(also_slow)
    candidates: list[tuple[Claimed, Row[Any]]] = []
    for claimed, result in ours:
        row = held[claimed.delivery_id]
        owned = row.workflow_id is None or row.workflow_id == claimed.inp.workflow_id
        if result.outcome is DeliveryOutcome.DELIVERED and owned and row.status == DeliveryStatus.PENDING.value:
            candidates.append((claimed, row))
        else:
            slow_endpoints.add(row.endpoint_id)
    if not candidates:
        return set()
    endpoint_ids = sorted({row.endpoint_id for _, row in candidates} - slow_endpoints)
    healthy = (
        set(
            session.scalars(
                select(ENDPOINTS_TABLE.c.id).where(
                    ENDPOINTS_TABLE.c.id.in_(endpoint_ids), ENDPOINTS_TABLE.c.failing_since.is_(None)
                )
            )
        )
        if endpoint_ids
        else set()
    )
    return {row.id for _, row in candidates if row.endpoint_id in healthy and row.endpoint_id not in slow_endpoints}


def _record_deliveries(
    session: Session, fast: Sequence[tuple[Claimed, DeliveryResult]], held: dict[str, Row[Any]]
) -> dict[str, AttemptVerdict]:
    """Record successes chosen by :func:`_fast_path`: what ``record_outcome`` writes for them, set-based.

    ``record_outcome``'s ``delivered`` branch is ``record_attempt`` (upsert the ``(delivery, attempt)`` row; copy
    the answer onto the delivery; ``attempts`` never goes down) and ``mark_delivered`` (status ``delivered``,
    ``delivered_at``, no ``next_retry_at``); :func:`apply_verdict` then takes a settled row out of the outbox
    (``next_attempt_at`` None; the claim was freed by the fencing UPDATE). The same columns get the same values
    here, in one executemany UPDATE and one executemany upsert.
    """
    at = utcnow()
    session.execute(
        update(DELIVERIES_TABLE)
        .where(DELIVERIES_TABLE.c.id == bindparam("b_id"))
        .values(
            status=DeliveryStatus.DELIVERED.value,
            delivered_at=at,
            next_retry_at=None,
            next_attempt_at=None,
            attempts=bindparam("b_attempts"),
            last_status_code=bindparam("b_status_code"),
            last_latency_ms=bindparam("b_latency_ms"),
            last_error=bindparam("b_error"),
        ),
        [
            {
                "b_id": claimed.delivery_id,
                "b_attempts": max(held[claimed.delivery_id].attempts, claimed.inp.attempt),
                "b_status_code": result.status_code,
                "b_latency_ms": result.latency_ms,
                "b_error": result.error,
            }
            for claimed, result in fast
        ],
    )
    insert_fn = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    upsert = insert_fn(ATTEMPTS_TABLE)
    session.execute(
        upsert.on_conflict_do_update(
            index_elements=["delivery_id", "attempt"],
            set_={
                "outcome": upsert.excluded.outcome,
                "status_code": upsert.excluded.status_code,
                "latency_ms": upsert.excluded.latency_ms,
                "error": upsert.excluded.error,
                "at": upsert.excluded.at,
            },
        ),
        [
            {
                "delivery_id": claimed.delivery_id,
                "attempt": claimed.inp.attempt,
                "outcome": result.outcome.value,
                "status_code": result.status_code,
                "latency_ms": result.latency_ms,
                "error": result.error,
                "at": at,
            }
            for claimed, result in fast
        ],
    )
    delivered = AttemptVerdict(DeliverAttemptResult(done=True, outcome=DeliveryStatus.DELIVERED.value))
    return {claimed.delivery_id: delivered for claimed, _ in fast}


def renew_claims(*, session: Session, tokens: Sequence[str], until: datetime) -> int:
    """Extend the lease of every row still held under ``tokens``.

    Returns:
        How many rows were renewed.
    """
    if not tokens:
        return 0
    done = session.execute(
        update(WebhookDelivery)
        .where(col(WebhookDelivery.claim_token).in_(list(tokens)))
        .values(claimed_until=until)
        .execution_options(synchronize_session=False)
    )
    return int(done.rowcount or 0)  # type: ignore[attr-defined]


def release_claims(*, session: Session, claims: Sequence[tuple[str, str]]) -> None:
    """Free claims that were never sent or recorded (a dispatcher stopping), so the rows are due again now.

    Args:
        session: Database session.
        claims: ``(delivery_id, token)`` pairs; a row claimed under another token since is left alone.
    """
    for delivery_id, token in claims:
        session.execute(
            update(WebhookDelivery)
            .where(col(WebhookDelivery.id) == delivery_id, col(WebhookDelivery.claim_token) == token)
            .values(claim_token=None, claimed_until=None)
            .execution_options(synchronize_session=False)
        )
