"""The ``quantapilot.yml`` format: its models, safe YAML loading, JSON Schema validation and defaults.

The file is published as ``schemas/quantapilot.schema.json`` (JSON Schema 2020-12). :func:`load_config`
parses a repository's file defensively (size, alias and depth limits), validates it against the schema,
reports every problem with a readable path (``milestones[1].steps[0].timeout_s``) and returns a frozen
:class:`QuantapilotConfig`. A repository without the file gets the documented defaults
(``load_config(None)``). What a run derives from it (gates, timeouts, attempts, branch namespaces) is
:mod:`quantapilot.repos.policy`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Final, Literal

import yaml
from jsonschema import Draft202012Validator, ValidationError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from quantapilot.repos.safe_yaml import MAX_YAML_BYTES, YamlLimitError, load_yaml

__all__ = [
    "MAX_CONFIG_BYTES",
    "SCHEMA_PATH",
    "BudgetsConfig",
    "ConfigError",
    "ConfigIssue",
    "DocsConfig",
    "GateConfig",
    "GateSwitches",
    "LimitsConfig",
    "MilestoneConfig",
    "ModelConfig",
    "ModelsConfig",
    "PoliciesConfig",
    "QuantapilotConfig",
    "RunConfig",
    "StepConfig",
    "load_config",
]

# The schema sits next to the package in the source tree (``schemas/`` is not a regular package).
SCHEMA_PATH: Final = Path(__file__).resolve().parents[2] / "schemas" / "quantapilot.schema.json"

#: Largest accepted file; a settings file is a few KiB, anything bigger is a mistake or an attack. The alias,
#: node and depth limits are those of every YAML a repository supplies (quantapilot/repos/safe_yaml.py).
MAX_CONFIG_BYTES: Final = MAX_YAML_BYTES

_MAX_MESSAGE_CHARS = 300
_MILESTONE_ID = re.compile(r"M-[0-9]{3,}")

StepName = Literal["plan", "impl", "test", "doc", "pr"]
MergeStrategy = Literal["squash", "merge", "rebase"]
PositiveSeconds = Annotated[float, Field(gt=0)]
Retries = Annotated[int, Field(ge=0, le=100)]
MilestoneId = Annotated[str, Field(pattern=r"^M-[0-9]{3,}$")]


# --- models ---


class _Frozen(BaseModel):
    """Base of every config model: immutable and strict about unknown keys, like the schema."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(_Frozen):
    """The language model of one agent role."""

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=1)


class ModelsConfig(_Frozen):
    """Models per agent role (architecture, development, QA)."""

    arch: ModelConfig | None = None
    dev: ModelConfig | None = None
    qa: ModelConfig | None = None


class BudgetsConfig(_Frozen):
    """Spending budget of one run."""

    tokens: int = Field(ge=1)
    usd: float | None = Field(default=None, ge=0)


class StepConfig(_Frozen):
    """A step: top-level entries set per-name defaults, milestone entries also carry the command to run."""

    name: StepName
    run: str | None = Field(default=None, min_length=1)
    timeout_s: PositiveSeconds | None = None
    retries: Retries | None = None
    tokens_budget: int | None = Field(default=None, ge=1)


class GateSwitches(_Frozen):
    """The seed's ``gates`` object: switches of the built-in checks."""

    docs_lint: bool = True
    tests_required: bool = False


class LimitsConfig(_Frozen):
    """Limits that apply when a step sets none of its own."""

    tokens_per_run: int | None = Field(default=None, ge=1)
    tokens_per_day: int | None = Field(default=None, ge=1)
    timeout_seconds: PositiveSeconds | None = None
    max_retries: Retries | None = None


class PoliciesConfig(_Frozen):
    """Run policies: merge strategy and gate additions/removals."""

    merge: MergeStrategy = "merge"
    gates: list[str] = Field(default_factory=list)
    data_retention_days: int | None = Field(default=None, ge=1)
    model_change_requires_gate: bool = False


class MilestoneConfig(_Frozen):
    """One milestone; ``gate`` None means the positional default (on for the first milestone only)."""

    id: MilestoneId
    title: str = Field(min_length=1)
    criteria: list[str] = Field(default_factory=list)
    due_date: str | None = None
    steps: list[StepConfig] = Field(default_factory=list)
    gate: bool | None = None


