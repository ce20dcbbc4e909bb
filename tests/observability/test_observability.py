"""JSON logs carry the run context into activities; traceparent becomes the run's trace id; /metrics counts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantapilot.models import GateDecisionInput, RunKind
from quantapilot.runs.ids import workflow_id
from tests.support import Api, JsonLogLines, captured_json_logs, eventually, make_remote

TRACE = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def json_logs() -> Iterator[JsonLogLines]:
    with captured_json_logs() as handler:
        yield handler


@pytest.mark.usefixtures("worker")
async def test_observability_activity_logs_carry_run_context_and_trace(
    api: Api, tmp_path: Path, json_logs: JsonLogLines
) -> None:
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    resp = await api.client.post(
        "/run",
        json={"repo_url": url, "branch": "main", "correlation_id": "obs-1"},
        headers={**api.headers(), "traceparent": f"00-{TRACE}-b7ad6b7169203331-01"},
    )
    body = await resp.json()
    assert resp.headers["X-Trace-Id"] == TRACE
    run_id = body["run_id"]
    await api.wait_gate(run_id, "anchor")

    cloned = [line for line in json_logs.lines if line["message"].startswith("cloned main")]
    assert cloned, [line["message"] for line in json_logs.lines][-20:]
    line = cloned[0]
    assert line["run_id"] == run_id
    assert line["workspace"] == "default"
    assert line["correlation_id"] == "obs-1"
    assert line["traceId"] == TRACE
    assert line["level"] == "INFO"
    # The API's request line carries the same trace id.
    request_lines = [e for e in json_logs.lines if e["logger"] == "quantapilot.api" and e.get("route") == "/run"]
    assert any(e["traceId"] == TRACE and e["status"] == 202 and e["run_id"] == run_id for e in request_lines)
    # A request to the run's routes names the run in its line; a malformed id from the path never gets in.
    await api.get(f"/v1/runs/{run_id}")
    await api.get("/v1/runs/rr_not-an-id")
    status_lines = [e for e in json_logs.lines if e.get("route") == "/v1/runs/{run_id}"]
    assert [e.get("run_id") for e in status_lines[-2:]] == [run_id, None]
    # No token in any line.
    assert not any(api.token in json.dumps(e) for e in json_logs.lines)


async def test_observability_metrics_endpoint_counts_requests(api: Api) -> None:
    await api.get("/v1/runs/rr_" + "1" * 32)
    resp = await api.client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert 'qp_api_requests_total{method="GET",route="/v1/runs/{run_id}",status="404"}' in text
    assert "qp_api_request_seconds_bucket" in text


def sample(name: str, labels: dict[str, str]) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.usefixtures("worker")
async def test_observability_run_metrics_count_outcomes_and_gate_waits(api: Api, tmp_path: Path) -> None:
    repo = {"kind": "repository"}
    before = (
        sample("qp_runs_total", {**repo, "outcome": "started"}),
        sample("qp_runs_total", {**repo, "outcome": "completed"}),
        sample("qp_gate_wait_seconds_count", repo),
    )
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    _, body = await api.post("/run", {"repo_url": url, "branch": "main"})
    await api.wait_gate(body["run_id"], "anchor")
    await api.decide(body["run_id"], "anchor", True)
    await api.wait_state(body["run_id"], "completed")
    after = (
        sample("qp_runs_total", {**repo, "outcome": "started"}),
        sample("qp_runs_total", {**repo, "outcome": "completed"}),
        sample("qp_gate_wait_seconds_count", repo),
    )
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]


async def test_observability_request_line_cannot_be_forged(api: Api, json_logs: JsonLogLines) -> None:
    resp = await api.client.get("/v1/runs/x%0d%0aINFO forged line", headers=api.headers())
    assert resp.status == 404
    lines = [e["message"] for e in json_logs.lines if e["logger"] == "quantapilot.api"]
    assert lines
    assert all("\n" not in m and "\r" not in m for m in lines)
    assert any("\\r\\nINFO forged line" in m for m in lines)


@pytest.mark.usefixtures("worker")
async def test_observability_workflow_log_lines_carry_correlation_and_trace(
    api: Api, client, tmp_path: Path, json_logs: JsonLogLines
) -> None:
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    resp = await api.client.post(
        "/run",
        json={"repo_url": url, "branch": "main", "correlation_id": "obs-wf"},
        headers={**api.headers(), "traceparent": f"00-{TRACE}-b7ad6b7169203331-01"},
    )
    run_id = (await resp.json())["run_id"]
    await api.wait_gate(run_id, "anchor")
    # A signal for a gate that is not pending is ignored, with a warning from the workflow itself.
    handle = client.get_workflow_handle(workflow_id(RunKind.REPOSITORY, "default", run_id))
    await handle.signal("decide_gate", GateDecisionInput(gate="no_such_gate", approved=True, reason="x"))
    lines = await eventually(
        lambda: _async([e for e in json_logs.lines if e["message"].startswith("gate decision ignored")]),
        bool,
        what="the workflow's warning",
    )
    line = lines[0]
    assert (line["run_id"], line["workspace"], line["level"]) == (run_id, "default", "WARNING")
    assert (line["correlation_id"], line["traceId"]) == ("obs-wf", TRACE)


async def _async(value: list[dict]) -> list[dict]:
    return value
