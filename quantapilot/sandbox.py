"""The sandbox milestone commands run in: bubblewrap (``bwrap``) namespaces around ``/bin/sh -c <command>``.

What a command sees (docs/SECURITY.md, "Milestone commands run in a sandbox", has each defence and its test):

- its own PID, IPC, UTS, cgroup and (unless its repository matches ``QP_COMMAND_NETWORK_REPO_PATTERNS``)
  network namespaces, so no other process, no ``/proc`` of the worker and no network;
- ``/usr`` (and the ``/bin``, ``/lib*`` links into it) and a short list of ``/etc`` entries, read-only; ``passwd``
  and ``group`` written for the sandbox; a fresh ``/proc``, a minimal ``/dev``, a private size-bounded ``/tmp``
  and ``/dev/shm``; the run's worktree as the only writable host directory, its ``.git`` read-only (so no hook,
  config or attribute file a command plants there can reach the worker's git); nothing else of the host;
- a scrubbed environment (``PATH``, ``HOME`` = the worktree, locale and time zone);
- an unprivileged user without capabilities, ``no_new_privs``, no further user namespaces, and ``prlimit``
  limits on processes, file size and (data) memory per process; the step timeout bounds the wall-clock time.

How it is started depends on the worker's user (the kernel never applies ``RLIMIT_NPROC`` to uid 0, and
unprivileged bwrap cannot bind directories its user cannot reach):

- **worker as root** (containers, CI): an outer ``bwrap`` as root sets up the namespaces and mounts, ``setpriv``
  drops to ``QP_COMMAND_SANDBOX_UID``, and an inner unprivileged ``bwrap`` adds a user namespace with further
  user namespaces disabled. Before each command the worktree's files are handed to that uid (the top directory
  stays the worker's, group-writable for the sandbox, so the worker's git still sees its own repository).
- **worker as another user**: one unprivileged ``bwrap`` with a user namespace does all of it; the sandbox runs
  as the worker's uid, whose files the worktree already holds.

In both, killing the outer ``bwrap``'s child (PID 1 of the sandbox) takes the whole PID namespace down, and
``--die-with-parent`` does the same when the worker itself dies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from quantapilot.settings import Settings

# The only PATH inside: nothing else of the host is mounted, so the worker's own PATH would only name paths
# that do not exist there (and tell the command where the worker's virtualenv lives).
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_HOSTNAME = "quantapilot-sandbox"
# Private tmpfs mounts of the sandbox (each sized QP_COMMAND_TMP_BYTES), not the host's directories.
SANDBOX_TMP = "/tmp"  # noqa: S108
SANDBOX_SHM = "/dev/shm"  # noqa: S108
# Environment variables a command inherits from the worker (besides PATH and HOME, which the sandbox sets).
PASSED_ENV = ("LANG", "LC_ALL", "TZ")
# Top-level system paths: symlinks into /usr on merged-/usr systems (recreated as links), directories otherwise.
SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The host's /etc holds keys and service configuration (docs/DEPLOY.md puts the Temporal client key in
# /etc/qp/): only what common tools need is visible. Name resolution and TLS roots (for network-on
# repositories), the dynamic linker's cache, Debian's alternatives links (awk, editor, java, ...), time zone.
ETC_ENTRIES = (
    "alternatives",
    "ca-certificates",
    "ca-certificates.conf",
    "gai.conf",
    "host.conf",
    "hosts",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "mime.types",
    "nsswitch.conf",
    "os-release",
    "protocols",
    "resolv.conf",
    "services",
    "ssl/certs",
    "ssl/openssl.cnf",
    "timezone",
)
# The sandbox's own git is told to trust the read-only .git it does not own (git refuses "dubious ownership"),
# so `git describe` and the like work inside; this reaches only git processes inside the sandbox.
SANDBOX_GIT_ENV = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}
PROBE_TIMEOUT_S = 30.0

log = logging.getLogger("quantapilot.sandbox")


class SandboxUnavailable(Exception):
    """Commands cannot run: bubblewrap (or a tool the sandbox needs) is missing or cannot create namespaces."""


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """How one repository's commands are sandboxed (built from the settings; see :meth:`from_settings`)."""

    mode: Literal["bwrap", "none"]
    bwrap: str
    network: bool
    uid: int
    max_processes: int
    max_file_bytes: int
    max_memory_bytes: int
    tmp_bytes: int
    ro_binds: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings, repo_url: str | None = None) -> SandboxPolicy:
        """The policy for commands of ``repo_url``: network only when it matches a network pattern.

        Args:
            settings: Service settings (``QP_COMMAND_SANDBOX*``, ``QP_COMMAND_MAX_*``).
            repo_url: The repository whose commands run; ``None``: no network.
        """
        network = repo_url is not None and any(
            fnmatch.fnmatchcase(repo_url, pattern) for pattern in settings.command_network_repo_patterns
        )
        return cls(
            mode=settings.command_sandbox,
            bwrap=settings.command_sandbox_bwrap,
            network=network,
            uid=settings.command_sandbox_uid,
            max_processes=settings.command_max_processes,
            max_file_bytes=settings.command_max_file_bytes,
            max_memory_bytes=settings.command_max_memory_bytes,
            tmp_bytes=settings.command_tmp_bytes,
            ro_binds=tuple(str(p) for p in settings.command_sandbox_ro_binds),
        )

    @classmethod
    def defaults(cls) -> SandboxPolicy:
        """The policy of the settings' defaults (read from the fields, not from the environment)."""
        return cls.from_settings(Settings.model_construct())


