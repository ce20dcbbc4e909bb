"""Stage agents: one small interface, four deterministic built-ins, and entry-point overrides.

An agent turns a :class:`~quantapilot.lifecycle.models.StageInput` into a
:class:`~quantapilot.lifecycle.models.StageResult`. It is synchronous, deterministic and pure: no clock (the
caller passes ``as_of``), no randomness, no I/O, so a Temporal activity can run it and a replay sees the same
result. A team replaces a built-in by publishing an entry point in the ``quantapilot.agents`` group whose name
is the stage and whose value is an agent class or factory (e.g. an LLM-backed agent).

The built-ins share a small, documented set of heuristics:

* KPI direction (:func:`kpi_direction`): ``lower_is_better`` when a word of the KPI name is in
  :data:`LOWER_IS_BETTER_WORDS` (time, latency, cost, churn, errors, ...), else ``higher_is_better``.
* KPI bucket (:func:`kpi_bucket`): ``risk`` for words in :data:`RISK_WORDS`, else ``revenue`` for words in
  :data:`REVENUE_WORDS`, else ``cost`` (time and effort saved).
* Improvement (:func:`improved`): the bucket's share of :data:`IMPROVEMENT` (revenue 10%, cost 20%, risk 25%)
  in the KPI's direction.
* Annual value of moving a KPI (:func:`estimate_impact`): the amount itself for currency units, otherwise the
  relative improvement in percentage points times :data:`VALUE_PER_POINT` of the bucket.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import EntryPoint
from importlib.metadata import entry_points as installed_entry_points
from typing import Literal, Protocol, runtime_checkable

from quantapilot.lifecycle.models import (
    STAGES,
    Direction,
    ExpansionOutput,
    FinancialImpact,
    Improvement,
    Investment,
    KpiStatus,
    KpiTarget,
    KpiValue,
    LifecycleInputs,
    OpportunityOutput,
    PersonaFit,
    Proposal,
    RealizationOutput,
    RoiModel,
    RoiStep,
    StageInput,
    StageOutput,
    StageResult,
    TargetOutput,
    ValueModel,
    ValueTree,
    ValueTreeLink,
    ValueTreeNode,
)
from quantapilot.lifecycle.realization import realize, report_period
from quantapilot.lifecycle.render import num, render_report

ENTRY_POINT_GROUP = "quantapilot.agents"

Bucket = Literal["revenue", "cost", "risk"]
BUCKETS: tuple[Bucket, ...] = ("revenue", "cost", "risk")

# fmt: off
LOWER_IS_BETTER_WORDS = frozenset({
    "time", "latency", "ms", "seconds", "sec", "minutes", "hours", "days", "cost", "costs", "spend", "churn",
    "error", "errors", "defect", "defects", "incident", "incidents", "downtime", "backlog", "mttr", "cac",
    "attrition", "tickets", "escalations", "outages",
})
RISK_WORDS = frozenset({
    "churn", "risk", "error", "errors", "incident", "incidents", "downtime", "compliance", "security", "defect",
    "defects", "outage", "outages", "sla", "uptime", "availability", "mttr", "audit",
})
REVENUE_WORDS = frozenset({
    "revenue", "arr", "mrr", "sales", "pipeline", "conversion", "deal", "deals", "win", "bookings", "acv", "ltv",
    "nps", "csat", "retention", "upsell", "expansion", "orders",
})
# fmt: on
CURRENCY_UNITS = frozenset({"usd", "eur", "gbp", "chf", "jpy", "$", "€", "£", "currency"})
# Relative improvement a built-in target asks for, by bucket.
IMPROVEMENT: dict[Bucket, float] = {"revenue": 0.10, "cost": 0.20, "risk": 0.25}
# Annual value of one percentage point of improvement of a non-monetary KPI, by bucket (currency units).
VALUE_PER_POINT: dict[Bucket, float] = {"revenue": 20_000.0, "cost": 10_000.0, "risk": 8_000.0}
DEFAULT_INVESTMENT = Investment(annual_cost=100_000.0, one_time_cost=50_000.0)
TARGET_HORIZON_DAYS = 180
# Share of the full annual benefit realised in years 1, 2 and 3 while adoption ramps up.
RAMP: tuple[float, float, float] = (0.5, 0.9, 1.0)

OUTCOME_LABELS: dict[Bucket, str] = {
    "revenue": "Increased revenue",
    "cost": "Lower operating cost",
    "risk": "Reduced risk",
}
METRIC_LABELS: dict[Bucket, str] = {
    "revenue": "Revenue opportunity",
    "cost": "Cost savings",
    "risk": "Risk reduction",
}


@runtime_checkable
class StageAgent(Protocol):
    """What every stage agent provides."""

    stage: str

    def run(self, data: StageInput) -> StageResult:
        """Compute the stage's result; deterministic and free of I/O."""
        ...


