"""Trace ids of requests, their OpenTelemetry span, and the context every log line written while handling one carries.

The request span comes from :func:`tracing_middleware`, a small middleware over the OpenTelemetry API rather than
``opentelemetry-instrumentation-aiohttp-server``: that package's middleware only works after its instrumentor has
replaced ``aiohttp.web.Application`` process-wide (its module globals are set there), which does not fit
:func:`api.app.create_app` building its application with an explicit middleware list, and it records its own
metrics through the OpenTelemetry metrics API, where ours are Prometheus (``api/request_metrics.py``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, StatusCode, TracerProvider

from api.request_metrics import route_label
from quantapilot.tracing import current_trace_id, tracer

TRACE_ID = web.RequestKey("trace_id", str)
#: The run a request created or addressed, for its log line (set by the trigger routes once the id is known).
RUN_ID = web.RequestKey("run_id", str)
# Only well-formed run ids from a path go into log lines: the path is the caller's text.
_RUN_ID = re.compile(r"^[a-z]{2}_[0-9a-f]{32}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


def trace_id_for(request: web.Request) -> str:
    """The request's trace id (32 lowercase hex digits).

    With tracing on, the trace id of the request's span (which continues a valid W3C ``traceparent``); with it
    off, the ``traceparent``'s trace id when the header is valid, else a fresh one.
    """
    current = current_trace_id()
    if current is not None:
        return current
    header = request.headers.get("traceparent", "")
    match = _TRACEPARENT.match(header.strip().lower())
    if match and match.group(1) != "0" * 32:
        return match.group(1)
    return uuid.uuid4().hex


def log_context(request: web.Request, trace_id: str) -> dict[str, str]:
    """The fields of every log line about the request: its ``traceId``, and the ``run_id`` of a run's route."""
    context: dict[str, str] = {"traceId": trace_id}
    path_run_id = request.match_info.get("run_id", "")
    if _RUN_ID.match(path_run_id):
        context["run_id"] = path_run_id
    return context


def tracing_middleware(provider: TracerProvider | None = None) -> Middleware:
    """The middleware giving each request a server span, the parent of every span its handling starts.

    It runs outside the error middleware, so the span ends with the status the client gets, and the trace id
    :func:`trace_id_for` reads is the span's. With tracing off the span is the no-op API's.

    Args:
        provider: The tracer provider; the process's global one when None.

    Returns:
        The middleware.
    """
    request_tracer = tracer(provider)

    @web.middleware
    async def _middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_label(request)
        with request_tracer.start_as_current_span(
            # The route template, not the path: span names stay few, and a path's ids are the caller's text.
            f"{request.method} {route}",
            context=propagate.extract(request.headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path},
        ) as span:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                # Only redirects get past the error middleware, which answers every error itself: raised after
                # the span ends, so it is not recorded as a failure.
                span.set_attribute("http.response.status_code", exc.status)
                redirect = exc
            else:
                span.set_attribute("http.response.status_code", response.status)
                if RUN_ID in request:
                    span.set_attribute("quantapilot.run_id", request[RUN_ID])
                if response.status >= 500:
                    span.set_status(StatusCode.ERROR)
                return response
        raise redirect

    return _middleware
