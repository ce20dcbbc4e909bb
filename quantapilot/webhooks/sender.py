"""One webhook HTTP delivery: envelope, signed headers, SSRF re-check, POST, outcome.

:func:`post_event` never raises for network trouble; it reports the answer as a
:class:`~quantapilot.webhooks.tables.DeliveryResult`, classified by
:func:`quantapilot.webhooks.delivery.classify_answer`, which the delivery state machine records and acts on.

DNS rebinding: the URL is resolved and checked on every attempt, and the request is then sent to the
checked IP address itself (the URL's host is kept in the ``Host`` header and, for https, as the TLS server
name for SNI and certificate verification). A second resolution that could return a different address never
happens, so there is no window between check and connect. Residual caveat: if the caller's session routes
through an HTTP proxy (``trust_env=True`` with proxy variables), the proxy connects on our behalf; delivery
sessions should not use one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets as secrets_module
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib import metadata

import aiohttp
from yarl import URL

from quantapilot.events.envelope import EventEnvelope
from quantapilot.tracing import current_span_id
from quantapilot.webhooks.delivery import ABORT_HEADER, ABORTED_ERROR, classify_answer
from quantapilot.webhooks.signing import signature_headers
from quantapilot.webhooks.tables import DeliveryOutcome, DeliveryResult
from quantapilot.webhooks.urlsafety import Resolver, UnsafeUrlError, check_url

EVENT_ID_HEADER = "X-VC-Event-Id"
EVENT_TYPE_HEADER = "X-VC-Event-Type"
ATTEMPT_HEADER = "X-VC-Delivery-Attempt"
DEFAULT_TIMEOUT_S = 10.0

# Only a little of the answer is read (so keep-alive connections can be reused); receivers owe us no body.
_MAX_RESPONSE_BYTES = 64 * 1024


def _version() -> str:
    try:
        return metadata.version("quantapilot")
    except metadata.PackageNotFoundError:
        return "0"


USER_AGENT = f"quantapilot-webhooks/{_version()}"


_TRACE_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def build_headers(*, event_id: str, event_type: str, attempt: int, signatures: Mapping[str, str]) -> dict[str, str]:
    """Build the request headers of a webhook delivery.

    Args:
        event_id: The event id (consumers drop duplicates by it).
        event_type: The dotted event type.
        attempt: Attempt number, from 1.
        signatures: The signature headers from :func:`quantapilot.webhooks.signing.signature_headers`.

    Returns:
        The headers.
    """
    return {
        **signatures,
        EVENT_ID_HEADER: event_id,
        EVENT_TYPE_HEADER: event_type,
        ATTEMPT_HEADER: str(attempt),
        "User-Agent": USER_AGENT,
        "Content-Type": "application/json",
    }


def prepare_request(
    envelope: EventEnvelope, *, secrets: Sequence[str], attempt: int, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """Serialise and sign an event for one attempt.

    Args:
        envelope: The event.
        secrets: The endpoint's active secrets, newest first.
        attempt: Attempt number, from 1.
        timestamp: Signing time (Unix seconds); defaults to now. Signed fresh per attempt so a retry days
            later still passes the receiver's tolerance check.

    Returns:
        ``(body, headers)``.
    """
    body = envelope.to_body()
    signed_at = int(time.time()) if timestamp is None else timestamp
    signatures = signature_headers(secrets, body, msg_id=envelope.id, timestamp=signed_at)
    headers = build_headers(event_id=envelope.id, event_type=envelope.type, attempt=attempt, signatures=signatures)
    if envelope.trace_id and _TRACE_ID_RE.match(envelope.trace_id):
        # In the run's trace (W3C Trace Context, sampled): the parent is the delivering activity's span when
        # tracing is on and it is in that trace, else a fresh span id per attempt.
        parent = current_span_id(envelope.trace_id) or secrets_module.token_hex(8)
        headers["traceparent"] = f"00-{envelope.trace_id}-{parent}-01"
    return body, headers


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header (delay in seconds, or an HTTP date).

    Args:
        value: The header value.
        now: Current time for HTTP dates; defaults to the clock.

    Returns:
        Seconds to wait (0 for a date in the past), or None when absent or unparseable.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; parsedate returns naive for "-0000".
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _describe(exc: BaseException) -> str:
    # Built from the error class and errno only: aiohttp's own messages contain host names and IP addresses,
    # which must not reach the delivery log (events and logs carry no addresses).
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "tls certificate verification failed"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return "tls handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        code = exc.os_error.errno
        reason = os.strerror(code) if code else "unknown error"
        return f"connection failed: {reason}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno:
        return f"connection error: {os.strerror(exc.errno)}"
    return f"request failed: {type(exc).__name__}"


def _elapsed_ms(started: float) -> float:
    return max(0.0, (time.perf_counter() - started) * 1000)


async def post_event(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    allow_private: bool,
    resolver: Resolver | None = None,
) -> DeliveryResult:
    """POST one signed event to a webhook endpoint and classify the answer.

    Args:
        session: HTTP session (shared across deliveries for connection reuse).
        url: The endpoint URL.
        body: The signed body.
        headers: The headers from :func:`build_headers`.
        timeout_s: Time allowed for the whole attempt (connect, send, answer); success is a 2xx within it.
        allow_private: Admit non-public addresses (operator setting; metadata addresses stay refused).
        resolver: Resolver for the safety check (tests); defaults to ``getaddrinfo``.

    Returns:
        ``rejected_unsafe`` when the URL is refused now, otherwise the outcome
        :func:`~quantapilot.webhooks.delivery.classify_answer` gives the status (None when no answer came:
        timeouts, connection errors; redirects are not followed), with ``Retry-After`` parsed when the receiver
        sent it.
    """
    started = time.perf_counter()
    try:
        addresses = await check_url(url, allow_private=allow_private, resolver=resolver)
    except UnsafeUrlError as exc:
        return DeliveryResult(
            outcome=DeliveryOutcome.REJECTED_UNSAFE,
            latency_ms=_elapsed_ms(started),
            error=f"unsafe url: {exc.reason}",
        )
    except OSError:
        # A name that does not resolve today may resolve tomorrow (DNS outage, endpoint being moved): retry.
        return DeliveryResult(
            outcome=classify_answer(None), latency_ms=_elapsed_ms(started), error="dns resolution failed"
        )

    parsed = URL(url)
    send_headers = dict(headers)
    # The connection goes to the checked IP; the receiver still sees its own name.
    send_headers["Host"] = parsed.host_port_subcomponent or parsed.raw_host or ""
    server_hostname = parsed.raw_host if parsed.scheme == "https" else None
    status: int | None = None
    retry_after: float | None = None
    delivery_header: str | None = None
    latency_ms = 0.0
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            for index, address in enumerate(addresses):
                target = parsed.with_host(address)
                try:
                    async with session.post(
                        target,
                        data=body,
                        headers=send_headers,
                        allow_redirects=False,
                        server_hostname=server_hostname,
                        timeout=aiohttp.ClientTimeout(total=timeout_s),
                    ) as response:
                        status = response.status
                        latency_ms = _elapsed_ms(started)
                        retry_after = parse_retry_after(response.headers.get("Retry-After"))
                        delivery_header = response.headers.get(ABORT_HEADER)
                        # The status is what counts; a broken body only costs the keep-alive.
                        with contextlib.suppress(aiohttp.ClientError):
                            await response.content.read(_MAX_RESPONSE_BYTES)
                    break
                except aiohttp.ClientConnectorError:
                    # Like happy eyeballs: an unreachable address is not a verdict while others remain.
                    if index == len(addresses) - 1:
                        raise
    except TimeoutError:
        if status is None:
            return DeliveryResult(
                outcome=classify_answer(None),
                latency_ms=_elapsed_ms(started),
                error=f"timeout: no answer within {timeout_s:g} s",
            )
    except aiohttp.ClientError as exc:
        if status is None:
            return DeliveryResult(outcome=classify_answer(None), latency_ms=_elapsed_ms(started), error=_describe(exc))

    assert status is not None  # every path that leaves it None returned above
    outcome = classify_answer(status, delivery_header=delivery_header)
    if outcome is DeliveryOutcome.ABORTED:
        return DeliveryResult(
            outcome=outcome, status_code=status, latency_ms=latency_ms, error=f"HTTP {status}: {ABORTED_ERROR}"
        )
    if outcome is DeliveryOutcome.DELIVERED:
        return DeliveryResult(outcome=outcome, status_code=status, latency_ms=latency_ms)
    if outcome is DeliveryOutcome.GONE:
        return DeliveryResult(outcome=outcome, status_code=status, latency_ms=latency_ms, error="HTTP 410 Gone")
    return DeliveryResult(
        outcome=outcome,
        status_code=status,
        latency_ms=latency_ms,
        retry_after_s=retry_after,
        error=f"HTTP {status}",
    )
