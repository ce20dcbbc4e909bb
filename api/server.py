"""Running the API server process."""

from __future__ import annotations

import logging

from aiohttp import web

from api.app import create_app
from quantapilot.settings import Settings


def main() -> None:
    """Serve the API until SIGINT/SIGTERM (aiohttp shuts down gracefully on both)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    web.run_app(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        print=None,
        access_log=None,  # the error middleware logs one line per request, without query strings
        shutdown_timeout=10,
    )
