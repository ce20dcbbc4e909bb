"""Heuristics the built-in agents share: KPI direction and bucket, improvement, value, objective rules.

* KPI direction (:func:`kpi_direction`): ``lower_is_better`` when a word of the KPI name is in
  :data:`LOWER_IS_BETTER_WORDS` (time, latency, cost, churn, errors, ...), else ``higher_is_better``.
* KPI bucket (:func:`kpi_bucket`): ``risk`` for words in :data:`RISK_WORDS`, else ``revenue`` for words in
  :data:`REVENUE_WORDS`, else ``cost`` (time and effort saved).
* Improvement (:func:`improved`): the bucket's share of :data:`IMPROVEMENT` (revenue 10%, cost 20%, risk 25%)
  in the KPI's direction.
* Annual value of moving a KPI (:func:`estimate_impact`): the amount itself for currency units, otherwise the
  relative improvement in percentage points times :data:`VALUE_PER_POINT` of the bucket.
* Business objectives (:data:`OBJECTIVE_RULES`, :func:`extract_objectives`): keyword rules over discovery
  notes; the opportunity agent names them, the target agent maps them to buckets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from quantapilot.lifecycle.models import Direction, KpiOverride, LifecycleInputs
from quantapilot.lifecycle.outputs import FinancialImpact, KpiTarget, KpiValue

Bucket = Literal["revenue", "cost", "risk"]
BUCKETS: tuple[Bucket, ...] = ("revenue", "cost", "risk")

# fmt: off
LOWER_IS_BETTER_WORDS = frozenset({
    "time", "latency", "ms", "seconds", "sec", "minutes", "hours", "days", "cost", "costs", "spend", "churn",
    "error", "errors", "defect", "defects", "incident", "incidents", "downtime", "backlog", "mttr", "cac",
    "attrition", "tickets", "escalations", "outages",
})
RISK_WORDS = frozenset({
    "churn", "risk", "error", "errors", "incident", "incidents", "downtime", "compliance", "security", "defect",
    "defects", "outage", "outages", "sla", "uptime", "availability", "mttr", "audit",
})
REVENUE_WORDS = frozenset({
    "revenue", "arr", "mrr", "sales", "pipeline", "conversion", "deal", "deals", "win", "bookings", "acv", "ltv",
    "nps", "csat", "retention", "upsell", "expansion", "orders",
})
# fmt: on
CURRENCY_UNITS = frozenset({"usd", "eur", "gbp", "chf", "jpy", "$", "€", "£", "currency"})
# Relative improvement a built-in target asks for, by bucket.
IMPROVEMENT: dict[Bucket, float] = {"revenue": 0.10, "cost": 0.20, "risk": 0.25}
# Annual value of one percentage point of improvement of a non-monetary KPI, by bucket (currency units).
VALUE_PER_POINT: dict[Bucket, float] = {"revenue": 20_000.0, "cost": 10_000.0, "risk": 8_000.0}


# ------------------------------------------------------------------------------------------------------------
# KPIs


def _words(kpi: str) -> set[str]:
    return set(re.split(r"[._]", kpi.lower()))


def kpi_direction(kpi: str) -> Direction:
    """Guess whether smaller values of ``kpi`` are better, from the words of its name."""
    return "lower_is_better" if _words(kpi) & LOWER_IS_BETTER_WORDS else "higher_is_better"


def kpi_from_override(override: KpiOverride) -> KpiValue | None:
    """The KPI an override names on its own (one no value model has), or ``None`` without baseline and target.

    Its direction is the override's, else :func:`kpi_direction` of its name.
    """
    if override.baseline is None or override.target is None:
        return None
    return KpiValue(
        kpi=override.kpi,
        baseline=override.baseline,
        target=override.target,
        unit=override.unit,
        direction=override.direction or kpi_direction(override.kpi),
    )


def kpi_bucket(kpi: str) -> Bucket:
    """Which financial bucket moving ``kpi`` pays into: risk, revenue, else cost."""
    words = _words(kpi)
    if words & RISK_WORDS:
        return "risk"
    if words & REVENUE_WORDS:
        return "revenue"
    return "cost"


def improved(*, kpi: str, value: float, direction: Direction) -> float:
    """Return ``value`` improved by the KPI bucket's :data:`IMPROVEMENT` share in ``direction``.

    A zero value cannot improve proportionally: lower-is-better stays at 0 and higher-is-better becomes 1.
    """
    if value == 0:
        return 0.0 if direction == "lower_is_better" else 1.0
    step = abs(value) * IMPROVEMENT[kpi_bucket(kpi)]
    return round(value + step if direction == "higher_is_better" else value - step, 4)


def gain(*, start: float, end: float, direction: Direction) -> float:
    """How much moving from ``start`` to ``end`` improves the KPI (0 when it gets worse)."""
    delta = end - start if direction == "higher_is_better" else start - end
    return max(delta, 0.0)


def estimate_impact(*, kpi: str, unit: str | None, start: float, end: float, direction: Direction) -> float:
    """Annual value, in currency units, of moving ``kpi`` from ``start`` to ``end``.

    For currency units the improvement is the value. Otherwise it is the relative improvement in percentage
    points (relative to ``|start|``, at least 1, so a zero start does not divide by zero) times the bucket's
    :data:`VALUE_PER_POINT`. Getting worse is worth 0.
    """
    delta = gain(start=start, end=end, direction=direction)
    if unit is not None and unit.strip().lower() in CURRENCY_UNITS:
        return round(delta, 2)
    points = delta / max(abs(start), 1.0) * 100
    return round(points * VALUE_PER_POINT[kpi_bucket(kpi)], 2)


def financial_impact(kpis: Sequence[KpiValue | KpiTarget]) -> FinancialImpact:
    """Sum :func:`estimate_impact` of every KPI's baseline-to-target move into the three buckets."""
    totals: dict[Bucket, float] = dict.fromkeys(BUCKETS, 0.0)
    for k in kpis:
        totals[kpi_bucket(k.kpi)] += estimate_impact(
            kpi=k.kpi, unit=k.unit, start=k.baseline, end=k.target, direction=k.direction
        )
    return FinancialImpact(
        revenue_opportunity=round(totals["revenue"], 2),
        cost_savings=round(totals["cost"], 2),
        risk_reduction=round(totals["risk"], 2),
        total=round(sum(totals.values()), 2),
    )


