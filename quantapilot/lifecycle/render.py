"""Markdown reports of stage results, published as docs pages (``accounts/<accountId>/<stage>``).

Rendering is deterministic: the same result gives the same bytes, so republishing an unchanged result does not
create a new page version.
"""

from __future__ import annotations

from collections.abc import Sequence

from quantapilot.lifecycle.outputs import (
    ExpansionOutput,
    OpportunityOutput,
    RealizationOutput,
    StageResult,
    TargetOutput,
)

TITLES = {
    "opportunity": "Opportunity",
    "target": "Value targets and business case",
    "realization": "Value realization",
    "expansion": "Expansion",
}


def num(value: float | None) -> str:
    """Format a number for a report: thousands separators, at most two decimals, ``n/a`` for ``None``."""
    if value is None:
        return "n/a"
    if float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def cell(text: object) -> str:
    """Make ``text`` safe inside a Markdown table cell (pipes escaped, line breaks flattened)."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Return the lines of a Markdown table."""
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def _opportunity(out: OpportunityOutput) -> list[str]:
    fit = out.persona_fit
    impact = out.value_model.financial_impact
    lines = ["## Summary", "", out.summary, "", "## Persona fit", ""]
    lines += table(
        ["Role", "Decision authority", "Score", "Reasoning"],
        [[fit.role, fit.decision_authority, f"{fit.score:.2f}", fit.reasoning]],
    )
    lines += ["", "## Business objectives", ""]
    lines += [f"{i}. {cell(o)}" for i, o in enumerate(out.business_objectives, 1)]
    lines += ["", "## Value model", ""]
    if out.value_model.kpis:
        lines += table(
            ["KPI", "Baseline", "Target", "Unit", "Direction"],
            [[k.kpi, num(k.baseline), num(k.target), k.unit or "", k.direction] for k in out.value_model.kpis],
        )
    else:
        lines.append("No KPIs yet.")
    lines += ["", "### Financial impact (annual)", ""]
    lines += table(
        ["Revenue opportunity", "Cost savings", "Risk reduction", "Total"],
        [[num(impact.revenue_opportunity), num(impact.cost_savings), num(impact.risk_reduction), num(impact.total)]],
    )
    return lines


def _target(out: TargetOutput) -> list[str]:
    lines = ["## Business case", "", out.business_case_summary, "", "## Value commitment", "", out.value_commitment]
    lines += ["", "## KPI targets", ""]
    if out.kpi_targets:
        lines += table(
            ["KPI", "Baseline", "Target", "Unit", "Direction", "Deadline", "Confidence"],
            [
                [k.kpi, num(k.baseline), num(k.target), k.unit or "", k.direction, k.deadline.isoformat(),
                 f"{k.confidence:.2f}"]
                for k in out.kpi_targets
            ],
        )  # fmt: skip
    else:
        lines.append("No KPI targets.")
    lines += ["", "## ROI model", ""]
    lines += table(
        ["Step", "Formula", "Result", "Reasoning"],
        [[s.name, f"`{s.formula}`", num(s.result), s.reasoning] for s in out.roi_model.steps],
    )
    lines += ["", f"**3-year ROI: {num(out.roi_model.three_year_roi_pct)}%**", "", "## Value tree", ""]
    labels = {n.id: n.label for n in out.value_tree.nodes}
    lines += table(
        ["From", "To", "Weight"],
        [
            [labels.get(e.source, e.source), labels.get(e.target, e.target), f"{e.weight:.2f}"]
            for e in out.value_tree.links
        ],
    )
    return lines


def _realization(out: RealizationOutput) -> list[str]:
    period = f"{out.period.start.isoformat()} to {out.period.end.isoformat()}"
    lines = [f"**Overall status: {out.overall_status}**", "", f"Report period: {period}", "", "## KPIs", ""]
    if out.kpis:
        lines += table(
            ["KPI", "Baseline", "Target", "Actual", "Unit", "Variance", "Variance %", "Progress %", "Status",
             "Samples", "Confidence"],
            [
                [k.kpi, num(k.baseline), num(k.target), num(k.actual), k.unit or "", num(k.variance),
                 num(k.variance_pct), num(k.progress_pct), k.status, k.samples, k.confidence]
                for k in out.kpis
            ],
        )  # fmt: skip
    else:
        lines.append("No KPIs evaluated.")
    return lines


def _expansion(out: ExpansionOutput) -> list[str]:
    lines = [f"**Opportunity score: {num(out.opportunity_score)} / 100**", "", "## Proposals", ""]
    if out.proposals:
        lines += table(
            ["Type", "Title", "KPI", "Estimated value", "Confidence", "Status"],
            [
                [p.type, p.title, p.kpi or "", num(p.estimated_value), f"{p.confidence:.2f}", p.status]
                for p in out.proposals
            ],
        )
    else:
        lines.append("No proposals.")
    lines += ["", "## Improvements", ""]
    if out.improvements:
        lines += table(
            ["KPI", "Current", "Proposed", "Incremental value"],
            [[i.kpi, num(i.current), num(i.proposed), num(i.incremental_value)] for i in out.improvements],
        )
    else:
        lines.append("No improvements.")
    return lines


def render_report(result: StageResult) -> str:
    """Render a stage result as a Markdown report (title, summary, tables, notes).

    Args:
        result: The stage result; its own ``report`` field is ignored.

    Returns:
        The Markdown text, ending with a newline.
    """
    out = result.output
    lines = [f"# {TITLES[result.stage]} report", "", f"Account: `{result.account_id}`", ""]
    if isinstance(out, OpportunityOutput):
        lines += _opportunity(out)
    elif isinstance(out, TargetOutput):
        lines += _target(out)
    elif isinstance(out, RealizationOutput):
        lines += _realization(out)
    else:
        lines += _expansion(out)
    if out.notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {cell(n)}" for n in out.notes]
    return "\n".join(lines) + "\n"
