"""``GET /metrics``: this API process's Prometheus metrics, kept off the public port or behind a token.

Where it is served (docs/DEPLOY.md):

- ``QP_METRICS_PORT`` set: on its own listener, ``QP_METRICS_HOST:QP_METRICS_PORT`` (default host 127.0.0.1), started
  and stopped with the application; the API port answers 404 for it.
- otherwise on the API port, with ``Authorization: Bearer <QP_METRICS_TOKEN>`` required when that is set.
- otherwise: on the API port for everyone in development and tests, and not at all (404) in production, where
  request counts per route are nobody's business.

With a separate listener the token, when set, is required there too.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.errors import error_middleware
from api.keys import SETTINGS
from api.registry import Call, Endpoint, aiohttp_handler
from quantapilot.errors import ApiError, ErrorCode
from quantapilot.settings import Settings

METRICS_PATH = "/metrics"
log = logging.getLogger("quantapilot.api")


async def metrics(request: web.Request, call: Call) -> web.Response:
    """Prometheus metrics of this API process (requests by route and status, latencies)."""
    token = request.app[SETTINGS].metrics_token
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Constant time: the comparison must not tell a guesser how much of the token was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
            raise ApiError(
                401,
                ErrorCode.AUTHENTICATION_ERROR,
                "metrics need the metrics token",
                headers={"WWW-Authenticate": 'Bearer realm="quantapilot-metrics"'},
            )
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def served_on_api_port(settings: Settings) -> bool:
    """Whether the API port serves ``/metrics`` (see the module docstring)."""
    if settings.metrics_port is not None:
        return False
    return settings.metrics_token is not None or settings.environment != "production"


def setup(app: web.Application, settings: Settings, endpoint: Endpoint) -> None:
    """Serve the metrics ``endpoint`` on a listener of its own when the settings say so.

    On the API port the registry mounts it (``served_on_api_port`` is the endpoint's ``mounted``).
    """
    if served_on_api_port(settings):
        return
    if settings.metrics_port is None:
        log.info("/metrics is off in production without QP_METRICS_TOKEN or QP_METRICS_PORT")
        return
    port, host = settings.metrics_port, settings.metrics_host

    async def _listener(app: web.Application) -> AsyncIterator[None]:
        metrics_app = web.Application(middlewares=[error_middleware])
        metrics_app[SETTINGS] = settings
        metrics_app.router.add_get(endpoint.path, aiohttp_handler(endpoint))
        runner = web.AppRunner(metrics_app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        log.info("metrics on http://%s:%d%s", host, port, endpoint.path)
        yield
        await runner.cleanup()

    app.cleanup_ctx.append(_listener)
