"""Watching a real process from outside."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest


def wait_blocked_on_pipe(proc: subprocess.Popen, doing: str, timeout: float) -> None:
    """Return once ``proc`` sleeps in the kernel on a pipe (reading or writing, as ``doing`` says).

    Seen in /proc/PID/wchan (pipe_read, pipe_write, or pipe_wait on older
    kernels); skips where there is no wchan to look at.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            wchan = Path(f"/proc/{proc.pid}/wchan").read_text()
        except OSError:
            pytest.skip(f"no /proc/PID/wchan to see the process block {doing}")
        if "pipe" in wchan:
            return
        time.sleep(0.01)
    raise AssertionError(f"the process never blocked {doing}")
