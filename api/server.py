"""Running the API server process."""

from __future__ import annotations

import logging

from aiohttp import web

from api.app import create_app
from quantapilot.observability import setup_logging
from quantapilot.secretbox import SecretKeyError
from quantapilot.settings import Settings
from quantapilot.temporal import exit_without_teardown
from quantapilot.tracing import setup_tracing


def main() -> None:
    """Serve the API until SIGINT/SIGTERM (aiohttp shuts down gracefully on both)."""
    settings = Settings()
    setup_logging(fmt=settings.log_format, level=settings.log_level)
    setup_tracing("quantapilot-api", settings)
    try:
        app = create_app(settings)
    except SecretKeyError as exc:
        logging.getLogger("quantapilot.api").error("not starting: %s", exc)
        raise SystemExit(2) from None
    web.run_app(
        app,
        host=settings.api_host,
        port=settings.api_port,
        print=None,
        access_log=None,  # the error middleware logs one line per request, without query strings
        shutdown_timeout=10,
    )
    # aiohttp has shut down gracefully; the SDK runtime's threads must not meet interpreter teardown.
    exit_without_teardown(0)
