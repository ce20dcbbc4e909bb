"""Model calls of a run within its budgets: the ledger, the pause before a call that would not fit, the raise.

Every model call of a run (a milestone step, a documentation page, a lifecycle narrative) goes through
:meth:`ModelBudget._budgeted`: the run's ledger (:class:`~quantapilot.runs.budget.RunUsage`, in the workflow's
state and the carry of a continue-as-new) gives the headroom; a spent limit, or a call the activity refuses because
its prompt would not fit, pauses the run (``run.paused``, reason ``budget_exceeded``, with the figures); after
``POST /v1/runs/{id}/budget {tokens, usd}`` and a resume the same call is tried again; a call made is counted by
:meth:`ModelBudget._spent`, the one place the workflow accounts for a call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow

from workflows.base import RunWorkflowBase

with workflow.unsafe.imports_passed_through():
    from quantapilot.models import BudgetInput
    from quantapilot.runs.budget import (
        Headroom,
        ModelCallRecord,
        RunUsage,
        exceeded_figures,
        headroom,
        spend,
        summary_line,
    )
    from quantapilot.runs.model_contracts import ModelCallResult

# The model call's own transient failures (429, 5xx) are retried this often before the run pauses.
MODEL_CALL_ATTEMPTS = 5
# limits.tokens_per_day is enforced (the activity gets day_limit; a day pause waits on a timer for the next day).
PATCH_TOKENS_PER_DAY = "tokens-per-day"
# The smallest wait for the next day: the worker's clock and the workflow's may differ a little.
MIN_DAY_WAIT_S = 1.0

A = TypeVar("A")


class ModelBudget(RunWorkflowBase):
    """The ledger of a run's model calls, and the calls made outside milestones (documentation, narratives)."""

    _usage: RunUsage | None = None
    _run_calls: list[ModelCallRecord] | None = None
    # While paused by limits.tokens_per_day: the figures the Web UI shows (spent today, limit, resume time).
    _day_wait: str | None = None

    def _usage_lines(self) -> list[str]:
        if self._usage is None:
            return []
        lines = ["", summary_line(self._usage)]
        if self._day_wait is not None and self._paused:
            lines.append(self._day_wait)
        return lines

    def _day_limit(self, usage: RunUsage) -> int | None:
        """limits.tokens_per_day plus the run's grants, for runs that enforce it (PATCH_TOKENS_PER_DAY)."""
        if usage.tokens_per_day is None or not workflow.patched(PATCH_TOKENS_PER_DAY):
            return None
        return usage.tokens_per_day + usage.granted_tokens

    def _raise_model_budget(self, request: BudgetInput) -> None:
        if self._usage is None:
            self._usage = RunUsage()
        if request.tokens is not None:
            self._usage.granted_tokens += request.tokens
        if request.usd is not None:
            self._usage.granted_usd += request.usd

    def _usage_copy(self) -> RunUsage | None:
        return self._usage.model_copy(deep=True) if self._usage is not None else None

    def _run_model_calls(self) -> list[ModelCallRecord]:
        """The calls made outside milestones, for the run status (``model_calls``)."""
        return [c.model_copy() for c in self._run_calls or []]

    def _record_run_call(self, record: ModelCallRecord) -> None:
        self._run_calls = [*(self._run_calls or []), record]
        self._touch()

    async def _ask_model(
        self,
        key: str,
        activity: Callable[[Any, A], Awaitable[ModelCallResult]],
        arg: A,
        *,
        timeout_s: float,
        summary: str,
    ) -> ModelCallResult:
        """One model call as a step (``model:<key>``), its transient failures retried MODEL_CALL_ATTEMPTS times."""
        call: ModelCallResult = await self._step(
            f"model:{key}", activity, arg, timeout_s=timeout_s, attempts=MODEL_CALL_ATTEMPTS, summary=summary
        )
        return call

    async def _budgeted(
        self,
        usage: RunUsage,
        key: str,
        budget: int | None,
        ask: Callable[[Headroom], Awaitable[ModelCallResult]],
    ) -> ModelCallResult:
        """Make one model call within the run's budgets (milestone steps, documentation pages, narratives).

        Before the call the ledger's headroom is checked (a spent limit pauses the run, ``budget_exceeded``); the
        activity refuses a call whose prompt would not fit (the run pauses with what it needed); a call made is
        counted by :meth:`_spent`. After a raise and a resume the same call is tried again.
        """
        while True:
            await self._checkpoint()
            room = headroom(usage, key, budget)
            if room.tokens is not None and room.tokens <= 0:
                await self._budget_pause(usage, room, room.tokens_limit or "budgets.tokens", None)
                continue
            if room.usd is not None and room.usd <= 0:
                await self._budget_pause(usage, room, "budgets.usd", None)
                continue
            call = await ask(room)
            if call.called:
                self._spent(usage, key, call)
                return call
            if call.over_budget == "day":
                await self._day_pause(usage, room, call)
            elif call.over_budget == "usd":
                await self._budget_pause(usage, room, "budgets.usd", call.needed_usd)
            else:
                await self._budget_pause(usage, room, room.tokens_limit or "budgets.tokens", call.needed_tokens)

    def _spent(self, usage: RunUsage, key: str, call: ModelCallResult) -> None:
        """Count a call that was made in the run's ledger (the workflow side of every model call's accounting)."""
        spend(usage, key, call.input_tokens + call.output_tokens, call.usd)
        self._touch()

    async def _budget_pause(self, usage: RunUsage, room: Headroom, limit: str, needed: float | None) -> None:
        await self._pause("budget_exceeded", "run", details=exceeded_figures(usage, room, limit=limit, needed=needed))

    async def _day_pause(self, usage: RunUsage, room: Headroom, call: ModelCallResult) -> None:
        """Pause until the next day begins (a durable timer) or a person resumes the run, whichever comes first."""
        limit = (usage.tokens_per_day or 0) + usage.granted_tokens
        resume_at: datetime = call.next_day_at or workflow.now() + timedelta(days=1)
        figures = exceeded_figures(usage, room, limit="limits.tokens_per_day", needed=call.needed_tokens)
        figures |= {"tokens_per_day": limit, "day_tokens_spent": call.day_spent, "resumes_at": resume_at.isoformat()}
        self._day_wait = (
            f"limits.tokens_per_day: {call.day_spent} of {limit} tokens spent by the workspace today, "
            f"{call.needed_tokens} needed; resumes by itself at {resume_at.isoformat()} "
            f"or after `POST /v1/runs/{self._run_id}/budget {{tokens}}` and resume."
        )
        paused_by_a_person = self._paused
        await self._pause("budget_exceeded", "run", details=figures)
        if paused_by_a_person:
            # Paused while the call was checked: theirs to resume, not the timer's (the call is checked again then).
            self._day_wait = None
            self._touch()
            return
        wait_s = max(MIN_DAY_WAIT_S, (resume_at - workflow.now()).total_seconds())
        try:
            await workflow.wait_condition(lambda: not self._paused, timeout=wait_s)
        except TimeoutError:
            await self._resume()
        self._day_wait = None
        self._touch()
