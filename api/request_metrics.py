"""Prometheus counters and latencies of the API's requests, by route template, method and status."""

from __future__ import annotations

from aiohttp import web

from quantapilot.observability import API_LATENCY, API_REQUESTS


def route_label(request: web.Request) -> str:
    """The matched route's template, not the path: bounded label cardinality (``unmatched`` for none)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def observe(request: web.Request, status: int, elapsed_s: float) -> None:
    """Count the answered request and record its latency."""
    route = route_label(request)
    API_REQUESTS.labels(route, request.method, str(status)).inc()
    API_LATENCY.labels(route, request.method).observe(elapsed_s)
