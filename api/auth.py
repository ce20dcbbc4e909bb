"""Bearer-token authentication with short-lived, bounded caches of verified and refused tokens."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from cachetools import TTLCache
from sqlalchemy.engine import Engine

from api.endpoints import ENDPOINTS
from api.keys import PRINCIPAL
from api.registry import is_page_path
from quantapilot.errors import ApiError, ErrorCode
from quantapilot.tokens import Principal, hash_token, lookup_token

#: Paths that need no token: the endpoints declared public (health, metrics, the contract).
PUBLIC_PATHS = ENDPOINTS.public_paths()
#: Entries of each of the two caches (verified tokens, refused tokens); least recently used go first.
MAX_CACHE = 10_000


class TokenCache:
    """Verified and refused tokens for ``ttl`` seconds, keyed by hash, so a busy client costs one lookup per ``ttl``.

    Two bounded LRU caches (``cachetools.TTLCache``): one of principals, one of refusals. Only tokens that exist
    in the database enter the first, so a flood of unknown tokens cycles the refusals and never evicts a valid
    token. Refusals are cached as long as grants: a token refused once never becomes valid (a new token's value
    is random and printed only after it is stored), so caching them only spares the database a repeated bad
    token. A revoked or expired token stops working within ``ttl`` seconds (docs/SECURITY.md); ``ttl`` 0 caches
    nothing.

    Args:
        engine: Database engine holding ``api_tokens``.
        ttl: Seconds an answer is kept.
        maxsize: Entries of each cache.
    """

    def __init__(self, engine: Engine, ttl: float, *, maxsize: int = MAX_CACHE) -> None:
        self._engine = engine
        self._ttl = ttl
        self._valid: TTLCache[str, Principal] = TTLCache(maxsize=maxsize, ttl=max(ttl, 0.001))
        self._refused: TTLCache[str, bool] = TTLCache(maxsize=maxsize, ttl=max(ttl, 0.001))

    def verified(self, token: str) -> Principal | None:
        """The principal of a token verified within ``ttl`` seconds, without a database lookup (None otherwise)."""
        return self._valid.get(hash_token(token)) if self._ttl > 0 else None

    async def principal(self, token: str) -> Principal | None:
        """Return the token's principal, or None when it is not valid."""
        key = hash_token(token)
        if self._ttl > 0:
            hit = self._valid.get(key)
            if hit is not None:
                return hit
            if key in self._refused:
                return None
        principal = await asyncio.to_thread(lookup_token, self._engine, token)
        if self._ttl > 0:
            if principal is None:
                self._refused[key] = True
            else:
                self._valid[key] = principal
        return principal


class AuthenticationFailed(ApiError):
    """401: no token, or an unknown, expired or revoked one (a type of its own, so limits can count it)."""


def unauthenticated(message: str) -> ApiError:
    """401 with the ``WWW-Authenticate`` challenge."""
    return AuthenticationFailed(
        401, ErrorCode.AUTHENTICATION_ERROR, message, headers={"WWW-Authenticate": 'Bearer realm="quantapilot"'}
    )


def bearer_token(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def auth_middleware(
    cache: TokenCache, public_paths: frozenset[str] = PUBLIC_PATHS
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Build the middleware that requires a valid bearer token on every non-public path outside /ui/.

    Args:
        cache: Verified and refused tokens.
        public_paths: Paths served without a token (an application's registry's public paths).
    """

    @web.middleware
    async def _auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path in public_paths or is_page_path(request.path):
            # Pages (/ui/) authenticate themselves: a session cookie or a signed review link (api/ui_routes.py).
            return await handler(request)
        token = bearer_token(request)
        if token is None:
            raise unauthenticated("missing bearer token")
        principal = await cache.principal(token)
        if principal is None:
            raise unauthenticated("invalid, expired or revoked token")
        request[PRINCIPAL] = principal
        return await handler(request)

    return _auth
