"""Driving a command on a pseudo-terminal, as a person at a keyboard would."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time


def run_in_terminal(argv: list[str], env: dict[str, str], answer: bytes, timeout: float = 60) -> str:
    """Run a command on a pseudo-terminal, answer its first prompt, and return everything it wrote."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(argv, env=env, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    output = b""
    answered = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(primary, 4096)
                except OSError:  # the command closed the terminal: it has exited
                    break
                if not chunk:
                    break
                output += chunk
                if not answered and b": " in output:
                    os.write(primary, answer)
                    answered = True
            elif proc.poll() is not None:
                break
        proc.wait(timeout=10)
    finally:
        os.close(primary)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output.decode(errors="replace")
    return output.decode(errors="replace").replace("\r\n", "\n")
