"""Realization arithmetic: pure functions from KPI targets and telemetry aggregates to statuses.

The rules follow SEED-NOTES (ValueCanvas) exactly; where they are silent the choice is documented on the
function that makes it:

* ``actual`` is the mean of the KPI's telemetry in the report period; with no samples it is the baseline and
  the confidence is ``low`` (:func:`actual_of`).
* ``variance = actual - target``; ``variance_pct = variance / target * 100``, undefined (``None``) for a zero
  target unless the variance is zero too (:func:`variance_of`).
* ``achieved`` when the target is reached in the KPI's direction (:func:`target_reached`); otherwise
  ``progress = (actual - baseline) / (target - baseline) * 100`` clipped at 0 (:func:`progress_of`), and
  ``on_track`` >= 90, ``at_risk`` >= 70, else ``missed`` (:func:`kpi_status`).
* Overall: ``achieved`` when >= 80% of KPIs are achieved, else ``at_risk`` when >= 30% are at risk or missed,
  else ``on_track`` (:func:`overall_status`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

from quantapilot.lifecycle.models import Confidence, Direction, KpiStatus, OverallStatus, ReportPeriod
from quantapilot.lifecycle.outputs import KpiAggregate, KpiRealization, KpiTarget, KpiValue, RealizationOutput

ON_TRACK_PCT = 90.0
AT_RISK_PCT = 70.0
# Overall thresholds as fractions of ten so the comparisons stay in exact integer arithmetic.
ACHIEVED_SHARE_TENTHS = 8
AT_RISK_SHARE_TENTHS = 3
DEFAULT_PERIOD_DAYS = 30
# Percentages are rounded before they meet a threshold so float noise (190/200 style) cannot flip a status.
PCT_DIGITS = 6


def report_period(*, requested: ReportPeriod | None, as_of: datetime) -> ReportPeriod:
    """Return the report period: the requested one, else the ``DEFAULT_PERIOD_DAYS`` days up to ``as_of``.

    Args:
        requested: ``inputs.reportPeriod`` of the run, if given.
        as_of: Timezone-aware "now" of the run.
    """
    if requested is not None:
        return requested
    end = as_of.astimezone(UTC)
    return ReportPeriod(start=end - timedelta(days=DEFAULT_PERIOD_DAYS), end=end)


def actual_of(*, baseline: float, aggregate: KpiAggregate | None) -> tuple[float, int, Confidence]:
    """Return ``(actual, samples, confidence)`` for one KPI.

    The actual is the mean of the period's samples with ``high`` confidence; without samples it is the
    baseline (nothing measured, so nothing moved) with ``low`` confidence.
    """
    if aggregate is None or aggregate.count == 0:
        return baseline, 0, "low"
    return aggregate.mean, aggregate.count, "high"


def variance_of(*, actual: float, target: float) -> tuple[float, float | None]:
    """Return ``(variance, variance_pct)`` with ``variance = actual - target``.

    ``variance_pct = variance / target * 100``. A zero target has no meaningful relative variance: the
    percentage is ``0.0`` when the actual is exactly on target and ``None`` (JSON ``null``) otherwise.
    """
    variance = actual - target
    if target == 0:
        return variance, 0.0 if variance == 0 else None
    # Adding 0.0 turns -0.0 (zero variance over a negative target) into 0.0.
    return variance, round(variance * 100 / target, PCT_DIGITS) + 0.0


def target_reached(*, actual: float, target: float, direction: Direction) -> bool:
    """Tell whether ``actual`` reaches ``target``: ``>=`` when higher is better, ``<=`` when lower is better.

    Values within a relative 1e-9 of the target count as reached, so a mean such as 89.99999999999999 of
    samples that average exactly 90 is not reported as a miss.
    """
    if math.isclose(actual, target, rel_tol=1e-9, abs_tol=1e-12):
        return True
    return actual >= target if direction == "higher_is_better" else actual <= target


def progress_of(*, baseline: float, target: float, actual: float, direction: Direction) -> float:
    """Return the progress from baseline to target in percent, for a KPI that has not reached its target.

    ``(actual - baseline) / (target - baseline) * 100``, clipped at 0 when the actual moved away from the
    target. For ``lower_is_better`` KPIs the target lies below the baseline, so numerator and denominator
    both flip sign and the same formula measures the distance covered; no special case is needed.

    When the target is not strictly better than the baseline in the KPI's direction (equal to it, or on the
    worse side, which a consistent plan never has) and yet is not reached, the actual is worse than both, so
    the progress is 0.
    """
    span = target - baseline
    better = span > 0 if direction == "higher_is_better" else span < 0
    if not better:
        return 0.0
    pct = round((actual - baseline) * 100 / span, PCT_DIGITS)
    # max(0.0, ...) first so a -0.0 (no movement on a falling target) reports as 0.0.
    return min(max(0.0, pct), 100.0)


def kpi_status(*, reached: bool, progress_pct: float) -> KpiStatus:
    """Map a KPI's progress to its status: achieved, on_track (>= 90), at_risk (>= 70), else missed."""
    if reached:
        return "achieved"
    if progress_pct >= ON_TRACK_PCT:
        return "on_track"
    if progress_pct >= AT_RISK_PCT:
        return "at_risk"
    return "missed"


