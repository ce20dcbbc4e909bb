"""Where the worker's git may connect: repository remotes parsed, their hosts checked, git pinned to the checks.

A repository URL is chosen by whoever triggers a run, but git fetches it from inside our network. The host goes
through the same address policy as webhook URLs (:mod:`quantapilot.webhooks.urlsafety`): loopback, private,
link-local and other non-public addresses are refused unless the operator sets ``QP_REPO_ALLOW_PRIVATE``, cloud
metadata addresses always. The host is resolved once per operation, every address is checked, and git is then
pinned to those addresses so that a second resolution (DNS rebinding) cannot send it elsewhere:

* ``https://`` and ``http://``: ``http.curloptResolve=<host>:<port>:<addresses>`` (git >= 2.37), so curl connects
  to the checked addresses while TLS and the ``Host`` header still use the name; ``http.followRedirects=false``,
  so an answer cannot send git to another host.
* ``ssh://`` and scp-like ``user@host:path``: ``ssh -o HostName=<address> -o HostKeyAlias=<host>`` (the host key
  is still checked against the name).
* ``git://``: the URL is rewritten to the address (``url.<address>.insteadOf``).
* ``file://`` and local paths: no network; only the allowed patterns govern them.

Anything else (other schemes, ``transport::address``) is refused. Hosts are accepted only in the one spelling
curl, ssh and this module agree on (lower-case letters, digits, ``-``, ``_``, dots, or an IP literal), so no
parser difference can make git connect to a host other than the one checked.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import Final, Literal

from quantapilot.forges import gitops
from quantapilot.webhooks.urlsafety import Resolver, UnsafeUrlError, check_host, classify_address, literal_address

log = logging.getLogger("quantapilot.forges.remotes")

Transport = Literal["https", "http", "ssh", "git", "local"]

DEFAULT_PORTS: Final[dict[str, int]] = {"https": 443, "http": 80, "ssh": 22, "git": 9418}
_SCHEMES: Final[dict[str, Transport]] = {
    "https": "https",
    "http": "http",
    "ssh": "ssh",
    "git+ssh": "ssh",
    "ssh+git": "ssh",
    "git": "git",
}
# git 2.37 added http.curloptResolve; an older git would ignore it silently and resolve the name itself.
MIN_GIT_FOR_HTTP_PIN: Final = (2, 37)

# scheme://[user@]host[:port]/path. The user part is only meaningful for ssh (credentials are refused earlier).
_URL = re.compile(
    r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://"
    r"(?:(?P<user>[A-Za-z0-9._~-]+)@)?"
    r"(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[^?#\\]*)$"
)
# user@host:path, git's scp-like syntax (a colon before the first slash).
_SCP = re.compile(r"^(?:(?P<user>[A-Za-z0-9._~-]+)@)?(?P<host>[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]):(?P<path>[^\\]*)$")
_NAME = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?:\.(?!-)[a-z0-9_-]{1,63})*$")


class RemoteRefused(Exception):
    """The repository's transport or host is not allowed.

    Attributes:
        reason: Machine-readable reason (``transport_not_allowed``, ``malformed_host``, ``loopback_address``,
            ...), for tests and the operator's debugger; callers show only "repository host not allowed", so
            nobody learns what a name resolves to.
    """

    def __init__(self, reason: str) -> None:
        super().__init__("repository host not allowed")
        self.reason = reason


class RemoteUnreachable(Exception):
    """The repository host did not resolve now (possibly a passing DNS fault)."""

    def __init__(self) -> None:
        super().__init__("repository unreachable or not found")


@dataclass(frozen=True, slots=True)
class Remote:
    """A parsed repository URL.

    Attributes:
        url: The URL as given.
        transport: ``https``, ``http``, ``ssh``, ``git`` or ``local`` (``file://`` and paths).
        host: The host, lower-case, IPv6 without brackets; empty for local.
        port: The port connected to (the transport's default when the URL names none); 0 for local.
        authority_prefix: ``scheme://[user@]host[:port]`` exactly as written (``git://`` rewriting matches it).
    """

    url: str
    transport: Transport
    host: str = ""
    port: int = 0
    authority_prefix: str = ""


def _host(raw: str) -> str:
    if raw.startswith("["):
        text = raw[1:-1]
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise RemoteRefused("malformed_host") from None
        return text
    host = raw.lower()
    if literal_address(host) is not None:
        # Numeric spellings (127.1, 0x7f000001): what they mean to curl and ssh may differ; only the canonical
        # dotted quad is unambiguous.
        if host != str(literal_address(host)):
            raise RemoteRefused("malformed_host")
        return host
    # A trailing dot, empty or over-long labels: curl would look the name up itself instead of using the pin.
    if len(host) > 253 or not _NAME.match(host):
        raise RemoteRefused("malformed_host")
    return host


def _split(url: str) -> tuple[Transport, re.Match[str] | None]:
    """The transport git would use for ``url`` and, for a network one, the match of its syntax (None: malformed).

    Raises:
        RemoteRefused: ``transport_not_allowed``.
    """
    if url.startswith("-") or "::" in url.split("/", 1)[0]:
        raise RemoteRefused("transport_not_allowed")
    scheme, sep, _ = url.partition("://")
    if sep:
        if scheme.lower() == "file":
            return "local", None
        transport = _SCHEMES.get(scheme.lower())
        if transport is None:
            raise RemoteRefused("transport_not_allowed")
        return transport, _URL.match(url)
    first_colon, first_slash = url.find(":"), url.find("/")
    if first_colon > 0 and (first_slash < 0 or first_colon < first_slash):
        # git reads "host:path" (no slash before the colon) as ssh to host, whatever the text looks like.
        return "ssh", _SCP.match(url)
    return "local", None


def parse_remote(url: str) -> Remote:
    """Parse a repository URL into transport, host and port.

    Args:
        url: The URL or path (already checked against the allowed patterns and for credentials).

    Returns:
        The parsed remote.

    Raises:
        RemoteRefused: A transport other than https, http, ssh, git, file and local paths; or a host that is not
            in the one spelling this module accepts.
    """
    transport, match = _split(url)
    if transport == "local":
        return Remote(url=url, transport="local")
    if match is None:
        raise RemoteRefused("malformed_host")
    host = _host(match["host"])
    if "scheme" not in match.groupdict():
        return Remote(url=url, transport="ssh", host=host, port=DEFAULT_PORTS["ssh"])
    port = int(match["port"]) if match["port"] else DEFAULT_PORTS[transport]
    if not 0 < port < 65536:
        raise RemoteRefused("malformed_host")
    prefix = url[: len(url) - len(match["path"])]
    return Remote(url=url, transport=transport, host=host, port=port, authority_prefix=prefix)


def host_refused_without_dns(url: str, *, allow_private: bool) -> bool:
    """Tell whether a repository URL's host is refused already by how it is written (the API's early check).

    Literal addresses (in any spelling the resolver takes, ``127.1`` too) and ``localhost`` names (RFC 6761:
    always loopback) are judged here; any other name needs DNS, which only the worker's check at connect time
    consults (DNS can change between the two).

    Args:
        url: The repository URL.
        allow_private: ``QP_REPO_ALLOW_PRIVATE``.
    """
    try:
        transport, match = _split(url)
    except RemoteRefused:
        return False  # the worker refuses the transport; the API leaves that verdict to it
    if transport == "local" or match is None:
        return False
    host = match["host"].strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return not allow_private
    ip = literal_address(host)
    reason = classify_address(ip) if ip is not None else None
    return reason is not None and (reason == "metadata_address" or not allow_private)


@functools.cache
def git_version() -> tuple[int, int]:
    """The installed git's (major, minor) version; (0, 0) when it cannot be told."""
    try:
        out = subprocess.run(
            ["git", "--version"], capture_output=True, text=True, timeout=10, check=False, env=gitops.scrubbed_env()
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return (0, 0)
    match = re.search(r"(\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _ssh_command(host: str, port: int, address: str) -> str:
    # The host key is still looked up under the name (with the port, as known_hosts writes it), while ssh
    # connects to the checked address.
    alias = host if port == DEFAULT_PORTS["ssh"] else f"[{host}]:{port}"
    base = gitops.scrubbed_env()["GIT_SSH_COMMAND"]
    return f"{base} -o {shlex.quote('HostName=' + address)} -o {shlex.quote('HostKeyAlias=' + alias)}"


def _bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


async def pin_remote(url: str, *, allow_private: bool, resolver: Resolver | None = None) -> gitops.RemotePin:
    """Resolve and check a repository's host once, and say how git must connect so it uses those addresses.

    Args:
        url: The repository URL (already admitted by the allowed patterns).
        allow_private: ``QP_REPO_ALLOW_PRIVATE``: admit non-public addresses (never metadata).
        resolver: Resolves ``(host, port)`` to addresses (tests); defaults to ``getaddrinfo``.

    Returns:
        The ``-c`` settings and environment for every git command that talks to this remote
        (see :func:`quantapilot.forges.gitops.pinned`).

    Raises:
        RemoteRefused: The transport or host is not allowed, or an address it resolves to is refused.
        RemoteUnreachable: The host does not resolve now.
    """
    remote = parse_remote(url)
    no_redirects = "http.followRedirects=false"
    if remote.transport == "local":
        return gitops.RemotePin(config=(no_redirects,))
    try:
        addresses = await check_host(remote.host, remote.port, allow_private=allow_private, resolver=resolver)
    except UnsafeUrlError as exc:
        raise RemoteRefused(exc.reason) from None
    except OSError:
        raise RemoteUnreachable from None
    literal = literal_address(remote.host) is not None
    if remote.transport in ("https", "http"):
        if literal:
            return gitops.RemotePin(config=(no_redirects,))
        if git_version() < MIN_GIT_FOR_HTTP_PIN:
            # Our git, not the remote: the operator must upgrade it (it would ignore the pin and resolve itself).
            log.error("git %d.%d cannot pin https remotes (needs >= 2.37): refusing them", *git_version())
            raise RemoteRefused("git_too_old_to_pin")
        resolve = f"{remote.host}:{remote.port}:{','.join(_bracketed(a) for a in addresses)}"
        return gitops.RemotePin(config=(no_redirects, f"http.curloptResolve={resolve}"))
    if remote.transport == "ssh":
        return gitops.RemotePin(
            config=(no_redirects,), env={"GIT_SSH_COMMAND": _ssh_command(remote.host, remote.port, addresses[0])}
        )
    # git:// has no TLS and no name to keep: the URL itself goes to the checked address.
    target = f"git://{_bracketed(addresses[0])}:{remote.port}"
    return gitops.RemotePin(config=(no_redirects, f"url.{target}.insteadOf={remote.authority_prefix}"))
