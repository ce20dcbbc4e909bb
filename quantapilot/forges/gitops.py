"""Small async helpers around the real ``git`` command line.

Every call runs ``git`` with an argument list (never a shell), in a scrubbed environment: no system or user
configuration, no terminal or credential prompts, and an identity only when the caller passes one. Whatever a
repository's ``.git/config`` says, no hook, fsmonitor, submodule or signing program runs, and only the transports
the allowed repository URLs need are open (:data:`HARDENING_CONFIG`, :func:`restrict_protocols`). A call that
runs too long, or whose task is cancelled, has its whole process group killed so no ``git`` (or ``ssh``/remote
helper) child survives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

# Userinfo in URLs ("https://user:token@host/...") must never reach a message or a log line.
_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
_STDERR_TAIL_CHARS = 2000
#: Subcommands that talk to a remote.
NETWORK_COMMANDS = frozenset({"clone", "fetch", "push", "pull", "ls-remote"})

_home_dir: Path | None = None

# The worker's git never runs code a repository (or a command that ran in its worktree) put in place, whatever its
# .git/config says: every hook path becomes "/dev/null/<hook>", which cannot exist (an empty directory nothing can
# ever be written to); no fsmonitor command; no recursion into submodules (their URLs come from the repository's
# .gitmodules); no signing program; no credential helper (a repository config naming one would prompt or leak).
# Filter, diff and merge drivers cannot be switched off this way (their names are arbitrary): they live in
# .git/config, which git never copies from a remote and the command sandbox mounts read-only.
HARDENING_CONFIG: tuple[str, ...] = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "submodule.recurse=false",
    "fetch.recurseSubmodules=false",
    "push.recurseSubmodules=no",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "credential.helper=",
)
# A run's clone lives as long as the run: no housekeeping. Without these, every commit and fetch starts a
# ``git maintenance run --auto`` child process that finds nothing to do in so small a repository.
HOUSEKEEPING_OFF: tuple[str, ...] = ("maintenance.auto=false", "gc.auto=0")
# Transports git may use (GIT_ALLOW_PROTOCOL) unless the caller narrowed them with restrict_protocols: all but
# ext:: and fd::, which run arbitrary commands.
STANDARD_PROTOCOLS: tuple[str, ...] = ("file", "git", "http", "https", "ssh")
_protocols: ContextVar[tuple[str, ...]] = ContextVar("quantapilot_git_protocols", default=STANDARD_PROTOCOLS)


def redact(text: str) -> str:
    """Remove the userinfo part of every URL in ``text``.

    Args:
        text: Any text that may contain URLs, such as a git error message.

    Returns:
        The text with ``scheme://user:secret@`` reduced to ``scheme://``.
    """
    return _USERINFO_RE.sub(r"\g<scheme>", text)


@dataclass(frozen=True, slots=True)
class GitResult:
    """The outcome of one ``git`` invocation."""

    returncode: int
    stdout: str
    stderr: str


class GitError(Exception):
    """A ``git`` command failed or timed out.

    Args:
        args_: The git arguments (redacted before they are kept).
        returncode: Exit status; ``-1`` when the command was killed on timeout.
        stderr: Standard error of the command; only a redacted tail is kept.
        timed_out: Whether the command was killed because it ran too long.
    """

    def __init__(self, args_: tuple[str, ...], *, returncode: int, stderr: str, timed_out: bool = False) -> None:
        self.git_args = tuple(redact(a) for a in args_)
        self.returncode = returncode
        self.stderr_tail = redact(stderr[-_STDERR_TAIL_CHARS:]).strip()
        self.timed_out = timed_out
        what = "timed out" if timed_out else f"exited with {returncode}"
        command = " ".join(self.git_args[:3])
        # What a remote answered (its "remote:" lines, an HTTP status, the address git reached) is not ours to
        # repeat: the message of a network command says only that it failed; stderr_tail keeps it for debugging.
        shown = "" if self.git_args[:1] and self.git_args[0] in NETWORK_COMMANDS else self.stderr_tail
        super().__init__(f"git {command} {what}: {shown}".rstrip(": "))


@dataclass(frozen=True, slots=True)
class RemotePin:
    """Extra ``-c`` settings and environment that keep git's connections on checked addresses.

    Computed by :func:`quantapilot.forges.remotes.pin_remote` for one repository; every git command run while it
    is active (see :func:`pinned`) gets it, so the forges' pushes and fetches need not pass it along.
    """

    config: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


_PIN: ContextVar[RemotePin | None] = ContextVar("qp_git_remote_pin", default=None)


@contextlib.contextmanager
def pinned(pin: RemotePin) -> Iterator[None]:
    """Run the git commands of the current task (and the tasks it starts) with ``pin``."""
    token = _PIN.set(pin)
    try:
        yield
    finally:
        _PIN.reset(token)


def current_pin() -> RemotePin | None:
    """The pin active in the current task, if any."""
    return _PIN.get()


def _scratch_home() -> Path:
    # One empty HOME per process: git finds no ~/.gitconfig, so no user credential helper or alias applies.
    global _home_dir
    if _home_dir is None or not _home_dir.is_dir():
        _home_dir = Path(tempfile.mkdtemp(prefix="qp-git-home-"))
    return _home_dir


def identity_env(name: str, email: str) -> dict[str, str]:
    """Build the environment that makes ``name <email>`` both author and committer.

    Args:
        name: Author and committer name.
        email: Author and committer e-mail address.

    Returns:
        The ``GIT_AUTHOR_*`` and ``GIT_COMMITTER_*`` variables.
    """
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def protocols_for(patterns: Iterable[str]) -> tuple[str, ...]:
    """The git transports repository URLs matching ``patterns`` can need.

    Args:
        patterns: fnmatch patterns of allowed repository URLs (``QP_ALLOWED_REPO_PATTERNS``).

    Returns:
        Protocol names for ``GIT_ALLOW_PROTOCOL``: ``https`` for ``https://*``, ``ssh`` for ``ssh://*`` and
        ``git@host:path``, ``file`` for ``file://`` and local paths; every standard one when a pattern's scheme
        is a wildcard.
    """
    needed: set[str] = set()
    for pattern in patterns:
        scheme, sep, _ = pattern.partition("://")
        if sep:
            scheme = scheme.lower()
            if any(ch in scheme for ch in "*?["):
                return STANDARD_PROTOCOLS
            name = "ssh" if scheme in ("git+ssh", "ssh+git") else scheme
            if name in STANDARD_PROTOCOLS:
                needed.add(name)
        elif pattern.startswith(("/", ".", "~")):
            needed.add("file")
        elif ":" in pattern.split("/", 1)[0] and not pattern.startswith(("*", "?", "[")):
            needed.add("ssh")  # scp-like user@host:path
        else:
            return STANDARD_PROTOCOLS
    return tuple(sorted(needed))


def restrict_protocols(protocols: Iterable[str]) -> None:
    """Limit the transports of every git call made later in the current task (and the tasks it starts).

    Args:
        protocols: Allowed protocol names (see :func:`protocols_for`); ``ext`` and ``fd`` are never allowed.
    """
    _protocols.set(tuple(p for p in protocols if p in STANDARD_PROTOCOLS))


def scrubbed_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Build the environment every git command runs with.

    Only ``PATH`` is inherited: service secrets in the worker's environment must not reach git, its hooks or
    remote helpers.

    Args:
        extra: Variables to add or override (``HOME`` among them, to use a given home directory).

    Returns:
        The environment.
    """
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(_scratch_home()),
        "LC_ALL": "C",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        # An askpass that answers nothing: a remote asking for a password fails instead of waiting for input.
        "GIT_ASKPASS": "true",
        "SSH_ASKPASS": "true",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        "GIT_EDITOR": "true",
        "GIT_MERGE_AUTOEDIT": "no",
        # Overrides any protocol.* a repository config may set; an empty list allows no transport at all.
        "GIT_ALLOW_PROTOCOL": ":".join(_protocols.get()) or "none",
    }
    if extra:
        env.update(extra)
    return env


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def git(
    *args: str,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120,
    check: bool = True,
) -> GitResult:
    """Run ``git <args>`` in ``cwd``.

    Args:
        *args: Arguments after ``git``.
        cwd: Working directory.
        env: Extra environment variables on top of the scrubbed environment.
        timeout_s: Seconds before the command's process group is killed.
        check: Raise :class:`GitError` on a non-zero exit status.

    Returns:
        Exit status and decoded output.

    Raises:
        GitError: On timeout, or on failure when ``check`` is true.
    """
    # The hardening settings come first (HARDENING_CONFIG clears any credential helper too); the remote pin's
    # settings keep this activity's connections on the checked addresses.
    pin = _PIN.get() or RemotePin()
    pin_flags = [flag for setting in pin.config for flag in ("-c", setting)]
    settings = (*HARDENING_CONFIG, *HOUSEKEEPING_OFF)
    argv = ["git", *(arg for setting in settings for arg in ("-c", setting)), *pin_flags, *args]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=scrubbed_env({**pin.env, **(env or {})}),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # own process group, so a kill reaches ssh and remote helpers too
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout_s)
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        raise GitError(args, returncode=-1, stderr="", timed_out=True) from None
    except BaseException:
        # Cancellation (or anything else) must not leave git running behind us.
        _kill_group(proc)
        with contextlib.suppress(BaseException):
            await asyncio.shield(proc.wait())
        raise
    result = GitResult(
        returncode=proc.returncode if proc.returncode is not None else -1,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
    )
    if check and result.returncode != 0:
        raise GitError(args, returncode=result.returncode, stderr=result.stderr)
    return result


