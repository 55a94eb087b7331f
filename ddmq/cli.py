"""The ``ddmq`` command: every queue operation from the shell.

Each subcommand is a thin wrapper around one operation function (``op_*``)
that takes plain arguments and returns plain data; the ``json`` subcommand
calls the same functions with arguments from a JSON object, so both routes
behave identically. Foreseeable failures end with one line on stderr and an
exit code a script can test, never a traceback.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Callable, Iterable

import click

from . import __version__
from .broker import Broker
from .errors import DdmqError, UsageError
from .layout import check_queue_name

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_EMPTY, EXIT_NOT_FOUND, EXIT_LEASE_LOST = 0, 1, 2, 3, 4, 5
EXIT_CODES_HELP = """\b
Exit codes:
  0  success
  1  failure (storage error, bad settings file, foreign files, ...)
  2  usage error (bad option, invalid queue name or receipt)
  3  nothing to consume or peek: the queue is empty
  4  root, queue or message not found
  5  lease lost: the message was requeued or acked by someone else
"""
FORMATS = ("plain", "json", "yaml")


class Empty(DdmqError):
    """Nothing to consume: not a failure, but scripts need to tell it apart."""

    exit_code = EXIT_EMPTY


def _split(names: str | Iterable[str], what: str = "queue name") -> list[str]:
    """Lists may be comma-separated (``create q1,q2``) or repeated arguments.

    An empty list is an error: a script whose ``$QUEUE`` or ``$RECEIPT`` came
    out empty must not be told that nothing went wrong.
    """
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise UsageError(f"expected a {what} or a list of them, not {names!r}")
    parts = [part for name in names for part in name.split(",") if part]
    if not parts:
        raise UsageError(f"no {what} given")
    return parts


# ------------------------------------------------------------------ operations
def op_view(b: Broker, queues: str | list[str] | None = None) -> list[dict[str, Any]]:
    names = _split(queues) if queues else b.list_queues()
    return [{"queue": q, **b.counts(q)} for q in names]


def op_create(b: Broker, queues: str | list[str], exist_ok: bool = False, **settings: Any) -> list[dict[str, Any]]:
    names = _split(queues)
    if not names:
        raise UsageError("name at least one queue to create")
    for q in names:
        b.create_queue(q, exist_ok=exist_ok, **settings)
    return [{"queue": q, "created": True} for q in names]


def op_delete(b: Broker, queues: str | list[str], force: bool = False) -> list[dict[str, Any]]:
    names = _split(queues)
    for q in names:
        b.delete_queue(q, force=force)
    return [{"queue": q, "deleted": True} for q in names]


def op_publish(b: Broker, queue: str, message: Any, create: bool = False, headers: dict | None = None,
               priority: int | None = None, message_timeout: float | None = None, requeue: bool | None = None,
               requeue_prio: int | None = None, requeue_limit: int | None = None,
               durable: bool | None = None) -> dict[str, Any]:
    msg = b.publish(queue, message, create=create, headers=headers, priority=priority,
                    message_timeout=message_timeout, requeue=requeue, requeue_prio=requeue_prio,
                    requeue_limit=requeue_limit, durable=durable)
    return {"queue": queue, "id": msg.id, "priority": msg.priority}


def op_consume(b: Broker, queue: str, n: int = 1, lease: float | None = None, ack: bool = True) -> list[dict[str, Any]]:
    return [m.to_dict() for m in b.consume(queue, n=n, lease=lease, ack=ack)]


def op_peek(b: Broker, queue: str, n: int = 1, state: str = "ready") -> list[dict[str, Any]]:
    return [m.to_dict() for m in b.peek(queue, n=n, state=state)]


def op_ack(b: Broker, queue: str, receipts: str | list[str]) -> list[dict[str, Any]]:
    result = []
    for receipt in _split(receipts, "receipt"):
        b.ack(receipt, queue=queue)
        result.append({"receipt": receipt, "acked": True})
    return result


def op_nack(b: Broker, queue: str, receipts: str | list[str], requeue: bool = True) -> list[dict[str, Any]]:
    return [{"receipt": r, "moved_to": b.nack(r, queue=queue, requeue=requeue)} for r in _split(receipts, "receipt")]


def op_extend(b: Broker, queue: str, receipt: str, seconds: float | None = None) -> dict[str, Any]:
    return {"receipt": receipt, "lease_expires": b.extend(receipt, seconds=seconds, queue=queue)}


def op_purge(b: Broker, queues: str | list[str], dead: bool = False) -> list[dict[str, Any]]:
    return [{"queue": q, "removed": b.purge(q, dead=dead)} for q in _split(queues)]


def op_clean(b: Broker, queues: str | list[str] | None = None) -> list[dict[str, Any]]:
    names = _split(queues) if queues else [None]
    result = []
    for q in names:
        report = b.clean(q)
        result.append({"queue": q or "*", "requeued": report.requeued,
                       "dead_lettered": report.dead_lettered, "temp_removed": report.temp_removed})
    return result


OPERATIONS: dict[str, Callable[..., Any]] = {
    "view": op_view, "create": op_create, "delete": op_delete, "publish": op_publish,
    "consume": op_consume, "peek": op_peek, "ack": op_ack, "nack": op_nack, "extend": op_extend,
    "purge": op_purge, "clean": op_clean,
}


# --------------------------------------------------------------------- output
def _body_text(body: Any) -> str:
    return body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, sort_keys=True)


def _render(data: Any, fmt: str, plain: Callable[[Any], str]) -> None:
    if fmt == "json":
        click.echo(json.dumps(data, ensure_ascii=False, sort_keys=True))
    elif fmt == "yaml":
        import yaml

        click.echo(yaml.safe_dump(data, allow_unicode=True, sort_keys=True, default_flow_style=False), nl=False)
    else:
        text = plain(data)
        if text:
            click.echo(text)


def _plain_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return ""
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _plain_bodies(rows: list[dict[str, Any]]) -> str:
    return "\n".join(_body_text(r["message"]) for r in rows)


# ------------------------------------------------------------------- click glue
class _Group(click.Group):
    """Turns DdmqError into one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DdmqError as exc:
            if str(exc):
                click.echo(f"ddmq: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("ddmq: interrupted", err=True)
            ctx.exit(130)


def _common(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--root`` and ``--format`` on every subcommand (they may also precede it)."""
    func = click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default=None,
                        help="Output format (default: plain).")(func)
    func = click.option("-r", "--root", type=click.Path(file_okay=False), default=None,
                        help="Root directory (default: $DDMQ_ROOT, else ~/.ddmq).")(func)
    return func


def _context(root: str | None, fmt: str | None) -> tuple[str | None, str]:
    """``--root``/``--format`` given after the subcommand win over those before it."""
    parent = click.get_current_context().find_root().params
    return root or parent.get("root"), fmt or parent.get("fmt") or "plain"


def _check_names(arguments: dict[str, Any]) -> None:
    """Refuse bad queue names before anything, even the root, is created."""
    if "queue" in arguments:
        check_queue_name(arguments["queue"])
    if "queues" in arguments and arguments["queues"] is not None:
        for name in _split(arguments["queues"]):
            check_queue_name(name)


def _run(name: str, root: str | None, fmt: str | None, plain: Callable[[Any], str], /, **kwargs: Any) -> Any:
    root, fmt = _context(root, fmt)
    _check_names(kwargs)
    b = Broker(root, create=True if name == "create" or kwargs.get("create") else None)
    data = OPERATIONS[name](b, **kwargs)
    _render(data, fmt, plain)
    return data


def _setting_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The per-queue / per-message settings, for ``create`` and ``publish``."""
    options = [
        click.option("-p", "--priority", type=int, help="Priority, 0 is served first (default 999)."),
        click.option("--message-timeout", type=float, help="Lease length in seconds (default 600)."),
        click.option("--requeue/--no-requeue", default=None,
                     help="Requeue expired or nacked messages (default) or dead-letter them."),
        click.option("--requeue-prio", type=int, help="Priority a requeued message gets (default 0)."),
        click.option("--requeue-limit", type=int, help="Requeues before dead-lettering (default: no limit)."),
        click.option("--durable/--no-durable", default=None,
                     help="fsync each message before it becomes visible (default: durable)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, "-v", "--version", prog_name="ddmq")
@_common
def cli(root: str | None, fmt: str | None) -> None:
    """ddmq: a serverless message queue in a directory on shared storage.

    Every command works directly on the files under the root; there is no
    server. Queue names: letters, digits, '_', '-', '.', not starting with '.'.
    Several queues can be given comma-separated where QUEUES is shown.
    """


@cli.command(epilog=EXIT_CODES_HELP)
@_common
@click.argument("queues", nargs=-1)
def view(root: str | None, fmt: str | None, queues: tuple[str, ...]) -> None:
    """Show queues with their ready, in-work and dead message counts."""
    _run("view", root, fmt, lambda rows: _plain_table(rows, ["queue", "ready", "work", "dead"]),
         queues=list(queues) or None)


@cli.command(epilog=EXIT_CODES_HELP)
@_common
@click.argument("queues", nargs=-1, required=True)
@click.option("--exist-ok", is_flag=True, help="Do not fail if a queue already exists.")
@click.option("--clean-interval", type=float, help="Seconds between consumers' housekeeping (default 30).")
@click.option("--mode", help="Octal permission bits for the queue's files, e.g. 0660 for a group-shared queue.")
@_setting_options
def create(root: str | None, fmt: str | None, queues: tuple[str, ...], exist_ok: bool, **settings: Any) -> None:
    """Create queues (and the root, if needed); options become the queue's settings.

    For a queue shared by a Unix group, make the root directory group-owned
    and setgid (chgrp GROUP ROOT; chmod 2770 ROOT) and create queues with
    --mode 0660 (or put "mode: 0660" in the root's ddmq.yaml).
    """
    _run("create", root, fmt, lambda rows: "", queues=list(queues), exist_ok=exist_ok, **_settings(**settings))


@cli.command(epilog=EXIT_CODES_HELP)
@_common
@click.argument("queues", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Delete even if the queue holds files ddmq did not write.")
def delete(root: str | None, fmt: str | None, queues: tuple[str, ...], force: bool) -> None:
    """Delete queues with all their messages."""
    _run("delete", root, fmt, lambda rows: "", queues=list(queues), force=force)


def _stdin_message() -> str:
    """A message from stdin, less one trailing newline (as ``$(...)`` in the shell strips it)."""
    text = sys.stdin.read()
    return text[:-1] if text.endswith("\n") else text


def _parse_headers(pairs: tuple[str, ...]) -> dict[str, str] | None:
    headers = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid header {pair!r}: use KEY=VALUE")
        headers[key] = value
    return headers or None


@cli.command(epilog=EXIT_CODES_HELP)
@_common
@click.argument("queue")
@click.argument("messages", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Parse each MESSAGE as JSON instead of publishing it as a string.")
@click.option("-H", "--header", "headers", multiple=True, metavar="KEY=VALUE", help="Add a header (repeatable).")
@click.option("-c", "--create", is_flag=True, help="Create the queue if it does not exist.")
@_setting_options
def publish(root: str | None, fmt: str | None, queue: str, messages: tuple[str, ...], as_json: bool,
            headers: tuple[str, ...], create: bool, **settings: Any) -> None:
    """Publish MESSAGES to QUEUE (read one message from stdin if none or '-').

    Prints the id of each message published.
    """
    bodies = list(messages) or ["-"]
    bodies = [_stdin_message() if body == "-" else body for body in bodies]
    if as_json:
        try:
            bodies = [json.loads(body) for body in bodies]
        except ValueError as exc:
            raise UsageError(f"--json: not valid JSON: {exc}") from None
    parsed_headers = _parse_headers(headers)
    root, fmt = _context(root, fmt)
    check_queue_name(queue)
    b = Broker(root, create=True if create else None)
    rows = [op_publish(b, queue, body, create=create, headers=parsed_headers, **settings) for body in bodies]
    _render(rows, fmt, lambda rows: "\n".join(row["id"] for row in rows))


@cli.command(epilog=EXIT_CODES_HELP)
@_common
@click.argument("queue")
@click.option("-n", "count", type=click.IntRange(min=1), default=1, show_default=True, help="How many messages.")
@click.option("--lease", type=float, help="Lease length in seconds (default: the message timeout).")
@click.option("--no-ack", is_flag=True,
              help="Leave the messages in work: ack or nack them later by receipt (see --format json).")
def consume(root: str | None, fmt: str | None, queue: str, count: int, lease: float | None, no_ack: bool) -> None:
    """Claim, print and ack up to N messages from QUEUE, best priority first.

    Plain output prints each body on a line; json/yaml print whole messages,
    including the receipt needed by ack/nack/extend. Exit 3 if the queue is empty.
    """
    rows = _run("consume", root, fmt, _plain_bodies, queue=queue, n=count, lease=lease, ack=not no_ack)
    if not rows:
        raise Empty("")


@cli.command(epilog=EXIT_CODES_HELP)
@_common
@click.argument("queue")
@click.option("-n", "count", type=click.IntRange(min=1), default=1, show_default=True, help="How many messages.")
@click.option("--state", type=click.Choice(["ready", "work", "dead"]), default="ready", show_default=True,
              help="Which messages to look at.")
def peek(root: str | None, fmt: str | None, queue: str, count: int, state: str) -> None:
    """Print up to N messages from QUEUE without claiming them. Exit 3 if none."""
    rows = _run("peek", root, fmt, _plain_bodies, queue=queue, n=count, state=state)
    if not rows:
        raise Empty("")


@cli.command(epilog=EXIT_CODES_HELP)
@_common
@click.argument("queue")
@click.argument("receipts", nargs=-1, required=True)
def ack(root: str | None, fmt: str | None, queue: str, receipts: tuple[str, ...]) -> None:
    """Acknowledge messages consumed with --no-ack, by RECEIPT (ID.TOKEN)."""
    _run("ack", root, fmt, lambda rows: "", queue=queue, receipts=list(receipts))


@cli.command(epilog=EXIT_CODES_HELP)
@_common
@click.argument("queue")
@click.argument("receipts", nargs=-1, required=True)
@click.option("--requeue/--no-requeue", default=True, show_default=True,
              help="Requeue (until the requeue limit) or dead-letter at once.")
def nack(root: str | None, fmt: str | None, queue: str, receipts: tuple[str, ...], requeue: bool) -> None:
    """Give messages back, by RECEIPT: requeue them or dead-letter them."""
    _run("nack", root, fmt, lambda rows: "\n".join(r["moved_to"] for r in rows),
         queue=queue, receipts=list(receipts), requeue=requeue)


@cli.command(epilog=EXIT_CODES_HELP)
@_common
@click.argument("queue")
@click.argument("receipt")
@click.option("--seconds", type=float, help="New lease length from now (default: the message timeout).")
def extend(root: str | None, fmt: str | None, queue: str, receipt: str, seconds: float | None) -> None:
    """Extend the lease on a message still being worked on."""
    _run("extend", root, fmt, lambda row: "", queue=queue, receipt=receipt, seconds=seconds)


@cli.command(epilog=EXIT_CODES_HELP)
@_common
@click.argument("queues", nargs=-1, required=True)
@click.option("--dead", is_flag=True, help="Purge the dead-letter area instead of the ready messages.")
def purge(root: str | None, fmt: str | None, queues: tuple[str, ...], dead: bool) -> None:
    """Remove all ready messages (or dead letters) from QUEUES; prints how many."""
    _run("purge", root, fmt, lambda rows: "\n".join(f"{r['queue']}: {r['removed']}" for r in rows),
         queues=list(queues), dead=dead)


@cli.command(epilog=EXIT_CODES_HELP)
@_common
@click.argument("queues", nargs=-1)
def clean(root: str | None, fmt: str | None, queues: tuple[str, ...]) -> None:
    """Housekeeping now: requeue expired leases, dead-letter foreign files, drop stale temp files.

    Consumers do this themselves every clean_interval seconds; run it from
    cron if a queue may sit with no consumer.
    """
    _run("clean", root, fmt,
         lambda rows: _plain_table(rows, ["queue", "requeued", "dead_lettered", "temp_removed"]),
         queues=list(queues) or None)


@cli.command("json", epilog=EXIT_CODES_HELP)
@_common
@click.argument("command")
def json_command(root: str | None, fmt: str | None, command: str) -> None:
    """Run a command given as a JSON object ('-' reads it from stdin).

    \b
    Example:
      ddmq json '{"cmd": "publish", "queue": "q", "message": "hi"}'
    Keys are the command's arguments as in the Python API (queues, message,
    n, lease, ack, receipts, requeue, priority, ...). Prints the result as JSON
    unless --format says otherwise.
    """
    text = sys.stdin.read() if command == "-" else command
    try:
        request = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"not valid JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise UsageError('expected a JSON object with a "cmd" key')
    name = request.pop("cmd")
    if name not in OPERATIONS:
        raise UsageError(f"unknown cmd {name!r}; one of: {', '.join(OPERATIONS)}")
    import inspect

    try:
        inspect.signature(OPERATIONS[name]).bind(None, **request)
    except TypeError as exc:
        raise UsageError(f"{name}: {exc}") from None
    data = _run(name, root, fmt or "json", lambda d: json.dumps(d, ensure_ascii=False, sort_keys=True), **request)
    if name in ("consume", "peek") and not data:
        raise Empty("")


def main() -> None:
    cli(prog_name="ddmq")
