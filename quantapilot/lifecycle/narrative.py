"""Narratives by a model: the stage agents' prose fields rewritten by ``models.arch``, the arithmetic left alone.

A stage agent computes the result (figures, statuses, targets, ROI); with ``QP_LIFECYCLE_MODELS`` naming an arch
model the lifecycle run asks it to write the result's narrative fields in better words, from the result itself.
Only these fields change, each a string (or, for expansion, one string per proposal):

* opportunity: ``summary`` and ``persona_fit.reasoning``;
* target: ``business_case_summary`` and ``value_commitment``;
* expansion: each proposal's ``rationale``.

The realization stage has no narrative field (its notes are statuses) and calls no model. The model answers one
JSON object with exactly those keys; anything else (not JSON, a missing or extra key, a number where text
belongs, an overlong text) keeps the agent's own words, and the call is recorded as ``kept`` with the reason.
Everything here is pure and deterministic: the workflow applies the answer it recorded.
"""

from __future__ import annotations

import json
import re
from typing import Any

from quantapilot.lifecycle.outputs import ExpansionOutput, OpportunityOutput, StageResult, TargetOutput
from quantapilot.lifecycle.render import render_report
from quantapilot.llm.provider import ChatMessage

# Longest narrative text taken from a model answer (a summary, a business case), in characters.
MAX_NARRATIVE_CHARS = 4000

SYSTEM_NARRATIVE = (
    "You are the value-engineering agent of a customer lifecycle service. You rewrite the narrative fields of a "
    "stage result so that a customer executive reads them easily. The figures are computed and final: quote "
    "them exactly as given, never change, round differently or invent a number, KPI, name or commitment. Answer "
    "with one JSON object holding exactly the keys you are asked for, each a string (or a list of strings where "
    "the current value is a list), and nothing else."
)

_FENCE_RE = re.compile(r"\A```[A-Za-z0-9_-]*[ \t]*\n(?P<body>.*?)\n```[ \t]*\Z", re.DOTALL)


class NarrativeRejected(ValueError):
    """A model answer that cannot become the narrative (the agent's own words are kept)."""


def narrative_fields(result: StageResult) -> dict[str, Any]:
    """The result's narrative fields and their current values; empty when the stage has none."""
    out = result.output
    if isinstance(out, OpportunityOutput):
        return {"summary": out.summary, "persona_reasoning": out.persona_fit.reasoning}
    if isinstance(out, TargetOutput):
        return {"business_case_summary": out.business_case_summary, "value_commitment": out.value_commitment}
    if isinstance(out, ExpansionOutput) and out.proposals:
        return {"rationales": [p.rationale for p in out.proposals]}
    return {}


def build_narrative_messages(result: StageResult) -> list[ChatMessage]:
    """The system and user messages asking for the narrative of ``result`` (its figures as the agent computed)."""
    fields = narrative_fields(result)
    figures = result.output.model_dump(mode="json")
    user = "\n".join(
        [
            f"# {result.stage.capitalize()} stage result of account {result.account_id}",
            "",
            "## The computed result (JSON; the figures are final)",
            "```json",
            json.dumps(figures, indent=1, sort_keys=True),
            "```",
            "",
            "## The narrative fields to rewrite, with their current text",
            "```json",
            json.dumps(fields, indent=1),
            "```",
            "",
            f"Answer with one JSON object with exactly the keys {', '.join(sorted(fields))}.",
        ]
    )
    return [ChatMessage(role="system", content=SYSTEM_NARRATIVE), ChatMessage(role="user", content=user)]


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise NarrativeRejected(f"{key} is not a non-empty string")
    if len(value) > MAX_NARRATIVE_CHARS:
        raise NarrativeRejected(f"{key} is longer than {MAX_NARRATIVE_CHARS} characters")
    return value.strip()


def parse_answer(answer: str, expected: dict[str, Any]) -> dict[str, Any]:
    """The model's answer as narrative values of the expected keys and shapes.

    Raises:
        NarrativeRejected: Not one JSON object, other keys, or a value of the wrong shape.
    """
    text = answer.strip()
    fenced = _FENCE_RE.match(text)
    if fenced:
        text = fenced.group("body").strip()
    try:
        data = json.loads(text)
    except ValueError:
        raise NarrativeRejected("the answer is not JSON") from None
    if not isinstance(data, dict):
        raise NarrativeRejected("the answer is not a JSON object")
    if set(data) != set(expected):
        raise NarrativeRejected(f"the answer's keys {sorted(data)} are not {sorted(expected)}")
    values: dict[str, Any] = {}
    for key, current in expected.items():
        if isinstance(current, list):
            items = data[key]
            if not isinstance(items, list) or len(items) != len(current):
                raise NarrativeRejected(f"{key} is not a list of {len(current)} strings")
            values[key] = [_text(v, f"{key}[{i}]") for i, v in enumerate(items)]
        else:
            values[key] = _text(data[key], key)
    return values


def apply_narrative(result: StageResult, answer: str) -> StageResult:
    """``result`` with the narrative fields of the model's answer; every other field is the agent's.

    The report is rendered again when it is the built-in rendering of the result (a plug-in's own report is
    left as it is, since it may say things the renderer does not know).

    Raises:
        NarrativeRejected: The answer does not fit (:func:`parse_answer`).
    """
    expected = narrative_fields(result)
    if not expected:
        raise NarrativeRejected(f"the {result.stage} stage has no narrative fields")
    values = parse_answer(answer, expected)
    out = result.output
    if isinstance(out, OpportunityOutput):
        persona = out.persona_fit.model_copy(update={"reasoning": values["persona_reasoning"]})
        new_out: Any = out.model_copy(update={"summary": values["summary"], "persona_fit": persona})
    elif isinstance(out, TargetOutput):
        new_out = out.model_copy(
            update={
                "business_case_summary": values["business_case_summary"],
                "value_commitment": values["value_commitment"],
            }
        )
    else:
        assert isinstance(out, ExpansionOutput)
        proposals = [
            p.model_copy(update={"rationale": r}) for p, r in zip(out.proposals, values["rationales"], strict=True)
        ]
        new_out = out.model_copy(update={"proposals": proposals})
    narrated = result.model_copy(update={"output": new_out})
    if result.report == render_report(result):
        narrated = narrated.model_copy(update={"report": render_report(narrated)})
    # Validated again as a whole: the result is stored and published as the agent's would be.
    return StageResult.model_validate(narrated.model_dump())
