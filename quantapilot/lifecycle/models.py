"""Pydantic models of lifecycle runs: requests, each stage's result, agent input and output, schema checks.

The models use snake_case attributes and camelCase aliases (``accountId``), so the HTTP layer dumps them with
``model_dump(by_alias=True)`` as the seed spells its JSON, while Python code and Temporal payloads may use
either.

JSON Schema validation of request bodies lives here too (:func:`validate_json`), with a format checker that
really checks ``date-time`` (RFC 3339, implemented here because ``rfc3339-validator`` is not installed) and
``uuid``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import jsonschema
import jsonschema_rs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

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
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"

Score01 = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
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


# ----------------------------------------------------------------------------------------------------
# RFC 3339 and the JSON Schema format checker

_RFC3339 = re.compile(
    r"^(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})[Tt](?P<h>\d{2}):(?P<mi>\d{2}):(?P<s>\d{2})(?P<f>\.\d+)?"
    r"(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>\d{2}):(?P<om>\d{2}))$"
)


def parse_rfc3339(value: str) -> datetime:
    """Parse an RFC 3339 ``date-time`` into an aware datetime.

    Stricter than :meth:`datetime.fromisoformat`: the offset is required, the separator is ``T`` (or ``t``),
    and every field is range-checked. Leap seconds (``:60``) are refused because a Python datetime, and so the
    database, cannot hold them; fractional digits beyond microseconds are truncated.

    Args:
        value: The text, e.g. ``2025-11-17T12:00:00Z``.

    Returns:
        The datetime with its offset.

    Raises:
        ValueError: When ``value`` is not an RFC 3339 date-time.
    """
    m = _RFC3339.match(value)
    if m is None:
        raise ValueError(f"not an RFC 3339 date-time: {value[:64]!r}")
    if m["z"]:
        tz: timezone = UTC
    else:
        oh, om = int(m["oh"]), int(m["om"])
        if oh > 23 or om > 59:
            raise ValueError("offset out of range")
        sign = 1 if m["sign"] == "+" else -1
        tz = timezone(sign * timedelta(hours=oh, minutes=om))
    micro = int((m["f"] or ".0")[1:7].ljust(6, "0"))
    # datetime() range-checks month, day (leap years included), hour, minute and second.
    return datetime(int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), int(m["s"]), micro, tzinfo=tz)


def _is_rfc3339(instance: object) -> bool:
    if not isinstance(instance, str):
        return True  # formats only constrain strings; the type keyword handles the rest
    parse_rfc3339(instance)  # raises ValueError, which the checker reports as a format error
    return True


def _is_uuid(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    # The hyphenated 8-4-4-4-12 form only: UUID() alone would also take braces, URNs and bare hex.
    return bool(re.fullmatch(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}", instance))


def format_checker() -> jsonschema.FormatChecker:
    """Return a format checker whose ``date-time`` and ``uuid`` checks always run.

    jsonschema only checks ``date-time`` when ``rfc3339-validator`` is installed and silently passes
    otherwise; this checker replaces both formats with our own functions so validation never depends on
    optional packages.
    """
    checker = jsonschema.FormatChecker()
    checker.checks("date-time", raises=ValueError)(_is_rfc3339)
    checker.checks("uuid")(_is_uuid)
    return checker


class SchemaValidationError(ValueError):
    """A request body that does not match its JSON Schema (or the model behind it).

    Attributes:
        errors: One ``{"path": "/inputs/persona", "message": "..."}`` per problem, sorted by path.
    """

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['path'] or '/'}: {e['message']}" for e in errors[:5]))
        self.errors = errors


@cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator: jsonschema.protocols.Validator = cls(schema, format_checker=format_checker())
    return validator


def _is_rfc3339_format(instance: object) -> bool:
    try:
        return _is_rfc3339(instance)
    except ValueError:
        return False


@cache
def _fast_validator(name: str) -> Any:
    """The same schema compiled by jsonschema-rs, with our own ``date-time`` and ``uuid`` checks.

    Profiling the telemetry path showed the pure-Python validator spending ~140 ms on a batch of 1000 events;
    this one answers valid/invalid in a few. It only says yes or no: the error list still comes from
    :func:`_validator`, so what callers read does not change.
    """
    return jsonschema_rs.validator_for(
        load_schema(name),
        validate_formats=True,
        formats={"date-time": _is_rfc3339_format, "uuid": _is_uuid},
    )


def load_schema(name: str) -> dict[str, Any]:
    """Return the parsed JSON Schema ``schemas/<name>`` (e.g. ``lifecycle_run.schema.json``)."""
    schema = _validator(name).schema
    if not isinstance(schema, Mapping):
        raise TypeError(f"schema {name} is not an object")
    return dict(schema)


def _pointer(path: Any) -> str:
    return "".join(f"/{p}" for p in path)


def validate_json(name: str, payload: Any) -> None:
    """Validate ``payload`` against ``schemas/<name>``.

    Raises:
        SchemaValidationError: With every problem found, not only the first.
    """
    if _fast_validator(name).is_valid(payload):
        return
    # Invalid (or a case where the two validators disagree): the reference validator decides and explains.
    errors = sorted(_validator(name).iter_errors(payload), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise SchemaValidationError(
            [{"path": _pointer(e.absolute_path), "message": e.message[:300]} for e in errors[:50]]
        )


def pydantic_errors(exc: ValidationError) -> SchemaValidationError:
    """Turn a pydantic ``ValidationError`` into a :class:`SchemaValidationError` (no input values echoed)."""
    return SchemaValidationError(
        [{"path": _pointer(e["loc"]), "message": e["msg"]} for e in exc.errors(include_input=False)[:50]]
    )


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON refusing ``NaN``/``Infinity``, which Python's ``json`` accepts but JSON does not.

    Numbers too large for a double (``1e400``) still parse to infinity; the schemas' ``maximum`` refuses them.

    Raises:
        SchemaValidationError: For the non-standard constants.
        ValueError: For text that is not JSON (``json.JSONDecodeError``).
    """

    def _reject(constant: str) -> Any:
        raise SchemaValidationError([{"path": "", "message": f"{constant} is not valid JSON"}])

    return json.loads(text, parse_constant=_reject)


