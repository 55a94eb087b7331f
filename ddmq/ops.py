"""The operations of the ``ddmq`` command and their output, without click.

Each operation function (``op_*``) takes plain arguments and returns plain
data; the ``ddmq`` subcommands and the ``json`` subcommand call the same
functions, so both routes behave identically. Output goes through
:func:`ddmq.console.echo`, which writes message bodies as they are.

Output comes before the step it reports becomes final: ``consume`` acks a
message only once it is printed and flushed, ``publish`` makes its messages
visible only once their ids are. When stdout will not take the output (the
reader of a pipe went away, a full disk), what was not delivered is given back
or never published, and the command says so (:class:`OutputFailed`).
"""
from __future__ import annotations

import errno
import json
import sys

from .broker import Broker
from .console import EXIT_BROKEN_PIPE, Empty, body_text, echo, os_reason, parse_pairs, silence
from .errors import DdmqError, UsageError
from .layout import check_queue_name
from .message import loads_body

TYPE_CHECKING = False  # typing is for annotations only: it slows every command's start-up
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable

    from .message import Message

FORMATS = ("plain", "json", "yaml")


class OutputFailed(DdmqError):
    """stdout did not take the output; ``outcome`` says what became of the messages.

    A broken pipe exits 141 without a word: the reader that closed it asked
    for no more, and stderr may be the same pipe. Anything else (a full disk,
    an unencodable character) exits 1 with one line.
    """

    def __init__(self, cause: Exception, outcome: str = ""):
        self.cause = cause
        if isinstance(cause, OSError) and cause.errno == errno.EPIPE:
            self.exit_code = EXIT_BROKEN_PIPE
            super().__init__("")
            return
        reason = os_reason(cause) if isinstance(cause, OSError) else str(cause)
        super().__init__(f"cannot write output: {reason}" + (f"; {outcome}" if outcome else ""))

    def saying(self, outcome: str) -> OutputFailed:
        return OutputFailed(self.cause, outcome)


def split(names: str | Iterable[str], what: str = "queue name") -> list[str]:
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
    names = split(queues) if queues else b.list_queues()
    return [{"queue": q, **b.counts(q)} for q in names]


def op_create(b: Broker, queues: str | list[str], exist_ok: bool = False, **settings: Any) -> list[dict[str, Any]]:
    names = split(queues)
    for q in names:
        b.create_queue(q, exist_ok=exist_ok, **settings)
    return [{"queue": q, "created": True} for q in names]


def op_delete(b: Broker, queues: str | list[str], force: bool = False) -> list[dict[str, Any]]:
    names = split(queues)
    for q in names:
        b.delete_queue(q, force=force)
    return [{"queue": q, "deleted": True} for q in names]


