"""The outbox: claiming due deliveries in batches, recording their attempts in batches (database side).

A delivery in the outbox is a ``pending`` row with ``next_attempt_at`` set (fan-out and redelivery put it
there, owned by :func:`~quantapilot.webhooks.contracts.outbox_owner`). A dispatcher
(:mod:`quantapilot.webhooks.dispatcher`) claims the due rows whose claim is free or has run out: one statement
writes a fresh ``claim_token`` and a lease (``claimed_until``) on them, and on PostgreSQL it locks them with
``FOR UPDATE SKIP LOCKED``, so two dispatchers never claim the same row (on SQLite writes are serialised).

What an attempt decides is :mod:`quantapilot.webhooks.delivery`, unchanged: :func:`claim_due` loads each claimed
row with :func:`~quantapilot.webhooks.delivery.prepare_attempt` (which may settle it without sending: disabled
endpoint, throttled endpoint, missing secret) and :func:`record_results` records each answer with
:func:`~quantapilot.webhooks.delivery.record_outcome`, then moves ``next_attempt_at`` to the verdict's delay (a
retry, a throttle) or clears it (settled) and frees the claim. Recording is fenced by the claim token: a
dispatcher whose lease ran out (another one has taken the row over) records nothing.

Every function takes the session keyword-only and only flushes: the caller owns the transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, func, or_, select, update
from sqlmodel import Session, col

from quantapilot.events.envelope import aware
from quantapilot.secretbox import KeyRing, SecretDecryptError
from quantapilot.webhooks.contracts import DeliverAttemptInput
from quantapilot.webhooks.delivery import AttemptVerdict, PreparedAttempt, prepare_attempt, record_outcome
from quantapilot.webhooks.schedule import next_delay
from quantapilot.webhooks.tables import (
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


def _attempt_input(row: WebhookDelivery, *, retry_scale: float, timeout_s: float) -> DeliverAttemptInput:
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
    claimed_ids = list(
        session.scalars(
            update(WebhookDelivery)
            .where(col(WebhookDelivery.id).in_(select(picked.c.id)), *_due(now))
            .values(claim_token=token, claimed_until=now + timedelta(seconds=lease_s))
            .returning(col(WebhookDelivery.id))
            .execution_options(synchronize_session=False)
        )
    )
    batch = ClaimBatch()
    if not claimed_ids:
        return batch
    rows = session.scalars(
        select(WebhookDelivery)
        .where(col(WebhookDelivery.id).in_(claimed_ids))
        .execution_options(populate_existing=True)
    ).all()
    probing: set[str] = set()
    for row in sorted(rows, key=lambda r: (aware_or_min(r.next_attempt_at), r.id)):
        endpoint = session.get(WebhookEndpoint, row.endpoint_id)
        failing = endpoint is not None and endpoint.enabled and endpoint.failing_since is not None
        if failing and row.endpoint_id in probing:
            # A failing endpoint is throttled as a whole: one attempt at a time probes it; the rest stay due.
            row.claim_token = None
            row.claimed_until = None
            session.add(row)
            continue
        if failing:
            probing.add(row.endpoint_id)
        inp = _attempt_input(row, retry_scale=retry_scale, timeout_s=timeout_s)
        try:
            prepared = prepare_attempt(session, inp, keyring=keyring)
        except SecretDecryptError:
            # No configured key opens a secret: wait on the schedule, so deliveries resume once it is configured.
            log.warning("webhook delivery %s: a signing secret cannot be decrypted; retrying later", row.id)
            delay = (next_delay(inp.schedule_index) or 3600.0) * retry_scale
            row.next_attempt_at = now + timedelta(seconds=delay)
            row.claim_token = None
            row.claimed_until = None
            session.add(row)
            continue
        if isinstance(prepared, AttemptVerdict):
            apply_verdict(row, prepared, now=now)
            session.add(row)
            batch.settled.append(prepared)
            continue
        batch.sends.append(Claimed(row.id, row.endpoint_id, token, inp, prepared, failing=failing))
    session.flush()
    return batch


def record_results(
    *, session: Session, results: Sequence[tuple[Claimed, DeliveryResult]], now: datetime
) -> list[AttemptVerdict]:
    """Record the answers of sent attempts (one transaction for the batch); fenced by each claim's token.

    Returns:
        The verdicts of the attempts recorded (a fenced one is left out: its new owner decides).
    """
    verdicts: list[AttemptVerdict] = []
    for claimed, result in results:
        row = session.get(WebhookDelivery, claimed.delivery_id, with_for_update=True, populate_existing=True)
        if row is None or row.claim_token != claimed.token:
            # The lease ran out and another dispatcher holds the row, or a redelivery reset it: not ours to record.
            log.warning("webhook delivery %s: claim lost before recording; left to its new owner", claimed.delivery_id)
            continue
        verdict = record_outcome(session, claimed.inp, result)
        apply_verdict(row, verdict, now=now)
        session.add(row)
        verdicts.append(verdict)
    session.flush()
    return verdicts


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
