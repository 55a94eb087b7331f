"""``snakemake --executor ddmq``: batch jobs that tell Snakemake themselves when they end.

Snakemake's SLURM executor learns that a job ended by asking ``sacct`` about
its active jobs every 10 to 180 seconds: slow to notice a short job, and a
load that site admins ask users to stop. Here every job is a
``ddmq-template`` script (:func:`ddmq_hpc.template.render`) whose EXIT trap
publishes the job's terminal event through its end record, so a status
round is, per active job, one lookup of ``jobs/SS/KEY.end`` in the queue
(:meth:`ddmq.Broker.job_end`): a constant cost whatever the queue holds, and
cheap enough to run every second. The scheduler is asked only for what no
trap can say -- a job killed with SIGKILL, by the OOM killer or with its
node, or cancelled while pending -- and only through the reconciler
(:func:`ddmq_hpc.reconcile.reconcile`): one batched query for all watched
jobs, only while some job has been silent for ``--ddmq-grace`` seconds, at
most once per ``--ddmq-reconcile-interval`` per queue (a stamp in the queue,
shared with every other reconciler of it).

Snakemake finds this code through the top-level module
``snakemake_executor_plugin_ddmq`` (plugins are found by that module name);
importing ``ddmq`` or ``ddmq_hpc`` never imports Snakemake. This module has
no ``from __future__ import annotations``: Snakemake builds the command-line
options from the settings dataclass's field types, which must be real types.
"""
import asyncio
import math
import os
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncGenerator, Dict, List, Mapping, Optional, Tuple

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import CommonSettings, ExecutorSettingsBase

from ddmq import Broker, DdmqError, check_queue_name, console, resolve_root

from . import options
from .jobevents import key_for, local_cluster, succeeded
from .reconcile import reconcile
from .scheduler import SchedulerError, run
from .template import SCHEDULERS, pbs_value, render, sbatch_value

# A job id's end recorded this long before the job was submitted is an earlier job's (see _check_key_is_new).
REUSED_ID_SLACK = 5.0
# Options of slurm_extra that would break what this executor relies on: the
# watch tag the reconciler finds a job by, the script it submits, one job per key.
_SLURM_EXTRA_FORBIDDEN = ("--comment", "--wrap", "--array")  # and -a, --array's short form


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    """The ``--ddmq-...`` options. Every one has a default: ``snakemake --executor ddmq -j N`` works."""

    queue: str = field(default="snakemake", metadata={
        "help": "ddmq queue the jobs publish their terminal events to (created if missing). Every job "
                "leaves one event there; other programs may wait on them (ddmq-wait). Default: snakemake.",
        "metavar": "QUEUE",
    })
    root: Optional[str] = field(default=None, metadata={
        "help": "ddmq root directory on storage the compute nodes share (default: $DDMQ_ROOT, else ~/.ddmq).",
        "metavar": "DIR",
    })
    scheduler: str = field(default="slurm", metadata={
        "help": "Batch scheduler to submit to: slurm (sbatch, scancel) or pbs (qsub, qdel). Default: slurm.",
        "choices": list(SCHEDULERS),
    })
    reconcile_interval: float = field(default=options.RECONCILE_INTERVAL, metadata={
        "help": "Ask the scheduler about silent jobs (killed too hard to publish their end) at most once in "
                "this many seconds, one batched query for all of them (ddmq-reconcile --min-interval). "
                f"Default: {options.RECONCILE_INTERVAL:g}.",
        "metavar": "SECONDS",
    })
    grace: float = field(default=30.0, metadata={
        "help": "Seconds a job may stay silent after its submission, and after the scheduler says it ended, "
                "before the scheduler's word is taken (ddmq-reconcile --grace). Default: 30.",
        "metavar": "SECONDS",
    })
    status_interval: float = field(default=1.0, metadata={
        "help": "Seconds between status rounds; a round reads one job end record per active job "
                "(this replaces --seconds-between-status-checks). Default: 1.",
        "metavar": "SECONDS",
    })


common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=False,  # the events and the job logs live on shared storage
    job_deploy_sources=False,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    # sbatch passes the submitter's environment to the job (qsub with -V, which
    # this executor gives): no variable's value is written into a job script.
    pass_envvar_declarations_to_cmd=False,
    auto_deploy_default_storage_provider=False,
    init_seconds_before_status_checks=0,
)


