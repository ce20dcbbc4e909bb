"""Abuse limits per (token, route class) and per (client address, class), counted by the ``limits`` library.

Requests without a valid token are limited per client address (:func:`anonymous_limit_middleware`), the others
per token (:func:`rate_limit_middleware`).

Each class's rate and burst become a moving window: ``burst`` requests in any ``burst / rate`` seconds (rounded
up to whole seconds, the granularity of ``limits``). Of the strategies ``limits`` offers it is the closest to the
token buckets we had: the same burst, the same sustained rate, and an exact count (a fixed window admits twice the
burst across a window boundary, a sliding-window counter only estimates). It differs in how capacity comes back:
all of a request's slot at once when it leaves the window, not a trickle at ``rate``.

The counters live in this process's memory, and each API process then enforces ``rate / api_processes``; or, with
``QP_RATE_LIMIT_STORAGE_URI`` set, in Redis, shared by every API process, which enforce the whole rate. When Redis
cannot be reached the limits fail open: requests are admitted, one warning is logged per outage and
``qp_rate_limit_fail_open_total`` counts them (docs/DEPLOY.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from aiohttp import web
from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from api.auth import PUBLIC_PATHS, AuthenticationFailed, TokenCache, bearer_token
from api.client_address import IPNetwork, client_address
from api.endpoints import ENDPOINTS
from api.keys import PRINCIPAL
from api.registry import Registry, is_page_path, rate_class_by_method
from quantapilot.errors import ApiError, ErrorCode
from quantapilot.observability import RATE_LIMIT_FAIL_OPEN
from quantapilot.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger("quantapilot.api")

#: Seconds a Redis connection or command may take before the request is admitted without a limit.
STORAGE_TIMEOUT_S = 0.5
#: Seconds between attempts to reach the storage during an outage (requests in between are admitted at once).
PROBE_INTERVAL_S = 1.0


class RouteClass(StrEnum):
    """Rate-limit classes: each token has one bucket per class."""

    TRIGGERS = "triggers"
    TELEMETRY = "telemetry"
    READS = "reads"
    CONTROL = "control"
    # Per client address, not per token: failed authentications (401), and requests to the public endpoints. Two
    # buckets, so a flood of bad tokens through a shared proxy address does not also fail the health checks.
    UNAUTHENTICATED = "unauthenticated"
    PUBLIC = "public"


def route_class(method: str, path: str, *, run_path: str = "/run", endpoints: Registry = ENDPOINTS) -> RouteClass:
    """The rate-limit class of a route: the one its endpoint declares (``api/endpoints.py``).

    Args:
        method: HTTP method.
        path: The route's canonical path (``/v1/runs/{run_id}``), or the raw path of an unmatched request.
        run_path: The configured seed trigger path (an alias of ``POST /v1/runs``).
        endpoints: The registry that declares the route.
    """
    endpoint = endpoints.find(method, path, run_path=run_path)
    return RouteClass(endpoint.rate_class if endpoint is not None else rate_class_by_method(method))


@dataclass(frozen=True, slots=True)
class Rate:
    """A class's sustained rate (requests per second) and burst (requests at once)."""

    per_second: float
    burst: int

    @property
    def window_s(self) -> int:
        """The moving window holding ``burst`` requests: ``burst / per_second`` seconds, whole, rounded up.

        Rounding up keeps the sustained rate at or below ``per_second``. The tiny tolerance keeps an exact quotient
        computed with a rounding error (2.0000000001) from costing a whole second.
        """
        return max(1, math.ceil(self.burst / self.per_second - 1e-9))


def limit_split(settings: Settings) -> int:
    """How many processes split each configured limit.

    Counters in each API process's memory count that process's share; counters shared through Redis
    (``rate_limit_storage_uri``) see every process's requests, so nothing is split.
    """
    return 1 if settings.rate_limit_storage_uri else settings.api_processes