class AgentError(ValueError):
    """An agent that cannot be loaded, or returned a result that does not fit its input."""


# ------------------------------------------------------------------------------------------------------------
# Shared heuristics


def _words(kpi: str) -> set[str]:
    return set(re.split(r"[._]", kpi.lower()))


def kpi_direction(kpi: str) -> Direction:
    """Guess whether smaller values of ``kpi`` are better, from the words of its name."""
    return "lower_is_better" if _words(kpi) & LOWER_IS_BETTER_WORDS else "higher_is_better"


def kpi_bucket(kpi: str) -> Bucket:
    """Which financial bucket moving ``kpi`` pays into: risk, revenue, else cost."""
    words = _words(kpi)
    if words & RISK_WORDS:
        return "risk"
    if words & REVENUE_WORDS:
        return "revenue"
    return "cost"


def improved(*, kpi: str, value: float, direction: Direction) -> float:
    """Return ``value`` improved by the KPI bucket's :data:`IMPROVEMENT` share in ``direction``.

    A zero value cannot improve proportionally: lower-is-better stays at 0 and higher-is-better becomes 1.
    """
    if value == 0:
        return 0.0 if direction == "lower_is_better" else 1.0
    step = abs(value) * IMPROVEMENT[kpi_bucket(kpi)]
    return round(value + step if direction == "higher_is_better" else value - step, 4)


def gain(*, start: float, end: float, direction: Direction) -> float:
    """How much moving from ``start`` to ``end`` improves the KPI (0 when it gets worse)."""
    delta = end - start if direction == "higher_is_better" else start - end
    return max(delta, 0.0)


def estimate_impact(*, kpi: str, unit: str | None, start: float, end: float, direction: Direction) -> float:
    """Annual value, in currency units, of moving ``kpi`` from ``start`` to ``end``.

    For currency units the improvement is the value. Otherwise it is the relative improvement in percentage
    points (relative to ``|start|``, at least 1, so a zero start does not divide by zero) times the bucket's
    :data:`VALUE_PER_POINT`. Getting worse is worth 0.
    """
    delta = gain(start=start, end=end, direction=direction)
    if unit is not None and unit.strip().lower() in CURRENCY_UNITS:
        return round(delta, 2)
    points = delta / max(abs(start), 1.0) * 100
    return round(points * VALUE_PER_POINT[kpi_bucket(kpi)], 2)


def financial_impact(kpis: Sequence[KpiValue | KpiTarget]) -> FinancialImpact:
    """Sum :func:`estimate_impact` of every KPI's baseline-to-target move into the three buckets."""
    totals: dict[Bucket, float] = dict.fromkeys(BUCKETS, 0.0)
    for k in kpis:
        totals[kpi_bucket(k.kpi)] += estimate_impact(
            kpi=k.kpi, unit=k.unit, start=k.baseline, end=k.target, direction=k.direction
        )
    return FinancialImpact(
        revenue_opportunity=round(totals["revenue"], 2),
        cost_savings=round(totals["cost"], 2),
        risk_reduction=round(totals["risk"], 2),
        total=round(sum(totals.values()), 2),
    )


def kpis_from_benchmarks(inputs: LifecycleInputs) -> tuple[list[KpiValue], list[str]]:
    """Turn benchmarks into value-model KPIs: baseline = benchmark, target = :func:`improved` baseline.

    Returns:
        The KPIs (first benchmark of a KPI wins) and notes about skipped duplicates.
    """
    kpis: list[KpiValue] = []
    seen: set[str] = set()
    dupes: list[str] = []
    for b in inputs.benchmarks:
        if b.kpi in seen:
            dupes.append(b.kpi)
            continue
        seen.add(b.kpi)
        direction = kpi_direction(b.kpi)
        kpis.append(
            KpiValue(
                kpi=b.kpi,
                baseline=b.value,
                target=improved(kpi=b.kpi, value=b.value, direction=direction),
                unit=b.unit,
                direction=direction,
            )
        )
    notes = [f"Duplicate benchmarks ignored (first kept): {', '.join(sorted(set(dupes)))}."] if dupes else []
    return kpis, notes


def make_result(data: StageInput, output: StageOutput) -> StageResult:
    """Wrap an agent's output in a :class:`StageResult` with its rendered Markdown report."""
    result = StageResult(stage=data.stage, account_id=data.account_id, output=output, report="")
    return result.model_copy(update={"report": render_report(result)})


# ------------------------------------------------------------------------------------------------------------
# Opportunity


