"""The published contract: the endpoint registry vs the router, the handlers, the document, the schema files, the
error codes, scopes, rate classes and the page."""

from __future__ import annotations

import inspect
import re
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, get_args

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy.engine import Engine

import schemas
from api import (
    contract_routes,
    docs_routes,
    health_routes,
    lifecycle_routes,
    metrics_routes,
    run_routes,
    webhook_routes,
)
from api.app import create_app
from api.auth import PUBLIC_PATHS
from api.endpoints import ENDPOINTS, PAGES
from api.openapi import COMPONENT_PREFIX, SCHEMA_FILES, build_openapi, component_name, documented_routes
from api.ratelimit import RouteClass, route_class
from api.registry import RateClass, is_page_path
from quantapilot.db import utcnow
from quantapilot.errors import ErrorCode
from quantapilot.settings import Settings
from quantapilot.tokens import ALL_SCOPES, create_token
from tests.conftest import ApiFactory
from tests.security.support import assert_envelope, fill_path
from tests.support import Api


def router_routes(settings: Settings) -> set[tuple[str, str]]:
    """(METHOD, canonical path) of every route of an application built with ``settings``."""
    app = create_app(settings)
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"  # aiohttp adds HEAD to every GET
    }


@pytest.mark.parametrize("run_path", ["/run", "/v1/runs", "/trigger"])
def test_contract_documents_exactly_the_routes_of_the_router(tmp_path: Path, run_path: str) -> None:
    settings = Settings(state_dir=tmp_path, run_path=run_path)
    routes = router_routes(settings)
    # The HTML pages under /ui/ are outside the JSON contract: exactly the declared PAGES, and nothing else there.
    pages = {(m, p) for m, p in routes if is_page_path(p)}
    assert pages == {(page.method, page.path.replace("{slug:.+}", "{slug}")) for page in PAGES}
    mounted = routes - pages
    documented = documented_routes(build_openapi(settings))
    assert not any(is_page_path(p) for _, p in documented)
    assert mounted - documented == set(), "routes not declared in api/endpoints.py"
    assert documented - mounted == set(), "documented operations without a route"
    assert ("POST", run_path) in documented


