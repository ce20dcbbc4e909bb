"""The client's address behind trusted proxies: the key of the per-address rate limits."""

from __future__ import annotations

import ipaddress

from aiohttp import web

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: list[str]) -> tuple[IPNetwork, ...]:
    """Parse ``QP_TRUSTED_PROXIES`` (addresses or CIDR networks).

    Raises:
        ValueError: An entry that is neither.
    """
    networks: list[IPNetwork] = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"QP_TRUSTED_PROXIES: {value[:64]!r} is not an IP address or network") from None
    return tuple(networks)


def _ip(text: str | None) -> IPAddress | None:
    try:
        return ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None


def client_address(request: web.Request, trusted: tuple[IPNetwork, ...] = ()) -> str:
    """The client's address, as the key of its limits.

    It is the TCP peer's address. Only when the peer is a trusted proxy is ``X-Forwarded-For`` read, from the
    right (the entries proxies appended) to the first address that is not itself a trusted proxy: everything left
    of it was written by the client and proves nothing. IPv6 clients are keyed by their /64, which one host
    usually owns whole.
    """
    address = _ip(request.remote)
    if address is None:
        return request.remote or "unknown"
    if trusted and any(address in net for net in trusted):
        hops = [hop for header in request.headers.getall("X-Forwarded-For", []) for hop in header.split(",")]
        for hop in reversed(hops):
            forwarded = _ip(hop)
            if forwarded is None:
                break  # a malformed entry: stop at the last proxy we trust
            address = forwarded
            if not any(forwarded in net for net in trusted):
                break
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
