"""The one log line written for each request."""

from __future__ import annotations

import logging

from aiohttp import web

from api.request_metrics import route_label
from api.tracing import RUN_ID

log = logging.getLogger("quantapilot.api")


def log_request(request: web.Request, status: int, elapsed_s: float) -> None:
    """Log method, path, status and duration, with the route template and the run the request created or addressed.

    Path only, never the query string or headers: they may carry tokens.
    """
    log.info(
        "%s %s %s %.1fms",
        request.method,
        # Escaped: a percent-encoded CR/LF in the path must not forge a second line in text logs.
        request.path.encode("unicode_escape").decode("ascii"),
        status,
        elapsed_s * 1000,
        extra={
            "status": status,
            "route": route_label(request),
            **({"run_id": request[RUN_ID]} if RUN_ID in request else {}),
        },
    )
