"""The error envelope and the middleware that turns every failure into it, traces and logs each request.

The trace id (``api/tracing.py``), the request's log line (``api/access_log.py``) and its metrics
(``api/request_metrics.py``) are this middleware's too: it is the outermost, so they see the status it answers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError
from temporalio.service import RPCError, RPCStatusCode

from api.access_log import log_request
from api.request_metrics import observe
from api.tracing import TRACE_ID, log_context, trace_id_for
from quantapilot.errors import ApiError, ErrorCode, error_document
from quantapilot.observability import RUN_CONTEXT

log = logging.getLogger("quantapilot.api")

#: Seconds a client is asked to wait after a 503 for an unavailable database.
DB_RETRY_AFTER_S = 5

_TEMPORAL_UNAVAILABLE = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
    }
)


def temporal_unavailable(exc: RPCError) -> bool:
    """Whether a Temporal error means "not now" (server or worker away), which the caller may retry.

    Besides the transport statuses, a query whose task queue has had no poller for a while is answered by the
    server itself, before the caller's deadline, with FAILED_PRECONDITION "no poller seen for task queue
    recently, worker may be down": the same condition as a query that times out waiting for a worker.
    """
    if exc.status in _TEMPORAL_UNAVAILABLE:
        return True
    return exc.status == RPCStatusCode.FAILED_PRECONDITION and "no poller seen" in exc.message.lower()


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


def envelope(code: str, message: str, trace_id: str, details: Any = None) -> dict[str, Any]:
    """Build the error envelope ``{"error": {code, message, traceId, timestamp, details?}}``."""
    return error_document(code, message, trace_id, datetime.now(UTC), details)


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


def _unavailable(message: str, trace_id: str) -> web.Response:
    """503 ``SERVICE_UNAVAILABLE`` with ``Retry-After``: a dependency is away and the request may succeed later."""
    return error_response(
        503, ErrorCode.SERVICE_UNAVAILABLE, message, trace_id, headers={"Retry-After": str(DB_RETRY_AFTER_S)}
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give each request a trace id, log one line for it, and answer every error with the envelope."""
    trace_id = trace_id_for(request)
    request[TRACE_ID] = trace_id
    # Every log line written while handling the request carries its traceId, and the run_id of a run's route.
    context_token = RUN_CONTEXT.set(log_context(request, trace_id))
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
        return _unavailable("the database is unavailable; retry later", trace_id)
    except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
        # Temporal unreachable or slow to answer (server down, no worker to answer a query or an update).
        if isinstance(exc, RPCError) and not temporal_unavailable(exc):
            status = 500
            log.exception("temporal error", extra={"path": request.path})
            return error_response(500, ErrorCode.SERVER_ERROR, "internal error", trace_id)
        status = 503
        log.warning("temporal unavailable: %s", type(exc).__name__)
        return _unavailable("the workflow service did not answer in time; retry later", trace_id)
    except Exception:
        status = 500
        log.exception("unhandled error", extra={"traceId": trace_id, "path": request.path})
        return error_response(500, ErrorCode.SERVER_ERROR, "internal error", trace_id)
    finally:
        elapsed = time.perf_counter() - started
        observe(request, status, elapsed)
        log_request(request, status, elapsed)
        RUN_CONTEXT.reset(context_token)
