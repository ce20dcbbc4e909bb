"""Lifecycle narratives: what a model may change in a stage result (the prose), and what it may not (the rest)."""

from __future__ import annotations

import json

import pytest

from quantapilot.lifecycle.agents import ExpansionAgent, OpportunityAgent, TargetAgent
from quantapilot.lifecycle.narrative import (
    MAX_NARRATIVE_CHARS,
    NarrativeRejected,
    apply_narrative,
    build_narrative_messages,
    narrative_fields,
)
from quantapilot.lifecycle.outputs import ExpansionOutput, OpportunityOutput, TargetOutput
from tests.lifecycle.test_agents import INPUTS, agg, opportunity, realization, stage_input


def test_narrative_opportunity_changes_only_its_prose_and_the_report_follows() -> None:
    result = OpportunityAgent().run(stage_input("opportunity", inputs=INPUTS))
    assert set(narrative_fields(result)) == {"summary", "persona_reasoning"}
    answer = json.dumps({"summary": "Fewer tickets, faster answers.", "persona_reasoning": "She signs."})
    narrated = apply_narrative(result, f"```json\n{answer}\n```")
    out, before = narrated.output, result.output
    assert isinstance(out, OpportunityOutput) and isinstance(before, OpportunityOutput)
    assert out.summary == "Fewer tickets, faster answers." and out.persona_fit.reasoning == "She signs."
    assert out.model_dump(exclude={"summary", "persona_fit"}) == before.model_dump(exclude={"summary", "persona_fit"})
    assert out.persona_fit.score == before.persona_fit.score
    assert "Fewer tickets, faster answers." in narrated.report and before.summary not in narrated.report


def test_narrative_target_and_expansion_fields() -> None:
    target = TargetAgent().run(stage_input("target", inputs=INPUTS, opportunity=opportunity()))
    narrated = apply_narrative(
        target, json.dumps({"business_case_summary": "It pays.", "value_commitment": "We commit."})
    )
    assert isinstance(narrated.output, TargetOutput) and isinstance(target.output, TargetOutput)
    assert narrated.output.roi_model == target.output.roi_model
    assert narrated.output.kpi_targets == target.output.kpi_targets
    assert narrated.output.business_case_summary == "It pays."
    real = realization({"response_time_ms": agg("response_time_ms", 650), "revenue": agg("revenue", 1_200_000)})
    expansion = ExpansionAgent().run(stage_input("expansion", realization=real))
    assert isinstance(expansion.output, ExpansionOutput)
    n = len(expansion.output.proposals)
    done = apply_narrative(expansion, json.dumps({"rationales": [f"why {i}" for i in range(n)]}))
    assert isinstance(done.output, ExpansionOutput)
    assert [p.rationale for p in done.output.proposals] == [f"why {i}" for i in range(n)]
    assert [p.estimated_value for p in done.output.proposals] == [p.estimated_value for p in expansion.output.proposals]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"summary": "x"}', "keys"),
        ('{"summary": "x", "persona_reasoning": "y", "score": 1}', "keys"),
        ('{"summary": 3, "persona_reasoning": "y"}', "summary is not a non-empty string"),
        ('{"summary": " ", "persona_reasoning": "y"}', "summary is not a non-empty string"),
        (json.dumps({"summary": "x" * (MAX_NARRATIVE_CHARS + 1), "persona_reasoning": "y"}), "longer"),
    ],
)
def test_narrative_refuses_answers_that_do_not_fit(answer: str, reason: str) -> None:
    result = OpportunityAgent().run(stage_input("opportunity", inputs=INPUTS))
    with pytest.raises(NarrativeRejected, match=reason):
        apply_narrative(result, answer)


def test_narrative_prompt_carries_the_figures_and_the_keys() -> None:
    result = OpportunityAgent().run(stage_input("opportunity", inputs=INPUTS))
    system, user = build_narrative_messages(result)
    assert system.role == "system" and "never change" in system.content
    assert "response_time_ms" in user.content and "persona_reasoning, summary" in user.content