class GateConfig(_Frozen):
    """Settings of one named gate; the defaults apply to gates without an entry in ``gate_definitions``."""

    description: str | None = None
    timeout_s: PositiveSeconds | None = None
    approvers: list[str] = Field(default_factory=list)
    # None: the deployment's default (QP_ALLOW_SELF_APPROVAL, off unless the operator turns it on).
    allow_self_approval: bool | None = None


class DocsConfig(_Frozen):
    """Where generated documentation is written."""

    output_folder: str = "docs"
    # None: quantapilot/<run_id>/docs, one branch per run so concurrent runs of a repository never collide.
    branch: str | None = None
    owners: list[str] = Field(default_factory=list)

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

    time_budget_s: PositiveSeconds | None = None
    commands_timeout_s: PositiveSeconds = 600.0


class QuantapilotConfig(_Frozen):
    """A validated ``quantapilot.yml``; ``QuantapilotConfig()`` is the default when the file is absent."""

    version: int = 1
    stack: dict[str, Any] = Field(default_factory=dict)
    models: ModelsConfig | None = None
    budgets: BudgetsConfig | None = None
    steps: list[StepConfig] = Field(default_factory=list)
    gates: GateSwitches = Field(default_factory=GateSwitches)
    limits: LimitsConfig | None = None
    policies: PoliciesConfig = Field(default_factory=PoliciesConfig)
    milestones: list[MilestoneConfig] = Field(default_factory=list)
    gate_definitions: dict[str, GateConfig] = Field(default_factory=dict)
    docs: DocsConfig = Field(default_factory=DocsConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _consistent(self) -> QuantapilotConfig:
        issues = _semantic_issues(self.model_dump(mode="python"))
        if issues:
            raise ValueError("; ".join(f"{_render_path(path)}: {message}" for path, message in issues))
        return self


# --- errors ---


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a ``quantapilot.yml``.

    Attributes:
        path: Where, like ``milestones[1].steps[0].timeout_s``; ``<root>`` for the document itself.
        message: What is wrong; short, never the whole offending value.
    """

    path: str
    message: str


class ConfigError(Exception):
    """A ``quantapilot.yml`` that cannot be used; ends a run with ``CONFIG_INVALID``.

    Args:
        errors: Every problem found, sorted by path.
        source: Name of the file, for the message.
    """

    def __init__(self, errors: Sequence[ConfigIssue], *, source: str = "quantapilot.yml") -> None:
        self.errors: list[ConfigIssue] = list(errors)
        self.source = source
        shown = "; ".join(f"{issue.path}: {issue.message}" for issue in self.errors[:10])
        more = f" (and {len(self.errors) - 10} more)" if len(self.errors) > 10 else ""
        count = len(self.errors)
        super().__init__(f"{source} is invalid ({count} error{'s' if count != 1 else ''}): {shown}{more}")

    def details(self) -> list[dict[str, str]]:
        """The problems as JSON-ready objects, for ``run.failed`` events and error envelopes."""
        return [{"path": issue.path, "message": issue.message} for issue in self.errors]


# --- YAML ---


def _parse_yaml(text: str, *, source: str) -> Any:
    """Parse one YAML document within the shared limits (:mod:`quantapilot.repos.safe_yaml`) as :class:`ConfigError`."""
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigError([ConfigIssue("<root>", f"file larger than {MAX_CONFIG_BYTES} bytes")], source=source)
    try:
        return load_yaml(text, unique_keys=True)
    except YamlLimitError as exc:
        raise ConfigError([ConfigIssue("<root>", f"refused YAML: {exc}")], source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("<root>", _yaml_message(exc))], source=source) from None


def _yaml_message(exc: yaml.YAMLError) -> str:
    # str(exc) quotes the offending source line; keep only the problem and its position.
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or "invalid YAML"
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"invalid YAML: {problem}{where}"[:_MAX_MESSAGE_CHARS]
    return f"invalid YAML: {type(exc).__name__}"


# --- validation ---


def _load_schema() -> dict[str, Any]:
    with SCHEMA_PATH.open(encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


SCHEMA: Final[dict[str, Any]] = _load_schema()
# Built once: compiling the schema (refs, format checker) per run would be wasted work on every config load.
_VALIDATOR: Final = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)

PathPart = str | int


def _render_path(parts: Iterable[PathPart]) -> str:
    rendered = ""
    for part in parts:
        if isinstance(part, int):
            rendered += f"[{part}]"
        else:
            rendered += f".{part}" if rendered else part
    return rendered or "<root>"


def _sort_key(path: Sequence[PathPart]) -> tuple[tuple[int, int, str], ...]:
    # Numeric indexes sort numerically, so milestones[2] comes before milestones[10].
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, part) for part in path)


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 1] + "…"


def _schema_issues(data: Any) -> list[tuple[list[PathPart], str]]:
    """Every schema violation, one per leaf error, with unknown keys reported at the key itself."""
    found: list[tuple[list[PathPart], str]] = []
    for error in _VALIDATOR.iter_errors(data):
        found.extend(_describe(error))
    return found


def _describe(error: ValidationError) -> list[tuple[list[PathPart], str]]:
    path: list[PathPart] = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        unknown = [key for key in error.instance if key not in known]
        if unknown:
            return [([*path, str(key)], "unknown key") for key in unknown]
    if "propertyNames" in error.relative_schema_path:
        # A propertyNames error is reported on the object; name the offending key instead.
        return [([*path, str(error.instance)], "invalid name: use lowercase letters, digits, '_', '-' or M-<nnn>")]
    if error.validator == "format" and error.validator_value == "date":
        return [(path, "must be a date like 2025-01-31")]
    if error.validator == "pattern":
        hint = _PATTERN_HINTS.get(str(path[-1]) if path else "", "does not have the expected format")
        return [(path, f"{_short_value(error.instance)} {hint}")]
    return [(path, _short(error.message))]


# The raw regular expressions say little to a person editing the file.
_PATTERN_HINTS: Final = {
    "output_folder": "must be a relative path without '..', '.' or '.git' segments and no leading '/'",
    "branch": "is not a valid branch name",
    "id": "must look like M-001",
}


def _short_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _semantic_issues(data: Any) -> list[tuple[list[PathPart], str]]:
    """Rules JSON Schema cannot express: unique ids and names, references to milestones that exist."""
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
    definitions = data.get("gate_definitions")
    if isinstance(definitions, dict):
        for name in definitions:
            if _is_milestone_id(name) and name not in milestone_ids:
                found.append((["gate_definitions", name], "no milestone has this id"))
    policies = data.get("policies")
    if isinstance(policies, dict) and isinstance(policies.get("gates"), list):
        for index, entry in enumerate(policies["gates"]):
            name = entry.removeprefix("-") if isinstance(entry, str) else None
            if name is not None and _is_milestone_id(name) and name not in milestone_ids:
                found.append((["policies", "gates", index], "no milestone has this id"))
    return found


def _is_milestone_id(name: object) -> bool:
    return isinstance(name, str) and _MILESTONE_ID.fullmatch(name) is not None


def load_config(text: str | None, *, source: str = "quantapilot.yml") -> QuantapilotConfig:
    """Parse and validate a ``quantapilot.yml``.

    Args:
        text: The file's content, or None when the repository has no such file.
        source: File name used in error messages.

    Returns:
        The validated configuration; for ``None`` the documented defaults (``QuantapilotConfig()``).

    Raises:
        ConfigError: The file is too large, not safe or valid YAML, not a mapping, or breaks the schema or
            the rules the schema cannot express (unique milestone ids...). ``errors`` lists every problem,
            sorted by path.
    """
    if text is None:
        return QuantapilotConfig()
    data = _parse_yaml(text, source=source)
    if not isinstance(data, dict):
        kind = "an empty document" if data is None else f"a {type(data).__name__}"
        raise ConfigError([ConfigIssue("<root>", f"expected a mapping with 'version: 1', found {kind}")], source=source)
    raw = _schema_issues(data) + _semantic_issues(data)
    if raw:
        raw.sort(key=lambda item: (_sort_key(item[0]), item[1]))
        raise ConfigError([ConfigIssue(_render_path(path), message) for path, message in raw], source=source)
    try:
        return QuantapilotConfig.model_validate(data)
    except PydanticValidationError as exc:
        # The schema should have caught everything; this keeps a drift between the two a config error.
        issues = [
            ConfigIssue(_render_path(part for part in err["loc"] if isinstance(part, str | int)), _short(err["msg"]))
            for err in exc.errors()
        ]
        raise ConfigError(issues, source=source) from None
