"""Model spending of a run: what was spent per call, step and run, against which limits, and how much is left.

Pure and deterministic, so the workflow keeps the ledger in its own state (it survives replays, worker crashes and
continue-as-new through the carry). The limits, each optional: ``steps[].tokens_budget`` (per step, the milestone
step's own or the top-level entry of its name), ``budgets.tokens`` and ``limits.tokens_per_run`` (per run),
``budgets.usd`` (per run, priced from ``QP_MODEL_PRICES``). ``POST /v1/runs/{id}/budget {tokens, usd}`` grants
more: a token grant lifts every token limit of the run by that much, a USD grant lifts ``budgets.usd``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from quantapilot.repos.config import BudgetsConfig, LimitsConfig, QuantapilotConfig, TokenLimitsConfig

# What the run status keeps of one prompt and one answer (the review page reads them; the status stays small).
RECORDED_TEXT_CHARS = 8000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCallRecord(_Model):
    """One call of a model step, as the run status and the review page show it."""

    step: str = Field(description="The step, e.g. M-001/impl.")
    attempt: int
    role: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    usd: float | None = None
    prompt: str = Field(default="", description="The prompt sent (its head), without secrets.")
    answer: str = Field(default="", description="The model's answer (its head).")
    diff: str | None = None
    outcome: str = Field(
        default="",
        description=(
            "What became of the answer: applied, tests_failed, not_applied or plan (milestone steps); written "
            "(documentation pages); narrated or kept (lifecycle narratives); approve, request_changes or comment "
            "(the qa model's review)."
        ),
    )
    feedback: str | None = Field(default=None, description="The failure output that went back to the model.")
    at: datetime


class RunUsage(_Model):
    """Tokens and money a run spent on models, and its limits (None: no limit)."""

    tokens: int = 0
    usd: float = 0.0
    calls: int = 0
    steps: dict[str, int] = Field(default_factory=dict, description="Tokens spent per step (M-001/impl).")
    tokens_budget: int | None = None
    usd_budget: float | None = None
    tokens_per_run: int | None = None
    tokens_per_day: int | None = None
    granted_tokens: int = 0
    granted_usd: float = 0.0


def run_usage(budgets: BudgetsConfig | None, limits: LimitsConfig | TokenLimitsConfig | None) -> RunUsage:
    """A run's ledger before its first call: its budgets and token limits, nothing spent (None: no limit)."""
    return RunUsage(
        tokens_budget=budgets.tokens if budgets else None,
        usd_budget=budgets.usd if budgets else None,
        tokens_per_run=limits.tokens_per_run if limits else None,
        tokens_per_day=limits.tokens_per_day if limits else None,
    )


class Headroom(_Model):
    """What the next call of a step may spend, and the limit that is tightest."""

    tokens: int | None = None
    tokens_limit: str | None = None
    usd: float | None = None


def headroom(usage: RunUsage, step: str, step_budget: int | None) -> Headroom:
    """Tokens and USD left for the next call of ``step`` (None where nothing limits it)."""
    candidates: list[tuple[int, str]] = []
    grant = usage.granted_tokens
    if step_budget is not None:
        candidates.append((step_budget + grant - usage.steps.get(step, 0), "steps.tokens_budget"))
    if usage.tokens_budget is not None:
        candidates.append((usage.tokens_budget + grant - usage.tokens, "budgets.tokens"))
    if usage.tokens_per_run is not None:
        candidates.append((usage.tokens_per_run + grant - usage.tokens, "limits.tokens_per_run"))
    tokens, limit = min(candidates) if candidates else (None, None)
    usd = None if usage.usd_budget is None else usage.usd_budget + usage.granted_usd - usage.usd
    return Headroom(tokens=tokens, tokens_limit=limit, usd=usd)


def spend(usage: RunUsage, step: str, tokens: int, usd: float | None) -> None:
    """Add one call's spending to the ledger."""
    usage.tokens += tokens
    usage.usd += usd or 0.0
    usage.calls += 1
    usage.steps[step] = usage.steps.get(step, 0) + tokens


def exceeded_figures(usage: RunUsage, room: Headroom, *, limit: str, needed: float | None) -> dict[str, object]:
    """The figures ``run.paused`` (reason budget_exceeded) carries: which limit, spent, budget, what was needed."""
    return {
        "limit": limit,
        "tokens_spent": usage.tokens,
        "usd_spent": round(usage.usd, 6),
        "tokens_left": room.tokens,
        "usd_left": None if room.usd is None else round(room.usd, 6),
        "needed": needed,
        "tokens_budget": usage.tokens_budget,
        "usd_budget": usage.usd_budget,
        "tokens_per_run": usage.tokens_per_run,
    }


def summary_line(usage: RunUsage) -> str:
    """One line for the Web UI and ``qp status``: tokens and cost against budget, and the workspace's daily limit."""
    limits = [v for v in (usage.tokens_budget, usage.tokens_per_run) if v is not None]
    tokens = f"{usage.tokens} tokens" + (f" of {min(limits) + usage.granted_tokens}" if limits else "")
    cost = f"${usage.usd:.4f}" + (
        f" of ${usage.usd_budget + usage.granted_usd:.2f}" if usage.usd_budget is not None else ""
    )
    day = (
        f"; the workspace may spend {usage.tokens_per_day + usage.granted_tokens} tokens per UTC day"
        if usage.tokens_per_day is not None
        else ""
    )
    return f"Models: {tokens}, {cost} in {usage.calls} calls{day}."


def price_problem(config: QuantapilotConfig, prices: Mapping[str, object]) -> str | None:
    """Why a run with ``budgets.usd`` cannot start: a configured model has no price (``QP_MODEL_PRICES``)."""
    if config.budgets is None or config.budgets.usd is None or config.models is None:
        return None
    roles = {"arch": config.models.arch, "dev": config.models.dev, "qa": config.models.qa}
    missing = sorted({m.model for m in roles.values() if m is not None and m.model not in prices})
    if not missing:
        return None
    return (
        f"budgets.usd is set but QP_MODEL_PRICES has no price for {', '.join(missing)}: the run's cost would be a "
        "guess (add the models' prices per million input and output tokens)"
    )
