"""The activity of model steps: build the prompt from the run's worktree, check the budget, call the model.

An adapter: prompts are :mod:`quantapilot.llm.prompts`, providers :mod:`quantapilot.llm`. Failures get their
Temporal shape here: a transient provider failure (429, 5xx, timeout) raises a retryable ``MODEL_UNAVAILABLE``
whose ``next_retry_delay`` is the provider's ``Retry-After``; a refused request raises a non-retryable
``MODEL_REQUEST_REJECTED``. The call is idempotent: it changes nothing in the worktree, and the one row it writes
(``model_usage``, :mod:`quantapilot.llm.spending`) is keyed by the workflow and activity ids and keeps the answer,
so an attempt retried after the model answered (the result lost with its worker) returns that answer without asking
again: one call, paid once, counted once with the same figures in the row and in the workflow's ledger. With
``day_limit`` it checks the workspace's tokens spent today before calling (``limits.tokens_per_day``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import heartbeating
from activities.repo import networked_worktree
from quantapilot.errors import ErrorCode
from quantapilot.forges import gitops
from quantapilot.llm import ChatMessage, ModelError, ModelPrice, ModelProvider, ModelReply, ModelRequest, cost_of
from quantapilot.llm.prompts import Milestone, build_messages, estimate_tokens
from quantapilot.llm.registry import make_provider
from quantapilot.llm.spending import day_key, day_spent, next_day, save_model_call, saved_call
from quantapilot.repos.files import RepoReadError, open_repo_files
from quantapilot.runs.budget import RECORDED_TEXT_CHARS
from quantapilot.runs.errors import permanent
from quantapilot.runs.model_contracts import CALL_MODEL, ModelAsk, ModelCallInput, ModelCallResult
from quantapilot.runs.patch import extract_diff
from quantapilot.runs.worktree import Worktrees
from quantapilot.settings import Settings


def model_failure(exc: ModelError) -> ApplicationError:
    """A provider failure as Temporal's: retryable with the provider's delay, or permanent."""
    delay = timedelta(seconds=exc.retry_after_s) if exc.retry_after_s is not None else None
    return ApplicationError(
        exc.message, type=exc.code, non_retryable=not exc.retryable, next_retry_delay=delay if exc.retryable else None
    )


def recorded_prompt(messages: Sequence[ChatMessage]) -> str:
    """The prompt as a run records it: each message under its role."""
    return "\n\n".join(f"[{m.role}]\n{m.content}" for m in messages)


class ModelActivities:
    """Model calls, built with the settings and the repository activities' worktrees (one lock per run).

    Args:
        settings: Service settings (provider, key, prices, prompt limits).
        worktrees: The worker's worktrees (shared with the repository activities).
        engine: Database engine (``model_usage``).
        provider: A provider to use instead of the configured one (tests).
    """

    def __init__(
        self, settings: Settings, worktrees: Worktrees, engine: Engine, *, provider: ModelProvider | None = None
    ) -> None:
        self._settings = settings
        self._worktrees = worktrees
        self._engine = engine
        self._provider = provider
        self._git_protocols = gitops.protocols_for(settings.allowed_repo_patterns)

    def _secrets(self) -> list[str]:
        s = self._settings
        values = [
            s.model_api_key.get_secret_value() if s.model_api_key else "",
            s.github_token or "",
            s.gitea_token or "",
        ]
        return [v for v in values if v]

    def provider(self) -> ModelProvider:
        """The provider, built on first use (a worker without models never needs one)."""
        if self._provider is None:
            try:
                self._provider = make_provider(self._settings)
            except ModelError as exc:
                raise model_failure(exc) from None
        return self._provider

    async def close(self) -> None:
        """Close the provider's connections."""
        if self._provider is not None:
            await self._provider.close()

    async def complete(
        self, request: ModelRequest, *, run_id: str, step: str, role: str, workspace: str | None
    ) -> ModelReply:
        """Make one model call of a run; the one place to log, meter and persist what each call cost.

        Every call goes through here: milestone steps, documentation pages, lifecycle narratives, reviews. Each
        answered call is written to ``model_usage`` (what ``limits.tokens_per_day`` counts) before its answer is
        checked: a refused answer still spent the tokens.

        Args:
            request: The request.
            run_id: The run the call is made for.
            step: The step it serves (``M-001/impl``, ``doc/overview``, ``narrative:target``).
            role: The agent role (``dev``, ``arch``, ``qa``).
            workspace: The run's workspace (None: a run started before workspaces were carried; not saved).

        Raises:
            ApplicationError: The provider failed (:func:`model_failure`: retryable or not, with its error code).
        """
        try:
            reply = await self.provider().complete(request)
        except ModelError as exc:
            activity.logger.warning("model call failed: %s", exc.message, extra={"error_code": str(exc.code)})
            raise model_failure(exc) from None
        activity.logger.info(
            "model %s answered %s for %s (%s): %d input, %d output tokens",
            reply.model,
            run_id,
            step,
            role,
            reply.input_tokens,
            reply.output_tokens,
        )
        if workspace is not None:
            usd = cost_of(request.model, reply.input_tokens, reply.output_tokens, self._settings.model_prices)
            await asyncio.to_thread(self._save, workspace, run_id, step, role, reply, usd)
        return reply

    async def day_room(
        self, workspace: str, needed: int, *, day_limit: int | None, tokens_left: int | None
    ) -> tuple[ModelCallResult | None, int | None]:
        """Check a call of ``needed`` prompt tokens against the workspace's ``limits.tokens_per_day``.

        Args:
            workspace: The run's workspace (whose calls of the UTC day count, from ``model_usage``).
            needed: The prompt's estimated tokens.
            day_limit: The daily limit plus the run's grants (None: no daily limit; nothing is read).
            tokens_left: What the run's own ledger leaves (None: unlimited).

        Returns:
            ``(refusal, None)`` when today's spending leaves no room (``over_budget="day"``, with the day's figures
            and when the next day begins); else ``(None, tokens_left)`` capped by what is left today.
        """
        if day_limit is None:
            return None, tokens_left
        now = datetime.now(UTC)
        day_s = self._settings.model_day_s
        spent = await asyncio.to_thread(day_spent, self._engine, workspace, day_key(now, day_s))
        if spent + needed >= day_limit:
            refusal = ModelCallResult(
                called=False,
                over_budget="day",
                needed_tokens=needed,
                day_spent=spent,
                next_day_at=next_day(now, day_s),
            )
            return refusal, None
        # What is left today caps the answer like the run's own headroom does.
        day_left = day_limit - spent
        return None, day_left if tokens_left is None else min(tokens_left, day_left)

    def secrets(self) -> list[str]:
        """Values no prompt may contain: the model API key and the forge tokens."""
        return self._secrets()

    async def ask(
        self,
        inp: ModelAsk,
        messages: Sequence[ChatMessage],
        *,
        run_id: str,
        step: str,
        role: str,
        workspace: str | None,
        needed: int | None = None,
        heartbeat: str | None = None,
    ) -> tuple[str, ModelReply | ModelCallResult]:
        """Make the call if it fits the headroom (:func:`fit`), through :meth:`complete`.

        Args:
            inp: The call's input (model, temperature, output cap, tokens and dollars left, daily limit).
            messages: The prompt.
            run_id: As :meth:`complete`.
            step: As :meth:`complete`.
            role: As :meth:`complete`.
            workspace: As :meth:`complete`.
            needed: The prompt's estimated tokens when the caller has them already.
            heartbeat: Heartbeat with this detail while the model answers (None: the caller heartbeats, or not).

        Returns:
            The prompt as recorded (:func:`recorded_prompt`), and the reply, or the refusal (with the prompt's start)
            when the call does not fit.
        """
        prompt = recorded_prompt(messages)
        needed = estimate_tokens(messages) if needed is None else needed
        tokens_left = inp.tokens_left
        earlier = await self._earlier_answer(workspace)
        if earlier is not None:
            # Made and counted by an earlier attempt: neither the budgets nor today's spending are checked again.
            return prompt, earlier
        if workspace is not None:
            # limits.tokens_per_day: what the workspace spent today (model_usage) comes first.
            day_refusal, tokens_left = await self.day_room(
                workspace, needed, day_limit=inp.day_limit, tokens_left=tokens_left
            )
            if day_refusal is not None:
                return prompt, day_refusal.model_copy(update={"prompt": prompt[:200]})
        refused, out_cap = fit(
            needed,
            max_output_tokens=inp.max_output_tokens,
            tokens_left=tokens_left,
            usd_left=inp.usd_left,
            price=self._settings.model_prices.get(inp.model),
        )
        if refused is not None:
            # Not made: the workflow pauses the run with these figures (budget_exceeded) and asks again on resume.
            return prompt, refused.model_copy(update={"prompt": prompt[:200]})
        request = ModelRequest(
            model=inp.model,
            messages=list(messages),
            temperature=inp.temperature,
            max_output_tokens=max(1, out_cap) if out_cap is not None else None,
        )
        beating: AbstractAsyncContextManager[None] = (
            heartbeating(heartbeat) if heartbeat is not None else contextlib.nullcontext()
        )
        async with beating:
            reply = await self.complete(request, run_id=run_id, step=step, role=role, workspace=workspace)
        return prompt, reply

    def answered(
        self,
        inp: ModelAsk,
        prompt: str,
        reply: ModelReply,
        *,
        answer_chars: int = RECORDED_TEXT_CHARS,
        diff: str | None = None,
    ) -> ModelCallResult:
        """The result of a call :meth:`ask` made: what it answered (``answer_chars`` of it) and cost.

        Args:
            inp: The call's input (its model prices the call).
            prompt: The prompt as recorded.
            reply: The model's reply.
            answer_chars: How much of the answer the workflow keeps.
            diff: The diff taken from the answer, if any.
        """
        return ModelCallResult(
            called=True,
            model=reply.model,
            prompt=prompt[:RECORDED_TEXT_CHARS],
            answer=reply.text[:answer_chars],
            diff=diff,
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            usd=cost_of(inp.model, reply.input_tokens, reply.output_tokens, self._settings.model_prices),
            response_id=reply.response_id,
            at=datetime.now(UTC),
        )

    @activity.defn(name=CALL_MODEL)
    async def call_model(self, inp: ModelCallInput) -> ModelCallResult:
        """Build the prompt from the milestone and the repository at the run's branch, then call the model."""
        settings = self._settings
        async with networked_worktree(self._worktrees, inp.repo, "call_model", protocols=self._git_protocols) as path:
            await self._worktrees.capped(path, gitops.fetch(path, branches=(inp.repo.branch,)))
            milestone = Milestone(
                milestone_id=inp.milestone_id,
                title=inp.title,
                criteria=inp.criteria,
                prompt=inp.prompt,
                plan=inp.plan,
                previous_diff=inp.previous_diff,
                feedback=inp.feedback,
            )

            def _messages() -> list[ChatMessage]:
                with open_repo_files(
                    path, commit=f"origin/{inp.repo.branch}", max_file_bytes=settings.repo_max_file_bytes
                ) as files:
                    return build_messages(
                        milestone,
                        files,
                        kind=inp.kind,
                        file_bytes=settings.model_prompt_file_bytes,
                        total_bytes=settings.model_prompt_total_bytes,
                        secrets=self._secrets(),
                    )

            try:
                messages = await asyncio.to_thread(_messages)
            except RepoReadError as exc:
                raise permanent(ErrorCode.PRECONDITION_FAILED, f"repository not readable: {exc}") from None
        needed = estimate_tokens(messages)
        prompt, reply = await self.ask(
            inp,
            messages,
            needed=needed,
            run_id=inp.repo.run_id,
            step=inp.step,
            role=inp.role,
            workspace=inp.repo.workspace,
        )
        if isinstance(reply, ModelCallResult):
            return reply
        diff = extract_diff(reply.text) if inp.kind == "impl" else None
        if diff is not None and len(diff.encode("utf-8")) > settings.model_max_diff_bytes:
            # Refused here, before it reaches the history: run_milestone would refuse it anyway.
            raise ApplicationError(
                f"the model's diff is larger than {settings.model_max_diff_bytes} bytes",
                type=ErrorCode.MODEL_DIFF_REJECTED,
                non_retryable=True,
            )
        return self.answered(inp, prompt, reply, diff=diff)

    @staticmethod
    def _call_id() -> str:
        # The same for every attempt of this activity: a retry after the row was written keeps one row.
        info = activity.info()
        return f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}"

    async def _earlier_answer(self, workspace: str | None) -> ModelReply | None:
        """The answer an earlier attempt of this activity got and saved, when this is a retry and there is one."""
        if workspace is None or activity.info().attempt <= 1:
            return None
        row = await asyncio.to_thread(saved_call, self._engine, self._call_id())
        if row is None or row.answer is None:
            return None
        activity.logger.info(
            "model call %s was answered in an earlier attempt: that answer is used, the model is not asked again",
            row.call_id,
        )
        return ModelReply(
            text=row.answer,
            model=row.model,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            response_id=row.response_id,
            finish_reason=row.finish_reason,
        )

    def _save(self, workspace: str, run_id: str, step: str, role: str, reply: ModelReply, usd: float | None) -> None:
        save_model_call(
            self._engine,
            call_id=self._call_id(),
            workspace=workspace,
            run_id=run_id,
            step=step,
            role=role,
            model=reply.model,
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            usd=usd,
            day_s=self._settings.model_day_s,
            answer=reply.text,
            response_id=reply.response_id,
            finish_reason=reply.finish_reason,
        )


