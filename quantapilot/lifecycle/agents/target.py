"""The built-in target agent: KPI targets, value tree, ROI model and business case."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from quantapilot.lifecycle.agents.base import make_result
from quantapilot.lifecycle.agents.heuristics import (
    BUCKETS,
    OBJECTIVE_RULES,
    RULES_BY_KEY,
    Bucket,
    estimate_impact,
    financial_impact,
    kpi_bucket,
    kpi_from_override,
    kpis_from_benchmarks,
)
from quantapilot.lifecycle.models import Investment
from quantapilot.lifecycle.outputs import (
    FinancialImpact,
    KpiTarget,
    RoiModel,
    RoiStep,
    StageInput,
    StageResult,
    TargetOutput,
    ValueTree,
    ValueTreeLink,
    ValueTreeNode,
)
from quantapilot.lifecycle.render import num

DEFAULT_INVESTMENT = Investment(annual_cost=100_000.0, one_time_cost=50_000.0)
TARGET_HORIZON_DAYS = 180
# Share of the full annual benefit realised in years 1, 2 and 3 while adoption ramps up.
RAMP: tuple[float, float, float] = (0.5, 0.9, 1.0)

OUTCOME_LABELS: dict[Bucket, str] = {
    "revenue": "Increased revenue",
    "cost": "Lower operating cost",
    "risk": "Reduced risk",
}
METRIC_LABELS: dict[Bucket, str] = {
    "revenue": "Revenue opportunity",
    "cost": "Cost savings",
    "risk": "Risk reduction",
}


def target_confidence(*, baseline: float, target: float) -> float:
    """Default confidence of a KPI target: the bigger the relative move, the lower (0.85/0.75/0.6/0.45)."""
    move = abs(target - baseline) / max(abs(baseline), 1.0)
    if move <= 0.10:
        return 0.85
    if move <= 0.25:
        return 0.75
    if move <= 0.50:
        return 0.6
    return 0.45


def _objective_bucket(objective: str) -> Bucket:
    for rule in OBJECTIVE_RULES:
        if objective == rule.objective:
            return rule.bucket
    lowered = objective.lower()
    for rule in OBJECTIVE_RULES:
        if any(k in lowered for k in rule.keywords):
            return rule.bucket
    return "cost"


def build_value_tree(*, objectives: Sequence[str], kpis: Sequence[KpiTarget]) -> ValueTree:
    """Link objectives (capabilities) to bucket outcomes, outcomes to KPIs, and KPIs to financial metrics.

    Capability -> outcome links weigh 1 (each objective serves one bucket); outcome -> KPI links weigh the
    KPI's share of its bucket's estimated impact (equal shares when the bucket's impact is 0); KPI ->
    financial metric links weigh 1.
    """
    impact = {
        k.kpi: estimate_impact(kpi=k.kpi, unit=k.unit, start=k.baseline, end=k.target, direction=k.direction)
        for k in kpis
    }
    by_bucket: dict[Bucket, list[KpiTarget]] = {b: [k for k in kpis if kpi_bucket(k.kpi) == b] for b in BUCKETS}
    used = [b for b in BUCKETS if by_bucket[b] or any(_objective_bucket(o) == b for o in objectives)]
    nodes = [ValueTreeNode(id=f"capability:{i}", kind="capability", label=o) for i, o in enumerate(objectives, 1)]
    nodes += [ValueTreeNode(id=f"outcome:{b}", kind="outcome", label=OUTCOME_LABELS[b]) for b in used]
    nodes += [ValueTreeNode(id=f"kpi:{k.kpi}", kind="kpi", label=k.kpi) for k in kpis]
    metrics = [b for b in BUCKETS if by_bucket[b]]
    nodes += [ValueTreeNode(id=f"financial:{b}", kind="financial_metric", label=METRIC_LABELS[b]) for b in metrics]
    links = [
        ValueTreeLink(source=f"capability:{i}", target=f"outcome:{_objective_bucket(o)}", weight=1.0)
        for i, o in enumerate(objectives, 1)
    ]
    for b in used:
        members = by_bucket[b]
        total = sum(impact[k.kpi] for k in members)
        for k in members:
            weight = impact[k.kpi] / total if total > 0 else 1 / len(members)
            links.append(ValueTreeLink(source=f"outcome:{b}", target=f"kpi:{k.kpi}", weight=round(weight, 4)))
    links += [ValueTreeLink(source=f"kpi:{k.kpi}", target=f"financial:{kpi_bucket(k.kpi)}", weight=1.0) for k in kpis]
    return ValueTree(nodes=nodes, links=links)


def build_roi_model(*, impact: FinancialImpact, investment: Investment) -> RoiModel:
    """Ordered ROI steps from the annual impact and the investment, ending with the 3-year ROI in percent.

    Steps: annual benefit (sum of buckets); 3-year benefit with the adoption :data:`RAMP`; 3-year cost (one-time
    plus three annual costs); net benefit; ROI = net / cost x 100 (0 when the cost is 0, as ROI is undefined).
    """
    annual = round(impact.revenue_opportunity + impact.cost_savings + impact.risk_reduction, 2)
    y1, y2, y3 = RAMP
    benefit3 = round(annual * (y1 + y2 + y3), 2)
    cost3 = round(investment.one_time_cost + 3 * investment.annual_cost, 2)
    net = round(benefit3 - cost3, 2)
    roi = round(net / cost3 * 100, 2) if cost3 > 0 else 0.0
    steps = [
        RoiStep(
            name="annual_benefit",
            formula="revenue_opportunity + cost_savings + risk_reduction",
            inputs={
                "revenue_opportunity": impact.revenue_opportunity,
                "cost_savings": impact.cost_savings,
                "risk_reduction": impact.risk_reduction,
            },
            result=annual,
            reasoning="Full yearly value once every KPI reaches its target.",
        ),
        RoiStep(
            name="three_year_benefit",
            formula="annual_benefit * (ramp_y1 + ramp_y2 + ramp_y3)",
            inputs={"annual_benefit": annual, "ramp_y1": y1, "ramp_y2": y2, "ramp_y3": y3},
            result=benefit3,
            reasoning="Adoption ramps up: half the value in year 1, 90% in year 2, all of it in year 3.",
        ),
        RoiStep(
            name="three_year_cost",
            formula="one_time_cost + 3 * annual_cost",
            inputs={"one_time_cost": investment.one_time_cost, "annual_cost": investment.annual_cost},
            result=cost3,
            reasoning="Implementation once plus three years of subscription.",
        ),
        RoiStep(
            name="net_benefit",
            formula="three_year_benefit - three_year_cost",
            inputs={"three_year_benefit": benefit3, "three_year_cost": cost3},
            result=net,
            reasoning="Value left after paying for the solution.",
        ),
        RoiStep(
            name="three_year_roi_pct",
            formula="net_benefit / three_year_cost * 100",
            inputs={"net_benefit": net, "three_year_cost": cost3},
            result=roi,
            reasoning="Return per unit spent over three years"
            + (" (no cost given: ROI undefined, shown as 0)." if cost3 <= 0 else "."),
        ),
    ]
    return RoiModel(steps=steps, three_year_roi_pct=roi)


class TargetAgent:
    """Built-in target agent.

    * KPIs: the latest opportunity's value model (or, without one, the benchmarks as the opportunity agent
      reads them), with ``inputs.kpis`` overriding fields per KPI; an override for a new KPI is added when it
      has both baseline and target (direction from :func:`kpi_direction` unless given).
    * Each target's deadline is ``as_of`` + :data:`TARGET_HORIZON_DAYS` days unless overridden; its confidence
      comes from :func:`target_confidence` unless overridden.
    * Value tree: :func:`build_value_tree` over the opportunity's objectives and the KPI targets.
    * ROI: :func:`build_roi_model` of the targets' :func:`financial_impact` against ``inputs.investment`` or
      :data:`DEFAULT_INVESTMENT` (annual 100,000, one-time 50,000).
    """

    stage = "target"

    def run(self, data: StageInput) -> StageResult:
        """Build KPI targets, value tree, ROI model and business case."""
        inputs = data.inputs
        notes: list[str] = []
        if data.opportunity is not None:
            base = list(data.opportunity.value_model.kpis)
            objectives = list(data.opportunity.business_objectives)
        else:
            base, dupe_notes = kpis_from_benchmarks(inputs)
            notes += dupe_notes
            notes.append("No opportunity result: KPIs derived from this run's benchmarks.")
            objectives = []
        overrides = {o.kpi: o for o in inputs.kpis}
        default_deadline = data.as_of.date() + timedelta(days=TARGET_HORIZON_DAYS)
        targets: list[KpiTarget] = []
        for k in base:
            o = overrides.pop(k.kpi, None)
            baseline = o.baseline if o and o.baseline is not None else k.baseline
            goal = o.target if o and o.target is not None else k.target
            targets.append(
                KpiTarget(
                    kpi=k.kpi,
                    baseline=baseline,
                    target=goal,
                    unit=o.unit if o and o.unit is not None else k.unit,
                    direction=o.direction if o and o.direction is not None else k.direction,
                    deadline=o.deadline if o and o.deadline is not None else default_deadline,
                    confidence=(
                        o.confidence
                        if o and o.confidence is not None
                        else target_confidence(baseline=baseline, target=goal)
                    ),
                )
            )
        skipped: list[str] = []
        for o in overrides.values():
            added = kpi_from_override(o)
            if added is None:
                skipped.append(o.kpi)
                continue
            targets.append(
                KpiTarget(
                    **added.model_dump(),
                    deadline=o.deadline or default_deadline,
                    confidence=(
                        o.confidence
                        if o.confidence is not None
                        else target_confidence(baseline=added.baseline, target=added.target)
                    ),
                )
            )
        if skipped:
            notes.append(f"Overrides for unknown KPIs without baseline and target ignored: {', '.join(skipped)}.")
        if not targets:
            notes.append("No KPIs to target: give benchmarks or KPI overrides with baseline and target.")
        if not objectives:
            objectives = [RULES_BY_KEY[k].objective for k in dict.fromkeys(_bucket_rule(t.kpi) for t in targets)]

        impact = financial_impact(targets)
        roi = build_roi_model(impact=impact, investment=inputs.investment or DEFAULT_INVESTMENT)
        if inputs.investment is None:
            notes.append("No investment given: default costs used (annual 100,000, one-time 50,000).")
        output = TargetOutput(
            value_tree=build_value_tree(objectives=objectives, kpis=targets),
            roi_model=roi,
            kpi_targets=targets,
            value_commitment=_commitment(targets),
            business_case_summary=(
                f"Reaching {len(targets)} KPI target(s) is worth {num(impact.total)} a year "
                f"(revenue {num(impact.revenue_opportunity)}, cost {num(impact.cost_savings)}, "
                f"risk {num(impact.risk_reduction)}). Over three years the benefit of {num(roi.steps[1].result)} "
                f"against a cost of {num(roi.steps[2].result)} gives an ROI of {num(roi.three_year_roi_pct)}%."
            ),
            notes=notes,
        )
        return make_result(data, output)


def _bucket_rule(kpi: str) -> str:
    # The objective a KPI serves when no opportunity named any: the first rule of the KPI's bucket.
    return {"revenue": "revenue", "cost": "cost", "risk": "risk"}[kpi_bucket(kpi)]


def _commitment(targets: Sequence[KpiTarget]) -> str:
    if not targets:
        return "No commitment yet: no KPI targets."
    parts = [f"{t.kpi} from {num(t.baseline)} to {num(t.target)}{' ' + t.unit if t.unit else ''}" for t in targets[:10]]
    more = f", and {len(targets) - 10} more" if len(targets) > 10 else ""
    deadline = max(t.deadline for t in targets).isoformat()
    return f"By {deadline} we commit to moving {'; '.join(parts)}{more}."
