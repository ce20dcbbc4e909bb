"""Server-side request forgery (SSRF) guard for webhook URLs.

A webhook URL is chosen by a tenant but fetched by our workers, from inside our network. Without a guard it
could point at loopback services, the private network or the cloud metadata service and read credentials.
Two checks:

* :func:`check_url_syntax` at API time (no DNS): scheme, credentials, host, port, literal IP addresses.
* :func:`check_url` at delivery time: resolves the host and refuses when *any* address is non-public, so a
  name that resolves to both a public and a private address (or that was re-pointed after registration: DNS
  rebinding) is refused. The sender then connects to one of the returned addresses, so the address checked
  is the address used.

``allow_private`` (operator setting ``QP_WEBHOOK_ALLOW_PRIVATE``, used by tests and ``qp up``) admits
loopback, private, link-local, CGNAT and other non-global addresses. Cloud metadata addresses stay refused
even then: no legitimate webhook consumer lives there, and reaching it from a worker would leak the worker's
cloud credentials.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolve ``(host, port)`` to IP address strings; the default uses ``loop.getaddrinfo``."""

ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
MAX_URL_LENGTH: Final = 2048
MAX_HOST_LENGTH: Final = 253

# Instance metadata services: AWS/GCP/Azure/OCI (169.254.169.254), AWS ECS task metadata (169.254.170.2),
# AWS IPv6 (fd00:ec2::254), Alibaba Cloud (100.100.100.200).
METADATA_ADDRESSES: Final[frozenset[IPAddress]] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("169.254.170.2"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
    }
)
# A host name as DNS knows it, once IDNA-encoded: letters, digits, hyphens, underscores (SRV-style names), dots.
_HOST_BYTES: Final = re.compile(rb"[A-Za-z0-9_.-]+")
_CGNAT: Final = ipaddress.ip_network("100.64.0.0/10")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


class UnsafeUrlError(ValueError):
    """A webhook URL that must not be fetched.

    Attributes:
        reason: Stable machine-readable reason (e.g. ``scheme_not_allowed``, ``private_address``); the message
            is for people and never contains the URL's credentials or query.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    # IPv6 forms that carry an IPv4 address the kernel or a gateway may route to: mapped, 6to4 and NAT64.
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify_address(ip: IPAddress) -> str | None:
    """Say why an address is not a public unicast address.

    Args:
        ip: The address.

    Returns:
        A reason (``metadata_address``, ``unspecified_address``, ``loopback_address``,
        ``link_local_address``, ``multicast_address``, ``shared_address`` (CGNAT 100.64/10),
        ``private_address``, ``reserved_address``, ``non_global_address``), or None for a public address.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return classify_address(embedded)
    if ip in METADATA_ADDRESSES:
        return "metadata_address"
    if ip.is_unspecified:
        return "unspecified_address"
    if ip.is_loopback:
        return "loopback_address"
    if ip.is_link_local:
        return "link_local_address"
    if ip.is_multicast:
        return "multicast_address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT:
        return "shared_address"
    if ip.is_private:
        return "private_address"
    if ip.is_reserved:
        return "reserved_address"
    if not ip.is_global:
        return "non_global_address"
    return None


def check_address(ip: IPAddress, *, allow_private: bool) -> None:
    """Refuse an address the policy does not admit (the one decision webhooks and repository clones share).

    Args:
        ip: The address, as resolved or as written.
        allow_private: Admit loopback, private, link-local and other non-global addresses (never metadata).

    Raises:
        UnsafeUrlError: With the reason of :func:`classify_address`.
    """
    reason = classify_address(ip)
    if reason is None:
        return
    if allow_private and reason != "metadata_address":
        return
    raise UnsafeUrlError(reason, f"URL host resolves to a refused address ({reason})")


def _parse(url: str) -> URL:
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrlError("invalid_url", f"webhook URL is longer than {MAX_URL_LENGTH} characters")
    # Control characters and spaces could smuggle headers into the request line; no valid URL has them.
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise UnsafeUrlError("invalid_url", "webhook URL contains whitespace or control characters")
    try:
        parsed = URL(url)
        port = parsed.port
        # yarl decodes the host lazily: a bad punycode label ("xn--zz") raises here, not in URL().
        _ = parsed.host
    except (ValueError, TypeError) as exc:
        raise UnsafeUrlError("invalid_url", "webhook URL cannot be parsed") from exc
    if parsed.scheme not in ALLOWED_SCHEMES:
        raise UnsafeUrlError("scheme_not_allowed", "webhook URL must be absolute and use http or https")
    if parsed.raw_user is not None or parsed.raw_password is not None:
        # Credentials in a URL end up in logs and delivery lists; receivers authenticate us by signature.
        raise UnsafeUrlError("credentials_not_allowed", "webhook URL must not contain user credentials")
    if not parsed.raw_host:
        raise UnsafeUrlError("missing_host", "webhook URL has no host")
    if port is None or not 0 < port < 65536:
        raise UnsafeUrlError("invalid_port", "webhook URL has an invalid port")
    check_host_syntax(_host_of(parsed))
    return parsed


def _host_of(parsed: URL) -> str:
    # The IDNA (punycode) form of a name, which is what DNS knows; an IPv6 literal with its zone id decoded.
    raw = parsed.raw_host or ""
    return (parsed.host or "") if ":" in raw else raw


