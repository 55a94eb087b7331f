"""``ddmq-reconcile QUEUE``: the terminal event of every watched job that ended without one.

A job's EXIT trap publishes its event on a normal end, a cancel and a time
limit; nothing runs it when the batch script is killed with SIGKILL, by the
OOM killer, by a node failure or preemption, nor for a job cancelled or
rejected before it started. Waiters would hang until their own timeout. This
command, run from cron or ``scrontab`` every few minutes, asks the scheduler
once for the user's recent jobs (:mod:`ddmq_hpc.scheduler`), keeps those that
carry this queue's watch tag (the ``--comment``, or for PBS the ``DDMQ_WATCH``
variable, that ddmq-template writes), and
publishes for each one that has ended, has no end record, and ended at least
``--grace`` seconds ago (time for its own trap or epilogue to speak first) an
event with ``source: scheduler`` and the scheduler's state, exit status and
signal. It publishes through the job's end record
(:meth:`ddmq.Broker.publish_job_end`), so a job gets exactly one terminal
event whoever is first: the job, an epilogue, or any of several reconcilers
racing on several nodes.

The scheduler is asked at most once per ``--min-interval`` seconds per
queue, whoever runs the reconciler: the time of the last query is the mtime
of ``jobs/.reconciled`` in the queue directory, on the shared storage.
"""
from __future__ import annotations

import os
import sys
import time

import click

from ddmq import Broker, check_queue_name, console, resolve_root

from . import options
from .jobevents import key_for, watch_tag
from .scheduler import SCHEDULERS, JobRecord, detect, ended_jobs, watched

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PROG = "ddmq-reconcile"


def scheduler_event(record: JobRecord, now: float) -> dict[str, Any]:
    """The completion event for a job that the scheduler says has ended (``source: scheduler``)."""
    event: dict[str, Any] = {
        "event": "job_end",
        "source": "scheduler",
        "scheduler": record.scheduler,
        "cluster": record.cluster,
        "job_id": record.raw_id or record.job_id,
        "job_name": record.job_name,
        "user": record.user,
        "time": console.iso_utc(now),
        "end_time": None if record.end is None else console.iso_utc(record.end),
        "status": record.exit_code,
        "signal": record.signal,
        "state": record.state,
        "scheduler_state": record.scheduler_state,
    }
    if record.scheduler == "slurm":
        array_job, _, task = record.job_id.partition("_")
        if task:
            event["array_job_id"], event["array_task_id"] = array_job, task
    elif record.array_task_id is not None:  # as a PBS subjob says it (PBS_ARRAY_ID, PBS_ARRAY_INDEX)
        event["array_job_id"], event["array_task_id"] = record.array_job_id, record.array_task_id
    return event


def reconcile(queue: str, *, root: str | None = None, grace: float = options.RECONCILE_GRACE,
              min_interval: float = options.RECONCILE_INTERVAL,
              window: float = 7 * 86400.0, user: str | None = None,
              broker: Broker | None = None, scheduler: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Publish the missing terminal events of ``queue``'s watched jobs; ``[(job key, event)]`` published.

    Empty when the last query was less than ``min_interval`` seconds ago: a
    caller that asks on every poll (``ddmq-wait --reconcile``, passing its own
    ``broker`` for ``root``) pays one stat of the stamp until one is due.
    ``scheduler`` is "slurm" or "pbs"; None: the one whose commands are in
    PATH (:func:`~ddmq_hpc.scheduler.detect`).
    """
    import pwd

    check_queue_name(queue)
    path = os.path.abspath(resolve_root(root)[0])
    broker = broker or Broker(path, create=False)
    now = time.time()
    if not broker.reconcile_due(queue, min_interval):  # also: the queue exists
        return []
    recorded = set(broker.job_ends(queue))
    records = ended_jobs(scheduler or detect(), user or pwd.getpwuid(os.getuid()).pw_name, window)
    published = []
    for record in watched(records, watch_tag(queue, path)):
        if record.state is None or (record.end is not None and now - record.end < grace):
            continue
        key = key_for(record.job_id, record.cluster)
        if key in recorded:
            continue
        event = scheduler_event(record, now)
        if broker.publish_job_end(queue, key, event) is not None:
            published.append((key, event))
    return published


@click.command(
    name=PROG, cls=console.Command, context_settings=console.CONTEXT,
    epilog="Root: --root, else $DDMQ_ROOT, else ~/.ddmq. Run it from cron or scrontab: see "
           "workflow_examples/reconcile/.\n\n" + console.exit_codes_help({
               console.EXIT_OK: "done (or not due yet)",
               console.EXIT_ERROR: "the scheduler or the queue could not be used (reason on stderr)",
               console.EXIT_USAGE: "usage error (bad option, invalid queue name)",
               console.EXIT_NOT_FOUND: "root or queue not found",
           }),
)
@click.argument("queue")
@click.option("--grace", type=options.seconds(positive=False), default=options.RECONCILE_GRACE, metavar="SECONDS",
              show_default=True,
              help="Leave a job that ended less than this long ago to its own trap or epilogue.")
@click.option("--min-interval", type=options.seconds(positive=False), default=options.RECONCILE_INTERVAL,
              metavar="SECONDS", show_default=True,
              help="Ask the scheduler at most once in this long for this queue (whoever runs the reconciler).")
@click.option("--window", type=options.seconds(), default=7 * 86400.0, metavar="SECONDS", show_default=True,
              help="Look at jobs that ended in this long before now.")
@click.option("--scheduler", type=click.Choice(SCHEDULERS),
              help="The scheduler to ask. Default: slurm if squeue is in PATH, else pbs if qstat is.")
@console.root_option()
@console.common_options(PROG)
def command(queue: str, grace: float, min_interval: float, window: float, scheduler: str | None,
            root: str | None) -> None:
    """Publish the missing completion event of every job of QUEUE that the scheduler says has ended.

    Watched jobs are the user's jobs rendered by ddmq-template for QUEUE and
    this root (they carry '#SBATCH --comment=ddmq:QUEUE@ROOT', or for PBS
    '#PBS -v DDMQ_WATCH=ddmq:QUEUE@ROOT'). One sacct query per run (squeue
    where there is no accounting; for PBS Pro/OpenPBS one 'qstat -x -t -f -F
    json', which needs the server's job history) covers them all. An event
    it publishes says source: scheduler, the scheduler's state
    (COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL,
    PREEMPTED, BOOT_FAIL, DEADLINE), exit status and signal. A job gets one
    terminal event, whoever publishes first. Prints one line per event
    published: job key and state.
    """
    for key, event in reconcile(queue, root=root, grace=grace, min_interval=min_interval, window=window,
                                scheduler=scheduler):
        console.echo(f"{key} {event['state']} ({event['scheduler_state']})")


def main(argv: list[str] | None = None) -> None:
    """The ``ddmq-reconcile`` console script."""
    code = console.run(command, argv)
    if code:
        sys.exit(code)

