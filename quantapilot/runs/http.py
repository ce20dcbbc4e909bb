"""The HTTP bodies of the run endpoints (repository and lifecycle runs): requests, answers and event pages.

The models are the source of ``schemas/api.schema.json`` (``make schemas``, :mod:`schemas.generate`). The run's
state is the workflow's own :class:`quantapilot.models.RunStatus` (and :class:`~quantapilot.models.GateRecord`),
served with its URLs; an event is :class:`quantapilot.events.record.EventRecord` as recorded.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from quantapilot.bodies import NonEmptyBody, RequestBody, ResponseBody
from quantapilot.events.record import EventRecord
from quantapilot.models import RunState, RunStatus

# ----- requests ------------------------------------------------------------------------------------------

_BRANCH = r"^(?!-)(?!.*\.\.)(?!.*//)(?!.*@\{)(?!/)(?!.*/$)(?!.*\.lock$)[A-Za-z0-9._/-]+$"
_REPO_PATH = r"^(?!/)(?!.*(^|/)\.\.(/|$))[A-Za-z0-9._/-]+$"


class RunRequest(RequestBody):
    """``POST /v1/runs`` (and the seed alias)."""

    model_config = ConfigDict(
        title="RunRequest",
        json_schema_extra={"description": "Trigger a repository run (POST /run, POST /v1/runs)."},
    )

    repo_url: str = Field(
        min_length=1,
        max_length=2000,
        pattern=r"^[^\s\x00-\x1f\x7f]+$",
        description="Repository URL; must match the operator's allowed repository patterns.",
    )
    branch: str = Field(
        min_length=1, max_length=255, pattern=_BRANCH, description="Branch to run on (a valid git branch name)."
    )
    quantapilot_yaml_path: str = Field(
        default="quantapilot.yml",
        min_length=1,
        max_length=500,
        pattern=_REPO_PATH,
        description="Path of quantapilot.yml inside the repository.",
    )
    correlation_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="Caller's id for tracking events and logs; must not encode personal data.",
    )


class GateDecisionRequest(RequestBody):
    """``POST /v1/runs/{run_id}/gates/{gate}/decision``."""

    model_config = ConfigDict(title="GateDecisionRequest")

    approved: bool
    # May be null: a factory, so the "absent" convention of a None default does not apply.
    reason: Annotated[str, Field(max_length=2000)] | None = Field(default_factory=lambda: None)


class GateLinkRequest(RequestBody):
    """Mint a signed review link; with approver, the link decides as that subject."""

    model_config = ConfigDict(title="GateLinkRequest")

    approver: str | None = Field(default=None, min_length=1, max_length=200)


class ReviewLinkAnswer(ResponseBody):
    """The answer of ``POST /v1/runs/{run_id}/gates/{gate}/links``: a signed review link."""

    model_config = ConfigDict(title="ReviewLink")

    url: str = Field(description="Absolute review page URL carrying the signed capability; treat it as a secret.")
    expires_at: datetime
    approver: str | None


class PauseRequest(RequestBody):
    """``POST /v1/runs/{run_id}/pause`` (body optional)."""

    model_config = ConfigDict(title="PauseRequest")

    reason: str | None = Field(default=None, min_length=1, max_length=500)


class BudgetRequest(NonEmptyBody):
    """``POST /v1/runs/{run_id}/budget``: at least one of the four."""

    model_config = ConfigDict(title="BudgetRequest")

    time_budget_s: float | None = Field(default=None, gt=0, le=31536000, allow_inf_nan=False)
    extra_attempts: int | None = Field(default=None, ge=1, le=100)
    tokens: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000_000,
        description=(
            "More model tokens the run may spend: added on top of every token limit it has (steps[].tokens_budget, "
            "budgets.tokens, limits.tokens_per_run, limits.tokens_per_day)."
        ),
    )
    usd: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000_000,
        allow_inf_nan=False,
        description="More US dollars the run may spend on models: added on top of budgets.usd.",
    )


# ----- answers -------------------------------------------------------------------------------------------

_CREATED = "False when an Idempotency-Key matched an existing run."


class RunAccepted(ResponseBody):
    """The answer of a repository run trigger."""

    model_config = ConfigDict(title="RunAccepted")

    run_id: str
    status_url: str
    events_url: str
    created: bool = Field(description=_CREATED)


class RunAcceptedDeprecated(RunAccepted):
    """The answer of the seed's deprecated trigger path: a run trigger's, with the notice."""

    model_config = ConfigDict(title="RunAcceptedDeprecated")

    deprecation_notice: str = Field(alias="deprecationNotice")


class RunStatusView(RunStatus):
    """``GET /v1/runs/{run_id}``: the workflow's status with the run's URLs."""

    model_config = ConfigDict(title="RunStatus")

    status_url: str
    events_url: str


class CancelAccepted(ResponseBody):
    """The answer of a cancellation request."""

    model_config = ConfigDict(title="CancelAccepted")

    run_id: str
    state: Literal["cancelling"]
    status_url: str
    events_url: str


class EventList(ResponseBody):
    """``GET /v1/runs/{run_id}/events``."""

    model_config = ConfigDict(title="EventList")

    run_id: str
    events: list[EventRecord]
    next_after: int


class LifecycleRunAccepted(ResponseBody):
    """The answer of a lifecycle run trigger (camelCase, as the seed)."""

    model_config = ConfigDict(title="LifecycleRunAccepted")

    run_id: str = Field(alias="runId", pattern=r"^lc_[0-9a-f]{32}$")
    status: RunState
    status_url: str = Field(alias="statusUrl")
    events_url: str = Field(alias="eventsUrl")
    created: bool = Field(description=_CREATED)


class AccountAccepted(ResponseBody):
    """Events of one account in a telemetry batch."""

    account_id: str = Field(alias="accountId")
    accepted: int = Field(ge=0)


class TelemetryAccepted(ResponseBody):
    """The answer of ``POST /v1/telemetry/events``."""

    model_config = ConfigDict(title="TelemetryAccepted")

    accepted: int = Field(
        ge=0,
        description="Events of the request that are stored, now or by an earlier delivery: a retry answers the same.",
    )
    duplicates: int = Field(
        ge=0,
        description=(
            "Of those, the events already stored (their id, or the batch's Idempotency-Key with the same body): "
            "not stored again."
        ),
    )
    account_ids: list[str] = Field(alias="accountIds")
    accounts: list[AccountAccepted]
    refreshes_scheduled: int = Field(alias="refreshesScheduled", ge=0)


class AccountEventList(ResponseBody):
    """``GET /v1/accounts/{account_id}/events``."""

    model_config = ConfigDict(title="AccountEventList")

    account_id: str = Field(alias="accountId")
    stream_id: str = Field(alias="streamId")
    events: list[EventRecord]
    next_after: int = Field(alias="nextAfter", ge=0)
