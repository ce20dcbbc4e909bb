"""The ``webhook.endpoint_disabled`` event, built for an endpoint disabled by a delivery attempt.

Run events become envelopes in :mod:`quantapilot.events.envelope`, which also defines the envelope itself.
"""

from __future__ import annotations

import uuid
from typing import Final

from quantapilot.events.envelope import EventEnvelope, aware
from quantapilot.webhooks.tables import WebhookDelivery, WebhookEndpoint

ENDPOINT_DISABLED: Final = "webhook.endpoint_disabled"
_DISABLED_EVENT_NAMESPACE = uuid.UUID("0d7c4b8e-6a55-4f63-9a3e-5b2f1c7d9e10")


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
