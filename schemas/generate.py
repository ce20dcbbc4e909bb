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
- A response model (published in ``serialization`` mode) says what the server sends, its dump: every field is
  required unless it is left out by ``exclude_if``, ``X | None`` may be null (a dump writes None as null), and
  defaults are not published. Where null is allowed, it is spelled ``type: [X, "null"]`` (or among the enum).
- A file of several bodies (``api.schema.json``) is :func:`defs_schema`: each listed model is a ``$defs`` entry
  named by its ``title`` (or class name) and referred to by ``$ref`` wherever it is used; a ``TypeAliasType`` is
  an entry under its own name.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue, models_json_schema
from pydantic_core import core_schema

from api.endpoints import ENDPOINTS
from api.registry import Endpoint
from api.webhook_endpoints import WEBHOOK_ENDPOINTS
from quantapilot.docs.frontmatter import FrontMatter
from quantapilot.errors import ErrorEnvelope, ErrorResponse
from quantapilot.lifecycle.models import LifecycleRunRequest
from quantapilot.lifecycle.telemetry_body import TelemetryBody
from quantapilot.models import GateRequestedData
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


_DEF_MARK = "x-published-as"


class _ContractJsonSchema(GenerateJsonSchema):
    """pydantic's generator, adjusted to the conventions of the module docstring."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        """Properties carry no generated titles (``"title": "Timeout S"`` says nothing)."""
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        """A field ``X | None = None``: None is spelled by leaving the key out, so the schema is ``X``.

        Only there: a None inside a type (a scalar that may be null) stays ``{"type": "null"}``.
        """
        if self.mode == "serialization":
            # A response always carries the field: its default tells a reader nothing.
            return self.generate_inner(schema["schema"])
        if "default" in schema and schema["default"] is None:
            inner = schema["schema"]
            # Through validators that wrap the field (a request body's null check), to the nullable.
            core: Any = inner
            while core["type"] in ("function-before", "function-after", "function-wrap"):
                core = core["schema"]
            return self.generate_inner(core["schema"] if core["type"] == "nullable" else inner)
        return super().default_schema(schema)

    def field_is_required(
        self,
        field: core_schema.ModelField | core_schema.DataclassField | core_schema.TypedDictField,
        total: bool,
    ) -> bool:
        """A response's dump carries every field but those ``exclude_if`` leaves out."""
        if self.mode == "serialization":
            return field.get("serialization_exclude_if") is None
        return super().field_is_required(field, total)

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        """``X | None`` (that may be null) as ``type: [X, "null"]``, or null among an enum's values."""
        inner = self.generate_inner(schema["schema"])
        if "anyOf" not in inner and "$ref" not in inner:
            if isinstance(inner.get("type"), str) and "enum" not in inner and "const" not in inner:
                return {**inner, "type": [inner["type"], "null"]}
            if "enum" in inner:
                return {**{k: v for k, v in inner.items() if k != "type"}, "enum": [*inner["enum"], None]}
        return super().nullable_schema(schema)

    def generate_inner(self, schema: Any) -> JsonSchemaValue:
        """An enum's docstring is not published either (pydantic adds it after :meth:`enum_schema`)."""
        json_schema = super().generate_inner(schema)
        if schema.get("type") == "enum" and schema["cls"].__doc__:
            ref = json_schema.get("$ref", "")
            target = self.definitions.get(ref.rsplit("/", 1)[-1]) if ref else json_schema
            if target is not None and target.get("description") == inspect.cleandoc(schema["cls"].__doc__):
                del target["description"]
        return json_schema

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
        title = schema["cls"].model_config.get("title")
        if title:
            # Published as a $defs entry of that name, even when it is the class name (a title pydantic also sets).
            json_schema[_DEF_MARK] = title
        doc = schema["cls"].__doc__
        if doc and json_schema.get("description") == inspect.cleandoc(doc):
            del json_schema["description"]
        return json_schema


