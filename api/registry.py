"""The endpoint registry: one declaration per route, from which the router, the checks and the contract follow.

An :class:`Endpoint` holds every fact about a route: method and path, handler, the scope a token needs (or
:data:`PUBLIC`), the models of the request body and of the answer, whether ``Idempotency-Key`` is honoured, the
rate-limit class, and what the OpenAPI document says about it. :meth:`Registry.add_routes` mounts the endpoints on
an application behind one wrapper that, in this order, checks the scope (403), reads the ``Idempotency-Key``
header (400), and reads the body (400/413/415) and parses it with its model (422); the handler receives the result
as a :class:`Call` and does none of that by hand. ``api/openapi.py`` builds the document, ``api/auth.py`` its
public paths and ``api/ratelimit.py`` its route classes from the same declarations (``api/endpoints.py`` holds the
application's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from api.body import decode_json, may_hold_nul, parse, read_bytes, read_json
from api.keys import PRINCIPAL
from api.runs import parse_idempotency_key
from quantapilot.errors import ApiError, ErrorCode
from quantapilot.settings import Settings
from quantapilot.tokens import Principal

#: The ``scope`` of an endpoint that needs no token.
PUBLIC: None = None
#: The path of the endpoint mounted where ``QP_RUN_PATH`` says (the seed's trigger path, an alias).
RUN_PATH = "<run_path>"
#: Statuses of reading a body: malformed, late, too large, not JSON, not matching its schema.
BODY_ERRORS = (400, 408, 413, 415, 422)
#: Rate-limit classes (the values of :class:`api.ratelimit.RouteClass` a route can have).
RateClass = Literal["triggers", "telemetry", "reads", "control", "public"]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
#: Methods that only read: their routes are ``reads`` unless declared otherwise, any other ``control``.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# aiohttp's ``{name:regex}`` path variables; the route's canonical path is ``{name}``.
_VARIABLE_PATTERN = re.compile(r"\{(\w+):[^}]*\}")


def rate_class_by_method(method: str) -> RateClass:
    """The rate class of a route not declared otherwise (and of a request that matched no route)."""
    return "reads" if method.upper() in SAFE_METHODS else "control"


@dataclass(frozen=True, slots=True)
class Param:
    """A path, query or header parameter, as documented."""

    name: str
    where: Literal["path", "query", "header"]
    schema: Mapping[str, Any]
    description: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Body:
    """A request body: the model it is parsed with (and published as, ``make schemas``).

    Attributes:
        model: The body's model; the wrapper parses the request's bytes with it (:func:`api.body.parse`) and
            hands the result to the handler as :attr:`Call.parsed`.
        required: Whether the body may be empty (it then reads as ``{}``).
        parse: Validates and parses the decoded JSON instead of the model (the lifecycle bodies have a checker
            of their own, whose formats run); its result is :attr:`Call.parsed`.
        from_bytes: Parses the request's bytes instead (a hot route: the body is not decoded first, see
            :func:`prepare`); it raises :class:`~quantapilot.errors.ApiError` 422 for a body it refuses, and
            its result is :attr:`Call.parsed`. Only for a model that refuses every body nested deeper than
            :data:`api.body.MAX_DEPTH`: the wrapper relies on that for the depth limit.
    """

    model: type[BaseModel]
    required: bool = True
    parse: Callable[[Any], Awaitable[Any]] | None = None
    from_bytes: Callable[[bytes], Awaitable[Any]] | None = None

    def __post_init__(self) -> None:
        if self.parse is not None and self.from_bytes is not None:
            raise ValueError("a body is parsed either decoded (parse) or from its bytes (from_bytes)")


@dataclass(frozen=True, slots=True)
class Call:
    """What the registry's wrapper established before the handler runs.

    Attributes:
        endpoint: The endpoint the request matched.
        body: The validated JSON object (``{}`` when the endpoint takes no body or it was omitted), as sent: what
            an ``Idempotency-Key`` compares. A body parsed :attr:`Body.from_bytes` is decoded only for that
            (``{}`` on a request without the key).
        parsed: The body's model instance (or what its :attr:`Body.parse` returned); None without a body.
        idempotency_key: The validated ``Idempotency-Key`` header of an endpoint that honours it.
        caller: The authenticated principal (None for a public endpoint); read it as :attr:`principal`.
    """

    endpoint: Endpoint
    body: dict[str, Any] = field(default_factory=dict)
    parsed: Any = None
    idempotency_key: str | None = None
    caller: Principal | None = None

    @property
    def principal(self) -> Principal:
        """The authenticated caller (an endpoint with a scope always has one)."""
        if self.caller is None:
            raise RuntimeError(f"{self.endpoint.operation_id} is public: it has no principal")
        return self.caller

    def answer(self, body: BaseModel, *, headers: Mapping[str, str] | None = None) -> web.Response:
        """The success answer: ``body``, an instance of the endpoint's response model, with its success status.

        The JSON is the model's dump by alias, so what is sent is the published shape (``make schemas``).

        Raises:
            TypeError: ``body`` is not of the endpoint's declared response model.
        """
        model = self.endpoint.response
        if model is None or not isinstance(body, model):
            raise TypeError(f"{self.endpoint.operation_id} answers {model}, not {type(body).__name__}")
        return web.json_response(
            body.model_dump(mode="json", by_alias=True), status=self.endpoint.success, headers=headers
        )


Handler = Callable[[web.Request, Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route and everything known about it.

    Attributes:
        method: HTTP method (upper case).
        path: Route path, aiohttp syntax (``/v1/docs/pages/{slug:.+}``); :data:`RUN_PATH` for the seed alias.
        handler: ``(request, call) -> response``.
        scope: Token scope required; :data:`PUBLIC` (None) for an endpoint that needs no token.
        operation_id: Unique OpenAPI operation id.
        summary: One line.
        tag: Group on the API page.
        success: Success status.
        response: Model of the success body (None: see ``media``).
        body: The request body, or None for an endpoint that reads none.
        params: Path, query and header parameters.
        idempotency_key: Whether ``Idempotency-Key`` is honoured (validated before the body).
        rate: Rate-limit class when not the one its method implies (:func:`rate_class_by_method`).
        errors: Error statuses the endpoint can answer besides the common ones.
        description: Longer text.
        deprecated: Whether the route is a deprecated alias.
        media: Media type of the success body ("" for none, e.g. 204).
        extra_success: Other documented statuses with their body models (e.g. readiness 503).
        success_headers: Headers of the success response besides the trace id and rate-limit ones.
        mounted: Whether an application built with the settings serves the route (default: always); the route
            is documented either way.
    """

    method: Method
    path: str
    handler: Handler
    scope: str | None
    operation_id: str
    summary: str
    tag: str
    success: int
    response: type[BaseModel] | None
    body: Body | None = None
    params: tuple[Param, ...] = ()
    idempotency_key: bool = False
    rate: RateClass | None = None
    errors: tuple[int, ...] = ()
    description: str = ""
    deprecated: bool = False
    media: str = "application/json"
    extra_success: Mapping[int, type[BaseModel]] = field(default_factory=dict)
    success_headers: tuple[str, ...] = ()
    mounted: Callable[[Settings], bool] | None = None

    @property
    def canonical(self) -> str:
        """The path as aiohttp reports a matched route and the contract documents it (``{slug}``)."""
        return _VARIABLE_PATTERN.sub(r"{\1}", self.path)

    @property
    def public(self) -> bool:
        """Whether the endpoint needs no token."""
        return self.scope is None

    @property
    def rate_class(self) -> RateClass:
        """The rate-limit class: ``public`` (per client address) without a scope, else declared or by method."""
        if self.public:
            return "public"
        return self.rate or rate_class_by_method(self.method)

    def bodies(self) -> Iterator[tuple[type[BaseModel], JsonSchemaMode]]:
        """The models of what the endpoint reads and answers, each with the mode it is published in.

        The request body (``validation``), then the success answer and the other documented answers
        (``serialization``): the order ``make schemas`` lists them in (:mod:`schemas.generate`).
        """
        if self.body is not None:
            yield self.body.model, "validation"
        if self.response is not None:
            yield self.response, "serialization"
        for model in self.extra_success.values():
            yield model, "serialization"


