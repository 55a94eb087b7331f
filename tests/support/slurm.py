"""The real single-node SLURM the tests submit to: whether it is there (with accounting), and small queries.

CI starts it (tests/harness/start-slurm.sh, with ``SLURM_ACCOUNTING=slurmdbd``)
and sets DDMQ_REQUIRE_SLURM=1, so the fixtures here fail there when it is
missing and skip elsewhere. Shared by every test file that submits jobs.
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ddmq import Broker
from ddmq_hpc.jobevents import event_key
from tests.support.capability import need
from tests.support.jobscripts import QUEUE

REAL_SACCT = "/usr/bin/sacct"
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED")


def slurm_problem() -> str | None:
    """Why jobs cannot be submitted here, or None if a node is up to run them."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "sinfo/sbatch not installed"
    try:
        info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "`sinfo -h` did not answer within 15 s"
    if info.returncode != 0:
        lines = info.stderr.strip().splitlines()
        return f"`sinfo -h` failed: {lines[-1] if lines else f'exit status {info.returncode}'}"
    states = info.stdout.split()
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return f"no node can run jobs (node states: {', '.join(states) or 'none'})"
    return None


def accounting_problem() -> str | None:
    """Why sacct cannot answer here (no slurmdbd), or None."""
    problem = slurm_problem()
    if problem is not None:
        return problem
    try:
        done = subprocess.run([REAL_SACCT, "-n", "-X", "-P", "-j", "1", "--format=JobID"], capture_output=True,
                              text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sacct cannot be run: {exc}"
    if done.returncode != 0:
        return f"sacct fails ({done.stderr.strip()}): start SLURM with SLURM_ACCOUNTING=slurmdbd"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    """Skip without SLURM, or fail if DDMQ_REQUIRE_SLURM=1 (as in CI) says it must be there."""
    problem = slurm_problem()
    need("slurm", problem and f"SLURM is not available: {problem}. Start it as root with tests/harness/start-slurm.sh")


@pytest.fixture(scope="module")
def accounting() -> None:
    """SLURM with accounting (sacct answers), else skip, or fail where CI requires it."""
    problem = accounting_problem()
    need("slurm", problem and f"SLURM with accounting is not available: {problem}. Start it as root with "
                              "SLURM_ACCOUNTING=slurmdbd tests/harness/start-slurm.sh")


def scancel(*job_ids: str) -> None:
    subprocess.run(["scancel", *job_ids], capture_output=True, timeout=30)


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (empty once SLURM has forgotten the job)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                         timeout=30).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def final_state(job_id: str, timeout: float = 40) -> tuple[str, str]:
    """The JobState and ExitCode SLURM records once the job has ended."""
    deadline = time.monotonic() + timeout
    while True:
        info = job_info(job_id)
        if info.get("JobState") in ENDED or time.monotonic() > deadline:
            return info.get("JobState", "?"), info.get("ExitCode", "?")
        time.sleep(0.5)


def events_by_job(root: Path, queue: str = QUEUE) -> dict[str, list[dict[str, Any]]]:
    """Every terminal event in ``queue`` (nothing consumed), by job id as SLURM prints it."""
    found: dict[str, list[dict[str, Any]]] = {}
    for message in Broker(root).peek(queue, n=1000):
        event = message.message
        key = event_key(event)
        assert key is not None, event
        found.setdefault(key.partition(".")[2], []).append(event)
    return found
