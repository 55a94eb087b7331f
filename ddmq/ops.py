"""The operations of the ``ddmq`` command and their output, without click.

Each operation function (``op_*``) takes plain arguments and returns plain
data; the ``ddmq`` subcommands and the ``json`` subcommand call the same
functions, so both routes behave identically. What is printed, and how, is
:mod:`ddmq.render`'s.

Output comes before the step it reports becomes final: ``consume`` acks a
message only once it is printed and flushed, ``publish`` makes its messages
visible only once their ids are. When stdout will not take the output (the
reader of a pipe went away, a full disk), what was not delivered is given back
or never published, and the command says so (:class:`OutputFailed`).
"""
from __future__ import annotations

import os
import sys

from .broker import Broker
from .console import EXIT_INTERRUPTED, Empty, os_reason, parse_pairs, say
from .errors import DdmqError, PartlyPublished, UsageError
from .layout import check_queue_name
from .message import MAX_MESSAGE_BYTES, loads_body
from .render import TRANSFER_ENCODING, OutputFailed, plain_message, render, write

TYPE_CHECKING = False  # typing is for annotations only: it slows every command's start-up
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Iterator

    from .inventory import Entry
    from .message import Message

FORMATS = ("plain", "json", "yaml")


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
    return [{"queue": q, **b.stats(q)} for q in names]


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


def op_peek(b: Broker, queue: str, n: int | None = None, state: str = "ready") -> list[dict[str, Any]]:
    """Up to ``n`` messages (default 1); dead letters are every file in dead/ (default all), each with why."""
    if state == "dead":
        return [entry_row(e) for e in b.entries(queue, "dead", n)]
    return [m.to_dict() for m in b.peek(queue, n=1 if n is None else n, state=state)]


def entry_row(e: Entry) -> dict[str, Any]:
    """A file of a queue as one flat row: its message's fields if readable, then what its name and state say."""
    row = e.to_dict()
    message = row.pop("message")
    return {"message": None, **(message or {}), **row}


def op_show(b: Broker, queue: str, message_id: str) -> dict[str, Any]:
    return entry_row(b.show(queue, message_id))


def _one_by_one(act: Callable[[str], object], names: list[str], key: str, done: str) -> list[dict[str, Any]]:
    """``act`` on each name in turn, a row for each: one that fails stops the rest, and says which."""
    result = []
    for name in names:
        act(name)
        result.append({key: name, done: True})
    return result


def op_release(b: Broker, queue: str, messages: str | list[str]) -> list[dict[str, Any]]:
    """Put leased messages back as they were, by id (an operator's) or receipt (the holder's)."""
    return _one_by_one(lambda m: b.release(m, queue=queue), split(messages, "message id"), "message", "released")


def op_requeue(b: Broker, queue: str, dead: bool = False, ids: list[str] | None = None) -> dict[str, Any]:
    if not dead:
        raise UsageError("requeue takes dead letters back (--dead); a leased message: ddmq release")
    requeued, skipped = b.requeue_dead(queue, ids)
    return {"queue": queue, "requeued": requeued, "skipped": skipped}


def op_settings(b: Broker, queue: str, values: dict[str, Any] | None = None,
                unset: list[str] | None = None) -> list[dict[str, Any]]:
    """The queue's effective settings and where each came from, after setting ``values`` and removing ``unset``."""
    from .settings import dump_value

    if values or unset:
        b.set_settings(queue, unset=unset or [], **(values or {}))
    root_file = f"{b.root}/ddmq.yaml"
    return [{"key": key, "value": dump_value(key, value),
             "source": "default" if source == "default" else "root" if source == root_file else "queue",
             "file": None if source == "default" else source}
            for key, (value, source) in b.settings_sources(queue).items()]


def op_ack(b: Broker, queue: str, receipts: str | list[str]) -> list[dict[str, Any]]:
    return _one_by_one(lambda r: b.ack(r, queue=queue), split(receipts, "receipt"), "receipt", "acked")


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
    "purge": op_purge, "clean": op_clean, "show": op_show, "release": op_release, "requeue": op_requeue,
    "settings": op_settings,
}


# ------------------------------------------------------------------ publish
def utf8(data: bytes | str, where: str) -> str:
    """``data`` as text; UsageError saying where it is not UTF-8 (a body is text: binary goes as --base64).

    A str is a command-line argument, whose undecodable bytes Python kept as
    lone surrogates.
    """
    try:
        return data.decode() if isinstance(data, bytes) else data.encode().decode()
    except UnicodeError as exc:
        at = exc.start if isinstance(exc, (UnicodeDecodeError, UnicodeEncodeError)) else 0
        raise UsageError(f"{where} is not UTF-8 (bad byte at offset {at}): "
                         "publish binary data with --base64 (and --file PATH)") from None


def read_stdin(what: str) -> str:
    """All of stdin as UTF-8 text, for ``what``; one line on stderr if it cannot be read, never a traceback."""
    if sys.stdin is None:  # started with stdin closed
        raise UsageError(f"no stdin to read {what} from")
    try:
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
    except OSError as exc:
        raise DdmqError(f"cannot read {what} from stdin: {os_reason(exc)}") from None
    return utf8(data, f"{what} on stdin")


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {os_reason(exc)}") from None


