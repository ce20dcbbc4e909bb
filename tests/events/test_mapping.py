"""The event's one mapping: record <-> row <-> envelope, and the published shapes the models stand for."""

from __future__ import annotations

from datetime import UTC, datetime

from quantapilot.events.envelope import envelope_of_record, envelope_of_row
from quantapilot.events.record import EventRecord, event_json, record_of, row_of
from quantapilot.events.table import RunEvent
from quantapilot.models import GateStatus, RunKind, RunState
from schemas import load

EVENT = EventRecord(
    id="evt_1",
    run_id="rr_" + "0" * 32,
    workspace="default",
    run_kind=RunKind.REPOSITORY,
    seq=3,
    type="gate.requested",
    correlation_id="c-1",
    created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    data={"gate": "anchor"},
    trace_id="ab" * 16,
)


def test_the_table_has_the_records_fields() -> None:
    assert set(RunEvent.model_fields) == set(EventRecord.model_fields)


def test_row_and_record_round_trip() -> None:
    row = row_of(EVENT)
    assert row.run_kind == "repository" and type(row.run_kind) is str  # the value, never the enum
    assert record_of(row) == EVENT
    assert event_json(row) == EVENT.model_dump(mode="json")


def test_envelope_of_a_row_is_the_envelope_of_its_record() -> None:
    naive = row_of(EVENT)
    naive.created_at = naive.created_at.replace(tzinfo=None)  # how SQLite hands it back
    assert envelope_of_row(naive) == envelope_of_record(EVENT)
    assert envelope_of_record(EVENT).trace_id == EVENT.trace_id
    assert b"trace_id" not in envelope_of_record(EVENT).to_body()  # sent as traceparent, not in the body


def test_served_event_fields_are_the_published_ones() -> None:
    published = load("api.schema.json")["$defs"]["Event"]["properties"]
    assert set(published) <= set(EventRecord.model_fields)
    assert set(event_json(row_of(EVENT))) - set(published) <= {"trace_id"}


def test_status_enums_are_the_published_ones() -> None:
    defs = load("api.schema.json")["$defs"]
    assert defs["RunStatus"]["properties"]["state"]["enum"] == [s.value for s in RunState]
    assert defs["GateRecord"]["properties"]["status"]["enum"] == [s.value for s in GateStatus]
