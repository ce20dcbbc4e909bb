"""Abuse limits: token buckets per (token, route class) and per client address, and deadlines for slow clients.

Requests without a valid token are limited per client address (:func:`anonymous_limit_middleware`).

Each API process keeps its own buckets in memory and enforces ``rate / api_processes`` and
``burst / api_processes`` (rounded up), so N processes behind one load balancer admit about the configured
rate in total. Sharing buckets through the database would cost a write per request; the per-process split costs
nothing and errs on the strict side when load is uneven (docs/SECURITY.md).
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiohttp import web

from api.auth import PUBLIC_PATHS, AuthenticationFailed, TokenCache, bearer_token
from api.endpoints import ENDPOINTS
from api.errors import error_response
from api.keys import PRINCIPAL
from api.registry import Registry, rate_class_by_method
from api.tracing import TRACE_ID
from quantapilot.errors import ApiError, ErrorCode
from quantapilot.settings import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Buckets kept before idle (full) ones are dropped; a bucket is a few dozen bytes.
MAX_BUCKETS = 100_000
#: Longest time an unread request body is drained after an early answer, in seconds.
LINGER_MAX_S = 2.0


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
    """A token bucket's refill rate (per second) and capacity."""

    per_second: float
    burst: int


def rates_from(settings: Settings) -> dict[RouteClass, Rate]:
    """This process's share of the configured rates (each divided by ``api_processes``)."""
    n = settings.api_processes
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

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` headers (and ``Retry-After`` when refused).

        ``RateLimit-Reset`` is the whole seconds until the bucket is full again; ``Retry-After`` the whole
        seconds until the next request is admitted. Both round up, so waiting that long always suffices.
        """
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after_s)
        return headers


class RateLimiter:
    """In-memory token buckets keyed by (token id, route class).

    Not thread-safe: it is used from the event loop only, and :meth:`take` never awaits, so each call is atomic.

    Args:
        rates: Rate per class.
        clock: Monotonic clock in seconds (a parameter so tests can drive time).
    """

    def __init__(self, rates: dict[RouteClass, Rate], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._rates = rates
        self._clock = clock
        # key -> (tokens available, time of that count)
        self._buckets: dict[tuple[str, RouteClass], tuple[float, float]] = {}

    def rate(self, cls: RouteClass) -> Rate:
        """The rate enforced for ``cls``."""
        return self._rates[cls]

    def take(self, key: str, cls: RouteClass) -> Decision:
        """Spend one token of ``key``'s bucket for ``cls`` if there is one.

        Args:
            key: Whose bucket (the token id).
            cls: Route class.

        Returns:
            Whether the request is admitted, with the numbers for the response headers.
        """
        rate = self._rates[cls]
        now = self._clock()
        tokens, then = self._buckets.get((key, cls), (float(rate.burst), now))
        tokens = min(float(rate.burst), tokens + (now - then) * rate.per_second)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        if len(self._buckets) >= MAX_BUCKETS and (key, cls) not in self._buckets:
            self._evict(now)
        self._buckets[(key, cls)] = (tokens, now)
        return Decision(
            allowed=allowed,
            limit=rate.burst,
            remaining=int(tokens),
            reset_s=math.ceil((rate.burst - tokens) / rate.per_second),
            retry_after_s=0 if allowed else max(1, math.ceil((1.0 - tokens) / rate.per_second)),
        )

    def admits(self, key: str, cls: RouteClass) -> bool:
        """Tell whether :meth:`take` would admit a request now, without spending anything."""
        rate = self._rates[cls]
        now = self._clock()
        tokens, then = self._buckets.get((key, cls), (float(rate.burst), now))
        return min(float(rate.burst), tokens + (now - then) * rate.per_second) >= 1.0

    def _evict(self, now: float) -> None:
        """Drop buckets that have refilled completely: forgetting them changes nothing."""
        full = [
            key
            for key, (tokens, then) in self._buckets.items()
            if tokens + (now - then) * self._rates[key[1]].per_second >= self._rates[key[1]].burst
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= MAX_BUCKETS:
            # Every bucket is busy: a flood of tokens. Start afresh rather than grow without bound.
            self._buckets.clear()


def _canonical(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path


def _with_headers(exc: Exception, headers: dict[str, str]) -> None:
    """Add the rate-limit headers to an error on its way to the error middleware."""
    if isinstance(exc, ApiError):
        for name, value in headers.items():
            exc.headers.setdefault(name, value)


def rate_limit_middleware(limiter: RateLimiter, *, run_path: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Build the middleware that spends a token per authenticated request (placed after authentication).

    Requests without a principal (public paths) are not limited here: they serve static, cached content.
    """

    @web.middleware
    async def _limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        principal = request.get(PRINCIPAL)
        if principal is None:
            return await handler(request)
        cls = route_class(request.method, _canonical(request), run_path=run_path)
        decision = limiter.take(principal.token_id, cls)
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


def parse_networks(values: list[str]) -> tuple[IPNetwork, ...]:
    """Parse ``QP_TRUSTED_PROXIES`` (addresses or CIDR networks).

    Raises:
        ValueError: An entry that is neither.
    """
    networks: list[IPNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"QP_TRUSTED_PROXIES: {value[:64]!r} is not an IP address or network") from None
    return tuple(networks)


def _ip(text: str | None) -> IPAddress | None:
    try:
        return ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None


def client_address(request: web.Request, trusted: tuple[IPNetwork, ...] = ()) -> str:
    """The client's address, as the key of its buckets.

    It is the TCP peer's address. Only when the peer is a trusted proxy is ``X-Forwarded-For`` read, from the
    right (the entries proxies appended) to the first address that is not itself a trusted proxy: everything left
    of it was written by the client and proves nothing. IPv6 clients are keyed by their /64, which one host
    usually owns whole.
    """
    address = _ip(request.remote)
    if address is None:
        return request.remote or "unknown"
    if trusted and any(address in net for net in trusted):
        hops = [hop for header in request.headers.getall("X-Forwarded-For", []) for hop in header.split(",")]
        for hop in reversed(hops):
            forwarded = _ip(hop)
            if forwarded is None:
                break  # a malformed entry: stop at the last proxy we trust
            address = forwarded
            if not any(forwarded in net for net in trusted):
                break
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def anonymous_limit_middleware(
    limiter: RateLimiter, tokens: TokenCache, *, trusted_proxies: tuple[IPNetwork, ...] = ()
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Build the middleware that limits requests without a valid token per client address (placed before auth).

    A public endpoint spends from the address's ``public`` bucket. Elsewhere only a failed authentication (401)
    spends, from its ``unauthenticated`` bucket; once that is empty, the address's requests answer 429 before any
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
        if request.path in PUBLIC_PATHS:
            decision = limiter.take(address, RouteClass.PUBLIC)
            if not decision.allowed:
                raise _refuse(RouteClass.PUBLIC, decision)
            return await handler(request)
        cls = RouteClass.UNAUTHENTICATED
        if not limiter.admits(address, cls):
            token = bearer_token(request)
            if token is None or tokens.verified(token) is None:
                raise _refuse(cls, limiter.take(address, cls))
        try:
            return await handler(request)
        except AuthenticationFailed:
            decision = limiter.take(address, cls)
            if not decision.allowed:
                raise _refuse(cls, decision) from None
            raise

    return _anonymous


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
