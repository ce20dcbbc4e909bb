"""The built-in realization agent: the approved targets against the period's telemetry aggregates."""

from __future__ import annotations

from collections.abc import Sequence

from quantapilot.lifecycle.agents.base import make_result
from quantapilot.lifecycle.agents.heuristics import kpi_from_override
from quantapilot.lifecycle.outputs import KpiTarget, KpiValue, StageInput, StageResult
from quantapilot.lifecycle.realization import realize, report_period


class RealizationAgent:
    """Built-in realization agent: :func:`quantapilot.lifecycle.realization.realize`.

    KPI targets come from the latest approved target result, else the opportunity's value model, else
    ``inputs.kpis`` entries with baseline and target. The period is ``data.period`` (what the caller
    aggregated telemetry over), else ``inputs.reportPeriod``, else the 30 days before ``as_of``.
    """

    stage = "realization"

    def run(self, data: StageInput) -> StageResult:
        """Evaluate every KPI target against the period's telemetry aggregates."""
        targets: Sequence[KpiTarget | KpiValue]
        if data.target is not None:
            targets, source = data.target.kpi_targets, "the approved targets"
        elif data.opportunity is not None:
            targets, source = data.opportunity.value_model.kpis, "the opportunity's value model (no targets yet)"
        else:
            targets = [k for k in map(kpi_from_override, data.inputs.kpis) if k is not None]
            source = "this run's KPI inputs"
        period = data.period or report_period(requested=data.inputs.report_period, as_of=data.as_of)
        out = realize(targets=targets, aggregates=data.telemetry, period=period)
        out = out.model_copy(update={"notes": [f"KPIs from {source}.", *out.notes]})
        return make_result(data, out)
