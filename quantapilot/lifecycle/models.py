"""Pydantic models of lifecycle runs: requests, each stage's result, agent input and output.

The models use snake_case attributes and camelCase aliases (``accountId``), so the HTTP layer dumps them with
``model_dump(by_alias=True)`` as the seed spells its JSON, while Python code and Temporal payloads may use
either. The request models are the one validator of their bodies (:mod:`quantapilot.lifecycle.validation` parses
them from the request's bytes) and the source of the published schemas generated from them.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError
from typing_extensions import TypeAliasType

from quantapilot.approvals import RequiredApprovals, required_approvals_issue
from quantapilot.bodies import published_document
from quantapilot.lifecycle.rfc3339 import MAX_TEXT, aware_utc, parse_rfc3339

STAGES: tuple[str, ...] = ("opportunity", "target", "realization", "expansion")

Stage = Literal["opportunity", "target", "realization", "expansion"]
Direction = Literal["higher_is_better", "lower_is_better"]
KpiStatus = Literal["achieved", "on_track", "at_risk", "missed"]
# The overall rule never yields "missed": a mostly failing account is "at_risk" (SEED-NOTES, ValueCanvas).
OverallStatus = Literal["achieved", "on_track", "at_risk"]
Confidence = Literal["high", "low"]
ProposalType = Literal["upsell", "cross_sell", "optimization", "expansion"]
NodeKind = Literal["capability", "outcome", "kpi", "financial_metric"]
# Status of a stored stage result (quantapilot.lifecycle.store); the business_case gate moves targets on.
ResultStatus = Literal["completed", "pending_approval", "approved", "rejected"]

KPI_PATTERN = r"^[a-z][a-z0-9_.]{0,63}$"

# Integer bounds: the published schema (and the messages quoting it) spell them 0 and 1.
Score01 = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
KpiName = Annotated[str, Field(pattern=KPI_PATTERN)]


class _Model(BaseModel):
    """Base of every lifecycle model: immutable, strict about unknown fields, camelCase aliases."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        frozen=True,
        extra="forbid",
    )


def canonical_account_id(value: str) -> str:
    """Return ``value`` as a canonical lowercase UUID string.

    Raises:
        ValueError: When ``value`` is not a UUID.
    """
    return str(uuid.UUID(value))


_FULL_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def account_uuid(value: str) -> str:
    """Return an account id of a request body, lowercased: the published ``format: uuid``, exactly.

    Only the hyphenated 8-4-4-4-12 form (``uuid.UUID`` alone would also take braces, URNs and stray hyphens);
    for it, lowercase is the canonical form.

    Raises:
        ValueError: When ``value`` is not such a UUID.
    """
    if _UUID_TEXT.fullmatch(value) is None:
        raise ValueError("not a UUID in the 8-4-4-4-12 form")
    return value.lower()


# ----------------------------------------------------------------------------------------------------
# Requests

#: Validation context of a request body (:mod:`quantapilot.lifecycle.validation`): an optional field
#: (``X | None = None``) may be left out but not sent as null, as the published schemas say. Without it (a model
#: read back from a Temporal payload, which writes absent fields as null) null stays allowed.
REQUEST_BODY: dict[str, bool] = {"request_body": True}


def refuse_null(value: Any, info: ValidationInfo) -> Any:
    """A ``mode="before"`` field check: null in a request body is refused (see :data:`REQUEST_BODY`)."""
    if value is None and info.context is not None and info.context.get("request_body"):
        raise PydanticCustomError("null_not_allowed", "leave the field out instead of sending null")
    return value


class _Request(_Model):
    """Base of the request body models: no field takes null from a request body."""

    @field_validator("*", mode="before")
    @classmethod
    def _absent_not_null(cls, value: Any, info: ValidationInfo) -> Any:
        return refuse_null(value, info)


# The request models are the source of ``schemas/lifecycle_run.schema.json`` (``make schemas``; the conventions
# are in schemas/generate.py): every description and bound of the published file is stated here once.
Kpi = TypeAliasType("Kpi", Annotated[str, Field(pattern=KPI_PATTERN, description="KPI name as telemetry spells it.")])
Number = TypeAliasType("Number", Annotated[float, Field(ge=-1e15, le=1e15, allow_inf_nan=False)])
Amount = TypeAliasType("Amount", Annotated[float, Field(ge=0, le=1e15, allow_inf_nan=False)])
Unit = TypeAliasType("Unit", Annotated[str, Field(min_length=1, max_length=32)])
# A bound on the text the schema checks before parsing; a datetime or date has no length.
_TIMESTAMP_TEXT: dict[str, Any] = {"maxLength": MAX_TEXT}


class Benchmark(_Request):
    """An industry or customer benchmark for one KPI, used as the KPI's baseline."""

    model_config = ConfigDict(title="benchmark")

    kpi: Kpi
    value: Number
    unit: Unit | None = None
    source: str | None = Field(default=None, min_length=1, max_length=200)


