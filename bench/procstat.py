"""What a benchmark reads off processes: resident memory and CPU time from /proc, by process over a stretch."""

from __future__ import annotations

import math
import os
from pathlib import Path

from bench.common import fmt


def rss_mib(pid: int) -> float:
    """Resident set size of a process in MiB (``VmRSS`` of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat_ticks(pid: int) -> tuple[int, int]:
    """CPU ticks of a process itself (utime + stime) and of its children it has waited for (cutime + cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


class CpuMeter:
    """CPU seconds by process over a measured stretch: the worker, its git children, the dev server, bench + API.

    The worker's children are the git (and sandbox) processes it ran and reaped: their CPU is in its ``cutime``
    and ``cstime``. "bench + API" is this process (the API, the event watcher, the client, an in-process ceiling
    worker); the git commands the benchmark itself runs (making repositories) fall outside the stretches measured.

    Args:
        worker: Pid of ``python -m worker``; None when the worker runs in this process (a ceiling).
        server: Pid of the dev server (:func:`dev_server_pid`); None when it cannot be found.
    """

    def __init__(self, *, worker: int | None, server: int | None) -> None:
        self._worker = worker
        self._server = server
        self._start: dict[str, int] = {}
        self._spent: dict[str, int] = {}

    def _now(self) -> dict[str, int]:
        ticks: dict[str, int] = {}
        if self._worker is not None:
            ticks["worker"], ticks["git (worker's children)"] = _stat_ticks(self._worker)
        if self._server is not None:
            ticks["dev server"] = _stat_ticks(self._server)[0]
        ticks["bench + API"] = _stat_ticks(os.getpid())[0]
        return ticks

    def start(self) -> None:
        """Begin a measured stretch."""
        self._start = self._now()

    def stop(self) -> None:
        """End the stretch begun by :meth:`start`."""
        now = self._now()
        self._spent = {name: now[name] - self._start.get(name, now[name]) for name in now}

    def ms_per(self, operations: int) -> dict[str, float]:
        """CPU milliseconds per operation by process over the last stretch (NaN for no operation)."""
        hz = os.sysconf("SC_CLK_TCK")
        return {name: (t / hz * 1000 / operations if operations else math.nan) for name, t in self._spent.items()}

    def line(self, what: str, operations: int) -> str:
        """One printable line: ``CPU ms per <what>: worker 88.0, ...`` over the last stretch."""
        parts = ", ".join(f"{name} {fmt(ms)}" for name, ms in self.ms_per(operations).items())
        total = sum(self.ms_per(operations).values())
        return f"CPU ms per {what}: {parts} (all {fmt(total)})"


def dev_server_pid() -> int | None:
    """Pid of the ``temporal server start-dev`` child of this process, if there is one."""
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me and b"start-dev" in cmdline:
            return int(entry.name)
    return None
