"""Built-in stage agents, the Markdown reports and the entry-point override mechanism."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from importlib.metadata import EntryPoint

import pytest

from quantapilot.lifecycle.agents import (
    AgentError,
    ExpansionAgent,
    OpportunityAgent,
    RealizationAgent,
    StageAgent,
    TargetAgent,
    load_agents,
    make_result,
    run_agent,
)
from quantapilot.lifecycle.agents.personas import match_persona
from quantapilot.lifecycle.models import LifecycleInputs, ReportPeriod
from quantapilot.lifecycle.outputs import (
    ExpansionOutput,
    KpiAggregate,
    OpportunityOutput,
    RealizationOutput,
    StageInput,
    StageResult,
    TargetOutput,
)

ACCOUNT = "6f1c1d1e-2b3a-4c5d-8e9f-0a1b2c3d4e5f"
AS_OF = datetime(2025, 11, 17, 12, tzinfo=UTC)
NOTES = (
    "Support costs grew 20% last year. Response time is slow and customers churn after incidents.\n"
    "The CFO owns the budget and wants a forecast she can trust. Sales pipeline conversion is flat."
)
INPUTS = LifecycleInputs.model_validate(
    {
        "discoveryNotes": NOTES,
        "persona": "CFO",
        "benchmarks": [
            {"kpi": "response_time_ms", "value": 800, "unit": "ms"},
            {"kpi": "churn_rate", "value": 5, "unit": "%"},
            {"kpi": "revenue", "value": 1_000_000, "unit": "USD"},
        ],
    }
)


def stage_input(stage: str, **kw: object) -> StageInput:
    return StageInput.model_validate({"stage": stage, "account_id": ACCOUNT, "as_of": AS_OF, **kw})


def opportunity(inputs: LifecycleInputs = INPUTS) -> OpportunityOutput:
    out = OpportunityAgent().run(stage_input("opportunity", inputs=inputs)).output
    assert isinstance(out, OpportunityOutput)
    return out


def targets() -> TargetOutput:
    out = TargetAgent().run(stage_input("target", inputs=INPUTS, opportunity=opportunity())).output
    assert isinstance(out, TargetOutput)
    return out


def agg(kpi: str, mean: float, count: int = 4) -> KpiAggregate:
    return KpiAggregate(kpi=kpi, mean=mean, count=count, min=mean, max=mean, last=mean)


def realization(telemetry: dict[str, KpiAggregate]) -> RealizationOutput:
    out = RealizationAgent().run(stage_input("realization", target=targets(), telemetry=telemetry)).output
    assert isinstance(out, RealizationOutput)
    return out


@pytest.mark.parametrize(
    ("stage", "extra"),
    [
        ("opportunity", {"inputs": INPUTS}),
        ("target", {"inputs": INPUTS}),
        ("realization", {"telemetry": {"revenue": agg("revenue", 1_050_000)}}),
        ("expansion", {}),
    ],
)
def test_agents_same_input_same_output(stage: str, extra: dict[str, object]) -> None:
    agent = load_agents(entry_points=[])[stage]
    kw = dict(extra)
    if stage in ("realization", "expansion"):
        kw["target"] = targets()
    if stage == "expansion":
        kw["realization"] = realization({"revenue": agg("revenue", 1_200_000)})
    first = agent.run(stage_input(stage, **kw))
    second = agent.run(stage_input(stage, **kw))
    assert first == second
    assert first.model_dump_json() == second.model_dump_json()
    assert first.stage == stage == first.output.stage
    assert first.account_id == ACCOUNT
    assert first.report.startswith("# ")
    # The result survives a JSON round trip by alias, as the API and Temporal carry it.
    assert StageResult.model_validate_json(first.model_dump_json(by_alias=True)) == first


def test_agents_opportunity_shapes_result() -> None:
    out = opportunity()
    assert out.persona_fit.role == "Chief Financial Officer"
    assert out.persona_fit.decision_authority == "economic_buyer"
    assert out.persona_fit.score == pytest.approx(0.95)  # 0.9 plus 0.05 for "budget" in the notes
    assert 3 <= len(out.business_objectives) <= 5
    assert out.business_objectives[0] == "Reduce operating costs"  # first mentioned
    kpis = {k.kpi: k for k in out.value_model.kpis}
    assert kpis["response_time_ms"].direction == "lower_is_better"
    assert kpis["response_time_ms"].target == 640  # cost bucket: 20% better
    assert kpis["churn_rate"].target == 3.75  # risk bucket: 25% better
    assert kpis["revenue"].direction == "higher_is_better"
    assert kpis["revenue"].target == 1_100_000
    impact = out.value_model.financial_impact
    assert impact.revenue_opportunity == 100_000  # currency unit: the amount itself
    assert impact.total == impact.revenue_opportunity + impact.cost_savings + impact.risk_reduction


def test_agents_opportunity_caps_objectives_at_five() -> None:
    notes = "Costs. Revenue growth. Manual work. Compliance risk. Churn. Slow latency. Forecast visibility."
    out = opportunity(LifecycleInputs(discovery_notes=notes))
    assert len(out.business_objectives) == 5
    assert out.persona_fit.score == 0.2  # no persona
    assert out.value_model.kpis == []
    assert any("No benchmarks" in n for n in out.notes)


def test_agents_opportunity_fills_objectives_from_persona_defaults() -> None:
    out = opportunity(LifecycleInputs(persona="Chief Technology Officer"))
    assert out.business_objectives == [
        "Speed up response and cycle times",
        "Increase team productivity through automation",
        "Reduce operational and compliance risk",
    ]
    assert out.persona_fit.score == 0.75


@pytest.mark.parametrize(
    ("title", "role", "score"),
    [
        ("CFO", "Chief Financial Officer", 0.9),
        ("Chief Financial Officer", "Chief Financial Officer", 0.9),
        ("VP of Sales", "VP Sales", 0.7),
        ("Sales Director", "VP Sales", 0.7),
        ("coo", "Chief Operating Officer", 0.8),
        ("CIO", "Chief Technology Officer", 0.75),
        ("Director of Marketing", "Director", 0.55),
        ("Support manager", "Manager", 0.4),
    ],
)
def test_agents_persona_table(title: str, role: str, score: float) -> None:
    persona = match_persona(title)
    assert persona is not None
    assert (persona.role, persona.score) == (role, score)


def test_agents_unknown_persona_scores_low() -> None:
    assert match_persona("Astronaut") is None
    out = opportunity(LifecycleInputs(persona="Astronaut"))
    assert out.persona_fit.score == 0.3
    assert out.persona_fit.role == "Astronaut"


def test_agents_target_builds_roi_steps_and_applies_overrides() -> None:
    inputs = INPUTS.model_copy(
        update={
            "kpis": LifecycleInputs.model_validate(
                {
                    "kpis": [
                        {"kpi": "revenue", "target": 1_300_000, "deadline": "2026-03-31", "confidence": 0.5},
                        {"kpi": "nps", "baseline": 20, "target": 40},
                        {"kpi": "ignored_kpi", "target": 3},
                    ]
                }
            ).kpis,
            "investment": LifecycleInputs.model_validate({"investment": {"annualCost": 50_000}}).investment,
        }
    )
    result = TargetAgent().run(stage_input("target", inputs=inputs, opportunity=opportunity()))
    out = result.output
    assert isinstance(out, TargetOutput)
    by_kpi = {t.kpi: t for t in out.kpi_targets}
    assert list(by_kpi) == ["response_time_ms", "churn_rate", "revenue", "nps"]
    assert by_kpi["revenue"].target == 1_300_000
    assert by_kpi["revenue"].deadline == date(2026, 3, 31)
    assert by_kpi["revenue"].confidence == 0.5
    assert by_kpi["nps"].direction == "higher_is_better"
    assert by_kpi["churn_rate"].deadline == AS_OF.date() + timedelta(days=180)
    assert any("ignored_kpi" in n for n in out.notes)
    steps = [s.name for s in out.roi_model.steps]
    assert steps == ["annual_benefit", "three_year_benefit", "three_year_cost", "net_benefit", "three_year_roi_pct"]
    annual, benefit3, cost3, net, roi = (s.result for s in out.roi_model.steps)
    assert benefit3 == pytest.approx(annual * 2.4)
    assert cost3 == 150_000  # one-time 0 + 3 x 50,000
    assert net == pytest.approx(benefit3 - cost3)
    assert roi == pytest.approx(net / cost3 * 100, abs=0.01)
    assert out.roi_model.three_year_roi_pct == roi
    # Every KPI hangs under an outcome, and outcome weights sum to 1.
    kinds = {n.id: n.kind for n in out.value_tree.nodes}
    for kpi in by_kpi:
        assert kinds[f"kpi:{kpi}"] == "kpi"
    per_outcome: dict[str, float] = {}
    for link in out.value_tree.links:
        if kinds[link.source] == "outcome":
            per_outcome[link.source] = per_outcome.get(link.source, 0) + link.weight
    assert per_outcome
    assert all(w == pytest.approx(1, abs=1e-3) for w in per_outcome.values())


def test_agents_target_without_opportunity_uses_benchmarks() -> None:
    out = TargetAgent().run(stage_input("target", inputs=INPUTS)).output
    assert isinstance(out, TargetOutput)
    assert [t.kpi for t in out.kpi_targets] == ["response_time_ms", "churn_rate", "revenue"]
    assert any("No opportunity" in n for n in out.notes)


def test_agents_realization_uses_targets_and_period() -> None:
    period = ReportPeriod(start=AS_OF - timedelta(days=7), end=AS_OF)
    telemetry = {"response_time_ms": agg("response_time_ms", 656), "revenue": agg("revenue", 1_100_000)}
    result = RealizationAgent().run(stage_input("realization", target=targets(), telemetry=telemetry, period=period))
    out = result.output
    assert isinstance(out, RealizationOutput)
    assert out.period == period
    statuses = {k.kpi: k.status for k in out.kpis}
    assert statuses == {"response_time_ms": "on_track", "churn_rate": "missed", "revenue": "achieved"}
    assert out.overall_status == "at_risk"  # 1 of 3 behind: 33% >= 30%
    assert "| response_time_ms |" in result.report


def test_agents_realization_without_targets_uses_complete_kpi_inputs() -> None:
    inputs = LifecycleInputs.model_validate(
        {
            "kpis": [
                {"kpi": "response_time_ms", "baseline": 800, "target": 600, "unit": "ms"},
                {"kpi": "nps", "baseline": 20, "target": 40, "direction": "lower_is_better"},
                {"kpi": "revenue", "target": 3},
            ]
        }
    )
    out = RealizationAgent().run(stage_input("realization", inputs=inputs)).output
    assert isinstance(out, RealizationOutput)
    by_kpi = {k.kpi: k for k in out.kpis}
    assert list(by_kpi) == ["response_time_ms", "nps"]  # revenue has no baseline
    assert (by_kpi["response_time_ms"].baseline, by_kpi["response_time_ms"].target) == (800, 600)
    assert by_kpi["response_time_ms"].unit == "ms"
    assert by_kpi["response_time_ms"].direction == "lower_is_better"  # from the name
    assert by_kpi["nps"].direction == "lower_is_better"  # as given
    assert out.notes[0] == "KPIs from this run's KPI inputs."


def test_agents_expansion_proposals_follow_statuses() -> None:
    real = realization(
        {
            "response_time_ms": agg("response_time_ms", 650),
            "revenue": agg("revenue", 1_200_000),
            "churn_rate": agg("churn_rate", 4),
        }
    )
    assert [k.status for k in real.kpis] == ["on_track", "at_risk", "achieved"]
    out = ExpansionAgent().run(stage_input("expansion", realization=real)).output
    assert isinstance(out, ExpansionOutput)
    assert [(p.type, p.kpi) for p in out.proposals] == [
        ("expansion", "response_time_ms"),
        ("optimization", "churn_rate"),
        ("upsell", "revenue"),
    ]
    assert all(p.status == "proposed" and 0 <= p.confidence <= 1 for p in out.proposals)
    assert out.opportunity_score == pytest.approx((70 + 40 + 100) / 3, abs=0.1)
    by_kpi = {i.kpi: i for i in out.improvements}
    assert by_kpi["churn_rate"].proposed == 3.75  # behind: the target
    assert by_kpi["revenue"].proposed == 1_320_000  # achieved: one more 10% step from the actual
    assert by_kpi["revenue"].incremental_value == 120_000


def test_agents_expansion_all_achieved_adds_cross_sell() -> None:
    real = realization(
        {
            "response_time_ms": agg("response_time_ms", 600),
            "revenue": agg("revenue", 1_200_000),
            "churn_rate": agg("churn_rate", 3),
        }
    )
    assert real.overall_status == "achieved"
    out = ExpansionAgent().run(stage_input("expansion", realization=real)).output
    assert isinstance(out, ExpansionOutput)
    assert out.proposals[-1].type == "cross_sell"
    assert out.opportunity_score == 100


def test_agents_expansion_without_realization_scores_zero() -> None:
    out = ExpansionAgent().run(stage_input("expansion")).output
    assert isinstance(out, ExpansionOutput)
    assert (out.proposals, out.improvements, out.opportunity_score) == ([], [], 0)
    assert out.notes


def test_agents_report_escapes_table_cells() -> None:
    out = opportunity(LifecycleInputs(persona="Astro | naut\nwalker"))
    report = make_result(stage_input("opportunity"), out).report
    assert "| Astro \\| naut walker | unknown | 0.30 |" in report


# ------------------------------------------------------------------------------------------------------------
# Entry points: real importlib.metadata.EntryPoint objects pointing at classes of this module.


class PluginOpportunityAgent:
    stage = "opportunity"

    def run(self, data: StageInput) -> StageResult:
        base = OpportunityAgent().run(data).output
        assert isinstance(base, OpportunityOutput)
        return make_result(data, base.model_copy(update={"summary": "from the plug-in"}))


def make_plugin_agent() -> PluginOpportunityAgent:
    return PluginOpportunityAgent()


class WrongStageAgent(PluginOpportunityAgent):
    stage = "target"


class NotAnAgent:
    stage = "opportunity"


class WrongAccountAgent(PluginOpportunityAgent):
    def run(self, data: StageInput) -> StageResult:
        other = data.model_copy(update={"account_id": "0b5e8a52-7f0c-4f43-9a53-b3c2f7d0e111"})
        return super().run(other)


def ep(name: str, attr: str, group: str = "quantapilot.agents") -> EntryPoint:
    return EntryPoint(name=name, value=f"{__name__}:{attr}", group=group)


@pytest.mark.parametrize("attr", ["PluginOpportunityAgent", "make_plugin_agent"])
def test_agents_entry_point_overrides_builtin(attr: str) -> None:
    agents = load_agents(entry_points=[ep("opportunity", attr)])
    assert isinstance(agents["opportunity"], PluginOpportunityAgent)
    assert isinstance(agents["target"], TargetAgent)
    assert set(agents) == {"opportunity", "target", "realization", "expansion"}
    assert all(isinstance(a, StageAgent) for a in agents.values())
    result = run_agent(agents["opportunity"], stage_input("opportunity", inputs=INPUTS))
    assert isinstance(result.output, OpportunityOutput)
    assert result.output.summary == "from the plug-in"
    assert "from the plug-in" in result.report


def test_agents_entry_points_of_other_groups_are_ignored() -> None:
    agents = load_agents(entry_points=[ep("opportunity", "PluginOpportunityAgent", group="other.group")])
    assert isinstance(agents["opportunity"], OpportunityAgent)


def test_agents_installed_entry_points_load_without_plugins() -> None:
    agents = load_agents()
    assert isinstance(agents["realization"], RealizationAgent)


@pytest.mark.parametrize(
    ("name", "attr", "message"),
    [
        ("forecast", "PluginOpportunityAgent", "names no stage"),
        ("opportunity", "WrongStageAgent", "serves stage"),
        ("opportunity", "NotAnAgent", "not a stage agent"),
        ("opportunity", "DoesNotExist", "failed to load"),
    ],
)
def test_agents_bad_entry_points_fail_loudly(name: str, attr: str, message: str) -> None:
    with pytest.raises(AgentError, match=message):
        load_agents(entry_points=[ep(name, attr)])


def test_agents_run_agent_refuses_result_for_another_account() -> None:
    with pytest.raises(AgentError, match="another stage or account"):
        run_agent(WrongAccountAgent(), stage_input("opportunity", inputs=INPUTS))
