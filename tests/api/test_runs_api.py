"""The run API's contract: validation, envelope, auth, idempotency, limits - against a real Temporal server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

import schemas
from quantapilot.models import RunKind
from quantapilot.runs.ids import workflow_id
from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.support import Api, eventually, make_remote

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def assert_envelope(body: dict[str, Any], code: str) -> None:
    errors = list(schemas.validator("api.schema.json", "ErrorEnvelope").iter_errors(body))
    assert not errors, errors
    assert body["error"]["code"] == code, body


def test_api_schema_examples_validate() -> None:
    examples = schemas.load("api.examples.json")
    assert examples, "no examples"
    for definition, items in examples.items():
        validator = schemas.validator("api.schema.json", definition)
        for item in items:
            errors = list(validator.iter_errors(item))
            assert not errors, (definition, item, errors)
    schemas.validator("api.schema.json").check_schema(schemas.load("api.schema.json"))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"branch": "main"}, "<root>"),
        ({"repo_url": "https://x/y", "branch": ""}, "branch"),
        ({"repo_url": "https://x/y", "branch": "a..b"}, "branch"),
        ({"repo_url": "https://x/y", "branch": "main", "extra": 1}, "<root>"),
        ({"repo_url": "https://x/y", "branch": "main", "correlation_id": "a\r\nX-Evil: 1"}, "correlation_id"),
        (
            {"repo_url": "https://x/y", "branch": "main", "quantapilot_yaml_path": "../etc/passwd"},
            "quantapilot_yaml_path",
        ),
        ({"repo_url": "https://x/y z", "branch": "main"}, "repo_url"),
        ([1, 2], "<root>"),
    ],
)
async def test_api_trigger_rejects_invalid_body(api: Api, body: Any, field: str) -> None:
    resp = await api.client.post("/run", json=body, headers=api.headers())
    payload = await resp.json()
    assert resp.status == 422, payload
    assert_envelope(payload, "VALIDATION_ERROR")
    assert field in [d["path"] for d in payload["error"]["details"]]
    assert resp.headers["X-Trace-Id"] == payload["error"]["traceId"]


async def test_api_malformed_json_utf8_depth_and_content_type(api: Api) -> None:
    cases: list[tuple[bytes, str, int, str]] = [
        (b"{not json", "application/json", 400, "VALIDATION_ERROR"),
        (b'{"repo_url": "\xff\xfe"}', "application/json", 400, "VALIDATION_ERROR"),
        (b"[" * 5000 + b"]" * 5000, "application/json", 400, "VALIDATION_ERROR"),
        (b"repo_url=x", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b"", "application/json", 400, "VALIDATION_ERROR"),
    ]
    for raw, ctype, status, code in cases:
        resp = await api.client.post("/run", data=raw, headers=api.headers({"Content-Type": ctype}))
        payload = await resp.json()
        assert resp.status == status, (raw[:20], payload)
        assert_envelope(payload, code)


async def test_api_body_over_limit_is_413(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(settings.model_copy(update={"max_body_bytes": 2048}))
    body = json.dumps({"repo_url": "https://x/" + "a" * 4000, "branch": "main"})
    resp = await api.client.post("/run", data=body, headers=api.headers({"Content-Type": "application/json"}))
    payload = await resp.json()
    assert resp.status == 413
    assert_envelope(payload, "PAYLOAD_TOO_LARGE")


async def test_api_authentication(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer qp_wrong"}, {"Authorization": "Basic abc"}):
        resp = await api.client.post("/run", json={"repo_url": "https://x/y", "branch": "main"}, headers=headers)
        payload = await resp.json()
        assert resp.status == 401, headers
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert_envelope(payload, "AUTHENTICATION_ERROR")
    for path in ("/healthz", "/readyz"):
        resp = await api.client.get(path)
        assert resp.status == 200, await resp.text()


async def test_api_unknown_run_and_route_are_404_with_trace(api: Api) -> None:
    for path in ("/v1/runs/rr_" + "0" * 32, "/v1/runs/not-an-id", "/v1/nothing-here"):
        resp = await api.client.get(path, headers={**api.headers(), "traceparent": TRACEPARENT})
        payload = await resp.json()
        assert resp.status == 404, path
        assert_envelope(payload, "NOT_FOUND")
        assert payload["error"]["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    code, payload = await api.post("/v1/runs/rr_" + "0" * 32 + "/gates/anchor/decision", {"approved": True})
    assert code == 404, payload
    code, payload = await api.get("/v1/runs/rr_" + "0" * 32 + "/events")
    assert code == 404, payload


async def count_runs(client: Client, workflow_id: str) -> int:
    return len([wf async for wf in client.list_workflows(f"WorkflowId = '{workflow_id}'")])


async def test_api_idempotency_200_concurrent_triggers_start_one_run(
    make_api: ApiFactory, settings: Settings, client: Client, tmp_path: Path
) -> None:
    # One client sending 200 triggers at once is over the default trigger burst; this test is about idempotency.
    api = await make_api(settings.model_copy(update={"rate_triggers_burst": 1000}))
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    body = {"repo_url": url, "branch": "main"}
    headers = {"Idempotency-Key": "order-42"}
    results = await asyncio.gather(*(api.post("/run", body, headers=headers) for _ in range(200)))
    codes = {code for code, _ in results}
    assert codes == {202}, [r for r in results if r[0] != 202][:3]
    run_ids = {payload["run_id"] for _, payload in results}
    assert len(run_ids) == 1
    assert sum(1 for _, payload in results if payload["created"]) == 1
    run_id = run_ids.pop()
    wid = workflow_id(RunKind.REPOSITORY, "default", run_id)
    # The visibility store is eventually consistent: poll for the one execution.
    await eventually(lambda: count_runs(client, wid), lambda n: n >= 1, what="the run in visibility")
    assert await count_runs(client, wid) == 1

    # Same key, another body: refused without touching the run.
    code, payload = await api.post("/run", {**body, "branch": "other"}, headers=headers)
    assert code == 422
    assert_envelope(payload, "IDEMPOTENCY_KEY_REUSED")
    # Key order and spacing do not matter.
    code, payload = await api.post("/run", {"branch": "main", "repo_url": url}, headers=headers)
    assert code == 202 and payload["run_id"] == run_id and payload["created"] is False


async def test_api_without_key_each_trigger_is_a_new_run(api: Api, tmp_path: Path) -> None:
    body = {"repo_url": "https://example.invalid/a", "branch": "main"}
    (_, first), (_, second) = await asyncio.gather(api.post("/run", body), api.post("/run", body))
    assert first["run_id"] != second["run_id"]
    assert first["created"] and second["created"]


@pytest.mark.usefixtures("worker")
async def test_api_idempotency_holds_after_run_finished(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    body = {"repo_url": url, "branch": "main"}
    headers = {"Idempotency-Key": "finish-then-retry"}
    _, first = await api.post("/run", body, headers=headers)
    await api.wait_gate(first["run_id"], "anchor")
    await api.decide(first["run_id"], "anchor", False, "stop")
    await api.wait_state(first["run_id"], "failed")
    code, again = await api.post("/run", body, headers=headers)
    assert code == 202 and again["run_id"] == first["run_id"] and again["created"] is False


@pytest.mark.usefixtures("worker")
async def test_api_gate_not_pending_is_409(api: Api, tmp_path: Path) -> None:
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    code, payload = await api.decide(run_id, "M-001", True)
    assert code == 409
    assert_envelope(payload, "CONFLICT")
    code, payload = await api.post(f"/v1/runs/{run_id}/gates/anchor/decision", {"approved": "yes"})
    assert code == 422
    code, first = await api.decide(run_id, "anchor", True, "fine")
    code2, second = await api.decide(run_id, "anchor", True, "fine again")
    assert (code, code2) == (200, 200)
    assert second["decided_at"] == first["decided_at"]  # the first decision stands
    await api.wait_state(run_id, "completed")


@pytest.mark.usefixtures("worker")
async def test_api_run_controls_answer_the_declared_run_status(api: Api, tmp_path: Path) -> None:
    # pause, resume and budget declare RunStatus (the workflow's status with the run's URLs) as their answer, as
    # GET /v1/runs/{run_id} does: each answer must be that published shape.
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    _, body = await api.post("/v1/runs", {"repo_url": url, "branch": "main"})
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")
    validator = schemas.validator("api.schema.json", "RunStatus")
    for control, payload in (("pause", {"reason": "x"}), ("resume", {}), ("budget", {"extra_attempts": 1})):
        code, answer = await api.post(f"/v1/runs/{run_id}/{control}", payload)
        assert code == 200, (control, answer)
        assert not list(validator.iter_errors(answer)), (control, answer)
        assert answer["status_url"].endswith(f"/v1/runs/{run_id}") and answer["events_url"].endswith("/events")
    await api.decide(run_id, "anchor", False, "done")
    await api.wait_state(run_id, "failed")


async def test_api_idempotency_key_header_validated(api: Api) -> None:
    code, payload = await api.post(
        "/run", {"repo_url": "https://x/y", "branch": "main"}, headers={"Idempotency-Key": "x" * 300}
    )
    assert code == 400
    assert_envelope(payload, "VALIDATION_ERROR")


async def test_api_no_worker_to_answer_is_503(make_api: ApiFactory, settings: Settings, tmp_path: Path) -> None:
    # No worker polls this task queue: the run exists but nobody can answer its status query or an update.
    api = await make_api(settings.model_copy(update={"temporal_rpc_timeout_s": 0.5}))
    _, body = await api.post("/run", {"repo_url": "https://example.invalid/x", "branch": "main"})
    code, payload = await api.get(f"/v1/runs/{body['run_id']}")
    assert code == 503, payload
    assert_envelope(payload, "SERVICE_UNAVAILABLE")
    code, payload = await api.post(f"/v1/runs/{body['run_id']}/pause", {"reason": "x"})
    assert code == 503, payload


async def test_api_nul_characters_in_strings_are_refused(api: Api) -> None:
    for body in (
        {"repo_url": "https://x/y\u0000", "branch": "main"},
        {"repo_url": "https://x/y", "branch": "main", "correlation_id\u0000": "x"},
    ):
        code, payload = await api.post("/run", body)
        assert code == 422, payload
        assert_envelope(payload, "VALIDATION_ERROR")
        assert "NUL" in payload["error"]["message"]