def _forbidden(scope: str) -> ApiError:
    return ApiError(403, ErrorCode.AUTHORIZATION_ERROR, f"token lacks the scope {scope}", details={"scope": scope})


async def prepare(endpoint: Endpoint, request: web.Request) -> Call:
    """Check the scope, then the ``Idempotency-Key``, then read the body and parse it with its model.

    Raises:
        ApiError: 403 without the scope, 400 for a malformed key or body, 413/415/422 for the body.
    """
    caller: Principal | None = None
    if endpoint.scope is not None:
        # The auth middleware put a principal on every request to a non-public path.
        caller = request[PRINCIPAL]
        if not caller.has(endpoint.scope):
            raise _forbidden(endpoint.scope)
    key = parse_idempotency_key(request.headers.get("Idempotency-Key")) if endpoint.idempotency_key else None
    spec = endpoint.body
    if spec is None:
        return Call(endpoint=endpoint, idempotency_key=key, caller=caller)
    if spec.from_bytes is not None:
        return await _prepare_from_bytes(endpoint, spec, spec.from_bytes, request, key, caller)
    data = await read_json(request, required=spec.required)
    # The bytes read_json checked (aiohttp keeps them): parsed again by pydantic, straight into the model.
    parsed = parse(spec.model, await request.read()) if spec.parse is None else await spec.parse(data)
    if not isinstance(data, dict):
        raise ApiError(422, ErrorCode.VALIDATION_ERROR, "request body must be a JSON object")
    return Call(endpoint=endpoint, body=data, parsed=parsed, idempotency_key=key, caller=caller)


