"""Temporal contracts of the lifecycle: activity and workflow names, their inputs and outputs, page naming.

Workflows import this module (never :mod:`activities.lifecycle`), so everything here is plain data and pure
functions. The names and field shapes are recorded in workflow histories (``tests/replay``): renaming one
breaks the replay of running workflows.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from quantapilot.lifecycle.models import LifecycleInputs, ReportPeriod, ResultStatus, Stage
from quantapilot.lifecycle.outputs import (
    ExpansionOutput,
    OpportunityOutput,
    RealizationOutput,
    StageResult,
    TargetOutput,
)
from quantapilot.models import RunTrigger
from quantapilot.repos.config import BudgetsConfig, ModelConfig, TokenLimitsConfig
from quantapilot.runs.model_contracts import ModelAsk

RUN_STAGE_AGENT = "run_stage_agent"
STORE_STAGE_RESULT = "store_stage_result"
SET_STAGE_RESULT_STATUS = "set_stage_result_status"
PUBLISH_STAGE_PAGE = "publish_stage_page"
NARRATE_STAGE = "narrate_stage"

BUSINESS_CASE_GATE = "business_case"
ACCOUNT_WORKFLOW = "AccountRealization"
TELEMETRY_SIGNAL = "telemetry_ingested"
DOCS_PROJECT = "accounts"
# Results and pages of a lifecycle account: docs version "1.0.<seq>" sorts as semver, newest last.
VERSION_PREFIX = "1.0."

PageStatus = Literal["draft", "published", "archived"]


def account_workflow_id(workspace: str, account_id: str) -> str:
    """Workflow id of an account's realization workflow (one per workspace and account)."""
    return f"account-realization/{workspace}/{account_id}"


def account_stream_id(workspace: str, account_id: str) -> str:
    """Event-log run id of an account's realization stream (``ar_<hex>``), unique across workspaces."""
    return "ar_" + hashlib.sha256(f"{workspace}\x00{account_id}".encode()).hexdigest()[:32]


def page_slug(account_id: str, stage: str) -> str:
    """Docs page slug of a stage result."""
    return f"accounts/{account_id}/{stage}"


def page_version(seq: int) -> str:
    """Docs page version of the ``seq``-th result of an account's stage."""
    return f"{VERSION_PREFIX}{seq}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LifecycleNarrative(_Model):
    """The model that writes a lifecycle run's narrative fields, and the run's budgets (from the settings)."""

    model: ModelConfig
    budgets: BudgetsConfig | None = None
    # QP_LIFECYCLE_LIMITS (None in inputs recorded before it was carried: no token limits beyond the budgets).
    limits: TokenLimitsConfig | None = None


class LifecycleRunInput(RunTrigger):
    """Input of the lifecycle run workflow."""

    stage: Stage
    account_id: str
    inputs: LifecycleInputs = Field(default_factory=LifecycleInputs)
    gate_timeout_s: float | None = None
    # The business_case gate's deciders (token subjects or "scope:<scope>"; empty: anyone who may decide gates).
    gate_approvers: list[str] = Field(default_factory=list)
    gate_allow_self_approval: bool | None = None
    # N-of-M: distinct approvals the business_case gate needs (runs started before it carry 1).
    gate_required_approvals: int = 1
    # Runs started before the trigger's token id was carried have "" for it and keep their old behaviour (no
    # self-approval check), as this default does.
    allow_self_approval_default: bool = True
    # QP_LIFECYCLE_MODELS / QP_LIFECYCLE_BUDGETS when the run was triggered; None: the agents' words alone.
    narrative: LifecycleNarrative | None = None


class NarrateInput(ModelAsk):
    """Ask the arch model for the narrative of one stage result, within what the run may still spend."""

    run_id: str
    stage: Stage
    step: str
    result: StageResult
    # The workspace whose model_usage the call is written to (None in inputs recorded before it was carried).
    workspace: str | None = None


