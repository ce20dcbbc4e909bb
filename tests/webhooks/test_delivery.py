"""The delivery state machine's rules that need no database: classifying answers and the retry delay."""

from __future__ import annotations

import pytest

from quantapilot.webhooks.delivery import classify_answer, retry_delay
from quantapilot.webhooks.schedule import MAX_ATTEMPTS, RETRY_AFTER_CAP_S, nominal_delay
from quantapilot.webhooks.tables import DeliveryOutcome


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, DeliveryOutcome.DELIVERED),
        (204, DeliveryOutcome.DELIVERED),
        (299, DeliveryOutcome.DELIVERED),
        (410, DeliveryOutcome.GONE),
        (301, DeliveryOutcome.RETRY),
        (400, DeliveryOutcome.RETRY),
        (404, DeliveryOutcome.RETRY),
        (429, DeliveryOutcome.RETRY),
        (500, DeliveryOutcome.RETRY),
        (503, DeliveryOutcome.RETRY),
        (None, DeliveryOutcome.RETRY),
    ],
)
def test_delivery_classify_answer(status: int | None, outcome: DeliveryOutcome) -> None:
    assert classify_answer(status) is outcome


def test_delivery_retry_delay_scaled_within_jitter() -> None:
    for index in (1, 5, MAX_ATTEMPTS - 1):
        delay = retry_delay(index, retry_scale=0.5, retry_after_s=None)
        assert delay is not None
        nominal = nominal_delay(index)
        assert 0.5 * nominal / 2 <= delay <= 0.5 * nominal


def test_delivery_retry_delay_honours_retry_after_unscaled_and_capped() -> None:
    # Retry-After is the receiver's wish: not scaled with the schedule, at least as long as asked.
    delay = retry_delay(1, retry_scale=0.001, retry_after_s=120)
    assert delay == 120
    assert retry_delay(1, retry_scale=1.0, retry_after_s=10 * RETRY_AFTER_CAP_S) == RETRY_AFTER_CAP_S
    # A zero or negative wish changes nothing.
    small = retry_delay(1, retry_scale=0.001, retry_after_s=0)
    assert small is not None and small <= 0.001 * nominal_delay(1)


def test_delivery_retry_delay_gives_up_at_the_end_of_the_schedule() -> None:
    assert retry_delay(MAX_ATTEMPTS, retry_scale=1.0, retry_after_s=None) is None
    assert retry_delay(MAX_ATTEMPTS, retry_scale=1.0, retry_after_s=60) is None
