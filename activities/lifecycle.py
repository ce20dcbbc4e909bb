"""Lifecycle activities: run a stage agent over the account's stored context, store results, publish pages.

Agents are loaded once when the activities are built (built-ins overridden by the ``quantapilot.agents`` entry
points), so a broken plug-in stops the worker at start instead of failing runs later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from quantapilot.db import session_scope
from quantapilot.docgen.generator import RelatedLink
from quantapilot.docs_store import PageInput, upsert_pages
from quantapilot.errors import ErrorCode
from quantapilot.lifecycle.agents import AgentError, StageAgent, load_agents, run_agent
from quantapilot.lifecycle.contracts import (
    DOCS_PROJECT,
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
    page_slug,
    page_version,
)
from quantapilot.lifecycle.models import STAGES, OpportunityOutput, RealizationOutput, StageInput
from quantapilot.lifecycle.realization import report_period
from quantapilot.lifecycle.render import TITLES
from quantapilot.lifecycle.store import (
    LifecycleResultRecord,
    get_result,
    latest_approved_target,
    latest_result,
    save_result,
    set_status,
)
from quantapilot.lifecycle.telemetry import kpi_aggregates
from quantapilot.settings import Settings


def _not_found(key: str) -> ApplicationError:
    return ApplicationError(f"no stored lifecycle result {key}", type=ErrorCode.PRECONDITION_FAILED, non_retryable=True)


def _stored(row: LifecycleResultRecord) -> StoredStageResult:
    return StoredStageResult(
        key=row.key,
        seq=row.seq,
        status=row.status,  # pydantic checks it is a ResultStatus
        version=page_version(row.seq),
    )


def related_links(account_id: str, stage: str) -> list[RelatedLink]:
    """Links from a stage's page to the account's other stage pages, typed by their order in the lifecycle."""
    index = STAGES.index(stage)
    links: list[RelatedLink] = []
    for i, other in enumerate(STAGES):
        if other == stage:
            continue
        kind = "prerequisite" if i == index - 1 else "next_step" if i == index + 1 else "related"
        links.append(RelatedLink(slug=page_slug(account_id, other), title=f"{TITLES[other]} report", type=kind))
    return links


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

    # ----- agent -------------------------------------------------------------------------------------------

    def _agent_input(self, inp: StageAgentInput) -> StageInput | str:
        """Gather the account's context; a string says why a required piece is missing."""
        with Session(self._engine) as session:
            ws, account = inp.workspace, inp.account_id
            opp_row = latest_result(session=session, workspace=ws, account_id=account, stage="opportunity")
            real_row = latest_result(session=session, workspace=ws, account_id=account, stage="realization")
            target = latest_approved_target(session=session, workspace=ws, account_id=account)
            opportunity = opp_row.stage_result().output if opp_row else None
            realization = real_row.stage_result().output if real_row else None
            period = None
            telemetry = {}
            if inp.stage == "realization":
                if inp.require_approved_target and target is None:
                    return "no approved target for the account: realization skipped"
                period = inp.period or report_period(requested=inp.inputs.report_period, as_of=inp.as_of)
                telemetry = kpi_aggregates(
                    session=session, workspace=ws, account_id=account, start=period.start, end=period.end
                )
        return StageInput(
            stage=inp.stage,
            account_id=account,
            as_of=inp.as_of,
            inputs=inp.inputs,
            opportunity=opportunity if isinstance(opportunity, OpportunityOutput) else None,
            target=target,
            realization=realization if isinstance(realization, RealizationOutput) else None,
            telemetry=telemetry,
            period=period,
        )

    @activity.defn(name=RUN_STAGE_AGENT)
    async def run_stage_agent(self, inp: StageAgentInput) -> StageAgentOutcome:
        """Run the stage's agent over the account's latest results (and the period's telemetry for realization).

        Raises:
            ApplicationError: ``AGENT_FAILED`` (permanent) when the agent returns a result that does not fit.
        """
        data = await asyncio.to_thread(self._agent_input, inp)
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

    # ----- store -------------------------------------------------------------------------------------------

    def _store(self, inp: StoreStageResultInput) -> StoredStageResult:
        with session_scope(self._engine) as session:
            row = save_result(
                session=session,
                key=inp.key,
                workspace=inp.workspace,
                run_id=inp.run_id,
                status=inp.status,
                result=inp.result,
            )
            return _stored(row)

    @activity.defn(name=STORE_STAGE_RESULT)
    async def store_stage_result(self, inp: StoreStageResultInput) -> StoredStageResult:
        """Store a result once per key (a retry returns the first write); a seq race retries the activity."""
        return await asyncio.to_thread(self._store, inp)

    def _set_status(self, inp: SetStatusInput) -> StoredStageResult:
        with session_scope(self._engine) as session:
            row = set_status(session=session, key=inp.key, status=inp.status)
            if row is None:
                raise _not_found(inp.key)
            return _stored(row)

    @activity.defn(name=SET_STAGE_RESULT_STATUS)
    async def set_stage_result_status(self, inp: SetStatusInput) -> StoredStageResult:
        """Record a gate's outcome on a stored result (``approved`` activates a target)."""
        return await asyncio.to_thread(self._set_status, inp)

    # ----- publish -----------------------------------------------------------------------------------------

    def _publish(self, inp: PublishStageInput) -> PublishedPage:
        with session_scope(self._engine) as session:
            row = get_result(session=session, key=inp.key)
            if row is None or row.workspace != inp.workspace:
                raise _not_found(inp.key)
            result = row.stage_result()
            slug = page_slug(row.account_id, row.stage)
            version = page_version(row.seq)
            page = PageInput(
                slug=slug,
                title=f"{TITLES[row.stage]} report",
                description=f"{row.stage.capitalize()} result {row.seq} of account {row.account_id}.",
                markdown=result.report,
                tags=["lifecycle", row.stage],
                related=related_links(row.account_id, row.stage),
                status=inp.status,
                change_summary=inp.change_summary,
            )
            upsert_pages(
                session=session,
                workspace=row.workspace,
                project=DOCS_PROJECT,
                version=version,
                commit_sha=None,
                pages=[page],
            )
        return PublishedPage(slug=slug, version=version, status=inp.status)

    @activity.defn(name=PUBLISH_STAGE_PAGE)
    async def publish_stage_page(self, inp: PublishStageInput) -> PublishedPage:
        """Publish a stored result as ``accounts/<accountId>/<stage>`` version ``1.0.<seq>`` (idempotent)."""
        return await asyncio.to_thread(self._publish, inp)


def lifecycle_activities(settings: Settings, engine: Engine) -> list[Callable[..., Any]]:
    """Build :class:`LifecycleActivities` and return the bound activity methods the worker registers."""
    acts = LifecycleActivities(settings, engine)
    return [acts.run_stage_agent, acts.store_stage_result, acts.set_stage_result_status, acts.publish_stage_page]
