"""Reading a repository's ``quantapilot.yml``: safe YAML, JSON Schema validation, readable errors, defaults.

:func:`load_config` parses the file defensively (size, alias and depth limits), validates it against the
published ``schemas/quantapilot.schema.json``, reports every problem with a readable path
(``milestones[1].steps[0].timeout_s``) and returns a frozen :class:`~quantapilot.repos.config.QuantapilotConfig`.
A repository without the file gets the documented defaults (``load_config(None)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml
from jsonschema import Draft202012Validator, ValidationError
from pydantic import ValidationError as PydanticValidationError

from quantapilot.repos.config import PathPart, QuantapilotConfig, render_path, semantic_issues
from quantapilot.repos.safe_yaml import MAX_YAML_BYTES, YamlLimitError, load_yaml
from schemas import SCHEMA_DIR
from schemas import load as load_schema

__all__ = ["MAX_CONFIG_BYTES", "SCHEMA_PATH", "ConfigError", "ConfigIssue", "load_config"]

# Published in ``schemas/``, read through its one loader.
SCHEMA_PATH: Final = SCHEMA_DIR / "quantapilot.schema.json"

#: Largest accepted file; a settings file is a few KiB, anything bigger is a mistake or an attack. The alias,
#: node and depth limits are those of every YAML a repository supplies (quantapilot/repos/safe_yaml.py).
MAX_CONFIG_BYTES: Final = MAX_YAML_BYTES

_MAX_MESSAGE_CHARS = 300


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


SCHEMA: Final[dict[str, Any]] = load_schema(SCHEMA_PATH.name)
# Built once: compiling the schema (refs, format checker) per run would be wasted work on every config load.
_VALIDATOR: Final = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)


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
    raw = _schema_issues(data) + semantic_issues(data)
    if raw:
        raw.sort(key=lambda item: (_sort_key(item[0]), item[1]))
        raise ConfigError([ConfigIssue(render_path(path), message) for path, message in raw], source=source)
    try:
        return QuantapilotConfig.model_validate(data)
    except PydanticValidationError as exc:
        # The schema should have caught everything; this keeps a drift between the two a config error.
        issues = [
            ConfigIssue(render_path(part for part in err["loc"] if isinstance(part, str | int)), _short(err["msg"]))
            for err in exc.errors()
        ]
        raise ConfigError(issues, source=source) from None
