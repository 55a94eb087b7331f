"""``ddmq-wait QUEUE``: block until matching messages arrive, print them, exit 0.

Waiting jobs are many and patient, and the metadata server they poll is
shared by the whole cluster, so a waiter is polite: it polls with exponential
backoff and jitter, each poll is one directory listing, and a non-matching
message is read once (payloads are immutable). It never relies on inotify,
which does not see other nodes' writes.

By default each matching message is claimed and, once all ``--count`` are in
hand and written out, acked: one waiter gets each event. If the wait is
interrupted or times out first, the messages held so far are released
unchanged, so nothing is left claimed-but-unacked. ``--peek`` only looks.

SIGINT and SIGTERM (scancel) always stop a waiter, even one stuck on a
filesystem that does not answer: a claim, and a delivery with its acks, run
in a worker thread and are let finish (for GRACE_SECONDS at most) before the
signal is acted on, rather than being shielded by blocking the signals, which
would leave a process stuck in a system call unkillable but by SIGKILL.
"""
from __future__ import annotations

import errno
import functools
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Callable

import click

from ddmq import (Broker, DdmqError, Message, NotARoot, QueueNotFound, RootNotFound, UsageError, check_queue_name,
                  console, resolve_root)
from ddmq.console import body_text

from . import options
from .fields import fields_match
from .retry import backoff, is_transient

PROG = "ddmq-wait"
EXIT_TIMEOUT = 124  # as timeout(1)
# How long a claim or a delivery under way when SIGINT/SIGTERM arrives may go
# on before the waiter stops anyway (it takes milliseconds unless the
# filesystem has stopped answering).
GRACE_SECONDS = 2.0
# How often the main thread looks at a worker while waiting for it.
_WATCH_SECONDS = 0.1
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class WaitTimeout(DdmqError):
    """Fewer than the wanted messages arrived in time (exit code 124, like timeout(1))."""

    exit_code = EXIT_TIMEOUT


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived while waiting."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Abandoned(Interrupted):
    """A signal arrived while a claim or a delivery was under way, and it did not finish in time.

    What it had claimed stays leased until the lease expires; then the next
    consumer's clean requeues it. ``ddmq-wait`` exits at once (os._exit: the
    stuck thread may hold a lock that a normal exit would wait for).
    """

    def __init__(self, signum: int, what: str):
        super().__init__(signum)
        self.what = what

    def __str__(self) -> str:
        return (f"interrupted by {signal.Signals(self.signum).name} while {self.what}, which did not finish "
                f"within {GRACE_SECONDS:g} s (filesystem not answering?); anything it had claimed stays "
                "leased until its lease expires")


def matcher(match: str | None = None, regex: str | None = None,
            fields: dict[str, str] | None = None) -> Callable[[Message], bool]:
    """A predicate for the messages wanted: exact body, regex on the body, and/or JSON fields."""
    try:
        pattern = re.compile(regex) if regex is not None else None
    except re.error as exc:
        raise UsageError(f"--regex: {exc}") from None

    def wanted(msg: Message) -> bool:
        text = body_text(msg.message)
        return ((match is None or text == match)
                and (pattern is None or pattern.search(text) is not None)
                and (not fields or fields_match(msg.message, fields)))
    return wanted


