"""Processes as /proc shows them: a process's children and descendants, and whether one still runs.

A process is named by (pid, start time) so that a pid the kernel gave to a new process meanwhile is not taken for
the old one.
"""

from __future__ import annotations

import os
from pathlib import Path

Process = tuple[int, int]  # pid, start time in clock ticks since boot


def _stat(pid: int) -> tuple[str, int, int] | None:
    """State, parent pid and start time of a process; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after its closing one.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def cmdline(pid: int) -> str:
    """The command line of a process, arguments joined by spaces ('' when gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def children(pid: int) -> list[Process]:
    """The live child processes of ``pid``."""
    found: list[Process] = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) and stat[1] == pid and stat[0] != "Z":
            found.append((int(entry), stat[2]))
    return found


def descendants(pid: int) -> list[Process]:
    """Every live process below ``pid`` (children, their children, ...)."""
    found: list[Process] = []
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child[0])
    return found


def running(process: Process) -> bool:
    """Whether the process still runs (a zombie does not: it only waits to be reaped)."""
    stat = _stat(process[0])
    return stat is not None and stat[2] == process[1] and stat[0] != "Z"


def child_running(parent: int, marker: str) -> int | None:
    """The pid of the child of ``parent`` whose command line contains ``marker``, if one runs."""
    for pid, _start in children(parent):
        if marker in cmdline(pid):
            return pid
    return None


def process(pid: int) -> Process | None:
    """The process now running as ``pid``, None when there is none."""
    stat = _stat(pid)
    return None if stat is None or stat[0] == "Z" else (pid, stat[2])
