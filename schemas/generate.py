"""Writes the published JSON Schemas that are generated from pydantic models (``make schemas``).

The models are the source; ``schemas/*.json`` are the published contract made from them, checked in so a change
of the contract shows in review. ``python -m schemas.generate`` rewrites the files, ``--check`` only reports the
stale ones (exit status 1); tests/contract/test_generated_schemas.py fails on a stale file.

Conventions the models follow (so every fact is stated once, on the model):

- A model whose ``model_config`` sets a ``title`` is a ``$defs`` entry of that name; a model without one is
  written inline where it is used, under the field's description. A ``TypeAliasType`` is a ``$defs`` entry named
  like the alias in lowerCamelCase (``StepName``: ``stepName``). Model docstrings are for Python readers and
  are not published.
- ``X | None = None`` means "absent": the schema has ``X`` alone and no default; null is not accepted.
- ``Field(default=...)`` publishes the default; ``default_factory`` does not.
- ``type`` is left out next to ``enum``/``const`` (the values say it), and keys are written in one fixed order.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from quantapilot.lifecycle.models import LifecycleRunRequest
from quantapilot.lifecycle.telemetry import TelemetryBody
from quantapilot.repos.config import QuantapilotConfig
from schemas import SCHEMA_DIR

__all__ = ["GENERATED", "Generated", "main", "render"]

# The order keys are written in: identity, annotation, then what the value must be, then its parts.
_KEY_ORDER = (
    "$schema",
    "$id",
    "title",
    "description",
    "$ref",
    "const",
    "enum",
    "type",
    "format",
    "exclusiveMinimum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "propertyNames",
    "additionalProperties",
    "required",
    "properties",
    "items",
    "anyOf",
    "default",
    "if",
    "then",
    "else",
    "$defs",
)


class _ContractJsonSchema(GenerateJsonSchema):
    """pydantic's generator, adjusted to the conventions of the module docstring."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        """Properties carry no generated titles (``"title": "Timeout S"`` says nothing)."""
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        """A field ``X | None = None``: None is spelled by leaving the key out, so the schema is ``X``.

        Only there: a None inside a type (a scalar that may be null) stays ``{"type": "null"}``.
        """
        if "default" in schema and schema["default"] is None:
            inner = schema["schema"]
            while inner["type"] == "function-before":
                # A check before the type (refusing an explicit null) publishes the type it wraps.
                inner = inner["schema"]
            return self.generate_inner(inner["schema"] if inner["type"] == "nullable" else inner)
        return super().default_schema(schema)

    def dict_schema(self, schema: core_schema.DictSchema) -> JsonSchemaValue:
        """Constrained keys as ``propertyNames``, values as ``additionalProperties`` (never patternProperties)."""
        json_schema: JsonSchemaValue = {"type": "object"}
        keys = self.generate_inner(schema["keys_schema"]) if "keys_schema" in schema else {}
        if keys not in ({}, {"type": "string"}):
            json_schema["propertyNames"] = keys
        values = self.generate_inner(schema["values_schema"]) if "values_schema" in schema else {}
        if values:
            json_schema["additionalProperties"] = values
        if schema.get("min_length") is not None:
            json_schema["minProperties"] = schema["min_length"]
        if schema.get("max_length") is not None:
            json_schema["maxProperties"] = schema["max_length"]
        return json_schema

    def model_schema(self, schema: core_schema.ModelSchema) -> JsonSchemaValue:
        """A model's docstring is not published as its description: docstrings are for Python readers."""
        json_schema = super().model_schema(schema)
        doc = schema["cls"].__doc__
        if doc and json_schema.get("description") == inspect.cleandoc(doc):
            del json_schema["description"]
        return json_schema


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The published JSON Schema of a root model, following the conventions of the module docstring.

    Args:
        model: The root model (its ``model_config`` carries ``$schema``, ``$id``, ``title``, ``description``).

    Returns:
        The schema document, keys in the published order.
    """
    raw = model.model_json_schema(schema_generator=_ContractJsonSchema)
    defs: dict[str, Any] = raw.pop("$defs", {})
    names = {key: _published_name(key, body) for key, body in defs.items()}
    published: dict[str, Any] = {}
    visiting: set[str] = set()

    def resolve(node: Any) -> Any:
        if isinstance(node, list):
            return [resolve(item) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            key = ref.removeprefix("#/$defs/")
            name = names[key]
            if name is None:
                # Inline: the referencing field's annotations (description) win over the model's.
                body = resolve(_without_title(defs[key]))
                return {**body, **{k: resolve(v) for k, v in node.items() if k != "$ref"}}
            if name not in published and name not in visiting:
                visiting.add(name)  # a recursive model refers to itself by $ref
                # Assigned after its parts: a definition comes before the first one that uses it.
                published[name] = resolve(_without_title(defs[key]))
            return {**{k: resolve(v) for k, v in node.items()}, "$ref": f"#/$defs/{name}"}
        return {k: resolve(v) for k, v in node.items()}

    document = resolve(raw)
    if published:
        document["$defs"] = _order_defs(published)
    normalized: dict[str, Any] = _normalize(document)
    return normalized


def _published_name(key: str, body: Mapping[str, Any]) -> str | None:
    # pydantic titles a model by its class name (the def key) unless model_config sets a title.
    title = body.get("title")
    if title is None:
        return key[:1].lower() + key[1:]  # a TypeAliasType: StepName is published as stepName
    return None if title == key else str(title)


def _without_title(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "title"}


def _order_defs(defs: dict[str, Any]) -> dict[str, Any]:
    # Scalar definitions (type aliases) first, by name; then the objects, each before its first user.
    simple = {k: defs[k] for k in sorted(defs) if defs[k].get("type") != "object"}
    return {**simple, **{k: v for k, v in defs.items() if k not in simple}}


def _normalize(node: Any) -> Any:
    if isinstance(node, list):
        return [_normalize(item) for item in node]
    if not isinstance(node, dict):
        return node
    items = dict(node)
    if "type" in items and ("enum" in items or "const" in items):
        del items["type"]
    rank = {key: index for index, key in enumerate(_KEY_ORDER)}
    ordered = sorted(items, key=lambda k: rank.get(k, len(rank)))
    out: dict[str, Any] = {}
    for key in ordered:
        value = items[key]
        if key in ("properties", "$defs") and isinstance(value, dict):
            # Names, not keywords: keep their order and normalize each entry.
            out[key] = {name: _normalize(entry) for name, entry in value.items()}
        elif key == "default" and isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            # A float field's default: JSON has one number type, 600.0 is written 600. Bounds keep their
            # spelling, which error messages quote ("greater than the maximum of 1e+15").
            out[key] = int(value)
        else:
            out[key] = _normalize(value)
    return out


@dataclass(frozen=True, slots=True)
class Generated:
    """One generated schema file: its name under ``schemas/`` and the function building its document."""

    name: str
    build: Callable[[], dict[str, Any]]


#: Every schema file made from models; the others are still written by hand.
GENERATED: tuple[Generated, ...] = (
    Generated("quantapilot.schema.json", lambda: model_schema(QuantapilotConfig)),
    Generated("telemetry.schema.json", lambda: model_schema(TelemetryBody)),
    Generated("lifecycle_run.schema.json", lambda: model_schema(LifecycleRunRequest)),
)


def render(document: Mapping[str, Any]) -> str:
    """The file text of a schema document: two-space indented JSON, non-ASCII kept, a final newline."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the generated schema files, or with ``--check`` list the stale ones.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).

    Returns:
        0 when every file is (now) up to date, 1 when ``--check`` found a stale one.
    """
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for item in GENERATED:
        path: Path = SCHEMA_DIR / item.name
        text = render(item.build())
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(item.name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
    verb = "stale" if args.check else "written"
    for name in stale:
        print(f"{name}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
