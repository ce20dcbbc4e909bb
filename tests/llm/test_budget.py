"""The run's ledger and what a call may spend: headroom per step and run, grants, the USD cap, the figures."""

from __future__ import annotations

import pytest

from activities.models import fit
from quantapilot.llm import ModelPrice
from quantapilot.repos.config import QuantapilotConfig
from quantapilot.runs.budget import RunUsage, exceeded_figures, headroom, price_problem, spend, summary_line

PRICE = ModelPrice(input_per_mtok=1_000_000.0, output_per_mtok=2_000_000.0)  # $1 an input token, $2 an output one


def test_budget_headroom_is_the_tightest_token_limit_and_names_it() -> None:
    usage = RunUsage(tokens_budget=1000, tokens_per_run=800)
    assert headroom(usage, "M-001/impl", None).model_dump() == {
        "tokens": 800,
        "tokens_limit": "limits.tokens_per_run",
        "usd": None,
    }
    spend(usage, "M-001/impl", 150, None)
    spend(usage, "M-001/test", 50, None)
    # The step's own budget counts that step's tokens only; the run's limits count every step's.
    room = headroom(usage, "M-001/impl", 180)
    assert (room.tokens, room.tokens_limit) == (30, "steps.tokens_budget")
    room = headroom(usage, "M-002/impl", 180)
    assert (room.tokens, room.tokens_limit) == (180, "steps.tokens_budget")
    usage.tokens_per_run = None
    room = headroom(usage, "M-002/impl", None)
    assert (room.tokens, room.tokens_limit) == (800, "budgets.tokens")
    assert headroom(RunUsage(), "M-001/impl", None).model_dump() == {"tokens": None, "tokens_limit": None, "usd": None}


def test_budget_a_token_grant_lifts_every_token_limit_and_a_usd_grant_the_usd_budget() -> None:
    usage = RunUsage(tokens_budget=100, tokens_per_run=120, usd_budget=0.5)
    spend(usage, "doc/overview", 100, 0.5)
    room = headroom(usage, "doc/overview", 100)
    assert (room.tokens, room.usd) == (0, 0.0)
    usage.granted_tokens, usage.granted_usd = 1000, 0.25
    room = headroom(usage, "doc/overview", 100)
    assert (room.tokens, room.usd) == (1000, 0.25)


def test_budget_spend_counts_per_call_step_and_run() -> None:
    usage = RunUsage()
    spend(usage, "M-001/impl", 30, 0.01)
    spend(usage, "M-001/impl", 20, None)  # an unpriced model costs nothing known, and no budgets.usd can be set
    spend(usage, "doc/overview", 5, 0.002)
    assert (usage.tokens, usage.calls, usage.steps) == (55, 3, {"M-001/impl": 50, "doc/overview": 5})
    assert usage.usd == pytest.approx(0.012)


def test_budget_fit_refuses_a_prompt_over_the_tokens_left_and_caps_the_answer() -> None:
    refused, cap = fit(100, max_output_tokens=None, tokens_left=100, usd_left=None, price=None)
    assert refused is not None and cap is None
    assert (refused.called, refused.over_budget, refused.needed_tokens) == (False, "tokens", 100)
    # The answer may use what the prompt leaves, or the role's own cap when that is lower.
    assert fit(100, max_output_tokens=None, tokens_left=150, usd_left=None, price=None) == (None, 50)
    assert fit(100, max_output_tokens=20, tokens_left=150, usd_left=None, price=None) == (None, 20)
    assert fit(100, max_output_tokens=20, tokens_left=None, usd_left=None, price=None) == (None, 20)
    assert fit(100, max_output_tokens=None, tokens_left=None, usd_left=None, price=None) == (None, None)


def test_budget_fit_refuses_a_prompt_the_dollars_left_cannot_pay_and_caps_the_answer_by_them() -> None:
    refused, _ = fit(100, max_output_tokens=None, tokens_left=None, usd_left=100.0, price=PRICE)
    assert refused is not None and refused.over_budget == "usd" and refused.needed_usd == 100.0
    # Room for the prompt but not one output token: refused too (an answer of nothing is no answer).
    refused, _ = fit(100, max_output_tokens=None, tokens_left=None, usd_left=101.5, price=PRICE)
    assert refused is not None and refused.over_budget == "usd"
    # $20 after the prompt buy 10 output tokens; the tokens left may cap it lower.
    assert fit(100, max_output_tokens=None, tokens_left=None, usd_left=120.0, price=PRICE) == (None, 10)
    assert fit(100, max_output_tokens=None, tokens_left=105, usd_left=120.0, price=PRICE) == (None, 5)


def test_budget_figures_of_the_pause_and_the_summary_line() -> None:
    usage = RunUsage(tokens_budget=40, usd_budget=1.0, tokens_per_run=60, tokens_per_day=5000, granted_tokens=10)
    spend(usage, "M-001/impl", 25, 0.1234567)
    room = headroom(usage, "M-001/impl", None)
    figures = exceeded_figures(usage, room, limit="budgets.tokens", needed=99)
    assert figures == {
        "limit": "budgets.tokens",
        "tokens_spent": 25,
        "usd_spent": 0.123457,
        "tokens_left": 25,
        "usd_left": 0.876543,
        "needed": 99,
        "tokens_budget": 40,
        "usd_budget": 1.0,
        "tokens_per_run": 60,
    }
    assert summary_line(usage) == (
        "Models: 25 tokens of 50, $0.1235 of $1.00 in 1 calls; the workspace may spend 5010 tokens per UTC day."
    )
    assert summary_line(RunUsage()) == "Models: 0 tokens, $0.0000 in 0 calls."


def test_budget_usd_needs_a_price_for_every_configured_model() -> None:
    config = QuantapilotConfig.model_validate(
        {
            "version": 1,
            "models": {"arch": {"model": "a"}, "dev": {"model": "d"}, "qa": {"model": "q"}},
            "budgets": {"tokens": 100, "usd": 1.0},
        }
    )
    problem = price_problem(config, {"d": PRICE})
    assert problem is not None and "no price for a, q" in problem and "QP_MODEL_PRICES" in problem
    assert price_problem(config, {"a": PRICE, "d": PRICE, "q": PRICE}) is None
    without_usd = config.model_copy(update={"budgets": config.budgets.model_copy(update={"usd": None})})  # type: ignore[union-attr]
    assert price_problem(without_usd, {}) is None