@dataclass(frozen=True)
class ObjectiveRule:
    """A business objective recognised by keywords in discovery notes."""

    key: str
    keywords: tuple[str, ...]
    objective: str
    bucket: Bucket


OBJECTIVE_RULES: tuple[ObjectiveRule, ...] = (
    ObjectiveRule(
        "cost", ("cost", "spend", "expens", "budget", "saving", "overhead"), "Reduce operating costs", "cost"
    ),
    ObjectiveRule(
        "revenue",
        ("revenue", "growth", "grow ", "sales", "pipeline", "conversion", "upsell", "win rate", "bookings"),
        "Grow revenue and pipeline conversion",
        "revenue",
    ),
    ObjectiveRule(
        "efficiency",
        ("manual", "efficien", "productiv", "automat", "spreadsheet", "headcount", "hours"),
        "Increase team productivity through automation",
        "cost",
    ),
    ObjectiveRule(
        "risk",
        ("risk", "complian", "security", "audit", "outage", "incident", "downtime", "regulat"),
        "Reduce operational and compliance risk",
        "risk",
    ),
    ObjectiveRule(
        "retention",
        ("churn", "retention", "retain", "satisfaction", "nps", "csat", "renewal"),
        "Improve customer retention and satisfaction",
        "revenue",
    ),
    ObjectiveRule(
        "speed",
        ("slow", "latency", "response time", "faster", "speed", "performance", "cycle time"),
        "Speed up response and cycle times",
        "cost",
    ),
    ObjectiveRule(
        "visibility",
        ("visibility", "report", "forecast", "insight", "dashboard", "data quality"),
        "Improve visibility and forecasting",
        "revenue",
    ),
)
_RULES_BY_KEY = {r.key: r for r in OBJECTIVE_RULES}


@dataclass(frozen=True)
class Persona:
    """A known buyer persona and how it fits as a buyer."""

    key: str
    aliases: tuple[str, ...]
    score: float
    role: str
    decision_authority: str
    reasoning: str
    default_objectives: tuple[str, ...]


# Most specific first: matching takes the first persona one of whose aliases is a phrase of the given title.
PERSONAS: tuple[Persona, ...] = (
    Persona(
        "cfo",
        ("cfo", "chief financial officer", "finance director", "vp finance", "head finance"),
        0.9,
        "Chief Financial Officer",
        "economic_buyer",
        "Owns the budget and signs off ROI-based business cases.",
        ("cost", "revenue", "risk"),
    ),
    Persona(
        "ceo",
        ("ceo", "chief executive officer", "founder", "president", "managing director"),
        0.85,
        "Chief Executive Officer",
        "economic_buyer",
        "Final decision maker; sponsors strategic value programmes.",
        ("revenue", "cost", "retention"),
    ),
    Persona(
        "coo",
        ("coo", "chief operating officer", "vp operations", "head operations", "operations director"),
        0.8,
        "Chief Operating Officer",
        "economic_buyer",
        "Owns operational budgets and the processes the solution changes.",
        ("efficiency", "cost", "speed"),
    ),
    Persona(
        "cto",
        (
            "cto",
            "chief technology officer",
            "cio",
            "chief information officer",
            "vp engineering",
            "head engineering",
            "vp technology",
        ),
        0.75,
        "Chief Technology Officer",
        "technical_buyer",
        "Approves the technical fit and often a share of the budget.",
        ("speed", "efficiency", "risk"),
    ),
    Persona(
        "vp_sales",
        ("vp sales", "head sales", "sales director", "cro", "chief revenue officer"),
        0.7,
        "VP Sales",
        "budget_holder",
        "Holds a departmental budget and owns revenue KPIs.",
        ("revenue", "retention", "visibility"),
    ),
    Persona(
        "director",
        ("director", "vp", "head"),
        0.55,
        "Director",
        "influencer",
        "Shapes the decision but rarely signs it alone.",
        ("efficiency", "cost", "visibility"),
    ),
    Persona(
        "manager",
        ("manager", "lead", "analyst"),
        0.4,
        "Manager",
        "champion",
        "Day-to-day user who can champion the solution internally.",
        ("efficiency", "speed", "visibility"),
    ),
)
GENERIC_OBJECTIVES: tuple[str, ...] = ("revenue", "cost", "efficiency", "risk", "retention", "speed", "visibility")
AUTHORITY_CUES: tuple[str, ...] = ("budget", "approve", "sign off", "sign-off", "decision")


def _normalise_title(title: str) -> str:
    words = re.sub(r"[^a-z0-9]+", " ", title.lower()).split()
    return " ".join(w for w in words if w not in ("of", "the", "and"))


