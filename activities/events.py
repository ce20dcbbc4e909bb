"""Recording run events durably (the run's event log served by ``GET /v1/runs/{id}/events``) and fanning them out.

One transaction stores the event and its webhook deliveries (one per matching endpoint of the run's
workspace); after the commit the activity starts one delivery workflow per delivery and, with
``QP_AMQP_URL`` set, one AMQP publication workflow per event. Starting is all the run waits for: the
deliveries themselves run in their own workflows, so a run never waits on a consumer. A crash between the
commit and the starts is healed by the activity's retry: the insert is a no-op the second time and the starts
are idempotent (workflow ids derived from the delivery and event ids, duplicates rejected).
"""

from __future__ import annotations

import asyncio
from datetime import UTC

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from temporalio import activity

from activities.models import RECORD_EVENT
from quantapilot.db import RunEvent
from quantapilot.models import EventRecord
from quantapilot.observability import GATE_WAIT, RUN_EVENTS, RUNS
from quantapilot.settings import Settings
from quantapilot.webhooks.envelopes import envelope_of_record
from quantapilot.webhooks.fanout import fan_out_run_event, pending_deliveries
from quantapilot.webhooks.starts import PendingDelivery, start_amqp_publish, start_delivery_workflows


def _row(event: EventRecord) -> RunEvent:
    return RunEvent(
        id=event.id,
        run_id=event.run_id,
        workspace=event.workspace,
        run_kind=event.run_kind.value,
        seq=event.seq,
        type=event.type,
        correlation_id=event.correlation_id,
        created_at=event.created_at,
        data=event.data,
        trace_id=event.trace_id,
    )


def store_event_with_deliveries(engine: Engine, event: EventRecord) -> tuple[bool, list[PendingDelivery]]:
    """Insert an event and its deliveries in one transaction; a redo with the same id inserts nothing.

    Returns:
        Whether this call inserted the event, and the event's deliveries still pending (on a redo too, so
        the caller can start workflows a crashed attempt did not).
    """
    inserted = False
    with Session(engine, expire_on_commit=False) as session:
        if session.get(RunEvent, event.id) is None:
            session.add(_row(event))
            try:
                session.flush()
            except IntegrityError:
                session.rollback()
                if session.get(RunEvent, event.id) is None:
                    # Same (run_id, seq) under another id: the workflow's history disagrees with the log,
                    # which must never happen silently.
                    raise
            else:
                fan_out_run_event(session, event)
                session.commit()
                inserted = True
        pending = pending_deliveries(session, event.id)
    return inserted, pending


def store_event(engine: Engine, event: EventRecord) -> bool:
    """Insert an event (and its deliveries) once; a redo with the same id is a no-op.

    Returns:
        True when this call inserted the row.
    """
    inserted, _pending = store_event_with_deliveries(engine, event)
    return inserted


_OUTCOMES = {
    "run.started": "started",
    "run.completed": "completed",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
}


def count_event(engine: Engine, event: EventRecord) -> None:
    """Update the run metrics: events by type, runs by outcome, and how long a decided gate waited."""
    kind = event.run_kind.value
    RUN_EVENTS.labels(kind, event.type).inc()
    if event.type in _OUTCOMES:
        RUNS.labels(kind, _OUTCOMES[event.type]).inc()
    if event.type == "gate.decided":
        with Session(engine) as session:
            requested = session.exec(
                select(RunEvent.created_at)
                .where(RunEvent.run_id == event.run_id, RunEvent.type == "gate.requested", RunEvent.seq < event.seq)
                .order_by(col(RunEvent.seq).desc())
                .limit(1)
            ).first()
        if requested is not None:
            started = requested if requested.tzinfo else requested.replace(tzinfo=UTC)
            GATE_WAIT.labels(kind).observe(max(0.0, (event.created_at - started).total_seconds()))


class EventActivities:
    """Event activities, built with the database engine and the settings.

    Args:
        engine: Database engine holding ``run_events`` and the webhook tables.
        settings: Service settings (delivery timeouts and retry scale, the AMQP sink).
    """

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    @activity.defn(name=RECORD_EVENT)
    async def record_event(self, event: EventRecord) -> None:
        """Write the event to the run's log, then start its deliveries (idempotent by event id)."""
        inserted, pending = await asyncio.to_thread(store_event_with_deliveries, self._engine, event)
        if inserted:  # a redo must not count twice
            await asyncio.to_thread(count_event, self._engine, event)
        if not pending and not self._settings.amqp_url:
            return
        client = activity.client()
        task_queue = activity.info().task_queue
        if pending:
            await start_delivery_workflows(client, task_queue=task_queue, settings=self._settings, deliveries=pending)
        if self._settings.amqp_url:
            await start_amqp_publish(client, task_queue=task_queue, envelope=envelope_of_record(event))
