"""The process supervisor of ``qp up``: one child process per service, restarted when it dies.

A service that dies is restarted after a delay that doubles with every quick death (``Backoff``) up to a cap, and
falls back to the first delay once the process had run for a healthy period: a crash loop neither spins the CPU nor
leaves the stack down for long after a one-off crash. Each death is one line in the log (which service, its exit
code, the delay). Stopping stops every child in reverse start order and then removes whatever is left in each
child's process group (a command the worker ran, say), so nothing outlives ``qp up``.

Every child runs in its own session: a Ctrl-C at the terminal reaches ``qp up`` alone, which stops the children
in order instead of them all dying at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType


@dataclass(frozen=True)
class Backoff:
    """How long to wait before restarting a service that died.

    Attributes:
        initial_s: Delay after the first death (and after a death that followed a healthy run).
        max_s: The delay never grows beyond this.
        healthy_after_s: A process that ran at least this long counts as healthy: its next death starts over.
    """

    initial_s: float = 1.0
    max_s: float = 30.0
    healthy_after_s: float = 60.0

    def delay(self, failures: int) -> float:
        """The delay after ``failures`` quick deaths in a row (1 for the first)."""
        return min(self.max_s, self.initial_s * 2.0 ** max(0, failures - 1))


@dataclass(frozen=True)
class Service:
    """A process the supervisor keeps running.

    Attributes:
        name: Name in the log lines (``worker``, ``api``, ``temporal``).
        argv: The command line, executable first.
    """

    name: str
    argv: Sequence[str]


@dataclass
class _Child:
    service: Service
    proc: subprocess.Popen[bytes]
    started_at: float
    failures: int = 0
    restart_at: float | None = None  # set while the service is dead and waiting for its restart


def describe_exit(code: int) -> str:
    """An exit status for people: ``code 3``, or ``code -9 (SIGKILL)`` for a process a signal ended."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"code {code} ({signal.Signals(-code).name})"
    return f"code {code}"


def _kill_group(pgid: int, wait_s: float = 0.0) -> None:
    """SIGKILL what is left of a child's process group (its leader has exited; pgid == its pid).

    Args:
        pgid: The group.
        wait_s: How long to wait for the group to be gone (SIGKILL takes effect a moment later; a reaped-late
            zombie also counts as present, hence the bound).
    """
    deadline = time.monotonic() + wait_s
    try:
        os.killpg(pgid, signal.SIGKILL)
        while time.monotonic() < deadline:
            time.sleep(0.02)
            os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return


class Supervisor:
    """Starts services as child processes, restarts those that die, and stops them all.

    Not thread-safe: one thread (the main one, for :meth:`stop`'s signal handling) drives it.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        log: Callable[[str], None],
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a supervisor with no services yet.

        Args:
            env: Environment of every child.
            log: Where the one line per death goes.
            backoff: Restart delays; the defaults of :class:`Backoff` when None.
            clock: Monotonic seconds for the restart delays (tests pass their own).
        """
        self._env = dict(env)
        self._log = log
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._children: list[_Child] = []
        self._hurry = False
        self._deferring = False
        self._deferred = False

    def handle_signal(self, signum: int, frame: FrameType | None) -> None:
        """Handler for SIGINT and SIGTERM: interrupt (KeyboardInterrupt), but never between a spawn and its record.

        Raising in the middle of starting a process would leave a child nobody stops.
        """
        if self._deferring:
            self._deferred = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def _uninterrupted(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._deferred:
            self._deferred = False
            raise KeyboardInterrupt

    def _spawn(self, service: Service) -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(service.argv), env=self._env, start_new_session=True)

    def start(self, service: Service) -> subprocess.Popen[bytes]:
        """Start a service's process and supervise it from now on.

        Returns:
            The process (callers wait for its port on the first start).
        """
        with self._uninterrupted():
            proc = self._spawn(service)
            self._children.append(_Child(service, proc, self._clock()))
        return proc

    def pid(self, name: str) -> int | None:
        """The current process id of a service, None while it waits for its restart."""
        for child in self._children:
            if child.service.name == name:
                return None if child.restart_at is not None else child.proc.pid
        raise KeyError(name)

    def check(self) -> None:
        """One supervision step: notice processes that died, restart those whose delay has passed."""
        now = self._clock()
        for child in self._children:
            if child.restart_at is None:
                code = child.proc.poll()
                if code is None:
                    continue
                # Whatever the dead process started (a git command, a sandbox) goes with it.
                _kill_group(child.proc.pid)
                healthy = now - child.started_at >= self._backoff.healthy_after_s
                child.failures = 1 if healthy else child.failures + 1
                delay = self._backoff.delay(child.failures)
                child.restart_at = now + delay
                self._log(
                    f"{child.service.name} (pid {child.proc.pid}) exited with {describe_exit(code)}; "
                    f"restart in {delay:g} s"
                )
            elif now >= child.restart_at:
                with self._uninterrupted():
                    child.proc = self._spawn(child.service)
                    child.started_at, child.restart_at = now, None

    def run(self, poll_s: float = 0.25) -> None:
        """Supervise until interrupted (KeyboardInterrupt, which :meth:`handle_signal` raises on SIGTERM too)."""
        while True:
            self.check()
            time.sleep(poll_s)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._hurry = True

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop every service in reverse start order: SIGTERM, SIGKILL after ``timeout_s``; no process survives.

        A second Ctrl-C or SIGTERM while stopping kills what is still running at once, instead of interrupting the
        stop and leaving children behind.

        Args:
            timeout_s: How long the services get, together, to shut down gracefully.
        """
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            running = [c.proc for c in reversed(self._children) if c.restart_at is None and c.proc.poll() is None]
            for proc in running:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            # Real time here, whatever the clock of the backoff: a stop must end.
            deadline = time.monotonic() + timeout_s
            for proc in running:
                while proc.poll() is None and not self._hurry and time.monotonic() < deadline:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=0.1)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for child in reversed(self._children):
                _kill_group(child.proc.pid, wait_s=2.0)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