@dataclass(frozen=True, slots=True)
class CallPlace:
    """Where a model call is made, as :meth:`ModelActivities.complete` logs and saves it.

    Attributes:
        run_id: The run the call is made for.
        step: The step it serves.
        role: The agent role.
        workspace: The run's workspace (None: not saved).
        heartbeat: Heartbeat with this detail while the model answers (None: no heartbeat).
    """

    run_id: str
    step: str
    role: str
    workspace: str | None
    heartbeat: str | None = None


class ModelBackedActivities:
    """Base of the activities that make one model call through the model activities (their provider and secrets).

    Args:
        models: The model activities whose :meth:`~ModelActivities.ask` makes the call (and prices it).
    """

    def __init__(self, models: ModelActivities) -> None:
        self._models = models

    async def ask_answered(
        self,
        inp: ModelAsk,
        messages: Sequence[ChatMessage],
        place: CallPlace,
        *,
        answer_chars: int = RECORDED_TEXT_CHARS,
        accept: Callable[[ModelReply], None] | None = None,
    ) -> ModelCallResult:
        """Ask the model (:meth:`ModelActivities.ask`) and return what it answered, or the refusal.

        Args:
            inp: The call's input.
            messages: The prompt.
            place: Where the call is made.
            answer_chars: How much of the answer the workflow keeps.
            accept: Raises for a reply the activity refuses (it is then not returned).

        Returns:
            The refusal when the call does not fit the headroom, else the answered call.
        """
        prompt, reply = await self._models.ask(
            inp,
            messages,
            run_id=place.run_id,
            step=place.step,
            role=place.role,
            workspace=place.workspace,
            heartbeat=place.heartbeat,
        )
        if isinstance(reply, ModelCallResult):
            return reply
        if accept is not None:
            accept(reply)
        return self._models.answered(inp, prompt, reply, answer_chars=answer_chars)