def _walk_refs(node: Any) -> list[str]:
    refs: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str):
                refs.append(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return refs


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def test_contract_components_are_the_schema_files_definitions(tmp_path: Path) -> None:
    document = build_openapi(Settings(state_dir=tmp_path))
    components = document["components"]["schemas"]
    for name, root in SCHEMA_FILES.items():
        source = schemas.load(name)
        defs = source.get("$defs", {})
        assert defs or root, name
        back = {(f"{root}.{d}" if root else d): d for d in defs}

        def unrewrite(node: Any, back: dict[str, str] = back) -> Any:
            if isinstance(node, dict):
                return {
                    k: ("#/$defs/" + back[v.removeprefix(COMPONENT_PREFIX)] if k == "$ref" else unrewrite(v))
                    for k, v in node.items()
                }
            if isinstance(node, list):
                return [unrewrite(v) for v in node]
            return node

        for component, definition in back.items():
            assert unrewrite(components[component]) == defs[definition], (name, definition)
        if root:
            expected = {k: v for k, v in source.items() if k not in ("$defs", "$id", "$schema")}
            assert unrewrite(components[root]) == expected, name
    # Every reference in the document resolves, and every component is a valid 2020-12 schema.
    for ref in _walk_refs(document):
        assert _resolve(document, ref) is not None, ref
    for name, schema in components.items():
        Draft202012Validator.check_schema(schema), name


ROUTE_MODULES = (
    run_routes,
    health_routes,
    lifecycle_routes,
    docs_routes,
    webhook_routes,
    contract_routes,
    metrics_routes,
)


def test_contract_request_bodies_are_the_ones_the_registry_validates(tmp_path: Path) -> None:
    document = build_openapi(Settings(state_dir=tmp_path, run_path="/run"))
    bodies = {
        (method.upper(), path): op["requestBody"]
        for path, item in document["paths"].items()
        for method, op in item.items()
        if "requestBody" in op
    }
    declared = {}
    for endpoint in ENDPOINTS.resolved("/run"):
        if endpoint.body is None:
            continue
        name = component_name(endpoint.body.model)
        assert name in document["components"]["schemas"], (endpoint.operation_id, name)
        declared[(endpoint.method, endpoint.canonical)] = {
            "required": endpoint.body.required,
            "content": {"application/json": {"schema": {"$ref": COMPONENT_PREFIX + name}}},
        }
    assert bodies == declared
    # The triggers and the webhook writes at least: a registry that lost its bodies would pass the comparison.
    assert len(declared) >= 12


def test_contract_handlers_leave_scope_key_and_body_to_the_registry() -> None:
    handlers = {endpoint.handler for endpoint in ENDPOINTS}
    for module in ROUTE_MODULES:
        for name, function in inspect.getmembers(module, inspect.iscoroutinefunction):
            if function.__module__ != module.__name__:
                continue
            if list(inspect.signature(function).parameters) == ["request", "call"]:
                assert function in handlers, f"{module.__name__}.{name} is a handler no endpoint declares"
    for handler in handlers:
        source = inspect.getsource(handler)
        for by_hand in ("read_json(", "validate(", "principal_of(", "PRINCIPAL", "parse_idempotency_key("):
            assert by_hand not in source, (handler.__qualname__, by_hand)


async def test_contract_every_declared_body_is_validated_before_the_handler(api: Api) -> None:
    checked = 0
    for endpoint in ENDPOINTS.resolved("/run"):
        if endpoint.body is None:
            continue
        # An array matches no request schema (every body is an object): the wrapper answers before any lookup.
        resp = await api.client.request(endpoint.method, fill_path(endpoint.canonical), json=[], headers=api.headers())
        payload = await resp.json()
        assert resp.status == 422, (endpoint.operation_id, payload)
        assert_envelope(payload, "VALIDATION_ERROR")
        checked += 1
    assert checked >= 12


async def test_contract_public_paths_are_the_public_endpoints(make_api: ApiFactory, settings: Settings) -> None:
    assert {e.path for e in ENDPOINTS if e.scope is None} == PUBLIC_PATHS
    assert {"/healthz", "/readyz", "/v1/openapi.json"} <= PUBLIC_PATHS
    # A request per endpoint from one address, none with a token: more than its unauthenticated bucket holds.
    api = await make_api(settings.model_copy(update={"rate_limit_enabled": False}))
    for endpoint in ENDPOINTS.resolved("/run"):
        resp = await api.client.request(endpoint.method, fill_path(endpoint.canonical), json={})
        if endpoint.scope is None:
            assert resp.status != 401, endpoint.operation_id
        else:
            assert resp.status == 401, endpoint.operation_id
            assert_envelope(await resp.json(), "AUTHENTICATION_ERROR")


@pytest.mark.parametrize("run_path", ["/run", "/trigger"])
def test_contract_rate_classes_are_the_registrys(tmp_path: Path, run_path: str) -> None:
    assert set(get_args(RateClass)) <= {c.value for c in RouteClass}
    document = build_openapi(Settings(state_dir=tmp_path, run_path=run_path))
    for endpoint in ENDPOINTS.resolved(run_path):
        cls = route_class(endpoint.method, endpoint.canonical, run_path=run_path)
        assert cls == RouteClass(endpoint.rate_class), endpoint.operation_id
        op = document["paths"][endpoint.canonical][endpoint.method.lower()]
        assert op["x-rate-limit-class"] == (cls.value if endpoint.scope else None), endpoint.operation_id
    assert route_class("POST", run_path, run_path=run_path) == RouteClass.TRIGGERS
    # A path no endpoint declares is classed by its method.
    assert route_class("GET", "/v1/nothing", run_path=run_path) == RouteClass.READS
    assert route_class("POST", "/v1/nothing", run_path=run_path) == RouteClass.CONTROL


def test_contract_error_codes_agree_with_the_enum() -> None:
    codes = schemas.load("error.schema.json")["$defs"]["ErrorCode"]["oneOf"]
    assert [c["const"] for c in codes] == [c.value for c in ErrorCode]
    assert all(c["description"].strip() for c in codes)
    # The envelope the server builds is the published one, codes included.
    assert_envelope(
        {"error": {"code": "NOT_FOUND", "message": "x", "traceId": "a" * 32, "timestamp": "2026-01-01T00:00:00Z"}}
    )
    with pytest.raises(AssertionError):
        assert_envelope(
            {
                "error": {
                    "code": "NO_SUCH_CODE",
                    "message": "x",
                    "traceId": "a" * 32,
                    "timestamp": "2026-01-01T00:00:00Z",
                }
            }
        )


def test_contract_every_error_status_carries_the_envelope(tmp_path: Path) -> None:
    document = build_openapi(Settings(state_dir=tmp_path))
    shared = document["components"]["responses"]
    for path, item in document["paths"].items():
        for method, op in item.items():
            for status, response in op["responses"].items():
                if int(status) < 400 or (path == "/readyz" and status == "503"):
                    continue
                resolved = shared[response["$ref"].rsplit("/", 1)[-1]]
                schema = resolved["content"]["application/json"]["schema"]
                assert schema == {"$ref": COMPONENT_PREFIX + "ErrorResponse"}, (method, path, status)
            if op["security"]:
                assert {"401", "403", "429"} <= set(op["responses"]), (method, path)


async def test_contract_openapi_and_page_are_public(api: Api, settings: Settings) -> None:
    resp = await api.client.get("/v1/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert await resp.json() == build_openapi(settings)

    resp = await api.client.get("/v1/docs/api")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert "script" not in resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert "<script" not in page.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.IGNORECASE), "external resource"
    assert "Bearer &lt;token&gt;" in page  # document text is escaped
    document = build_openapi(settings)
    for item in document["paths"].values():
        for op in item.values():
            assert f'id="op-{op["operationId"]}"' in page
    for code in ErrorCode:
        assert f"<code>{code.value}</code>" in page


async def test_contract_seed_alias_sends_deprecation_and_sunset(api: Api) -> None:
    body = {"repo_url": "https://example.invalid/a", "branch": "main"}
    resp = await api.client.post("/run", json=body, headers=api.headers())
    payload = await resp.json()
    assert resp.status == 202, payload
    assert re.fullmatch(r"@\d+", resp.headers["Deprecation"])
    assert parsedate_to_datetime(resp.headers["Sunset"]) > utcnow()
    assert resp.headers["Link"] == '</v1/runs>; rel="successor-version"'
    assert "POST /v1/runs" in payload["deprecationNotice"]

    resp = await api.client.post("/v1/runs", json=body, headers=api.headers())
    payload = await resp.json()
    assert resp.status == 202, payload
    assert "Deprecation" not in resp.headers and "Sunset" not in resp.headers
    assert "deprecationNotice" not in payload


async def test_contract_each_endpoint_requires_its_documented_scope(
    api: Api, engine: Engine, settings: Settings
) -> None:
    document = build_openapi(settings)
    checked = 0
    for path, item in document["paths"].items():
        for method, op in item.items():
            scope = op["x-required-scope"]
            if scope is None:
                assert op["security"] == []
                continue
            assert op["security"] == [{"bearerAuth": [scope]}]
            url = fill_path(path)
            without, _ = create_token(
                engine, workspace="default", subject="s", scopes=[s for s in ALL_SCOPES if s != scope]
            )
            only, _ = create_token(engine, workspace="default", subject="s", scopes=[scope])
            for token, refused in ((without, True), (only, False)):
                resp = await api.client.request(
                    method.upper(), url, json={}, headers={"Authorization": f"Bearer {token}"}
                )
                payload = await resp.json()
                if refused:
                    assert resp.status == 403, (method, path, payload)
                    assert_envelope(payload, "AUTHORIZATION_ERROR")
                    assert payload["error"]["details"] == {"scope": scope}
                    assert scope in payload["error"]["message"]
                else:
                    assert resp.status != 403, (method, path, payload)
            checked += 1
    assert checked >= 12


def test_contract_security_doc_lists_every_endpoint_with_its_scope(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "SECURITY.md").read_text(encoding="utf-8")
    rows = re.findall(
        r"^\| (GET|POST|PUT|PATCH|DELETE) \| `([^`]+)`[^|]* \| ([^|]+) \| ([^|]+) \|$", text, re.MULTILINE
    )
    table = {(m, p): (s.strip().strip("`"), c.strip()) for m, p, s, c in rows}
    document = build_openapi(Settings(state_dir=tmp_path))
    expected = {
        (method.upper(), path): (op["x-required-scope"] or "public", op["x-rate-limit-class"] or "-")
        for path, item in document["paths"].items()
        for method, op in item.items()
    }
    assert table == expected


def test_contract_every_schema_file_is_published_or_not_an_http_body() -> None:
    # Files that describe no HTTP body (a repository's config file, a docs page's front matter).
    not_http = {"quantapilot.schema.json", "frontmatter.schema.json"}
    files = {p.name for p in schemas.SCHEMA_DIR.glob("*.schema.json")}
    assert files == set(SCHEMA_FILES) | not_http, "publish the new schema file in api/openapi.py SCHEMA_FILES"


async def test_contract_no_worker_to_answer_is_a_documented_503(make_api: ApiFactory, settings: Settings) -> None:
    # A run whose task queue no worker polls: its status query and cancel wait for a worker that never answers.
    api = await make_api(settings.model_copy(update={"temporal_rpc_timeout_s": 1.0}))
    code, run = await api.post("/v1/runs", {"repo_url": "file:///nowhere/x.git", "branch": "main"})
    assert code == 202, run
    document = build_openapi(settings)
    for method, template in (("GET", "/v1/runs/{run_id}"), ("POST", "/v1/runs/{run_id}/cancel")):
        resp = await api.client.request(method, template.format(run_id=run["run_id"]), headers=api.headers())
        body = await resp.json()
        assert resp.status == 503, (method, resp.status, body)
        assert_envelope(body, "SERVICE_UNAVAILABLE")
        assert int(resp.headers["Retry-After"]) > 0
        documented = document["paths"][template][method.lower()]["responses"]
        assert "503" in documented, (method, template, sorted(documented))
        shared = document["components"]["responses"][documented["503"]["$ref"].rsplit("/", 1)[-1]]
        assert "Retry-After" in shared["headers"]


def test_contract_every_authenticated_operation_documents_its_dependency_statuses(tmp_path: Path) -> None:
    document = build_openapi(Settings(state_dir=tmp_path))
    for path, item in document["paths"].items():
        for method, op in item.items():
            # Any request may carry a body that arrives late or too large; any may meet an unexpected failure; any
            # may be over a rate limit (the token's route class, or the client address for public endpoints and
            # requests without a valid token).
            assert {"405", "408", "413", "429", "500"} <= set(op["responses"]), (method, path)
            if op["security"]:
                # The token lookup alone reads the database: 503 (with Retry-After) when it does not answer.
                assert {"401", "403", "503"} <= set(op["responses"]), (method, path)