def match_persona(title: str | None) -> Persona | None:
    """Return the known persona a job title names, or ``None``.

    The title is lower-cased, stripped of punctuation and of "of/the/and"; a persona matches when one of its
    aliases appears in it as whole words ("VP of Sales" -> VP Sales). :data:`PERSONAS` is ordered most
    specific first.
    """
    if not title:
        return None
    padded = f" {_normalise_title(title)} "
    for persona in PERSONAS:
        if any(f" {alias} " in padded for alias in persona.aliases):
            return persona
    return None


def split_sentences(text: str) -> list[str]:
    """Split notes into sentences at ``.``/``!``/``?`` followed by whitespace, and at line breaks."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


def extract_objectives(notes: str | None) -> list[str]:
    """Return the keys of :data:`OBJECTIVE_RULES` the notes mention, in order of first mention.

    Each sentence is tested against every rule (lower-cased substring match of a keyword); a rule counts once.
    """
    found: list[str] = []
    for sentence in split_sentences(notes or ""):
        lowered = f" {sentence.lower()} "
        for rule in OBJECTIVE_RULES:
            if rule.key not in found and any(k in lowered for k in rule.keywords):
                found.append(rule.key)
    return found


class OpportunityAgent:
    """Built-in opportunity agent.

    * Persona fit: :func:`match_persona` looks the persona up in :data:`PERSONAS` (CFO 0.9, CEO 0.85, COO 0.8,
      CTO/CIO 0.75, VP Sales 0.7, other directors 0.55, managers 0.4); an unknown title scores 0.3 and no
      persona 0.2. Notes that mention budget, approval, sign-off or a decision add 0.05 (at most 1).
    * Objectives: :func:`extract_objectives` on the discovery notes, in order of first mention, at most 5;
      fewer than 3 are topped up from the persona's default objectives, then :data:`GENERIC_OBJECTIVES`.
    * Value model: one KPI per benchmark (:func:`kpis_from_benchmarks`) and its :func:`financial_impact`.
      Without benchmarks the model has no KPIs and zero impact, and a note says so.
    """

    stage = "opportunity"

    def run(self, data: StageInput) -> StageResult:
        """Build the opportunity result from notes, persona and benchmarks."""
        inputs = data.inputs
        notes: list[str] = []
        persona = match_persona(inputs.persona)
        lowered_notes = (inputs.discovery_notes or "").lower()
        cue = any(c in lowered_notes for c in AUTHORITY_CUES)
        if persona is not None:
            score, role, authority, reasoning = (
                persona.score,
                persona.role,
                persona.decision_authority,
                persona.reasoning,
            )
        elif inputs.persona:
            score, role, authority = 0.3, inputs.persona.strip()[:100], "unknown"
            reasoning = "Persona not in the known table; its buying authority is unclear."
        else:
            score, role, authority, reasoning = 0.2, "unknown", "unknown", "No persona given."
        if cue:
            score = min(1.0, round(score + 0.05, 2))
            reasoning += " The notes mention budget or decision-making."
        fit = PersonaFit(score=score, role=role, decision_authority=authority, reasoning=reasoning)

        keys = extract_objectives(inputs.discovery_notes)[:5]
        if not keys:
            notes.append("No objectives recognised in the discovery notes; defaults for the persona were used.")
        fillers = (persona.default_objectives if persona else ()) + GENERIC_OBJECTIVES
        for key in fillers:
            if len(keys) >= 3:
                break
            if key not in keys:
                keys.append(key)
        objectives = [_RULES_BY_KEY[k].objective for k in keys]

        kpis, dupe_notes = kpis_from_benchmarks(inputs)
        notes += dupe_notes
        if not kpis:
            notes.append("No benchmarks given: the value model has no KPIs yet.")
        impact = financial_impact(kpis)
        sentences = len(split_sentences(inputs.discovery_notes or ""))
        summary = (
            f"{role} ({authority.replace('_', ' ')}, fit {score:.2f}). "
            f"{sentences} discovery sentence(s) point to {len(objectives)} objectives, led by "
            f"'{objectives[0]}'. {len(kpis)} benchmarked KPI(s) give an estimated annual impact of "
            f"{num(impact.total)} (revenue {num(impact.revenue_opportunity)}, cost {num(impact.cost_savings)}, "
            f"risk {num(impact.risk_reduction)})."
        )
        output = OpportunityOutput(
            summary=summary,
            persona_fit=fit,
            business_objectives=objectives,
            value_model=ValueModel(kpis=kpis, financial_impact=impact),
            notes=notes,
        )
        return make_result(data, output)


# ------------------------------------------------------------------------------------------------------------
# Target


def target_confidence(*, baseline: float, target: float) -> float:
    """Default confidence of a KPI target: the bigger the relative move, the lower (0.85/0.75/0.6/0.45)."""
    move = abs(target - baseline) / max(abs(baseline), 1.0)
    if move <= 0.10:
        return 0.85
    if move <= 0.25:
        return 0.75
    if move <= 0.50:
        return 0.6
    return 0.45


def _objective_bucket(objective: str) -> Bucket:
    for rule in OBJECTIVE_RULES:
        if objective == rule.objective:
            return rule.bucket
    lowered = objective.lower()
    for rule in OBJECTIVE_RULES:
        if any(k in lowered for k in rule.keywords):
            return rule.bucket
    return "cost"


def build_value_tree(*, objectives: Sequence[str], kpis: Sequence[KpiTarget]) -> ValueTree:
    """Link objectives (capabilities) to bucket outcomes, outcomes to KPIs, and KPIs to financial metrics.

    Capability -> outcome links weigh 1 (each objective serves one bucket); outcome -> KPI links weigh the
    KPI's share of its bucket's estimated impact (equal shares when the bucket's impact is 0); KPI ->
    financial metric links weigh 1.
    """
    impact = {
        k.kpi: estimate_impact(kpi=k.kpi, unit=k.unit, start=k.baseline, end=k.target, direction=k.direction)
        for k in kpis
    }
    by_bucket: dict[Bucket, list[KpiTarget]] = {b: [k for k in kpis if kpi_bucket(k.kpi) == b] for b in BUCKETS}
    used = [b for b in BUCKETS if by_bucket[b] or any(_objective_bucket(o) == b for o in objectives)]
    nodes = [ValueTreeNode(id=f"capability:{i}", kind="capability", label=o) for i, o in enumerate(objectives, 1)]
    nodes += [ValueTreeNode(id=f"outcome:{b}", kind="outcome", label=OUTCOME_LABELS[b]) for b in used]
    nodes += [ValueTreeNode(id=f"kpi:{k.kpi}", kind="kpi", label=k.kpi) for k in kpis]
    metrics = [b for b in BUCKETS if by_bucket[b]]
    nodes += [ValueTreeNode(id=f"financial:{b}", kind="financial_metric", label=METRIC_LABELS[b]) for b in metrics]
    links = [
        ValueTreeLink(source=f"capability:{i}", target=f"outcome:{_objective_bucket(o)}", weight=1.0)
        for i, o in enumerate(objectives, 1)
    ]
    for b in used:
        members = by_bucket[b]
        total = sum(impact[k.kpi] for k in members)
        for k in members:
            weight = impact[k.kpi] / total if total > 0 else 1 / len(members)
            links.append(ValueTreeLink(source=f"outcome:{b}", target=f"kpi:{k.kpi}", weight=round(weight, 4)))
    links += [ValueTreeLink(source=f"kpi:{k.kpi}", target=f"financial:{kpi_bucket(k.kpi)}", weight=1.0) for k in kpis]
    return ValueTree(nodes=nodes, links=links)


def build_roi_model(*, impact: FinancialImpact, investment: Investment) -> RoiModel:
    """Ordered ROI steps from the annual impact and the investment, ending with the 3-year ROI in percent.

    Steps: annual benefit (sum of buckets); 3-year benefit with the adoption :data:`RAMP`; 3-year cost (one-time
    plus three annual costs); net benefit; ROI = net / cost x 100 (0 when the cost is 0, as ROI is undefined).
    """
    annual = round(impact.revenue_opportunity + impact.cost_savings + impact.risk_reduction, 2)
    y1, y2, y3 = RAMP
    benefit3 = round(annual * (y1 + y2 + y3), 2)
    cost3 = round(investment.one_time_cost + 3 * investment.annual_cost, 2)
    net = round(benefit3 - cost3, 2)
    roi = round(net / cost3 * 100, 2) if cost3 > 0 else 0.0
    steps = [
        RoiStep(
            name="annual_benefit",
            formula="revenue_opportunity + cost_savings + risk_reduction",
            inputs={
                "revenue_opportunity": impact.revenue_opportunity,
                "cost_savings": impact.cost_savings,
                "risk_reduction": impact.risk_reduction,
            },
            result=annual,
            reasoning="Full yearly value once every KPI reaches its target.",
        ),
        RoiStep(
            name="three_year_benefit",
            formula="annual_benefit * (ramp_y1 + ramp_y2 + ramp_y3)",
            inputs={"annual_benefit": annual, "ramp_y1": y1, "ramp_y2": y2, "ramp_y3": y3},
            result=benefit3,
            reasoning="Adoption ramps up: half the value in year 1, 90% in year 2, all of it in year 3.",
        ),
        RoiStep(
            name="three_year_cost",
            formula="one_time_cost + 3 * annual_cost",
            inputs={"one_time_cost": investment.one_time_cost, "annual_cost": investment.annual_cost},
            result=cost3,
            reasoning="Implementation once plus three years of subscription.",
        ),
        RoiStep(
            name="net_benefit",
            formula="three_year_benefit - three_year_cost",
            inputs={"three_year_benefit": benefit3, "three_year_cost": cost3},
            result=net,
            reasoning="Value left after paying for the solution.",
        ),
        RoiStep(
            name="three_year_roi_pct",
            formula="net_benefit / three_year_cost * 100",
            inputs={"net_benefit": net, "three_year_cost": cost3},
            result=roi,
            reasoning="Return per unit spent over three years"
            + (" (no cost given: ROI undefined, shown as 0)." if cost3 <= 0 else "."),
        ),
    ]
    return RoiModel(steps=steps, three_year_roi_pct=roi)


class TargetAgent:
    """Built-in target agent.

    * KPIs: the latest opportunity's value model (or, without one, the benchmarks as the opportunity agent
      reads them), with ``inputs.kpis`` overriding fields per KPI; an override for a new KPI is added when it
      has both baseline and target (direction from :func:`kpi_direction` unless given).
    * Each target's deadline is ``as_of`` + :data:`TARGET_HORIZON_DAYS` days unless overridden; its confidence
      comes from :func:`target_confidence` unless overridden.
    * Value tree: :func:`build_value_tree` over the opportunity's objectives and the KPI targets.
    * ROI: :func:`build_roi_model` of the targets' :func:`financial_impact` against ``inputs.investment`` or
      :data:`DEFAULT_INVESTMENT` (annual 100,000, one-time 50,000).
    """

    stage = "target"

    def run(self, data: StageInput) -> StageResult:
        """Build KPI targets, value tree, ROI model and business case."""
        inputs = data.inputs
        notes: list[str] = []
        if data.opportunity is not None:
            base = list(data.opportunity.value_model.kpis)
            objectives = list(data.opportunity.business_objectives)
        else:
            base, dupe_notes = kpis_from_benchmarks(inputs)
            notes += dupe_notes
            notes.append("No opportunity result: KPIs derived from this run's benchmarks.")
            objectives = []
        overrides = {o.kpi: o for o in inputs.kpis}
        default_deadline = data.as_of.date() + timedelta(days=TARGET_HORIZON_DAYS)
        targets: list[KpiTarget] = []
        for k in base:
            o = overrides.pop(k.kpi, None)
            baseline = o.baseline if o and o.baseline is not None else k.baseline
            goal = o.target if o and o.target is not None else k.target
            targets.append(
                KpiTarget(
                    kpi=k.kpi,
                    baseline=baseline,
                    target=goal,
                    unit=o.unit if o and o.unit is not None else k.unit,
                    direction=o.direction if o and o.direction is not None else k.direction,
                    deadline=o.deadline if o and o.deadline is not None else default_deadline,
                    confidence=(
                        o.confidence
                        if o and o.confidence is not None
                        else target_confidence(baseline=baseline, target=goal)
                    ),
                )
            )
        skipped: list[str] = []
        for o in overrides.values():
            if o.baseline is None or o.target is None:
                skipped.append(o.kpi)
                continue
            targets.append(
                KpiTarget(
                    kpi=o.kpi,
                    baseline=o.baseline,
                    target=o.target,
                    unit=o.unit,
                    direction=o.direction or kpi_direction(o.kpi),
                    deadline=o.deadline or default_deadline,
                    confidence=(
                        o.confidence
                        if o.confidence is not None
                        else target_confidence(baseline=o.baseline, target=o.target)
                    ),
                )
            )
        if skipped:
            notes.append(f"Overrides for unknown KPIs without baseline and target ignored: {', '.join(skipped)}.")
        if not targets:
            notes.append("No KPIs to target: give benchmarks or KPI overrides with baseline and target.")
        if not objectives:
            objectives = [_RULES_BY_KEY[k].objective for k in dict.fromkeys(_bucket_rule(t.kpi) for t in targets)]

        impact = financial_impact(targets)
        roi = build_roi_model(impact=impact, investment=inputs.investment or DEFAULT_INVESTMENT)
        if inputs.investment is None:
            notes.append("No investment given: default costs used (annual 100,000, one-time 50,000).")
        output = TargetOutput(
            value_tree=build_value_tree(objectives=objectives, kpis=targets),
            roi_model=roi,
            kpi_targets=targets,
            value_commitment=_commitment(targets),
            business_case_summary=(
                f"Reaching {len(targets)} KPI target(s) is worth {num(impact.total)} a year "
                f"(revenue {num(impact.revenue_opportunity)}, cost {num(impact.cost_savings)}, "
                f"risk {num(impact.risk_reduction)}). Over three years the benefit of {num(roi.steps[1].result)} "
                f"against a cost of {num(roi.steps[2].result)} gives an ROI of {num(roi.three_year_roi_pct)}%."
            ),
            notes=notes,
        )
        return make_result(data, output)


def _bucket_rule(kpi: str) -> str:
    # The objective a KPI serves when no opportunity named any: the first rule of the KPI's bucket.
    return {"revenue": "revenue", "cost": "cost", "risk": "risk"}[kpi_bucket(kpi)]


def _commitment(targets: Sequence[KpiTarget]) -> str:
    if not targets:
        return "No commitment yet: no KPI targets."
    parts = [f"{t.kpi} from {num(t.baseline)} to {num(t.target)}{' ' + t.unit if t.unit else ''}" for t in targets[:10]]
    more = f", and {len(targets) - 10} more" if len(targets) > 10 else ""
    deadline = max(t.deadline for t in targets).isoformat()
    return f"By {deadline} we commit to moving {'; '.join(parts)}{more}."


# ------------------------------------------------------------------------------------------------------------
# Realization


class RealizationAgent:
    """Built-in realization agent: :func:`quantapilot.lifecycle.realization.realize`.

    KPI targets come from the latest approved target result, else the opportunity's value model, else
    ``inputs.kpis`` entries with baseline and target. The period is ``data.period`` (what the caller
    aggregated telemetry over), else ``inputs.reportPeriod``, else the 30 days before ``as_of``.
    """

    stage = "realization"

    def run(self, data: StageInput) -> StageResult:
        """Evaluate every KPI target against the period's telemetry aggregates."""
        targets: Sequence[KpiTarget | KpiValue]
        if data.target is not None:
            targets, source = data.target.kpi_targets, "the approved targets"
        elif data.opportunity is not None:
            targets, source = data.opportunity.value_model.kpis, "the opportunity's value model (no targets yet)"
        else:
            targets = [
                KpiValue(
                    kpi=o.kpi,
                    baseline=o.baseline,
                    target=o.target,
                    unit=o.unit,
                    direction=o.direction or kpi_direction(o.kpi),
                )
                for o in data.inputs.kpis
                if o.baseline is not None and o.target is not None
            ]
            source = "this run's KPI inputs"
        period = data.period or report_period(requested=data.inputs.report_period, as_of=data.as_of)
        out = realize(targets=targets, aggregates=data.telemetry, period=period)
        out = out.model_copy(update={"notes": [f"KPIs from {source}.", *out.notes]})
        return make_result(data, out)


