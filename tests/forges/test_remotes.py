"""Repository remotes: which transports and host spellings are accepted, and how git gets pinned to the check."""

from __future__ import annotations

import shlex
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest

from quantapilot.forges import diskcap, gitops
from quantapilot.forges.remotes import (
    RemoteRefused,
    RemoteUnreachable,
    host_refused_without_dns,
    parse_remote,
    pin_remote,
)


async def _table(host: str, port: int) -> Sequence[str]:
    table = {"git.example.test": ["93.184.216.34", "2606:2800:220:1::1"], "inside.example.test": ["10.0.0.8"]}
    if host not in table:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return table[host]


@pytest.mark.parametrize(
    ("url", "transport", "host", "port"),
    [
        ("https://github.com/org/repo.git", "https", "github.com", 443),
        ("https://GitHub.COM:8443/org/repo.git", "https", "github.com", 8443),
        ("http://git.example.test/r", "http", "git.example.test", 80),
        ("ssh://git@git.example.test/org/repo.git", "ssh", "git.example.test", 22),
        ("git+ssh://git@git.example.test:2222/org/repo.git", "ssh", "git.example.test", 2222),
        ("git@github.com:org/repo.git", "ssh", "github.com", 22),
        ("git://git.example.test/repo.git", "git", "git.example.test", 9418),
        ("https://[2606:2800:220:1::1]/r.git", "https", "2606:2800:220:1::1", 443),
        ("file:///srv/git/repo.git", "local", "", 0),
        ("/srv/git/repo.git", "local", "", 0),
        ("./relative:path", "local", "", 0),
    ],
)
def test_remotes_parse(url: str, transport: str, host: str, port: int) -> None:
    remote = parse_remote(url)
    assert (remote.transport, remote.host, remote.port) == (transport, host, port)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ext::sh -c touch% /tmp/pwned", "transport_not_allowed"),
        ("-uhttps://x/y", "transport_not_allowed"),
        ("ftp://git.example.test/r.git", "transport_not_allowed"),
        ("rsync://git.example.test/r.git", "transport_not_allowed"),
        ("persistent-https://git.example.test/r.git", "transport_not_allowed"),
        # Spellings where curl, ssh and this module might read different hosts: refused, never guessed.
        ("https://git.example.test./r.git", "malformed_host"),
        ("https://a..b/r.git", "malformed_host"),
        ("https://" + "a" * 64 + ".test/r.git", "malformed_host"),
        ("https://git%2eexample.test/r.git", "malformed_host"),
        ("https://evil.test\\@git.example.test/r.git", "malformed_host"),
        ("https://git.example.test?@evil.test/r.git", "malformed_host"),
        ("https://git.example.test#@evil.test/r.git", "malformed_host"),
        ("https://exämple.test/r.git", "malformed_host"),
        ("https://127.1/r.git", "malformed_host"),
        ("https://0x7f000001/r.git", "malformed_host"),
        ("https://[::1%25lo]/r.git", "malformed_host"),
        ("https://[zz::1]/r.git", "malformed_host"),
        ("https://git.example.test:0/r.git", "malformed_host"),
        ("https://git.example.test:70000/r.git", "malformed_host"),
        ("https://-git.example.test/r.git", "malformed_host"),
        ("git@-oProxyCommand=x:r.git", "malformed_host"),
    ],
)
def test_remotes_refused_spellings(url: str, reason: str) -> None:
    with pytest.raises(RemoteRefused) as info:
        parse_remote(url)
    assert info.value.reason == reason
    assert str(info.value) == "repository host not allowed"


async def test_remotes_https_pins_every_checked_address_and_refuses_redirects() -> None:
    pin = await pin_remote("https://git.example.test/org/r.git", allow_private=False, resolver=_table)
    assert pin.config == (
        "http.followRedirects=false",
        "http.curloptResolve=git.example.test:443:93.184.216.34,[2606:2800:220:1::1]",
    )
    assert pin.env == {}


async def test_remotes_ssh_pins_hostname_and_keeps_the_host_key_name() -> None:
    pin = await pin_remote("git@git.example.test:org/r.git", allow_private=False, resolver=_table)
    words = shlex.split(pin.env["GIT_SSH_COMMAND"])
    assert words[:3] == shlex.split(gitops.scrubbed_env()["GIT_SSH_COMMAND"])
    assert words[-4:] == ["-o", "HostName=93.184.216.34", "-o", "HostKeyAlias=git.example.test"]
    pin = await pin_remote("ssh://git@git.example.test:2222/r.git", allow_private=False, resolver=_table)
    assert shlex.split(pin.env["GIT_SSH_COMMAND"])[-1] == "HostKeyAlias=[git.example.test]:2222"


async def test_remotes_git_protocol_is_rewritten_to_the_checked_address() -> None:
    pin = await pin_remote("git://git.example.test/r.git", allow_private=False, resolver=_table)
    assert pin.config[-1] == "url.git://93.184.216.34:9418.insteadOf=git://git.example.test"


async def test_remotes_refused_and_unreachable_hosts() -> None:
    with pytest.raises(RemoteRefused) as info:
        await pin_remote("https://inside.example.test/r.git", allow_private=False, resolver=_table)
    assert info.value.reason == "private_address"
    assert str(info.value) == "repository host not allowed"
    await pin_remote("https://inside.example.test/r.git", allow_private=True, resolver=_table)
    with pytest.raises(RemoteUnreachable) as unreachable:
        await pin_remote("https://nowhere.example.test/r.git", allow_private=True, resolver=_table)
    assert str(unreachable.value) == "repository unreachable or not found"
    # Local repositories need no host; the allowed patterns decide about them.
    assert (await pin_remote("file:///srv/r.git", allow_private=False, resolver=_table)).env == {}


@pytest.mark.parametrize(
    ("url", "strict", "lenient"),
    [
        ("https://127.0.0.1/r.git", True, False),
        ("https://localhost./r.git", True, False),
        ("https://127.1/r.git", True, False),
        ("http://169.254.169.254/latest/", True, True),
        ("https://[fd00:ec2::254]/r.git", True, True),
        ("git@192.168.1.1:r.git", True, False),
        ("https://github.com/r.git", False, False),
        ("https://8.8.8.8/r.git", False, False),
        ("file:///srv/r.git", False, False),
        ("ext::sh", False, False),
    ],
)
def test_remotes_refused_without_dns(url: str, strict: bool, lenient: bool) -> None:
    assert host_refused_without_dns(url, allow_private=False) is strict
    assert host_refused_without_dns(url, allow_private=True) is lenient


async def test_diskcap_stops_work_past_the_limit_and_passes_work_within_it(tmp_path: Path) -> None:
    async def _write(size: int) -> str:
        (tmp_path / "f").write_bytes(b"x" * size)
        return "done"

    assert await diskcap.within(tmp_path, 1000, _write(10)) == "done"
    with pytest.raises(diskcap.TooLargeError) as info:
        await diskcap.within(tmp_path, 1000, _write(5000))
    assert (info.value.size, info.value.limit) == (5000, 1000)
    assert diskcap.tree_size(tmp_path / "missing") == 0