def _shielded(action: Callable[[], Any], what: str) -> tuple[Any, BaseException | None]:
    """Run ``action`` to its end although SIGINT/SIGTERM may arrive meanwhile, unless it hangs.

    A claim (renaming a message into work/, reading it) or a delivery and its
    acks must not be cut in half by the exception a signal raises: a message
    renamed but not yet in ``held`` could not be given back. Blocking the
    signals around the step would do that, but a blocked signal cannot
    interrupt a system call that never returns (a FIFO planted as a settings
    file, a hung NFS server), and scancel's SIGTERM would be ignored. So the
    step runs in a worker thread (signals blocked there, so they reach this
    one) while this thread waits with the signals deliverable. A signal
    (Interrupted, or KeyboardInterrupt when the caller installed no handler)
    is held until the step has finished and then returned with its result;
    if the step has not finished GRACE_SECONDS later, or a second signal
    comes, Abandoned is raised and the worker is left to itself.

    If the step raised, that is re-raised, unless a signal arrived: then the
    signal's exception is raised instead, so that it is never lost.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = action()
        except BaseException as exc:  # handed over to the waiting thread
            outcome["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=run, name=f"ddmq-wait: {what}", daemon=True)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)  # the worker inherits the mask
    try:
        worker.start()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    previous: set[int | signal.Signals] | None = mask
    pending: BaseException | None = None
    deadline: float | None = None
    while True:
        try:
            if previous is not None:
                mask, previous = previous, None
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # a signal already pending is raised here
            pause = _WATCH_SECONDS if deadline is None else max(0.0, min(_WATCH_SECONDS,
                                                                         deadline - time.monotonic()))
            if done.wait(pause):
                # Held back while the outcome is taken in: a signal now is one after the step.
                previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise Abandoned(_signum(pending), what) from None
        except (Interrupted, KeyboardInterrupt) as exc:
            if isinstance(exc, Abandoned):
                raise
            if pending is not None:
                raise Abandoned(_signum(exc), what) from None
            pending, deadline = exc, time.monotonic() + GRACE_SECONDS
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    except (Interrupted, KeyboardInterrupt) as exc:
        pending = pending or exc
    if "error" in outcome:
        if pending is not None:
            raise pending
        raise outcome["error"]
    return outcome.get("value"), pending


def _signum(exc: BaseException | None) -> int:
    return exc.signum if isinstance(exc, Interrupted) else signal.SIGINT


def wait(queue: str, *, root: str | None = None, match: str | None = None, regex: str | None = None,
         fields: dict[str, str] | None = None, count: int = 1, timeout: float | None = None,
         peek: bool = False, interval: float = 1.0, max_interval: float = 30.0,
         create: bool | None = None, deliver: Callable[[list[Message]], None] | None = None,
         missing: Callable[[str], object] | None = None, reconcile_grace: float | None = None,
         reconcile_interval: float = options.RECONCILE_INTERVAL) -> list[Message]:
    """Wait for ``count`` matching messages on ``queue`` and return them.

    Claimed messages are passed to ``deliver`` (if given) *before* they are
    acked; if ``deliver`` raises, they are released and the error propagates,
    so an event is never consumed without having been delivered. Raises
    WaitTimeout after ``timeout`` seconds, releasing any messages held.

    A missing root or queue is the queue creation rule of the README: by
    default (``create`` None) the wait goes on until it appears, since the
    job that will publish to it may not have run yet, and ``missing`` is
    called once with what is missing, so that a mistyped name does not wait
    in silence; ``create=True`` creates them now, ``create=False`` raises
    NotFound.

    With ``reconcile_grace`` (seconds), a poll that comes up short also runs
    the reconciler on the queue (:func:`ddmq_hpc.reconcile.reconcile`, at most
    once per ``reconcile_interval`` whoever runs it): a job killed too hard to
    publish its own end gets one from the scheduler, and the wait ends instead
    of running into its timeout. A scheduler that cannot be asked is logged
    (a warning on the ``ddmq`` logger, once) and the wait goes on.

    Claims and ``deliver`` run in a worker thread (see _shielded), so that
    SIGINT/SIGTERM can stop the wait even when the filesystem hangs.
    Numbers are checked as ``ddmq-wait`` checks its options (UsageError).
    """
    options.check_wait_numbers(count, timeout, interval, max_interval)
    check_queue_name(queue)
    b: Broker | None = None
    if create is not None:
        b = Broker(root, create=create)
        if create:
            b.create_queue(queue, exist_ok=True)
    absent: str | None = None  # why the last poll found nothing to look at: "queue 'q' does not exist{}..."
    told = False
    wanted = matcher(match, regex, fields)
    seen: set[str] = set()

    def fresh(msg: Message) -> bool:
        return msg.id not in seen and wanted(msg)

    deadline = None if timeout is None else time.monotonic() + timeout
    failures: set[str] = set()  # reconciler errors already logged
    held: list[Message] = []
    pauses = backoff(interval, max_interval)
    try:
        while True:
            try:
                if b is None:  # the root did not exist at the last look
                    b = Broker(root, create=False)
                broker = b
                if peek:
                    _peek(broker, queue, fresh, count, held, seen)
                else:  # a claim is let finish before a signal is acted on
                    _, signalled = _shielded(functools.partial(_claim, broker, queue, fresh, count, held, seen),
                                             f"claiming messages from {queue!r}")
                    if signalled is not None:
                        raise signalled
                absent = None
            except (QueueNotFound, RootNotFound, NotARoot) as exc:
                if create is not None:
                    raise
                absent = absence(exc, queue, root)
                if not told and missing is not None:
                    missing(absent.format(" (yet)"))
                told = True
            except DdmqError as exc:
                if not is_transient(exc):
                    raise
            if len(held) >= count:
                break
            if reconcile_grace is not None and absent is None and _reconciled(b, queue, root, reconcile_grace,
                                                                              reconcile_interval, failures):
                continue  # an end was just published: look again at once
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if absent is not None:
                    raise WaitTimeout(f"timed out after {timeout:g} s: {absent.format('')}")
                raise WaitTimeout(
                    f"timed out after {timeout:g} s with {len(held)} of {count} message(s) from {queue!r}"
                )
            pause = next(pauses)
            if deadline is not None:
                pause = min(pause, deadline - now)
            time.sleep(pause)
    except Abandoned:
        raise  # the filesystem is stuck: giving back what is held would hang too; leases expire
    except BaseException:
        if not peek and b is not None:
            _release_all(b, held)
        raise
    assert b is not None  # messages were found through it
    _deliver_and_ack(b, held, deliver, peek)
    return held


def absence(exc: QueueNotFound | RootNotFound | NotARoot, queue: str, root: str | None) -> str:
    """What is missing that a waiter waits for, with one ``{}`` for " (yet)" or "".

    Said once when the wait starts and again if it times out, by ``ddmq-wait``
    and by the Cylc xtrigger, in the same words.
    """
    path = resolve_root(root)[0]
    if isinstance(exc, RootNotFound):
        return f"ddmq root {path} does not exist{{}}"
    if isinstance(exc, NotARoot):  # as a root is while it is being made: a directory, no marker
        return f"{path} is not a ddmq root{{}}"
    return f"queue {queue!r} does not exist{{}} in {path}"


def _reconciled(b: Broker | None, queue: str, root: str | None, grace: float, interval: float,
                failures: set[str]) -> bool:
    """Run the reconciler for ``queue`` if it is due; whether it published an end. Errors are logged once each."""
    from ddmq.log import logger

    from .reconcile import reconcile

    try:
        return bool(reconcile(queue, root=root, grace=grace, min_interval=interval, broker=b))
    except DdmqError as exc:
        if str(exc) not in failures:
            failures.add(str(exc))
            logger().warning("cannot reconcile queue %s (waiting on): %s", queue, exc)
        return False


def _deliver_and_ack(b: Broker, held: list[Message], deliver: Callable[[list[Message]], None] | None,
                     peek: bool) -> None:
    """Hand the messages over, then ack them, as one step that SIGINT/SIGTERM do not cut in half.

    A signal in the middle must neither leave a half-printed event whose
    message goes back to the queue (seen twice) nor strand delivered
    messages in work/. One that arrives meanwhile is taken as arriving after
    the wait finished: the work is done, so it is dropped. If the step hangs
    (output on a filesystem that stopped answering), Abandoned is raised
    GRACE_SECONDS after the signal.
    """
    finished: list[bool] = []

    def step() -> None:
        try:
            if deliver is not None:
                deliver(held)
        except BaseException:
            if not peek:
                _release_all(b, held)
            raise
        if not peek:
            for msg in held:
                b.ack(msg)
        finished.append(True)
    try:
        _shielded(step, "delivering messages")
    except (Interrupted, KeyboardInterrupt):
        if not finished:
            raise


def _peek(b: Broker, queue: str, fresh: Callable[[Message], bool], count: int,
          held: list[Message], seen: set[str]) -> None:
    """One look at the queue, claiming nothing: what matches joins ``held``."""
    for msg in b.peek(queue, n=count - len(held), match=fresh):
        seen.add(msg.id)
        held.append(msg)


def _claim(b: Broker, queue: str, fresh: Callable[[Message], bool], count: int,
           held: list[Message], seen: set[str]) -> None:
    """One look at the queue: claim what matches, up to ``count`` in all (runs in a worker thread)."""
    for msg in held:  # a long wait must not let the leases it holds expire
        if msg.lease_expires is not None and msg.lease_expires - time.time_ns() < msg.message_timeout * 5e8:
            b.extend(msg)
    for msg in b.consume(queue, n=count - len(held), match=fresh):
        seen.add(msg.id)
        held.append(msg)


def _release_all(b: Broker, held: list[Message]) -> None:
    for msg in list(held):
        try:
            b.release(msg)
        except DdmqError as exc:
            console.say(PROG, f"could not release message {msg.id}: {exc}")


def render(messages: list[Message], fmt: str, end: bytes = b"\n") -> bytes:
    """Bodies (plain), or (json) one JSON object per message, each followed by ``end``, as UTF-8.

    ``end`` is a newline, or NUL for ``--null``: a text body often holds
    newlines and hardly ever a NUL (JSON lines escape both, so ``--format
    json`` output is never ambiguous).

    Never fails on what a consumer can be handed: bodies nested deeper than
    MAX_DEPTH are dead-lettered by the core at claim (and skipped by peek),
    and a lone surrogate (publish refuses them, a planted payload may hold
    one) is passed on as ``ddmq-dispatch`` passes it to a handler (body
    format, ``surrogatepass``) or escaped as ``\\udXXX`` (JSON, so the line
    stays valid UTF-8 and valid JSON).
    """
    if fmt == "json":
        import json

        lines = []
        for m in messages:
            data = m.to_dict()
            try:
                line = json.dumps(data, ensure_ascii=False, sort_keys=True).encode("utf-8")
            except UnicodeEncodeError:
                line = json.dumps(data, ensure_ascii=True, sort_keys=True).encode("ascii")
            lines.append(line + end)
        return b"".join(lines)
    return b"".join(body_text(m.message).encode("utf-8", "surrogatepass") + end for m in messages)


def _token() -> str:
    """The random part of a temporary file's name (os.urandom: no import of secrets or random)."""
    return os.urandom(8).hex()


