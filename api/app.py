"""The aiohttp application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from opentelemetry.trace import TracerProvider
from sqlalchemy.engine import Engine
from temporalio.client import Client

from api import contract_routes, metrics_routes
from api.api_page import render_api_page
from api.auth import TokenCache, auth_middleware
from api.client_address import parse_networks
from api.deadlines import body_deadline_middleware, handler_args
from api.endpoints import ENDPOINTS, PAGES
from api.errors import error_middleware
from api.keys import ENGINE, KEYRING, REVIEW_KEY, SETTINGS, TEMPORAL, TOKENS
from api.openapi import build_openapi
from api.ratelimit import RateLimiter, anonymous_limit_middleware, rate_limit_middleware, rates_from
from api.registry import Page, Registry, add_pages
from api.tracing import tracing_middleware
from quantapilot.db import make_engine
from quantapilot.migrate import ensure_schema
from quantapilot.review.links import LinkKeyMissing, load_link_key
from quantapilot.secretbox import load_keyring
from quantapilot.settings import Settings
from quantapilot.temporal import connect
from quantapilot.webhooks.at_rest import encrypt_plaintext_secrets


def create_app(
    settings: Settings,
    *,
    client: Client | None = None,
    engine: Engine | None = None,
    endpoints: Registry = ENDPOINTS,
    pages: tuple[Page, ...] = PAGES,
    tracer_provider: TracerProvider | None = None,
) -> web.Application:
    """Build the API application.

    Args:
        settings: Service settings.
        client: A connected Temporal client to use; one is connected at start-up when None.
        engine: A database engine to use; one is created from ``settings.database_url`` when None.
        endpoints: The endpoints to serve and document (``api/endpoints.py``).
        pages: The HTML pages under /ui/ (``api/endpoints.py``).
        tracer_provider: Where the request spans (and those of the client connected here) go; the process's
            global provider when None (``quantapilot/tracing.py``; no-op while tracing is off).

    Returns:
        The application (resources open in its cleanup context).

    Raises:
        SecretKeyError: No usable secret key (in production one must be configured).
        ValueError: ``QP_TRUSTED_PROXIES`` holds something that is not an address or network, or
            ``QP_RATE_LIMIT_STORAGE_URI`` is not a Redis URL.
    """
    # First: a process without its key must not start (and must not have opened anything yet).
    keyring = load_keyring(settings)
    trusted_proxies = parse_networks(settings.trusted_proxies)
    owns_engine = engine is None
    engine = engine or make_engine(settings.database_url, statement_timeout_s=settings.db_statement_timeout_s)
    tokens = TokenCache(engine, settings.token_cache_seconds)
    # The request's span first: the error middleware inside it reads its trace id and answers every error, so the
    # span ends with the status the client gets.
    middlewares: list[Callable[..., Awaitable[web.StreamResponse]]] = [
        tracing_middleware(tracer_provider),
        error_middleware,
    ]
    limiter = RateLimiter(
        rates_from(settings), storage_uri=settings.rate_limit_storage_uri, key_prefix=settings.rate_limit_key_prefix
    )
    if settings.rate_limit_enabled:
        # Before authentication: requests without a valid token are limited per client address.
        middlewares.append(anonymous_limit_middleware(limiter, tokens, trusted_proxies=trusted_proxies))
    middlewares.append(auth_middleware(tokens, endpoints.public_paths()))
    if settings.rate_limit_enabled:
        # After authentication: buckets are per token.
        middlewares.append(rate_limit_middleware(limiter, run_path=settings.run_path, endpoints=endpoints))
    middlewares.append(body_deadline_middleware(settings.http_body_timeout_s))
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=middlewares,
        handler_args=handler_args(settings),
    )
    app[SETTINGS] = settings
    app[ENGINE] = engine
    app[TOKENS] = tokens
    app[KEYRING] = keyring
    try:
        app[REVIEW_KEY] = load_link_key(settings)
    except LinkKeyMissing:
        app[REVIEW_KEY] = b""  # production without QP_REVIEW_LINK_KEY: the pages say they are off

    async def _resources(app: web.Application) -> AsyncIterator[None]:
        await asyncio.to_thread(ensure_schema, engine, auto_migrate=settings.db_auto_migrate)
        await asyncio.to_thread(encrypt_plaintext_secrets, engine, keyring)
        app[TEMPORAL] = client or await connect(settings, tracer_provider=tracer_provider)
        yield
        if owns_engine:
            engine.dispose()

    async def _publish_contract(app: web.Application) -> None:
        # At start-up, once the settings and routes are final: served from memory afterwards.
        document = build_openapi(settings, endpoints)
        contract_routes.publish(app, document, render_api_page(document))

    app.cleanup_ctx.append(_resources)
    app.on_startup.append(_publish_contract)
    endpoints.add_routes(app, settings)
    add_pages(app, pages)
    metrics = endpoints.find("GET", metrics_routes.METRICS_PATH, run_path=settings.run_path)
    if metrics is not None:
        metrics_routes.setup(app, settings, metrics)
    return app
