"""Run metrics taken from recorded events: events by type, runs by outcome, how long decided gates waited."""

from __future__ import annotations

from datetime import UTC

from sqlalchemy.engine import Engine
from sqlmodel import Session

from quantapilot.events.log import last_event_at
from quantapilot.events.record import EventRecord
from quantapilot.observability import GATE_WAIT, RUN_EVENTS, RUNS

_OUTCOMES = {
    "run.started": "started",
    "run.completed": "completed",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
}


def count_event(engine: Engine, event: EventRecord) -> None:
    """Update the run metrics for an event just recorded (once: a redo of the recording must not count)."""
    kind = event.run_kind.value
    RUN_EVENTS.labels(kind, event.type).inc()
    if event.type in _OUTCOMES:
        RUNS.labels(kind, _OUTCOMES[event.type]).inc()
    if event.type == "gate.decided":
        with Session(engine) as session:
            requested = last_event_at(session, run_id=event.run_id, event_type="gate.requested", before_seq=event.seq)
        if requested is not None:
            started = requested if requested.tzinfo else requested.replace(tzinfo=UTC)
            GATE_WAIT.labels(kind).observe(max(0.0, (event.created_at - started).total_seconds()))
