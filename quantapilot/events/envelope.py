"""The envelope consumers receive for an event (webhook body, AMQP message), and how a run event becomes one."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from quantapilot.events.record import EventRecord, record_of
from quantapilot.events.table import RunEvent


class EventEnvelope(BaseModel):
    """The JSON body of a webhook request (and of an AMQP message).

    ``seq`` is the event's position within its run: deliveries are concurrent and retried, so consumers that
    need order sort by ``(run_id, seq)``, never by arrival.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    type: str
    created_at: datetime
    workspace: str
    run_id: str | None = None
    seq: int | None = None
    correlation_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    # Sent as the ``traceparent`` header, not in the body (the body is the documented envelope).
    trace_id: str | None = Field(default=None, exclude=True)

    def to_body(self) -> bytes:
        """Serialise to the exact bytes that are signed and sent (compact JSON, UTF-8)."""
        payload = self.model_dump(mode="json")
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def aware(value: datetime) -> datetime:
    """The same instant as a timezone-aware datetime (SQLite hands back naive ones; every one we store is UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def envelope_of_record(event: EventRecord) -> EventEnvelope:
    """Build the envelope consumers receive for a run event (its trace id goes out as a header, not in the body)."""
    return EventEnvelope(
        id=event.id,
        type=event.type,
        created_at=aware(event.created_at),
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
