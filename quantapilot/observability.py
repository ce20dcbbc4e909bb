"""Structured logs, run context propagation through Temporal headers, and Prometheus metrics.

The run context (run_id, workspace, correlation_id, traceId) travels from the workflow input into every activity
through a Temporal header set by :class:`RunContextInterceptor`, so every log line an activity writes carries it; the
API puts the request's traceId in the same context. :class:`JsonFormatter` writes one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace
from prometheus_client import Counter, Histogram
from temporalio import workflow
from temporalio.converter import default as default_converter
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    Interceptor,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from quantapilot.runs.ids import parse_workflow_id

CONTEXT_HEADER = "qp-run-context"
CONTEXT_KEYS = ("run_id", "workspace", "correlation_id", "traceId", "account_id")
RUN_CONTEXT: ContextVar[Mapping[str, str]] = ContextVar("qp_run_context", default={})  # noqa: B039 - read-only default
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

# ----- metrics (prometheus_client's default registry; the API serves /metrics, the worker its own port) -----------

API_REQUESTS = Counter("qp_api_requests_total", "API requests", ["route", "method", "status"])
API_LATENCY = Histogram(
    "qp_api_request_seconds",
    "API request latency",
    ["route", "method"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RUN_EVENTS = Counter("qp_run_events_total", "Run events recorded, by run kind and event type", ["kind", "type"])
RUNS = Counter("qp_runs_total", "Runs started, completed, failed or cancelled, by kind", ["kind", "outcome"])
GATE_WAIT = Histogram(
    "qp_gate_wait_seconds",
    "Time from gate.requested to gate.decided",
    ["kind"],
    buckets=(1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600),
)
WEBHOOK_DELIVERIES = Counter("qp_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"])
TELEMETRY_ACCEPTED = Counter("qp_telemetry_events_accepted_total", "Telemetry events accepted")
RATE_LIMIT_FAIL_OPEN = Counter(
    "qp_rate_limit_fail_open_total",
    "API requests admitted without a rate-limit check: the limits' Redis was unreachable",
)


# ----- context -----------------------------------------------------------------------------------------------------


def context_from_workflow_id(workflow_id: str) -> dict[str, str]:
    """run_id and workspace parsed from ``<kind>/<workspace>/<run_id>`` workflow ids."""
    parsed = parse_workflow_id(workflow_id)
    return {"workspace": parsed[0], "run_id": parsed[1]} if parsed else {}


def context_from_input(arg: Any) -> dict[str, str]:
    """The run context carried by a workflow input model (attributes that exist and are set)."""
    found: dict[str, str] = {}
    for key, attr in (
        ("run_id", "run_id"),
        ("workspace", "workspace"),
        ("correlation_id", "correlation_id"),
        ("traceId", "trace_id"),
        ("account_id", "account_id"),
    ):
        value = getattr(arg, attr, None)
        if isinstance(value, str) and value:
            found[key] = value
    return found


class _WorkflowOutbound(WorkflowOutboundInterceptor):
    def __init__(self, next_: WorkflowOutboundInterceptor, inbound: _WorkflowInbound) -> None:
        super().__init__(next_)
        self._inbound = inbound

    def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
        ctx = self._inbound.context or context_from_workflow_id(workflow.info().workflow_id)
        input.headers = {**input.headers, CONTEXT_HEADER: workflow.payload_converter().to_payload(ctx)}
        return super().start_activity(input)


class _WorkflowInbound(WorkflowInboundInterceptor):
    context: dict[str, str] = {}

    def init(self, outbound: WorkflowOutboundInterceptor) -> None:
        super().init(_WorkflowOutbound(outbound, self))

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        # The context is plain data derived from the input, so it is the same on replay.
        self.context = context_from_workflow_id(workflow.info().workflow_id) | (
            context_from_input(input.args[0]) if input.args else {}
        )
        return await super().execute_workflow(input)


class _ActivityInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        payload = input.headers.get(CONTEXT_HEADER)
        ctx: dict[str, str] = {}
        if payload is not None:
            decoded = default_converter().payload_converter.from_payload(payload, dict)
            ctx = {k: str(v) for k, v in decoded.items() if k in CONTEXT_KEYS and v}
        token = RUN_CONTEXT.set(ctx)
        try:
            return await super().execute_activity(input)
        finally:
            RUN_CONTEXT.reset(token)


class RunContextInterceptor(Interceptor):
    """Carries the run context from workflow inputs into every activity the workflow starts."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        """Wrap activity execution so the header becomes the task's run context."""
        return _ActivityInbound(next)

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput) -> type[WorkflowInboundInterceptor]:
        """Wrap workflows so their activity starts carry the header."""
        return _WorkflowInbound


# ----- logging -----------------------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the run context and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as JSON."""
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(RUN_CONTEXT.get())
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            # Tracing on: the line names its span, and its trace where the run context did not (the same id).
            entry.setdefault("traceId", trace.format_trace_id(span.trace_id))
            entry["spanId"] = trace.format_span_id(span.span_id)
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key.startswith("_"):
                continue
            if key in ("temporal_workflow", "temporal_activity") and isinstance(value, dict):
                entry.update({k: v for k, v in context_from_workflow_id(str(value.get("workflow_id", ""))).items()})
                entry[key] = {
                    k: v for k, v in value.items() if k in ("workflow_id", "workflow_type", "activity_type", "attempt")
                }
                continue
            entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(*, fmt: str = "json", level: str = "INFO") -> None:
    """Configure the root logger for a service process.

    Args:
        fmt: ``json`` (one object per line, for log shippers) or ``text`` (for people).
        level: Log level name.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic narrates every start-up check at INFO; its warnings and errors still come through.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
