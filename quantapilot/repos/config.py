"""The ``quantapilot.yml`` format: its models, the source of ``schemas/quantapilot.schema.json``.

The models carry every description, bound and pattern of the published file (``make schemas`` writes it, see
:mod:`schemas.generate`) plus the rules JSON Schema cannot express (:func:`semantic_issues`). Reading a
repository's file (safe YAML, schema validation, readable errors) is :mod:`quantapilot.repos.config_loader`;
what a run derives from the configuration (gates, timeouts, attempts, branch namespaces) is
:mod:`quantapilot.repos.policy`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema
from typing_extensions import TypeAliasType

from quantapilot.approvals import RequiredApprovals, required_approvals_issue
from quantapilot.bodies import published_document

__all__ = [
    "BudgetsConfig",
    "DocsConfig",
    "GateConfig",
    "GateSwitches",
    "LimitsConfig",
    "MilestoneConfig",
    "MilestoneStep",
    "ModelConfig",
    "ModelsConfig",
    "PathPart",
    "PoliciesConfig",
    "QuantapilotConfig",
    "RunConfig",
    "StepConfig",
    "StepSettings",
    "TokenLimitsConfig",
    "render_path",
    "semantic_issues",
]

_MILESTONE_ID = re.compile(r"M-[0-9]{3,}")

# The models are the source of ``schemas/quantapilot.schema.json`` (``make schemas``, :mod:`schemas.generate`):
# every description, bound and pattern of the published file is stated here once. A model with a ``title`` is
# published as a ``$defs`` entry of that name, one without is written inline where it is used, a ``TypeAliasType``
# is a ``$defs`` entry named like it in lowerCamelCase. ``Field(default=x)`` publishes the default;
# ``default_factory`` and ``None`` do not (None is spelled by leaving the key out).

StepName = TypeAliasType("StepName", Literal["plan", "impl", "test", "doc", "pr"])
MergeStrategy = Literal["squash", "merge", "rebase"]
PositiveSeconds = TypeAliasType("PositiveSeconds", Annotated[float, Field(gt=0)])
Retries = TypeAliasType("Retries", Annotated[int, Field(ge=0, le=100)])
MilestoneId = Annotated[str, Field(pattern=r"^M-[0-9]{3,}$")]
# A gate name: a milestone id or a lowercase name (optional gates, 'anchor', 'first_merge').
GateName = Annotated[str, Field(pattern=r"^(?:[a-z][a-z0-9_-]*|M-[0-9]{3,})$")]
_RELATIVE_FOLDER = (
    r"^(?![.][.]?(?:/|$))(?![.][Gg][Ii][Tt](?:/|$))(?!.*/[.][.]?(?:/|$))(?!.*/[.][Gg][Ii][Tt](?:/|$))"
    r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$"
)
_BRANCH_NAME = r"^(?!.*[.][.])(?!.*//)(?!.*@[{])(?!.*[.]lock(?:/|$))(?!.*/[.])(?!.*[./]$)[A-Za-z0-9_][A-Za-z0-9._/-]*$"


class _Frozen(BaseModel):
    """Base of every config model: immutable and strict about unknown keys, like the schema."""

    # python-re: the path and branch patterns use look-aheads, which the default (Rust) engine refuses; it is
    # also the engine the schema validator uses, so both read a pattern the same way.
    model_config = ConfigDict(frozen=True, extra="forbid", regex_engine="python-re")


class ModelConfig(_Frozen):
    """The language model of one agent role."""

    model_config = ConfigDict(title="model")

    model: str = Field(min_length=1, max_length=200, description="Model name.")
    temperature: float | None = Field(default=None, ge=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=1)


class ModelsConfig(_Frozen):
    """Models per agent role (architecture, development, QA)."""

    arch: ModelConfig | None = None
    dev: ModelConfig | None = None
    qa: ModelConfig | None = None


class BudgetsConfig(_Frozen):
    """Spending budget of one run."""

    tokens: int = Field(ge=1, description="Model tokens one run may spend.")
    usd: float | None = Field(default=None, ge=0, description="Money one run may spend, in US dollars.")


class StepConfig(_Frozen):
    """A step: top-level entries set per-name defaults, milestone entries also carry the command to run.

    The file spells the two kinds as :class:`StepSettings` and :class:`MilestoneStep`; code that handles
    either takes a ``StepConfig``.
    """

    name: StepName
    run: str | None = Field(default=None, min_length=1, max_length=8192)
    timeout_s: PositiveSeconds | None = None
    retries: Retries | None = None
    tokens_budget: int | None = Field(default=None, ge=1)


class StepSettings(StepConfig):
    """A top-level ``steps`` entry: defaults for the milestone steps of its name; it runs no command."""

    model_config = ConfigDict(title="stepSettings")

    run: SkipJsonSchema[None] = None
    timeout_s: PositiveSeconds | None = Field(default=None, description="Activity timeout in seconds.")
    retries: Retries | None = Field(
        default=None, description="Retries after a failed attempt (attempts = retries + 1)."
    )


def _run_or_prompt(schema: dict[str, Any]) -> None:
    # Exactly one of the two: a command, or a request to the dev model (the model validator says the same).
    schema["required"] = ["name"]
    schema["oneOf"] = [{"required": ["run"]}, {"required": ["prompt"]}]


class MilestoneStep(StepConfig):
    """A step of a milestone: the command to run, or the prompt of a model step, and its own limits."""

    model_config = ConfigDict(title="milestoneStep", json_schema_extra=_run_or_prompt)

    run: str | None = Field(
        default=None, min_length=1, max_length=8192, description="Shell command run in the repository's worktree."
    )
    prompt: str | None = Field(
        default=None,
        min_length=1,
        max_length=20000,
        description=(
            "Instead of run: what the dev model (models.dev) is asked to do. An impl step's answer is a unified "
            "diff, checked and applied with git apply; the milestone's test steps then run, and a failure goes "
            "back to the model with the output, up to the step's retries. A plan step's answer is the plan the "
            "impl step is given."
        ),
    )

    @model_validator(mode="after")
    def _one_of_run_or_prompt(self) -> MilestoneStep:
        if (self.run is None) == (self.prompt is None):
            raise ValueError("a milestone step has either run or prompt")
        return self


class GateSwitches(_Frozen):
    """The seed's ``gates`` object: switches of the built-in checks."""

    docs_lint: bool = Field(default=True, description="Lint the generated documentation; a failing lint ends the run.")
    tests_required: bool = Field(default=False, description="Require a milestone to have a passing test step.")