# ----------------------------------------------------------------------------------------------------
# Requests


class Benchmark(_Model):
    """An industry or customer benchmark for one KPI, used as the KPI's baseline."""

    kpi: KpiName
    value: Finite
    unit: str | None = None
    source: str | None = None


class KpiOverride(_Model):
    """Target-stage override of one KPI (or a new KPI when it has both baseline and target)."""

    kpi: KpiName
    baseline: Finite | None = None
    target: Finite | None = None
    unit: str | None = None
    direction: Direction | None = None
    deadline: date | None = None
    confidence: Score01 | None = None


class ReportPeriod(_Model):
    """A half-open time range ``[from, to)``; JSON spells the ends ``from`` and ``to``."""

    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _rfc3339(cls, value: Any) -> Any:
        return parse_rfc3339(value) if isinstance(value, str) else value

    @field_validator("start", "end")
    @classmethod
    def _aware_utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamps must carry a UTC offset")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _ordered(self) -> ReportPeriod:
        if self.end <= self.start:
            raise ValueError("'to' must be after 'from'")
        return self


class Investment(_Model):
    """What the customer spends on the solution; the target stage's ROI model divides by it."""

    annual_cost: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    one_time_cost: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0


class LifecycleInputs(_Model):
    """The ``inputs`` object of a lifecycle run request."""

    discovery_notes: str | None = None
    persona: str | None = None
    benchmarks: list[Benchmark] = Field(default_factory=list)
    kpis: list[KpiOverride] = Field(default_factory=list)
    report_period: ReportPeriod | None = None
    investment: Investment | None = None


