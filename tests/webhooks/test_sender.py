"""The sender against real aiohttp receivers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import TracerProvider

from quantapilot.events.envelope import EventEnvelope
from quantapilot.webhooks.sender import (
    USER_AGENT,
    build_headers,
    parse_retry_after,
    post_event,
    prepare_request,
)
from quantapilot.webhooks.signing import signature_headers, verify_signature
from quantapilot.webhooks.tables import DeliveryOutcome

SECRET = "whsec_test_secret"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Receiver:
    url: str
    port: int
    requests: list[tuple[dict[str, str], bytes, str]] = field(default_factory=list)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Receiver]]]:
    """Start real receivers on 127.0.0.1 (plain or TLS); all stopped after the test."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> Receiver:
        receiver = Receiver(url="", port=0)

        async def record(request: web.Request) -> web.StreamResponse:
            receiver.requests.append((dict(request.headers), await request.read(), request.path_qs))
            return await handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        receiver.port = runner.addresses[-1][1]
        scheme = "https" if ssl_context else "http"
        receiver.url = f"{scheme}://127.0.0.1:{receiver.port}/hook"
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _status(code: int, headers: dict[str, str] | None = None) -> Handler:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers=headers, text="ok")

    return handler


def _signed(body: bytes = b'{"id":"ev_1"}', attempt: int = 1) -> dict[str, str]:
    signatures = signature_headers([SECRET], body, msg_id="ev_1", timestamp=int(datetime.now(UTC).timestamp()))
    return build_headers(event_id="ev_1", event_type="run.started", attempt=attempt, signatures=signatures)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class _StaticResolver:
    """Answers every name with fixed addresses (stands in for DNS records we cannot create here)."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = addresses
        self.calls: list[str] = []

    async def __call__(self, host: str, _port: int) -> Sequence[str]:
        self.calls.append(host)
        return self.addresses


_static_resolver = _StaticResolver


async def test_sender_200_delivered_with_signed_headers(serve, session) -> None:
    receiver = await serve(_status(200))
    envelope = EventEnvelope(
        id="ev_42",
        type="run.started",
        created_at=datetime(2024, 5, 1, tzinfo=UTC),
        workspace="ws1",
        run_id="run_1",
        seq=1,
        data={"repo_url": "https://example.com/r.git", "branch": "main"},
    )
    body, headers = prepare_request(envelope, secrets=[SECRET], attempt=3)
    result = await post_event(session, receiver.url, body, headers, allow_private=True)
    assert result.outcome is DeliveryOutcome.DELIVERED
    assert result.status_code == 200
    assert result.error is None
    assert result.latency_ms > 0
    [(got_headers, got_body, path)] = receiver.requests
    assert got_body == body
    assert path == "/hook"
    assert verify_signature(SECRET, got_headers, got_body)
    assert got_headers["X-VC-Event-Id"] == "ev_42"
    assert got_headers["X-VC-Event-Type"] == "run.started"
    assert got_headers["X-VC-Delivery-Attempt"] == "3"
    assert got_headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("quantapilot-webhooks/")
    assert got_headers["Content-Type"] == "application/json"
    sent = json.loads(got_body)
    assert sent == {
        "id": "ev_42",
        "type": "run.started",
        "created_at": "2024-05-01T00:00:00Z",
        "workspace": "ws1",
        "run_id": "run_1",
        "seq": 1,
        "correlation_id": None,
        "data": {"repo_url": "https://example.com/r.git", "branch": "main"},
    }


async def test_sender_204_and_202_count_as_delivered(serve, session) -> None:
    for code in (202, 204):
        receiver = await serve(_status(code))
        result = await post_event(session, receiver.url, b"{}", _signed(b"{}"), allow_private=True)
        assert result.outcome is DeliveryOutcome.DELIVERED
        assert result.status_code == code


async def test_sender_500_is_retry(serve, session) -> None:
    receiver = await serve(_status(500))
    result = await post_event(session, receiver.url, b"{}", _signed(b"{}"), allow_private=True)
    assert result.outcome is DeliveryOutcome.RETRY
    assert result.status_code == 500
    assert result.retry_after_s is None
    assert result.error == "HTTP 500"


async def test_sender_500_then_200(serve, session) -> None:
    answers = iter([500, 200])

    async def flaky(_request: web.Request) -> web.StreamResponse:
        return web.Response(status=next(answers))

    receiver = await serve(flaky)
    first = await post_event(session, receiver.url, b"{}", _signed(b"{}"), allow_private=True)
    second = await post_event(session, receiver.url, b"{}", _signed(b"{}", 2), allow_private=True)
    assert (first.outcome, second.outcome) == (DeliveryOutcome.RETRY, DeliveryOutcome.DELIVERED)
    assert [h["X-VC-Delivery-Attempt"] for h, _b, _p in receiver.requests] == ["1", "2"]


async def test_sender_410_is_gone(serve, session) -> None:
    receiver = await serve(_status(410))
    result = await post_event(session, receiver.url, b"{}", _signed(b"{}"), allow_private=True)
    assert result.outcome is DeliveryOutcome.GONE
    assert result.status_code == 410


async def test_sender_abort_header_stops_retrying(serve, session) -> None:
    receiver = await serve(_status(422, {"webhook-delivery": "abort"}))
    result = await post_event(session, receiver.url, b"{}", _signed(b"{}"), allow_private=True)
    assert result.outcome is DeliveryOutcome.ABORTED
    assert result.status_code == 422
    assert result.error == "HTTP 422: the receiver asked to stop retrying (webhook-delivery: abort)"


async def test_sender_retry_after_seconds_and_date(serve, session) -> None:
    receiver = await serve(_status(429, {"Retry-After": "120"}))
    result = await post_event(session, receiver.url, b"{}", _signed(b"{}"), allow_private=True)
    assert result.outcome is DeliveryOutcome.RETRY
    assert result.status_code == 429
    assert result.retry_after_s == 120

    when = format_datetime(datetime.now(UTC) + timedelta(seconds=600), usegmt=True)
    receiver = await serve(_status(503, {"Retry-After": when}))
    result = await post_event(session, receiver.url, b"{}", _signed(b"{}"), allow_private=True)
    assert result.retry_after_s is not None
    assert 590 <= result.retry_after_s <= 600


def test_sender_parse_retry_after_edge_cases() -> None:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    assert parse_retry_after(" 7 ") == 7
    assert parse_retry_after("Mon, 01 Jan 2024 00:01:00 GMT", now=now) == 60
    assert parse_retry_after("Sun, 31 Dec 2023 00:00:00 GMT", now=now) == 0


async def test_sender_redirect_not_followed(serve, session) -> None:
    target = await serve(_status(200))
    receiver = await serve(_status(302, {"Location": target.url}))
    result = await post_event(session, receiver.url, b"{}", _signed(b"{}"), allow_private=True)
    assert result.outcome is DeliveryOutcome.RETRY
    assert result.status_code == 302
    assert target.requests == []


async def test_sender_slow_receiver_times_out(serve, session) -> None:
    release = asyncio.Event()

    async def slow(_request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=200)

    receiver = await serve(slow)
    try:
        result = await post_event(session, receiver.url, b"{}", _signed(b"{}"), allow_private=True, timeout_s=0.3)
    finally:
        release.set()
    assert result.outcome is DeliveryOutcome.RETRY
    assert result.status_code is None
    assert result.error is not None
    assert "timeout" in result.error
    assert 250 <= result.latency_ms < 5000
    assert len(receiver.requests) == 1


async def test_sender_connection_refused_is_retry_without_secrets(session) -> None:
    url = f"http://127.0.0.1:{_free_port()}/hook?token=very-secret-token"
    headers = _signed(b"{}")
    result = await post_event(session, url, b"{}", headers, allow_private=True)
    assert result.outcome is DeliveryOutcome.RETRY
    assert result.status_code is None
    assert result.error is not None
    assert "refused" in result.error.lower()
    dumped = result.model_dump_json()
    for leaked in ("very-secret-token", "127.0.0.1", headers["X-VC-Signature"], SECRET):
        assert leaked not in dumped


async def test_sender_unsafe_url_rejected_without_request(serve, session) -> None:
    receiver = await serve(_status(200))
    result = await post_event(session, receiver.url, b"{}", _signed(b"{}"), allow_private=False)
    assert result.outcome is DeliveryOutcome.REJECTED_UNSAFE
    assert result.error == "unsafe url: loopback_address"
    assert receiver.requests == []


async def test_sender_rebinding_name_to_private_rejected(serve, session) -> None:
    receiver = await serve(_status(200))
    resolver = _static_resolver(["127.0.0.1"])
    url = f"http://hooks.example.com:{receiver.port}/hook"
    result = await post_event(session, url, b"{}", _signed(b"{}"), allow_private=False, resolver=resolver)
    assert result.outcome is DeliveryOutcome.REJECTED_UNSAFE
    assert receiver.requests == []


async def test_sender_connects_to_checked_address_not_a_second_lookup(serve, session) -> None:
    # "hooks.test" is not in DNS: the request can only arrive if the sender pinned the checked address.
    receiver = await serve(_status(200))
    resolver = _static_resolver(["127.0.0.1"])
    url = f"http://hooks.test:{receiver.port}/hook?x=1"
    result = await post_event(session, url, b"{}", _signed(b"{}"), allow_private=True, resolver=resolver)
    assert result.outcome is DeliveryOutcome.DELIVERED
    assert resolver.calls == ["hooks.test"]
    [(headers, _body, path)] = receiver.requests
    assert headers["Host"] == f"hooks.test:{receiver.port}"
    assert path == "/hook?x=1"


async def test_sender_falls_back_to_next_address(serve, session) -> None:
    receiver = await serve(_status(200))
    # 127.0.0.2 is loopback too but nothing listens on this port there.
    resolver = _static_resolver(["127.0.0.2", "127.0.0.1"])
    url = f"http://hooks.test:{receiver.port}/hook"
    result = await post_event(session, url, b"{}", _signed(b"{}"), allow_private=True, resolver=resolver)
    assert result.outcome is DeliveryOutcome.DELIVERED
    assert len(receiver.requests) == 1


async def test_sender_dns_failure_is_retry(session) -> None:
    async def failing(_host: str, _port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    result = await post_event(
        session, "https://hooks.example.com/", b"{}", _signed(b"{}"), allow_private=False, resolver=failing
    )
    assert result.outcome is DeliveryOutcome.RETRY
    assert result.error == "dns resolution failed"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name hooks.test, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl CLI not available")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=hooks.test",
            "-addext", "subjectAltName=DNS:hooks.test",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_sender_https_pinned_address_keeps_sni_and_cert_check(serve, tls_files) -> None:
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    receiver = await serve(_status(200), ssl_context=server_ctx)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    resolver = _static_resolver(["127.0.0.1"])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as tls_session:
        ok = await post_event(
            tls_session,
            f"https://hooks.test:{receiver.port}/hook",
            b"{}",
            _signed(b"{}"),
            allow_private=True,
            resolver=resolver,
        )
        assert ok.outcome is DeliveryOutcome.DELIVERED
        # The same server under another name fails certificate verification: the name is really checked.
        other = _static_resolver(["127.0.0.1"])
        bad = await post_event(
            tls_session,
            f"https://other.test:{receiver.port}/hook",
            b"{}",
            _signed(b"{}"),
            allow_private=True,
            resolver=other,
        )
    assert bad.outcome is DeliveryOutcome.RETRY
    assert bad.error is not None
    assert "tls" in bad.error
    assert len(receiver.requests) == 1


def test_sender_traceparent_parents_on_the_current_span_of_the_events_trace() -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    envelope = EventEnvelope(
        id="ev_43",
        type="run.started",
        created_at=datetime(2024, 5, 1, tzinfo=UTC),
        workspace="ws1",
        run_id="run_1",
        seq=1,
        data={},
        trace_id=trace_id,
    )
    _, headers = prepare_request(envelope, secrets=[SECRET], attempt=1)
    # No span (tracing off): a fresh span id per attempt, in the event's trace.
    version, sent_trace, parent, flags = headers["traceparent"].split("-")
    assert (version, sent_trace, flags) == ("00", trace_id, "01") and re.fullmatch(r"[0-9a-f]{16}", parent)
    assert prepare_request(envelope, secrets=[SECRET], attempt=2)[1]["traceparent"].split("-")[2] != parent

    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    in_trace = otel_trace.set_span_in_context(
        otel_trace.NonRecordingSpan(
            otel_trace.SpanContext(
                int(trace_id, 16), 0x00F067AA0BA902B7, is_remote=True, trace_flags=otel_trace.TraceFlags(1)
            )
        )
    )
    with tracer.start_as_current_span("RunActivity:deliver", context=in_trace) as span:
        _, headers = prepare_request(envelope, secrets=[SECRET], attempt=1)
        assert (
            headers["traceparent"] == f"00-{trace_id}-{otel_trace.format_span_id(span.get_span_context().span_id)}-01"
        )
    # A span of another trace is not the event's: the parent is a fresh id again.
    with tracer.start_as_current_span("elsewhere") as other:
        _, headers = prepare_request(envelope, secrets=[SECRET], attempt=1)
        assert headers["traceparent"].split("-")[1] == trace_id
        assert headers["traceparent"].split("-")[2] != otel_trace.format_span_id(other.get_span_context().span_id)
