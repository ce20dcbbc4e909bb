"""Deadlines for slow clients: the request-body deadline (408) and aiohttp's connection timers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from api.errors import error_response
from api.tracing import TRACE_ID
from quantapilot.errors import ErrorCode
from quantapilot.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Longest time an unread request body is drained after an early answer, in seconds.
LINGER_MAX_S = 2.0


def body_deadline_middleware(timeout_s: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Build the middleware that reads a request body within ``timeout_s`` seconds, else answers 408.

    aiohttp waits for a body indefinitely; a client that sends its headers and then stalls would hold a handler
    forever. Reading here caches the body on the request, so handlers' later ``read()`` calls return at once.
    The body size limit still applies (aiohttp raises 413 while reading).
    """

    @web.middleware
    async def _deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.can_read_body:
            try:
                await asyncio.wait_for(request.read(), timeout=timeout_s)
            except TimeoutError:
                message = f"request body not received within {timeout_s:g}s"
                response = error_response(408, ErrorCode.REQUEST_TIMEOUT, message, request[TRACE_ID])
                # The rest of the body may still arrive: the connection cannot carry another request.
                response.force_close()
                return response
        return await handler(request)

    return _deadline


def handler_args(settings: Settings) -> dict[str, Any]:
    """Request-handler options for aiohttp (``web.Application(handler_args=...)``), the same in tests and production.

    ``keepalive_timeout`` starts when a connection opens, so a client that never completes its request head is
    closed after it, as is an idle keep-alive connection. After an early answer (408, 413) aiohttp keeps reading
    and discarding the unread body for ``lingering_time`` so the client sees the answer; a stalled client would
    hold the connection that long, so it is bounded by the body deadline (and 2 s).
    """
    return {
        "keepalive_timeout": settings.http_keepalive_s,
        "lingering_time": min(LINGER_MAX_S, settings.http_body_timeout_s),
    }
