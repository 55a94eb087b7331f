"""What the scheduler says about the jobs ddmq watches: one query per call, for all of them.

A scheduler is a shared service that users are told not to poll: admins
report that ``sacct`` run many times a second floods their accounting, and
``qstat -f`` in a loop has been called a denial of service. So every function
here asks **once** and returns every job it learnt about; the caller
(``ddmq-reconcile``) decides which of them need an event, and asks again
only after its own rate limit.

Which jobs are watched is written into what the scheduler keeps, not kept by
ddmq: a job script rendered by ``ddmq-template`` carries
``#SBATCH --comment=ddmq:QUEUE@ROOT``
(:func:`~ddmq_hpc.jobevents.watch_tag`), and a job
cancelled while still pending -- it never runs a line -- still has it. One
``sacct`` listing of the user's recent jobs gives, for each, that comment
and how the job ended. Without accounting (``sacct`` refused), ``squeue
--states=all`` is asked instead: it knows jobs for the controller's
``MinJobAge`` after they end, and no exit codes.

States are SLURM's words (``sacct``/``squeue``); a terminal one is mapped to
the event's ``state`` (``CANCELLED by 1234`` is CANCELLED), and the raw word
is kept as ``scheduler_state``. (PBS, from ``qstat -x -f -F json``, is not
done yet.)
"""
from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass

from ddmq import DdmqError

from .jobevents import local_cluster

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Iterator

# SLURM's terminal job states, as the event's state names them. PREEMPTED and
# NODE_FAIL are terminal only for a job that is not requeued: one that is
# shows PENDING or REQUEUED again, and is left alone until it really ends.
SLURM_TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                            "PREEMPTED", "BOOT_FAIL", "DEADLINE"})
QUERY_TIMEOUT = 60.0  # seconds: a controller that does not answer in a minute is down


class SchedulerError(DdmqError):
    """The scheduler could not be asked (command missing, refused, timed out) or answered nonsense."""


@dataclass(frozen=True)
class JobRecord:
    """One job as the scheduler reports it."""

    job_id: str  # as the scheduler prints it: 1234, 1234_7 (SLURM array task)
    tag: str  # what the job carries to be watched (SLURM's --comment); "" if nothing
    scheduler_state: str  # the scheduler's own word, e.g. "CANCELLED by 0"
    state: str | None  # the event's state if the job has ended, else None
    cluster: str | None = None
    raw_id: str | None = None  # SLURM's own id of an array task (SLURM_JOB_ID in the job)
    exit_code: int | None = None
    signal: int | None = None
    end: float | None = None  # when it ended, seconds since the epoch
    user: str | None = None
    job_name: str | None = None


def slurm_state(raw: str) -> str | None:
    """The event's state for SLURM's state word ``raw``; None while the job has not ended."""
    word = raw.split(" ", 1)[0].rstrip("+")  # "CANCELLED by 0"; sacct may append "+"
    return word if word in SLURM_TERMINAL else None


def run(command: list[str], cwd: str | None = None, refused: str = "failed") -> str:
    """Run one scheduler command (a query, sbatch/qsub, scancel/qdel); what it printed on stdout.

    Every way it can go wrong is one line in a SchedulerError: the command
    missing, no answer within QUERY_TIMEOUT, or ``COMMAND REFUSED: `` and the
    last line it wrote on stderr (``refused`` says how, e.g. "refused the job").
    """
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=QUERY_TIMEOUT, check=False)
    except FileNotFoundError:
        raise SchedulerError(f"{command[0]} not found: is this a SLURM or PBS login node?") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{command[0]} did not answer in {QUERY_TIMEOUT:g} s") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise SchedulerError(f"{command[0]} {refused}: {why}")
    return done.stdout


def _exit_code(text: str) -> tuple[int | None, int | None]:
    """sacct's ExitCode ``N:S`` as (exit status, signal or None)."""
    status, _, signal = text.partition(":")
    try:
        return int(status), (int(signal) or None) if signal else None
    except ValueError:
        return None, None


