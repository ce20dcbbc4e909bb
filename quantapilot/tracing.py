"""OpenTelemetry tracing: the one module that sets up the tracer provider and Temporal's tracing interceptor.

Tracing is off by default: nothing is exported and no span is recorded (the OpenTelemetry API's no-op provider).
A process turns it on at start with :func:`setup_tracing` when ``QP_TRACING=true`` or the standard
``OTEL_TRACES_EXPORTER=otlp`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables
ask for it; the OTLP/HTTP exporter then reads its own ``OTEL_EXPORTER_OTLP_*`` settings (docs/DEPLOY.md).

Spans cross process boundaries through Temporal headers (``temporalio.contrib.opentelemetry.TracingInterceptor``
on every client and worker): an API request's span is the parent of ``StartWorkflow``, which is the parent of
``RunWorkflow``, of each ``StartActivity`` and ``RunActivity``. The run's ``trace_id`` in workflow inputs and events
stays: it is in the recorded histories and in the events consumers read, and webhook deliveries send it on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from temporalio.contrib.opentelemetry import TracingInterceptor

from quantapilot.settings import Settings

log = logging.getLogger("quantapilot.tracing")

#: The instrumentation scope of our spans (the API's request spans; Temporal's carry the same tracer).
TRACER_NAME = "quantapilot"
# The provider this process installed (flushed on shutdown); None while tracing is off.
_installed: TracerProvider | None = None


def tracing_enabled(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process exports traces.

    ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` turn it off whatever else says on; otherwise
    ``QP_TRACING``, ``OTEL_TRACES_EXPORTER`` naming ``otlp``, or an OTLP endpoint variable turn it on.

    Args:
        settings: Service settings (``tracing``).
        environ: The environment to read the standard OpenTelemetry variables from.

    Returns:
        True when spans are to be exported over OTLP.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = {name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()}
    if "none" in exporters:
        return False
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return settings.tracing or "otlp" in exporters or bool(endpoint)


def build_provider(
    service: str, exporter: SpanExporter, *, environ: Mapping[str, str] = os.environ, batch: bool = True
) -> TracerProvider:
    """A tracer provider that sends every span to ``exporter``.

    Args:
        service: ``service.name`` of the spans, unless ``OTEL_SERVICE_NAME`` (or ``OTEL_RESOURCE_ATTRIBUTES``)
            names one.
        exporter: Where finished spans go.
        environ: The environment the resource variables are read from.
        batch: Export in the background, in batches (services); False exports each span as it ends (tests).

    Returns:
        The provider (not installed as the global one; :func:`setup_tracing` does that).
    """
    named = environ.get("OTEL_SERVICE_NAME") or f"{SERVICE_NAME}=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    # Resource.create reads the OTEL_* resource variables itself; an attribute given here would override them.
    provider = TracerProvider(resource=Resource.create({} if named else {SERVICE_NAME: service}))
    if batch:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def setup_tracing(service: str, settings: Settings) -> TracerProvider | None:
    """Install the process's tracer provider with the OTLP/HTTP exporter, when tracing is enabled.

    Called once at process start (API, worker), before any client or application is built.

    Args:
        service: The process's ``service.name`` (``quantapilot-api``, ``quantapilot-worker``).
        settings: Service settings.

    Returns:
        The installed provider, or None when tracing is off (the API stays the no-op one).
    """
    global _installed
    if not tracing_enabled(settings):
        return None
    # Imported here: a process with tracing off never loads the exporter (protobuf, requests).
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = build_provider(service, OTLPSpanExporter())
    trace.set_tracer_provider(provider)
    _installed = provider
    log.info("tracing on: spans of %s are exported over OTLP/HTTP", service)
    return provider


def shutdown_tracing() -> None:
    """Export the spans still buffered and stop the exporter (processes that skip interpreter teardown)."""
    global _installed
    if _installed is not None:
        _installed.shutdown()
        _installed = None


def tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """Our tracer, from ``provider`` or else the global provider (which follows a later :func:`setup_tracing`)."""
    return (provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME)


def temporal_interceptor(provider: trace.TracerProvider | None = None) -> TracingInterceptor:
    """Temporal's tracing interceptor: spans for client calls, workflow runs and activities, linked by headers.

    Args:
        provider: The tracer provider; the global one when None (no-op while tracing is off).

    Returns:
        An interceptor for ``Client.connect(interceptors=...)`` (workers built on that client use it too) or for
        a worker of a client that has none.
    """
    return TracingInterceptor(tracer(provider))


def has_temporal_tracing(interceptors: Iterable[object]) -> bool:
    """Whether Temporal's tracing interceptor is among ``interceptors`` (a worker must not add a second)."""
    return any(isinstance(interceptor, TracingInterceptor) for interceptor in interceptors)


def current_trace_id() -> str | None:
    """The current span's trace id as 32 lowercase hex digits, or None without a valid span (tracing off)."""
    context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(context.trace_id) if context.is_valid else None


def current_span_id(trace_id: str) -> str | None:
    """The current span's id (16 hex digits) when it belongs to the trace ``trace_id``, else None."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid and trace.format_trace_id(context.trace_id) == trace_id:
        return trace.format_span_id(context.span_id)
    return None