class KpiOverride(_Request):
    """Target-stage override of one KPI (or a new KPI when it has both baseline and target)."""

    model_config = ConfigDict(title="kpiOverride")

    kpi: Kpi
    baseline: Number | None = None
    target: Number | None = None
    unit: Unit | None = None
    direction: Direction | None = None
    deadline: date | None = Field(default=None, json_schema_extra={"maxLength": 10})
    confidence: Score01 | None = None

    @field_validator("deadline", mode="before")
    @classmethod
    def _full_date(cls, value: Any) -> Any:
        # The published format "date" (RFC 3339 full-date), read here: the null check before it hands the
        # type a Python string, which strict parsing would refuse.
        if isinstance(value, str):
            if _FULL_DATE.fullmatch(value) is None:
                raise ValueError("not an RFC 3339 full-date (YYYY-MM-DD)")
            return date.fromisoformat(value)
        return value


class ReportPeriod(_Request):
    """A half-open time range ``[from, to)``; JSON spells the ends ``from`` and ``to``."""

    start: datetime = Field(alias="from", json_schema_extra=_TIMESTAMP_TEXT)
    end: datetime = Field(alias="to", json_schema_extra=_TIMESTAMP_TEXT)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        return parse_rfc3339(value, max_length=MAX_TEXT) if isinstance(value, str) else value

    @field_validator("start", "end")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        return aware_utc(value, "timestamps must carry a UTC offset")

    @model_validator(mode="after")
    def _ordered(self) -> ReportPeriod:
        if self.end <= self.start:
            raise ValueError("'to' must be after 'from'")
        return self


class Investment(_Request):
    """What the customer spends on the solution; the target stage's ROI model divides by it."""

    annual_cost: Amount
    # A factory, so the published schema states no default (absent means no one-time cost).
    one_time_cost: Amount = Field(default_factory=lambda: 0.0)


class LifecycleInputs(_Request):
    """The ``inputs`` object of a lifecycle run request."""

    discovery_notes: str | None = Field(
        default=None, max_length=20000, description="Free-text discovery notes (opportunity stage)."
    )
    persona: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Role of the main contact, e.g. CFO, CTO, COO, VP Sales.",
    )
    benchmarks: list[Benchmark] = Field(
        default_factory=list,
        max_length=100,
        description="Benchmarks that become the value model's KPIs (baseline = value).",
    )
    kpis: list[KpiOverride] = Field(
        default_factory=list,
        max_length=100,
        description="Target-stage overrides per KPI; a KPI not in the value model needs baseline and target.",
    )
    report_period: ReportPeriod | None = Field(
        default=None, description="Realization report period [from, to). Absent: the 30 days before the run."
    )
    investment: Investment | None = Field(
        default=None,
        description=(
            "Customer's cost of the solution, for the ROI model. Absent: the target agent's documented defaults."
        ),
    )


class StageGateSettings(_Request):
    """Who may decide the target stage's ``business_case`` gate, and for how long it waits."""

    approvers: list[Annotated[str, Field(pattern=r"^\S+$", min_length=1, max_length=200)]] = Field(
        default_factory=list,
        max_length=100,
        description=(
            "Who may decide: token subjects or 'scope:<scope>'. Empty or absent: anyone allowed to decide gates."
        ),
    )
    # None: the deployment's default (QP_ALLOW_SELF_APPROVAL).
    allow_self_approval: bool | None = Field(
        default=None,
        description=(
            "Whether the subject that triggered the run (with any of its tokens) may decide the gate; absent: the "
            "deployment's default (QP_ALLOW_SELF_APPROVAL). It can only narrow: with QP_ALLOW_SELF_APPROVAL=false, "
            "true is recorded as false."
        ),
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=31536000,
        description="Seconds to wait for a decision; then the run fails with GATE_TIMEOUT. Absent: no timeout.",
    )
    required_approvals: RequiredApprovals = 1

    @model_validator(mode="after")
    def _reachable(self) -> StageGateSettings:
        # A gate its approvers can never pass would hold the run until its timeout, or for ever.
        issue = required_approvals_issue(self.required_approvals, list(self.approvers))
        if issue is not None:
            raise ValueError(issue)
        return self


_PUBLISHED = published_document(
    "urn:quantapilot:schema:lifecycle_run",
    "Body of POST /v1/lifecycle/runs: run one value-lifecycle stage for one account.",
)


class LifecycleRunRequest(_Request):
    """Body of ``POST /v1/lifecycle/runs``."""

    model_config = ConfigDict(title="Lifecycle run request", json_schema_extra=_PUBLISHED)

    stage: Stage = Field(description="Lifecycle stage to run.")
    account_id: str = Field(
        min_length=36,
        max_length=36,
        description="Customer account, a hyphenated UUID.",
        json_schema_extra={"format": "uuid"},
    )
    inputs: LifecycleInputs = Field(
        default_factory=LifecycleInputs,
        description="Stage inputs; every field is optional and the agents document what they use. Absent: {}.",
    )
    correlation_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._:/-]+$",
        description="Caller's id carried into events; no personal data.",
    )
    gate: StageGateSettings | None = Field(
        default=None,
        description="Settings of the target stage's business_case gate (only the target stage has a gate).",
    )

    @model_validator(mode="after")
    def _gate_only_for_target(self) -> LifecycleRunRequest:
        # Accepting gate settings a stage never uses would let a caller believe its approvers are enforced.
        if self.gate is not None and self.stage != "target":
            raise ValueError(f"gate applies only to the target stage, not {self.stage}")
        return self

    @field_validator("account_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return account_uuid(value)


# ----------------------------------------------------------------------------------------------------
# Stage outputs
