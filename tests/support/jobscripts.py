"""Running scripts from ``ddmq-template`` without a scheduler, as one would run them.

No PBS server can be installed here, and a real SLURM time limit cannot be
made shorter than a minute, so the PBS tests and some SLURM tests run the
rendered script under bash with the variables the scheduler sets, send TERM
to the whole job as the scheduler does on a cancel or at the time limit, and
put fake ``qstat``/``squeue`` commands first in PATH to answer the script's
question "was that the time limit?".
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ddmq import Broker
from ddmq_hpc.template import render

BIN = Path(sys.executable).parent
QUEUE = "done"
SCHEDULER_PREFIXES = ("SLURM", "PBS_", "DDMQ_")


def write_script(path: Path, scheduler: str, command: Sequence[str], root: Path, **options: Any) -> Path:
    """Render a job script for ``scheduler`` publishing to QUEUE under ``root``."""
    path.write_text(render(scheduler, command, QUEUE, root=root, **options), encoding="utf-8")
    return path


def fake_command(bin_dir: Path, name: str, body: str) -> Path:
    """A shell script ``name`` in ``bin_dir`` (put first in PATH) standing in for a scheduler command."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def job_env(home: Path, variables: Mapping[str, str], bin_dir: Path | None = None) -> dict[str, str]:
    """The environment of a job: the scheduler's ``variables`` and none of this process's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_PREFIXES)}
    env["HOME"] = str(home)
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.update(variables)
    return env


def start(script: Path, env: Mapping[str, str], cwd: Path) -> subprocess.Popen[str]:
    """Run ``script`` under bash in a session of its own, as a scheduler runs a job."""
    return subprocess.Popen(["bash", str(script)], env=dict(env), cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def run(script: Path, env: Mapping[str, str], cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = start(script, env, cwd)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for_file(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def session(sid: int) -> list[int]:
    """Every process of session ``sid``, whatever its process group (timeout(1) makes its own)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(stat.rsplit(")", 1)[1].split()[3]) == sid:
            pids.append(int(entry))
    return pids


def terminate_job(proc: subprocess.Popen[str], script_after: float = 0) -> None:
    """TERM to every process of the job, as SLURM (by process tree) and PBS (by session) send it.

    Schedulers signal the processes one by one; with ``script_after`` the
    script's own TERM comes that many seconds after its children's, long
    enough for the script to have seen its command end.
    """
    children = [pid for pid in session(proc.pid) if pid != proc.pid]
    for pid in children + ([] if script_after else [proc.pid]):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    if script_after:
        time.sleep(script_after)
        proc.send_signal(signal.SIGTERM)


def terminate(proc: subprocess.Popen[str], whole_job: bool = True, script_after: float = 0,
              timeout: float = 30) -> tuple[subprocess.CompletedProcess[str], float]:
    """Send TERM to every process of the job (as schedulers do) or to the script alone.

    Returns the finished process and how long it took to exit after the TERM.
    """
    sent = time.monotonic()
    if whole_job:
        terminate_job(proc, script_after)
    else:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    took = time.monotonic() - sent
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), took


def events(root: Path) -> list[dict[str, Any]]:
    """The event bodies published to QUEUE, oldest first, left in place."""
    return [m.message for m in Broker(root).peek(QUEUE, n=100)]
