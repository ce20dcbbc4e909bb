"""The event as a workflow records it and the API serves it, and its mapping to and from a ``run_events`` row.

:class:`EventRecord` travels through Temporal (the ``record_event`` activity's input, recorded in every history),
so its fields never change; the table has the same columns, and the conversions here are the only place that
copies one into the other.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from quantapilot.events.table import RunEvent
from quantapilot.models import RunKind


class EventRecord(BaseModel):
    """One run event, as recorded and as served by ``GET /v1/runs/{id}/events``."""

    # The title names its definition in schemas/api.schema.json (``Event``); it changes no payload.
    model_config = ConfigDict(extra="forbid", title="Event")

    id: str
    run_id: str
    workspace: str
    run_kind: RunKind
    # Schema only (the payload's validation is unchanged): sequence numbers start at 1.
    seq: int = Field(json_schema_extra={"minimum": 1})
    type: str
    correlation_id: str | None = None
    created_at: datetime
    data: dict[str, Any]
    # W3C trace id of the request that started the run; webhook deliveries send it on as ``traceparent``.
    trace_id: str | None = None


def values_of(event: EventRecord) -> dict[str, Any]:
    """The ``run_events`` column values of an event (for a Core insert)."""
    fields = event.model_dump()
    # The column holds the kind's value: a driver may write an enum by its name.
    fields["run_kind"] = event.run_kind.value
    return fields


def row_of(event: EventRecord) -> RunEvent:
    """The ``run_events`` row of an event."""
    return RunEvent(**values_of(event))


def record_of(row: RunEvent) -> EventRecord:
    """The event a ``run_events`` row holds."""
    return EventRecord.model_validate(row, from_attributes=True)


def event_json(row: RunEvent) -> dict[str, Any]:
    """An event as the API serves it."""
    return record_of(row).model_dump(mode="json")
