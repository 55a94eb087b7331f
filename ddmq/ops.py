"""The operations of the ``ddmq`` command and their output, without click.

Each operation function (``op_*``) takes plain arguments and returns plain
data; the ``ddmq`` subcommands and the ``json`` subcommand call the same
functions, so both routes behave identically. So does the click-free fast
path for ``ddmq publish`` and ``ddmq consume`` in :mod:`ddmq.entry`: importing
click takes longer than a whole publish, so nothing here may import it, and
output goes through :func:`echo` on both routes.

Output comes before the step it reports becomes final: ``consume`` acks a
message only once it is printed and flushed, ``publish`` makes its messages
visible only once their ids are. When stdout will not take the output (the
reader of a pipe went away, a full disk), what was not delivered is given back
or never published, and the command says so (:class:`OutputFailed`).
"""
from __future__ import annotations

import codecs
import errno
import json
import os
import sys

from .broker import Broker
from .errors import _STORAGE_REASONS, DdmqError, UsageError
from .layout import check_queue_name
from .message import loads_body

TYPE_CHECKING = False  # typing is for annotations only: it slows every command's start-up
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable

    from .message import Message

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_EMPTY, EXIT_NOT_FOUND, EXIT_LEASE_LOST = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a process that SIGPIPE killed
FORMATS = ("plain", "json", "yaml")


class Empty(DdmqError):
    """Nothing to consume: not a failure, but scripts need to tell it apart."""

    exit_code = EXIT_EMPTY


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
        if isinstance(cause, OSError):
            reason = _STORAGE_REASONS.get(cause.errno or 0) or cause.strerror or str(cause)
        else:
            reason = str(cause)
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
def read_stdin(what: str) -> str:
    """All of stdin, for ``what``; one line on stderr if it cannot be read, never a traceback."""
    if sys.stdin is None:  # started with stdin closed
        raise UsageError(f"no stdin to read {what} from")
    try:
        return sys.stdin.read()
    except UnicodeError as exc:
        raise UsageError(f"cannot read {what} from stdin: {exc}") from None
    except OSError as exc:
        reason = _STORAGE_REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
        raise DdmqError(f"cannot read {what} from stdin: {reason}") from None


def _stdin_message() -> str:
    """A message from stdin, less one trailing newline (as ``$(...)`` in the shell strips it)."""
    text = read_stdin("the message")
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
    from stdin), ``headers`` the ``KEY=VALUE`` strings. Prints the new ids
    before any message becomes visible: if they cannot be printed, nothing is
    published, so a script that retries does not publish twice.
    """
    bodies = [_stdin_message() if body == "-" else body for body in list(messages) or ["-"]]
    if as_json:
        bodies = [loads_body(body, "--json") for body in bodies]
    parsed_headers = _parse_headers(headers)
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

    All of it is written or OSError is raised: an unbuffered stream
    (``PYTHONUNBUFFERED``, ``python -u``) is a single write(2) per call, and
    Python drops what a partial write, as into a pipe whose reader just left,
    did not take; here the rest is written again, and fails as it should.
    """
    stream = sys.stderr if err else sys.stdout
    if stream is None:  # no stream to write to, as under pythonw
        return
    if nl:
        text += "\n"
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(text)
        stream.flush()
        return
    encoding = getattr(stream, "encoding", None) or "ascii"
    if _is_ascii(encoding):
        data = text.encode("utf-8", "replace")
    else:
        data = text.encode(encoding, getattr(stream, "errors", None) or "strict")
    stream.flush()  # what was written to the text layer goes first
    view = memoryview(data)
    while view:
        written = buffer.write(view)
        if written is None:  # a non-blocking stream that would block
            raise BlockingIOError(errno.EAGAIN, "output would block")
        view = view[written:]
    buffer.flush()


def silence(*streams: Any) -> None:
    """Point the descriptors of ``streams`` at /dev/null.

    After a write to one failed, what is left in its buffer would fail again
    when Python flushes it at exit, with a traceback-like complaint on stderr
    and exit status 120; this way it goes nowhere. A stream without a
    descriptor of its own (as under click's CliRunner) is left alone.
    """
    for stream in streams:
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)


def broken_pipe() -> int:
    """The reader of stdout or stderr went away: silence both, return exit code 141."""
    silence(sys.stdout, sys.stderr)
    return EXIT_BROKEN_PIPE


def exit_code_of(run: Callable[[], object]) -> int | None:
    """Run a command; None if it succeeded, else the exit code it ends with, its failure said.

    A failure is one line on stderr (:func:`failed`); stdout refusing the
    output is one of them (:class:`OutputFailed`: 141 quietly for a broken
    pipe). Any other broken pipe -- there should be none -- ends the same way,
    never with a traceback. The one rule for the click commands and the
    click-free fast path.
    """
    try:
        try:
            run()
        except (DdmqError, KeyboardInterrupt) as exc:
            return failed(exc)
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        return broken_pipe()
    return None


def failed(exc: DdmqError | KeyboardInterrupt) -> int:
    """Say in one line on stderr why a command failed; return the exit code it ends with.

    If stderr cannot take that line either, the exit code says it all: 141 if
    stderr is a broken pipe (as for stdout), the failure's own code otherwise.
    """
    if isinstance(exc, OutputFailed) and exc.exit_code == EXIT_BROKEN_PIPE:
        return broken_pipe()
    if isinstance(exc, KeyboardInterrupt):
        text, code = "ddmq: interrupted", EXIT_INTERRUPTED
    else:
        text, code = (f"ddmq: {exc}" if str(exc) else ""), exc.exit_code
    if text:
        try:
            echo(text, err=True)
        except OSError as err:
            if err.errno == errno.EPIPE:
                return broken_pipe()
            silence(sys.stderr)
    return code


def body_text(body: Any) -> str:
    return body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, sort_keys=True)


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
