"""The ``ddmq`` command: every queue operation from the shell, on click.

Each subcommand is a thin wrapper around one operation function (``op_*`` in
:mod:`ddmq.ops`) that takes plain arguments and returns plain data; the
``json`` subcommand calls the same functions with arguments from a JSON
object, so both routes behave identically. Foreseeable failures end with one
line on stderr and an exit code a script can test, never a traceback
(:mod:`ddmq.console`, the conventions every ddmq command shares).

``ddmq publish`` ends many batch jobs and ``ddmq consume`` runs in shell
loops, so this module imports only click at start-up: the broker, YAML and
JSON are imported by the subcommand that needs them, when it runs.
"""
from __future__ import annotations

import click

from . import __version__, console
from .cli_operator import release, requeue, settings, show
from .subcommand import EXIT_CODES_HELP, context, options, plain_options, run

TYPE_CHECKING = False  # typing is for annotations only: it slows every command's start-up
if TYPE_CHECKING:
    from typing import Any

    from . import ops
else:
    class _ImportedOnUse:
        """``ops`` to the code below, imported at its first use: ``--help`` needs no operations."""

        def __getattr__(self, name: str) -> object:
            from . import ops

            return getattr(ops, name)

    ops = _ImportedOnUse()

def _settings(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# The settings a message carries, which publish takes and create makes the queue's defaults.
# Messages per batch with `publish --lines`: a durability barrier (milliseconds on a disk) is paid once
# per this many, and the ids of a batch are held until it is written.
LINES_BATCH = 1000
MESSAGE_SETTINGS = ("priority", "message_timeout", "requeue", "requeue_prio", "requeue_limit", "durable")


@click.group(name="ddmq", cls=console.Group, context_settings=console.CONTEXT, epilog=EXIT_CODES_HELP)
@options
@click.version_option(__version__, "-V", "--version", prog_name="ddmq")
def cli(root: str | None, fmt: str | None) -> None:
    """ddmq: a serverless message queue in a directory on shared storage.

    Every command works directly on the files under the root; there is no
    server. Queue names: letters, digits, '_', '-', '.', not starting with '.'.
    Several queues can be given comma-separated where QUEUES is shown.
    """


@cli.command(epilog=EXIT_CODES_HELP)
@options
@click.argument("queues", nargs=-1)
def view(root: str | None, fmt: str | None, queues: tuple[str, ...]) -> None:
    """Show queues: ready, in-work and dead counts, what is stuck.

    OLDEST is the age of the oldest ready message (nobody is consuming?),
    EXPIRED the leases that ran out without an ack (a consumer died; the next
    consume or clean requeues them). JSON and YAML give the age in seconds
    (oldest_ready_age, null if none is ready) and expired_leases.
    """
    from .render import view_table

    run("view", root, fmt, view_table, queues=list(queues) or None)


@cli.command(epilog=EXIT_CODES_HELP)
@options
@click.argument("queues", nargs=-1, required=True)
@click.option("--exist-ok", is_flag=True,
              help="Do not fail if a queue already exists with the settings given (other settings: an error).")
@console.setting_options(*MESSAGE_SETTINGS, "clean_interval", "mode")
def create(root: str | None, fmt: str | None, queues: tuple[str, ...], exist_ok: bool, **settings: Any) -> None:
    """Create queues (and the root, if needed); options become the queue's settings.

    For a queue shared by a Unix group, make the root directory group-owned
    and setgid (chgrp GROUP ROOT; chmod 2770 ROOT) and create queues with
    --mode 0660 (or put "mode: 0660" in the root's ddmq.yaml).
    """
    run("create", root, fmt, lambda rows: "", queues=list(queues), exist_ok=exist_ok, **_settings(**settings))


@cli.command(epilog=EXIT_CODES_HELP)
@options
@click.argument("queues", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Delete even if the queue holds files ddmq did not write.")
def delete(root: str | None, fmt: str | None, queues: tuple[str, ...], force: bool) -> None:
    """Delete queues with all their messages."""
    run("delete", root, fmt, lambda rows: "", queues=list(queues), force=force)


@cli.command(epilog=EXIT_CODES_HELP)
@options
@click.argument("queue")
@click.argument("messages", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Parse each MESSAGE as JSON instead of publishing it as a string.")
@click.option("-H", "--header", "headers", multiple=True, metavar="KEY=VALUE", help="Add a header (repeatable).")
@click.option("-c", "--create", is_flag=True, help="Create the queue if it does not exist.")
@click.option("--file", "files", multiple=True, type=click.Path(exists=True, dir_okay=False), metavar="PATH",
              help="Publish the content of PATH, exactly (repeatable: one message each).")
@click.option("--base64", "as_base64", is_flag=True,
              help="A binary body: --file contents are base64-encoded; a MESSAGE (or stdin) must be base64 already.")
@click.option("--lines", is_flag=True,
              help="Each line of stdin is a message (empty lines are skipped), published in batches.")
@click.option("--batch", type=click.IntRange(min=1), default=LINES_BATCH, show_default=True, metavar="N",
              help="With --lines: at most N messages per batch (one durability barrier each).")
@console.setting_options(*MESSAGE_SETTINGS)
def publish(root: str | None, fmt: str | None, queue: str, messages: tuple[str, ...], as_json: bool,
            headers: tuple[str, ...], create: bool, files: tuple[str, ...], as_base64: bool, lines: bool,
            batch: int, **settings: Any) -> None:
    """Publish MESSAGES to QUEUE (read one message from stdin if none or '-').

    All the MESSAGES (or --file PATHs) are one batch: with durable on, one
    durability barrier for all, not one each. --lines reads one message per
    line from stdin (--json: a JSON value per line) and publishes them N at
    a time, or as soon as no more input is waiting, so memory stays bounded
    and a slow producer's lines are not held back.

    Prints the id of each message published, before they become visible: if
    the ids of a batch cannot be printed, that batch is not published. If
    publishing fails midway, the one-line error says how many messages were
    published, from which input lines, and where to resume (`tail -n +K`):
    resuming there publishes every line exactly once. A body is text
    (UTF-8); binary data goes with --base64, as base64 text with the header
    content-transfer-encoding=base64: `ddmq consume --base64 | base64 -d`
    gives the bytes back.
    """
    root, fmt = context(root, fmt)
    ops.publish_command(root, fmt, queue, messages, as_json, headers, create, files, as_base64, lines, batch,
                        **settings)


@cli.command(epilog=EXIT_CODES_HELP)
@options
@click.argument("queue")
@click.option("-n", "count", type=click.IntRange(min=1), default=1, show_default=True, help="How many messages.")
@click.option("--lease", type=float, help="Lease length in seconds (default: the message timeout).")
@click.option("--no-ack", is_flag=True,
              help="Leave the messages in work: ack or nack them later by RECEIPT (printed first, then a tab).")
@plain_options
def consume(root: str | None, fmt: str | None, queue: str, count: int, lease: float | None, no_ack: bool,
            null: bool, as_base64: bool) -> None:
    """Claim, print and ack up to N messages from QUEUE, best priority first.

    Output before ack: a message is acked only once it is printed and flushed;
    if output fails (a closed pipe, a full disk), those not printed go back to
    the queue. Plain output prints each body on a line (-0: ended by a NUL,
    for bodies that hold newlines); with --no-ack each line is RECEIPT, a tab,
    then the body: `ddmq ack QUEUE RECEIPT` when done. json/yaml print whole
    messages, with the receipt. Exit 3 if the queue is empty.
    """
    root, fmt = context(root, fmt)
    ops.consume_command(root, fmt, queue, count, lease, no_ack, "\0" if null else "\n", as_base64)


@cli.command(epilog=EXIT_CODES_HELP)
@options
@click.argument("queue")
@click.option("-n", "count", type=click.IntRange(min=1), default=None,
              help="How many messages (default: 1; every dead letter with --state dead).")
@click.option("--state", type=click.Choice(["ready", "work", "dead"]), default="ready", show_default=True,
              help="Which messages to look at.")
@plain_options
def peek(root: str | None, fmt: str | None, queue: str, count: int | None, state: str, null: bool,
         as_base64: bool) -> None:
    """Print up to N messages from QUEUE without claiming them. Exit 3 if none.

    Plain output is one body per line, as consume prints them. Dead letters
    (--state dead) are a table instead: every file in dead/, readable or not,
    with when (UTC) and why it was dead-lettered, its requeue count, its id
    and the detail; json/yaml add the message itself (ddmq show prints one).
    Files in ready/ or work/ that are not valid messages are counted on
    stderr: a consumer or clean dead-letters them.
    """
    root, fmt = context(root, fmt)
    ops.peek_command(root, fmt, queue, count, state, "\0" if null else "\n", as_base64)


@cli.command(epilog=EXIT_CODES_HELP)
@options
@click.argument("queue")
@click.argument("receipts", nargs=-1, required=True)
def ack(root: str | None, fmt: str | None, queue: str, receipts: tuple[str, ...]) -> None:
    """Acknowledge messages consumed with --no-ack, by RECEIPT (ID.TOKEN)."""
    run("ack", root, fmt, lambda rows: "", queue=queue, receipts=list(receipts))


@cli.command(epilog=EXIT_CODES_HELP)
@options
@click.argument("queue")
@click.argument("receipts", nargs=-1, required=True)
@click.option("--requeue/--no-requeue", default=True, show_default=True,
              help="Requeue (until the requeue limit) or dead-letter at once.")
def nack(root: str | None, fmt: str | None, queue: str, receipts: tuple[str, ...], requeue: bool) -> None:
    """Give messages back, by RECEIPT: requeue them or dead-letter them."""
    run("nack", root, fmt, lambda rows: "\n".join(r["moved_to"] for r in rows),
         queue=queue, receipts=list(receipts), requeue=requeue)


@cli.command(epilog=EXIT_CODES_HELP)
@options
@click.argument("queue")
@click.argument("receipt")
@click.option("--seconds", type=float, help="New lease length from now (default: the message timeout).")
def extend(root: str | None, fmt: str | None, queue: str, receipt: str, seconds: float | None) -> None:
    """Extend the lease on a message still being worked on."""
    run("extend", root, fmt, lambda row: "", queue=queue, receipt=receipt, seconds=seconds)


@cli.command(epilog=EXIT_CODES_HELP)
@options
@click.argument("queues", nargs=-1, required=True)
@click.option("--dead", is_flag=True, help="Purge the dead-letter area instead of the ready messages.")
def purge(root: str | None, fmt: str | None, queues: tuple[str, ...], dead: bool) -> None:
    """Remove all ready messages (or dead letters) from QUEUES; prints how many."""
    run("purge", root, fmt, lambda rows: "\n".join(f"{r['queue']}: {r['removed']}" for r in rows),
         queues=list(queues), dead=dead)


@cli.command(epilog=EXIT_CODES_HELP)
@options
@click.argument("queues", nargs=-1)
def clean(root: str | None, fmt: str | None, queues: tuple[str, ...]) -> None:
    """Housekeeping now: requeue expired leases, dead-letter foreign files, drop stale temp files.

    Consumers do this themselves every clean_interval seconds; run it from
    cron if a queue may sit with no consumer.
    """
    from .render import plain_table

    run("clean", root, fmt, lambda rows: plain_table(rows, ["queue", "requeued", "dead_lettered", "temp_removed"]),
         queues=list(queues) or None)


@cli.command("json", epilog=EXIT_CODES_HELP)
@options
@click.argument("command")
def json_command(root: str | None, fmt: str | None, command: str) -> None:
    """Run a command given as a JSON object ('-' reads it from stdin).

    \b
    Example:
      ddmq json '{"cmd": "publish", "queue": "q", "message": "hi"}'
    Keys are the command's arguments as in the Python API (queues, message,
    n, lease, ack, receipts, requeue, priority, ...), with JSON types: true
    and false, numbers, strings, lists of strings. Prints the result as JSON
    unless --format says otherwise; consume acks only what it printed.
    """
    import json

    from .json_request import parse_request

    name, request = parse_request(ops.read_stdin("the command") if command == "-" else command)
    root, fmt = context(root, fmt, default_fmt="json")
    if name == "consume":  # output before ack, as ddmq consume; plain output is JSON here too
        import inspect

        bound = inspect.signature(ops.op_consume).bind(None, **request)
        bound.apply_defaults()
        args = bound.arguments
        ops.consume_command(root, "json" if fmt == "plain" else fmt, args["queue"], args["n"], args["lease"],
                            not args["ack"])
        return
    data = run(name, root, fmt, lambda d: json.dumps(d, ensure_ascii=False, sort_keys=True), **request)
    if name == "peek" and not data:
        raise console.Empty("")


@cli.command(epilog="""\b
Exit codes:
  0    every check is ok
  1    at least one warning or problem (each printed with its fix)
  2    usage error (bad option or queue name)
  4    root or queue not found
""")
@options
@click.argument("queues", nargs=-1)
def doctor(root: str | None, fmt: str | None, queues: tuple[str, ...]) -> None:
    """Check that the root's filesystem, clock, permissions and QUEUES (default: all) suit ddmq.

    \b
    Each check says what it found, and how to fix it when it is not ok:
      filesystem    type and mount options: ext4 without a journal, the NFS
                    and sshfs directory caches, tmpfs, read-only mounts
      space         free space and inodes
      clock         this host's clock against the file server's
      permissions   a setgid root and queue groups when `mode` shares queues
      (per queue)   foreign files, expired leases nobody requeues, dead letters
    Nothing is changed: the only file written is a clock probe, removed at once.
    """
    from .doctor import diagnose, healthy, plain
    from .render import render

    root, fmt = context(root, fmt)
    findings = diagnose(root, queues)
    render([f.as_dict() for f in findings], fmt, lambda rows: plain(findings))
    if not healthy(findings):
        raise click.exceptions.Exit(1)


for _command in (show, release, requeue, settings):
    cli.add_command(_command)


def main() -> None:
    """The ``ddmq`` console script (and ``python -m ddmq``)."""
    cli.main(prog_name="ddmq")