def evaluate_kpi(*, target: KpiTarget | KpiValue, aggregate: KpiAggregate | None) -> KpiRealization:
    """Compute one KPI's realization from its target and the period's telemetry aggregate.

    An achieved KPI reports 100% progress.
    """
    actual, samples, confidence = actual_of(baseline=target.baseline, aggregate=aggregate)
    variance, variance_pct = variance_of(actual=actual, target=target.target)
    reached = target_reached(actual=actual, target=target.target, direction=target.direction)
    progress = (
        100.0
        if reached
        else progress_of(baseline=target.baseline, target=target.target, actual=actual, direction=target.direction)
    )
    return KpiRealization(
        kpi=target.kpi,
        baseline=target.baseline,
        target=target.target,
        actual=actual,
        unit=target.unit,
        direction=target.direction,
        variance=variance,
        variance_pct=variance_pct,
        progress_pct=progress,
        status=kpi_status(reached=reached, progress_pct=progress),
        samples=samples,
        confidence=confidence,
    )


def overall_status(statuses: Sequence[KpiStatus]) -> OverallStatus:
    """Return the account's overall status from its KPI statuses.

    ``achieved`` when at least 80% of KPIs are achieved, else ``at_risk`` when at least 30% are at risk or
    missed, else ``on_track``. With no KPIs there is nothing off track, so the result is ``on_track`` (callers
    add a note saying no KPI was evaluated).
    """
    n = len(statuses)
    if n == 0:
        return "on_track"
    achieved = sum(1 for s in statuses if s == "achieved")
    behind = sum(1 for s in statuses if s in ("at_risk", "missed"))
    if achieved * 10 >= ACHIEVED_SHARE_TENTHS * n:
        return "achieved"
    if behind * 10 >= AT_RISK_SHARE_TENTHS * n:
        return "at_risk"
    return "on_track"


def realize(
    *,
    targets: Sequence[KpiTarget | KpiValue],
    aggregates: Mapping[str, KpiAggregate],
    period: ReportPeriod,
) -> RealizationOutput:
    """Compute the realization of every target KPI over ``period``.

    Args:
        targets: KPI targets, in the order the report lists them.
        aggregates: Telemetry aggregates of ``period`` keyed by KPI; KPIs without a target are ignored and
            named in the notes.
        period: The report period the aggregates cover.

    Returns:
        Per-KPI realizations and the overall status.
    """
    kpis = [evaluate_kpi(target=t, aggregate=aggregates.get(t.kpi)) for t in targets]
    notes: list[str] = []
    if not kpis:
        notes.append("No KPI targets to evaluate: run the target stage first. Overall status defaults to on_track.")
    no_data = [k.kpi for k in kpis if k.samples == 0]
    if no_data:
        notes.append(f"No telemetry in the period for: {', '.join(no_data)} (actual = baseline, low confidence).")
    targeted = {t.kpi for t in targets}
    untracked = sorted(k for k in aggregates if k not in targeted)
    if untracked:
        notes.append(f"Telemetry without a target, not evaluated: {', '.join(untracked)}.")
    return RealizationOutput(
        kpis=kpis,
        overall_status=overall_status([k.status for k in kpis]),
        period=period,
        notes=notes,
    )