class AccountRealizationInput(_Model):
    """Input of the account realization workflow (carried over continue-as-new)."""

    workspace: str
    account_id: str
    # Coalescing window: at most one refresh per this many seconds.
    window_s: float = Field(default=5.0, gt=0, le=3600)
    # Continue-as-new after this many refreshes, keeping the history short.
    refreshes_per_run: int = Field(default=100, ge=1, le=10_000)
    # First retry interval of the refresh's activities (doubling up to 90 s); tests shorten it.
    retry_initial_s: float = Field(default=2.0, gt=0, le=60)
    # Refreshes that failed in a row (the database away longer than an activity's retries): the next try waits
    # window_s * 2**failures, capped at REFRESH_RETRY_MAX_S.
    failures: int = Field(default=0, ge=0)
    refreshes_total: int = 0
    skipped_total: int = 0
    event_seq: int = 0
    pending: bool = False
    last_refresh_at: datetime | None = None


class TelemetryIngested(_Model):
    """Signal: a batch of telemetry for the account was stored."""

    accepted: int = Field(ge=0)


class AccountRealizationStatus(_Model):
    """Answer of the account workflow's ``status`` query."""

    workspace: str
    account_id: str
    refreshes_total: int
    skipped_total: int
    signals: int
    pending: bool
    last_refresh_at: datetime | None = None
    last_note: str | None = None
    last_overall_status: str | None = None
    last_version: str | None = None


class StageAgentInput(_Model):
    """Run one stage agent for an account; the activity gathers the account's context from the store."""

    workspace: str
    account_id: str
    stage: Stage
    as_of: datetime
    inputs: LifecycleInputs = Field(default_factory=LifecycleInputs)
    # Realization: the period whose telemetry is aggregated.
    period: ReportPeriod | None = None
    # Realization refreshes: skip (result None) when the account has no approved target.
    require_approved_target: bool = False


class StageAgentOutcome(_Model):
    """The agent's result, or why there is none."""

    result: StageResult | None = None
    skipped: str | None = None


class StoreStageResultInput(_Model):
    """Store a stage result under an idempotency key."""

    key: str
    workspace: str
    run_id: str
    status: ResultStatus
    result: StageResult


class StoredStageResult(_Model):
    """Where a stored result landed."""

    key: str
    seq: int
    status: ResultStatus
    version: str


class SetStatusInput(_Model):
    """Change a stored result's status."""

    key: str
    status: ResultStatus


class PublishStageInput(_Model):
    """Publish a stored result as the docs page ``accounts/<accountId>/<stage>``."""

    key: str
    workspace: str
    status: PageStatus = "published"
    change_summary: str | None = None


class PublishedPage(_Model):
    """Which page version was written."""

    slug: str
    version: str
    status: PageStatus


def kpi_statuses(output: RealizationOutput) -> dict[str, str]:
    """KPI name to status of a realization."""
    return {k.kpi: k.status for k in output.kpis}


def summarize(result: StageResult) -> dict[str, Any]:
    """A short JSON-ready summary of a stage result for the run status (no free text from the inputs)."""
    out = result.output
    if isinstance(out, OpportunityOutput):
        return {
            "stage": "opportunity",
            "personaFit": out.persona_fit.score,
            "businessObjectives": list(out.business_objectives),
            "kpis": len(out.value_model.kpis),
            "financialImpactTotal": out.value_model.financial_impact.total,
        }
    if isinstance(out, TargetOutput):
        return {
            "stage": "target",
            "kpiTargets": len(out.kpi_targets),
            "threeYearRoiPct": out.roi_model.three_year_roi_pct,
        }
    if isinstance(out, RealizationOutput):
        return {
            "stage": "realization",
            "overallStatus": out.overall_status,
            "kpis": kpi_statuses(out),
            "samples": sum(k.samples for k in out.kpis),
        }
    assert isinstance(out, ExpansionOutput)  # the discriminated union has four members
    return {
        "stage": "expansion",
        "opportunityScore": out.opportunity_score,
        "proposals": len(out.proposals),
        "proposalTypes": sorted({p.type for p in out.proposals}),
    }