class LimitsConfig(_Frozen):
    """Limits that apply when a step sets none of its own."""

    tokens_per_run: int | None = Field(
        default=None, ge=1, description="Model tokens one run may spend; a call that would not fit pauses the run."
    )
    tokens_per_day: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Model tokens the workspace's runs may spend per UTC day; a call that would not fit pauses the run until "
            "the next day or a budget raise."
        ),
    )
    timeout_seconds: PositiveSeconds | None = Field(default=None, description="Default step timeout in seconds.")
    max_retries: Retries | None = Field(default=None, description="Default step retries (attempts = retries + 1).")


class TokenLimitsConfig(_Frozen):
    """The token limits of ``limits`` alone: what runs without a ``quantapilot.yml`` take from the settings.

    Lifecycle runs read it from ``QP_LIFECYCLE_LIMITS`` (their steps have no timeouts or retries to set); the
    fields mean what :class:`LimitsConfig`'s of the same names mean.
    """

    tokens_per_run: int | None = Field(default=None, ge=1, description="Model tokens one run may spend.")
    tokens_per_day: int | None = Field(
        default=None, ge=1, description="Model tokens the workspace's runs may spend per UTC day."
    )


class PoliciesConfig(_Frozen):
    """Run policies: merge strategy and gate additions/removals."""

    merge: MergeStrategy = Field(default="merge", description="How pull requests are merged.")
    # default=[] (pydantic copies it per instance) rather than a factory: the schema publishes this default.
    gates: list[Annotated[str, Field(pattern=r"^-?(?:[a-z][a-z0-9_-]*|M-[0-9]{3,})$")]] = Field(
        default=[],
        max_length=100,
        description=(
            "Gates added by name (a milestone id turns on that milestone's gate, other names are optional gates "
            "before completion) or removed with a leading '-' (e.g. '-first_merge')."
        ),
    )
    data_retention_days: int | None = Field(
        default=None, ge=1, description="Days run data is kept (accepted for compatibility; not enforced)."
    )
    model_change_requires_gate: bool = Field(
        default=False,
        description=(
            "A change of models needs a gate decision (accepted for compatibility; not enforced: a change of "
            "models adds no gate)."
        ),
    )