def kpis_from_benchmarks(inputs: LifecycleInputs) -> tuple[list[KpiValue], list[str]]:
    """Turn benchmarks into value-model KPIs: baseline = benchmark, target = :func:`improved` baseline.

    Returns:
        The KPIs (first benchmark of a KPI wins) and notes about skipped duplicates.
    """
    kpis: list[KpiValue] = []
    seen: set[str] = set()
    dupes: list[str] = []
    for b in inputs.benchmarks:
        if b.kpi in seen:
            dupes.append(b.kpi)
            continue
        seen.add(b.kpi)
        direction = kpi_direction(b.kpi)
        kpis.append(
            KpiValue(
                kpi=b.kpi,
                baseline=b.value,
                target=improved(kpi=b.kpi, value=b.value, direction=direction),
                unit=b.unit,
                direction=direction,
            )
        )
    notes = [f"Duplicate benchmarks ignored (first kept): {', '.join(sorted(set(dupes)))}."] if dupes else []
    return kpis, notes


# ------------------------------------------------------------------------------------------------------------
# Business objectives


@dataclass(frozen=True)
class ObjectiveRule:
    """A business objective recognised by keywords in discovery notes."""

    key: str
    keywords: tuple[str, ...]
    objective: str
    bucket: Bucket


OBJECTIVE_RULES: tuple[ObjectiveRule, ...] = (
    ObjectiveRule(
        "cost", ("cost", "spend", "expens", "budget", "saving", "overhead"), "Reduce operating costs", "cost"
    ),
    ObjectiveRule(
        "revenue",
        ("revenue", "growth", "grow ", "sales", "pipeline", "conversion", "upsell", "win rate", "bookings"),
        "Grow revenue and pipeline conversion",
        "revenue",
    ),
    ObjectiveRule(
        "efficiency",
        ("manual", "efficien", "productiv", "automat", "spreadsheet", "headcount", "hours"),
        "Increase team productivity through automation",
        "cost",
    ),
    ObjectiveRule(
        "risk",
        ("risk", "complian", "security", "audit", "outage", "incident", "downtime", "regulat"),
        "Reduce operational and compliance risk",
        "risk",
    ),
    ObjectiveRule(
        "retention",
        ("churn", "retention", "retain", "satisfaction", "nps", "csat", "renewal"),
        "Improve customer retention and satisfaction",
        "revenue",
    ),
    ObjectiveRule(
        "speed",
        ("slow", "latency", "response time", "faster", "speed", "performance", "cycle time"),
        "Speed up response and cycle times",
        "cost",
    ),
    ObjectiveRule(
        "visibility",
        ("visibility", "report", "forecast", "insight", "dashboard", "data quality"),
        "Improve visibility and forecasting",
        "revenue",
    ),
)
RULES_BY_KEY: dict[str, ObjectiveRule] = {r.key: r for r in OBJECTIVE_RULES}


def split_sentences(text: str) -> list[str]:
    """Split notes into sentences at ``.``/``!``/``?`` followed by whitespace, and at line breaks."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def extract_objectives(notes: str | None) -> list[str]:
    """Return the keys of :data:`OBJECTIVE_RULES` the notes mention, in order of first mention.

    Each sentence is tested against every rule (lower-cased substring match of a keyword); a rule counts once.
    """
    found: list[str] = []
    for sentence in split_sentences(notes or ""):
        lowered = f" {sentence.lower()} "
        for rule in OBJECTIVE_RULES:
            if rule.key not in found and any(k in lowered for k in rule.keywords):
                found.append(rule.key)
    return found
