"""The operations of the ``ddmq`` command and their output, without click.

Each operation function (``op_*``) takes plain arguments and returns plain
data; the ``ddmq`` subcommands and the ``json`` subcommand call the same
functions, so both routes behave identically. So does the click-free fast
path for ``ddmq publish`` and ``ddmq consume`` in :mod:`ddmq.entry`: importing
click takes longer than a whole publish, so nothing here may import it, and
output goes through :func:`echo` on both routes.
"""
from __future__ import annotations

import codecs
import json
import sys

from .broker import Broker
from .errors import DdmqError, UsageError
from .layout import check_queue_name

TYPE_CHECKING = False  # typing is for annotations only: it slows every command's start-up
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_EMPTY, EXIT_NOT_FOUND, EXIT_LEASE_LOST = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
FORMATS = ("plain", "json", "yaml")


class Empty(DdmqError):
    """Nothing to consume: not a failure, but scripts need to tell it apart."""

    exit_code = EXIT_EMPTY


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
def _stdin_message() -> str:
    """A message from stdin, less one trailing newline (as ``$(...)`` in the shell strips it)."""
    text = sys.stdin.read()
    return text[:-1] if text.endswith("\n") else text


def _parse_headers(pairs: Iterable[str]) -> dict[str, str] | None:
    headers = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid header {pair!r}: use KEY=VALUE")
        headers[key] = value
    return headers or None


def publish_command(root: str | None, fmt: str, queue: str, messages: Iterable[str], as_json: bool = False,
                    headers: Iterable[str] = (), create: bool = False, **settings: Any) -> None:
    """``ddmq publish`` once its command line is parsed, by click or by :mod:`ddmq.entry`.

    ``messages`` are the MESSAGE arguments ('-', or none at all, reads one
    from stdin), ``headers`` the ``KEY=VALUE`` strings; prints the new ids.
    """
    bodies = [_stdin_message() if body == "-" else body for body in list(messages) or ["-"]]
    if as_json:
        try:
            bodies = [json.loads(body) for body in bodies]
        except ValueError as exc:
            raise UsageError(f"--json: not valid JSON: {exc}") from None
    parsed_headers = _parse_headers(headers)
    check_queue_name(queue)  # before the root is created
    b = Broker(root, create=True if create else None)
    rows = [op_publish(b, queue, body, create=create, headers=parsed_headers, **settings) for body in bodies]
    render(rows, fmt, lambda rows: "\n".join(row["id"] for row in rows))


def consume_command(root: str | None, fmt: str, queue: str, count: int = 1, lease: float | None = None,
                    no_ack: bool = False) -> None:
    """``ddmq consume`` once its command line is parsed, by click or by :mod:`ddmq.entry`.

    Prints the messages claimed (acked unless ``no_ack``); Empty if there were none.
    """
    check_queue_name(queue)
    rows = op_consume(Broker(root), queue, n=count, lease=lease, ack=not no_ack)
    render(rows, fmt, plain_bodies)
    if not rows:
        raise Empty("")


# --------------------------------------------------------------------- output
def _is_ascii(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name == "ascii"
    except LookupError:
        return False


def echo(text: str, err: bool = False, nl: bool = True) -> None:
    """Write ``text`` to stdout (stderr if ``err``), flushed, whatever the stream's encoding.

    Unlike ``click.echo``, escape sequences are not stripped when the stream
    is not a terminal: message bodies are data, and ``ddmq consume q > file``
    must write them as they were published. As ``click.echo`` does, a stream
    whose encoding is ASCII (or unset) gets UTF-8, unencodable characters
    replaced, instead of an error half-way through the output.
    """
    stream = sys.stderr if err else sys.stdout
    if stream is None:  # no stream to write to, as under pythonw
        return
    if nl:
        text += "\n"
    buffer = getattr(stream, "buffer", None)
    if buffer is not None and _is_ascii(getattr(stream, "encoding", None) or "ascii"):
        stream.flush()
        buffer.write(text.encode("utf-8", "replace"))
        buffer.flush()
    else:
        stream.write(text)
        stream.flush()


def failed(exc: DdmqError | KeyboardInterrupt) -> int:
    """Say in one line on stderr why a command failed; return the exit code it ends with."""
    if isinstance(exc, KeyboardInterrupt):
        echo("ddmq: interrupted", err=True)
        return EXIT_INTERRUPTED
    if str(exc):
        echo(f"ddmq: {exc}", err=True)
    return exc.exit_code


def body_text(body: Any) -> str:
    return body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, sort_keys=True)


def render(data: Any, fmt: str, plain: Callable[[Any], str]) -> None:
    if fmt == "json":
        echo(json.dumps(data, ensure_ascii=False, sort_keys=True))
    elif fmt == "yaml":
        import yaml

        echo(yaml.safe_dump(data, allow_unicode=True, sort_keys=True, default_flow_style=False), nl=False)
    else:
        text = plain(data)
        if text:
            echo(text)


def plain_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return ""
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def plain_bodies(rows: list[dict[str, Any]]) -> str:
    return "\n".join(body_text(r["message"]) for r in rows)
