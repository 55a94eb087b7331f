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

TYPE_CHECKING = False  # typing is for annotations only: it slows every command's start-up
if TYPE_CHECKING:
    from typing import Any, Callable

    from . import ops
else:
    class _ImportedOnUse:
        """``ops`` to the code below, imported at its first use: ``--help`` needs no operations."""

        def __getattr__(self, name: str) -> object:
            from . import ops

            return getattr(ops, name)

    ops = _ImportedOnUse()

FORMATS = ("plain", "json", "yaml")
EXIT_CODES_HELP = f"""\b
Exit codes:
  {console.EXIT_OK}    success
  {console.EXIT_ERROR}    failure (storage error, bad settings file, foreign files, output
       that could not be written: consume gives back what it did not print,
       publish publishes nothing)
  {console.EXIT_USAGE}    usage error (bad option, invalid queue name or receipt)
  {console.EXIT_EMPTY}    nothing to consume or peek: the queue is empty
  {console.EXIT_NOT_FOUND}    root, queue or message not found
  {console.EXIT_LEASE_LOST}    lease lost: the message was requeued or acked by someone else
  {console.EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {console.EXIT_BROKEN_PIPE}  the reader of the output went away (broken pipe); nothing is said
"""


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--root``, ``--format`` and ``-v`` on every subcommand; they may also precede it."""
    func = click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default=None,
                        help="Output format (default: plain).")(func)
    return console.root_option(checked=True)(console.common_options("ddmq", version=False)(func))


def _context(root: str | None, fmt: str | None, default_fmt: str = "plain") -> tuple[str | None, str]:
    """``--root``/``--format`` given after the subcommand win over those before it."""
    parent = click.get_current_context().find_root().params
    return root or parent.get("root"), fmt or parent.get("fmt") or default_fmt


def _check_names(arguments: dict[str, Any]) -> None:
    """Refuse bad queue names before anything, even the root, is created."""
    from .layout import check_queue_name

    if "queue" in arguments:
        check_queue_name(arguments["queue"])
    if "queues" in arguments and arguments["queues"] is not None:
        for name in ops.split(arguments["queues"]):
            check_queue_name(name)


def _run(name: str, root: str | None, fmt: str | None, plain: Callable[[Any], str], /, **kwargs: Any) -> Any:
    from .broker import Broker

    root, fmt = _context(root, fmt)
    _check_names(kwargs)
    b = Broker(root, create=True if name == "create" or kwargs.get("create") else None)
    data = ops.OPERATIONS[name](b, **kwargs)
    ops.render(data, fmt, plain)
    return data


def _settings(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# The settings a message carries, which publish takes and create makes the queue's defaults.
MESSAGE_SETTINGS = ("priority", "message_timeout", "requeue", "requeue_prio", "requeue_limit", "durable")


@click.group(name="ddmq", cls=console.Group, context_settings=console.CONTEXT, epilog=EXIT_CODES_HELP)
@_options
@click.version_option(__version__, "-V", "--version", prog_name="ddmq")
def cli(root: str | None, fmt: str | None) -> None:
    """ddmq: a serverless message queue in a directory on shared storage.

    Every command works directly on the files under the root; there is no
    server. Queue names: letters, digits, '_', '-', '.', not starting with '.'.
    Several queues can be given comma-separated where QUEUES is shown.
    """


@cli.command(epilog=EXIT_CODES_HELP)
@_options
@click.argument("queues", nargs=-1)
def view(root: str | None, fmt: str | None, queues: tuple[str, ...]) -> None:
    """Show queues with their ready, in-work and dead message counts."""
    _run("view", root, fmt, lambda rows: ops.plain_table(rows, ["queue", "ready", "work", "dead"]),
         queues=list(queues) or None)


@cli.command(epilog=EXIT_CODES_HELP)
@_options
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
    _run("create", root, fmt, lambda rows: "", queues=list(queues), exist_ok=exist_ok, **_settings(**settings))


@cli.command(epilog=EXIT_CODES_HELP)
@_options
@click.argument("queues", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Delete even if the queue holds files ddmq did not write.")
def delete(root: str | None, fmt: str | None, queues: tuple[str, ...], force: bool) -> None:
    """Delete queues with all their messages."""
    _run("delete", root, fmt, lambda rows: "", queues=list(queues), force=force)


@cli.command(epilog=EXIT_CODES_HELP)
@_options
@click.argument("queue")
@click.argument("messages", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Parse each MESSAGE as JSON instead of publishing it as a string.")
@click.option("-H", "--header", "headers", multiple=True, metavar="KEY=VALUE", help="Add a header (repeatable).")
@click.option("-c", "--create", is_flag=True, help="Create the queue if it does not exist.")
@console.setting_options(*MESSAGE_SETTINGS)
def publish(root: str | None, fmt: str | None, queue: str, messages: tuple[str, ...], as_json: bool,
            headers: tuple[str, ...], create: bool, **settings: Any) -> None:
    """Publish MESSAGES to QUEUE (read one message from stdin if none or '-').

    Prints the id of each message published, before they become visible: if
    the ids cannot be printed, nothing is published.
    """
    root, fmt = _context(root, fmt)
    ops.publish_command(root, fmt, queue, messages, as_json, headers, create, **settings)


@cli.command(epilog=EXIT_CODES_HELP)
@_options
@click.argument("queue")
@click.option("-n", "count", type=click.IntRange(min=1), default=1, show_default=True, help="How many messages.")
@click.option("--lease", type=float, help="Lease length in seconds (default: the message timeout).")
@click.option("--no-ack", is_flag=True,
              help="Leave the messages in work: ack or nack them later by receipt (see --format json).")
def consume(root: str | None, fmt: str | None, queue: str, count: int, lease: float | None, no_ack: bool) -> None:
    """Claim, print and ack up to N messages from QUEUE, best priority first.

    Output before ack: a message is acked only once it is printed and flushed;
    if output fails (a closed pipe, a full disk), those not printed go back to
    the queue. Plain output prints each body on a line; json/yaml print whole
    messages, including the receipt needed by ack/nack/extend (with --no-ack).
    Exit 3 if the queue is empty.
    """
    root, fmt = _context(root, fmt)
    ops.consume_command(root, fmt, queue, count, lease, no_ack)


@cli.command(epilog=EXIT_CODES_HELP)
@_options
@click.argument("queue")
@click.option("-n", "count", type=click.IntRange(min=1), default=1, show_default=True, help="How many messages.")
@click.option("--state", type=click.Choice(["ready", "work", "dead"]), default="ready", show_default=True,
              help="Which messages to look at.")
def peek(root: str | None, fmt: str | None, queue: str, count: int, state: str) -> None:
    """Print up to N messages from QUEUE without claiming them. Exit 3 if none."""
    rows = _run("peek", root, fmt, ops.plain_bodies, queue=queue, n=count, state=state)
    if not rows:
        raise console.Empty("")


@cli.command(epilog=EXIT_CODES_HELP)
@_options
@click.argument("queue")
@click.argument("receipts", nargs=-1, required=True)
def ack(root: str | None, fmt: str | None, queue: str, receipts: tuple[str, ...]) -> None:
    """Acknowledge messages consumed with --no-ack, by RECEIPT (ID.TOKEN)."""
    _run("ack", root, fmt, lambda rows: "", queue=queue, receipts=list(receipts))


@cli.command(epilog=EXIT_CODES_HELP)
@_options
@click.argument("queue")
@click.argument("receipts", nargs=-1, required=True)
@click.option("--requeue/--no-requeue", default=True, show_default=True,
              help="Requeue (until the requeue limit) or dead-letter at once.")
def nack(root: str | None, fmt: str | None, queue: str, receipts: tuple[str, ...], requeue: bool) -> None:
    """Give messages back, by RECEIPT: requeue them or dead-letter them."""
    _run("nack", root, fmt, lambda rows: "\n".join(r["moved_to"] for r in rows),
         queue=queue, receipts=list(receipts), requeue=requeue)


@cli.command(epilog=EXIT_CODES_HELP)
@_options
@click.argument("queue")
@click.argument("receipt")
@click.option("--seconds", type=float, help="New lease length from now (default: the message timeout).")
def extend(root: str | None, fmt: str | None, queue: str, receipt: str, seconds: float | None) -> None:
    """Extend the lease on a message still being worked on."""
    _run("extend", root, fmt, lambda row: "", queue=queue, receipt=receipt, seconds=seconds)


@cli.command(epilog=EXIT_CODES_HELP)
@_options
@click.argument("queues", nargs=-1, required=True)
@click.option("--dead", is_flag=True, help="Purge the dead-letter area instead of the ready messages.")
def purge(root: str | None, fmt: str | None, queues: tuple[str, ...], dead: bool) -> None:
    """Remove all ready messages (or dead letters) from QUEUES; prints how many."""
    _run("purge", root, fmt, lambda rows: "\n".join(f"{r['queue']}: {r['removed']}" for r in rows),
         queues=list(queues), dead=dead)


@cli.command(epilog=EXIT_CODES_HELP)
@_options
@click.argument("queues", nargs=-1)
def clean(root: str | None, fmt: str | None, queues: tuple[str, ...]) -> None:
    """Housekeeping now: requeue expired leases, dead-letter foreign files, drop stale temp files.

    Consumers do this themselves every clean_interval seconds; run it from
    cron if a queue may sit with no consumer.
    """
    _run("clean", root, fmt,
         lambda rows: ops.plain_table(rows, ["queue", "requeued", "dead_lettered", "temp_removed"]),
         queues=list(queues) or None)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def _finite(value: Any) -> bool:
    import math

    return math.isfinite(value)


# What an argument of a ``ddmq json`` command may be, by the name of a type in
# the annotations of the op_* functions (strings: ops has postponed annotations).
_JSON_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v), "a number"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "None": (lambda v: v is None, "null"),
    "Any": (lambda v: True, "any JSON value"),
}


def expected_types(annotation: Any) -> list[tuple[Callable[[Any], bool], str]]:
    """What a JSON value may be for a parameter annotated ``annotation`` (``"str | list[str] | None"``).

    Empty if the annotation names a type not in _JSON_TYPES: such an argument
    is refused, and a test checks that no operation has one.
    """
    import re

    if not isinstance(annotation, str):
        return []
    names = [re.sub(r"^dict\[.*\]$", "dict", name.strip()) for name in annotation.split("|")]
    return [_JSON_TYPES[name] for name in names] if all(name in _JSON_TYPES for name in names) else []


def _shown(value: Any) -> str:
    """A JSON value for an error message, cut short."""
    import json

    try:
        text = json.dumps(value, ensure_ascii=False)
    except RecursionError:  # nested deeper than Python's stack allows
        return "an object" if isinstance(value, dict) else "a list"
    return text if len(text) <= 40 else text[:37] + "..."


def _check_types(name: str, request: dict[str, Any]) -> None:
    """Every argument of the JSON request has the type the operation's signature says; else a usage error.

    JSON has booleans and numbers of its own: "false" is not false, 1 is not
    true, "5" and 5.0 are not 5.
    """
    import inspect

    from .errors import UsageError

    params = inspect.signature(ops.OPERATIONS[name]).parameters
    for key, value in request.items():
        param = params.get(key)
        if param is None or param.kind is param.VAR_KEYWORD:
            continue  # create's queue settings: checked by the settings schema
        accepted = expected_types(param.annotation)
        if not any(check(value) for check, _ in accepted):
            kinds = [what for _, what in accepted] or ["(unchecked)"]
            expected = " or ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
            raise UsageError(f'{name}: "{key}" must be {expected}, not {_shown(value)}')


@cli.command("json", epilog=EXIT_CODES_HELP)
@_options
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
    import inspect
    import json

    from .errors import UsageError

    text = ops.read_stdin("the command") if command == "-" else command
    try:
        request = json.JSONDecoder(parse_constant=_not_json).decode(text)
    except RecursionError:
        raise UsageError("not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise UsageError(f"not valid JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise UsageError('expected a JSON object with a "cmd" key')
    name = request.pop("cmd")
    if name not in ops.OPERATIONS:
        raise UsageError(f"unknown cmd {name!r}; one of: {', '.join(ops.OPERATIONS)}")
    try:
        bound = inspect.signature(ops.OPERATIONS[name]).bind(None, **request)
    except TypeError as exc:
        raise UsageError(f"{name}: {exc}") from None
    _check_types(name, request)
    if name == "consume":  # output before ack, as ddmq consume; plain output is JSON here too
        bound.apply_defaults()
        args = bound.arguments
        root, fmt = _context(root, fmt, default_fmt="json")
        ops.consume_command(root, "json" if fmt == "plain" else fmt, args["queue"], args["n"], args["lease"],
                        not args["ack"])
        return
    root, fmt = _context(root, fmt, default_fmt="json")
    data = _run(name, root, fmt, lambda d: json.dumps(d, ensure_ascii=False, sort_keys=True), **request)
    if name == "peek" and not data:
        raise console.Empty("")


@cli.command(epilog="""\b
Exit codes:
  0    every check is ok
  1    at least one warning or problem (each printed with its fix)
  2    usage error (bad option or queue name)
  4    root or queue not found
""")
@_options
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

    root, fmt = _context(root, fmt)
    findings = diagnose(root, queues)
    ops.render([f.as_dict() for f in findings], fmt, lambda rows: plain(findings))
    if not healthy(findings):
        raise click.exceptions.Exit(1)


def main() -> None:
    """The ``ddmq`` console script (and ``python -m ddmq``)."""
    cli.main(prog_name="ddmq")