@dataclass
class Request:
    """What a job asks of the scheduler, from its Snakemake resources."""

    time: Optional[str] = None  # as the scheduler reads a time limit
    partition: Optional[str] = None  # SLURM partition or PBS queue
    directives: List[str] = field(default_factory=list)  # whole '#SBATCH ...'/'#PBS ...' lines
    arguments: List[str] = field(default_factory=list)  # slurm_extra/pbs_extra, for the submit command


def _given(resources: Mapping[str, Any], name: str) -> Any:
    """A resource's value, or None when it is not set (Snakemake may hold None or "" for unset)."""
    value = resources.get(name)
    return None if value is None or value == "" else value


def _integer(resources: Mapping[str, Any], name: str) -> Optional[int]:
    value = _given(resources, name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise WorkflowError(f"resource {name} must be a whole number, not {value!r}")
    return int(value)


def _minutes(resources: Mapping[str, Any]) -> Optional[int]:
    """``runtime`` in whole minutes (Snakemake keeps it in minutes; "1h" is parsed by Snakemake)."""
    runtime = _given(resources, "runtime")
    if runtime is None:
        return None
    if isinstance(runtime, bool) or not isinstance(runtime, (int, float)):
        raise WorkflowError(f"resource runtime must be minutes (or a time Snakemake parses, e.g. '2h'), "
                            f"not {runtime!r}")
    return max(1, math.ceil(runtime))


def _cpus(resources: Mapping[str, Any], threads: int) -> Optional[int]:
    """CPUs per task: ``cpus_per_task`` if given (negative: ask for none), else the rule's threads."""
    cpus = _integer(resources, "cpus_per_task")
    if cpus is None:
        return max(1, threads)
    return None if cpus < 0 else max(1, cpus)


def slurm_request(resources: Mapping[str, Any], threads: int) -> Request:
    """sbatch options for Snakemake's resources, named as the Snakemake SLURM executor plugin names them.

    ``runtime`` (minutes) is ``--time``; ``mem_mb_per_cpu`` is ``--mem-per-cpu``,
    else ``mem_mb`` is ``--mem``; ``cpus_per_task`` (else the rule's threads) is
    ``--cpus-per-task``; ``tasks`` is ``--ntasks`` (1 if not given, as SLURM
    22.05 wants it said); ``nodes``, ``slurm_partition``, ``slurm_account``,
    ``constraint``, ``qos``, ``gres`` and ``gpu`` (``--gpus``, with
    ``gpu_model``) are their options; ``slurm_extra`` is added to the
    ``sbatch`` command line as written.
    """
    minutes = _minutes(resources)
    request = Request(time=None if minutes is None else str(minutes),
                      partition=_given(resources, "slurm_partition"))
    options: List[Tuple[str, Any]] = []
    per_cpu, mem = _integer(resources, "mem_mb_per_cpu"), _integer(resources, "mem_mb")
    if per_cpu:
        options.append(("--mem-per-cpu", f"{per_cpu}M"))
    elif mem:
        options.append(("--mem", f"{mem}M"))
    cpus = _cpus(resources, threads)
    if cpus is not None:
        options.append(("--cpus-per-task", cpus))
    options.append(("--ntasks", _integer(resources, "tasks") or 1))
    nodes = _integer(resources, "nodes")
    if nodes is not None:
        if nodes < 1:
            raise WorkflowError(f"resource nodes must be at least 1, not {nodes}")
        options.append(("--nodes", nodes))
    gpus = _integer(resources, "gpu")
    if gpus:
        model = _given(resources, "gpu_model")
        options.append(("--gpus", f"{model}:{gpus}" if model else gpus))
    for resource, option in (("slurm_account", "--account"), ("constraint", "--constraint"), ("qos", "--qos"),
                             ("gres", "--gres")):
        value = _given(resources, resource)
        if value is not None:
            options.append((option, value))
    request.directives = [f"#SBATCH {option}={sbatch_value(option, str(value))}" for option, value in options]
    extra = _given(resources, "slurm_extra")
    if extra is not None:
        request.arguments = shlex.split(str(extra))
        for word in request.arguments:
            option = word.split("=", 1)[0]
            if option in _SLURM_EXTRA_FORBIDDEN or (option.startswith("-a") and not option.startswith("--")):
                raise WorkflowError(f"resource slurm_extra: {option} cannot be given: the ddmq executor sets "
                                    "--comment (how the reconciler finds the job) and submits one script per job")
    return request


def pbs_request(resources: Mapping[str, Any], threads: int) -> Request:
    """qsub directives for Snakemake's resources (PBS Pro's ``select``).

    ``runtime`` is ``walltime``; ``nodes`` chunks of ``ncpus`` (``cpus_per_task``,
    else threads) and ``mem`` (``mem_mb``, or ``mem_mb_per_cpu`` times the CPUs);
    ``pbs_queue`` is ``-q``, ``pbs_account`` is ``-A``; ``pbs_extra`` is added to
    the ``qsub`` command line as written.
    """
    minutes = _minutes(resources)
    request = Request(time=None if minutes is None else f"{minutes // 60}:{minutes % 60:02d}:00",
                      partition=_given(resources, "pbs_queue"))
    cpus = _cpus(resources, threads) or 1
    per_cpu, mem = _integer(resources, "mem_mb_per_cpu"), _integer(resources, "mem_mb")
    memory = per_cpu * cpus if per_cpu else mem
    chunk = f"select={_integer(resources, 'nodes') or 1}:ncpus={cpus}" + (f":mem={memory}mb" if memory else "")
    request.directives = [f"#PBS -l {chunk}"]
    account = _given(resources, "pbs_account")
    if account is not None:
        request.directives.append(f"#PBS -A {pbs_value('-A', str(account))}")
    extra = _given(resources, "pbs_extra")
    if extra is not None:
        request.arguments = shlex.split(str(extra))
    return request


def _one_line(text: str, fallback: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else fallback


def describe_end(event: Any, job_id: str, scheduler: str) -> str:
    """One line for Snakemake on how a job that did not succeed ended, from its terminal event."""
    if not isinstance(event, dict):
        return f"{scheduler.upper()} job {job_id}: its end record is not a job event ({event!r})"
    said = [f"{scheduler.upper()} job {job_id} ended {event.get('state') or 'without a state'}"]
    if event.get("status") is not None:
        said.append(f"exit status {event['status']}")
    if event.get("signal"):
        said.append(f"signal {event['signal']}")
    if event.get("source") == "scheduler":
        said.append(f"reported by the scheduler ({event.get('scheduler_state')}): the job was killed "
                    "before it could say so itself")
    elif event.get("host"):
        said.append(f"on {event['host']}")
    return ", ".join(said) + ". "  # Snakemake appends its own sentence


class Executor(RemoteExecutor):
    """Submits each job as a ddmq job script; learns its end from the job's end record in the queue."""

    def __post_init__(self) -> None:
        settings = self.workflow.executor_settings
        self._settings = settings
        for name, least in (("reconcile_interval", 0.0), ("grace", 0.0), ("status_interval", 0.01)):
            value = getattr(settings, name)
            if not least <= value < math.inf:  # also NaN
                raise WorkflowError(f"--ddmq-{name.replace('_', '-')} must be {least:g} or more seconds "
                                    f"(and finite), not {value}")
        try:
            check_queue_name(settings.queue)
            self._root = os.path.abspath(resolve_root(settings.root)[0])
            # One Broker per thread (a Broker keeps open directories and caches, and
            # is not shared between threads): submissions run in Snakemake's main
            # thread, status rounds in the executor's wait thread.
            self._submit_broker = Broker(self._root, create=True)
            self._submit_broker.create_queue(settings.queue, exist_ok=True)
            self._status_broker = Broker(self._root)
        except DdmqError as exc:
            raise WorkflowError(f"ddmq executor: {exc}") from None
        self._cluster: Optional[str] = None
        if settings.scheduler == "slurm":
            self._cluster = local_cluster()
            if self._cluster is None:
                raise WorkflowError("ddmq executor: cannot tell this SLURM cluster's name (ClusterName in "
                                    "slurm.conf), which job keys hold: set SLURM_CLUSTER_NAME or SLURM_CONF")
        else:
            self.logger.warning("ddmq executor: a PBS job killed too hard to run its trap is not detected: "
                                "ddmq-reconcile does not ask qstat yet")
        self._run_name = console.iso_utc().replace("-", "").replace(":", "")
        self._logdir = Path(".snakemake", "ddmq_logs").resolve()
        # Every job submitted and not yet reported: Snakemake takes its active
        # jobs out of its own list during a status round, and a Ctrl-C then must
        # still cancel them.
        self._unreported: Dict[str, SubmittedJobInfo] = {}
        self._unreported_lock = threading.Lock()
        self._last_warning: Optional[str] = None
        self.logger.info(f"ddmq executor: job events in queue {settings.queue!r} of {self._root}")

    # ------------------------------------------------------------- submit
    def run_job(self, job: JobExecutorInterface) -> None:
        """Render the job's script (command, resources, trap, watch tag), submit it, and register it."""
        settings = self._settings
        slurm = settings.scheduler == "slurm"
        log = self._log_path(job)
        try:
            request = (slurm_request if slurm else pbs_request)(job.resources, job.threads)
            script = render(settings.scheduler, ["bash", "-c", self.format_job_exec(job)], settings.queue,
                            root=self._root, job_name=self._job_name(job), time=request.time,
                            partition=request.partition, output=str(log), extra_directives=request.directives)
        except (DdmqError, WorkflowError) as exc:
            raise WorkflowError(f"{self._what(job)}: {exc}") from None
        log.parent.mkdir(parents=True, exist_ok=True)
        path = self.get_jobscript(job)
        with open(path, "w", encoding="utf-8") as out:
            out.write(script)
        command = ["sbatch", "--parsable", *request.arguments, path] if slurm else ["qsub", "-V", *request.arguments,
                                                                                  path]
        asked = time.time()
        printed = self._submit(job, command)
        job_id, _, cluster = printed.partition(";")  # sbatch --parsable: ID, or ID;CLUSTER on a multi-cluster site
        try:
            key = key_for(job_id, cluster or self._cluster)
        except DdmqError:
            raise WorkflowError(f"{self._what(job)}: {command[0]} printed {printed!r}, not a job id") from None
        if slurm:
            log = log.with_name(log.name.replace("%j", job_id))
        self.logger.info(f"Job {job.jobid} has been submitted as {settings.scheduler.upper()} job {job_id} "
                         f"(log: {log}).")
        info = SubmittedJobInfo(job, external_jobid=job_id,
                                aux={"key": key, "log": str(log), "submitted": time.monotonic()})
        with self._unreported_lock:
            self._unreported[key] = info  # from here on, a Ctrl-C or an error cancels it
        self._check_key_is_new(job, info, asked)
        self.report_job_submission(info)

    def _check_key_is_new(self, job: JobExecutorInterface, info: SubmittedJobInfo, asked: float) -> None:
        """Refuse a job whose key already has an end recorded before it was submitted.

        The scheduler reused its id (SLURM restarted with a fresh state, or ids
        wrapped around) and the queue kept the earlier job's end: this job's
        own end could never be recorded (one end per key), and Snakemake would
        be told the earlier job's. A record made by this job itself, done
        before sbatch answered, is not older than the submission, give or take
        the nodes' clocks (REUSED_ID_SLACK).
        """
        queue = self._settings.queue
        try:
            earlier = self._submit_broker.job_end(queue, info.aux["key"])
        except DdmqError:
            return  # read again, and said, in the status round
        if earlier is None or earlier.published >= (asked - REUSED_ID_SLACK) * 1e9:
            return
        raise WorkflowError(
            f"{self._what(job)}: queue {queue!r} already holds the end of an earlier job "
            f"{info.external_jobid}, recorded {console.iso_utc(earlier.published / 1e9)}: "
            f"the scheduler reuses job ids (restarted, or wrapped around). Use another --ddmq-queue, or "
            f"`ddmq delete {queue}` when no job uses it")

    def _submit(self, job: JobExecutorInterface, command: List[str]) -> str:
        """Run sbatch/qsub; what it printed. Any failure is one line, a WorkflowError."""
        try:
            return _one_line(run(command, cwd=str(self.workflow.workdir_init), refused="refused the job"), "")
        except SchedulerError as exc:
            raise WorkflowError(f"{self._what(job)}: {exc}") from None

    def _what(self, job: JobExecutorInterface) -> str:
        return f"{'group' if job.is_group() else 'rule'} {job.name} (job {job.jobid})"

    def _job_name(self, job: JobExecutorInterface) -> str:
        """Snakemake's --jobname (snakejob.RULE.JOBID.sh by default), without the .sh: the job's name in squeue."""
        name = self.get_jobname(job)
        return name[:-len(".sh")] if name.endswith(".sh") else name

    def _log_path(self, job: JobExecutorInterface) -> Path:
        """``.snakemake/ddmq_logs/rule_RULE/WILDCARDS/JOBID.log`` (``%j``: SLURM writes the id in)."""
        try:
            wildcards = "_".join(str(value) for value in job.wildcards).replace("/", "_")
        except AttributeError:  # a group job has none
            wildcards = ""
        wildcards = re.sub(r"^\.+", "_", wildcards)  # never "..", never hidden
        kind = "group" if job.is_group() else "rule"
        name = "%j.log" if self._settings.scheduler == "slurm" else f"{self._run_name}.{job.jobid}.log"
        return self._logdir / f"{kind}_{job.name}" / wildcards / name

    # ------------------------------------------------------------- status
    async def sleep(self) -> None:
        """Between status rounds: --ddmq-status-interval, not Snakemake's 10 s default; a round is cheap."""
        await asyncio.sleep(self.workflow.executor_settings.status_interval)

    async def check_active_jobs(
        self, active_jobs: List[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        """Report every job whose end is recorded; ask the reconciler about jobs silent past the grace."""
        if not active_jobs:  # also the rounds before __post_init__ has run
            return
        silent = [info for info in active_jobs if not self._report_if_ended(info)]
        waited = max((time.monotonic() - info.aux["submitted"] for info in silent), default=0.0)
        if self._settings.scheduler == "slurm" and silent and waited >= self._settings.grace:
            published = self._reconcile(waited)
            silent = [info for info in silent if info.aux["key"] not in published or not self._report_if_ended(info)]
        for info in silent:
            yield info

    def _report_if_ended(self, info: SubmittedJobInfo) -> bool:
        """Report the job to Snakemake if its end is recorded (one read); whether it was."""
        assert info.aux is not None and info.external_jobid is not None
        try:
            end = self._status_broker.job_end(self._settings.queue, info.aux["key"])
        except DdmqError as exc:  # a storage hiccup: the job stays active, and is asked about again
            self._warn_once(f"ddmq executor: cannot read the end of job {info.external_jobid}: {exc}")
            return False
        if end is None:
            return False
        with self._unreported_lock:
            self._unreported.pop(info.aux["key"], None)
        event = end.message
        if succeeded(event):
            self.report_job_success(info)
        else:
            self.report_job_error(info, msg=describe_end(event, info.external_jobid, self._settings.scheduler),
                                  aux_logs=[info.aux["log"]])
        return True

    def _reconcile(self, waited: float) -> set[str]:
        """The keys the reconciler published events for now (empty when it was not due).

        The scheduler is asked about jobs that ended since the oldest silent
        job was submitted (``waited`` seconds ago, and a minute for the clocks):
        one short listing, however long the workflow has run.
        """
        settings = self._settings
        try:
            published = reconcile(settings.queue, root=self._root, grace=settings.grace,
                                  min_interval=settings.reconcile_interval, broker=self._status_broker,
                                  window=waited + 60, scheduler=settings.scheduler)
        except DdmqError as exc:
            self._warn_once(f"ddmq executor: cannot ask the scheduler about silent jobs: {exc}")
            return set()
        return {key for key, _ in published}

    def _warn_once(self, message: str) -> None:
        """A warning, unless it is the one given last: a broken scheduler must not flood the log."""
        if message != self._last_warning:
            self._last_warning = message
            self.logger.warning(message)

    # ------------------------------------------------------------- cancel
    def cancel_jobs(self, active_jobs: List[SubmittedJobInfo]) -> None:
        """One ``scancel ID...`` (``qdel``) for every job not reported yet; their traps publish CANCELLED."""
        with self._unreported_lock:
            unreported = list(self._unreported.values())
        ids = sorted({info.external_jobid for info in [*active_jobs, *unreported] if info.external_jobid})
        if not ids:
            return
        try:
            run(["scancel" if self._settings.scheduler == "slurm" else "qdel", *ids])
        except (SchedulerError, OSError) as exc:
            self.logger.warning(f"ddmq executor: could not cancel jobs {' '.join(ids)}: {exc}")
