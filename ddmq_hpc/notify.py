"""``ddmq-notify QUEUE [MESSAGE]``: publish an event at the end of a batch job.

It runs in the epilogue of thousands of jobs, so it starts fast (click and
the core, no YAML unless a settings file has content), retries the transient
errors of network filesystems, never hangs (``--timeout`` bounds it even when
the filesystem does not answer), and says in one line why it failed.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import click

from ddmq import (MAX_PRIORITY, Broker, DdmqError, Message, NotARoot, QueueExists, QueueNotFound, RootNotFound,
                  UsageError, check_queue_name, console, loads_body, resolve_root)

from . import options
from .fields import add_fields
from .jobenv import STATES, completion_event
from .jobevents import event_key
from .retry import retry

TYPE_CHECKING = False  # typing is for annotations only: it slows every job's start-up
if TYPE_CHECKING:
    from typing import Any, Callable, TypeVar

    T = TypeVar("T")

PROG = "ddmq-notify"


def notify(queue: str, message: Any, *, root: str | None = None, create: bool = True,
           priority: int | None = None, deadline: float | None = None,
           created: Callable[[str], object] | None = None) -> Message:
    """Publish ``message`` to ``queue``, creating root and queue unless ``create`` is false.

    Creating is the queue creation rule of the README: the end of a job is
    an event that must not be lost to a queue nobody has made yet. Since a
    mistyped name then makes a new queue, ``created`` (if given) is called
    with a line saying so, by the one notifier that made it.

    Transient filesystem errors are retried with backoff until ``deadline``
    (a ``time.monotonic()`` value).
    """
    return _deliver(queue, lambda b: b.publish(queue, message, priority=priority), root=root, create=create,
                    deadline=deadline, created=created)


def notify_end(queue: str, event: Any, *, root: str | None = None, create: bool = True,
               priority: int | None = None, deadline: float | None = None,
               created: Callable[[str], object] | None = None) -> Message | None:
    """Publish a job's completion event once: None if an end of that job is already recorded.

    An event that names a job and its end (:func:`~ddmq_hpc.jobevents.event_key`)
    goes through the job's end record (:meth:`ddmq.Broker.publish_job_end`),
    so a job's trap, an epilogue and ``ddmq-reconcile`` make one event; any
    other is published as :func:`notify` does.
    """
    job = event_key(event)
    if job is None:
        return notify(queue, event, root=root, create=create, priority=priority, deadline=deadline,
                      created=created)
    return _deliver(queue, lambda b: b.publish_job_end(queue, job, event, priority=priority), root=root,
                    create=create, deadline=deadline, created=created)


def _deliver(queue: str, send: Callable[[Broker], T], *, root: str | None, create: bool, deadline: float | None,
             created: Callable[[str], object] | None) -> T:
    """``send`` to ``queue`` with a Broker on ``root``, creating them as :func:`notify` says; retried."""
    check_queue_name(queue)

    def attempt() -> T:
        try:
            b = Broker(root, create=False)
        except (RootNotFound, NotARoot):  # missing, or an empty directory: made a root by create=True
            if not create:
                raise
            Broker(root, create=True).close()  # the root only: a Broker made so would create queues unsaid
            b = Broker(root, create=False)
        try:
            return send(b)
        except QueueNotFound:
            if not create:
                raise
        try:
            b.create_queue(queue)
            if created is not None:
                created(f"created queue {queue!r} in {resolve_root(root)[0]}")
        except QueueExists:  # another job made it meanwhile
            pass
        return send(b)
    return retry(attempt, deadline=deadline)


def build_message(message: str | None, as_json: bool = False, fields: dict[str, str] | None = None,
                  status: int | None = None, state: str | None = None) -> Any:
    """MESSAGE as text or JSON, or the job's completion event; ``--field`` entries merged in."""
    fields = fields or {}
    if message is None:
        return add_fields(completion_event(status, state), fields)
    if not as_json:
        if fields:
            raise UsageError("--field builds a JSON object: use it without MESSAGE, or with --json")
        return message
    # Strict JSON, at most MAX_DEPTH deep: what is accepted here can be published and delivered.
    body = loads_body(message, "--json MESSAGE")
    if fields:
        if not isinstance(body, dict):
            raise UsageError("--field needs MESSAGE to be a JSON object")
        body.update(fields)
    return body


