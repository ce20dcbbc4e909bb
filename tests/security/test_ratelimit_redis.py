"""Rate limits shared through Redis (QP_RATE_LIMIT_STORAGE_URI): one limit for every API process, fail open.

These run against the Redis on 127.0.0.1:6379 that this machine kind, and so CI, provides; they fail rather than
skip without it. Each test has its own key prefix, so tests running in parallel count in windows of their own.
"""

from __future__ import annotations

import logging
import math
import socket
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from api.ratelimit import RateLimiter, RouteClass, rates_from
from quantapilot.settings import Settings
from tests.conftest import ApiFactory

REDIS_URI = "redis://127.0.0.1:6379/0"
PATH = "/v1/runs/rr_" + "0" * 32


@pytest.fixture
def key_prefix() -> str:
    return f"qp_test_{uuid.uuid4().hex}"


@pytest.fixture
def closed_port_uri() -> str:
    """A Redis URL on a loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def fail_open_count() -> float:
    return REGISTRY.get_sample_value("qp_rate_limit_fail_open_total") or 0.0


async def test_ratelimit_redis_two_limiters_share_one_limit(key_prefix: str) -> None:
    rates = rates_from(Settings(rate_limit_storage_uri=REDIS_URI, rate_control_per_s=0.1, rate_control_burst=2))
    one = RateLimiter(rates, storage_uri=REDIS_URI, key_prefix=key_prefix)
    other = RateLimiter(rates, storage_uri=REDIS_URI, key_prefix=key_prefix)
    first = await one.take("tok", RouteClass.CONTROL)
    second = await other.take("tok", RouteClass.CONTROL)
    assert first.allowed and first.counted and first.remaining == 1
    assert second.allowed and second.remaining == 0  # the other process's request counted here too
    refused = await one.take("tok", RouteClass.CONTROL)
    assert not refused.allowed and not await other.admits("tok", RouteClass.CONTROL)
    assert refused.retry_after_s == 20  # 2 requests per 20 s window, the first leaves it then
    # Another key prefix (another deployment on the same Redis) counts apart.
    apart = RateLimiter(rates, storage_uri=REDIS_URI, key_prefix=key_prefix + "_other")
    assert (await apart.take("tok", RouteClass.CONTROL)).allowed


def test_ratelimit_redis_shared_counters_are_not_split_between_processes() -> None:
    shared = rates_from(Settings(api_processes=4, rate_limit_storage_uri=REDIS_URI, rate_reads_per_s=50))
    assert shared[RouteClass.READS].per_second == 50
    assert shared[RouteClass.READS].burst == 100


def test_ratelimit_redis_refuses_another_storage_url() -> None:
    with pytest.raises(ValueError, match="QP_RATE_LIMIT_STORAGE_URI"):
        RateLimiter(rates_from(Settings()), storage_uri="memcached://127.0.0.1:11211")


async def test_ratelimit_redis_two_apps_share_one_limit(
    make_api: ApiFactory, settings: Settings, key_prefix: str
) -> None:
    shared = settings.model_copy(
        update={
            "rate_limit_storage_uri": REDIS_URI,
            "rate_limit_key_prefix": key_prefix,
            "api_processes": 2,  # ignored with shared counters: each process enforces the whole limit
            "rate_reads_per_s": 0.05,
            "rate_reads_burst": 3,
            "rate_unauthenticated_per_s": 0.05,
            "rate_unauthenticated_burst": 2,
        }
    )
    one, other = await make_api(shared), await make_api(shared)
    auth = one.headers()  # one token, used against both processes
    seen = []
    window_opened = time.monotonic()
    for api in (one, other, one):
        resp = await api.client.get(PATH, headers=auth)
        assert resp.status == 404
        seen.append(resp.headers["RateLimit-Remaining"])
    assert seen == ["2", "1", "0"]
    for api in (other, one):
        resp = await api.client.get(PATH, headers=auth)
        assert resp.status == 429
        # A 60 s window (3 requests at 0.05/s) opened by the first request. Redis keeps the key's expiry in whole
        # seconds, so the seconds left are 60 less those elapsed since, rounded either way (59 on a loaded machine).
        elapsed = time.monotonic() - window_opened
        assert 60 - math.ceil(elapsed) - 1 <= int(resp.headers["Retry-After"]) <= 60
    # Per-address limits are shared too: two failed authentications, one on each process, fill the window.
    bogus = {"Authorization": "Bearer qp_" + "x" * 43}
    assert (await one.client.get(PATH, headers=bogus)).status == 401
    assert (await other.client.get(PATH, headers=bogus)).status == 401
    assert (await one.client.get(PATH, headers=bogus)).status == 429


async def test_ratelimit_redis_unreachable_fails_open_with_one_warning(
    make_api: ApiFactory, settings: Settings, closed_port_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    api = await make_api(
        settings.model_copy(
            update={
                "rate_limit_storage_uri": closed_port_uri,
                "rate_reads_per_s": 0.01,
                "rate_reads_burst": 1,
                "rate_unauthenticated_per_s": 0.01,
                "rate_unauthenticated_burst": 1,
            }
        )
    )
    before = fail_open_count()
    with caplog.at_level(logging.WARNING, logger="quantapilot.api"):
        for _ in range(5):
            resp = await api.client.get(PATH, headers=api.headers())
            assert resp.status == 404  # admitted, far over the burst of 1
            assert "RateLimit-Limit" not in resp.headers  # uncounted: no numbers are made up
        for _ in range(3):
            assert (await api.client.get(PATH)).status == 401  # never 429: the address's window is not reachable
    warnings = [r for r in caplog.records if "rate-limit storage unreachable" in r.getMessage()]
    assert len(warnings) == 1
    assert fail_open_count() - before >= 5
