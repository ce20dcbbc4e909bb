"""Running a milestone's commands: in the sandbox, bounded in time, and nothing they start outlives the step."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path

from quantapilot.models import StepOutcome
from quantapilot.sandbox import Launch, SandboxPolicy, command_env, ensure_available, launch, prepare_worktree

OUTPUT_TAIL_CHARS = 4000
# After a command is killed (or exited), its output is read for at most this long: a process that escaped the
# kill (possible only without the sandbox) may hold the pipe open forever.
OUTPUT_DRAIN_S = 5.0


async def run_command(
    name: str, command: str, *, cwd: Path, timeout_s: float, sandbox: SandboxPolicy | None = None
) -> StepOutcome:
    """Run one milestone command in the worktree (the caller heartbeats).

    The command runs in the sandbox of ``sandbox`` (default: the settings' defaults, so bubblewrap), with a
    scrubbed environment. It must exit within ``timeout_s``; on timeout, on cancellation and after it exited,
    everything it started is killed (the sandbox's PID namespace, or without the sandbox its process group), so
    nothing outlives the step.

    Raises:
        SandboxUnavailable: The sandbox cannot be built on this host.
    """
    policy = sandbox or SandboxPolicy.defaults()
    cwd = await asyncio.to_thread(cwd.resolve)
    sandboxed = policy.mode == "bwrap"
    env = command_env(cwd, sandboxed=sandboxed)
    if sandboxed:
        await asyncio.to_thread(ensure_available, policy)
        await asyncio.to_thread(prepare_worktree, policy, cwd)
    info_r, info_w = os.pipe() if sandboxed else (-1, -1)
    try:
        with (
            launch(policy, command, cwd=cwd, env=env, info_fd=info_w)
            if sandboxed
            else contextlib.nullcontext(Launch(argv=["/bin/sh", "-c", command], pass_fds=()))
        ) as start:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *start.argv,
                cwd=cwd,
                # bwrap sets the command's environment itself (--clearenv, --setenv), and starts with PATH only.
                env={"PATH": env["PATH"]} if sandboxed else env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                pass_fds=start.pass_fds,
            )
    except BaseException:
        if sandboxed:
            os.close(info_r)
        raise
    finally:
        if sandboxed:
            os.close(info_w)
    output = bytearray()
    timed_out = False

    async def _read() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            output.extend(chunk)
            del output[: max(0, len(output) - OUTPUT_TAIL_CHARS * 4)]

    reader = asyncio.ensure_future(_read())
    sandbox_init = asyncio.ensure_future(_sandbox_init(info_r)) if sandboxed else None
    try:
        await asyncio.wait_for(proc.wait(), timeout=timeout_s)
    except TimeoutError:
        timed_out = True
    finally:
        # Every way out (exit, timeout, cancellation) ends everything the command started.
        await _stop(proc, sandbox_init)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(reader, timeout=OUTPUT_DRAIN_S)
    tail = output.decode("utf-8", "replace")[-OUTPUT_TAIL_CHARS:]
    return StepOutcome(
        name=name,
        command=command,
        exit_code=None if timed_out else proc.returncode,
        output_tail=tail,
        duration_s=round(time.monotonic() - started, 3),
        timed_out=timed_out,
    )


async def _sandbox_init(info_fd: int) -> int | None:
    """A pidfd of the sandbox's PID 1, from the JSON bwrap writes to ``--info-fd`` (and then closes).

    The pid is checked to be the init of the sandbox's own PID namespace before it is trusted (not a reused pid
    of some other process). ``None`` when bwrap wrote nothing, or PID 1 has exited already.
    """
    stream = asyncio.StreamReader()
    pipe = os.fdopen(info_fd, "rb", buffering=0)
    try:
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), pipe
        )
    except BaseException:
        pipe.close()
        raise
    try:
        data = await stream.read()
    finally:
        transport.close()
    try:
        info = json.loads(data)
        pid, namespace = int(info["child-pid"]), int(info["pid-namespace"])
    except (ValueError, KeyError, TypeError):
        return None
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        same = os.readlink(f"/proc/{pid}/ns/pid") == f"pid:[{namespace}]"
    except OSError:
        same = False  # gone, or a zombie: its namespace is empty already
    if not same:
        os.close(pidfd)
        return None
    return pidfd


async def _stop(proc: asyncio.subprocess.Process, sandbox_init: asyncio.Future[int | None] | None) -> None:
    """End whatever the command left running, and wait (bounded) until it is gone.

    In the sandbox, PID 1 is killed through its pidfd and awaited: the kernel kills every process of a PID
    namespace whose init dies, before that init counts as exited, so when this returns nothing of the command
    runs any more (also when it exited by itself and left children behind). Without the sandbox the command's
    process group is killed; a child that left the group escapes (one of the reasons for the sandbox).
    """
    init = _pidfd_of(sandbox_init)
    if proc.returncode is None:
        if init is not None:
            _kill_init(init)
        else:
            # Without the sandbox; or bwrap still setting up, whose child then dies with it (--die-with-parent).
            _kill_group(proc.pid)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), timeout=OUTPUT_DRAIN_S)
        except TimeoutError:
            _kill_group(proc.pid)
            await asyncio.shield(proc.wait())
    if sandbox_init is None:
        # The shell is gone: its background children in the group go too.
        _kill_group(proc.pid)
        return
    if init is None and not sandbox_init.done():
        # bwrap has exited, so its info pipe is closed: the pidfd (if PID 1 still lives) comes at once.
        await asyncio.wait([sandbox_init], timeout=OUTPUT_DRAIN_S)
        sandbox_init.cancel()  # no-op when done; else it never opens a pidfd nobody would close
        init = _pidfd_of(sandbox_init)
    if init is not None:
        try:
            _kill_init(init)
            await _exited(init, timeout_s=OUTPUT_DRAIN_S)
        finally:
            os.close(init)


def _pidfd_of(sandbox_init: asyncio.Future[int | None] | None) -> int | None:
    if sandbox_init is None or not sandbox_init.done() or sandbox_init.cancelled():
        return None
    if sandbox_init.exception() is not None:
        return None  # no pidfd: killing bwrap's process group is then what reaches the sandbox
    return sandbox_init.result()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_init(pidfd: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


async def _exited(pidfd: int, *, timeout_s: float) -> None:
    """Wait until the process of ``pidfd`` has exited (a pidfd turns readable then), for at most ``timeout_s``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def _readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, _readable)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done, timeout=timeout_s)
    finally:
        loop.remove_reader(pidfd)
