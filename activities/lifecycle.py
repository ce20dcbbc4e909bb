"""Lifecycle activities: a thin Temporal adapter over :mod:`quantapilot.lifecycle`.

Each activity runs one synchronous step of :mod:`quantapilot.lifecycle.service` or
:mod:`quantapilot.lifecycle.pages` in a thread and turns the failures no retry can fix into non-retryable
``ApplicationError`` failures. Agents are loaded once when the activities are built (built-ins overridden by
the ``quantapilot.agents`` entry points), so a broken plug-in stops the worker at start instead of failing
runs later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy.engine import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError

from quantapilot.errors import ErrorCode
from quantapilot.lifecycle import pages, service
from quantapilot.lifecycle.agents import AgentError, StageAgent, load_agents, run_agent
from quantapilot.lifecycle.contracts import (
    PUBLISH_STAGE_PAGE,
    RUN_STAGE_AGENT,
    SET_STAGE_RESULT_STATUS,
    STORE_STAGE_RESULT,
    PublishedPage,
    PublishStageInput,
    SetStatusInput,
    StageAgentInput,
    StageAgentOutcome,
    StoredStageResult,
    StoreStageResultInput,
)
from quantapilot.settings import Settings

In = TypeVar("In")
Out = TypeVar("Out")


def _not_found(exc: service.ResultNotFound) -> ApplicationError:
    # The workflow stored the result itself, so a missing one will not appear on a retry.
    return ApplicationError(str(exc), type=ErrorCode.PRECONDITION_FAILED, non_retryable=True)


async def _on_stored_result(work: Callable[[Engine, In], Out], engine: Engine, inp: In) -> Out:
    # Work on a stored result, off the event loop; a result that is not there fails the activity for good.
    try:
        return await asyncio.to_thread(work, engine, inp)
    except service.ResultNotFound as exc:
        raise _not_found(exc) from None


class LifecycleActivities:
    """Lifecycle activities, built with the settings, the database engine and the stage agents.

    Args:
        settings: Service settings.
        engine: Database engine (results, telemetry, docs pages).
        agents: Agents by stage; :func:`~quantapilot.lifecycle.agents.load_agents` when None.
    """

    def __init__(self, settings: Settings, engine: Engine, *, agents: dict[str, StageAgent] | None = None) -> None:
        self._settings = settings
        self._engine = engine
        self._agents = agents if agents is not None else load_agents()

    @activity.defn(name=RUN_STAGE_AGENT)
    async def run_stage_agent(self, inp: StageAgentInput) -> StageAgentOutcome:
        """Run the stage's agent over the account's latest results (and the period's telemetry for realization).

        Raises:
            ApplicationError: ``AGENT_FAILED`` (permanent) when the agent returns a result that does not fit.
        """
        data = await asyncio.to_thread(service.gather_stage_input, self._engine, inp)
        if isinstance(data, str):
            return StageAgentOutcome(skipped=data)
        try:
            result = await asyncio.to_thread(run_agent, self._agents[inp.stage], data)
        except (AgentError, ValidationError) as exc:
            # A faulty agent gives the same wrong answer on every attempt: fail the run at once.
            raise ApplicationError(
                f"{inp.stage} agent failed: {str(exc)[:300]}", type=ErrorCode.AGENT_FAILED, non_retryable=True
            ) from None
        return StageAgentOutcome(result=result)

    @activity.defn(name=STORE_STAGE_RESULT)
    async def store_stage_result(self, inp: StoreStageResultInput) -> StoredStageResult:
        """Store a result once per key (a retry returns the first write); a seq race retries the activity."""
        return await asyncio.to_thread(service.store_stage_result, self._engine, inp)

    @activity.defn(name=SET_STAGE_RESULT_STATUS)
    async def set_stage_result_status(self, inp: SetStatusInput) -> StoredStageResult:
        """Record a gate's outcome on a stored result (``approved`` activates a target)."""
        return await _on_stored_result(service.set_result_status, self._engine, inp)

    @activity.defn(name=PUBLISH_STAGE_PAGE)
    async def publish_stage_page(self, inp: PublishStageInput) -> PublishedPage:
        """Publish a stored result as ``accounts/<accountId>/<stage>`` version ``1.0.<seq>`` (idempotent)."""
        return await _on_stored_result(pages.publish_stage_page, self._engine, inp)


def lifecycle_activities(settings: Settings, engine: Engine) -> list[Callable[..., Any]]:
    """Build :class:`LifecycleActivities` and return the bound activity methods the worker registers."""
    acts = LifecycleActivities(settings, engine)
    return [acts.run_stage_agent, acts.store_stage_result, acts.set_stage_result_status, acts.publish_stage_page]
