"""The envelope consumers receive (webhook body, AMQP message) and how it is built.

From a run event, from its stored row, or for an endpoint disabled by a delivery attempt
(``webhook.endpoint_disabled``).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from quantapilot.db import RunEvent
from quantapilot.models import EventRecord
from quantapilot.webhooks.tables import WebhookDelivery, WebhookEndpoint

ENDPOINT_DISABLED: Final = "webhook.endpoint_disabled"
_DISABLED_EVENT_NAMESPACE = uuid.UUID("0d7c4b8e-6a55-4f63-9a3e-5b2f1c7d9e10")


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


def disabled_event_id(endpoint_id: str, delivery_id: str, attempt: int) -> str:
    """Id of the ``webhook.endpoint_disabled`` event caused by one attempt (stable across activity retries)."""
    name = f"{endpoint_id}/{delivery_id}/{attempt}"
    return f"evt_{uuid.uuid5(_DISABLED_EVENT_NAMESPACE, name).hex}"


def disabled_envelope(endpoint: WebhookEndpoint, delivery: WebhookDelivery, attempt: int) -> EventEnvelope:
    """The ``webhook.endpoint_disabled`` event for an endpoint disabled by a delivery's attempt.

    Built only from stored fields, so an activity retry rebuilds the same event. The URL is left out: it
    is the tenant's and may carry a token in its query.
    """
    return EventEnvelope(
        id=disabled_event_id(endpoint.id, delivery.id, attempt),
        type=ENDPOINT_DISABLED,
        created_at=aware(endpoint.updated_at),
        workspace=endpoint.workspace,
        data={
            "endpoint_id": endpoint.id,
            "reason": endpoint.disabled_reason,
            "delivery_id": delivery.id,
            "event_id": delivery.event_id,
            "last_status_code": delivery.last_status_code,
            "last_error": delivery.last_error,
        },
    )