@dataclass(frozen=True, slots=True)
class _Tools:
    bwrap: str
    prlimit: str
    setpriv: str | None


def privileged() -> bool:
    """Whether the worker runs as root (and so takes the outer-bwrap-as-root path)."""
    return os.geteuid() == 0


def _tools(policy: SandboxPolicy, *, as_root: bool) -> _Tools:
    bwrap = shutil.which(policy.bwrap)
    if bwrap is None:
        raise SandboxUnavailable(
            f"bubblewrap not found ({policy.bwrap!r}): install the Debian package bubblewrap, or opt out with "
            "QP_COMMAND_SANDBOX=none"
        )
    prlimit = shutil.which("prlimit", path=SANDBOX_PATH)
    setpriv = shutil.which("setpriv", path=SANDBOX_PATH)
    if prlimit is None or (as_root and setpriv is None):
        raise SandboxUnavailable("prlimit/setpriv (util-linux) not found: the sandbox needs them for its limits")
    return _Tools(bwrap=str(Path(bwrap).resolve()), prlimit=prlimit, setpriv=setpriv)


def _identity_files(uid: int) -> tuple[int, int]:
    """``passwd`` and ``group`` of the sandbox (root, the sandbox user, nobody) as memory files for bwrap to copy.

    Tools look their user up (``id``, ``ssh``, Python's ``getpass``); the host's own files would name its accounts.
    """
    users = {0: "root", uid: "sandbox", 65534: "nobody"}
    passwd = "".join(f"{name}:x:{i}:{i}:{name}:/nonexistent:/usr/sbin/nologin\n" for i, name in users.items())
    group = "".join(f"{'nogroup' if i == 65534 else name}:x:{i}:\n" for i, name in users.items())
    fds: list[int] = []
    for name, text in (("passwd", passwd), ("group", group)):
        fd = os.memfd_create(f"qp-sandbox-{name}")
        fds.append(fd)
        os.write(fd, text.encode())
        os.lseek(fd, 0, os.SEEK_SET)
    return fds[0], fds[1]


def command_env(cwd: Path, *, sandboxed: bool) -> dict[str, str]:
    """The environment a command runs with: no service secret (tokens, database URLs) ever reaches it.

    Args:
        cwd: The worktree (also ``HOME``, so tools that write dotfiles write them there).
        sandboxed: Whether the command runs in the sandbox (then ``PATH`` is the sandbox's own).
    """
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    env["PATH"] = SANDBOX_PATH if sandboxed else os.environ.get("PATH", SANDBOX_PATH)
    env["HOME"] = str(cwd)
    if sandboxed:
        env["TMPDIR"] = SANDBOX_TMP
        env |= SANDBOX_GIT_ENV
    return env


