"""Retry schedule: about three days of backoff, jitter bounds, Retry-After handling."""

from __future__ import annotations

import random

import pytest

from quantapilot.webhooks.schedule import (
    DISABLE_AFTER,
    MAX_ATTEMPTS,
    RETRY_AFTER_CAP_S,
    RETRY_SCHEDULE_DOC,
    next_delay,
    nominal_delay,
)

DAY = 86400.0


def _total(rng: random.Random) -> tuple[float, int]:
    total, attempt = 0.0, 1
    while (delay := next_delay(attempt, rng=rng)) is not None:
        total += delay
        attempt += 1
    return total, attempt


def test_schedule_sums_to_about_three_days() -> None:
    totals = []
    for seed in range(200):
        total, attempts = _total(random.Random(seed))
        assert attempts == MAX_ATTEMPTS
        totals.append(total)
    mean = sum(totals) / len(totals)
    assert 2.7 * DAY < mean < 3.2 * DAY
    assert all(2.4 * DAY < t < 3.4 * DAY for t in totals)


def test_schedule_delays_grow_and_stay_within_jitter_bounds() -> None:
    rng = random.Random(7)
    for attempt in range(1, MAX_ATTEMPTS):
        nominal = nominal_delay(attempt)
        for _ in range(20):
            delay = next_delay(attempt, rng=rng)
            assert delay is not None
            assert nominal / 2 <= delay <= nominal
    assert nominal_delay(1) < nominal_delay(2) < nominal_delay(5)
    assert nominal_delay(MAX_ATTEMPTS - 1) == nominal_delay(MAX_ATTEMPTS + 50)


def test_schedule_gives_up_after_max_attempts() -> None:
    assert next_delay(MAX_ATTEMPTS - 1) is not None
    assert next_delay(MAX_ATTEMPTS) is None
    assert next_delay(MAX_ATTEMPTS + 1, retry_after_s=5) is None
    assert next_delay(10_000) is None


def test_schedule_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt"):
        next_delay(0)


def test_schedule_retry_after_is_honoured_and_capped() -> None:
    rng = random.Random(1)
    assert next_delay(1, rng=rng, retry_after_s=120) == 120
    # A shorter Retry-After never shortens the backoff.
    delay = next_delay(12, rng=random.Random(1), retry_after_s=1)
    assert delay is not None
    assert delay >= nominal_delay(12) / 2
    assert next_delay(1, rng=rng, retry_after_s=30 * DAY) == RETRY_AFTER_CAP_S


def test_schedule_doc_lists_every_attempt() -> None:
    assert f"| {MAX_ATTEMPTS} | given up" in RETRY_SCHEDULE_DOC
    assert "| 1 | 15 s to 30 s |" in RETRY_SCHEDULE_DOC
    assert DISABLE_AFTER.days == 5