async def _prepare_from_bytes(
    endpoint: Endpoint,
    spec: Body,
    from_bytes: Callable[[bytes], Awaitable[Any]],
    request: web.Request,
    key: str | None,
    caller: Principal | None,
) -> Call:
    """:func:`prepare` of a body parsed from its bytes: the answers of :func:`api.body.read_json`, decoding less.

    A body the parser accepts is decoded by it alone; :func:`api.body.read_json`'s rules hold all the same: the
    parser (pydantic's JSON reader) refuses invalid UTF-8 and malformed JSON, the model refuses any nesting past
    ``MAX_DEPTH`` (see :attr:`Body.from_bytes`), and bytes that may hold a NUL are decoded and checked first. A
    refused body is decoded and checked before its 422 is answered, so it gets the error it always got (400 for
    malformed or too deep JSON, the NUL 422), in the same order.
    """
    raw = await read_bytes(request, required=spec.required)
    if may_hold_nul(raw):
        decode_json(raw)  # 422 for a real NUL; a false alarm passes on
    try:
        parsed = await from_bytes(raw)
    except ApiError as exc:
        if exc.status == 422:
            decode_json(raw)  # malformed or too deep JSON (400) is answered before what the model found
        raise
    # What an Idempotency-Key compares; the parser accepted the bytes, so they are valid JSON within the limits.
    data = json.loads(raw) if key is not None else {}
    return Call(endpoint=endpoint, body=data, parsed=parsed, idempotency_key=key, caller=caller)


def aiohttp_handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler of an endpoint: :func:`prepare`, then the endpoint's handler."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return await endpoint.handler(request, await prepare(endpoint, request))

    handle.__name__ = getattr(endpoint.handler, "__name__", endpoint.operation_id)
    handle.__doc__ = endpoint.handler.__doc__
    return handle