class MilestoneConfig(_Frozen):
    """One milestone; ``gate`` None means the positional default (on for the first milestone only)."""

    model_config = ConfigDict(title="milestone")

    id: MilestoneId
    title: str = Field(min_length=1, max_length=300)
    criteria: list[Annotated[str, Field(min_length=1, max_length=2000)]] = Field(default_factory=list, max_length=100)
    due_date: str | None = Field(
        default=None, pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$", json_schema_extra={"format": "date"}
    )
    steps: list[MilestoneStep] = Field(default_factory=list, max_length=50)
    gate: bool | None = Field(
        default=None,
        description=(
            "Whether the milestone waits at a gate named by its id. Default: true for the first milestone, "
            "false for later ones."
        ),
    )


class GateConfig(_Frozen):
    """Settings of one named gate; the defaults apply to gates without an entry in ``gate_definitions``."""

    model_config = ConfigDict(title="gate")

    description: str | None = Field(default=None, max_length=2000)
    timeout_s: PositiveSeconds | None = Field(
        default=None,
        description="Seconds to wait for a decision before the run fails with GATE_TIMEOUT; absent: wait forever.",
    )
    approvers: list[Annotated[str, Field(pattern=r"^\S+$", max_length=200)]] = Field(
        default_factory=list,
        max_length=100,
        description="Who may decide: token subjects or 'scope:<scope>'. Empty: anyone allowed to decide gates.",
    )
    # None: the deployment's default (QP_ALLOW_SELF_APPROVAL, off unless the operator turns it on).
    allow_self_approval: bool | None = Field(
        default=None,
        description=(
            "Whether the subject that triggered the run (with any of its tokens) may decide this gate; when "
            "absent, the deployment's default (QP_ALLOW_SELF_APPROVAL, false unless set). It can only narrow: "
            "with QP_ALLOW_SELF_APPROVAL=false, true counts as false."
        ),
    )
    required_approvals: RequiredApprovals = 1


class DocsConfig(_Frozen):
    """Where generated documentation is written."""

    output_folder: str = Field(
        default="docs",
        max_length=255,
        pattern=_RELATIVE_FOLDER,
        description=(
            "Folder of the generated pages, relative to the repository root; no '..', '.' or '.git' segments, "
            "no leading '/'. Not given: docs, or docs/quantapilot when the repository's docs/ holds files of its "
            "own (e.g. Sphinx .rst sources, any file without the generator's marker, a link); given: used as "
            "written."
        ),
    )
    # None: quantapilot/<run_id>/docs, one branch per run so concurrent runs of a repository never collide.
    branch: str | None = Field(
        default=None,
        max_length=200,
        pattern=_BRANCH_NAME,
        description=(
            "Branch the documentation is committed to; default quantapilot/<run_id>/docs, one per run, so "
            "concurrent runs of one repository never push over each other. A run force-pushes only inside its "
            "own quantapilot/<run_id>/; any other branch is only created, never rewritten: one that already "
            "exists fails the run with CONFIG_INVALID, and so does a branch in another run's namespace "
            "(quantapilot/<other>/...)."
        ),
    )
    owners: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=50, description="Owners written into the pages' front matter."
    )

    @field_validator("output_folder")
    @classmethod
    def _relative_inside_repo(cls, value: str) -> str:
        # The schema pattern already says this; repeated so models built in code cannot escape the worktree.
        parts = PurePosixPath(value).parts
        if not value or value.startswith("/") or "\\" in value:
            raise ValueError("must be a relative POSIX path")
        if any(part in {".", ".."} or part.lower() == ".git" for part in parts):
            raise ValueError("must not contain '.', '..' or '.git' segments")
        return value