# ------------------------------------------------------------------------------------------------------------
# Expansion

STATUS_POINTS: dict[KpiStatus, float] = {"achieved": 100.0, "on_track": 70.0, "at_risk": 40.0, "missed": 20.0}


class ExpansionAgent:
    """Built-in expansion agent, driven by the latest realization.

    Per KPI: achieved -> ``upsell`` (raise the target; confidence 0.8), on_track -> ``expansion`` (roll out to
    more teams; 0.65), at_risk -> ``optimization`` (close the gap; 0.6), missed -> ``optimization`` (recovery
    plan; 0.4); confidence halves for KPIs measured without telemetry. Each KPI also gets an improvement:
    achieved and on_track KPIs are proposed one more :func:`improved` step from the actual, the others their
    target; its value is :func:`estimate_impact` from actual to proposed, which is each proposal's estimated
    value. When the overall status is achieved, a ``cross_sell`` proposal worth half of the upsell value is
    added. Opportunity score: the mean of :data:`STATUS_POINTS` over KPIs (half points without telemetry),
    0 without a realization or KPIs.
    """

    stage = "expansion"

    def run(self, data: StageInput) -> StageResult:
        """Derive proposals, improvements and the opportunity score."""
        real: RealizationOutput | None = data.realization
        if real is None or not real.kpis:
            output = ExpansionOutput(
                proposals=[],
                improvements=[],
                opportunity_score=0.0,
                notes=["No realization with KPIs yet: run the realization stage first."],
            )
            return make_result(data, output)
        proposals: list[Proposal] = []
        improvements: list[Improvement] = []
        points = 0.0
        upsell_value = 0.0
        for k in real.kpis:
            if k.status in ("achieved", "on_track"):
                proposed = improved(kpi=k.kpi, value=k.actual, direction=k.direction)
            else:
                proposed = k.target
            value = estimate_impact(kpi=k.kpi, unit=k.unit, start=k.actual, end=proposed, direction=k.direction)
            improvements.append(Improvement(kpi=k.kpi, current=k.actual, proposed=proposed, incremental_value=value))
            kind, title, confidence = _proposal_for(k.status, k.kpi, proposed, k.unit)
            factor = 1.0 if k.confidence == "high" else 0.5
            points += STATUS_POINTS[k.status] * factor
            if kind == "upsell":
                upsell_value += value
            proposals.append(
                Proposal(
                    type=kind,
                    title=title,
                    kpi=k.kpi,
                    estimated_value=value,
                    confidence=round(confidence * factor, 2),
                    rationale=f"{k.kpi} is {k.status.replace('_', ' ')} ({num(k.progress_pct)}% progress).",
                )
            )
        if real.overall_status == "achieved":
            proposals.append(
                Proposal(
                    type="cross_sell",
                    title="Adopt an adjacent module for the next value area",
                    estimated_value=round(upsell_value / 2, 2),
                    confidence=0.5,
                    rationale="Targets achieved overall: the account is ready for a broader scope.",
                )
            )
        score = round(points / len(real.kpis), 1)
        output = ExpansionOutput(proposals=proposals, improvements=improvements, opportunity_score=score)
        return make_result(data, output)