class StageGateSettings(_Model):
    """Who may decide the target stage's ``business_case`` gate, and for how long it waits."""

    approvers: list[str] = Field(default_factory=list)
    # None: the deployment's default (QP_ALLOW_SELF_APPROVAL).
    allow_self_approval: bool | None = None
    timeout_s: float | None = None


class LifecycleRunRequest(_Model):
    """Body of ``POST /v1/lifecycle/runs``."""

    stage: Stage
    account_id: str
    inputs: LifecycleInputs = Field(default_factory=LifecycleInputs)
    correlation_id: str | None = None
    gate: StageGateSettings | None = None

    @model_validator(mode="after")
    def _gate_only_for_target(self) -> LifecycleRunRequest:
        # Accepting gate settings a stage never uses would let a caller believe its approvers are enforced.
        if self.gate is not None and self.stage != "target":
            raise ValueError(f"gate applies only to the target stage, not {self.stage}")
        return self

    @field_validator("account_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return canonical_account_id(value)


def parse_run_request(payload: Any) -> LifecycleRunRequest:
    """Validate a decoded request body against ``lifecycle_run.schema.json`` and parse it.

    Raises:
        SchemaValidationError: When the body does not match the schema, or (e.g.) a report period ends before
            it starts.
    """
    validate_json("lifecycle_run.schema.json", payload)
    try:
        return LifecycleRunRequest.model_validate(payload)
    except ValidationError as exc:
        raise pydantic_errors(exc) from None


# ----------------------------------------------------------------------------------------------------
# Stage outputs


class PersonaFit(_Model):
    """How well the contact's persona fits as a buyer."""

    score: Score01
    role: str
    decision_authority: str
    reasoning: str


class KpiValue(_Model):
    """A KPI of the initial value model."""

    kpi: KpiName
    baseline: Finite
    target: Finite
    unit: str | None = None
    direction: Direction


class FinancialImpact(_Model):
    """Annual financial impact split by kind; ``total`` is their sum."""

    revenue_opportunity: Finite
    cost_savings: Finite
    risk_reduction: Finite
    total: Finite


class ValueModel(_Model):
    """KPIs and the financial impact of reaching their targets."""

    kpis: list[KpiValue]
    financial_impact: FinancialImpact


class OpportunityOutput(_Model):
    """Result of the opportunity stage."""

    stage: Literal["opportunity"] = "opportunity"
    summary: str
    persona_fit: PersonaFit
    business_objectives: Annotated[list[str], Field(min_length=3, max_length=5)]
    value_model: ValueModel
    notes: list[str] = Field(default_factory=list)


class ValueTreeNode(_Model):
    """A node of the value tree."""

    id: str
    kind: NodeKind
    label: str


class ValueTreeLink(_Model):
    """A weighted edge from a node to the node one level down (capability -> outcome -> kpi -> metric)."""

    source: str
    target: str
    weight: Score01


class ValueTree(_Model):
    """Capabilities, outcomes, KPIs and financial metrics, with weighted links between levels."""

    nodes: list[ValueTreeNode]
    links: list[ValueTreeLink]


class RoiStep(_Model):
    """One step of the ROI model: a named formula, its inputs and result."""

    name: str
    formula: str
    inputs: dict[str, Finite]
    result: Finite
    reasoning: str


class RoiModel(_Model):
    """Ordered ROI steps; the last one yields the 3-year ROI in percent."""

    steps: list[RoiStep]
    three_year_roi_pct: Finite


class KpiTarget(_Model):
    """A committed KPI target."""

    kpi: KpiName
    baseline: Finite
    target: Finite
    unit: str | None = None
    direction: Direction
    deadline: date
    confidence: Score01


class TargetOutput(_Model):
    """Result of the target stage."""

    stage: Literal["target"] = "target"
    value_tree: ValueTree
    roi_model: RoiModel
    kpi_targets: list[KpiTarget]
    value_commitment: str
    business_case_summary: str
    notes: list[str] = Field(default_factory=list)


class KpiRealization(_Model):
    """Realization of one KPI over a report period (see :mod:`quantapilot.lifecycle.realization`)."""

    kpi: KpiName
    baseline: Finite
    target: Finite
    actual: Finite
    unit: str | None = None
    direction: Direction
    variance: Finite
    variance_pct: Finite | None
    progress_pct: Finite
    status: KpiStatus
    samples: Annotated[int, Field(ge=0)]
    confidence: Confidence


class RealizationOutput(_Model):
    """Result of the realization stage."""

    stage: Literal["realization"] = "realization"
    kpis: list[KpiRealization]
    overall_status: OverallStatus
    period: ReportPeriod
    notes: list[str] = Field(default_factory=list)


class Proposal(_Model):
    """An expansion proposal."""

    type: ProposalType
    title: str
    kpi: str | None = None
    estimated_value: Finite
    confidence: Score01
    status: Literal["proposed"] = "proposed"
    rationale: str = ""


class Improvement(_Model):
    """A further improvement of one KPI and its annual value."""

    kpi: KpiName
    current: Finite
    proposed: Finite
    incremental_value: Finite


class ExpansionOutput(_Model):
    """Result of the expansion stage."""

    stage: Literal["expansion"] = "expansion"
    proposals: list[Proposal]
    improvements: list[Improvement]
    opportunity_score: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
    notes: list[str] = Field(default_factory=list)


StageOutput = Annotated[
    OpportunityOutput | TargetOutput | RealizationOutput | ExpansionOutput, Field(discriminator="stage")
]


# ----------------------------------------------------------------------------------------------------
# Agent input and result


class KpiAggregate(_Model):
    """Telemetry of one KPI over a period, as :func:`quantapilot.lifecycle.telemetry.kpi_aggregates` computes it."""

    kpi: str
    mean: Finite
    count: Annotated[int, Field(ge=0)]
    min: Finite
    max: Finite
    last: Finite
    unit: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> KpiAggregate:
        # An aggregate exists only for KPIs with samples; AVG may round, so the mean gets a tolerance.
        tol = 1e-9 * max(1.0, abs(self.min), abs(self.max))
        if self.count < 1 or self.min > self.max or not self.min - tol <= self.mean <= self.max + tol:
            raise ValueError("inconsistent aggregate: need count >= 1 and min <= mean <= max")
        return self


class StageInput(_Model):
    """Everything a stage agent may use; agents do no I/O, so the caller gathers it.

    Attributes:
        stage: The stage to run.
        account_id: Canonical account UUID.
        as_of: "Now" for the agent (deadlines, default report period); workflows pass ``workflow.now()``
            so replays see the same value.
        inputs: The request's ``inputs``.
        opportunity: The account's latest opportunity result, if any.
        target: The account's latest *approved* target result, if any.
        realization: The account's latest realization result, if any.
        telemetry: Realization only: per-KPI aggregates over ``period``.
        period: Realization only: the report period the aggregates cover (see
            :func:`quantapilot.lifecycle.realization.report_period`).
    """

    stage: Stage
    account_id: str
    as_of: datetime
    inputs: LifecycleInputs = Field(default_factory=LifecycleInputs)
    opportunity: OpportunityOutput | None = None
    target: TargetOutput | None = None
    realization: RealizationOutput | None = None
    telemetry: dict[str, KpiAggregate] = Field(default_factory=dict)
    period: ReportPeriod | None = None

    @field_validator("account_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return canonical_account_id(value)

    @field_validator("as_of")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        return value.astimezone(UTC)


class StageResult(_Model):
    """What a stage agent returns: the typed output and its Markdown report."""

    stage: Stage
    account_id: str
    output: StageOutput
    report: str

    @model_validator(mode="after")
    def _same_stage(self) -> StageResult:
        if self.output.stage != self.stage:
            raise ValueError(f"output is for stage {self.output.stage!r}, not {self.stage!r}")
        return self