def _base64(text: str, where: str) -> str:
    """Base64 text as given to ``publish --base64`` (whitespace and line breaks allowed), made canonical."""
    import base64
    import binascii

    try:
        return base64.b64encode(base64.b64decode("".join(text.split()), validate=True)).decode("ascii")
    except (binascii.Error, ValueError):
        raise UsageError(f"{where} is not valid base64") from None


def publish_bodies(messages: Iterable[str], files: Iterable[str] = (), as_json: bool = False,
                   as_base64: bool = False) -> list[Any]:
    """The bodies ``ddmq publish`` was given: MESSAGE arguments, stdin ('-', or nothing at all) or ``--file``s.

    Text from stdin loses one trailing newline, as ``$(...)`` strips it; a
    file's content is published exactly. With ``as_base64`` a file's bytes
    are encoded, and a MESSAGE (or stdin) must already be base64.
    """
    messages, files = list(messages), list(files)
    if messages and files:
        raise UsageError("give MESSAGE arguments or --file, not both")
    if files:
        if as_base64:
            import base64

            return [base64.b64encode(_read_file(path)).decode("ascii") for path in files]
        return [utf8(_read_file(path), path) for path in files]
    bodies = []
    for number, body in enumerate(messages or ["-"], 1):
        where = "the message on stdin" if body == "-" else f"MESSAGE {number}"
        if body == "-":
            text = read_stdin("the message")
            body = text[:-1] if text.endswith("\n") else text
        body = utf8(body, where)
        bodies.append(_base64(body, where) if as_base64 else loads_body(body, "--json") if as_json else body)
    return bodies


def stdin_lines() -> Iterator[tuple[int, bytes, bool]]:
    """Each line of stdin: (its number, its bytes without the newline, whether no more input is waiting).

    Read a block at a time, so memory is bounded by a block and one line (at
    most a message's size), however long the input. "Nothing waiting" lets
    a publisher fed by a slow pipe (``tail -f``) publish what it has instead
    of holding it until a whole batch arrived.
    """
    import select

    if sys.stdin is None:
        raise UsageError("no stdin to read the messages from")
    fd = sys.stdin.fileno()
    pending = bytearray()
    number = 0
    while True:
        try:
            block = os.read(fd, 1 << 16)
        except OSError as exc:
            raise DdmqError(f"cannot read the messages from stdin: {os_reason(exc)}") from None
        if not block:
            if pending:
                yield number + 1, bytes(pending), True
            return
        pending += block
        cut = pending.rfind(b"\n")
        if cut < 0:
            if len(pending) > MAX_MESSAGE_BYTES:
                raise UsageError(f"line {number + 1} of stdin is longer than a message may be "
                                 f"({MAX_MESSAGE_BYTES} bytes)")
            continue
        lines = bytes(pending[:cut]).split(b"\n")
        del pending[:cut + 1]
        for i, line in enumerate(lines, 1):
            number += 1
            yield number, line, i == len(lines) and not select.select([fd], [], [], 0)[0]


def line_batches(as_json: bool, as_base64: bool, size: int) -> Iterator[list[tuple[int, Any]]]:
    """stdin's non-empty lines as bodies with their line numbers, at most ``size`` a batch.

    A batch ends at ``size`` lines, at the end of the input, or when no more
    input is waiting. An empty line is no message (a trailing blank line in a
    file must not publish an empty body); a line is checked (UTF-8, --json,
    --base64) when it is read, so a bad one stops before its batch publishes.
    """
    batch: list[tuple[int, Any]] = []
    for number, line, idle in stdin_lines():
        if line:
            where = f"line {number} of stdin"
            body = utf8(line, where)
            batch.append((number, _base64(body, where) if as_base64 else loads_body(body, "--json") if as_json
                          else body))
        if batch and (len(batch) >= size or idle):
            yield batch
            batch = []
    if batch:
        yield batch


