"""Webhook store on real SQLite and PostgreSQL (the db_engine fixture runs each test on both)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.exc import StatementError
from sqlmodel import Session

from quantapilot.db import session_scope
from quantapilot.secretbox import KeyRing
from quantapilot.webhooks import deliveries, endpoints
from quantapilot.webhooks import delivery as delivery_state
from quantapilot.webhooks.endpoints import KNOWN_EVENT_TYPES, normalize_event_type
from quantapilot.webhooks.schedule import DISABLE_AFTER
from quantapilot.webhooks.tables import DeliveryOutcome, DeliveryResult, DeliveryStatus, WebhookNotFoundError
from quantapilot.webhooks.urlsafety import UnsafeUrlError

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
URL = "https://hooks.example.com/qp"
KEYS = KeyRing([bytes(range(32))])


def _create(engine: Engine, workspace: str = "ws1", **kwargs) -> tuple[str, str]:
    with session_scope(engine) as session:
        endpoint, secret = endpoints.create_endpoint(
            session=session, workspace=workspace, url=URL, keyring=KEYS, now=T0, **kwargs
        )
        return endpoint.id, secret


def test_store_normalize_event_type_aliases() -> None:
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


def test_store_create_returns_secret_once_and_stores_filters(db_engine: Engine) -> None:
    endpoint_id, secret = _create(
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
        assert delivery_state.active_secrets(endpoint_id, session=session, keyring=KEYS, now=T0) == [secret]


def test_store_create_refuses_bad_url_and_unknown_type(db_engine: Engine) -> None:
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


def test_store_workspace_scoping_behaves_as_not_found(db_engine: Engine) -> None:
    endpoint_id, _ = _create(db_engine, "ws1")
    _create(db_engine, "ws2")
    with session_scope(db_engine) as session:
        assert [e.id for e in endpoints.list_endpoints(session=session, workspace="ws1")] == [endpoint_id]
        with pytest.raises(WebhookNotFoundError):
            endpoints.get_endpoint(endpoint_id, session=session, workspace="ws2")
        with pytest.raises(WebhookNotFoundError):
            endpoints.update_endpoint(endpoint_id, session=session, workspace="ws2", description="x")
        with pytest.raises(WebhookNotFoundError):
            endpoints.delete_endpoint(endpoint_id, session=session, workspace="ws2")
        with pytest.raises(WebhookNotFoundError):
            delivery_state.rotate_secret(
                endpoint_id, session=session, workspace="ws2", overlap=timedelta(hours=1), keyring=KEYS
            )
        with pytest.raises(WebhookNotFoundError):
            deliveries.list_deliveries(endpoint_id, session=session, workspace="ws2")
        with pytest.raises(WebhookNotFoundError):
            endpoints.get_endpoint("we_missing", session=session, workspace="ws1")
    with Session(db_engine) as session:
        assert endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1").description == ""


def test_store_update_and_reenable(db_engine: Engine) -> None:
    endpoint_id, _ = _create(db_engine)
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


def test_store_rotate_secret_overlap_then_only_new(db_engine: Engine) -> None:
    endpoint_id, old = _create(db_engine)
    rotated_at = T0 + timedelta(days=1)
    with session_scope(db_engine) as session:
        new = delivery_state.rotate_secret(
            endpoint_id, session=session, workspace="ws1", keyring=KEYS, overlap=timedelta(hours=24), now=rotated_at
        )
    assert new != old
    with Session(db_engine) as session:
        during = delivery_state.active_secrets(
            endpoint_id, session=session, keyring=KEYS, now=rotated_at + timedelta(hours=23)
        )
        after = delivery_state.active_secrets(
            endpoint_id, session=session, keyring=KEYS, now=rotated_at + timedelta(hours=24)
        )
    assert during == [new, old]
    assert after == [new]
    # A second rotation deletes the expired secret and never extends the previous one's life.
    with session_scope(db_engine) as session:
        newest = delivery_state.rotate_secret(
            endpoint_id,
            session=session,
            workspace="ws1",
            overlap=timedelta(hours=1),
            keyring=KEYS,
            now=rotated_at + timedelta(hours=30),
        )
    with Session(db_engine) as session:
        at = rotated_at + timedelta(hours=30, minutes=30)
        assert delivery_state.active_secrets(endpoint_id, session=session, keyring=KEYS, now=at) == [newest, new]
        assert delivery_state.active_secrets(
            endpoint_id, session=session, keyring=KEYS, now=at + timedelta(hours=1)
        ) == [newest]
        with pytest.raises(ValueError, match="negative"):
            delivery_state.rotate_secret(
                endpoint_id, session=session, workspace="ws1", keyring=KEYS, overlap=timedelta(hours=-1)
            )


def test_store_rotate_with_zero_overlap_revokes_old(db_engine: Engine) -> None:
    endpoint_id, old = _create(db_engine)
    with session_scope(db_engine) as session:
        new = delivery_state.rotate_secret(
            endpoint_id, session=session, workspace="ws1", keyring=KEYS, overlap=timedelta(0), now=T0
        )
    with Session(db_engine) as session:
        assert delivery_state.active_secrets(endpoint_id, session=session, keyring=KEYS, now=T0) == [new]
    assert old != new


def test_store_matching_endpoints_filters(db_engine: Engine) -> None:
    all_id, _ = _create(db_engine)
    runs_id, _ = _create(db_engine, event_types=["run_started", "run_completed"])
    lifecycle_id, _ = _create(db_engine, run_kinds=["lifecycle"])
    repo_id, _ = _create(db_engine, repositories=["https://git.example.com/org/repo"])
    disabled_id, _ = _create(db_engine)
    _create(db_engine, "other")
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


def test_store_ensure_delivery_is_idempotent(db_engine: Engine) -> None:
    endpoint_id, _ = _create(db_engine)
    with session_scope(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        first, created = deliveries.ensure_delivery(
            session=session, endpoint=endpoint, event_id="ev_1", event_type="run_started", run_id="run_1", now=T0
        )
        again, created_again = deliveries.ensure_delivery(
            session=session, endpoint=endpoint, event_id="ev_1", event_type="run.started", run_id="run_1"
        )
    assert created
    assert not created_again
    assert again.id == first.id
    assert first.id.startswith("wd_")
    assert first.status == DeliveryStatus.PENDING
    assert first.event_type == "run.started"
    assert first.workspace == "ws1"
    with Session(db_engine) as session:
        [only] = deliveries.list_deliveries(endpoint_id, session=session, workspace="ws1")
    assert only.id == first.id
    assert only.created_at == T0


def test_store_ensure_delivery_concurrent_creates_once(db_engine: Engine) -> None:
    endpoint_id, _ = _create(db_engine)
    barrier = threading.Barrier(4)
    outcomes: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with session_scope(db_engine) as session:
                endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
                barrier.wait(timeout=10)
                delivery, created = deliveries.ensure_delivery(
                    session=session, endpoint=endpoint, event_id="ev_race", event_type="run.failed"
                )
                outcomes.append((delivery.id, created))
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(outcomes) == 4
    assert len({delivery_id for delivery_id, _ in outcomes}) == 1
    assert sum(created for _, created in outcomes) == 1


def test_store_attempts_and_status_transitions(db_engine: Engine) -> None:
    endpoint_id, _ = _create(db_engine)
    with session_scope(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        delivery, _ = deliveries.ensure_delivery(
            session=session, endpoint=endpoint, event_id="ev_1", event_type="run.started"
        )
        delivery_id = delivery.id
    fail = DeliveryResult(outcome=DeliveryOutcome.RETRY, status_code=500, latency_ms=12.5, error="HTTP 500")
    ok = DeliveryResult(outcome=DeliveryOutcome.DELIVERED, status_code=200, latency_ms=3.0)
    retry_at = T0 + timedelta(seconds=30)
    with session_scope(db_engine) as session:
        deliveries.record_attempt(delivery_id, session=session, attempt=1, result=fail, now=T0)
        delivery_state.mark_retrying(delivery_id, session=session, next_retry_at=retry_at, now=T0)
    with Session(db_engine) as session:
        [row] = deliveries.list_deliveries(endpoint_id, session=session, workspace="ws1")
        assert (row.status, row.attempts, row.last_status_code, row.next_retry_at) == ("pending", 1, 500, retry_at)
        assert endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1").failing_since == T0
    with session_scope(db_engine) as session:
        # The same attempt recorded twice (activity retried after a crash) stays one row.
        deliveries.record_attempt(delivery_id, session=session, attempt=2, result=fail, now=retry_at)
        deliveries.record_attempt(delivery_id, session=session, attempt=2, result=ok, now=retry_at)
        delivery_state.mark_delivered(delivery_id, session=session, now=retry_at)
    with Session(db_engine) as session:
        attempts = deliveries.list_attempts(delivery_id, session=session, workspace="ws1")
        assert [(a.attempt, a.outcome, a.status_code) for a in attempts] == [(1, "retry", 500), (2, "delivered", 200)]
        assert attempts[0].error == "HTTP 500"
        assert attempts[0].latency_ms == 12.5
        delivery = deliveries.get_delivery(delivery_id, session=session, workspace="ws1")
        assert delivery.status == DeliveryStatus.DELIVERED
        assert delivery.delivered_at == retry_at
        assert delivery.next_retry_at is None
        assert delivery.last_error is None
        assert endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1").failing_since is None
        with pytest.raises(WebhookNotFoundError):
            deliveries.list_attempts(delivery_id, session=session, workspace="ws2")
        with pytest.raises(WebhookNotFoundError):
            deliveries.record_attempt("wd_missing", session=session, attempt=1, result=ok)


def test_store_gone_disables_endpoint_once_and_redeliver(db_engine: Engine) -> None:
    endpoint_id, _ = _create(db_engine)
    with session_scope(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        first, _ = deliveries.ensure_delivery(
            session=session, endpoint=endpoint, event_id="ev_1", event_type="run.started"
        )
        second, _ = deliveries.ensure_delivery(
            session=session, endpoint=endpoint, event_id="ev_2", event_type="run.paused"
        )
        assert delivery_state.mark_gone(first.id, session=session, now=T0) is True
        assert delivery_state.mark_gone(second.id, session=session, now=T0) is False
    with Session(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        assert not endpoint.enabled
        assert endpoint.disabled_reason == delivery_state.DISABLED_GONE
        assert endpoints.matching_endpoints(session=session, workspace="ws1", event_type="run.started") == []
        gone = deliveries.list_deliveries(endpoint_id, session=session, workspace="ws1", status=DeliveryStatus.GONE)
        assert {d.id for d in gone} == {first.id, second.id}
    with session_scope(db_engine) as session:
        delivery_state.mark_failed(first.id, session=session, error="gave up")
        delivery_state.mark_disabled(second.id, session=session)
        with pytest.raises(WebhookNotFoundError):
            delivery_state.redeliver(first.id, session=session, workspace="ws2", workflow_id="wf-2")
        with pytest.raises(delivery_state.EndpointDisabledError):
            delivery_state.redeliver(first.id, session=session, workspace="ws1", workflow_id="wf-2")
        endpoints.update_endpoint(endpoint_id, session=session, workspace="ws1", enabled=True)
        again = delivery_state.redeliver(first.id, session=session, workspace="ws1", workflow_id="wf-2")
    assert again.delivery.status == DeliveryStatus.PENDING
    assert again.delivery.workflow_id == again.workflow_id == "wf-2"
    assert again.previous_workflow_id is None
    assert again.first_attempt == 1
    with Session(db_engine) as session:
        assert deliveries.get_delivery(first.id, session=session, workspace="ws1").status == "pending"
        assert deliveries.get_delivery(second.id, session=session, workspace="ws1").status == "disabled"


def test_store_record_own_event_keeps_it_unsent_once(db_engine: Engine) -> None:
    endpoint_id, _ = _create(db_engine, event_types=["run.started"])
    payload = {"id": "evt_off", "type": "webhook.endpoint_disabled", "data": {"reason": "gone"}}
    with session_scope(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        delivery_state.disable_endpoint(endpoint_id, session=session, reason=delivery_state.DISABLED_GONE, now=T0)
        first = deliveries.record_own_event(
            endpoint,
            session=session,
            event_id="evt_off",
            event_type="webhook_endpoint_disabled",
            payload=payload,
            now=T0,
        )
        # An activity retried after a crash records nothing twice and does not reopen the row.
        again = deliveries.record_own_event(
            endpoint, session=session, event_id="evt_off", event_type="webhook.endpoint_disabled", payload={}, now=T0
        )
        assert again.id == first.id
    with Session(db_engine) as session:
        (row,) = deliveries.list_deliveries(endpoint_id, session=session, workspace="ws1")
        assert (row.event_type, row.status, row.attempts, row.run_id) == (
            "webhook.endpoint_disabled",
            DeliveryStatus.DISABLED,
            0,
            None,
        )
        assert row.payload == payload and row.workflow_id is None and row.created_at == T0


def test_store_failing_too_long(db_engine: Engine) -> None:
    endpoint_id, _ = _create(db_engine)
    with session_scope(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        assert not delivery_state.failing_too_long(endpoint, now=T0)
        delivery, _ = deliveries.ensure_delivery(
            session=session, endpoint=endpoint, event_id="e", event_type="run.failed"
        )
        delivery_state.mark_retrying(delivery.id, session=session, next_retry_at=T0, now=T0)
        # A later failure does not move the start of the streak.
        delivery_state.mark_retrying(delivery.id, session=session, next_retry_at=T0, now=T0 + timedelta(days=1))
    with Session(db_engine) as session:
        endpoint = endpoints.get_endpoint(endpoint_id, session=session, workspace="ws1")
        assert endpoint.failing_since == T0
        assert not delivery_state.failing_too_long(endpoint, now=T0 + DISABLE_AFTER - timedelta(seconds=1))
        assert delivery_state.failing_too_long(endpoint, now=T0 + DISABLE_AFTER)


def test_store_delete_endpoint_removes_children(db_engine: Engine) -> None:
    endpoint_id, _ = _create(db_engine)
    keep_id, keep_secret = _create(db_engine)
    ok = DeliveryResult(outcome=DeliveryOutcome.DELIVERED, status_code=200, latency_ms=1.0)
    with session_scope(db_engine) as session:
        for eid in (endpoint_id, keep_id):
            endpoint = endpoints.get_endpoint(eid, session=session, workspace="ws1")
            delivery, _ = deliveries.ensure_delivery(
                session=session, endpoint=endpoint, event_id="e1", event_type="run.started"
            )
            deliveries.record_attempt(delivery.id, session=session, attempt=1, result=ok)
        delivery_state.rotate_secret(
            endpoint_id, session=session, workspace="ws1", keyring=KEYS, overlap=timedelta(hours=1)
        )
    with session_scope(db_engine) as session:
        endpoints.delete_endpoint(endpoint_id, session=session, workspace="ws1")
    with Session(db_engine) as session:
        assert [e.id for e in endpoints.list_endpoints(session=session, workspace="ws1")] == [keep_id]
        assert delivery_state.active_secrets(endpoint_id, session=session, keyring=KEYS) == []
        assert delivery_state.active_secrets(keep_id, session=session, keyring=KEYS) == [keep_secret]
        [kept] = deliveries.list_deliveries(keep_id, session=session, workspace="ws1")
        assert len(deliveries.list_attempts(kept.id, session=session, workspace="ws1")) == 1


def test_store_refuses_naive_datetimes(db_engine: Engine) -> None:
    endpoint_id, _ = _create(db_engine)
    with Session(db_engine) as session, pytest.raises(StatementError, match="naive datetime"):
        delivery_state.rotate_secret(
            endpoint_id, session=session, workspace="ws1", keyring=KEYS, overlap=timedelta(0), now=datetime(2024, 1, 1)
        )
