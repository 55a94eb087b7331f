"""``ddmq-notify QUEUE [MESSAGE]``: publish an event at the end of a batch job.

It runs in the epilogue of thousands of jobs, so it starts fast (argparse, no
YAML unless a settings file has content), retries the transient errors of
network filesystems, never hangs (``--timeout`` bounds it even when the
filesystem does not answer), and says in one line why it failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time
TYPE_CHECKING = False  # typing is for annotations only: it slows every job's start-up
if TYPE_CHECKING:
    from typing import Any

from ddmq import Broker, DdmqError, Message, loads_body
from ddmq.errors import UsageError
from ddmq.layout import MAX_PRIORITY, check_queue_name

from . import options
from .fields import add_fields, parse_fields
from .jobenv import STATES, completion_event
from .retry import retry

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def notify(queue: str, message: Any, *, root: str | None = None, create: bool = True,
           priority: int | None = None, deadline: float | None = None) -> Message:
    """Publish ``message`` to ``queue``, creating root and queue unless ``create`` is false.

    Transient filesystem errors are retried with backoff until ``deadline``
    (a ``time.monotonic()`` value).
    """
    check_queue_name(queue)

    def attempt() -> Message:
        b = Broker(root, create=True if create else False)
        return b.publish(queue, message, priority=priority, create=create)
    return retry(attempt, deadline=deadline)


def build_message(args: argparse.Namespace) -> Any:
    """MESSAGE as text or JSON, or the job's completion event; ``--field`` entries merged in."""
    fields = parse_fields(args.field)
    if args.message is None:
        return add_fields(completion_event(args.status, args.state), fields)
    if not args.json:
        if fields:
            raise UsageError("--field builds a JSON object: use it without MESSAGE, or with --json")
        return args.message
    # Strict JSON, at most MAX_DEPTH deep: what is accepted here can be published and delivered.
    body = loads_body(args.message, "--json MESSAGE")
    if fields:
        if not isinstance(body, dict):
            raise UsageError("--field needs MESSAGE to be a JSON object")
        body.update(fields)
    return body


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized as shutil.get_terminal_size() would, without
    importing shutil: argparse makes one for every add_argument, and shutil
    (which imports zlib, bz2 and lzma) costs every job's epilogue milliseconds."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
            except (AttributeError, ValueError, OSError):
                columns = 80
        super().__init__(prog, width=columns - 2)


def parser() -> argparse.ArgumentParser:
    p = options.Parser(
        prog="ddmq-notify", formatter_class=_HelpFormatter,
        description="Publish MESSAGE to QUEUE. With no MESSAGE, publish a JSON completion event for the "
                    "current SLURM or PBS job (job id, array ids, name, user, host, submit dir, time, and "
                    "--status/--state).",
        epilog="Exit codes: 0 published; 1 could not publish (reason on stderr); 2 usage error. "
               "Root: --root, else $DDMQ_ROOT, else ~/.ddmq.",
    )
    p.add_argument("queue", help="queue to publish to (created if missing, unless --no-create)")
    p.add_argument("message", nargs="?", help="message text (default: a job completion event)")
    p.add_argument("--json", action="store_true", help="parse MESSAGE as JSON")
    p.add_argument("--field", action="append", default=[], metavar="KEY=VALUE",
                   help="add a field to the JSON object published (repeatable)")
    p.add_argument("--status", type=options.number(low=options.INT_RANGE[0], high=options.INT_RANGE[1],
                                                   whole=True),
                   help="exit status of the job, recorded in the event")
    p.add_argument("--state", choices=STATES, help="job state (default: from --status)")
    p.add_argument("--priority", type=options.number(low=0, high=MAX_PRIORITY, whole=True),
                   help=f"message priority (0 is served first, {MAX_PRIORITY} last)")
    p.add_argument("--root", help="ddmq root directory")
    p.add_argument("--no-create", dest="create", action="store_false",
                   help="fail if the root or queue does not exist")
    p.add_argument("--timeout", type=options.seconds(), default=60.0,
                   help="give up after this many seconds, retries included (default 60, at most 1e9)")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # parse_intermixed_args rejects "--", the only way to name a queue that starts with "-"
    args = parser().parse_args(argv) if "--" in argv else parser().parse_intermixed_args(argv)
    try:
        check_queue_name(args.queue)
        body = build_message(args)
    except UsageError as exc:
        print(f"ddmq-notify: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    outcome: dict[str, Any] = {}

    def publish() -> None:
        try:
            notify(args.queue, body, root=args.root, create=args.create, priority=args.priority,
                   deadline=time.monotonic() + args.timeout)
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
    worker.join(args.timeout)
    if outcome.get("ok"):
        return
    reason = outcome.get("error") or f"timed out after {args.timeout:g} s (filesystem not answering?)"
    print(f"ddmq-notify: could not publish to {args.queue!r}: {reason}", file=sys.stderr)
    sys.stdout.flush()
    os._exit(EXIT_FAILED if not isinstance(reason, UsageError) else EXIT_USAGE)