def _mounts(policy: SandboxPolicy, cwd: Path, *, identity: tuple[int, int], extra_files: list[str]) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in SYSTEM_DIRS:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    args += ["--perms", "0755", "--dir", "/etc"]
    for entry in ETC_ENTRIES:
        if "/" in entry:
            # bwrap would create the parent 0700, out of the unprivileged user's reach.
            args += ["--perms", "0755", "--dir", f"/etc/{entry.rsplit('/', 1)[0]}"]
        args += ["--ro-bind-try", f"/etc/{entry}", f"/etc/{entry}"]
    for fd, name in zip(identity, ("passwd", "group"), strict=True):
        args += ["--perms", "0644", "--ro-bind-data", str(fd), f"/etc/{name}"]
    for path in (*policy.ro_binds, *extra_files):
        args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for tmp in (SANDBOX_SHM, SANDBOX_TMP):
        args += ["--perms", "1777", "--size", str(policy.tmp_bytes), "--tmpfs", tmp]
    # Parents of the worktree are made traversable (bwrap creates them 0700) for the unprivileged inner user.
    for parent in reversed(cwd.parents):
        if str(parent) not in ("/", SANDBOX_TMP):
            args += ["--perms", "0755", "--dir", str(parent)]
    args += ["--bind", str(cwd), str(cwd)]
    git_dir = cwd / ".git"
    if git_dir.is_symlink():
        # Our clones have a real .git; a link could point the read-only bind (and the worker's git) anywhere.
        raise SandboxUnavailable(f"{git_dir} is a symbolic link: refusing to run commands in this worktree")
    if git_dir.exists():
        args += ["--ro-bind", str(git_dir), str(git_dir)]
    # The sandbox's root (bwrap's tmpfs holding the mount points) is read-only: only /tmp, /dev/shm and the
    # worktree take writes.
    args += ["--remount-ro", "/"]
    return args


