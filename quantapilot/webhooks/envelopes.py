"""The envelope consumers receive (webhook body, AMQP message) built from a run event or its stored row."""

from __future__ import annotations

from datetime import UTC, datetime

from quantapilot.db import RunEvent
from quantapilot.models import EventRecord
from quantapilot.webhooks.sender import EventEnvelope


def aware(value: datetime) -> datetime:
    """The same instant as a timezone-aware datetime (SQLite hands back naive ones; every one we store is UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def envelope_of_record(event: EventRecord) -> EventEnvelope:
    """Build the envelope consumers receive for a run event."""
    return EventEnvelope(
        id=event.id,
        type=event.type,
        created_at=aware(event.created_at),
        workspace=event.workspace,
        run_id=event.run_id,
        seq=event.seq,
        correlation_id=event.correlation_id,
        data=dict(event.data),
    )


def envelope_of_row(row: RunEvent) -> EventEnvelope:
    """Rebuild the envelope of a stored run event (the same bytes on every attempt)."""
    return EventEnvelope(
        id=row.id,
        type=row.type,
        created_at=aware(row.created_at),
        workspace=row.workspace,
        run_id=row.run_id,
        seq=row.seq,
        correlation_id=row.correlation_id,
        data=dict(row.data),
        trace_id=row.trace_id,
    )