@click.command(
    name=PROG, cls=console.Command, context_settings=console.CONTEXT,
    epilog="A missing root and queue are created, and a line on stderr says so: a job's end must not be "
           "lost to a queue nobody has made yet, nor a mistyped name go unnoticed.\n\n" + console.exit_codes_help({
               console.EXIT_OK: "published",
               console.EXIT_ERROR: "could not publish (storage error, --timeout passed)",
               console.EXIT_USAGE: "usage error (bad option, invalid queue name or MESSAGE)",
               console.EXIT_NOT_FOUND: "root or queue not found (--no-create)",
               console.EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
           }),
)
@click.argument("queue")
@click.argument("message", required=False)
@click.option("--json", "as_json", is_flag=True, help="Parse MESSAGE as JSON.")
@click.option("--field", "fields", multiple=True, metavar="KEY=VALUE",
              help="Add a field to the JSON object published (repeatable).")
@click.option("--status", type=options.Number(low=options.INT_RANGE[0], high=options.INT_RANGE[1], whole=True),
              help="Exit status of the job, recorded in the event.")
@click.option("--state", type=click.Choice(STATES), help="Job state (default: from --status).")
@console.setting_option("priority", type=options.Number(low=0, high=MAX_PRIORITY, whole=True),
                        help="Message priority, 0 is served first")
@console.root_option()
@click.option("--no-create", is_flag=True, help="Fail (exit 4) if the root or queue does not exist.")
@click.option("--timeout", type=options.seconds(), default=60.0, metavar="SECONDS",
              help="Give up after this many seconds, retries included (default 60, at most 1e9).")
@console.common_options(PROG)
def command(queue: str, message: str | None, as_json: bool, fields: tuple[str, ...], status: int | None,
            state: str | None, priority: int | None, root: str | None, no_create: bool, timeout: float) -> None:
    """Publish MESSAGE to QUEUE (created if missing, said on stderr, unless --no-create).

    With no MESSAGE, publish a JSON completion event for the current SLURM or
    PBS job (job id, array ids, name, user, host, submit dir, time, and
    --status/--state). With a status or state, it is the job's end: published
    once per job, whoever comes first (the job's trap, an epilogue,
    ddmq-reconcile); a later one says so on stderr and exits 0.
    """
    check_queue_name(queue)
    body = build_message(message, as_json, console.parse_pairs(fields, "field"), status, state)
    outcome: dict[str, Any] = {}

    def publish() -> None:
        try:
            published = (notify_end if message is None else notify)(
                queue, body, root=root, create=not no_create, priority=priority,
                deadline=time.monotonic() + timeout, created=lambda what: console.say(PROG, what))
            if published is None:
                console.say(PROG, f"the end of job {event_key(body)} is already recorded in {queue!r}: "
                                  "not published again")
        except DdmqError as exc:
            outcome["error"] = exc
        except OSError as exc:
            outcome["error"] = f"{exc.strerror or exc}"
        else:
            outcome["ok"] = True

    # A hung network filesystem can block a system call for ever; the publish
    # runs in a thread so the process can still give up and exit on time.
    worker = threading.Thread(target=publish, daemon=True)
    worker.start()
    worker.join(timeout)
    if outcome.get("ok"):
        return
    reason = outcome.get("error") or f"timed out after {timeout:g} s (filesystem not answering?)"
    console.say(PROG, f"could not publish to {queue!r}: {reason}")
    sys.stdout.flush()
    # os._exit: the publishing thread may be stuck in the filesystem, and a normal exit would wait for it.
    os._exit(reason.exit_code if isinstance(reason, DdmqError) else console.EXIT_ERROR)


def main(argv: list[str] | None = None) -> None:
    """The ``ddmq-notify`` console script."""
    code = console.run(command, argv)
    if code:
        sys.exit(code)