class RunConfig(_Frozen):
    """Time limits of the whole run."""

    time_budget_s: PositiveSeconds | None = Field(
        default=None,
        description="Wall-clock budget of the run; when spent, the run pauses (time_limit). None: no budget.",
    )
    commands_timeout_s: PositiveSeconds = Field(default=600.0, description="Timeout of one milestone command.")


def _version_required(schema: dict[str, Any]) -> None:
    # The model defaults version to 1 (no file means the defaults); a file that exists must say which format.
    schema["required"] = ["version"]
    schema["properties"]["version"].pop("default", None)


_PUBLISHED = published_document(
    "urn:quantapilot:schema:quantapilot.yml:1",
    "Per-repository settings of a QuantaPilot run: the QuantaPilot project's own fields (stack, models, budgets, "
    "steps, gates, limits, policies) plus milestones, named gate settings, documentation and run time settings. A "
    "repository without the file runs with the documented defaults.",
    then=_version_required,
)


class QuantapilotConfig(_Frozen):
    """A validated ``quantapilot.yml``; ``QuantapilotConfig()`` is the default when the file is absent."""

    model_config = ConfigDict(title="quantapilot.yml", json_schema_extra=_PUBLISHED)

    # int, not Literal[1]: the file is held to 1 by the schema; the model stays as lenient as it always was.
    version: int = Field(default=1, description="Format version. Only 1 exists.", json_schema_extra={"const": 1})
    stack: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Free-form description of the project's technology stack (accepted for compatibility with the "
            "QuantaPilot project's file; validated, not used by this pipeline)."
        ),
    )
    models: ModelsConfig | None = Field(
        default=None,
        description=(
            "Language model per agent role (through QP_MODEL_BASE_URL). models.dev answers milestone steps with "
            "`prompt:`; models.arch writes an overview and an architecture page beside the generated documentation "
            "(marked generated_by in their front matter); models.qa reviews a model milestone's applied diff before "
            "its gate (advice recorded with the milestone's model calls)."
        ),
    )
    budgets: BudgetsConfig | None = Field(
        default=None,
        description=(
            "Spending budget of one run in model tokens and money: a model call that would not fit pauses the run "
            "(run.paused, reason budget_exceeded); usd needs a price for every configured model in "
            "QP_MODEL_PRICES, or the run fails with CONFIG_INVALID. The run time budget is run.time_budget_s."
        ),
    )
    steps: list[StepSettings] = Field(
        default_factory=list,
        max_length=5,
        description="Per-step settings by step name; milestone steps of the same name fall back to these.",
    )
    gates: GateSwitches = Field(default_factory=GateSwitches, description="Switches of the built-in checks.")
    limits: LimitsConfig | None = Field(default=None, description="Limits that apply when a step does not set its own.")
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig, description="Run policies.")
    milestones: list[MilestoneConfig] = Field(
        default_factory=list,
        max_length=200,
        description=(
            "Milestones run in order; one starts only after the previous one is accepted. Ids must be unique."
        ),
    )
    gate_definitions: dict[GateName, GateConfig] = Field(
        default_factory=dict,
        description="Settings of named gates: 'anchor', 'first_merge', a milestone id or an optional gate name.",
    )
    docs: DocsConfig = Field(default_factory=DocsConfig, description="Where the generated documentation goes.")
    run: RunConfig = Field(default_factory=RunConfig, description="Time limits of the whole run.")

    @model_validator(mode="after")
    def _consistent(self) -> QuantapilotConfig:
        issues = semantic_issues(self.model_dump(mode="python"))
        if issues:
            raise ValueError("; ".join(f"{render_path(path)}: {message}" for path, message in issues))
        return self


# --- rules the schema cannot express ---


#: One step of a path into the document: a key or a list index.
PathPart = str | int


