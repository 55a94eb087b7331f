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
is kept as ``scheduler_state``.

PBS (PBS Pro / OpenPBS 18 and later: Torque has no JSON output) is asked
with one ``qstat -x -t -f -F json``: ``-x`` adds the jobs that ended within
the server's ``job_history_duration`` (job history must be enabled, as
``sacct`` needs accounting), ``-t`` lists an array's subjobs, which are the
jobs the template runs as. qstat refuses ``-u`` with ``-F json``, so the
listing is of every job the server shows the user, and is filtered here by
``Job_Owner``; it is read up to :data:`PBS_OUTPUT_LIMIT`. The watch tag is the
``DDMQ_WATCH`` variable the template passes with ``#PBS -v``
(:func:`~ddmq_hpc.jobevents.pbs_watch_value`): PBS keeps it in
``Variable_List`` of finished jobs too. How a job ended is in
``job_state`` (F finished, or X for a subjob of an array still running),
``substate`` (91 deleted by qdel, 92 finished, 93 failed) and
``Exit_status`` (the script's exit status; 256 + N for signal N; negative
for PBS's own reasons, e.g. -29 JOB_EXEC_KILL_WALLTIME) -- see
:func:`pbs_state`. The parsing was tested against real ``qstat -x -f -F json``
output replayed by a stand-in ``qstat`` (tests/data/pbs/), not a live server.
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
    from typing import Any, Iterable, Iterator, Mapping

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

    job_id: str  # as the scheduler prints it: 1234, 1234_7 (SLURM array task), 88[7].server (PBS subjob)
    tag: str  # what the job carries to be watched (SLURM's --comment, PBS's DDMQ_WATCH); "" if nothing
    scheduler_state: str  # the scheduler's own word, e.g. "CANCELLED by 0"
    state: str | None  # the event's state if the job has ended, else None
    cluster: str | None = None
    raw_id: str | None = None  # SLURM's own id of an array task (SLURM_JOB_ID in the job)
    exit_code: int | None = None
    signal: int | None = None
    end: float | None = None  # when it ended, seconds since the epoch
    user: str | None = None
    job_name: str | None = None
    scheduler: str = "slurm"
    array_job_id: str | None = None  # PBS: the array a subjob belongs to, 88[].server
    array_task_id: str | None = None  # PBS: the subjob's index


def slurm_state(raw: str) -> str | None:
    """The event's state for SLURM's state word ``raw``; None while the job has not ended."""
    word = raw.split(" ", 1)[0].rstrip("+")  # "CANCELLED by 0"; sacct may append "+"
    return word if word in SLURM_TERMINAL else None


def run(command: list[str], cwd: str | None = None, refused: str = "failed",
        limit: int | None = None) -> str:
    """Run one scheduler command (a query, sbatch/qsub, scancel/qdel); what it printed on stdout.

    Every way it can go wrong is one line in a SchedulerError: the command
    missing, no answer within QUERY_TIMEOUT, more than ``limit`` bytes printed
    (stdout goes to a temporary file, so a runaway listing is measured before
    it is read), or ``COMMAND REFUSED: `` and the last line it wrote on
    stderr (``refused`` says how, e.g. "refused the job").
    """
    import tempfile

    with tempfile.TemporaryFile() as out:
        try:
            done = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.PIPE, text=True,
                                  errors="replace", timeout=QUERY_TIMEOUT, check=False)
        except FileNotFoundError:
            raise SchedulerError(f"{command[0]} not found: is this a SLURM or PBS login node?") from None
        except subprocess.TimeoutExpired:
            raise SchedulerError(f"{command[0]} did not answer in {QUERY_TIMEOUT:g} s") from None
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise SchedulerError(f"{command[0]} {refused}: {why}")
        size = out.seek(0, 2)
        if limit is not None and size > limit:
            raise SchedulerError(f"{command[0]} printed {size:,} bytes, more than the {limit:,} ddmq reads")
        out.seek(0)
        return out.read().decode("utf-8", "replace")


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


# PBS's Exit_status values of its own (src/include/job.h, JOB_EXEC_*) that say
# more than FAILED: a resource limit MoM enforced, or the node lost. The
# rerun codes (-11, -14, -20, -32) requeue a rerunnable job; a job that shows
# them finished was not rerunnable.
_PBS_EXIT_STATES = {
    -29: "TIMEOUT",  # JOB_EXEC_KILL_WALLTIME
    -28: "TIMEOUT",  # JOB_EXEC_KILL_CPUT
    -27: "OUT_OF_MEMORY",  # JOB_EXEC_KILL_MEM
    -26: "OUT_OF_MEMORY",  # JOB_EXEC_KILL_VMEM
    -31: "OUT_OF_MEMORY",  # JOB_EXEC_KILL_HPMEM
    -14: "NODE_FAIL",  # JOB_EXEC_RERUN_SIS_FAIL: a sister node failed
    -20: "NODE_FAIL",  # JOB_EXEC_RERUN_MS_FAIL: the mother superior's node failed
    -32: "NODE_FAIL",  # JOB_EXEC_RERUN_ZOMBIE_JOB: MoM lost the job (node re-imaged)
}
_PBS_ENDED = frozenset("FX")  # finished (history), expired (a subjob of an array still running)
# substates JOB_SUBSTATE_TERMINATED (qdel), _FINISHED (exit status 0 or none), _FAILED (nonzero, or node down)
_PBS_DELETED, _PBS_FINISHED, _PBS_FAILED = 91, 92, 93
_SIGTERM = 15
PBS_OUTPUT_LIMIT = 128 << 20  # bytes of qstat output read: some 40 000 jobs of ~3 KB