def _lower_camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The published JSON Schema of a root model, following the conventions of the module docstring.

    Args:
        model: The root model (its ``model_config`` carries ``$schema``, ``$id``, ``title``, ``description``).

    Returns:
        The schema document, keys in the published order.
    """
    raw = model.model_json_schema(schema_generator=_ContractJsonSchema)
    raw.pop(_DEF_MARK, None)  # the root is the document itself
    defs: dict[str, Any] = raw.pop("$defs", {})
    names = {key: _published_name(key, body, _lower_camel) for key, body in defs.items()}
    return _publish(raw, defs, names)


def defs_schema(meta: Mapping[str, Any], models: Sequence[tuple[type[BaseModel], JsonSchemaMode]]) -> dict[str, Any]:
    """A schema file of several bodies: ``meta`` (``$schema``, ``$id``, ``title``, ``description``) and ``$defs``.

    Args:
        meta: The file's identity and annotations.
        models: Each body with the mode it is published in: ``validation`` for a request, ``serialization``
            for a response. Each is a ``$defs`` entry named by its ``title`` (or class name).

    Returns:
        The schema document, keys in the published order.
    """
    refs, raw = models_json_schema(list(models), schema_generator=_ContractJsonSchema)
    defs: dict[str, Any] = raw.get("$defs", {})
    names = {key: _published_name(key, body, str) for key, body in defs.items()}
    listed = [refs[item] for item in models]
    for (model, _mode), ref in zip(models, listed, strict=True):
        names[ref["$ref"].removeprefix("#/$defs/")] = str(model.model_config.get("title") or model.__name__)
    return _publish({**meta, "$listed": listed}, defs, names)


def _publish(raw: dict[str, Any], defs: dict[str, Any], names: Mapping[str, str | None]) -> dict[str, Any]:
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

    # The bodies of a defs_schema file are published in the order listed (each after the parts it uses).
    listed = raw.pop("$listed", [])
    document = resolve(raw)
    resolve(listed)
    if published:
        document["$defs"] = _order_defs(published) if not listed else published
    normalized: dict[str, Any] = _normalize(document)
    return normalized


def _published_name(key: str, body: Mapping[str, Any], alias_name: Callable[[str], str]) -> str | None:
    # pydantic titles a model by its class name (the def key) unless model_config sets a title.
    if _DEF_MARK in body:
        return str(body[_DEF_MARK])
    title = body.get("title")
    if title is None:
        return alias_name(key)  # a TypeAliasType: StepName is published as stepName in a root model's file
    return None if title == key else str(title)


def _without_title(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("title", _DEF_MARK)}


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
    """One generated schema file: its name under ``schemas/``, the function building its document, its models.

    Attributes:
        name: File name under ``schemas/``.
        build: Builds the document.
        models: The bodies it publishes: its root model (``root``), or each of its ``$defs`` bodies.
        root: Whether the file's root schema is ``models[0]``.
    """

    name: str
    build: Callable[[], dict[str, Any]]
    models: tuple[type[BaseModel], ...] = ()
    root: bool = False


def _root(name: str, model: type[BaseModel]) -> Generated:
    return Generated(name, lambda: model_schema(model), (model,), root=True)


def _defs(name: str, meta: Mapping[str, Any], bodies: Sequence[tuple[type[BaseModel], JsonSchemaMode]]) -> Generated:
    return Generated(name, lambda: defs_schema(meta, bodies), tuple(model for model, _ in bodies))


_DRAFT = "https://json-schema.org/draft/2020-12/schema"

#: The files whose root schema is one model; such a model (a request body too) is not among another file's bodies.
_ROOT_FILES: tuple[Generated, ...] = (
    _root("quantapilot.schema.json", QuantapilotConfig),
    _root("telemetry.schema.json", TelemetryBody),
    _root("lifecycle_run.schema.json", LifecycleRunRequest),
    _root("frontmatter.schema.json", FrontMatter),
)
_ROOT_MODELS = frozenset(item.models[0] for item in _ROOT_FILES)


def _is_webhook_request(endpoint: Endpoint, mode: JsonSchemaMode) -> bool:
    return mode == "validation" and endpoint in WEBHOOK_ENDPOINTS


def _registry_bodies(
    include: Callable[[Endpoint, JsonSchemaMode], bool],
) -> tuple[tuple[type[BaseModel], JsonSchemaMode], ...]:
    """The bodies of the registry's endpoints that ``include`` keeps, each once, in the order of first use."""
    bodies: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {}
    for endpoint in ENDPOINTS:
        for model, mode in endpoint.bodies():
            if model not in _ROOT_MODELS and include(endpoint, mode):
                bodies.setdefault((model, mode))
    return tuple(bodies)


#: The bodies of ``webhooks.schema.json``: the requests of the webhook endpoints.
WEBHOOK_BODIES = _registry_bodies(_is_webhook_request)
#: The bodies of ``api.schema.json``, in the order the file (and the OpenAPI document) lists them: every other
#: body the endpoint registry (``api/endpoints.py``) declares, in the order of the paths, then the bodies no
#: endpoint answers with: the error envelope by its ``api.schema.json`` name and a gate.requested event's data.
API_BODIES: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    *_registry_bodies(lambda endpoint, mode: not _is_webhook_request(endpoint, mode)),
    (ErrorEnvelope, "serialization"),
    (GateRequestedData, "serialization"),
)

#: Every schema file made from models.
GENERATED: tuple[Generated, ...] = (
    *_ROOT_FILES,
    _defs(
        "api.schema.json",
        {
            "$schema": _DRAFT,
            "$id": "https://quantapilot.dev/schemas/api.schema.json",
            "title": "QuantaPilot integration API",
            "description": (
                "Request and response bodies of the HTTP API. Each $defs entry is one body; the OpenAPI "
                "document publishes these definitions as its component schemas."
            ),
        },
        API_BODIES,
    ),
    _defs(
        "webhooks.schema.json",
        {
            "$schema": _DRAFT,
            "$id": "https://quantapilot.dev/schemas/webhooks.schema.json",
            "title": "QuantaPilot webhook subscriptions",
            "description": (
                "Request bodies of the webhook API (/v1/webhooks/...). Each $defs entry is one body. Event "
                "types are the dotted names (run.started) or the seed's underscore aliases (run_started); "
                "unknown names are refused with 422."
            ),
        },
        WEBHOOK_BODIES,
    ),
    _defs(
        "error.schema.json",
        {
            "$schema": _DRAFT,
            "$id": "urn:quantapilot:schema:error",
            "title": "Error envelope",
            "description": (
                "Every 4xx and 5xx answer of the API carries this envelope (and the X-Trace-Id header equal to "
                "traceId). Codes are stable: clients branch on code, never on message. The same codes are the "
                "`code` of run failures (run.failed events, RunStatus.error) and the types of Temporal "
                "ApplicationErrors."
            ),
            "$ref": "#/$defs/ErrorResponse",
        },
        [(ErrorResponse, "serialization")],
    ),
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
