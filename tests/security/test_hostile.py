"""Hostile input over real HTTP: bodies, headers, slow clients, path traversal, header and log injection."""

from __future__ import annotations

import json
import logging
import re

import pytest

from api.openapi import build_openapi
from quantapilot.observability import JsonFormatter
from quantapilot.settings import Settings
from tests.conftest import ApiFactory
from tests.security.support import assert_envelope, fill_path, raw_http
from tests.support import Api


def body_operations(settings: Settings) -> list[tuple[str, str]]:
    """(METHOD, concrete path) of every documented operation that takes a JSON body."""
    document = build_openapi(settings)
    return [
        (method.upper(), fill_path(path))
        for path, item in document["paths"].items()
        for method, op in item.items()
        if "requestBody" in op
    ]


def host_port(api: Api) -> tuple[str, int]:
    server = api.client.server
    assert server.host is not None and server.port is not None
    return server.host, server.port


async def test_hostile_bodies_on_every_json_endpoint(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(settings.model_copy(update={"max_body_bytes": 4096, "rate_limit_enabled": False}))
    cases: list[tuple[str, bytes, str, int, str]] = [
        ("oversized", b'{"a": "' + b"x" * 20_000 + b'"}', "application/json", 413, "PAYLOAD_TOO_LARGE"),
        ("deep nesting", b"[" * 1000 + b"]" * 1000, "application/json", 400, "VALIDATION_ERROR"),
        ("deep objects", b'{"a":' * 100 + b"1" + b"}" * 100, "application/json", 400, "VALIDATION_ERROR"),
        ("invalid utf-8", b'{"reason": "\xc3\x28\xff"}', "application/json", 400, "VALIDATION_ERROR"),
        ("utf-16", '{"approved": true}'.encode("utf-16"), "application/json", 400, "VALIDATION_ERROR"),
        ("not json", b"{'a': 1}", "application/json", 400, "VALIDATION_ERROR"),
        ("form", b"approved=true", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("text", b'{"approved": true}', "text/plain", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("xml", b"<a/>", "application/xml", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("multipart", b"--b\r\n\r\nx\r\n--b--", "multipart/form-data; boundary=b", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ("not an object", b"[1, 2, 3]", "application/json", 422, "VALIDATION_ERROR"),
        ("nan", b'{"value": NaN}', "application/json", 422, "VALIDATION_ERROR"),
    ]
    operations = body_operations(settings)
    assert len(operations) >= 9
    for method, path in operations:
        for name, raw, ctype, status, code in cases:
            resp = await api.client.request(method, path, data=raw, headers=api.headers({"Content-Type": ctype}))
            payload = await resp.json()
            if name == "nan" and status != resp.status:
                # NaN is not JSON: refused either as malformed (400) or by the schema (422), never accepted.
                assert resp.status in (400, 422), (method, path, payload)
                continue
            assert resp.status == status, (name, method, path, payload)
            assert_envelope(payload, code)


async def test_hostile_huge_and_many_headers_are_4xx(api: Api) -> None:
    host, port = host_port(api)
    auth = f"Authorization: Bearer {api.token}\r\n".encode()
    cases = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\n",
        b"GET /v1/runs/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"q" * 50_000 + b"\r\n\r\n",
    ]
    for raw in cases:
        resp = await raw_http(host, port, [raw])
        assert resp is not None
        assert 400 <= resp.status < 500, (raw[:60], resp.status, resp.body[:200])
    # The server still answers afterwards.
    resp = await raw_http(host, port, [b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"])
    assert resp is not None and resp.status == 200


async def test_hostile_slow_clients_are_cut_off(make_api: ApiFactory, settings: Settings) -> None:
    api = await make_api(settings.model_copy(update={"http_keepalive_s": 0.5, "http_body_timeout_s": 0.5}))
    host, port = host_port(api)
    # Connects and sends nothing: closed without an answer.
    assert await raw_http(host, port, [], timeout=5) is None
    # Sends half a request head and stalls: closed without an answer.
    assert await raw_http(host, port, [b"POST /v1/runs HTTP/1.1\r\nHost: x\r\n"], timeout=5) is None
    # Trickles the head a byte at a time: still closed, the deadline runs from the connection's start.
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 20
    assert await raw_http(host, port, [head[i : i + 1] for i in range(len(head))], pause=0.05, timeout=5) is None
    # Sends the head and part of the body, then stalls: 408 with the envelope, and the connection closes.
    head = (
        b"POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
        + f"Authorization: Bearer {api.token}\r\n\r\n".encode()
    )
    resp = await raw_http(host, port, [head + b'{"repo_url": '], timeout=5)
    assert resp is not None
    assert resp.status == 408
    assert_envelope(json.loads(resp.body), "REQUEST_TIMEOUT")
    assert resp.closed


@pytest.mark.parametrize(
    "path",
    [
        "/v1/docs/pages/../../../etc/passwd",
        "/v1/docs/pages/..%2F..%2F..%2Fetc%2Fpasswd",
        "/v1/docs/pages/%2e%2e/%2e%2e/etc/passwd",
        "/v1/docs/pages/a/../../b",
        "/v1/docs/pages/a//b",
        "/v1/docs/pages/a/./b",
        "/v1/docs/pages/a%00b",
        "/v1/docs/pages/%2Fetc%2Fpasswd",
        "/v1/docs/pages/..%5C..%5Cwindows",
        "/v1/runs/..%2F..%2Fhealthz",
        "/v1/runs/rr_00000000000000000000000000000000%2F..%2F..%2Fx/events",
        "/v1/accounts/..%2F..%2Fetc/events",
        "/v1/docs/pages/no-such-page?version=../../etc/passwd",
    ],
)
async def test_hostile_path_traversal_is_refused(api: Api, path: str) -> None:
    host, port = host_port(api)
    raw = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {api.token}\r\nConnection: close\r\n\r\n"
    resp = await raw_http(host, port, [raw.encode()])
    assert resp is not None
    assert resp.status in (400, 404, 422), (path, resp.status, resp.body[:300])
    if resp.headers.get("content-type", "").startswith("application/json"):
        assert_envelope(json.loads(resp.body))
    assert b"root:" not in resp.body


async def test_hostile_correlation_ids_cannot_inject_headers(api: Api, settings: Settings) -> None:
    injected = "abc\r\nX-Injected: 1"
    code, payload = await api.post(
        "/v1/runs", {"repo_url": "https://example.invalid/a", "branch": "main", "correlation_id": injected}
    )
    assert code == 422, payload
    assert_envelope(payload, "VALIDATION_ERROR")
    code, payload = await api.post(
        "/v1/lifecycle/runs",
        {"stage": "opportunity", "accountId": "00000000-0000-4000-8000-000000000000", "correlationId": injected},
    )
    assert code == 422, payload
    for value in ("a\u2028b", "a\u0085b", "a b", "x" * 129):
        code, _ = await api.post(
            "/v1/runs", {"repo_url": "https://e.invalid/a", "branch": "main", "correlation_id": value}
        )
        assert code == 422, value

    # Raw CR/LF inside a header value never becomes a header of the response.
    host, port = host_port(api)
    for smuggled in (b"traceparent: x\rX-Injected: 1\r\n", b"X-Correlation-Id: a\nX-Injected: 1\r\n"):
        raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + smuggled + b"Connection: close\r\n\r\n"
        resp = await raw_http(host, port, [raw])
        assert resp is not None
        assert "x-injected" not in resp.headers, resp.headers
    # A forged traceparent is not echoed: the trace id is always 32 hex digits.
    forged = await api.client.get("/healthz", headers={"traceparent": "00-<script>-x-01"})
    assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["X-Trace-Id"])


async def test_hostile_paths_cannot_forge_log_lines(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await api.client.get("/v1/runs/x%0d%0aFORGED%20line", headers=api.headers())
    await api.client.get("/v1/nothing%0aFORGED", headers=api.headers())
    assert caplog.records
    # The service logs one JSON object per line (QP_LOG_FORMAT=json, the default): a CR/LF from the path stays
    # inside a JSON string.
    formatter = JsonFormatter()
    for record in caplog.records:
        line = formatter.format(record)
        assert "\n" not in line and "\r" not in line, line
        json.loads(line)


async def test_hostile_queries_and_methods(api: Api) -> None:
    base = "/v1/runs/rr_" + "0" * 32
    for path in (
        base + "/events?after=-1",
        base + "/events?after=1e999",
        base + "/events?after=0x10",
        "/v1/docs/pages?project=" + "p" * 5000,
        "/v1/docs/pages/x?version=" + "v" * 5000,
    ):
        resp = await api.client.get(path, headers=api.headers())
        assert resp.status in (400, 404, 422), (path, resp.status, await resp.text())
    for method in ("PUT", "DELETE", "PATCH"):
        resp = await api.client.request(method, "/v1/runs", headers=api.headers())
        payload = await resp.json()
        assert resp.status == 405
        assert_envelope(payload, "METHOD_NOT_ALLOWED")
        assert "POST" in resp.headers["Allow"]


@pytest.mark.parametrize(
    "path",
    ["/v1/runs/rr_" + "0" * 32 + "/events", "/v1/accounts/" + "0" * 8 + "-0000-4000-8000-" + "0" * 12 + "/events"],
)
async def test_hostile_huge_event_cursor_is_400(api: Api, path: str) -> None:
    resp = await api.client.get(path + "?after=" + "9" * 30, headers=api.headers())
    assert resp.status == 400, await resp.text()