def rates_from(settings: Settings) -> dict[RouteClass, Rate]:
    """The rates this process enforces: the configured ones, each divided by ``api_processes``.

    Counters shared through Redis (``rate_limit_storage_uri``) already see every process's requests, so then
    nothing is divided.
    """
    n = limit_split(settings)
    configured = {
        RouteClass.READS: (settings.rate_reads_per_s, settings.rate_reads_burst),
        RouteClass.TRIGGERS: (settings.rate_triggers_per_s, settings.rate_triggers_burst),
        RouteClass.TELEMETRY: (settings.rate_telemetry_per_s, settings.rate_telemetry_burst),
        RouteClass.CONTROL: (settings.rate_control_per_s, settings.rate_control_burst),
        RouteClass.UNAUTHENTICATED: (settings.rate_unauthenticated_per_s, settings.rate_unauthenticated_burst),
        RouteClass.PUBLIC: (settings.rate_unauthenticated_per_s, settings.rate_unauthenticated_burst),
    }
    return {cls: Rate(per_second=r / n, burst=max(1, math.ceil(b / n))) for cls, (r, b) in configured.items()}


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one :meth:`RateLimiter.take`."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int
    #: False when the storage could not be reached and the request was admitted uncounted.
    counted: bool = True

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` headers (and ``Retry-After`` when refused); none for an uncounted request.

        ``RateLimit-Reset`` is the whole seconds until the oldest request counted in the window leaves it (one more
        request fits); ``Retry-After`` the same when refused. Both round up, so waiting that long always suffices.
        """
        if not self.counted:
            return {}  # numbers we do not know are better left out than made up
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


def _storage(uri: str | None, key_prefix: str) -> Storage:
    """The counters' storage: this process's memory, or the Redis at ``uri``.

    Raises:
        ValueError: ``uri`` is not a ``redis://``, ``rediss://`` or ``redis+unix://`` URL.
    """
    if not uri:
        return MemoryStorage()
    if not uri.startswith(("redis://", "rediss://", "redis+unix://")):
        raise ValueError("QP_RATE_LIMIT_STORAGE_URI: expected a redis://, rediss:// or redis+unix:// URL")
    # wrap_exceptions: every failure of the client arrives as one StorageError, which fails open below.
    return RedisStorage(
        "async+" + uri,
        key_prefix=key_prefix,
        wrap_exceptions=True,
        connect_timeout=STORAGE_TIMEOUT_S,
        stream_timeout=STORAGE_TIMEOUT_S,
    )


class RateLimiter:
    """Moving-window limits keyed by (key, route class): a token id, or a client address.

    Args:
        rates: Rate per class.
        storage_uri: A Redis URL whose counters every API process shares; None keeps them in this process.
        key_prefix: Prefix of the counters' keys in Redis.

    Raises:
        ValueError: ``storage_uri`` is not a Redis URL.
    """

    def __init__(
        self, rates: dict[RouteClass, Rate], *, storage_uri: str | None = None, key_prefix: str = "qp_rate"
    ) -> None:
        self._rates = rates
        self._items = {
            cls: RateLimitItemPerSecond(rate.burst, rate.window_s, namespace=cls.value) for cls, rate in rates.items()
        }
        self._strategy = MovingWindowRateLimiter(_storage(storage_uri, key_prefix))
        # During an outage the storage is tried again at most once per PROBE_INTERVAL_S, so a Redis that times
        # out does not add its timeout to every request.
        self._outage = False
        self._next_probe = 0.0

    def rate(self, cls: RouteClass) -> Rate:
        """The rate enforced for ``cls``."""
        return self._rates[cls]

    async def take(self, key: str, cls: RouteClass) -> Decision:
        """Count one request of ``key`` in its window for ``cls`` if it fits.

        Args:
            key: Whose window (the token id, or the client address).
            cls: Route class.

        Returns:
            Whether the request is admitted, with the numbers for the response headers.
        """
        rate, item = self._rates[cls], self._items[cls]
        if self._skipping():
            return self._uncounted(rate)
        try:
            allowed = await self._strategy.hit(item, key)
            stats = await self._strategy.get_window_stats(item, key)
        except StorageError as exc:
            self._failed(exc)
            return self._uncounted(rate)
        self._reached()
        wait_s = max(0, math.ceil(stats.reset_time - time.time()))
        return Decision(
            allowed=allowed,
            limit=rate.burst,
            remaining=max(0, stats.remaining),
            reset_s=wait_s,
            retry_after_s=0 if allowed else max(1, wait_s),
        )

    async def admits(self, key: str, cls: RouteClass) -> bool:
        """Tell whether :meth:`take` would admit a request now, without counting anything."""
        if self._skipping():
            return True
        try:
            admitted = await self._strategy.test(self._items[cls], key)
        except StorageError as exc:
            self._failed(exc)
            return True
        self._reached()
        return admitted

    def _uncounted(self, rate: Rate) -> Decision:
        RATE_LIMIT_FAIL_OPEN.inc()
        return Decision(allowed=True, limit=rate.burst, remaining=rate.burst, reset_s=0, retry_after_s=0, counted=False)

    def _skipping(self) -> bool:
        """During an outage: whether to admit without trying the storage (it was tried less than a probe ago)."""
        if not self._outage:
            return False
        now = time.monotonic()
        if now < self._next_probe:
            return True
        self._next_probe = now + PROBE_INTERVAL_S
        return False

    def _failed(self, exc: StorageError) -> None:
        if not self._outage:
            # Once per outage: a warning per request would bury the logs exactly when they matter.
            log.warning(
                "rate-limit storage unreachable, admitting requests without limits until it is back: %s",
                exc.storage_error,
            )
        self._outage = True
        self._next_probe = time.monotonic() + PROBE_INTERVAL_S

    def _reached(self) -> None:
        if self._outage:
            log.warning("rate-limit storage reachable again, limits apply")
            self._outage = False


def _canonical(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def _with_headers(exc: Exception, headers: dict[str, str]) -> None:
    """Add the rate-limit headers to an error on its way to the error middleware."""
    if isinstance(exc, ApiError):
        for name, value in headers.items():
            exc.headers.setdefault(name, value)


def rate_limit_middleware(
    limiter: RateLimiter, *, run_path: str, endpoints: Registry = ENDPOINTS
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Build the middleware that counts each authenticated request in its token's window (after authentication).

    Requests without a principal (public paths) are not limited here: they serve static, cached content.
    """

    @web.middleware
    async def _limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        principal = request.get(PRINCIPAL)
        if principal is None:
            return await handler(request)
        cls = route_class(request.method, _canonical(request), run_path=run_path, endpoints=endpoints)
        decision = await limiter.take(principal.token_id, cls)
        headers = decision.headers()
        if not decision.allowed:
            raise ApiError(
                429,
                ErrorCode.RATE_LIMIT_EXCEEDED,
                f"rate limit of the {cls.value} class exceeded; retry after {decision.retry_after_s}s",
                details={"class": cls.value, "limit": decision.limit, "retryAfter": decision.retry_after_s},
                headers=headers,
            )
        try:
            response = await handler(request)
        except Exception as exc:
            _with_headers(exc, headers)
            raise
        if not response.prepared:
            for name, value in headers.items():
                response.headers.setdefault(name, value)
        return response

    return _limit


def anonymous_limit_middleware(
    limiter: RateLimiter, tokens: TokenCache, *, trusted_proxies: tuple[IPNetwork, ...] = ()
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Build the middleware that limits requests without a valid token per client address (placed before auth).

    A public endpoint counts in the address's ``public`` window. Elsewhere only a failed authentication (401)
    counts, in its ``unauthenticated`` window; once that is full, the address's requests answer 429 before any
    token lookup, unless their token was verified recently (so one client's flood costs no database work and does
    not lock out a valid token behind the same address).
    """

    def _refuse(cls: RouteClass, decision: Decision) -> ApiError:
        return ApiError(
            429,
            ErrorCode.RATE_LIMIT_EXCEEDED,
            f"too many {cls.value} requests from this address; retry after {decision.retry_after_s}s",
            details={"class": cls.value, "limit": decision.limit, "retryAfter": decision.retry_after_s},
            headers=decision.headers(),
        )

    @web.middleware
    async def _anonymous(request: web.Request, handler: Handler) -> web.StreamResponse:
        address = client_address(request, trusted_proxies)
        if request.path in PUBLIC_PATHS or is_page_path(request.path):
            # The pages (/ui/) take no bearer token: each request counts in the address's public window.
            decision = await limiter.take(address, RouteClass.PUBLIC)
            if not decision.allowed:
                raise _refuse(RouteClass.PUBLIC, decision)
            return await handler(request)
        cls = RouteClass.UNAUTHENTICATED
        if not await limiter.admits(address, cls):
            token = bearer_token(request)
            if token is None or tokens.verified(token) is None:
                raise _refuse(cls, await limiter.take(address, cls))
        try:
            return await handler(request)
        except AuthenticationFailed:
            decision = await limiter.take(address, cls)
            if not decision.allowed:
                raise _refuse(cls, decision) from None
            raise

    return _anonymous
