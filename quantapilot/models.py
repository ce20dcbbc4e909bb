"""Models that cross process boundaries: workflow inputs, handler inputs and run status.

The run event is :class:`quantapilot.events.record.EventRecord`.

They travel through Temporal with the pydantic data converter, so they must stay plain data (no I/O).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from quantapilot.repos.config import QuantapilotConfig
from quantapilot.runs.budget import ModelCallRecord, RunUsage


class RunKind(StrEnum):
    """The two kinds of run."""

    REPOSITORY = "repository"
    LIFECYCLE = "lifecycle"


class RunState(StrEnum):
    """Externally visible run state."""

    RUNNING = "running"
    WAITING_FOR_GATE = "waiting_for_gate"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED})


class GateStatus(StrEnum):
    """Where a gate stands: pending until a person decides, or the run gave up waiting."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"


class MilestoneStatus(StrEnum):
    """Where a milestone of a repository run stands."""

    PLANNED = "planned"
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


# How a decision reached the run: the HTTP API, the CLI, a Temporal signal, a signed review link, or the signed-in
# review page (/ui/).
DecisionSource = Literal["api", "cli", "signal", "link", "ui"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunTrigger(_Model):
    """Who triggered a run, and how: the fields every run workflow's input begins with (the API sets them)."""

    run_id: str
    workspace: str
    correlation_id: str | None = None
    triggered_by: str = "unknown"
    # Token id of the trigger: that token may not decide the run's gates unless self-approval is allowed.
    triggered_by_token: str = ""
    # QP_ALLOW_SELF_APPROVAL when the run was triggered.
    allow_self_approval_default: bool = False
    request_sha256: str = ""
    trace_id: str | None = None


class RepoRunInput(RunTrigger):
    """Input of the repository run workflow."""

    repo_url: str
    branch: str
    quantapilot_yaml_path: str = "quantapilot.yml"
    # How soon a dead worker is noticed in a long step (from QP_STEP_HEARTBEAT_S at trigger time).
    heartbeat_timeout_s: float = 30.0
    # Continue as new after this many milestones in one execution (None: only when Temporal suggests it).
    continue_as_new_every: int | None = None
    # Set only by the run itself when it continues as new.
    carry: RepoRunCarry | None = None


class RepoRunCarry(_Model):
    """State a repository run hands to its next execution when it continues as new between milestones."""

    config: QuantapilotConfig
    commit_sha: str
    next_milestone: int
    milestones: list[MilestoneRecord]
    pull_requests: list[PullRequestRef]
    gates: list[GateRecord]
    docs_branch: str | None
    event_seq: int
    created_at: datetime
    time_budget_s: float | None
    extra_attempts: int
    merged_once: bool
    usage: RunUsage | None = None
    model_calls: list[ModelCallRecord] = []


class GateDecisionInput(_Model):
    """A decision on a gate, sent as a signal (UI, CLI) or an update (HTTP API)."""

    gate: str = Field(min_length=1, max_length=100)
    approved: bool
    reason: str | None = Field(default=None, max_length=2000)
    decided_by: str = Field(default="temporal-ui", max_length=200)
    source: DecisionSource = "signal"
    # Set by the API from the caller's token; signals (Temporal UI/CLI) carry none: Temporal access is operator
    # authority, see docs/SECURITY.md.
    decided_by_token: str | None = None
    decider_scopes: list[str] = []


class PauseInput(_Model):
    """Pause request."""

    reason: str = Field(default="manual", max_length=500)
    requested_by: str = Field(default="temporal-ui", max_length=200)


class ResumeInput(_Model):
    """Resume request."""

    requested_by: str = Field(default="temporal-ui", max_length=200)


class BudgetInput(_Model):
    """Raise a run's time budget, its step attempts, or its model spending (tokens and USD are added)."""

    time_budget_s: float | None = Field(default=None, gt=0)
    extra_attempts: int | None = Field(default=None, ge=1, le=100)
    # More model tokens / US dollars the run may spend: added on top of every token limit (step, run, per run and
    # per day) and of budgets.usd.
    tokens: int | None = Field(default=None, ge=1, le=10**12)
    usd: float | None = Field(default=None, gt=0, le=10**9)


class ApprovalRecord(_Model):
    """One person's decision on a gate that needs several approvals (N-of-M)."""

    subject: str
    approved: bool
    at: datetime
    reason: str | None = None
    via: DecisionSource = "signal"


def approval_progress_text(approvals: int, required: int) -> str:
    """How far a gate that needs several approvals is, as people read it: ``"1 of 2 approvals"``."""
    return f"{approvals} of {required} approval{'' if required == 1 else 's'}"


class GateRecord(_Model):
    """A gate as the run sees it."""

    name: str
    description: str = ""
    status: GateStatus = GateStatus.PENDING
    requested_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    source: DecisionSource | None = None
    reason: str | None = None
    approvers: list[str] = []
    allow_self_approval: bool = False
    # N-of-M: the gate passes once this many distinct subjects approved; each decision is kept in ``approvals``.
    required_approvals: int = 1
    approvals: list[ApprovalRecord] = []
    # "1 of 2 approvals" while a gate that needs several approvals waits (None otherwise), so the status API, `qp
    # status` and the Web UI say the same thing.
    approval_progress: str | None = None
    # When a gate with a timeout stops waiting (requested_at + timeout; None: it waits until decided). Review links
    # expire by then, and the review page says "Decide by ...".
    deadline: datetime | None = None

    @property
    def approved(self) -> bool | None:
        """True/False once decided, None while pending or timed out."""
        if self.status == GateStatus.APPROVED:
            return True
        if self.status == GateStatus.REJECTED:
            return False
        return None


class GateRequestedData(_Model):
    """The ``data`` of a ``gate.requested`` event (webhook body, AMQP message, event log).

    ``timeout_s`` and ``deadline`` only for a gate with a timeout (runs that requested it after the
    ``gate-timeout-in-event`` patch); ``review_url`` is added at delivery (never recorded), see
    :mod:`quantapilot.review.links`.
    """

    model_config = ConfigDict(
        extra="forbid",
        title="GateRequestedData",
        json_schema_extra={"description": "The data of a gate.requested event."},
    )

    run_id: str
    gate: str
    description: str
    timeout_s: float | None = Field(
        default=None, exclude_if=lambda v: v is None, description="How long the gate waits for a decision."
    )
    deadline: datetime | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="When the gate stops waiting (RFC 3339, UTC): requested time plus timeout_s.",
    )
    review_url: str | None = Field(
        default=None,
        exclude_if=lambda v: v is None,
        description="Signed review page link; in webhook and AMQP bodies, and in the event log for gates:decide.",
    )