def _timestamp(text: str) -> float | None:
    """A SLURM time (``2026-12-04T05:01:07``, local time) in seconds; None for Unknown/None."""
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _array_tasks(job_id: str) -> Iterator[str]:
    """``1234_[1-3,5%2]`` (a pending array, as one row) as its tasks ``1234_1``...; other ids as they are."""
    m = re.fullmatch(r"([0-9]+)_\[([0-9,\-]+)(?:%[0-9]+)?\]", job_id)
    if m is None:
        yield job_id
        return
    for part in m.group(2).split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            for task in range(int(low), int(high or low) + 1):
                yield f"{m.group(1)}_{task}"


_SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Cluster", "End", "User", "JobName", "Comment")


# The terminal states, as sacct --state abbreviates them. With --state, sacct
# selects the jobs that were in one of them during the window; without, it
# leaves out jobs that never became eligible: a job cancelled while held.
_SACCT_ENDED = "CA,CD,F,TO,OOM,NF,PR,BF,DL"


def slurm_jobs_sacct(user: str, window: float) -> list[JobRecord]:
    """The jobs of ``user`` that ended in the last ``window`` seconds: one ``sacct`` call.

    Comment is the last field and split off last, so a ``|`` in it (a root
    path may hold one) cannot shift the others.
    """
    out = run(["sacct", "-X", "-n", "-P", "-u", user, "--starttime", f"now-{max(int(window), 1)}",
                "--endtime", "now", f"--state={_SACCT_ENDED}", f"--format={','.join(_SACCT_FIELDS)}"])
    records = []
    for line in out.splitlines():
        fields = line.split("|", len(_SACCT_FIELDS) - 1)
        if len(fields) != len(_SACCT_FIELDS):
            continue
        job_id, raw_id, state, exit_code, cluster, end, owner, name, tag = fields
        status, signal = _exit_code(exit_code)
        for task_id in _array_tasks(job_id):
            records.append(JobRecord(
                job_id=task_id, tag=tag, scheduler_state=state, state=slurm_state(state),
                cluster=cluster.lower() or None, raw_id=raw_id if task_id == job_id else None,
                exit_code=status, signal=signal, end=_timestamp(end), user=owner or None, job_name=name or None))
    return records


def slurm_jobs_squeue(user: str) -> list[JobRecord]:
    """The jobs of ``user`` the controller still holds (``MinJobAge`` after they end): one ``squeue`` call.

    For a cluster without accounting. squeue has no exit codes, and names no
    cluster: the local one (:func:`~ddmq_hpc.jobevents.local_cluster`) is it.
    """
    out = run(["squeue", "--states=all", "-h", "-u", user, "-o", "%i|%A|%T|%e|%j|%k"])
    cluster = local_cluster()
    records = []
    for line in out.splitlines():
        fields = line.split("|", 5)
        if len(fields) != 6:
            continue
        job_id, raw_id, state, end, name, tag = fields
        tag = "" if tag == "(null)" else tag
        for task_id in _array_tasks(job_id):
            records.append(JobRecord(
                job_id=task_id, tag=tag, scheduler_state=state, state=slurm_state(state), cluster=cluster,
                raw_id=raw_id if task_id == job_id else None, end=_timestamp(end), user=user,
                job_name=name or None))
    return records


def slurm_jobs(user: str, window: float) -> list[JobRecord]:
    """The jobs of ``user`` that ended: from sacct where there is accounting, else from squeue."""
    try:
        return slurm_jobs_sacct(user, window)
    except SchedulerError as no_accounting:
        reason = str(no_accounting)
    try:
        return slurm_jobs_squeue(user)
    except SchedulerError as exc:
        raise SchedulerError(f"{reason}; and {exc}") from None


def watched(records: Iterable[JobRecord], tag: str) -> list[JobRecord]:
    """The records of jobs that carry ``tag``."""
    return [r for r in records if r.tag == tag]