def _pbs_int(value: object) -> int | None:
    """An integer attribute of qstat's JSON: a number, or a string of one (qstat prints -29 as "-29")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def pbs_state(job_state: str, substate: int | None, exit_status: int | None) -> str | None:
    """The event's state for a PBS job; None while it has not ended.

    Deleted (qdel, substate 91) is CANCELLED whatever the script's status: a
    job deleted while queued has none, one deleted while running has 271
    (256 + SIGTERM). With no exit status, failed (substate 93) is a job
    whose node went down, finished (92) a subjob whose record PBS dropped,
    anything else one that never ran. 0 is COMPLETED; a status of the script,
    or a signal other than TERM (256 + N), FAILED; TERM not from qdel, e.g.
    a preemption, CANCELLED; PBS's own negative codes as
    :data:`_PBS_EXIT_STATES` says, else FAILED (the job could not start).
    """
    if job_state not in _PBS_ENDED:
        return None
    if substate == _PBS_DELETED:
        return "CANCELLED"
    if exit_status is None:  # it never ran, or its node went down, or its record is gone
        return {_PBS_FAILED: "NODE_FAIL", _PBS_FINISHED: "COMPLETED"}.get(substate or 0, "CANCELLED")
    if exit_status == 0:
        return "COMPLETED"
    if exit_status == 256 + _SIGTERM:
        return "CANCELLED"
    return _PBS_EXIT_STATES.get(exit_status, "FAILED")


def _pbs_timestamp(value: object) -> float | None:
    """A PBS time as qstat prints it (``Tue Oct 11 08:13:47 2022``, local time), or seconds since the epoch."""
    seconds = _pbs_int(value)
    if seconds is not None:
        return float(seconds)
    if not isinstance(value, str):
        return None
    try:
        return time.mktime(time.strptime(" ".join(value.split()), "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return None


def _pbs_record(job_id: str, attributes: Mapping[str, Any]) -> JobRecord | None:
    """One job of ``qstat -f -F json`` as a JobRecord; None for an array itself (``88[].server``: its
    subjobs are the jobs) or an id that is no PBS job id."""
    from urllib.parse import unquote

    from .jobevents import PBS_ID, PBS_WATCH_VARIABLE

    m = PBS_ID.fullmatch(job_id)
    if m is None or m["index"] == "":
        return None
    server, index = m["server"], m["index"]
    variables = attributes.get("Variable_List")
    tag = variables.get(PBS_WATCH_VARIABLE) if isinstance(variables, dict) else None
    job_state, substate = str(attributes.get("job_state", "")), _pbs_int(attributes.get("substate"))
    status = _pbs_int(attributes.get("Exit_status"))
    owner, name = attributes.get("Job_Owner"), attributes.get("Job_Name")
    signal = status - 256 if status is not None and status > 256 else None
    return JobRecord(
        job_id=job_id, tag=unquote(tag) if isinstance(tag, str) else "",
        scheduler_state=job_state + ("" if status is None else f" Exit_status={status}")
        + ("" if substate is None else f" substate={substate}"),
        state=pbs_state(job_state, substate, status), cluster=server.lower() if server else None,
        exit_code=status if status is not None and 0 <= status <= 255 else None, signal=signal,
        end=_pbs_timestamp(attributes.get("obittime") or attributes.get("mtime")),
        user=owner.partition("@")[0] if isinstance(owner, str) else None,
        job_name=name if isinstance(name, str) else None, scheduler="pbs",
        array_job_id=f"{m['seq']}[]{'.' + server if server else ''}" if index else None, array_task_id=index)


def pbs_jobs(user: str, window: float) -> list[JobRecord]:
    """The jobs of ``user`` that the PBS server shows, less those that ended over ``window`` seconds
    ago: one ``qstat`` call.

    The server keeps ended jobs for its ``job_history_duration`` (two weeks
    by default) whatever the window. Output that is not qstat's JSON is a
    SchedulerError, one line.
    """
    import json

    out = run(["qstat", "-x", "-t", "-f", "-F", "json"], limit=PBS_OUTPUT_LIMIT)
    try:
        listing = json.loads(out) if out.strip() else {}
    except ValueError as exc:
        raise SchedulerError(f"qstat -F json printed no JSON ({exc})") from None
    jobs = listing.get("Jobs", {}) if isinstance(listing, dict) else None
    if not isinstance(jobs, dict):
        raise SchedulerError("qstat -F json printed JSON without a Jobs object")
    since = time.time() - window
    records = []
    for job_id, attributes in jobs.items():
        record = _pbs_record(job_id, attributes) if isinstance(attributes, dict) else None
        if record is not None and record.user == user and (record.end is None or record.end >= since
                                                           or record.state is None):
            records.append(record)
    return records


SCHEDULERS = ("slurm", "pbs")


def detect() -> str:
    """Which scheduler this machine submits to: SLURM where ``squeue`` is in PATH, else PBS where
    ``qstat`` is (SLURM first: its torque compatibility package installs a ``qstat`` too)."""
    import shutil

    if shutil.which("squeue"):
        return "slurm"
    if shutil.which("qstat"):
        return "pbs"
    raise SchedulerError("neither squeue (SLURM) nor qstat (PBS) found in PATH: is this a login node?")


def ended_jobs(scheduler: str, user: str, window: float) -> list[JobRecord]:
    """The jobs of ``user`` that ``scheduler`` knows to have ended in the last ``window`` seconds
    (and for PBS the others too): one query."""
    return slurm_jobs(user, window) if scheduler == "slurm" else pbs_jobs(user, window)


def watched(records: Iterable[JobRecord], tag: str) -> list[JobRecord]:
    """The records of jobs that carry ``tag``."""
    return [r for r in records if r.tag == tag]
