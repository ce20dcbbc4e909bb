"""The public (JSON) forms of webhook endpoints, deliveries and attempts: one definition, for every reader.

These are the shapes of ``schemas/webhooks.schema.json``: the API answers with them and anything else that
shows an endpoint or a delivery (a command, a script) uses the same functions, so a field is named once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from quantapilot.webhooks.tables import WebhookAttempt, WebhookDelivery, WebhookEndpoint


def iso_timestamp(value: datetime | None) -> str | None:
    """An instant as RFC 3339 in UTC with a ``Z`` (None stays None; naive datetimes are UTC)."""
    if value is None:
        return None
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.isoformat().replace("+00:00", "Z")


def endpoint_view(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """The public form of an endpoint (never its secrets)."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "description": endpoint.description,
        "events": list(endpoint.event_types),
        "run_kinds": list(endpoint.run_kinds),
        "repositories": list(endpoint.repositories),
        "enabled": endpoint.enabled,
        "disabled_reason": endpoint.disabled_reason,
        "failing_since": iso_timestamp(endpoint.failing_since),
        "throttled_until": iso_timestamp(endpoint.throttled_until),
        "created_at": iso_timestamp(endpoint.created_at),
        "updated_at": iso_timestamp(endpoint.updated_at),
    }


def attempt_view(row: WebhookAttempt) -> dict[str, Any]:
    """The public form of one attempt of a delivery."""
    return {
        "attempt": row.attempt,
        "outcome": row.outcome,
        "status_code": row.status_code,
        "latency_ms": row.latency_ms,
        "error": row.error,
        "at": iso_timestamp(row.at),
    }


def delivery_view(delivery: WebhookDelivery, attempts: Sequence[WebhookAttempt] = ()) -> dict[str, Any]:
    """The public form of a delivery with its attempts (status codes, latencies, errors) and next retry.

    ``data`` is the payload of an event kept with its deliveries because no run's log has it
    (``webhook.endpoint_disabled``); run events show null there and are read from their run's log by id.
    """
    data = delivery.payload.get("data") if delivery.payload is not None else None
    return {
        "id": delivery.id,
        "endpoint_id": delivery.endpoint_id,
        "event_id": delivery.event_id,
        "event_type": delivery.event_type,
        "run_id": delivery.run_id,
        "status": delivery.status,
        "attempt_count": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_latency_ms": delivery.last_latency_ms,
        "last_error": delivery.last_error,
        "next_retry_at": iso_timestamp(delivery.next_retry_at),
        "created_at": iso_timestamp(delivery.created_at),
        "delivered_at": iso_timestamp(delivery.delivered_at),
        "data": data if isinstance(data, dict) else None,
        "attempts": [attempt_view(a) for a in attempts],
    }
