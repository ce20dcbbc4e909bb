"""Requests without a valid token: limited per client address; a flood of unknown tokens cannot evict valid ones.

Clients connect over real loopback HTTP from different source addresses (127.0.0.2, 127.0.0.3, ...: the whole
127/8 is this host), so the server sees them as different peers. Database work is counted with an SQLAlchemy
event on the API's engine: every statement against ``api_tokens`` is a token lookup.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

import api.app as api_app
from api.auth import TokenCache
from api.keys import TOKENS
from quantapilot.settings import Settings
from quantapilot.tokens import hash_token
from tests.conftest import ApiFactory
from tests.security.support import assert_envelope
from tests.support import Api

BOGUS = "qp_" + "x" * 43
#: Entries of each token cache in the flood test (the app's are api.auth.MAX_CACHE).
FLOOD_CACHE = 1_000


class Lookups:
    """Statements that read ``api_tokens`` (token lookups) on an engine, counted while the block runs."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "api_tokens" in statement:
            self.count += 1


@contextmanager
def counting_lookups(engine: Engine) -> Iterator[Lookups]:
    lookups = Lookups()
    event.listen(engine, "before_cursor_execute", lookups)
    try:
        yield lookups
    finally:
        event.remove(engine, "before_cursor_execute", lookups)


@asynccontextmanager
async def from_address(address: str) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose connections come from ``address``."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def get(session: aiohttp.ClientSession, api: Api, path: str, **headers: str) -> tuple[int, dict[str, Any], Any]:
    async with session.get(api.client.make_url(path), headers=headers) as resp:
        body = await resp.json(content_type=None) if resp.content_type == "application/json" else await resp.text()
        return resp.status, dict(resp.headers), body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_anonymous_flood_from_one_address_gets_429_other_addresses_unaffected(
    make_api: ApiFactory, settings: Settings, engine: Engine
) -> None:
    burst = 20
    api = await make_api(
        settings.model_copy(
            update={"rate_unauthenticated_burst": burst, "rate_unauthenticated_per_s": 0.01, "token_cache_seconds": 60}
        )
    )
    path = "/v1/runs/rr_" + "0" * 32
    async with from_address("127.0.0.2") as attacker, from_address("127.0.0.3") as bystander:
        # The attacker's address also carries a legitimate client whose token was verified a moment ago.
        status, _, _ = await get(attacker, api, path, **bearer(api.token))
        assert status == 404
        with counting_lookups(engine) as lookups:
            answers = [await get(attacker, api, path, **bearer(f"qp_{secrets.token_urlsafe(32)}")) for _ in range(40)]
        statuses = [status for status, _, _ in answers]
        assert statuses[:burst] == [401] * burst
        assert statuses[burst:] == [429] * (40 - burst)
        status, headers, body = answers[-1]
        assert_envelope(body, "RATE_LIMIT_EXCEEDED")
        assert int(headers["Retry-After"]) >= 1 and headers["RateLimit-Remaining"] == "0"
        assert body["error"]["details"]["class"] == "unauthenticated"
        # Refused before any lookup: the flood past the limit cost the database nothing.
        assert lookups.count == burst
        # No token at all is limited the same way.
        assert (await get(attacker, api, path))[0] == 429

        # Another address is not affected; the verified token behind the flooded address still works.
        assert (await get(bystander, api, path, **bearer(BOGUS)))[0] == 401
        assert (await get(bystander, api, path, **bearer(api.token)))[0] == 404
        assert (await get(attacker, api, path, **bearer(api.token)))[0] == 404
        # The 401 flood did not use up the attacker address's bucket for the public endpoints (health checks).
        assert (await get(attacker, api, "/healthz"))[0] == 200


