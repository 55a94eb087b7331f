"""A job's terminal event, published once, under a key every party can rebuild.

Three parties may speak for the end of one job: the job's own EXIT trap, a
``ddmq-notify`` in an epilogue, and ``ddmq-reconcile`` asking the scheduler
about a job killed too hard to say anything. The core records a job's end
under a *job key* and lets exactly one publisher win
(:meth:`ddmq.Broker.publish_job_end`); ``ddmq-jobstate`` reads that record
back in one lookup. All of them must build the same key from what each
knows -- the job's environment, the scheduler's accounting, or the job id a
user or workflow engine was given by ``sbatch``/``qsub`` -- and this module
is where that is decided, once:

* the job id is the one the scheduler prints: ``1234``, or ``1234_7`` for
  task 7 of SLURM array 1234 (not the task's own numeric id, which users
  never see); PBS's ``88[7].server`` becomes ``88_7`` (brackets are not
  allowed in a key);
* a job names its queue and root in what the scheduler keeps about it
  (:func:`watch_tag`), so that ``ddmq-reconcile`` finds it even when it
  never ran a line;
* the cluster tells apart clusters sharing one root, whose job ids repeat:
  SLURM's ClusterName (``SLURM_CLUSTER_NAME`` in a job; lower case, as
  SLURM keeps it), or the PBS server named in the job id.
"""
from __future__ import annotations

import os
import re

from ddmq import UsageError

TYPE_CHECKING = False  # typing is for annotations only: it slows every job's start-up
if TYPE_CHECKING:
    from typing import Any, Mapping

# A job id as sbatch/squeue/sacct print it: 1234, or 1234_7 for an array task.
_SLURM_ID = re.compile(r"[0-9]+(?:_[0-9]+)?")
# A job id as qsub/qstat print it: 1234.server, 88[7].server; the server part optional.
PBS_ID = re.compile(r"(?P<seq>[0-9]+)(?:\[(?P<index>[0-9]*)\])?(?:\.(?P<server>[A-Za-z0-9_.+-]+))?")
# ClusterName in slurm.conf (keys are case-insensitive there)
_CLUSTER_NAME = re.compile(rb"^\s*clustername\s*=\s*([^\s#]+)", re.IGNORECASE | re.MULTILINE)


def watch_tag(queue: str, root: str) -> str:
    """What a job script carries (SLURM's ``--comment``, PBS's :data:`PBS_WATCH_VARIABLE`) for the
    reconciler of ``queue`` in ``root`` (an absolute path) to find it among the user's jobs."""
    return f"ddmq:{queue}@{root}"


# The variable a PBS job script passes with '#PBS -v' to carry its watch tag.
# PBS has no free-text job attribute like SLURM's --comment (-A and -P are
# for accounting, -N is the user's), but it keeps a job's Variable_List,
# and qstat -x shows it for finished jobs too. A -v given to qsub on the
# command line replaces the script's, and with it the tag.
PBS_WATCH_VARIABLE = "DDMQ_WATCH"


def pbs_watch_value(tag: str) -> str:
    """``tag`` as it can be written in ``#PBS -v DDMQ_WATCH=...``: percent-encoded, because qsub
    ends a directive at white space and splits -v at commas, and quotes are read differently by PBS
    versions; ``qstat``'s readers decode it (:func:`urllib.parse.unquote`)."""
    from urllib.parse import quote

    return quote(tag, safe="/:@._-+~")


def parse_job_id(job_id: str) -> tuple[str | None, str]:
    """``(cluster named in the id, id as it is written in a key)`` for a job id as a scheduler prints it.

    Raises UsageError for anything else: a pending array's ``1234_[1-3]``
    names many jobs, not one.
    """
    if _SLURM_ID.fullmatch(job_id):
        return None, job_id
    m = PBS_ID.fullmatch(job_id)
    if m is None:
        raise UsageError(f"not a job id as SLURM or PBS prints it (1234, 1234_7, 1234.server, 88[7].server): "
                         f"{job_id!r}")
    index = m.group("index")
    return m.group("server"), m.group("seq") + (f"_{index}" if index else "")


def local_cluster(env: Mapping[str, str] | None = None) -> str | None:
    """The SLURM cluster this machine belongs to, without asking the controller.

    ``$SLURM_CLUSTER_NAME`` (set in every job), else ClusterName from
    ``$SLURM_CONF`` or ``/etc/slurm/slurm.conf`` -- one small read, where
    ``scontrol show config`` would be a round trip to slurmctld on every
    call of ``ddmq-jobstate``. SLURM keeps the name in lower case.
    """
    env = os.environ if env is None else env
    if env.get("SLURM_CLUSTER_NAME"):
        return env["SLURM_CLUSTER_NAME"].lower()
    try:
        with open(env.get("SLURM_CONF") or "/etc/slurm/slurm.conf", "rb") as conf:
            m = _CLUSTER_NAME.search(conf.read(1 << 20))
    except OSError:
        return None
    return m.group(1).decode("utf-8", "replace").lower() if m else None


def key_for(job_id: str, cluster: str | None = None) -> str:
    """The job key of ``job_id`` (as the scheduler prints it) on ``cluster``.

    A PBS id names its server, which is its cluster; for a SLURM id the
    cluster must be given (see :func:`local_cluster`). Raises UsageError for
    an id or cluster that cannot make a key.
    """
    from ddmq.layout import job_key

    named, key_id = parse_job_id(job_id)
    return job_key((named or cluster or "").lower() or None, key_id)


def event_job_id(event: Mapping[str, Any]) -> str | None:
    """The job id, as the scheduler prints it, of the job a completion event is about."""
    array_job, task = event.get("array_job_id"), event.get("array_task_id")
    if event.get("scheduler") == "slurm" and array_job and task not in (None, ""):
        return f"{array_job}_{task}"
    job_id = event.get("job_id")
    return str(job_id) if job_id else None


def event_key(event: Mapping[str, Any]) -> str | None:
    """The job key of the job a completion event is about; None if it names no job.

    None also for an event that says no state: ``ddmq-notify`` run without
    ``--status``/``--state`` says that the job got this far, not that it ended.
    """
    if event.get("event") != "job_end" or not event.get("state"):
        return None
    job_id = event_job_id(event)
    if job_id is None:
        return None
    try:
        return key_for(job_id, event.get("cluster"))
    except (UsageError, ValueError):
        return None


def succeeded(event: Any) -> bool:
    """Whether a job's terminal event says it succeeded: COMPLETED, and nothing else.

    The one rule ``ddmq-jobstate`` (``success``/``failed``) and the Snakemake
    executor (success/error) both answer by.
    """
    return isinstance(event, dict) and event.get("state") == "COMPLETED"
