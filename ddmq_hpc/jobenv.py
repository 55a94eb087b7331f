"""What a batch job knows about itself, read from the scheduler's environment.

SLURM and PBS (PBS Pro and Torque) export different variables for the same
facts; a completion event names them the same way for both, so a waiting
workflow need not care which scheduler ran the job.
"""
from __future__ import annotations

import os

from ddmq.console import iso_utc

TYPE_CHECKING = False  # typing is for annotations only: it slows every job's start-up
if TYPE_CHECKING:
    from typing import Any, Mapping

# What a job can say about its own end (ddmq-notify --state). NODE_FAIL: the
# SLURM template's trap, killed because its node was set down (Reason=NodeDown).
STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL")

# event key: variables to try, first set one wins
_SLURM = {
    "job_id": ("SLURM_JOB_ID", "SLURM_JOBID"),
    "array_job_id": ("SLURM_ARRAY_JOB_ID",),
    "array_task_id": ("SLURM_ARRAY_TASK_ID",),
    "job_name": ("SLURM_JOB_NAME",),
    "user": ("SLURM_JOB_USER",),
    "submit_dir": ("SLURM_SUBMIT_DIR",),
    "partition": ("SLURM_JOB_PARTITION",),
    "node": ("SLURMD_NODENAME",),
    "cluster": ("SLURM_CLUSTER_NAME",),
}
_PBS = {
    "job_id": ("PBS_JOBID",),
    "array_job_id": ("PBS_ARRAY_ID",),
    "array_task_id": ("PBS_ARRAY_INDEX", "PBS_ARRAYID"),
    "job_name": ("PBS_JOBNAME",),
    "user": ("PBS_O_LOGNAME",),
    "submit_dir": ("PBS_O_WORKDIR",),
    "partition": ("PBS_QUEUE",),
}


def _pbs_server(env: Mapping[str, str]) -> str | None:
    """The PBS server that runs the job: PBS's name for its cluster.

    PBS Pro, OpenPBS and Torque all name a job SEQUENCE.SERVER (``123.pbs01``,
    ``88[2].pbs01``), so the job id is asked first: it is the running server's
    own word, while PBS_SERVER and Torque's PBS_O_SERVER (where qsub sent the
    job) may come from the submitter's environment (``qsub -V``).
    """
    server = env.get("PBS_JOBID", "").partition(".")[2]
    return server or env.get("PBS_SERVER") or env.get("PBS_O_SERVER") or None


def scheduler(env: Mapping[str, str]) -> str | None:
    if "SLURM_JOB_ID" in env or "SLURM_JOBID" in env:
        return "slurm"
    if "PBS_JOBID" in env:
        return "pbs"
    return None


def _user(env: Mapping[str, str]) -> str:
    """The login name as getpass.getuser() finds it (variables, then the password
    database), without importing getpass: it imports termios and more, for every job."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        if env.get(name):
            return env[name]
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return str(os.getuid())


def completion_event(
    status: int | None = None, state: str | None = None, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The JSON object ``ddmq-notify`` publishes when given no message.

    ``state`` defaults from ``status``: 0 is COMPLETED, anything else FAILED;
    with neither, the event says only that the job (or shell) got this far.
    Outside a job it still carries host, user and time. ``cluster`` (SLURM's
    ClusterName, PBS's server) tells apart jobs of two clusters that share a
    root: their job ids repeat.
    """
    env = os.environ if env is None else env
    if state is None and status is not None:
        state = "COMPLETED" if status == 0 else "FAILED"
    event: dict[str, Any] = {
        "event": "job_end",
        "scheduler": scheduler(env),
        "host": os.uname().nodename,
        "user": _user(env),
        "time": iso_utc(),
        "status": status,
        "state": state,
    }
    names = _SLURM if event["scheduler"] == "slurm" else _PBS if event["scheduler"] == "pbs" else {}
    for key, variables in names.items():
        value = next((env[v] for v in variables if env.get(v)), None)
        if value is not None:
            event[key] = value
    server = _pbs_server(env) if event["scheduler"] == "pbs" else None
    if server is not None:
        event["cluster"] = server
    if event["scheduler"] is None:
        event["submit_dir"] = os.getcwd()
    return event
