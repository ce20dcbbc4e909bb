"""Retry schedule for webhook deliveries: exponential backoff with equal jitter for about three days.

The nominal delay after ``n`` failed attempts is ``min(BASE_DELAY_S * 2**(n-1), MAX_DELAY_S)``; the actual
delay is drawn uniformly from ``[nominal/2, nominal]`` ("equal jitter"), so receivers coming back after an
outage are not hit by every pending delivery in the same second, yet no retry comes much earlier than planned.
With :data:`MAX_ATTEMPTS` attempts the retries span 2.9 days on average (1.9 to 3.9 days at the extremes;
with this many draws, within a few hours of the mean in practice), then the delivery is given up.

A receiver's ``Retry-After`` is honoured: the delay becomes the larger of the backoff and the requested wait,
capped at :data:`RETRY_AFTER_CAP` so one answer cannot park a delivery for weeks.

An endpoint whose deliveries have failed continuously for :data:`DISABLE_AFTER` is disabled (and a
``webhook.endpoint_disabled`` event recorded); ``410 Gone`` disables it at once.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Final

BASE_DELAY_S: Final = 30.0
MAX_DELAY_S: Final = 6 * 3600.0
MAX_ATTEMPTS: Final = 25
RETRY_AFTER_CAP_S: Final = 6 * 3600.0
DISABLE_AFTER: Final = timedelta(days=5)

_system_rng = random.SystemRandom()


def nominal_delay(attempt: int) -> float:
    """Return the upper bound of the delay after ``attempt`` failed attempts (before jitter).

    Args:
        attempt: Number of attempts made so far (1 after the first failure).

    Returns:
        Seconds.
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    # Cap the exponent first: 2**attempt for a huge attempt number would overflow a float.
    return min(BASE_DELAY_S * 2.0 ** min(attempt - 1, 32), MAX_DELAY_S)


def next_delay(
    attempt: int,
    *,
    rng: random.Random | None = None,
    retry_after_s: float | None = None,
) -> float | None:
    """Return how long to wait before the next attempt, or None to give up.

    Args:
        attempt: Number of attempts made so far, counting from 1 (the one that just failed).
        rng: Random source for the jitter; tests pass a seeded one. Defaults to the system RNG.
        retry_after_s: The receiver's ``Retry-After``, in seconds, if it sent one.

    Returns:
        Seconds to wait, or None once :data:`MAX_ATTEMPTS` attempts have been made.

    Raises:
        ValueError: If ``attempt`` is below 1.
    """
    nominal = nominal_delay(attempt)
    if attempt >= MAX_ATTEMPTS:
        return None
    delay = nominal / 2 + (rng or _system_rng).uniform(0, nominal / 2)
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, RETRY_AFTER_CAP_S))
    return delay


def _human(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.2f} d"


def _schedule_table() -> str:
    rows = ["| After attempt | Next attempt waits | Elapsed since first attempt (typical) |", "|---|---|---|"]
    total = 0.0
    for attempt in range(1, MAX_ATTEMPTS):
        nominal = nominal_delay(attempt)
        # Equal jitter draws from [nominal/2, nominal], so the typical wait is three quarters of the nominal.
        total += 0.75 * nominal
        rows.append(f"| {attempt} | {_human(nominal / 2)} to {_human(nominal)} | {_human(total)} |")
    rows.append(f"| {MAX_ATTEMPTS} | given up | — |")
    return "\n".join(rows)


RETRY_SCHEDULE_DOC: Final[str] = (
    f"Webhook deliveries are attempted up to {MAX_ATTEMPTS} times. A 2xx answer within the timeout is "
    "success; `410 Gone` disables the endpoint; anything else (other statuses, timeouts, refused "
    "connections) is retried with exponential backoff and equal jitter (each wait is drawn between half "
    "and all of the nominal delay), for about three days in total. `Retry-After` (seconds or HTTP date) "
    "is honoured, up to "
    f"{_human(RETRY_AFTER_CAP_S)}. An endpoint failing for {DISABLE_AFTER.days} days is disabled.\n\n"
    + _schedule_table()
    + "\n"
)
"""Markdown description and table of the nominal schedule, for the README."""
