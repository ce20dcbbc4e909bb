"""The outbox: claiming due deliveries in batches, and their leases (database side).

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
- :func:`~quantapilot.webhooks.outbox_record.record_results` (the recording side, in its own module) takes the
  batch back from its claims with one fenced ``UPDATE ... RETURNING`` and records the answers.

The statements are built once, at import, with every value (the time, the token, the lease, the limit, the ids) a
bound parameter given at execution: a claim costs no statement construction and no cache-key computation, and no
value of one call can reach another (a lease computed once would let every later claim expire at once).

Every function takes the session keyword-only and only flushes: the caller owns the transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, Row, Select, Table, bindparam, func, or_, select, update
from sqlmodel import Session, col

from quantapilot.db import utcnow
from quantapilot.events.envelope import aware
from quantapilot.events.table import RunEvent
from quantapilot.secretbox import KeyRing
from quantapilot.webhooks.contracts import DeliverAttemptInput
from quantapilot.webhooks.delivery import (
    AttemptVerdict,
    PreparedAttempt,
    event_envelope,
    prepare_attempt,
    throttle_wait,
)
from quantapilot.webhooks.rotation import active_secrets_of
from quantapilot.webhooks.tables import (
    DELIVERIES_TABLE,
    ENDPOINTS_TABLE,
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


def _due(now: ColumnElement[Any]) -> list[ColumnElement[bool]]:
    d = DELIVERIES_TABLE.c
    return [
        d.status == DeliveryStatus.PENDING.value,
        d.next_attempt_at.is_not(None),
        d.next_attempt_at <= now,
        or_(d.claimed_until.is_(None), d.claimed_until < now),
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


def _chosen(failing: bool) -> tuple[Select[Any], Select[Any]]:
    """The due rows a claim may take (healthy or failing endpoints'), as a probe and as the rows to claim.

    Bound at execution: ``now``, ``exclude`` (endpoint ids, possibly none) and ``limit``.
    """
    d = DELIVERIES_TABLE.c
    since = ENDPOINTS_TABLE.c.failing_since
    probe = (
        select(d.id)
        .join(ENDPOINTS_TABLE, ENDPOINTS_TABLE.c.id == d.endpoint_id)
        .where(*_due(bindparam("now")))
        .where(since.is_not(None) if failing else since.is_(None))
        .where(d.endpoint_id.not_in(bindparam("exclude", expanding=True)))
    )
    limit = bindparam("limit", type_=Integer)
    chosen: Select[Any]
    if failing:
        # One delivery per failing endpoint at a time: a dead endpoint's backlog is retried one by one, each
        # delivery on its own schedule, never as a burst.
        # Window functions cannot be locked FOR UPDATE; the UPDATE below re-checks the claim on each row it
        # locks, so two dispatchers still never both claim one.
        rank = func.row_number().over(partition_by=d.endpoint_id, order_by=(d.next_attempt_at, d.id)).label("rank")
        ranked = probe.add_columns(rank).subquery()
        chosen = select(ranked.c.id).where(ranked.c.rank == 1).limit(limit)
    else:
        # SKIP LOCKED: rows another dispatcher is claiming right now are left to it (a no-op on SQLite, whose
        # writes are serialised anyway).
        chosen = probe.order_by(d.next_attempt_at).limit(limit).with_for_update(skip_locked=True, of=DELIVERIES_TABLE)
    return probe.limit(1), chosen


def _claim_statement(chosen: Select[Any]) -> Any:
    """Claim the chosen rows under ``token`` until ``until``, handing back what the send needs (RETURNING)."""
    # Chosen once, as a materialised CTE: as a plain ``IN (subquery)`` PostgreSQL may plan a nested-loop semi-join
    # that rescans the subquery for every row, each rescan skipping the rows this statement has just claimed (SKIP
    # LOCKED), so LIMIT bounded nothing and one claim took every due row (tests/webhook_e2e/test_outbox_claims.py).
    picked = chosen.cte("picked").prefix_with("MATERIALIZED", dialect="postgresql")
    # The claim itself also hands back what the send needs from the delivery row (RETURNING): no ORM load of
    # the rows claimed. The outer WHERE re-checks that each row is still due and unclaimed.
    return (
        update(DELIVERIES_TABLE)
        .where(DELIVERIES_TABLE.c.id.in_(select(picked.c.id)), *_due(bindparam("now")))
        .values(claim_token=bindparam("token"), claimed_until=bindparam("until"))
        .returning(*_CLAIM_COLUMNS)
    )


# failing -> (probe, claim): built once for each kind of claim.
_CLAIMS: dict[bool, tuple[Select[Any], Any]] = {}
for _failing in (False, True):
    _probe, _rows = _chosen(_failing)
    _CLAIMS[_failing] = (_probe, _claim_statement(_rows))

# What a claimed batch's sends need: its endpoints (ORM rows, as prepare_attempt's checks read them), its events.
_BATCH_ENDPOINTS = select(WebhookEndpoint).where(col(WebhookEndpoint.id).in_(bindparam("ids", expanding=True)))
_BATCH_EVENTS = select(*_EVENTS.c).where(_EVENTS.c.id.in_(bindparam("ids", expanding=True)))
# Frees claims of this token (rows left due for the next claim).
_UNCLAIM = (
    update(DELIVERIES_TABLE)
    .where(
        DELIVERIES_TABLE.c.id.in_(bindparam("ids", expanding=True)),
        DELIVERIES_TABLE.c.claim_token == bindparam("token"),
    )
    .values(claim_token=None, claimed_until=None)
)
_RENEW = (
    update(DELIVERIES_TABLE)
    .where(DELIVERIES_TABLE.c.claim_token.in_(bindparam("tokens", expanding=True)))
    .values(claimed_until=bindparam("until"))
)
# Executemany: one (id, token) pair each.
_RELEASE = (
    update(DELIVERIES_TABLE)
    .where(DELIVERIES_TABLE.c.id == bindparam("b_id"), DELIVERIES_TABLE.c.claim_token == bindparam("b_token"))
    .values(claim_token=None, claimed_until=None)
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
        token: The claim token written on the claimed rows (it fences
            :func:`~quantapilot.webhooks.outbox_record.record_results`).
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
    probe, claim = _CLAIMS[failing]
    bound = {"now": now, "exclude": list(exclude_endpoints)}
    # A plain read first: an idle outbox costs one indexed SELECT per poll, no write lock.
    if session.execute(probe, bound).first() is None:
        return ClaimBatch()
    claimed = session.execute(
        claim, {**bound, "limit": limit, "token": token, "until": now + timedelta(seconds=lease_s)}
    ).all()
    batch = ClaimBatch()
    if not claimed:
        return batch
    rows = sorted(claimed, key=lambda r: (aware_or_min(r.next_attempt_at), r.id))
    # What the sends need, one query each for the whole batch: the endpoints, their signing secrets, the events.
    endpoint_ids = sorted({r.endpoint_id for r in rows})
    endpoints = {e.id: e for e in session.scalars(_BATCH_ENDPOINTS, {"ids": endpoint_ids})}
    at = utcnow()  # the clock prepare_attempt reads for the throttle and the secrets' expiry
    signing = active_secrets_of(endpoint_ids, session=session, keyring=keyring, now=at)
    event_ids = sorted({r.event_id for r in rows if r.payload is None})
    events = {e.id: e for e in session.execute(_BATCH_EVENTS, {"ids": event_ids})} if event_ids else {}
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
        session.execute(_UNCLAIM, {"ids": unclaim, "token": token})
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


def renew_claims(*, session: Session, tokens: Sequence[str], until: datetime) -> int:
    """Extend the lease of every row still held under ``tokens``.

    Returns:
        How many rows were renewed.
    """
    if not tokens:
        return 0
    done = session.execute(_RENEW, {"tokens": list(tokens), "until": until})
    return int(done.rowcount or 0)  # type: ignore[attr-defined]


def release_claims(*, session: Session, claims: Sequence[tuple[str, str]]) -> None:
    """Free claims that were never sent or recorded (a dispatcher stopping), so the rows are due again now.

    Args:
        session: Database session.
        claims: ``(delivery_id, token)`` pairs; a row claimed under another token since is left alone.
    """
    if claims:
        session.execute(_RELEASE, [{"b_id": delivery_id, "b_token": token} for delivery_id, token in claims])