def check_host_syntax(host: str) -> None:
    """Refuse a host that no resolver can take: the resolver would fail on it with an error that is not a verdict.

    The checks are the ones ``getaddrinfo`` applies before it asks DNS (IDNA encoding: no empty label, none
    longer than 63 characters, valid punycode; at most 253 characters), letters, digits, ``-``, ``_`` and dots
    only once encoded (``%``, ``!`` or ``,`` are legal in a URL but name no host, and only invite parser
    differences), and a zone id only on a link-local IPv6 literal, where it means something.

    Args:
        host: The host as written in the URL (IPv6 literals without brackets), IDNA-encoded or not.

    Raises:
        UnsafeUrlError: ``invalid_host``.
    """
    if ":" in host:
        try:
            ip = ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise UnsafeUrlError("invalid_host", "URL host is not a valid IPv6 address") from exc
        if ip.scope_id is not None and not ip.is_link_local:
            raise UnsafeUrlError("invalid_host", "URL host has a zone id on an address that is not link-local")
        return
    try:
        encoded = host.encode("idna")
    except UnicodeError as exc:
        raise UnsafeUrlError("invalid_host", "URL host is not a valid host name") from exc
    if len(encoded.rstrip(b".")) > MAX_HOST_LENGTH or not _HOST_BYTES.fullmatch(encoded):
        raise UnsafeUrlError("invalid_host", "URL host is not a valid host name")


def literal_address(host: str) -> IPAddress | None:
    """The address a host names without any DNS lookup, or None for a name.

    Besides IP literals this admits the numeric IPv4 spellings the system resolver takes as addresses
    (``127.1``, ``0x7f.0.0.1``, ``2130706433``), so a check without DNS sees through them.

    Args:
        host: The host as written (IPv6 without brackets).
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not host or ":" in host or not _HOST_BYTES.fullmatch(host.encode("ascii", "replace")):
        return None
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (OSError, UnicodeError):
        return None  # not numeric: a name (AI_NUMERICHOST never asks DNS)
    return ipaddress.ip_address(infos[0][4][0]) if infos else None


def check_url_syntax(url: str, *, allow_private: bool | None = None) -> None:
    """Check a webhook URL without DNS (for the API, when an endpoint is created or changed).

    Args:
        url: The URL.
        allow_private: When given, a literal IP host is also checked against the address policy
            (see :func:`check_url`); when None only the syntax is checked. Metadata IP literals are refused in
            both cases.

    Raises:
        UnsafeUrlError: If the URL is not an absolute http(s) URL with a host, carries credentials, has a bad
            port, or names a refused IP literal.
    """
    parsed = _parse(url)
    ip = literal_address(_host_of(parsed))
    if ip is None:
        return
    if allow_private is None:
        if classify_address(ip) == "metadata_address":
            raise UnsafeUrlError("metadata_address", "webhook URL points at a cloud metadata address")
        return
    check_address(ip, allow_private=allow_private)


async def _getaddrinfo(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


async def check_url(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> list[str]:
    """Check a webhook URL and resolve its host, refusing non-public destinations.

    Args:
        url: The URL.
        allow_private: Admit loopback, private, link-local and other non-global addresses (never metadata).
        resolver: Resolves ``(host, port)`` to address strings; defaults to ``loop.getaddrinfo``.

    Returns:
        The resolved addresses (deduplicated, resolver order), all of which passed the check. Connect to one
        of these, not to the name, so a second resolution cannot return something else.

    Raises:
        UnsafeUrlError: If the URL is refused by :func:`check_url_syntax`, resolves to no address, or any
            resolved address is refused.
        OSError: If resolution fails (``socket.gaierror``); that is transient, not a verdict on the URL.
    """
    parsed = _parse(url)
    return await check_host(_host_of(parsed), parsed.port or 0, allow_private=allow_private, resolver=resolver)


async def check_host(host: str, port: int, *, allow_private: bool, resolver: Resolver | None = None) -> list[str]:
    """Resolve a host once and check every address it has (webhook deliveries and repository clones).

    Args:
        host: Host as written in the URL (IPv6 without brackets), IDNA-encoded.
        port: Port the connection will use (passed to the resolver).
        allow_private: Admit loopback, private, link-local and other non-global addresses (never metadata).
        resolver: Resolves ``(host, port)`` to address strings; defaults to ``loop.getaddrinfo``.

    Returns:
        The addresses (deduplicated, resolver order), all of which passed :func:`check_address`. Connect to one
        of these, not to the name, so a second resolution cannot return something else.

    Raises:
        UnsafeUrlError: The host is malformed (``invalid_host``: never a 5xx, never a DNS query), resolves to
            no address, or any address is refused.
        OSError: Resolution failed (``socket.gaierror``); that is transient, not a verdict on the host.
    """
    check_host_syntax(host)
    literal = literal_address(host)
    if literal is not None:
        raw: Sequence[str] = [str(literal)]
    else:
        try:
            raw = await (resolver or _getaddrinfo)(host, port)
        except UnicodeError as exc:
            # The IDNA codec inside getaddrinfo: a label the syntax check let through but the resolver cannot
            # encode is still the caller's mistake, not ours.
            raise UnsafeUrlError("invalid_host", "URL host is not a valid host name") from exc
    addresses: list[str] = []
    for value in raw:
        try:
            ip = ipaddress.ip_address(value)
        except ValueError as exc:
            raise UnsafeUrlError("invalid_address", "resolver returned something that is not an IP") from exc
        check_address(ip, allow_private=allow_private)
        if str(ip) not in addresses:
            addresses.append(str(ip))
    if not addresses:
        raise UnsafeUrlError("no_addresses", "URL host resolves to no address")
    return addresses
