"""Realization arithmetic, table-driven (SEED-NOTES, ValueCanvas)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from quantapilot.lifecycle.models import Direction, KpiStatus, ReportPeriod
from quantapilot.lifecycle.outputs import KpiAggregate, KpiTarget
from quantapilot.lifecycle.realization import (
    evaluate_kpi,
    overall_status,
    realize,
    report_period,
    variance_of,
)

PERIOD = ReportPeriod(start=datetime(2025, 11, 1, tzinfo=UTC), end=datetime(2025, 12, 1, tzinfo=UTC))


def target(kpi: str, baseline: float, goal: float, direction: Direction = "higher_is_better") -> KpiTarget:
    return KpiTarget(
        kpi=kpi,
        baseline=baseline,
        target=goal,
        unit="u",
        direction=direction,
        deadline=date(2026, 6, 1),
        confidence=0.8,
    )


def agg(kpi: str, mean: float, count: int = 3) -> KpiAggregate:
    return KpiAggregate(kpi=kpi, mean=mean, count=count, min=mean, max=mean, last=mean)


@pytest.mark.parametrize(
    ("baseline", "goal", "direction", "actual", "status", "progress"),
    [
        # higher is better
        (100, 200, "higher_is_better", 200, "achieved", 100.0),
        (100, 200, "higher_is_better", 250, "achieved", 100.0),
        (100, 200, "higher_is_better", 190, "on_track", 90.0),  # exactly 90
        (100, 200, "higher_is_better", 189.9, "at_risk", 89.9),
        (100, 200, "higher_is_better", 170, "at_risk", 70.0),  # exactly 70
        (100, 200, "higher_is_better", 169.99, "missed", 69.99),
        (100, 200, "higher_is_better", 50, "missed", 0.0),  # below baseline clips at 0
        (0.1, 0.3, "higher_is_better", 0.28, "on_track", 90.0),  # float noise must not flip the threshold
        # lower is better: both differences flip sign
        (500, 300, "lower_is_better", 300, "achieved", 100.0),
        (500, 300, "lower_is_better", 250, "achieved", 100.0),
        (500, 300, "lower_is_better", 320, "on_track", 90.0),
        (500, 300, "lower_is_better", 360, "at_risk", 70.0),
        (500, 300, "lower_is_better", 361, "missed", 69.5),
        (500, 300, "lower_is_better", 600, "missed", 0.0),
        # target not better than baseline and not reached: nothing to progress towards
        (100, 100, "higher_is_better", 90, "missed", 0.0),
        (100, 80, "higher_is_better", 70, "missed", 0.0),
    ],
)
def test_realization_kpi_status_table(
    baseline: float, goal: float, direction: Direction, actual: float, status: KpiStatus, progress: float
) -> None:
    result = evaluate_kpi(target=target("k", baseline, goal, direction), aggregate=agg("k", actual))
    assert result.status == status
    assert result.progress_pct == pytest.approx(progress)
    assert result.actual == actual
    assert result.variance == pytest.approx(actual - goal)
    assert result.confidence == "high"
    assert result.samples == 3


def test_realization_no_data_uses_baseline_with_low_confidence() -> None:
    result = evaluate_kpi(target=target("k", 100, 200), aggregate=None)
    assert (result.actual, result.samples, result.confidence) == (100, 0, "low")
    assert result.status == "missed"
    assert result.progress_pct == 0.0
    assert result.variance == -100
    assert result.variance_pct == -50.0


def test_realization_no_data_but_baseline_meets_target_is_achieved() -> None:
    result = evaluate_kpi(target=target("k", 10, 20, "lower_is_better"), aggregate=None)
    assert result.status == "achieved"
    assert result.confidence == "low"


@pytest.mark.parametrize(
    ("actual", "goal", "variance", "pct"),
    [
        (110, 100, 10, 10.0),
        (90, 100, -10, -10.0),
        (-5, -10, 5, -50.0),  # a negative target divides as the formula says
        (0, 0, 0, 0.0),
        (3, 0, 3, None),  # zero target: relative variance undefined
    ],
)
def test_realization_variance_table(actual: float, goal: float, variance: float, pct: float | None) -> None:
    assert variance_of(actual=actual, target=goal) == (variance, pct)


def statuses(achieved: int = 0, on_track: int = 0, at_risk: int = 0, missed: int = 0) -> list[KpiStatus]:
    out: list[KpiStatus] = []
    out += ["achieved"] * achieved
    out += ["on_track"] * on_track
    out += ["at_risk"] * at_risk
    out += ["missed"] * missed
    return out


@pytest.mark.parametrize(
    ("kpis", "expected"),
    [
        (statuses(achieved=8, on_track=2), "achieved"),  # exactly 80%
        (statuses(achieved=4, missed=1), "achieved"),  # 80% of 5
        (statuses(achieved=7, on_track=3), "on_track"),  # 70% achieved, nothing behind
        (statuses(achieved=7, missed=3), "at_risk"),  # exactly 30% behind
        (statuses(achieved=3, on_track=5, at_risk=1, missed=1), "on_track"),  # 20% behind
        (statuses(on_track=7, at_risk=3), "at_risk"),
        (statuses(on_track=3, at_risk=1), "on_track"),  # 25% behind
        (statuses(on_track=2, missed=1), "at_risk"),  # 33% behind
        (statuses(achieved=1), "achieved"),
        (statuses(missed=1), "at_risk"),
        ([], "on_track"),  # no KPIs: defined as on_track
    ],
)
def test_realization_overall_status_table(kpis: list[KpiStatus], expected: str) -> None:
    assert overall_status(kpis) == expected


def test_realization_realize_combines_kpis_and_notes() -> None:
    targets = [target("a", 0, 100), target("b", 10, 5, "lower_is_better"), target("c", 1, 2)]
    aggregates = {"a": agg("a", 95), "b": agg("b", 8), "x": agg("x", 1)}
    out = realize(targets=targets, aggregates=aggregates, period=PERIOD)
    assert [k.status for k in out.kpis] == ["on_track", "missed", "missed"]
    assert out.overall_status == "at_risk"
    assert out.period == PERIOD
    assert any("c" in n and "No telemetry" in n for n in out.notes)
    assert any("x" in n and "without a target" in n for n in out.notes)


def test_realization_realize_without_kpis_is_on_track_with_note() -> None:
    out = realize(targets=[], aggregates={}, period=PERIOD)
    assert out.kpis == []
    assert out.overall_status == "on_track"
    assert out.notes


def test_realization_default_period_is_thirty_days_before_as_of() -> None:
    as_of = datetime(2025, 11, 17, 12, tzinfo=UTC)
    period = report_period(requested=None, as_of=as_of)
    assert period.end == as_of
    assert period.end - period.start == timedelta(days=30)
    assert report_period(requested=PERIOD, as_of=as_of) == PERIOD


def test_realization_no_movement_on_falling_target_is_plain_zero() -> None:
    result = evaluate_kpi(target=target("k", 5, 3, "lower_is_better"), aggregate=None)
    assert str(result.progress_pct) == "0.0"
    assert str(variance_of(actual=-2, target=-2)[1]) == "0.0"
