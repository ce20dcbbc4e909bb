"""What the lifecycle activities do, without Temporal: gather an agent's input, store results, change status.

Each function opens its own session on the engine it is given and is synchronous; :mod:`activities.lifecycle`
runs them in a thread and turns their exceptions into Temporal failures. Publishing a result as a docs page
lives in :mod:`quantapilot.lifecycle.pages`.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session

from quantapilot.db import session_scope
from quantapilot.lifecycle.contracts import (
    SetStatusInput,
    StageAgentInput,
    StoredStageResult,
    StoreStageResultInput,
    page_version,
)
from quantapilot.lifecycle.models import ReportPeriod
from quantapilot.lifecycle.outputs import KpiAggregate, OpportunityOutput, RealizationOutput, StageInput
from quantapilot.lifecycle.realization import report_period
from quantapilot.lifecycle.store import (
    LifecycleResultRecord,
    latest_approved_target,
    latest_result,
    save_result,
    set_status,
)
from quantapilot.lifecycle.telemetry import kpi_aggregates


class ResultNotFound(LookupError):
    """No stored lifecycle result under the key (in the workspace).

    Attributes:
        key: The result's idempotency key.
    """

    def __init__(self, key: str) -> None:
        super().__init__(f"no stored lifecycle result {key}")
        self.key = key


def stored(row: LifecycleResultRecord) -> StoredStageResult:
    """Where a stored row landed, with the docs page version it publishes as."""
    return StoredStageResult(
        key=row.key,
        seq=row.seq,
        status=row.status,  # pydantic checks it is a ResultStatus
        version=page_version(row.seq),
    )


def gather_stage_input(engine: Engine, inp: StageAgentInput) -> StageInput | str:
    """Gather an account's context for its stage agent: latest results and, for realization, telemetry.

    Args:
        engine: Database engine (results and telemetry).
        inp: Which account and stage, as of when.

    Returns:
        The agent's input, or a sentence saying why the stage is skipped (a realization refresh of an account
        without an approved target).
    """
    with Session(engine) as session:
        ws, account = inp.workspace, inp.account_id
        opp_row = latest_result(session=session, workspace=ws, account_id=account, stage="opportunity")
        real_row = latest_result(session=session, workspace=ws, account_id=account, stage="realization")
        target = latest_approved_target(session=session, workspace=ws, account_id=account)
        opportunity = opp_row.stage_result().output if opp_row else None
        realization = real_row.stage_result().output if real_row else None
        period: ReportPeriod | None = None
        telemetry: dict[str, KpiAggregate] = {}
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


def store_stage_result(engine: Engine, inp: StoreStageResultInput) -> StoredStageResult:
    """Store a result once per key (storing the key again returns the first write).

    Raises:
        sqlalchemy.exc.IntegrityError: Another writer took the same ``seq``; a retry takes the next one.
    """
    with session_scope(engine) as session:
        row = save_result(
            session=session,
            key=inp.key,
            workspace=inp.workspace,
            run_id=inp.run_id,
            status=inp.status,
            result=inp.result,
        )
        return stored(row)


def set_result_status(engine: Engine, inp: SetStatusInput) -> StoredStageResult:
    """Record a gate's outcome on a stored result (``approved`` activates a target).

    Raises:
        ResultNotFound: Nothing is stored under the key.
    """
    with session_scope(engine) as session:
        row = set_status(session=session, key=inp.key, status=inp.status)
        if row is None:
            raise ResultNotFound(inp.key)
        return stored(row)
