"""The outbox's recording side: the answers of sent attempts written back in batches, fenced by their claims.

:mod:`quantapilot.webhooks.outbox` claims due deliveries and hands them to a dispatcher; this module records what
their attempts answered. :func:`record_results` takes the batch back from its claims with one fenced
``UPDATE ... RETURNING`` (a dispatcher whose lease ran out, another one having taken the row over, records
nothing), records the successes on healthy endpoints with one executemany UPDATE and one executemany upsert of
their attempt rows (what :func:`~quantapilot.webhooks.delivery.record_outcome`'s ``delivered`` branch writes), and
hands every other answer to ``record_outcome`` one by one, in order; then it moves ``next_attempt_at`` to the
verdict's delay (a retry, a throttle) or clears it (settled).

The statements are built once, at import, with every value a bound parameter given at execution (the tokens, the
ids, the times): a batch then costs no statement construction and no cache-key computation, and no value of one
call can leak into the next.

Every function takes the session keyword-only and only flushes: the caller owns the transaction.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from quantapilot.db import utcnow
from quantapilot.webhooks.contracts import DeliverAttemptResult
from quantapilot.webhooks.delivery import AttemptVerdict, record_outcome
from quantapilot.webhooks.outbox import Claimed, apply_verdict
from quantapilot.webhooks.tables import (
    ATTEMPTS_TABLE,
    DELIVERIES_TABLE,
    ENDPOINTS_TABLE,
    DeliveryOutcome,
    DeliveryResult,
    DeliveryStatus,
    WebhookDelivery,
)

log = logging.getLogger("quantapilot.webhooks")

# What the fencing UPDATE hands back of each row: what record_outcome would check before recording.
_RECORD_COLUMNS = (
    DELIVERIES_TABLE.c.id,
    DELIVERIES_TABLE.c.endpoint_id,
    DELIVERIES_TABLE.c.status,
    DELIVERIES_TABLE.c.workflow_id,
    DELIVERIES_TABLE.c.attempts,
    DELIVERIES_TABLE.c.claim_token,
)

# Takes the batch back from its claims: frees every row still held under the token its attempt was sent under.
_FENCE = (
    update(DELIVERIES_TABLE)
    .where(tuple_(DELIVERIES_TABLE.c.id, DELIVERIES_TABLE.c.claim_token).in_(bindparam("pairs", expanding=True)))
    .values(claim_token=None, claimed_until=None)
    .returning(*_RECORD_COLUMNS)
)

# Of the endpoints given, the healthy ones (no failing streak).
_HEALTHY = select(ENDPOINTS_TABLE.c.id).where(
    ENDPOINTS_TABLE.c.id.in_(bindparam("ids", expanding=True)), ENDPOINTS_TABLE.c.failing_since.is_(None)
)

# A success's delivery row (executemany): what record_attempt and mark_delivered write, out of the outbox.
_DELIVERED = (
    update(DELIVERIES_TABLE)
    .where(DELIVERIES_TABLE.c.id == bindparam("b_id"))
    .values(
        status=DeliveryStatus.DELIVERED.value,
        delivered_at=bindparam("b_at"),
        next_retry_at=None,
        next_attempt_at=None,
        attempts=bindparam("b_attempts"),
        last_status_code=bindparam("b_status_code"),
        last_latency_ms=bindparam("b_latency_ms"),
        last_error=bindparam("b_error"),
    )
)


def _attempt_upsert(insert_fn: Any) -> Any:
    """Upsert of ``(delivery, attempt)`` rows (executemany), for one dialect's ``insert``."""
    upsert = insert_fn(ATTEMPTS_TABLE)
    return upsert.on_conflict_do_update(
        index_elements=["delivery_id", "attempt"],
        set_={
            "outcome": upsert.excluded.outcome,
            "status_code": upsert.excluded.status_code,
            "latency_ms": upsert.excluded.latency_ms,
            "error": upsert.excluded.error,
            "at": upsert.excluded.at,
        },
    )


_ATTEMPT_UPSERTS: dict[str, Any] = {
    "postgresql": _attempt_upsert(postgresql.insert),
    "sqlite": _attempt_upsert(sqlite.insert),
}

_DELIVERED_VERDICT = AttemptVerdict(DeliverAttemptResult(done=True, outcome=DeliveryStatus.DELIVERED.value))


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

    Args:
        session: Database session (the caller commits).
        results: Each sent attempt's claim and answer, in the order they came.
        now: The current time: retries are due again from it.

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
    held = {row.id: row for row in session.execute(_FENCE, {"pairs": pairs})} if pairs else {}
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
    healthy = set(session.scalars(_HEALTHY, {"ids": endpoint_ids})) if endpoint_ids else set()
    return {row.id for _, row in candidates if row.endpoint_id in healthy and row.endpoint_id not in slow_endpoints}


def _record_deliveries(
    session: Session, fast: Sequence[tuple[Claimed, DeliveryResult]], held: dict[str, Row[Any]]
) -> dict[str, AttemptVerdict]:
    """Record successes chosen by :func:`_fast_path`: what ``record_outcome`` writes for them, set-based.

    ``record_outcome``'s ``delivered`` branch is ``record_attempt`` (upsert the ``(delivery, attempt)`` row; copy
    the answer onto the delivery; ``attempts`` never goes down) and ``mark_delivered`` (status ``delivered``,
    ``delivered_at``, no ``next_retry_at``); :func:`~quantapilot.webhooks.outbox.apply_verdict` then takes a
    settled row out of the outbox (``next_attempt_at`` None; the claim was freed by the fencing UPDATE). The same
    columns get the same values here, in one executemany UPDATE and one executemany upsert.
    """
    at = utcnow()
    session.execute(
        _DELIVERED,
        [
            {
                "b_id": claimed.delivery_id,
                "b_at": at,
                "b_attempts": max(held[claimed.delivery_id].attempts, claimed.inp.attempt),
                "b_status_code": result.status_code,
                "b_latency_ms": result.latency_ms,
                "b_error": result.error,
            }
            for claimed, result in fast
        ],
    )
    session.execute(
        _ATTEMPT_UPSERTS[session.get_bind().dialect.name],
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
    return {claimed.delivery_id: _DELIVERED_VERDICT for claimed, _ in fast}
