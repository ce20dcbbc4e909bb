"""OpenTelemetry: a request and the run it starts are one trace; with tracing off nothing is set up or exported."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy.engine import Engine
from temporalio.client import Client

import quantapilot.tracing as tracing
from api.app import create_app
from quantapilot.settings import Settings
from quantapilot.tokens import create_token
from quantapilot.tracing import build_provider, setup_tracing, temporal_interceptor, tracing_enabled
from tests.support import Api, JsonLogLines, captured_json_logs, make_remote
from worker import build_worker

HEX32 = re.compile(r"^[0-9a-f]{32}$")
PARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def json_logs() -> Iterator[JsonLogLines]:
    with captured_json_logs() as handler:
        yield handler


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return trace.format_trace_id(span.context.trace_id)


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, (name, sorted(s.name for s in spans))
    return found[0]


def parent_of(span: ReadableSpan, spans: Sequence[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None, f"{span.name} has no parent"
    parents = [s for s in spans if s.context is not None and s.context.span_id == span.parent.span_id]
    assert len(parents) == 1, f"the parent of {span.name} was not exported"
    return parents[0]


async def test_tracing_links_the_request_the_run_and_its_activities_in_one_trace(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    client: Client,
    settings: Settings,
    engine: Engine,
    tmp_path: Path,
    json_logs: JsonLogLines,
) -> None:
    exporter = InMemorySpanExporter()
    provider = build_provider("quantapilot-test", exporter, batch=False)
    # The session's client has no interceptor: this one traces like quantapilot.temporal.connect's.
    config = client.config()
    config["interceptors"] = [temporal_interceptor(provider)]
    traced = Client(**config)
    app = create_app(settings, client=traced, engine=engine, tracer_provider=provider)
    token, _ = create_token(engine, workspace="default", subject="tester")
    api = Api(client=await aiohttp_client(app), token=token)
    url = make_remote(tmp_path, {"README.md": "# x\n"})
    async with build_worker(traced, settings):
        resp = await api.client.post("/run", json={"repo_url": url, "branch": "main"}, headers=api.headers())
        assert resp.status == 202, await resp.text()
        run_id = (await resp.json())["run_id"]
        trace_id = resp.headers["X-Trace-Id"]
        await api.wait_gate(run_id, "anchor")
        events = await api.events(run_id)

    spans = exporter.get_finished_spans()
    request_span = one(spans, "POST /run")
    assert request_span.kind == SpanKind.SERVER
    assert request_span.parent is None
    assert hex_trace(request_span) == trace_id
    assert request_span.attributes is not None
    assert request_span.attributes["http.response.status_code"] == 202
    assert request_span.attributes["quantapilot.run_id"] == run_id
    # API request span -> StartWorkflow -> RunWorkflow and the workflow's StartActivity -> RunActivity, all in the
    # request's trace. (Temporal's TracingInterceptor ends RunWorkflow as it starts it, a zero-length span: what the
    # workflow does hangs from the context its start sent, StartWorkflow, beside RunWorkflow.)
    start = one(spans, "StartWorkflow:RepoRun")
    assert parent_of(start, spans) is request_span
    run = one(spans, "RunWorkflow:RepoRun")
    assert parent_of(run, spans) is start
    assert run.attributes is not None
    workflow = run.attributes["temporalWorkflowID"]
    assert workflow == f"repo-run/default/{run_id}"
    activities = [s for s in spans if s.name.startswith("RunActivity:")]
    # The run's events ride on its activities (the clone carries run.started) and record_events before the gate.
    assert {"RunActivity:clone_repository", "RunActivity:record_events"} <= {s.name for s in activities}
    for activity in activities:
        assert activity.attributes is not None and activity.attributes["temporalWorkflowID"] == workflow
        scheduled = parent_of(activity, spans)
        assert scheduled.name == activity.name.replace("RunActivity:", "StartActivity:")
        assert parent_of(scheduled, spans) is start
    in_workflow = [s for s in spans if s.name.startswith(("RunWorkflow:", "StartActivity:", "RunActivity:"))]
    assert {hex_trace(s) for s in [request_span, start, *in_workflow]} == {trace_id}
    # Polling the run's status is a trace per request, each with its query (answered by the workflow).
    polls = [s for s in spans if s.name == "GET /v1/runs/{run_id}"]
    assert polls and all(hex_trace(s) != trace_id for s in polls)
    answered = {hex_trace(s) for s in spans if s.name.startswith("HandleQuery:")}
    assert answered and answered <= {hex_trace(s) for s in polls}
    # The events carry that trace id (webhook deliveries send it on as traceparent).
    assert events and {e["trace_id"] for e in events} == {trace_id}
    # An activity's log line names the trace and the activity's span.
    cloned = [line for line in json_logs.lines if line["message"].startswith("cloned main")]
    assert cloned and cloned[0]["traceId"] == trace_id
    activity_span_ids = {trace.format_span_id(s.context.span_id) for s in activities if s.context is not None}
    assert cloned[0]["spanId"] in activity_span_ids

    # An error's envelope carries its request span's trace id, which continues a caller's traceparent.
    exporter.clear()
    resp = await api.client.get(
        f"/v1/runs/rr_{'0' * 32}", headers=api.headers({"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"})
    )
    assert resp.status == 404
    error = (await resp.json())["error"]
    (span,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert span.name == "GET /v1/runs/{run_id}"
    assert error["traceId"] == resp.headers["X-Trace-Id"] == hex_trace(span) == PARENT_TRACE
    assert span.parent is not None and trace.format_span_id(span.parent.span_id) == PARENT_SPAN
    assert span.attributes is not None and span.attributes["http.response.status_code"] == 404
    # Without a traceparent the trace is the span's own, fresh one.
    exporter.clear()
    resp = await api.client.get(f"/v1/runs/rr_{'0' * 32}", headers=api.headers())
    error = (await resp.json())["error"]
    (span,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert span.parent is None
    assert error["traceId"] == hex_trace(span) != PARENT_TRACE
    provider.shutdown()


async def test_tracing_off_exports_nothing_and_trace_ids_stay_well_formed(
    api: Api, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    installed: list[object] = []
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    assert setup_tracing("quantapilot-api", settings) is None
    assert installed == []
    # No SDK provider anywhere: the API's no-op one records (so exports) no span.
    assert not isinstance(trace.get_tracer_provider(), SdkTracerProvider)
    with trace.get_tracer("test").start_as_current_span("x") as span:
        assert not span.is_recording()

    resp = await api.client.get(f"/v1/runs/rr_{'0' * 32}", headers=api.headers())
    assert resp.status == 404
    first = (await resp.json())["error"]["traceId"]
    assert HEX32.match(first) and first != "0" * 32 and resp.headers["X-Trace-Id"] == first
    resp = await api.client.get(f"/v1/runs/rr_{'0' * 32}", headers=api.headers())
    second = (await resp.json())["error"]["traceId"]
    assert HEX32.match(second) and second != first
    # A caller's valid traceparent still names the trace; an invalid one is ignored.
    resp = await api.client.get(
        f"/v1/runs/rr_{'0' * 32}", headers=api.headers({"traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"})
    )
    assert (await resp.json())["error"]["traceId"] == PARENT_TRACE
    resp = await api.client.get(f"/v1/runs/rr_{'0' * 32}", headers=api.headers({"traceparent": "00-zz-yy-01"}))
    assert HEX32.match((await resp.json())["error"]["traceId"])


@pytest.mark.parametrize(
    ("qp_tracing", "environ", "enabled"),
    [
        (False, {}, False),
        (True, {}, True),
        (False, {"OTEL_TRACES_EXPORTER": "otlp"}, True),
        (False, {"OTEL_TRACES_EXPORTER": "console,otlp"}, True),
        (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        (False, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        (True, {"OTEL_TRACES_EXPORTER": "none"}, False),
        (True, {"OTEL_SDK_DISABLED": "true"}, False),
        (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
    ],
)
def test_tracing_is_off_unless_asked_for(qp_tracing: bool, environ: dict[str, str], enabled: bool) -> None:
    assert tracing_enabled(Settings(tracing=qp_tracing), environ) is enabled


def test_tracing_on_installs_an_otlp_provider_named_after_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    installed: list[SdkTracerProvider] = []
    # Not the real global: it can be set once per process, and other tests in this one run with tracing off.
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    provider = setup_tracing("quantapilot-worker", Settings(tracing=True))
    try:
        assert provider is not None and installed == [provider]
        assert provider.resource.attributes["service.name"] == "quantapilot-worker"
        exporters = [type(p.span_exporter).__name__ for p in provider._active_span_processor._span_processors]  # type: ignore[attr-defined]
        assert exporters == ["OTLPSpanExporter"]
    finally:
        tracing.shutdown_tracing()
    assert tracing._installed is None