async def clone(
    url: str,
    dest: Path,
    *,
    branch: str | None = None,
    depth: int | None = None,
    timeout_s: float = 300,
) -> Path:
    """Clone ``url`` into ``dest`` (whose parent must exist).

    Args:
        url: Repository URL or path.
        dest: Directory to create.
        branch: Branch to check out; the remote's default branch when ``None``.
        depth: Shallow-clone depth; full history when ``None``.
        timeout_s: Seconds before the clone is killed.

    Returns:
        ``dest``.
    """
    # An empty template: no sample hooks, description or info/exclude copied into .git (about twenty files fewer to
    # write now and to remove when the run ends; no hook ever runs in the worker's git anyway, HARDENING_CONFIG).
    args = ["clone", "--quiet", "--template="]
    if branch:
        args += ["--branch", branch]
    if depth:
        # Shallow and single-branch: later fetches name their branches (see fetch), so no other tip is needed.
        args += ["--depth", str(depth)]
    # "--" keeps a URL starting with "-" from being read as an option.
    args += ["--", url, str(dest)]
    await git(*args, cwd=dest.parent, timeout_s=timeout_s)
    return dest


async def current_sha(cwd: Path, ref: str = "HEAD") -> str:
    """Return the commit sha ``ref`` points to.

    Args:
        cwd: Repository directory.
        ref: Any revision (default ``HEAD``).

    Returns:
        The full sha.
    """
    result = await git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", cwd=cwd)
    return result.stdout.strip()