def _limits(policy: SandboxPolicy, prlimit: str) -> list[str]:
    # Hard and soft limits alike, so the command cannot raise them again. RLIMIT_DATA (not RLIMIT_AS) bounds the
    # memory a process can write to without breaking runtimes that reserve large address ranges (JVM, Go, V8).
    return [
        prlimit,
        f"--nproc={policy.max_processes}:{policy.max_processes}",
        f"--fsize={policy.max_file_bytes}:{policy.max_file_bytes}",
        f"--data={policy.max_memory_bytes}:{policy.max_memory_bytes}",
        "--core=0:0",
        "--",
    ]


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start one sandboxed command: its argument vector and the descriptors the child must inherit."""

    argv: list[str]
    pass_fds: tuple[int, ...]


@contextlib.contextmanager
def launch(
    policy: SandboxPolicy,
    command: str,
    *,
    cwd: Path,
    env: Mapping[str, str],
    info_fd: int | None = None,
    as_root: bool | None = None,
) -> Iterator[Launch]:
    """How to run ``/bin/sh -c <command>`` in the sandbox; start the process inside the ``with`` block.

    Args:
        policy: The repository's sandbox policy (``mode`` must be ``bwrap``).
        command: The shell command.
        cwd: The worktree (absolute, resolved): the working directory and the only writable host directory.
        env: The command's whole environment (see :func:`command_env`).
        info_fd: A file descriptor bwrap writes its JSON info to (``child-pid``: PID 1 of the sandbox).
        as_root: Which start-up path to build (default: whether the worker runs as root).

    Raises:
        SandboxUnavailable: A tool is missing, or the worktree's ``.git`` is a link.
    """
    as_root = privileged() if as_root is None else as_root
    tools = _tools(policy, as_root=as_root)
    sandbox_uid = policy.uid if as_root else os.getuid()
    if as_root:
        namespaces = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        namespaces += [] if policy.network else ["--unshare-net"]
        # The outer bwrap keeps only what setpriv needs to drop to the sandbox user, who then has no capability
        # at all (a uid change from 0 clears them; no_new_privs keeps setuid files from giving any back).
        caps = ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        namespaces = ["--unshare-all", "--unshare-user", "--disable-userns"]
        namespaces += ["--share-net"] if policy.network else []
        caps = ["--cap-drop", "ALL"]
    argv = [tools.bwrap, *namespaces, *caps, "--die-with-parent", "--new-session", "--hostname", SANDBOX_HOSTNAME]
    argv.append("--clearenv")
    for key, value in env.items():
        argv += ["--setenv", key, value]
    extra = [tools.bwrap] if as_root and not tools.bwrap.startswith("/usr/") else []
    identity = _identity_files(sandbox_uid)
    try:
        argv += _mounts(policy, cwd, identity=identity, extra_files=extra)
        argv += ["--chdir", str(cwd)]
        if info_fd is not None:
            argv += ["--info-fd", str(info_fd)]
        argv.append("--")
        if as_root:
            assert tools.setpriv is not None
            argv += [tools.setpriv, f"--reuid={sandbox_uid}", f"--regid={sandbox_uid}", "--clear-groups", "--"]
            # The inner bwrap, unprivileged, sees the outer sandbox's mounts (locked: it cannot undo the read-only
            # binds) and is there for its user namespace: a process count of its own for RLIMIT_NPROC, and no
            # further user namespaces for the command.
            argv += [tools.bwrap, "--unshare-user", "--disable-userns", "--die-with-parent"]
            argv += ["--dev-bind", "/", "/", "--chdir", str(cwd), "--"]
        argv += [*_limits(policy, tools.prlimit), "/bin/sh", "-c", command]
        yield Launch(argv=argv, pass_fds=(*identity, *(() if info_fd is None else (info_fd,))))
    finally:
        for fd in identity:
            os.close(fd)


def prepare_worktree(policy: SandboxPolicy, cwd: Path, *, as_root: bool | None = None) -> None:
    """Let the sandbox user write the worktree (only needed when the worker runs as root).

    Every entry except ``.git`` is handed to the sandbox uid; the top directory stays the worker's (git refuses a
    repository whose top directory another user owns) and becomes group-writable for the sandbox's group only.
    Runs before each command, since the worker's own git writes files as root in between.

    Args:
        policy: The sandbox policy (its ``uid``).
        cwd: The worktree.
        as_root: Whether the worker runs as root (default: ask the kernel).
    """
    if policy.mode != "bwrap" or not (privileged() if as_root is None else as_root):
        return
    uid = policy.uid
    os.chown(cwd, -1, uid)
    cwd.chmod(0o770)
    with os.scandir(cwd) as top:
        stack = [entry for entry in top if entry.name != ".git"]
    # Iterative, never following links: a command may leave deep trees or links to anywhere behind.
    while stack:
        entry = stack.pop()
        st = entry.stat(follow_symlinks=False)
        if st.st_uid != uid or st.st_gid != uid:
            os.chown(entry.path, uid, uid, follow_symlinks=False)
        if entry.is_dir(follow_symlinks=False):
            with os.scandir(entry.path) as children:
                stack.extend(children)


_probed: set[tuple[str, bool, int, tuple[str, ...]]] = set()


def ensure_available(policy: SandboxPolicy) -> None:
    """Check that commands can run under ``policy``: the tools exist and bwrap can build the sandbox here.

    The first check per executable and user runs ``true`` in a real sandbox (user namespaces may be disabled
    on the host, or the worker may lack the privileges bwrap needs); a success is remembered by the process.

    Raises:
        SandboxUnavailable: With the reason (missing bubblewrap, or bwrap's own error message).
    """
    if policy.mode == "none":
        return
    as_root = privileged()
    tools = _tools(policy, as_root=as_root)
    key = (tools.bwrap, as_root, policy.uid, policy.ro_binds)
    if key in _probed:
        return
    with tempfile.TemporaryDirectory(prefix="qp-sandbox-probe-") as tmp:
        probe_dir = Path(tmp).resolve()
        probe = dataclasses.replace(policy, network=False)
        prepare_worktree(probe, probe_dir, as_root=as_root)
        try:
            with launch(probe, "true", cwd=probe_dir, env=command_env(probe_dir, sandboxed=True)) as start:
                result = subprocess.run(
                    start.argv,
                    env={"PATH": SANDBOX_PATH},
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=PROBE_TIMEOUT_S,
                    check=False,
                    pass_fds=start.pass_fds,
                )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"bubblewrap could not be started: {exc}") from None
    if result.returncode != 0:
        detail = result.stderr.decode("utf-8", "replace").strip()[-500:]
        raise SandboxUnavailable(f"bubblewrap cannot create the sandbox on this host: {detail}")
    _probed.add(key)


def startup_report(settings: Settings) -> tuple[int, str]:
    """What the worker logs at start about the sandbox: a loud warning when it is off or cannot work.

    Returns:
        A logging level and the message.
    """
    policy = SandboxPolicy.from_settings(settings)
    if policy.mode == "none":
        return logging.WARNING, (
            "MILESTONE COMMANDS RUN WITHOUT A SANDBOX (QP_COMMAND_SANDBOX=none): repository code runs as the "
            "worker's user, with the worker's files, database, network and processes in its reach"
        )
    try:
        ensure_available(policy)
    except SandboxUnavailable as exc:
        return logging.ERROR, (
            f"milestone commands cannot run, they fail with COMMANDS_SANDBOX_UNAVAILABLE: {exc} (docs/DEPLOY.md)"
        )
    user = f"uid {policy.uid}" if privileged() else "the worker's uid"
    return logging.INFO, (
        f"milestone commands run in a bubblewrap sandbox as {user}; network for "
        f"{len(settings.command_network_repo_patterns)} repository pattern(s)"
    )