class StepOutcome(_Model):
    """What one milestone step (command) did."""

    name: str
    command: str | None = None
    exit_code: int | None = None
    output_tail: str = ""
    duration_s: float = 0.0
    timed_out: bool = False
    attempt: int = 1


class MilestoneRecord(_Model):
    """A milestone of a repository run."""

    id: str
    title: str
    status: MilestoneStatus = MilestoneStatus.PLANNED
    gate: str | None = None
    branch: str | None = None
    pr_number: int | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    steps: list[StepOutcome] = []
    # Model steps only (quantapilot.yml `prompt:`): each call's prompt, answer, diff and tokens.
    model_calls: list[ModelCallRecord] = []


class RunError(_Model):
    """Why a run failed."""

    code: str
    message: str


class PullRequestRef(_Model):
    """A pull request the run opened."""

    number: int
    head: str
    base: str
    state: str
    url: str
    purpose: str


class RunStatus(_Model):
    """The answer of the workflow's ``status`` query and of ``GET /v1/runs/{run_id}``."""

    run_id: str
    kind: RunKind
    workspace: str
    state: RunState
    current_step: str | None = None
    correlation_id: str | None = None
    repo_url: str | None = None
    branch: str | None = None
    account_id: str | None = None
    stage: str | None = None
    gates: list[GateRecord] = []
    milestones: list[MilestoneRecord] = []
    pull_requests: list[PullRequestRef] = []
    docs_branch: str | None = None
    paused_reason: str | None = None
    error: RunError | None = None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    last_event_seq: int = 0
    result: dict[str, Any] | None = None
    # Model spending against budget; None for a run that calls no model.
    usage: RunUsage | None = None
    # Model calls outside milestones (those are in milestones[].model_calls): the documentation step's pages
    # (models.arch, step doc/<page>), a lifecycle stage's narrative (step narrative/<stage>).
    model_calls: list[ModelCallRecord] = []


RepoRunCarry.model_rebuild()
RepoRunInput.model_rebuild()