def fit(
    needed: int,
    *,
    max_output_tokens: int | None,
    tokens_left: int | None,
    usd_left: float | None,
    price: ModelPrice | None,
) -> tuple[ModelCallResult | None, int | None]:
    """Whether a call of ``needed`` prompt tokens fits the headroom, and the output tokens it may then ask for.

    Args:
        needed: The prompt's estimated tokens.
        max_output_tokens: The role's own output cap (None: the model's).
        tokens_left: Tokens the workflow's ledger leaves (None: unlimited).
        usd_left: US dollars it leaves (None: unlimited).
        price: The model's price (None: unpriced, which ``budgets.usd`` refuses at start).

    Returns:
        ``(refusal, None)`` when it does not fit; else ``(None, cap)`` with the output cap (None: the model's own).
    """
    out_cap = max_output_tokens
    if tokens_left is not None:
        if needed >= tokens_left:
            return ModelCallResult(called=False, over_budget="tokens", needed_tokens=needed), None
        out_cap = min(out_cap or tokens_left - needed, tokens_left - needed)
    if usd_left is not None and price is not None:
        input_cost = price.cost(needed, 0)
        one_token = price.cost(0, 1)
        if input_cost >= usd_left or (one_token > 0 and usd_left - input_cost < one_token):
            refusal = ModelCallResult(called=False, over_budget="usd", needed_tokens=needed, needed_usd=input_cost)
            return refusal, None
        if one_token > 0:
            affordable = int((usd_left - input_cost) / one_token)
            out_cap = min(out_cap or affordable, affordable)
    return None, out_cap
