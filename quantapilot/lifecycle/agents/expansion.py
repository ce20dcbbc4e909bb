"""The built-in expansion agent: proposals, improvements and an opportunity score from the latest realization."""

from __future__ import annotations

from typing import Literal

from quantapilot.lifecycle.agents.base import make_result
from quantapilot.lifecycle.agents.heuristics import estimate_impact, improved
from quantapilot.lifecycle.models import KpiStatus
from quantapilot.lifecycle.outputs import (
    ExpansionOutput,
    Improvement,
    Proposal,
    RealizationOutput,
    StageInput,
    StageResult,
)
from quantapilot.lifecycle.render import num

STATUS_POINTS: dict[KpiStatus, float] = {"achieved": 100.0, "on_track": 70.0, "at_risk": 40.0, "missed": 20.0}


class ExpansionAgent:
    """Built-in expansion agent, driven by the latest realization.

    Per KPI: achieved -> ``upsell`` (raise the target; confidence 0.8), on_track -> ``expansion`` (roll out to
    more teams; 0.65), at_risk -> ``optimization`` (close the gap; 0.6), missed -> ``optimization`` (recovery
    plan; 0.4); confidence halves for KPIs measured without telemetry. Each KPI also gets an improvement:
    achieved and on_track KPIs are proposed one more :func:`improved` step from the actual, the others their
    target; its value is :func:`estimate_impact` from actual to proposed, which is each proposal's estimated
    value. When the overall status is achieved, a ``cross_sell`` proposal worth half of the upsell value is
    added. Opportunity score: the mean of :data:`STATUS_POINTS` over KPIs (half points without telemetry),
    0 without a realization or KPIs.
    """

    stage = "expansion"

    def run(self, data: StageInput) -> StageResult:
        """Derive proposals, improvements and the opportunity score."""
        real: RealizationOutput | None = data.realization
        if real is None or not real.kpis:
            output = ExpansionOutput(
                proposals=[],
                improvements=[],
                opportunity_score=0.0,
                notes=["No realization with KPIs yet: run the realization stage first."],
            )
            return make_result(data, output)
        proposals: list[Proposal] = []
        improvements: list[Improvement] = []
        points = 0.0
        upsell_value = 0.0
        for k in real.kpis:
            if k.status in ("achieved", "on_track"):
                proposed = improved(kpi=k.kpi, value=k.actual, direction=k.direction)
            else:
                proposed = k.target
            value = estimate_impact(kpi=k.kpi, unit=k.unit, start=k.actual, end=proposed, direction=k.direction)
            improvements.append(Improvement(kpi=k.kpi, current=k.actual, proposed=proposed, incremental_value=value))
            kind, title, confidence = _proposal_for(k.status, k.kpi, proposed, k.unit)
            factor = 1.0 if k.confidence == "high" else 0.5
            points += STATUS_POINTS[k.status] * factor
            if kind == "upsell":
                upsell_value += value
            proposals.append(
                Proposal(
                    type=kind,
                    title=title,
                    kpi=k.kpi,
                    estimated_value=value,
                    confidence=round(confidence * factor, 2),
                    rationale=f"{k.kpi} is {k.status.replace('_', ' ')} ({num(k.progress_pct)}% progress).",
                )
            )
        if real.overall_status == "achieved":
            proposals.append(
                Proposal(
                    type="cross_sell",
                    title="Adopt an adjacent module for the next value area",
                    estimated_value=round(upsell_value / 2, 2),
                    confidence=0.5,
                    rationale="Targets achieved overall: the account is ready for a broader scope.",
                )
            )
        score = round(points / len(real.kpis), 1)
        output = ExpansionOutput(proposals=proposals, improvements=improvements, opportunity_score=score)
        return make_result(data, output)


def _proposal_for(
    status: KpiStatus, kpi: str, proposed: float, unit: str | None
) -> tuple[Literal["upsell", "expansion", "optimization"], str, float]:
    target = f"{num(proposed)}{' ' + unit if unit else ''}"
    if status == "achieved":
        return "upsell", f"Raise the {kpi} target to {target}", 0.8
    if status == "on_track":
        return "expansion", f"Extend the {kpi} programme to more teams", 0.65
    if status == "at_risk":
        return "optimization", f"Optimise {kpi} to close the gap to {target}", 0.6
    return "optimization", f"Recovery plan for {kpi} towards {target}", 0.4
