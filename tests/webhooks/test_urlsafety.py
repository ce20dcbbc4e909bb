"""URL safety: schemes, credentials, address classes, metadata, IPv4-mapped IPv6, DNS rebinding."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pytest

from quantapilot.webhooks.urlsafety import UnsafeUrlError, check_url, check_url_syntax, classify_address


class _Resolver:
    """A resolver answering from a fixed table (stands in for DNS records we cannot create here)."""

    def __init__(self, mapping: dict[str, Sequence[str]]) -> None:
        self.mapping = mapping
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append((host, port))
        if host not in self.mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.mapping[host]


_resolver = _Resolver


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "scheme_not_allowed"),
        ("file:///etc/passwd", "scheme_not_allowed"),
        ("gopher://example.com/", "scheme_not_allowed"),
        ("javascript:alert(1)", "scheme_not_allowed"),
        ("//example.com/hook", "scheme_not_allowed"),
        ("/relative/hook", "scheme_not_allowed"),
        ("https://user:pw@example.com/hook", "credentials_not_allowed"),
        ("https://user@example.com/hook", "credentials_not_allowed"),
        ("https:///hook", "missing_host"),
        ("https://example.com:99999/", "invalid_url"),
        ("https://example.com:0/", "invalid_port"),
        ("https://example.com/a b", "invalid_url"),
        ("https://example.com/\r\nX-Injected: 1", "invalid_url"),
        ("https://example.com/" + "a" * 3000, "invalid_url"),
        ("http://169.254.169.254/latest/meta-data/", "metadata_address"),
        ("http://[fd00:ec2::254]/", "metadata_address"),
    ],
)
def test_urlsafety_syntax_refuses(url: str, reason: str) -> None:
    with pytest.raises(UnsafeUrlError) as info:
        check_url_syntax(url)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)
    assert "pw@" not in str(info.value)


def test_urlsafety_syntax_accepts_plain_urls_without_dns() -> None:
    check_url_syntax("https://hooks.example.com/path?x=1")
    check_url_syntax("http://no-such-host.invalid:8080/")
    check_url_syntax("HTTPS://Example.COM")
    # Literal private addresses pass the pure syntax check; the policy check is opt-in.
    check_url_syntax("http://10.0.0.1/")
    with pytest.raises(UnsafeUrlError) as info:
        check_url_syntax("http://10.0.0.1/", allow_private=False)
    assert info.value.reason == "private_address"
    check_url_syntax("http://10.0.0.1/", allow_private=True)
    with pytest.raises(UnsafeUrlError):
        check_url_syntax("http://169.254.169.254/", allow_private=True)


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback_address"),
        ("127.8.9.10", "loopback_address"),
        ("::1", "loopback_address"),
        ("10.1.2.3", "private_address"),
        ("172.16.0.1", "private_address"),
        ("192.168.1.1", "private_address"),
        ("fc00::1", "private_address"),
        ("169.254.1.1", "link_local_address"),
        ("fe80::1", "link_local_address"),
        ("224.0.0.1", "multicast_address"),
        ("ff02::1", "multicast_address"),
        ("0.0.0.0", "unspecified_address"),  # noqa: S104 - classified, never bound
        ("::", "unspecified_address"),
        ("100.64.0.1", "shared_address"),
        ("100.127.255.254", "shared_address"),
        ("240.0.0.1", "private_address"),
        ("169.254.169.254", "metadata_address"),
        ("169.254.170.2", "metadata_address"),
        ("fd00:ec2::254", "metadata_address"),
        ("::ffff:127.0.0.1", "loopback_address"),
        ("::ffff:10.0.0.1", "private_address"),
        ("::ffff:169.254.169.254", "metadata_address"),
        ("2002:7f00:1::", "loopback_address"),
        ("64:ff9b::a9fe:a9fe", "metadata_address"),
        ("93.184.216.34", None),
        ("2606:2800:220:1:248:1893:25c8:1946", None),
    ],
)
def test_urlsafety_classify_address(address: str, reason: str | None) -> None:
    assert classify_address(ipaddress.ip_address(address)) == reason


async def test_urlsafety_refuses_loopback_private_metadata_and_mapped() -> None:
    for url, reason in [
        ("http://127.0.0.1:8080/", "loopback_address"),
        ("http://[::1]/", "loopback_address"),
        ("http://10.0.0.5/", "private_address"),
        ("http://169.254.169.254/", "metadata_address"),
        ("http://[::ffff:127.0.0.1]/", "loopback_address"),
        ("http://[::ffff:a9fe:a9fe]/", "metadata_address"),
        ("http://[fe80::1%25eth0]/", "link_local_address"),
    ]:
        with pytest.raises(UnsafeUrlError) as info:
            await check_url(url, allow_private=False)
        assert info.value.reason == reason, url


async def test_urlsafety_real_resolution_of_localhost_refused() -> None:
    # Real getaddrinfo; decimal and hex spellings of loopback resolve to 127.0.0.1 too.
    for url in ("http://localhost/", "http://2130706433/", "http://0x7f000001/"):
        with pytest.raises(UnsafeUrlError) as info:
            await check_url(url, allow_private=False)
        assert info.value.reason == "loopback_address", url


async def test_urlsafety_allow_private_admits_loopback_not_metadata() -> None:
    assert await check_url("http://127.0.0.1:9/", allow_private=True) == ["127.0.0.1"]
    assert "127.0.0.1" in await check_url("http://localhost:9/", allow_private=True)
    assert await check_url("http://[::ffff:10.0.0.1]/", allow_private=True) == [
        str(ipaddress.ip_address("::ffff:10.0.0.1"))
    ]
    for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://[::ffff:169.254.169.254]/"):
        with pytest.raises(UnsafeUrlError) as info:
            await check_url(url, allow_private=True)
        assert info.value.reason == "metadata_address"
    resolver = _resolver({"metadata.internal": ["169.254.169.254"]})
    with pytest.raises(UnsafeUrlError):
        await check_url("http://metadata.internal/", allow_private=True, resolver=resolver)


async def test_urlsafety_public_name_resolving_private_is_refused() -> None:
    # DNS rebinding: a public-looking name whose record points inside.
    resolver = _resolver({"hooks.example.com": ["10.0.0.7"]})
    with pytest.raises(UnsafeUrlError) as info:
        await check_url("https://hooks.example.com/x", allow_private=False, resolver=resolver)
    assert info.value.reason == "private_address"
    assert resolver.calls == [("hooks.example.com", 443)]


async def test_urlsafety_any_bad_address_refuses_the_name() -> None:
    resolver = _resolver({"mixed.example.com": ["93.184.216.34", "127.0.0.1"]})
    with pytest.raises(UnsafeUrlError) as info:
        await check_url("http://mixed.example.com/", allow_private=False, resolver=resolver)
    assert info.value.reason == "loopback_address"


async def test_urlsafety_public_name_returns_resolved_addresses() -> None:
    resolver = _resolver({"hooks.example.com": ["93.184.216.34", "93.184.216.34", "2606:2800:220:1::1"]})
    addresses = await check_url("http://hooks.example.com:8080/", allow_private=False, resolver=resolver)
    assert addresses == ["93.184.216.34", "2606:2800:220:1::1"]
    assert resolver.calls == [("hooks.example.com", 8080)]


async def test_urlsafety_idna_host_resolved_in_ascii_form() -> None:
    resolver = _resolver({"xn--exmple-cua.com": ["93.184.216.34"]})
    assert await check_url("https://exämple.com/", allow_private=False, resolver=resolver) == ["93.184.216.34"]


async def test_urlsafety_empty_or_invalid_resolution_refused() -> None:
    with pytest.raises(UnsafeUrlError) as info:
        await check_url("http://x.example/", allow_private=True, resolver=_resolver({"x.example": []}))
    assert info.value.reason == "no_addresses"
    with pytest.raises(UnsafeUrlError) as info:
        await check_url("http://x.example/", allow_private=True, resolver=_resolver({"x.example": ["nope"]}))
    assert info.value.reason == "invalid_address"


async def test_urlsafety_resolution_failure_is_oserror_not_verdict() -> None:
    with pytest.raises(OSError):  # noqa: PT011 - gaierror is what getaddrinfo raises
        await check_url("http://unknown.example/", allow_private=False, resolver=_resolver({}))


async def test_urlsafety_refuses_syntax_before_resolving() -> None:
    resolver = _resolver({"example.com": ["93.184.216.34"]})
    with pytest.raises(UnsafeUrlError) as info:
        await check_url("ftp://example.com/", allow_private=True, resolver=resolver)
    assert info.value.reason == "scheme_not_allowed"
    assert resolver.calls == []


@pytest.mark.parametrize(
    "url",
    [
        "http://a..b/",
        "http://.a/",
        "http://" + "a" * 64 + ".example/",
        "http://" + ".".join(["a" * 60] * 5) + "/",
        "http://xn--zz/",
        "http://xn--a.example/",
        "http://%zz/",
        "http://a!b.example/",
        "http://[::1%25zz]/",
        "http://[2001:db8::1%25eth0]/",
    ],
)
async def test_urlsafety_pathological_hosts_are_refused_before_any_lookup(url: str) -> None:
    resolver = _resolver({})
    with pytest.raises(UnsafeUrlError) as info:
        check_url_syntax(url)
    assert info.value.reason in ("invalid_host", "invalid_url"), info.value.reason
    with pytest.raises(UnsafeUrlError):
        await check_url(url, allow_private=True, resolver=resolver)
    assert resolver.calls == []


def test_urlsafety_numeric_spellings_are_literal_addresses_without_dns() -> None:
    for url in ("http://127.1/", "http://0x7f.0.0.1/", "http://2130706433/", "http://0177.0.0.1/"):
        with pytest.raises(UnsafeUrlError) as info:
            check_url_syntax(url, allow_private=False)
        assert info.value.reason == "loopback_address", url
    check_url_syntax("http://1e100.example/", allow_private=False)  # a name, not a number
