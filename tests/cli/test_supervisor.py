"""The supervisor behind `qp up`: a dead process is logged and restarted with backoff; stopping leaves nothing."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from quantapilot.cli.supervisor import Backoff, Service, Supervisor, describe_exit
from tests.cli.procs import Process, descendants, process, running

# A process that also starts a grandchild in its process group, as the worker starts git.
WITH_GRANDCHILD = Service("sleeper", ["/bin/sh", "-c", "sleep 300 & wait"])
EXITS_AT_ONCE = Service("crasher", ["/bin/sh", "-c", "exit 3"])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll until the condition is truthy."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def checked(supervisor: Supervisor, probe: Callable[[], object]) -> object:
    """One supervision step, then the probe."""
    supervisor.check()
    return probe()


def test_supervisor_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(initial_s=1.0, max_s=30.0, healthy_after_s=60.0)
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_supervisor_describes_exit_codes_and_signals() -> None:
    assert describe_exit(3) == "code 3"
    assert describe_exit(-9) == "code -9 (SIGKILL)"
    assert describe_exit(-15) == "code -15 (SIGTERM)"


def test_supervisor_restarts_a_killed_process_and_stop_leaves_no_process() -> None:
    lines: list[str] = []
    supervisor = Supervisor(os.environ, log=lines.append, backoff=Backoff(initial_s=0.2, max_s=1, healthy_after_s=60))
    first = supervisor.start(WITH_GRANDCHILD)
    wait_for(lambda: len(descendants(first.pid)) == 1, what="the grandchild")
    (grandchild,) = descendants(first.pid)
    seen: list[Process] = []
    try:
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: checked(supervisor, lambda: lines), what="the log line")
        assert lines == [f"sleeper (pid {first.pid}) exited with code -9 (SIGKILL); restart in 0.2 s"]
        # What the dead process started went with it (its process group), instead of running on unsupervised.
        wait_for(lambda: not running(grandchild), what="the grandchild to go")
        assert supervisor.pid("sleeper") is None  # waiting for its restart
        wait_for(lambda: checked(supervisor, lambda: supervisor.pid("sleeper")), what="the restart")
        second = supervisor.pid("sleeper")
        assert second is not None and second != first.pid
        wait_for(lambda: len(descendants(second)) == 1, what="the new grandchild")
        seen += [p for p in [process(second), *descendants(second)] if p]
        assert len(seen) == 2
        assert len(lines) == 1  # one line per death, nothing for the restart itself
    finally:
        supervisor.stop(timeout_s=5)
    # The restarted process and the grandchild it started (which ignored nothing, but is not a child of ours).
    assert [p for p in seen if running(p)] == []


def test_supervisor_backs_off_while_a_process_keeps_dying_and_starts_over_after_a_healthy_run() -> None:
    lines: list[str] = []
    clock = FakeClock()
    supervisor = Supervisor(
        os.environ, log=lines.append, backoff=Backoff(initial_s=1, max_s=4, healthy_after_s=60), clock=clock
    )

    def died(before: int) -> Callable[[], object]:
        return lambda: checked(supervisor, lambda: len(lines) > before)

    supervisor.start(EXITS_AT_ONCE)
    try:
        delays: list[str] = []
        for _death in range(4):
            wait_for(died(len(lines)), what="a death")
            delays.append(lines[-1].rsplit("restart in ", 1)[1])
            assert "crasher (pid " in lines[-1] and "exited with code 3;" in lines[-1]
            clock.now += 0.5
            supervisor.check()
            assert supervisor.pid("crasher") is None, "restarted before its delay"
            clock.now += 4
            supervisor.check()
            assert supervisor.pid("crasher") is not None
        assert delays == ["1 s", "2 s", "4 s", "4 s"]
        # It ran for a healthy period (as the clock says) before dying again: the delay starts over.
        clock.now += 61
        wait_for(died(len(lines)), what="a death after a healthy run")
        assert lines[-1].endswith("restart in 1 s"), lines
    finally:
        supervisor.stop(timeout_s=5)
