"""Bearer-token authentication with a short-lived cache of verified tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from sqlalchemy.engine import Engine

from quantapilot.errors import ApiError, ErrorCode
from quantapilot.tokens import Principal, hash_token, lookup_token

PRINCIPAL = web.RequestKey("principal", Principal)
# The API contract is public too: it holds no secret and clients read it before they have a token.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v1/openapi.json", "/v1/docs/api"})
MAX_CACHE = 10_000


class TokenCache:
    """Verified tokens for ``ttl`` seconds, keyed by hash, so a busy client costs one lookup per ``ttl``.

    A revoked token therefore stops working within ``ttl`` seconds (documented in docs/SECURITY.md).
    """

    def __init__(self, engine: Engine, ttl: float) -> None:
        self._engine = engine
        self._ttl = ttl
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    async def principal(self, token: str) -> Principal | None:
        """Return the token's principal, or None when it is not valid."""
        key = hash_token(token)
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = await asyncio.to_thread(lookup_token, self._engine, token)
        if len(self._entries) >= MAX_CACHE:
            self._entries.clear()
        self._entries[key] = (now + self._ttl, principal)
        return principal


def unauthenticated(message: str) -> ApiError:
    """401 with the ``WWW-Authenticate`` challenge."""
    return ApiError(
        401, ErrorCode.AUTHENTICATION_ERROR, message, headers={"WWW-Authenticate": 'Bearer realm="quantapilot"'}
    )


def auth_middleware(cache: TokenCache) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Build the middleware that requires a valid bearer token on every non-public path."""

    @web.middleware
    async def _auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated("missing bearer token")
        principal = await cache.principal(token.strip())
        if principal is None:
            raise unauthenticated("invalid, expired or revoked token")
        request[PRINCIPAL] = principal
        return await handler(request)

    return _auth


def principal_of(request: web.Request, scope: str | None = None) -> Principal:
    """The authenticated caller; with ``scope``, 403 unless the token carries it."""
    principal = request[PRINCIPAL]
    if scope is not None and not principal.has(scope):
        raise ApiError(403, ErrorCode.AUTHORIZATION_ERROR, f"token lacks the scope {scope}", details={"scope": scope})
    return principal