def publish_command(root: str | None, fmt: str, queue: str, messages: Iterable[str], as_json: bool = False,
                    headers: Iterable[str] = (), create: bool = False, files: Iterable[str] = (),
                    as_base64: bool = False, lines: bool = False, batch: int = 0,
                    **settings: Any) -> None:
    """``ddmq publish`` once its command line is parsed.

    ``messages`` are the MESSAGE arguments ('-', or none at all, reads one
    from stdin), ``headers`` the ``KEY=VALUE`` strings; they are published
    as one batch (one durability barrier). With ``lines`` every non-empty
    line of stdin is a message, published ``batch`` at a time (``--batch``,
    which click checks is at least 1). Prints the
    ids of a batch before any of its messages becomes visible: if they
    cannot be printed, that batch is not published, so a script that retries
    does not publish twice; an error after a batch was published says how
    many messages were, from which input lines, and where to resume.
    """
    if lines and (list(messages) or list(files)):
        raise UsageError("--lines reads the messages from stdin: give no MESSAGE and no --file")
    if as_json and as_base64:
        raise UsageError("--json and --base64 cannot be combined: a binary body is base64 text")
    bodies = [] if lines else publish_bodies(messages, files, as_json, as_base64)
    parsed_headers = parse_pairs(headers, "header")
    if as_base64:
        parsed_headers[TRANSFER_ENCODING] = "base64"
    check_queue_name(queue)  # before the root is created
    published, last_line = 0, 0  # in earlier batches (--lines)

    def progress() -> str:
        if not published:
            return "nothing was published"
        return (f"{published} message(s) were published, from input lines 1-{last_line}: "
                f"resume with the lines after {last_line} (tail -n +{last_line + 1})")

    def show(ready: list[Message]) -> None:
        rows = [{"queue": queue, "id": msg.id, "priority": msg.priority} for msg in ready]
        try:
            render(rows, fmt, lambda rows: "\n".join(row["id"] for row in rows))
        except OutputFailed as exc:
            raise exc.saying(progress()) from None

    b = Broker(root, create=True if create else None)

    def publish(bodies: list[Any]) -> None:
        b.publish_many(queue, bodies, create=create, headers=parsed_headers or None, before_visible=show, **settings)

    if not lines:
        publish(bodies)
        return
    import signal

    # Ctrl-C (or SIGTERM) between two renames of a batch would leave the count
    # of what was published unknown, and a retry from the line the error names
    # would duplicate messages: the signals wait while a batch goes out.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    try:
        for numbered in line_batches(as_json, as_base64, batch):
            signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
            try:
                publish([body for _, body in numbered])
                published += len(numbered)
                last_line = numbered[-1][0]
            except PartlyPublished as exc:
                if exc.published:
                    last_line = numbered[exc.published - 1][0]
                published += exc.published
                raise
            finally:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, stop_signals)
    except OutputFailed:
        raise
    except DdmqError as exc:
        if published:
            exc.args = (f"{exc}; in all {progress()}",)
        raise
    except KeyboardInterrupt:
        if not published:
            raise
        interrupted = DdmqError(f"interrupted; in all {progress()}")
        interrupted.exit_code = EXIT_INTERRUPTED
        raise interrupted from None


def consume_command(root: str | None, fmt: str, queue: str, count: int = 1, lease: float | None = None,
                    no_ack: bool = False, end: str = "\n", as_base64: bool = False) -> None:
    """``ddmq consume`` (and ``ddmq json`` consume) once its arguments are parsed.

    Output before ack, and only what was delivered is acked: the messages are
    claimed without acking, then each is acked (unless ``no_ack``) once it is
    printed and flushed -- plain output a line at a time, json/yaml the one
    document for all. If output fails, every claimed message not yet
    delivered is given back. Empty if there was nothing to claim. Plain
    output ends each message with ``end``; with ``no_ack`` it starts with
    the receipt needed to ack it, and a tab.
    """
    check_queue_name(queue)
    b = Broker(root)
    claimed = b.consume(queue, n=count, lease=lease, ack=False)
    deliver(b, claimed, fmt, ack=not no_ack, end=end, as_base64=as_base64)
    if not claimed:
        raise Empty("")


def deliver(b: Broker, claimed: list[Message], fmt: str, ack: bool, end: str = "\n",
            as_base64: bool = False) -> None:
    """Print ``claimed`` and ack (if ``ack``) what got out; give back the rest on any failure."""
    delivered = 0
    try:
        if fmt == "plain":
            for msg in claimed:  # one line per message, an empty body too
                row = {"message": msg.message, "headers": msg.headers, "receipt": msg.receipt}
                write(plain_message(row, as_base64, receipt=not ack) + end, nl=False)
                delivered += 1
                if ack:
                    b.ack(msg)
        else:
            rows = [msg.to_dict() for msg in claimed]
            if ack:  # spent once printed: shown as an acked message always was
                for row in rows:
                    row["receipt"] = None
            render(rows, fmt, lambda rows: "")  # json or yaml: no plain text
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


# ------------------------------------------------------------------ peek
def peek_command(root: str | None, fmt: str, queue: str, count: int | None, state: str, end: str = "\n",
                 as_base64: bool = False) -> None:
    """``ddmq peek``: messages (or, for dead letters, a table of why each died); Empty if none.

    Files in ready/ or work/ that are not valid messages are not shown, but
    not hidden either: their count goes to stderr, since "empty" would be a lie.
    """
    from .render import dead_table

    check_queue_name(queue)
    b = Broker(root)
    rows = op_peek(b, queue, count, state)
    if state == "dead":
        render(rows, fmt, lambda rows: dead_table(rows, end), end)
    else:
        render(rows, fmt, lambda rows: end.join(plain_message(r, as_base64) for r in rows), end)
        if len(rows) < (count or 1):
            invalid = sum(1 for e in b.entries(queue, state) if e.problem is not None)
            if invalid:
                fate = "a consumer or `ddmq clean`" if state == "ready" else "`ddmq clean`"
                say("ddmq", f"{invalid} file(s) in {state}/ of queue {queue!r} are not valid messages: {fate} "
                    f"will dead-letter them (then: ddmq peek {queue} --state dead)")
    if not rows:
        raise Empty("")