def render_path(parts: Iterable[PathPart]) -> str:
    """A path as people read it: ``milestones[1].steps[0].timeout_s``; ``<root>`` for the document."""
    rendered = ""
    for part in parts:
        if isinstance(part, int):
            rendered += f"[{part}]"
        else:
            rendered += f".{part}" if rendered else part
    return rendered or "<root>"


def semantic_issues(data: Any) -> list[tuple[list[PathPart], str]]:
    """Rules JSON Schema cannot express: unique ids and names, milestones that exist, reachable approval counts."""
    if not isinstance(data, dict):
        return []
    found: list[tuple[list[PathPart], str]] = []
    milestone_ids: set[str] = set()
    milestones = data.get("milestones")
    if isinstance(milestones, list):
        first_index: dict[str, int] = {}
        for index, milestone in enumerate(milestones):
            if not isinstance(milestone, dict) or not isinstance(milestone.get("id"), str):
                continue
            milestone_id: str = milestone["id"]
            milestone_ids.add(milestone_id)
            if milestone_id in first_index:
                first = first_index[milestone_id]
                message = f"duplicate milestone id {milestone_id!r} (first at milestones[{first}])"
                found.append((["milestones", index, "id"], message))
            else:
                first_index[milestone_id] = index
    steps = data.get("steps")
    if isinstance(steps, list):
        step_names: set[str] = set()
        for index, step in enumerate(steps):
            if isinstance(step, dict) and isinstance(step.get("name"), str):
                if step["name"] in step_names:
                    found.append((["steps", index, "name"], f"duplicate step {step['name']!r}"))
                step_names.add(step["name"])
    if isinstance(milestones, list):
        found += _model_step_issues(data, milestones)
    definitions = data.get("gate_definitions")
    if isinstance(definitions, dict):
        for name, definition in definitions.items():
            if _is_milestone_id(name) and name not in milestone_ids:
                found.append((["gate_definitions", name], "no milestone has this id"))
            found += _approvals_issues(name, definition)
    policies = data.get("policies")
    if isinstance(policies, dict) and isinstance(policies.get("gates"), list):
        for index, entry in enumerate(policies["gates"]):
            name = entry.removeprefix("-") if isinstance(entry, str) else None
            if name is not None and _is_milestone_id(name) and name not in milestone_ids:
                found.append((["policies", "gates", index], "no milestone has this id"))
    return found


def _approvals_issues(name: object, definition: object) -> list[tuple[list[PathPart], str]]:
    """A gate that requires more approvals than its named approvers could ever give."""
    if not isinstance(name, str) or not isinstance(definition, dict):
        return []
    required, approvers = definition.get("required_approvals", 1), definition.get("approvers") or []
    # Wrong types are the schema's to report.
    if type(required) is not int or not isinstance(approvers, list) or not all(isinstance(a, str) for a in approvers):
        return []
    issue = required_approvals_issue(required, approvers)
    return [] if issue is None else [(["gate_definitions", name, "required_approvals"], issue)]


def _model_step_issues(data: dict[str, Any], milestones: list[Any]) -> list[tuple[list[PathPart], str]]:
    """Model steps need the dev model, are named plan or impl, and come at most once per name in a milestone."""
    found: list[tuple[list[PathPart], str]] = []
    models = data.get("models")
    has_dev = isinstance(models, dict) and isinstance(models.get("dev"), dict)
    for index, milestone in enumerate(milestones):
        steps = milestone.get("steps") if isinstance(milestone, dict) else None
        if not isinstance(steps, list):
            continue
        seen: set[str] = set()
        for at, step in enumerate(steps):
            if not isinstance(step, dict) or step.get("prompt") is None:
                continue
            where: list[PathPart] = ["milestones", index, "steps", at, "prompt"]
            name = step.get("name")
            if not has_dev:
                found.append((where, "a prompt step needs models.dev"))
            if name not in ("plan", "impl"):
                found.append((where, "only plan and impl steps take a prompt"))
            elif name in seen:
                found.append((where, f"a second {name} prompt step in this milestone"))
            seen.add(str(name))
    return found


def _is_milestone_id(name: object) -> bool:
    return isinstance(name, str) and _MILESTONE_ID.fullmatch(name) is not None
