"""Bases of the HTTP API's request and response models, and the parts several of them use.

The models of each feature (``quantapilot.runs.http``, ``quantapilot.webhooks.views``, ...) are the source of
the published ``schemas/*.schema.json`` (``make schemas``, :mod:`schemas.generate`): the registry parses a request
straight from its bytes with its model, and handlers answer with a response model's dump.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

T = TypeVar("T")


class RequestBody(BaseModel):
    """Base of request bodies: no unknown field, no coercion (``"5"`` is no integer), patterns as Python's ``re``.

    Python's ``re`` (``search``, as JSON Schema's ``pattern``) also takes the look-aheads of the branch pattern.
    """

    model_config = ConfigDict(extra="forbid", strict=True, regex_engine="python-re", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _absent_is_not_null(cls, value: Any, info: ValidationInfo) -> Any:
        # ``X | None = None`` means the field may be left out, not sent as null (the published schema has X alone).
        if value is None and info.field_name is not None and cls.model_fields[info.field_name].default is None:
            raise ValueError("must not be null")
        return value


class NonEmptyBody(RequestBody):
    """A request body that must name at least one field (``minProperties: 1``)."""

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """The model's schema with ``minProperties: 1``."""
        json_schema = handler(schema)
        handler.resolve_ref_schema(json_schema)["minProperties"] = 1
        return json_schema

    @model_validator(mode="after")
    def _not_empty(self) -> NonEmptyBody:
        if not self.model_fields_set:
            raise ValueError("the body must name at least one field")
        return self


class ResponseBody(BaseModel):
    """Base of response bodies: published in serialization mode (see :mod:`schemas.generate`)."""

    model_config = ConfigDict(validate_by_name=True)

    def dump(self) -> dict[str, Any]:
        """The JSON data of the answer (by alias)."""
        return self.model_dump(mode="json", by_alias=True)


def _unique(items: Sequence[T]) -> Sequence[T]:
    if len(set(map(repr, items))) != len(items):
        raise ValueError("items must be unique")
    return items


#: A list of distinct items (``uniqueItems``), as the JSON value gives it (a set would drop duplicates silently).
UniqueItems = Annotated[T, AfterValidator(_unique), Field(json_schema_extra={"uniqueItems": True})]


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every one we store is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: An instant, served as RFC 3339 in UTC with a ``Z``.
UtcInstant = Annotated[datetime, AfterValidator(_utc)]


def described(title: str, description: str) -> ConfigDict:
    """The ``model_config`` of a published body: its ``$defs`` name and the description a client reads.

    (A model's docstring is for Python readers and is not published.)
    """
    return ConfigDict(title=title, json_schema_extra={"description": description})


def published_document(
    schema_id: str, description: str, then: Callable[[dict[str, Any]], None] | None = None
) -> Callable[[dict[str, Any]], None]:
    """The ``json_schema_extra`` of a model published as a file of its own: what the file says about itself.

    Args:
        schema_id: The file's ``$id``.
        description: The file's description.
        then: What else to change in the generated schema, after those keys are set.

    Returns:
        A function setting ``$schema`` (draft 2020-12), ``$id`` and ``description`` on the generated schema.
    """

    def describe(schema: dict[str, Any]) -> None:
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = schema_id
        schema["description"] = description
        if then is not None:
            then(schema)

    return describe


class EmptyRequest(RequestBody):
    """A body that must be empty (or ``{}``)."""

    model_config = described("EmptyRequest", "A body that must be empty (or {}).")


class Health(ResponseBody):
    """``GET /healthz``."""

    model_config = ConfigDict(title="Health")

    status: Literal["ok"]


class Readiness(ResponseBody):
    """``GET /readyz``: each dependency's answer (``ok`` or ``unavailable: <reason>``)."""

    model_config = ConfigDict(title="Readiness")

    status: Literal["ready", "unavailable"]
    checks: dict[str, str]


class OpenApiDocument(ResponseBody):
    """``GET /v1/openapi.json``: an OpenAPI 3.1 document (its own schema is OpenAPI's)."""

    model_config = ConfigDict(title="OpenApiDocument", extra="allow")

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
