"""Rate limits: moving windows per (token, route class), headers, 429 envelope, per-process split."""

from __future__ import annotations

import logging
import math
import time
from types import SimpleNamespace
from typing import Any

import pytest
from limits.aio.storage import memory
from limits.errors import StorageError
from sqlalchemy.engine import Engine

import api.ratelimit
from api.ratelimit import RateLimiter, RouteClass, rates_from, route_class
from quantapilot.settings import Settings
from quantapilot.tokens import create_token
from tests.conftest import ApiFactory
from tests.security.support import assert_envelope


class Clock:
    """A clock the test advances by hand: the wall clock of the limits' in-memory storage and of the limiter."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    fake = SimpleNamespace(time=clock, monotonic=time.monotonic)
    monkeypatch.setattr(memory, "time", fake)
    monkeypatch.setattr(api.ratelimit, "time", fake)
    return clock


async def test_ratelimit_window_admits_the_burst_per_window(clock: Clock) -> None:
    limiter = RateLimiter(rates_from(Settings(rate_reads_per_s=2, rate_reads_burst=3)))
    assert limiter.rate(RouteClass.READS).window_s == 2  # 3 requests per 1.5 s, in whole seconds
    decisions = [await limiter.take("tok", RouteClass.READS) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[0].limit == 3
    refused = decisions[-1]
    assert refused.retry_after_s == 2  # the oldest request leaves the 2 s window then
    assert refused.reset_s == 2
    assert refused.headers()["Retry-After"] == "2"
    clock.now += 1.5
    assert not (await limiter.take("tok", RouteClass.READS)).allowed  # all three still in the window
    clock.now += 0.6
    assert (await limiter.take("tok", RouteClass.READS)).allowed
    clock.now += 10  # never more than the burst
    assert [(await limiter.take("tok", RouteClass.READS)).allowed for _ in range(4)] == [True, True, True, False]


async def test_ratelimit_buckets_are_per_token_and_class(clock: Clock) -> None:
    limiter = RateLimiter(rates_from(Settings(rate_triggers_burst=1, rate_reads_burst=1)))
    assert (await limiter.take("a", RouteClass.TRIGGERS)).allowed
    assert not (await limiter.take("a", RouteClass.TRIGGERS)).allowed
    assert (await limiter.take("b", RouteClass.TRIGGERS)).allowed
    assert (await limiter.take("a", RouteClass.READS)).allowed


async def test_ratelimit_slow_rate_retry_after_rounds_up(clock: Clock) -> None:
    limiter = RateLimiter(rates_from(Settings(rate_control_per_s=0.3, rate_control_burst=1)))
    await limiter.take("t", RouteClass.CONTROL)
    refused = await limiter.take("t", RouteClass.CONTROL)
    assert not refused.allowed
    assert refused.retry_after_s == math.ceil(1 / 0.3) == 4


def test_ratelimit_processes_split_the_configured_rate() -> None:
    rates = rates_from(Settings(api_processes=4, rate_reads_per_s=50, rate_reads_burst=100, rate_triggers_burst=2))
    assert rates[RouteClass.READS].per_second == 12.5
    assert rates[RouteClass.READS].burst == 25
    assert rates[RouteClass.TRIGGERS].burst == 1  # never below one request


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/run", RouteClass.TRIGGERS),
        ("POST", "/v1/runs", RouteClass.TRIGGERS),
        ("POST", "/v1/lifecycle/runs", RouteClass.TRIGGERS),
        ("POST", "/v1/telemetry/events", RouteClass.TELEMETRY),
        ("GET", "/v1/runs/{run_id}", RouteClass.READS),
        ("GET", "/v1/docs/pages/{slug}", RouteClass.READS),
        ("POST", "/v1/runs/{run_id}/pause", RouteClass.CONTROL),
        ("POST", "/v1/runs/{run_id}/gates/{gate}/decision", RouteClass.CONTROL),
        ("DELETE", "/v1/webhooks/endpoints/{endpoint_id}", RouteClass.CONTROL),
    ],
)
def test_ratelimit_route_classes(method: str, path: str, expected: RouteClass) -> None:
    assert route_class(method, path, run_path="/run") == expected


async def test_ratelimit_http_429_with_headers_per_token(
    make_api: ApiFactory, settings: Settings, engine: Engine
) -> None:
    api = await make_api(
        # Trigger refills slow enough that no token comes back while the first trigger is being started (at the
        # default 20/s one returns every 50 ms, which a loaded CI machine's start_workflow can take).
        settings.model_copy(
            update={
                "rate_reads_per_s": 0.5,
                "rate_reads_burst": 3,
                "rate_triggers_burst": 1,
                "rate_triggers_per_s": 0.01,
            }
        )
    )
    path = "/v1/runs/rr_" + "0" * 32
    for remaining in (2, 1, 0):
        resp = await api.client.get(path, headers=api.headers())
        assert resp.status == 404  # admitted: the limit headers ride on errors too
        assert resp.headers["RateLimit-Limit"] == "3"
        assert resp.headers["RateLimit-Remaining"] == str(remaining)
        assert int(resp.headers["RateLimit-Reset"]) >= 1
    resp = await api.client.get(path, headers=api.headers())
    payload = await resp.json()
    assert resp.status == 429
    assert_envelope(payload, "RATE_LIMIT_EXCEEDED")
    assert payload["error"]["details"]["class"] == "reads"
    assert resp.headers["Retry-After"] == "6"  # 3 requests per 6 s window at 0.5/s: the first leaves it then
    assert resp.headers["RateLimit-Remaining"] == "0"
    assert resp.headers["X-Trace-Id"] == payload["error"]["traceId"]

    # Another class of the same token, and another token, have their own windows.
    body = {"repo_url": "https://example.invalid/x", "branch": "main"}
    resp = await api.client.post("/v1/runs", json=body, headers=api.headers())
    assert resp.status == 202
    assert resp.headers["RateLimit-Limit"] == "1" and resp.headers["RateLimit-Remaining"] == "0"
    resp = await api.client.post("/v1/runs", json=body, headers=api.headers())
    assert resp.status == 429
    other, _ = create_token(engine, workspace="default", subject="other")
    resp = await api.client.get(path, headers={"Authorization": f"Bearer {other}"})
    assert resp.status == 404

    # Public paths are not counted per token; unauthenticated requests never reach a token's window.
    for _ in range(5):
        assert (await api.client.get("/healthz")).status == 200
    resp = await api.client.get(path)
    assert resp.status == 401
    assert "RateLimit-Limit" not in resp.headers


async def test_ratelimit_can_be_disabled(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(settings.model_copy(update={"rate_limit_enabled": False, "rate_reads_burst": 1}))
    for _ in range(3):
        resp = await api.client.get("/v1/runs/rr_" + "0" * 32, headers=api.headers())
        assert resp.status == 404
        assert "RateLimit-Limit" not in resp.headers


async def test_ratelimit_storage_outage_fails_open_warns_once_and_recovers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RateLimiter(rates_from(Settings(rate_reads_per_s=0.01, rate_reads_burst=1)))
    strategy = limiter._strategy
    real_hit = strategy.hit
    state = {"down": True, "tries": 0}

    async def hit(*args: Any, **kwargs: Any) -> bool:
        state["tries"] += 1
        if state["down"]:
            raise StorageError(ConnectionError("connection refused"))
        return await real_hit(*args, **kwargs)

    monkeypatch.setattr(strategy, "hit", hit)
    monotonic = Clock()
    monkeypatch.setattr(api.ratelimit, "time", SimpleNamespace(time=time.time, monotonic=monotonic))
    with caplog.at_level(logging.WARNING, logger="quantapilot.api"):
        decisions = [await limiter.take("tok", RouteClass.READS) for _ in range(5)]
        assert all(d.allowed and not d.counted and d.headers() == {} for d in decisions)
        assert state["tries"] == 1  # within the probe interval the storage is not tried again
        monotonic.now += api.ratelimit.PROBE_INTERVAL_S
        assert (await limiter.take("tok", RouteClass.READS)).allowed
        assert state["tries"] == 2  # the next probe, still refused
        monotonic.now += api.ratelimit.PROBE_INTERVAL_S
        state["down"] = False
        assert (await limiter.take("tok", RouteClass.READS)).counted
        assert not (await limiter.take("tok", RouteClass.READS)).allowed  # limits apply again
        state["down"] = True
        await limiter.take("tok", RouteClass.READS)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("storage unreachable" in m for m in messages) == 2  # once per outage, two outages
    assert sum("reachable again" in m for m in messages) == 1