def stripspace(message: str) -> str:
    """Clean a commit message as ``git commit -m`` and ``git merge -m`` do (``git stripspace``).

    Plumbing such as ``git commit-tree`` stores a message as given; this makes its commits carry the message the
    porcelain would have made: trailing whitespace of every line removed, runs of empty lines made one, empty
    lines at the start and the end dropped, every line ended by a newline.

    Args:
        message: The message as written.

    Returns:
        The cleaned message ("" for one that holds only whitespace).
    """
    lines: list[str] = []
    empties = 0
    for line in message.split("\n"):
        # git's isspace() is ASCII space, tab, CR and LF only (a vertical tab or form feed stays).
        line = line.rstrip(" \t\r")
        if not line:
            empties += 1
            continue
        if empties and lines:
            lines.append("")
        empties = 0
        lines.append(line)
    return "".join(f"{line}\n" for line in lines)


async def commit_all(cwd: Path, *, message: str, author_name: str, author_email: str) -> str | None:
    """Stage every change (including new and deleted files) and commit it.

    Args:
        cwd: Work tree.
        message: Commit message.
        author_name: Author and committer name.
        author_email: Author and committer e-mail.

    Returns:
        The new commit's sha, or ``None`` when there was nothing to commit.
    """
    await git("add", "--all", cwd=cwd)
    staged = await git("diff", "--cached", "--quiet", cwd=cwd, check=False)
    if staged.returncode == 0:
        return None
    await git(
        "commit",
        "--quiet",
        "--no-verify",
        "-m",
        message,
        cwd=cwd,
        env=identity_env(author_name, author_email),
    )
    return await current_sha(cwd)


