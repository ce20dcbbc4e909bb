"""Pydantic models of what lifecycle stage agents take and return: each stage's output, the agent's input and result.

The requests they build on are in :mod:`quantapilot.lifecycle.models`.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from quantapilot.lifecycle.models import (
    Confidence,
    Direction,
    Finite,
    KpiName,
    KpiStatus,
    LifecycleInputs,
    NodeKind,
    OverallStatus,
    ProposalType,
    ReportPeriod,
    Score01,
    Stage,
    _Model,
    canonical_account_id,
)
from quantapilot.lifecycle.rfc3339 import aware_utc


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
        return aware_utc(value, "as_of must be timezone-aware")


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