class Registry:
    """The endpoints of an application, in the order the contract lists them.

    Args:
        endpoints: Each route once.

    Raises:
        ValueError: A (method, path) or an operation id declared twice, a public path with a variable (public
            paths are matched literally, before routing), or a path public for one method and scoped for another.
    """

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._endpoints = tuple(endpoints)
        self._resolved: dict[str, tuple[Endpoint, ...]] = {}
        self._index: dict[str, dict[tuple[str, str], Endpoint]] = {}
        seen: set[tuple[str, str]] = set()
        ids: set[str] = set()
        for endpoint in self._endpoints:
            key = (endpoint.method, endpoint.canonical)
            if key in seen or endpoint.operation_id in ids:
                raise ValueError(f"endpoint {endpoint.method} {endpoint.path} ({endpoint.operation_id}) declared twice")
            if endpoint.public and "{" in endpoint.path:
                raise ValueError(f"public endpoint {endpoint.path} has a path variable")
            seen.add(key)
            ids.add(endpoint.operation_id)
        shared = {e.canonical for e in self._endpoints if not e.public} & self.public_paths()
        if shared:
            # The auth middleware lets every request to a public path through without a token.
            raise ValueError(f"paths both public and scoped: {sorted(shared)}")

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    def resolved(self, run_path: str) -> tuple[Endpoint, ...]:
        """The endpoints with the seed alias at ``run_path``.

        The alias is left out when its path and method are another endpoint's with the same handler: the alias
        configured onto its target is the target itself (``QP_RUN_PATH=/v1/runs``).

        Raises:
            ValueError: ``run_path`` is another endpoint's path and method.
        """
        if run_path not in self._resolved:
            endpoints: list[Endpoint] = []
            for endpoint in self._endpoints:
                if endpoint.path == RUN_PATH:
                    target = next(
                        (e for e in self._endpoints if (e.method, e.canonical) == (endpoint.method, run_path)), None
                    )
                    if target is not None:
                        if target.handler is not endpoint.handler:
                            raise ValueError(f"run_path {run_path} is the path of {target.operation_id}")
                        continue
                    endpoint = replace(endpoint, path=run_path)
                endpoints.append(endpoint)
            self._resolved[run_path] = tuple(endpoints)
            self._index[run_path] = {(e.method, e.canonical): e for e in endpoints}
        return self._resolved[run_path]

    def find(self, method: str, path: str, *, run_path: str) -> Endpoint | None:
        """The endpoint of (method, canonical path), or None."""
        self.resolved(run_path)
        return self._index[run_path].get((method.upper(), path))

    def public_paths(self) -> frozenset[str]:
        """Paths that need no token (the seed alias is never public)."""
        return frozenset(e.path for e in self._endpoints if e.public)

    def add_routes(self, app: web.Application, settings: Settings) -> None:
        """Mount every endpoint the settings serve on ``app``, each behind :func:`aiohttp_handler`."""
        for endpoint in self.resolved(settings.run_path):
            if endpoint.mounted is not None and not endpoint.mounted(settings):
                continue
            handler = aiohttp_handler(endpoint)
            if endpoint.method == "GET":
                app.router.add_get(endpoint.path, handler)  # with HEAD, as aiohttp's route tables add it
            else:
                app.router.add_route(endpoint.method, endpoint.path, handler)


#: Where the server-rendered pages live (``Page``); the bearer-token middleware lets these paths through.
UI_PREFIX = "/ui"


def is_page_path(path: str) -> bool:
    """Tell whether a request path is under :data:`UI_PREFIX` (a page, which authenticates itself)."""
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


@dataclass(frozen=True, slots=True)
class Page:
    """A server-rendered HTML page or form target under :data:`UI_PREFIX` (the review pages).

    Pages are not part of the JSON contract (no OpenAPI entry, no error envelope): each authenticates itself with
    the /ui/ session cookie or a signed review link, answers HTML, and reads form bodies itself. They are declared
    beside the endpoints (``api/endpoints.py``) and mounted by the same application factory.

    Attributes:
        method: ``GET`` or ``POST``.
        path: Route path under :data:`UI_PREFIX`, aiohttp syntax.
        handler: ``(request) -> response``.
        summary: One line (docs/SECURITY.md lists the pages).
    """

    method: Literal["GET", "POST"]
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str

    def __post_init__(self) -> None:
        if not is_page_path(self.path):
            raise ValueError(f"page {self.path} is not under {UI_PREFIX}")


def add_pages(app: web.Application, pages: Iterable[Page]) -> None:
    """Mount the pages on ``app``."""
    for page in pages:
        if page.method == "GET":
            app.router.add_get(page.path, page.handler)
        else:
            app.router.add_post(page.path, page.handler)
