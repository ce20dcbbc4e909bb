"""The error envelope, trace ids and the middleware that turns every failure into that envelope."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from quantapilot.errors import ApiError, ErrorCode
from quantapilot.observability import API_LATENCY, API_REQUESTS, RUN_CONTEXT

log = logging.getLogger("quantapilot.api")

TRACE_ID = web.RequestKey("trace_id", str)
#: The run a request created or addressed, for its log line (set by the trigger routes once the id is known).
RUN_ID = web.RequestKey("run_id", str)
# Only well-formed run ids from a path go into log lines: the path is the caller's text.
_RUN_ID = re.compile(r"^[a-z]{2}_[0-9a-f]{32}$")
#: Seconds a client is asked to wait after a 503 for an unavailable database.
DB_RETRY_AFTER_S = 5
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")

_TEMPORAL_UNAVAILABLE = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
    }
)

_HTTP_CODES: dict[int, ErrorCode] = {
    400: ErrorCode.VALIDATION_ERROR,
    401: ErrorCode.AUTHENTICATION_ERROR,
    403: ErrorCode.AUTHORIZATION_ERROR,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.VALIDATION_ERROR,
    429: ErrorCode.RATE_LIMIT_EXCEEDED,
    503: ErrorCode.SERVICE_UNAVAILABLE,
}


def trace_id_for(request: web.Request) -> str:
    """The request's trace id: from a valid W3C ``traceparent`` header, else a fresh one."""
    header = request.headers.get("traceparent", "")
    match = _TRACEPARENT.match(header.strip().lower())
    if match and match.group(1) != "0" * 32:
        return match.group(1)
    return uuid.uuid4().hex


def envelope(code: str, message: str, trace_id: str, details: Any = None) -> dict[str, Any]:
    """Build the error envelope ``{"error": {code, message, traceId, timestamp, details?}}``."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "traceId": trace_id,
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_response(
    status: int, code: str, message: str, trace_id: str, *, details: Any = None, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON error response carrying the envelope and the ``X-Trace-Id`` header."""
    return web.json_response(
        envelope(code, message, trace_id, details),
        status=status,
        headers={"X-Trace-Id": trace_id, **(headers or {})},
        dumps=json.dumps,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give each request a trace id, log one line for it, and answer every error with the envelope."""
    trace_id = trace_id_for(request)
    request[TRACE_ID] = trace_id
    # Every log line written while handling the request carries its traceId, and the run_id of a run's route.
    context: dict[str, str] = {"traceId": trace_id}
    path_run_id = request.match_info.get("run_id", "")
    if _RUN_ID.match(path_run_id):
        context["run_id"] = path_run_id
    context_token = RUN_CONTEXT.set(context)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Trace-Id"] = trace_id
        return response
    except ApiError as exc:
        status = exc.status
        return error_response(exc.status, exc.code, exc.message, trace_id, details=exc.details, headers=exc.headers)
    except web.HTTPException as exc:
        # aiohttp's own errors: unknown route, wrong method, body over the limit.
        status = exc.status
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, ErrorCode.SERVER_ERROR)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, exc.reason, trace_id, headers=headers)
    except (OperationalError, PoolTimeoutError) as exc:
        # The database is out of reach (refused or dropped connections, an unreadable or locked SQLite file, an
        # exhausted pool): the request may succeed later, so 503 with Retry-After rather than a 500 (or a 401
        # from a token lookup that never ran).
        status = 503
        log.warning("database unavailable: %s", type(exc.orig if isinstance(exc, OperationalError) else exc).__name__)
        return error_response(
            503,
            ErrorCode.SERVICE_UNAVAILABLE,
            "the database is unavailable; retry later",
            trace_id,
            headers={"Retry-After": str(DB_RETRY_AFTER_S)},
        )
    except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
        # Temporal unreachable or slow to answer (server down, no worker to answer a query or an update).
        if isinstance(exc, RPCError) and exc.status not in _TEMPORAL_UNAVAILABLE:
            status = 500
            log.exception("temporal error", extra={"path": request.path})
            return error_response(500, ErrorCode.SERVER_ERROR, "internal error", trace_id)
        status = 503
        log.warning("temporal unavailable: %s", type(exc).__name__)
        return error_response(
            503,
            ErrorCode.SERVICE_UNAVAILABLE,
            "the workflow service did not answer in time; retry later",
            trace_id,
            headers={"Retry-After": str(DB_RETRY_AFTER_S)},
        )
    except Exception:
        status = 500
        log.exception("unhandled error", extra={"traceId": trace_id, "path": request.path})
        return error_response(500, ErrorCode.SERVER_ERROR, "internal error", trace_id)
    finally:
        elapsed = time.perf_counter() - started
        resource = request.match_info.route.resource
        # The route template, not the path: bounded label cardinality.
        route = resource.canonical if resource is not None else "unmatched"
        API_REQUESTS.labels(route, request.method, str(status)).inc()
        API_LATENCY.labels(route, request.method).observe(elapsed)
        # Path only, never the query string or headers: they may carry tokens.
        log.info(
            "%s %s %s %.1fms",
            request.method,
            # Escaped: a percent-encoded CR/LF in the path must not forge a second line in text logs.
            request.path.encode("unicode_escape").decode("ascii"),
            status,
            elapsed * 1000,
            extra={"status": status, "route": route, **({"run_id": request[RUN_ID]} if RUN_ID in request else {})},
        )
        RUN_CONTEXT.reset(context_token)
