"""Trace ids of requests and the context every log line written while handling one carries."""

from __future__ import annotations

import re
import uuid

from aiohttp import web

TRACE_ID = web.RequestKey("trace_id", str)
#: The run a request created or addressed, for its log line (set by the trigger routes once the id is known).
RUN_ID = web.RequestKey("run_id", str)
# Only well-formed run ids from a path go into log lines: the path is the caller's text.
_RUN_ID = re.compile(r"^[a-z]{2}_[0-9a-f]{32}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def trace_id_for(request: web.Request) -> str:
    """The request's trace id: from a valid W3C ``traceparent`` header, else a fresh one."""
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