# Exclusive: never an existing file, never through a symlink, not inherited by children.
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_atomically(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing (temporary file + rename).

    The output often goes to a directory shared with a group, whose members
    could plant a symlink at a predictable temporary name and have us
    overwrite any file we can write. So the temporary file beside the target
    has a random name and is created exclusively, without following
    symlinks (a taken name is passed over for another); it is written,
    fsynced, closed and renamed over ``path``. On any failure it is removed.
    ``ddmq-wait --output`` and, through it, ``ddmq_hpc.snakemake.wait_for``
    write their output here.
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    target = os.fspath(path)
    directory, name = os.path.split(target)
    for _ in range(100):
        tmp = os.path.join(directory, f".{name[:200]}.{_token()}.ddmq-wait")
        try:
            fd = os.open(tmp, _TEMP_FLAGS, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary file name", directory or ".")
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _write_stdout(data: bytes) -> None:
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # replaced by a text-only stream
        sys.stdout.write(data.decode("utf-8", "replace"))
    else:
        sys.stdout.flush()
        buffer.write(data)
        buffer.flush()
    sys.stdout.flush()


class _Format(click.Choice):
    """``--format plain|json``, as ``ddmq`` names them; ``body``, this command's name for plain
    until 1.0, is still taken (job scripts and Snakefiles use it) but no longer shown."""

    def __init__(self) -> None:
        super().__init__(("plain", "json"))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return "plain" if value == "body" else super().convert(value, param, ctx)


@click.command(
    name=PROG, cls=console.Command, context_settings=console.CONTEXT,
    epilog="Seconds are at most 1e9. A missing queue (or root) is waited for, said once on stderr: "
           "the job that publishes to it may not have started.\n\n" + console.exit_codes_help({
               console.EXIT_OK: "got them",
               console.EXIT_ERROR: "failure (storage error, output that could not be written)",
               console.EXIT_USAGE: "usage error (bad option, invalid queue name)",
               console.EXIT_NOT_FOUND: "root or queue not found (--no-create)",
               EXIT_TIMEOUT: "--timeout passed (messages held so far are put back)",
               console.EXIT_INTERRUPTED: "interrupted by SIGINT (likewise); 143: by SIGTERM",
               console.EXIT_BROKEN_PIPE: "the reader of the output went away (broken pipe)",
           }),
)
@click.argument("queue")
@click.option("--match", metavar="TEXT", help="Wait for a message whose body is exactly TEXT.")
@click.option("--regex", metavar="RE", help="Wait for a message whose body matches RE (re.search).")
@click.option("--field", "fields", multiple=True, metavar="KEY=VALUE",
              help="Wait for a JSON object body with this field (repeatable, all must match).")
@click.option("--count", type=options.count(), default=1,
              help=f"How many messages to wait for (default 1, at most {options.MAX_COUNT}).")
@click.option("--timeout", type=options.seconds(positive=False), metavar="SECONDS",
              help="Give up after SECONDS (exit 124; 0: look once).")
@click.option("--output", metavar="FILE", help="Write the message(s) to FILE atomically.")
@click.option("-f", "--format", "fmt", type=_Format(), default="plain",
              help="plain: the bodies, one per line (default); json: whole messages, one JSON object "
                   "per line.")
@click.option("-0", "--null", is_flag=True,
              help="End each message with a NUL byte instead of a newline (bodies may hold newlines; "
                   "for xargs -0).")
@click.option("--peek", is_flag=True, help="Do not claim: leave messages for others.")
@click.option("--interval", type=options.Number(low=options.MIN_INTERVAL), default=1.0,
              help="First poll interval in seconds (default 1).")
@click.option("--max-interval", type=options.Number(low=options.MIN_INTERVAL), default=30.0,
              help="Poll interval grows to at most this (default 30).")
@options.reconcile_options("While waiting")
@console.root_option()
@click.option("--create/--no-create", default=None,
              help="Create a missing root and queue now, or fail at once (exit 4) if either is missing "
                   "(default: wait for them to appear, saying so once on stderr).")
@console.common_options(PROG)
def command(queue: str, match: str | None, regex: str | None, fields: tuple[str, ...], count: int,
            timeout: float | None, output: str | None, fmt: str, null: bool, peek: bool, interval: float,
            max_interval: float, reconcile: bool, reconcile_grace: float, reconcile_interval: float,
            root: str | None, create: bool | None) -> None:
    """Wait until matching messages are on QUEUE, print them and exit 0.

    By default each message is claimed and acked once written out (one
    waiter gets each event); --peek leaves messages for other waiters.
    Non-matching messages are never touched.
    """
    where = "stdout" if output is None else output

    def deliver(messages: list[Message]) -> None:
        data = render(messages, fmt, b"\0" if null else b"\n")
        if output is not None:
            write_atomically(output, data)
        else:
            _write_stdout(data)

    try:
        signal.signal(signal.SIGTERM, _raise_interrupted)
        signal.signal(signal.SIGINT, _raise_interrupted)
        wait(queue, root=root, match=match, regex=regex, fields=console.parse_pairs(fields, "field"),
             count=count, timeout=timeout, peek=peek, interval=interval, max_interval=max_interval,
             create=create, deliver=deliver,
             missing=lambda what: console.say(PROG, f"{what}: waiting for it"),
             reconcile_grace=reconcile_grace if reconcile else None, reconcile_interval=reconcile_interval)
    except Abandoned as exc:
        # A worker thread is stuck in the filesystem: leave without waiting for it.
        _exit_now(f"{PROG}: {exc}", 128 + exc.signum)
    except Interrupted as exc:
        raise click.exceptions.Exit(console.say(PROG, f"interrupted by {exc}; nothing was consumed")
                                    or 128 + exc.signum) from None
    except DdmqError:
        raise  # one line and its exit code, as for every ddmq command
    except OSError as exc:
        raise click.exceptions.Exit(console.say(PROG, f"cannot write to {where}: {exc.strerror or exc}; "
                                                      "nothing was consumed") or console.EXIT_ERROR) from None
    except Exception as exc:  # a bug, or something unforeseen: still one line, messages already released
        raise click.exceptions.Exit(console.say(PROG, f"{type(exc).__name__}: {exc}; nothing was consumed")
                                    or console.EXIT_ERROR) from None


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> None:
    """The ``ddmq-wait`` console script: every error is one line on stderr, never a traceback."""
    code = console.run(command, argv)
    if code:
        sys.exit(code)


def _exit_now(line: str, code: int) -> None:
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    finally:
        os._exit(code)
