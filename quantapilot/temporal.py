"""Temporal client construction and the names shared by workflows, worker and API."""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

from opentelemetry.trace import TracerProvider
from temporalio.client import Client
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.service import TLSConfig

from quantapilot.settings import Settings
from quantapilot.tracing import shutdown_tracing, temporal_interceptor

# Custom search attributes (registered from temporal-dev.yaml by `qp up` and by `qp temporal setup`).
SA_WORKSPACE = SearchAttributeKey.for_keyword("QpWorkspace")
SA_RUN_KIND = SearchAttributeKey.for_keyword("QpRunKind")
SA_REPO_URL = SearchAttributeKey.for_keyword("QpRepoUrl")
SA_BRANCH = SearchAttributeKey.for_keyword("QpBranch")
SA_CORRELATION_ID = SearchAttributeKey.for_keyword("QpCorrelationId")
SA_ACCOUNT_ID = SearchAttributeKey.for_keyword("QpAccountId")
SA_STAGE = SearchAttributeKey.for_keyword("QpStage")
SA_STATE = SearchAttributeKey.for_keyword("QpState")
SA_PENDING_GATE = SearchAttributeKey.for_keyword("QpPendingGate")


def exit_without_teardown(code: int) -> NoReturn:
    """End a process that used the Temporal SDK once its work is done, skipping interpreter teardown.

    The SDK's runtime threads can still call into Python while the interpreter finalizes, which aborts the
    process ("PyGILState_Release: thread state ... must be current", temporalio/sdk-python#300; seen in CI after
    a successful ``qp temporal setup``). Buffered spans, output and log handlers are flushed first, so nothing
    exported or printed is lost (``os._exit`` runs no ``atexit`` hook, the tracer provider's included).

    Args:
        code: The process exit status.
    """
    shutdown_tracing()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def tls_config(settings: Settings) -> bool | TLSConfig:
    """The TLS settings of the Temporal connection.

    A client certificate and key mean mTLS; an API key (Temporal Cloud) or a CA file alone mean TLS that checks
    the server; nothing means plaintext, as the local dev server speaks. A CA file always applies.

    Args:
        settings: Service settings (cert and key are validated to come together).

    Returns:
        What ``Client.connect(tls=...)`` takes.
    """
    ca = settings.temporal_tls_ca.read_bytes() if settings.temporal_tls_ca else None
    if settings.temporal_tls_cert and settings.temporal_tls_key:
        return TLSConfig(
            client_cert=settings.temporal_tls_cert.read_bytes(),
            client_private_key=settings.temporal_tls_key.read_bytes(),
            server_root_ca_cert=ca,
        )
    if ca is not None:
        return TLSConfig(server_root_ca_cert=ca)
    return bool(settings.temporal_api_key)


async def connect(
    settings: Settings, *, sdk_metrics: bool = False, tracer_provider: TracerProvider | None = None
) -> Client:
    """Connect to Temporal with the pydantic data converter, the configured TLS or API key, and tracing.

    The client carries Temporal's OpenTelemetry interceptor (quantapilot/tracing.py): a workflow it starts runs in
    the caller's trace, and a worker built on it traces workflows and activities. With tracing off its spans are
    the no-op API's, which record nothing.

    Args:
        settings: Service settings.
        sdk_metrics: Serve the SDK's own Prometheus metrics on ``QP_TEMPORAL_METRICS_PORT`` (the worker does;
            the API and the CLI on the same host must not try to bind the same port).
        tracer_provider: Where the spans go; the process's global provider when None.

    Returns:
        A connected client (one per process; it is safe to share across tasks).
    """
    tls = tls_config(settings)
    runtime = None
    if sdk_metrics and settings.temporal_metrics_port:
        # The SDK's own metrics (task latencies, poller counts, cache size) on their own Prometheus endpoint.
        runtime = Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(bind_address=f"127.0.0.1:{settings.temporal_metrics_port}")
            )
        )
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        tls=tls,
        api_key=settings.temporal_api_key,
        runtime=runtime,
        interceptors=[temporal_interceptor(tracer_provider)],
    )
