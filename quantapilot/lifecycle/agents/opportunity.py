"""The built-in opportunity agent: persona fit, business objectives and the initial value model."""

from __future__ import annotations

from quantapilot.lifecycle.agents.base import make_result
from quantapilot.lifecycle.agents.heuristics import (
    RULES_BY_KEY,
    extract_objectives,
    financial_impact,
    kpis_from_benchmarks,
    split_sentences,
)
from quantapilot.lifecycle.agents.personas import AUTHORITY_CUES, match_persona
from quantapilot.lifecycle.outputs import OpportunityOutput, PersonaFit, StageInput, StageResult, ValueModel
from quantapilot.lifecycle.render import num

# Objective keys (heuristics.OBJECTIVE_RULES) that top up fewer than three, after the persona's own defaults.
GENERIC_OBJECTIVES: tuple[str, ...] = ("revenue", "cost", "efficiency", "risk", "retention", "speed", "visibility")


class OpportunityAgent:
    """Built-in opportunity agent.

    * Persona fit: :func:`~quantapilot.lifecycle.agents.personas.match_persona` looks the persona up in
      :data:`~quantapilot.lifecycle.agents.personas.PERSONAS` (CFO 0.9, CEO 0.85, COO 0.8,
      CTO/CIO 0.75, VP Sales 0.7, other directors 0.55, managers 0.4); an unknown title scores 0.3 and no
      persona 0.2. Notes that mention budget, approval, sign-off or a decision add 0.05 (at most 1).
    * Objectives: :func:`extract_objectives` on the discovery notes, in order of first mention, at most 5;
      fewer than 3 are topped up from the persona's default objectives, then :data:`GENERIC_OBJECTIVES`.
    * Value model: one KPI per benchmark (:func:`kpis_from_benchmarks`) and its :func:`financial_impact`.
      Without benchmarks the model has no KPIs and zero impact, and a note says so.
    """

    stage = "opportunity"

    def run(self, data: StageInput) -> StageResult:
        """Build the opportunity result from notes, persona and benchmarks."""
        inputs = data.inputs
        notes: list[str] = []
        persona = match_persona(inputs.persona)
        lowered_notes = (inputs.discovery_notes or "").lower()
        cue = any(c in lowered_notes for c in AUTHORITY_CUES)
        if persona is not None:
            score, role, authority, reasoning = (
                persona.score,
                persona.role,
                persona.decision_authority,
                persona.reasoning,
            )
        elif inputs.persona:
            score, role, authority = 0.3, inputs.persona.strip()[:100], "unknown"
            reasoning = "Persona not in the known table; its buying authority is unclear."
        else:
            score, role, authority, reasoning = 0.2, "unknown", "unknown", "No persona given."
        if cue:
            score = min(1.0, round(score + 0.05, 2))
            reasoning += " The notes mention budget or decision-making."
        fit = PersonaFit(score=score, role=role, decision_authority=authority, reasoning=reasoning)

        keys = extract_objectives(inputs.discovery_notes)[:5]
        if not keys:
            notes.append("No objectives recognised in the discovery notes; defaults for the persona were used.")
        fillers = (persona.default_objectives if persona else ()) + GENERIC_OBJECTIVES
        for key in fillers:
            if len(keys) >= 3:
                break
            if key not in keys:
                keys.append(key)
        objectives = [RULES_BY_KEY[k].objective for k in keys]

        kpis, dupe_notes = kpis_from_benchmarks(inputs)
        notes += dupe_notes
        if not kpis:
            notes.append("No benchmarks given: the value model has no KPIs yet.")
        impact = financial_impact(kpis)
        sentences = len(split_sentences(inputs.discovery_notes or ""))
        summary = (
            f"{role} ({authority.replace('_', ' ')}, fit {score:.2f}). "
            f"{sentences} discovery sentence(s) point to {len(objectives)} objectives, led by "
            f"'{objectives[0]}'. {len(kpis)} benchmarked KPI(s) give an estimated annual impact of "
            f"{num(impact.total)} (revenue {num(impact.revenue_opportunity)}, cost {num(impact.cost_savings)}, "
            f"risk {num(impact.risk_reduction)})."
        )
        output = OpportunityOutput(
            summary=summary,
            persona_fit=fit,
            business_objectives=objectives,
            value_model=ValueModel(kpis=kpis, financial_impact=impact),
            notes=notes,
        )
        return make_result(data, output)