async def push(cwd: Path, *, remote: str = "origin", branch: str, force: bool = False, timeout_s: float = 120) -> None:
    """Push the local branch ``branch`` to the same name on ``remote``.

    Args:
        cwd: Repository directory.
        remote: Remote name or URL.
        branch: Local branch name.
        force: Overwrite the remote branch even when the push is not a fast-forward (``--force-with-lease``
            is not used because the caller may not have fetched the branch).
        timeout_s: Seconds before the push is killed.
    """
    refspec = f"{'+' if force else ''}refs/heads/{branch}:refs/heads/{branch}"
    try:
        await git("push", "--quiet", "--porcelain", remote, refspec, cwd=cwd, timeout_s=timeout_s)
    except GitError as exc:
        # A concurrent push of the same commit (a retried activity racing its predecessor) can lose the ref
        # lock; the push's purpose is met when the remote branch already is our commit.
        if exc.timed_out:
            raise
        remote_ref = await git("ls-remote", remote, f"refs/heads/{branch}", cwd=cwd, timeout_s=timeout_s)
        remote_sha = remote_ref.stdout.split("\t", 1)[0].strip()
        if not remote_sha or remote_sha != await current_sha(cwd, f"refs/heads/{branch}"):
            raise


class BranchExistsError(GitError):
    """The remote already has the branch at another commit; :func:`push_new_branch` left it untouched."""


async def push_new_branch(cwd: Path, *, remote: str = "origin", branch: str, timeout_s: float = 120) -> None:
    """Create ``branch`` on ``remote`` at the local branch's commit; never move a branch that exists there.

    ``--force-with-lease=<ref>:`` (an empty expected value) makes the server refuse the update unless the ref is
    absent, checked under the ref's lock, so not even a fast-forward lands on an existing branch. A remote branch
    already at our very commit (an earlier attempt of the same push) counts as done.

    Args:
        cwd: Repository directory.
        remote: Remote name or URL.
        branch: Local branch name, pushed to the same name.
        timeout_s: Seconds before the push is killed.

    Raises:
        BranchExistsError: The remote branch exists at another commit.
        GitError: The push failed otherwise.
    """
    ref = f"refs/heads/{branch}"
    args = ("push", "--quiet", "--porcelain", f"--force-with-lease={ref}:", remote, f"{ref}:{ref}")
    result = await git(*args, cwd=cwd, timeout_s=timeout_s, check=False)
    if result.returncode == 0:
        return
    remote_ref = await git("ls-remote", remote, ref, cwd=cwd, timeout_s=timeout_s)
    remote_sha = remote_ref.stdout.split("\t", 1)[0].strip()
    if remote_sha and remote_sha == await current_sha(cwd, ref):
        return  # a concurrent attempt of this very push won the ref lock
    error = BranchExistsError if remote_sha else GitError
    raise error(args, returncode=result.returncode, stderr=result.stderr)


async def checkout_new_branch(cwd: Path, branch: str, *, start_point: str | None = None) -> None:
    """Create ``branch`` (at ``start_point`` or ``HEAD``) and check it out; reset it if it exists.

    Args:
        cwd: Work tree.
        branch: Branch name.
        start_point: Revision to start from; ``HEAD`` when ``None``.
    """
    args = ["checkout", "--quiet", "-B", branch]
    if start_point:
        args.append(start_point)
    await git(*args, cwd=cwd)


async def fetch(cwd: Path, *, remote: str = "origin", branches: tuple[str, ...] = (), timeout_s: float = 120) -> None:
    """Fetch from ``remote``, force-updating its remote-tracking branches.

    Args:
        cwd: Repository directory.
        remote: Remote name (remote-tracking refs are ``refs/remotes/<remote>/<branch>``).
        branches: Branches to fetch; all configured ones when empty.
        timeout_s: Seconds before the fetch is killed.
    """
    refspecs = [f"+refs/heads/{b}:refs/remotes/{remote}/{b}" for b in branches]
    prune = [] if refspecs else ["--prune"]
    await git("fetch", "--quiet", *prune, remote, *refspecs, cwd=cwd, timeout_s=timeout_s)