async def test_anonymous_public_endpoints_are_limited_per_address(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(
        settings.model_copy(update={"rate_unauthenticated_burst": 5, "rate_unauthenticated_per_s": 0.01})
    )
    async with from_address("127.0.0.4") as flooder, from_address("127.0.0.5") as prober:
        for path in ("/healthz", "/v1/openapi.json", "/v1/docs/api", "/metrics", "/readyz"):
            assert (await get(flooder, api, path))[0] in (200, 503), path
        status, headers, body = await get(flooder, api, "/healthz")
        assert status == 429, body
        assert_envelope(body, "RATE_LIMIT_EXCEEDED")
        assert body["error"]["details"]["class"] == "public" and "Retry-After" in headers
        assert (await get(flooder, api, "/v1/openapi.json"))[0] == 429
        assert (await get(prober, api, "/healthz"))[0] == 200


async def test_anonymous_forwarded_for_counts_only_behind_a_trusted_proxy(
    make_api: ApiFactory, settings: Settings
) -> None:
    api = await make_api(
        settings.model_copy(
            update={
                "rate_unauthenticated_burst": 3,
                "rate_unauthenticated_per_s": 0.01,
                "trusted_proxies": ["127.0.0.6"],
            }
        )
    )
    path = "/v1/runs/rr_" + "0" * 32
    async with from_address("127.0.0.7") as direct, from_address("127.0.0.6") as proxy:
        # A client that is not a proxy cannot escape its bucket by inventing X-Forwarded-For addresses.
        spoofed = [
            (await get(direct, api, path, **bearer(BOGUS), **{"X-Forwarded-For": f"198.51.100.{n}"}))[0]
            for n in range(6)
        ]
        assert spoofed == [401, 401, 401, 429, 429, 429]
        # Behind the trusted proxy each client has its own bucket, keyed by the address the proxy appended
        # (what the client wrote to the left of it proves nothing).
        one = [
            (await get(proxy, api, path, **bearer(BOGUS), **{"X-Forwarded-For": f"203.0.113.{n}, 192.0.2.1"}))[0]
            for n in range(5)
        ]
        assert one == [401, 401, 401, 429, 429]
        assert (await get(proxy, api, path, **bearer(BOGUS), **{"X-Forwarded-For": "192.0.2.2"}))[0] == 401
        # IPv6 clients count per /64: a host that owns a whole /64 cannot rotate through its addresses.
        same_net = [
            (await get(proxy, api, path, **bearer(BOGUS), **{"X-Forwarded-For": f"2001:db8:0:7::{n:x}"}))[0]
            for n in range(1, 6)
        ]
        assert same_net == [401, 401, 401, 429, 429]
        assert (await get(proxy, api, path, **bearer(BOGUS), **{"X-Forwarded-For": "2001:db8:0:8::1"}))[0] == 401


@pytest.mark.slow
async def test_token_cache_flood_of_unknown_tokens_does_not_evict_valid_token(
    make_api: ApiFactory, settings: Settings, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A distributed flood (many addresses): the per-address limit does not stop it, the cache must hold.
    # The app's caches hold FLOOD_CACHE entries each instead of MAX_CACHE (10,000), and the flood is twice that:
    # the refusals cache fills and cycles (evicting its own oldest entries), which a flood of MAX_CACHE tokens
    # against the real size never did, for a fifth of the requests (each one a database lookup; 46 s on CI's
    # PostgreSQL pass with 10,000). A cache that let refusals evict grants fails here as it did there.
    monkeypatch.setattr(api_app, "TokenCache", functools.partial(TokenCache, maxsize=FLOOD_CACHE))
    api = await make_api(
        settings.model_copy(update={"token_cache_seconds": 600, "rate_unauthenticated_burst": 1_000_000})
    )
    path = "/v1/runs/rr_" + "0" * 32
    with counting_lookups(engine) as lookups:
        resp = await api.client.get(path, headers=api.headers())
        assert resp.status == 404
        assert lookups.count == 1
        flood = [f"qp_{secrets.token_urlsafe(32)}" for _ in range(2 * FLOOD_CACHE)]
        limit = asyncio.Semaphore(32)

        async def attack(token: str) -> int:
            async with limit, api.client.get(path, headers=bearer(token)) as answer:
                return answer.status

        statuses = await asyncio.gather(*(attack(token) for token in flood))
        assert set(statuses) == {401}
        assert lookups.count == 1 + len(flood)  # every unknown token was looked up once
        # The valid token is still cached: no lookup for it, however many unknown tokens came in between.
        for _ in range(3):
            resp = await api.client.get(path, headers=api.headers())
            assert resp.status == 404
        assert lookups.count == 1 + len(flood)
        # A repeated unknown token is answered from the cache of refusals too.
        assert (await api.client.get(path, headers=bearer(flood[-1]))).status == 401
        assert lookups.count == 1 + len(flood)
        # The refusals are bounded: the flood's last tokens evicted its first, which cost a lookup again.
        assert (await api.client.get(path, headers=bearer(flood[0]))).status == 401
        assert lookups.count == 2 + len(flood)
    assert api.client.app is not None
    assert api.client.app[TOKENS].verified(api.token) is not None
    assert hash_token(api.token) not in {hash_token(t) for t in flood}
