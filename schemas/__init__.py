"""The published JSON Schemas (one source of truth for request validation and the OpenAPI document)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

SCHEMA_DIR = Path(__file__).resolve().parent


@cache
def load(name: str) -> dict[str, Any]:
    """Load a schema file (e.g. ``"api.schema.json"``) once per process."""
    data: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    return data


@cache
def validator(name: str, definition: str | None = None) -> Draft202012Validator:
    """A compiled validator for a schema file, or for one of its ``$defs`` entries; built once per process.

    Args:
        name: Schema file name.
        definition: Name under ``$defs`` to validate against, or None for the whole schema.
    """
    schema = load(name)
    if definition is not None:
        if definition not in schema.get("$defs", {}):
            raise KeyError(f"{name} has no $defs/{definition}")
        schema = {**schema, "$ref": f"#/$defs/{definition}"}
    return Draft202012Validator(schema, format_checker=FormatChecker())
