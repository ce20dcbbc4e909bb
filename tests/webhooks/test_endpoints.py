"""Webhook endpoints (event types, filters, CRUD, matching) on real SQLite and PostgreSQL (db_engine runs both)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import StatementError
from sqlmodel import Session

from quantapilot.db import session_scope
from quantapilot.webhooks import deliveries, endpoints, rotation
from quantapilot.webhooks import delivery as delivery_state
from quantapilot.webhooks.endpoints import KNOWN_EVENT_TYPES, normalize_event_type
from quantapilot.webhooks.tables import DeliveryOutcome, DeliveryResult, WebhookNotFoundError
from quantapilot.webhooks.urlsafety import UnsafeUrlError
from tests.webhooks.support import KEYS, T0, URL, create_endpoint_row


def test_endpoints_normalize_event_type_aliases() -> None:
    assert normalize_event_type("run_started") == "run.started"
    assert normalize_event_type("gate_requested") == "gate.requested"
    assert normalize_event_type("gate_decision") == "gate.decided"
    assert normalize_event_type("documentation_generated") == "documentation.generated"
    assert normalize_event_type(" Run.Completed ") == "run.completed"
    for name in KNOWN_EVENT_TYPES:
        assert normalize_event_type(name) == name
    for bad in ("run.exploded", "", "run", "gate.decision"):
        with pytest.raises(ValueError, match="unknown event type"):
            normalize_event_type(bad)


def test_endpoints_create_returns_secret_once_and_stores_filters(db_engine: Engine) -> None:
    endpoint_id, secret = create_endpoint_row(
        db_engine,
        description="chat bot",
        event_types=["run_started", "run.started", "gate_decision"],
        run_kinds=["Repository"],
        repositories=["https://Git.example.com/org/repo.git/"],
    )
    assert endpoint_id.startswith("we_")
    assert secret.startswith("whsec_")
    with Session(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        assert endpoint.event_types == ["run.started", "gate.decided"]
        assert endpoint.run_kinds == ["repository"]
        assert endpoint.repositories == ["https://git.example.com/org/repo"]
        assert endpoint.description == "chat bot"
        assert endpoint.enabled is True
        assert endpoint.created_at == T0
        assert endpoint.created_at.tzinfo is not None
        # The secret is not an attribute of the endpoint, so API serialisation of it cannot leak it.
        assert secret not in endpoint.model_dump_json()
        assert rotation.active_secrets(endpoint_id, session=session, keyring=KEYS, now=T0) == [secret]


def test_endpoints_create_refuses_bad_url_and_unknown_type(db_engine: Engine) -> None:
    with Session(db_engine) as session:
        with pytest.raises(UnsafeUrlError):
            endpoints.create_endpoint(session=session, workspace="ws1", keyring=KEYS, url="ftp://x.example/")
        with pytest.raises(UnsafeUrlError):
            endpoints.create_endpoint(session=session, workspace="ws1", keyring=KEYS, url="http://169.254.169.254/")
        with pytest.raises(UnsafeUrlError):
            endpoints.create_endpoint(
                session=session, workspace="ws1", keyring=KEYS, url="http://127.0.0.1/", allow_private=False
            )
        with pytest.raises(ValueError, match="unknown event type"):
            endpoints.create_endpoint(session=session, workspace="ws1", keyring=KEYS, url=URL, event_types=["nope"])
        assert endpoints.list_endpoints(session=session, workspace="ws1") == []


def test_endpoints_workspace_scoping_behaves_as_not_found(db_engine: Engine) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine, "ws1")
    create_endpoint_row(db_engine, "ws2")
    with session_scope(db_engine) as session:
        assert [e.id for e in endpoints.list_endpoints(session=session, workspace="ws1")] == [endpoint_id]
        with pytest.raises(WebhookNotFoundError):
            endpoints.get_endpoint(endpoint_id, session=session, workspace="ws2")
        with pytest.raises(WebhookNotFoundError):
            endpoints.update_endpoint(endpoint_id, session=session, workspace="ws2", description="x")
        with pytest.raises(WebhookNotFoundError):
            endpoints.delete_endpoint(endpoint_id, session=session, workspace="ws2")
        with pytest.raises(WebhookNotFoundError):
            rotation.rotate_secret(
                endpoint_id, session=session, workspace="ws2", overlap=timedelta(hours=1), keyring=KEYS
            )
        with pytest.raises(WebhookNotFoundError):
            deliveries.list_deliveries(endpoint_id, session=session, workspace="ws2")
        with pytest.raises(WebhookNotFoundError):
            endpoints.get_endpoint("we_missing", session=session, workspace="ws1")
    with Session(db_engine) as session:
        assert endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1").description == ""


def test_endpoints_update_and_reenable(db_engine: Engine) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine)
    later = T0 + timedelta(hours=1)
    with session_scope(db_engine) as session:
        assert delivery_state.disable_endpoint(endpoint_id, session=session, reason="gone")
        assert not delivery_state.disable_endpoint(endpoint_id, session=session, reason="gone")
        endpoint = endpoints.update_endpoint(
            endpoint_id,
            session=session,
            workspace="ws1",
            url="https://other.example.com/hook",
            event_types=["run_completed"],
            enabled=True,
            now=later,
        )
    with Session(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        assert endpoint.url == "https://other.example.com/hook"
        assert endpoint.event_types == ["run.completed"]
        assert endpoint.enabled
        assert endpoint.disabled_reason is None
        assert endpoint.updated_at == later
        with pytest.raises(UnsafeUrlError):
            endpoints.update_endpoint(endpoint_id, session=session, workspace="ws1", url="gopher://x/")


def test_endpoints_matching_endpoints_filters(db_engine: Engine) -> None:
    all_id, _ = create_endpoint_row(db_engine)
    runs_id, _ = create_endpoint_row(db_engine, event_types=["run_started", "run_completed"])
    lifecycle_id, _ = create_endpoint_row(db_engine, run_kinds=["lifecycle"])
    repo_id, _ = create_endpoint_row(db_engine, repositories=["https://git.example.com/org/repo"])
    disabled_id, _ = create_endpoint_row(db_engine)
    create_endpoint_row(db_engine, "other")
    with session_scope(db_engine) as session:
        endpoints.update_endpoint(disabled_id, session=session, workspace="ws1", enabled=False)

    def match(event_type: str, run_kind: str | None, repository: str | None) -> set[str]:
        with Session(db_engine) as session:
            found = endpoints.matching_endpoints(
                session=session,
                workspace="ws1",
                event_type=event_type,
                run_kind=run_kind,
                repository=repository,
            )
            return {e.id for e in found}

    repo = "https://git.example.com/org/repo.git"
    assert match("run.started", "repository", repo) == {all_id, runs_id, repo_id}
    assert match("run_started", "repository", repo) == {all_id, runs_id, repo_id}
    assert match("gate.decided", "repository", "https://git.example.com/org/else") == {all_id}
    # A repository filter is about repository runs: lifecycle runs (no repository) do not pass it.
    assert match("stage.completed", "lifecycle", None) == {all_id, lifecycle_id}
    assert match("run.started", "repository", None) == {all_id, runs_id}
    # Events outside any run pass the run-kind and repository filters.
    assert match("webhook.endpoint_disabled", None, None) == {all_id, lifecycle_id, repo_id}
    with Session(db_engine) as session, pytest.raises(ValueError, match="unknown event type"):
        endpoints.matching_endpoints(session=session, workspace="ws1", event_type="bogus")


def test_endpoints_delete_endpoint_removes_children(db_engine: Engine) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine)
    keep_id, keep_secret = create_endpoint_row(db_engine)
    ok = DeliveryResult(outcome=DeliveryOutcome.DELIVERED, status_code=200, latency_ms=1.0)
    with session_scope(db_engine) as session:
        for eid in (endpoint_id, keep_id):
            endpoint = endpoints.get_endpoint(eid, session=session, workspace="ws1")
            delivery, _ = deliveries.ensure_delivery(
                session=session, endpoint=endpoint, event_id="e1", event_type="run.started"
            )
            deliveries.record_attempt(delivery.id, session=session, attempt=1, result=ok)
        rotation.rotate_secret(endpoint_id, session=session, workspace="ws1", keyring=KEYS, overlap=timedelta(hours=1))
    with session_scope(db_engine) as session:
        endpoints.delete_endpoint(endpoint_id, session=session, workspace="ws1")
    with Session(db_engine) as session:
        assert [e.id for e in endpoints.list_endpoints(session=session, workspace="ws1")] == [keep_id]
        assert rotation.active_secrets(endpoint_id, session=session, keyring=KEYS) == []
        assert rotation.active_secrets(keep_id, session=session, keyring=KEYS) == [keep_secret]
        [kept] = deliveries.list_deliveries(keep_id, session=session, workspace="ws1")
        assert len(deliveries.list_attempts(kept.id, session=session, workspace="ws1")) == 1


def test_endpoints_refuses_naive_datetimes(db_engine: Engine) -> None:
    endpoint_id, _ = create_endpoint_row(db_engine)
    with Session(db_engine) as session, pytest.raises(StatementError, match="naive datetime"):
        rotation.rotate_secret(
            endpoint_id, session=session, workspace="ws1", keyring=KEYS, overlap=timedelta(0), now=datetime(2024, 1, 1)
        )


def test_endpoints_limit_refuses_one_more_per_workspace(db_engine: Engine) -> None:
    for _ in range(3):
        create_endpoint_row(db_engine, max_endpoints=3)
    with pytest.raises(endpoints.EndpointLimitError) as refused:
        create_endpoint_row(db_engine, max_endpoints=3)
    assert refused.value.limit == 3
    # The refused row was rolled back, and other workspaces have their own count.
    with Session(db_engine) as session:
        assert endpoints.count_endpoints(session=session, workspace="ws1") == 3
    create_endpoint_row(db_engine, workspace="ws2", max_endpoints=3)
    # Disabled endpoints still count: the limit is about what a workspace holds.
    with session_scope(db_engine) as session:
        first = endpoints.list_endpoints(session=session, workspace="ws1")[0]
        endpoints.update_endpoint(first.id, session=session, workspace="ws1", enabled=False)
    with pytest.raises(endpoints.EndpointLimitError):
        create_endpoint_row(db_engine, max_endpoints=3)


def test_endpoints_limit_holds_under_concurrent_creates(db_engine: Engine) -> None:
    limit, callers = 4, 12
    barrier = threading.Barrier(callers)

    def _create(_: int) -> bool:
        barrier.wait()  # all callers start their transactions together
        try:
            create_endpoint_row(db_engine, max_endpoints=limit)
        except endpoints.EndpointLimitError:
            return False
        return True

    with ThreadPoolExecutor(max_workers=callers) as pool:
        created = list(pool.map(_create, range(callers)))
    assert created.count(True) == limit
    with Session(db_engine) as session:
        assert endpoints.count_endpoints(session=session, workspace="ws1") == limit