def op_publish(b: Broker, queue: str, message: Any, create: bool = False, headers: dict[str, Any] | None = None,
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
    for receipt in split(receipts, "receipt"):
        b.ack(receipt, queue=queue)
        result.append({"receipt": receipt, "acked": True})
    return result


def op_nack(b: Broker, queue: str, receipts: str | list[str], requeue: bool = True) -> list[dict[str, Any]]:
    return [{"receipt": r, "moved_to": b.nack(r, queue=queue, requeue=requeue)} for r in split(receipts, "receipt")]


def op_extend(b: Broker, queue: str, receipt: str, seconds: float | None = None) -> dict[str, Any]:
    return {"receipt": receipt, "lease_expires": b.extend(receipt, seconds=seconds, queue=queue)}


def op_purge(b: Broker, queues: str | list[str], dead: bool = False) -> list[dict[str, Any]]:
    return [{"queue": q, "removed": b.purge(q, dead=dead)} for q in split(queues)]


def op_clean(b: Broker, queues: str | list[str] | None = None) -> list[dict[str, Any]]:
    names = split(queues) if queues else [None]
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


# ------------------------------------------------------------------ publish
def read_stdin(what: str) -> str:
    """All of stdin, for ``what``; one line on stderr if it cannot be read, never a traceback."""
    if sys.stdin is None:  # started with stdin closed
        raise UsageError(f"no stdin to read {what} from")
    try:
        return sys.stdin.read()
    except UnicodeError as exc:
        raise UsageError(f"cannot read {what} from stdin: {exc}") from None
    except OSError as exc:
        raise DdmqError(f"cannot read {what} from stdin: {os_reason(exc)}") from None


def _stdin_message() -> str:
    """A message from stdin, less one trailing newline (as ``$(...)`` in the shell strips it)."""
    text = read_stdin("the message")
    return text[:-1] if text.endswith("\n") else text


def publish_command(root: str | None, fmt: str, queue: str, messages: Iterable[str], as_json: bool = False,
                    headers: Iterable[str] = (), create: bool = False, **settings: Any) -> None:
    """``ddmq publish`` once its command line is parsed.

    ``messages`` are the MESSAGE arguments ('-', or none at all, reads one
    from stdin), ``headers`` the ``KEY=VALUE`` strings. Prints the new ids
    before any message becomes visible: if they cannot be printed, nothing is
    published, so a script that retries does not publish twice.
    """
    bodies = [_stdin_message() if body == "-" else body for body in list(messages) or ["-"]]
    if as_json:
        bodies = [loads_body(body, "--json") for body in bodies]
    parsed_headers = parse_pairs(headers, "header") or None
    check_queue_name(queue)  # before the root is created

    def show(published: list[Message]) -> None:
        rows = [{"queue": queue, "id": msg.id, "priority": msg.priority} for msg in published]
        try:
            render(rows, fmt, lambda rows: "\n".join(row["id"] for row in rows))
        except OutputFailed as exc:
            raise exc.saying("nothing was published") from None

    b = Broker(root, create=True if create else None)
    b.publish_many(queue, bodies, create=create, headers=parsed_headers, before_visible=show, **settings)


def consume_command(root: str | None, fmt: str, queue: str, count: int = 1, lease: float | None = None,
                    no_ack: bool = False) -> None:
    """``ddmq consume`` (and ``ddmq json`` consume) once its arguments are parsed.

    Output before ack, and only what was delivered is acked: the messages are
    claimed without acking, then each is acked (unless ``no_ack``) once it is
    printed and flushed -- plain output a line at a time, json/yaml the one
    document for all. If output fails, every claimed message not yet
    delivered is given back. Empty if there was nothing to claim.
    """
    check_queue_name(queue)
    b = Broker(root)
    claimed = b.consume(queue, n=count, lease=lease, ack=False)
    deliver(b, claimed, fmt, ack=not no_ack)
    if not claimed:
        raise Empty("")


def deliver(b: Broker, claimed: list[Message], fmt: str, ack: bool) -> None:
    """Print ``claimed`` and ack (if ``ack``) what got out; give back the rest on any failure."""
    delivered = 0
    try:
        if fmt == "plain":
            for msg in claimed:
                write(body_text(msg.message))  # one line per message, an empty body too
                delivered += 1
                if ack:
                    b.ack(msg)
        else:
            rows = [msg.to_dict() for msg in claimed]
            if ack:  # spent once printed: shown as an acked message always was
                for row in rows:
                    row["receipt"] = None
            render(rows, fmt, plain_bodies)
            delivered = len(claimed)
            failure = None
            for msg in claimed if ack else ():
                try:
                    b.ack(msg)
                except DdmqError as exc:  # ack the others all the same: they were delivered
                    failure = failure or exc
            if failure is not None:
                raise failure
    except OutputFailed as exc:
        raise exc.saying(f"{give_back(b, claimed[delivered:])} message(s) given back") from None
    except BaseException:
        give_back(b, claimed[delivered:])
        raise


def give_back(b: Broker, messages: list[Message]) -> int:
    """Release claimed messages as they were (no requeue spent), best effort; how many went back.

    One that cannot be released stays leased until its lease expires, when
    housekeeping requeues it.
    """
    released = 0
    for msg in messages:
        try:
            b.release(msg)
            released += 1
        except DdmqError:
            pass
    return released


# --------------------------------------------------------------------- output
def write(text: str, nl: bool = True) -> None:
    """:func:`echo` to stdout; OutputFailed if stdout does not take all of it (or was closed)."""
    try:
        if sys.stdout is None:  # started with stdout closed: nothing can be delivered
            raise OSError(errno.EBADF, "stdout is closed")
        echo(text, nl=nl)
    except BaseException as exc:
        # Nothing more goes to stdout: what is left in its buffer (part of a
        # message now given back) must go nowhere, not out, or fail again, at exit.
        silence(sys.stdout)
        if isinstance(exc, (OSError, UnicodeError)):
            raise OutputFailed(exc) from None
        raise


def render(data: Any, fmt: str, plain: Callable[[Any], str]) -> None:
    """Print ``data`` in ``fmt`` (``plain`` makes the plain text); OutputFailed if stdout refuses it."""
    if fmt == "json":
        write(json.dumps(data, ensure_ascii=False, sort_keys=True))
    elif fmt == "yaml":
        import yaml

        write(yaml.safe_dump(data, allow_unicode=True, sort_keys=True, default_flow_style=False), nl=False)
    else:
        text = plain(data)
        if text:
            write(text)


def plain_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return ""
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def plain_bodies(rows: list[dict[str, Any]]) -> str:
    return "\n".join(body_text(r["message"]) for r in rows)
