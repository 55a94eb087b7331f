"""``ddmq-jobstate [--queue Q] JOBID``: is this job running, or did it succeed or fail?

Workflow engines ask this once per active job per polling round (Snakemake's
``--cluster-generic-status-cmd`` starts one process per job per round), so
the answer must cost the same whatever the length of the queue and must not
take the event away from anyone: it is read from the job's end record
(:meth:`ddmq.Broker.job_end`, one lookup), never from a scan of ``ready/``,
and never by consuming. The output is Snakemake's protocol: one word on
stdout -- ``running`` (no end recorded yet), ``success`` (COMPLETED) or
``failed`` (any other end: FAILED, CANCELLED, TIMEOUT, a kill the
reconciler found) -- and exit status 0.

A job killed too hard to run its trap (SIGKILL, the OOM killer, a node
failure, a cancel while pending) never records an end, so an engine asking
only the queue would see it ``running`` for ever. ``--reconcile`` lets the
asker itself fill that hole: for a job with no end record it runs the
reconciler (:func:`ddmq_hpc.reconcile.reconcile`) before answering. The
reconciler is rate-limited by its stamp in the queue, whoever runs it, so a
round of status calls for N running jobs costs N stats of that stamp and at
most one scheduler query per ``--reconcile-interval``; a job whose end is
recorded costs what it costs without the option.
"""
from __future__ import annotations

import sys

import click

from ddmq import Broker, DdmqError, UsageError, check_queue_name, console

from . import options
from .jobevents import key_for, local_cluster, parse_job_id, succeeded

PROG = "ddmq-jobstate"


def job_state(queue: str, job_id: str, *, root: str | None = None, cluster: str | None = None,
              reconcile_grace: float | None = None,
              reconcile_interval: float = options.RECONCILE_INTERVAL) -> str:
    """``running``, ``success`` or ``failed`` for ``job_id`` (as the scheduler prints it) in ``queue``.

    With ``reconcile_grace`` (seconds), a job with no end recorded makes the
    reconciler run first if it is due (at most once per
    ``reconcile_interval`` for the queue, whoever runs it), so that a job
    killed too hard to publish its end is answered ``failed`` instead of
    ``running`` for ever. A scheduler that cannot be asked is a warning on
    stderr, and the answer is the queue's: the next call that is due asks
    again, and an engine that got an error instead would end the workflow.
    """
    check_queue_name(queue)
    named, _ = parse_job_id(job_id)
    if named is None and cluster is None:
        cluster = local_cluster()
        if cluster is None:
            raise UsageError(f"cannot tell which cluster job {job_id} ran on: give --cluster "
                             "(SLURM's ClusterName), or set SLURM_CLUSTER_NAME")
    broker = Broker(root, create=False)
    key = key_for(job_id, cluster)
    end = broker.job_end(queue, key)
    if end is None and reconcile_grace is not None:
        from .reconcile import reconcile

        try:
            published = reconcile(queue, root=root, grace=reconcile_grace, min_interval=reconcile_interval,
                                  broker=broker, scheduler=None if named is None else "pbs")  # PBS ids name a server
        except DdmqError as exc:
            console.say(PROG, f"warning: cannot ask the scheduler about queue {queue}'s jobs: {exc}")
            published = []
        if published:  # perhaps this job's end among them
            end = broker.job_end(queue, key)
    if end is None:
        return "running"
    return "success" if succeeded(end.message) else "failed"


@click.command(
    name=PROG, cls=console.Command, context_settings=console.CONTEXT,
    epilog="Root: --root, else $DDMQ_ROOT, else ~/.ddmq. For Snakemake: --cluster-generic-status-cmd "
           "'ddmq-jobstate --queue Q --reconcile' (see workflow_examples/cluster-generic/).\n\n" + console.exit_codes_help({
               console.EXIT_OK: "answered (the word on stdout)",
               console.EXIT_ERROR: "the job's record could not be read (reason on stderr)",
               console.EXIT_USAGE: "usage error (bad option, invalid queue name or job id)",
               console.EXIT_NOT_FOUND: "root or queue not found",
           }),
)
@click.argument("job_id", metavar="JOBID")
@click.option("--queue", envvar="DDMQ_QUEUE", required=True,
              help="Queue the job's completion event goes to (default: $DDMQ_QUEUE).")
@click.option("--cluster", help="Cluster the job ran on, SLURM's ClusterName (default: $SLURM_CLUSTER_NAME, "
                                "else ClusterName in $SLURM_CONF or /etc/slurm/slurm.conf); a PBS job id "
                                "names its server.")
@options.reconcile_options("For a job with no end recorded yet")
@console.root_option()
@console.common_options(PROG)
def command(job_id: str, queue: str, cluster: str | None, reconcile: bool, reconcile_grace: float,
            reconcile_interval: float, root: str | None) -> None:
    """Print the state of job JOBID: running, success or failed.

    JOBID as sbatch or qsub printed it: 1234, 1234_7 (task 7 of a SLURM
    array), 1234.server or 88[7].server (PBS). The answer comes from the job's
    end record in QUEUE (one lookup, whatever the length of the queue; the
    event stays in the queue): none yet is running, COMPLETED is success,
    any other end is failed. With --reconcile, a job with no end recorded
    first makes the reconciler run, if it is due, so that a job killed too
    hard to publish its end (SIGKILL, out of memory, node failure) is
    answered failed; a scheduler that cannot be asked is a warning on stderr.
    """
    console.echo(job_state(queue, job_id, root=root, cluster=cluster,
                           reconcile_grace=reconcile_grace if reconcile else None,
                           reconcile_interval=reconcile_interval))


def main(argv: list[str] | None = None) -> None:
    """The ``ddmq-jobstate`` console script."""
    code = console.run(command, argv)
    if code:
        sys.exit(code)