def _proposal_for(
    status: KpiStatus, kpi: str, proposed: float, unit: str | None
) -> tuple[Literal["upsell", "expansion", "optimization"], str, float]:
    target = f"{num(proposed)}{' ' + unit if unit else ''}"
    if status == "achieved":
        return "upsell", f"Raise the {kpi} target to {target}", 0.8
    if status == "on_track":
        return "expansion", f"Extend the {kpi} programme to more teams", 0.65
    if status == "at_risk":
        return "optimization", f"Optimise {kpi} to close the gap to {target}", 0.6
    return "optimization", f"Recovery plan for {kpi} towards {target}", 0.4


# ------------------------------------------------------------------------------------------------------------
# Registry

BUILTIN_AGENTS: dict[str, Callable[[], StageAgent]] = {
    "opportunity": OpportunityAgent,
    "target": TargetAgent,
    "realization": RealizationAgent,
    "expansion": ExpansionAgent,
}


def load_agents(
    group: str = ENTRY_POINT_GROUP, *, entry_points: Iterable[EntryPoint] | None = None
) -> dict[str, StageAgent]:
    """Return one agent per stage: the built-ins, overridden by entry points of ``group``.

    An entry point's name is the stage it serves; its value is an agent class or a zero-argument factory
    (anything callable that returns an agent), or an agent instance. Entry points are applied in name order,
    so the result does not depend on installation order.

    Args:
        group: Entry point group to read from the installed distributions.
        entry_points: Entry points to use instead of the installed ones (tests); only those of ``group`` count.

    Returns:
        Agents keyed by stage, one for each of :data:`~quantapilot.lifecycle.models.STAGES`.

    Raises:
        AgentError: When an entry point names no stage, fails to load, or yields something that is not an
            agent for that stage. Loading fails loudly at worker start rather than at the first run.
    """
    agents: dict[str, StageAgent] = {stage: factory() for stage, factory in BUILTIN_AGENTS.items()}
    eps = list(installed_entry_points(group=group)) if entry_points is None else list(entry_points)
    for ep in sorted((e for e in eps if e.group == group), key=lambda e: (e.name, e.value)):
        if ep.name not in STAGES:
            raise AgentError(f"entry point {ep.name!r} in {group} names no stage (expected one of {STAGES})")
        try:
            obj = ep.load()
            # A class also passes the runtime protocol check (it has ``stage`` and ``run``), so test for it first.
            is_factory = isinstance(obj, type) or (callable(obj) and not isinstance(obj, StageAgent))
            agent = obj() if is_factory else obj
        except Exception as exc:
            raise AgentError(f"entry point {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if isinstance(agent, type) or not isinstance(agent, StageAgent):
            raise AgentError(f"entry point {ep.name!r} ({ep.value}) is not a stage agent")
        if agent.stage != ep.name:
            raise AgentError(f"entry point {ep.name!r} ({ep.value}) serves stage {agent.stage!r}")
        agents[ep.name] = agent
    return agents


def run_agent(agent: StageAgent, data: StageInput) -> StageResult:
    """Run ``agent`` and check that its result belongs to the input's stage and account.

    Raises:
        AgentError: When the result is for another stage or account (a faulty plug-in).
    """
    result = agent.run(data)
    if not isinstance(result, StageResult):
        raise AgentError(f"{type(agent).__name__} returned {type(result).__name__}, not a StageResult")
    if result.stage != data.stage or result.account_id != data.account_id:
        raise AgentError(f"{type(agent).__name__} returned a result for another stage or account")
    return result
