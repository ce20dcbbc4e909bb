"""The envelope consumers receive for a run event (webhook body, AMQP message), built from the event."""

from __future__ import annotations

from datetime import UTC, datetime

from quantapilot.events.record import EventRecord, record_of
from quantapilot.events.table import RunEvent
from quantapilot.webhooks.sender import EventEnvelope


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every timestamp we store is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def envelope_of_record(event: EventRecord) -> EventEnvelope:
    """Build the envelope consumers receive for a run event (its trace id goes out as a header, not in the body)."""
    return EventEnvelope(
        id=event.id,
        type=event.type,
        created_at=_aware(event.created_at),
        workspace=event.workspace,
        run_id=event.run_id,
        seq=event.seq,
        correlation_id=event.correlation_id,
        data=dict(event.data),
        trace_id=event.trace_id,
    )


def envelope_of_row(row: RunEvent) -> EventEnvelope:
    """Rebuild the envelope of a stored run event (the same bytes on every attempt)."""
    return envelope_of_record(record_of(row))
