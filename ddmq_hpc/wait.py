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
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ddmq import Broker, DdmqError, Message
from ddmq.errors import UsageError
from ddmq.layout import check_queue_name

from .fields import as_text, fields_match, parse_fields
from .retry import is_transient

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 124


class WaitTimeout(DdmqError):
    """Fewer than the wanted messages arrived in time (exit code 124, like timeout(1))."""

    exit_code = EXIT_TIMEOUT


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived while waiting."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def matcher(match: str | None = None, regex: str | None = None,
            fields: dict[str, str] | None = None) -> Callable[[Message], bool]:
    """A predicate for the messages wanted: exact body, regex on the body, and/or JSON fields."""
    try:
        pattern = re.compile(regex) if regex is not None else None
    except re.error as exc:
        raise UsageError(f"--regex: {exc}") from None

    def wanted(msg: Message) -> bool:
        text = as_text(msg.message)
        return ((match is None or text == match)
                and (pattern is None or pattern.search(text) is not None)
                and (not fields or fields_match(msg.message, fields)))
    return wanted


def _blocked_signals() -> Any:
    """Hold SIGINT/SIGTERM back while a claim is being recorded, so none is lost half-way."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def _unblock(previous: Any) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def wait(queue: str, *, root: str | None = None, match: str | None = None, regex: str | None = None,
         fields: dict[str, str] | None = None, count: int = 1, timeout: float | None = None,
         peek: bool = False, interval: float = 1.0, max_interval: float = 30.0,
         create: bool = True, deliver: Callable[[list[Message]], None] | None = None) -> list[Message]:
    """Wait for ``count`` matching messages on ``queue`` and return them.

    Claimed messages are passed to ``deliver`` (if given) *before* they are
    acked; if ``deliver`` raises, they are released and the error propagates,
    so an event is never consumed without having been delivered. Raises
    WaitTimeout after ``timeout`` seconds, releasing any messages held.
    """
    if count < 1:
        raise UsageError("count must be at least 1")
    if not 0 < interval <= max_interval:
        raise UsageError("need 0 < interval <= max-interval")
    check_queue_name(queue)
    b = Broker(root, create=True if create else False)
    if create:
        b.create_queue(queue, exist_ok=True)
    wanted = matcher(match, regex, fields)
    seen: set[str] = set()

    def fresh(msg: Message) -> bool:
        return msg.id not in seen and wanted(msg)

    deadline = None if timeout is None else time.monotonic() + timeout
    held: list[Message] = []
    delay = interval
    try:
        while True:
            try:
                _poll(b, queue, fresh, count, held, seen, peek)
            except DdmqError as exc:
                if not is_transient(exc):
                    raise
            if len(held) >= count:
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise WaitTimeout(
                    f"timed out after {timeout:g} s with {len(held)} of {count} message(s) from {queue!r}"
                )
            pause = delay * random.uniform(0.9, 1.1)
            if deadline is not None:
                pause = min(pause, deadline - now)
            time.sleep(pause)
            delay = min(delay * 2, max_interval)
    except BaseException:
        if not peek:
            _release_all(b, held)
        raise
    _deliver_and_ack(b, held, deliver, peek)
    return held


def _deliver_and_ack(b: Broker, held: list[Message], deliver: Callable[[list[Message]], None] | None,
                     peek: bool) -> None:
    """Hand the messages over, then ack them, with SIGINT/SIGTERM held back throughout.

    A signal in the middle must neither leave a half-printed event whose
    message goes back to the queue (seen twice) nor strand delivered
    messages in work/. One that arrives meanwhile is taken as arriving after
    the wait finished: the work is done, so it is dropped.
    """
    previous = _blocked_signals()
    try:
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
    finally:
        try:
            _unblock(previous)
        except Interrupted:
            pass


def _poll(b: Broker, queue: str, fresh: Callable[[Message], bool], count: int,
          held: list[Message], seen: set[str], peek: bool) -> None:
    """One look at the queue: take what matches, up to ``count`` in all."""
    if peek:
        for msg in b.peek(queue, n=count - len(held), match=fresh):
            seen.add(msg.id)
            held.append(msg)
        return
    for msg in held:  # a long wait must not let the leases it holds expire
        if msg.lease_expires is not None and msg.lease_expires - time.time_ns() < msg.message_timeout * 5e8:
            b.extend(msg)
    previous = _blocked_signals()
    try:
        for msg in b.consume(queue, n=count - len(held), match=fresh):
            seen.add(msg.id)
            held.append(msg)
    finally:
        _unblock(previous)


def _release_all(b: Broker, held: list[Message]) -> None:
    for msg in held:
        try:
            b.release(msg)
        except DdmqError as exc:
            print(f"ddmq-wait: could not release message {msg.id}: {exc}", file=sys.stderr)


def render(messages: list[Message], fmt: str) -> str:
    """Bodies one per line, or (json) one JSON object per message per line."""
    if fmt == "json":
        import json

        return "".join(json.dumps(m.to_dict(), ensure_ascii=False, sort_keys=True) + "\n" for m in messages)
    return "".join(as_text(m.message) + "\n" for m in messages)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see all of it or nothing (tmp + rename)."""
    tmp = path.with_name(f".{path.name}.ddmq-wait.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ddmq-wait",
        description="Wait until matching messages are on QUEUE, print them and exit 0. By default each "
                    "message is claimed and acked once written out (one waiter gets each event); --peek "
                    "leaves messages for other waiters. Non-matching messages are never touched.",
        epilog="Exit codes: 0 got them; 1 error; 2 usage error; 124 --timeout passed (messages held so far "
               "are put back); 130/143 interrupted by SIGINT/SIGTERM (likewise). "
               "Root: --root, else $DDMQ_ROOT, else ~/.ddmq.",
    )
    p.add_argument("queue")
    p.add_argument("--match", metavar="TEXT", help="wait for a message whose body is exactly TEXT")
    p.add_argument("--regex", metavar="RE", help="wait for a message whose body matches RE (re.search)")
    p.add_argument("--field", action="append", default=[], metavar="KEY=VALUE",
                   help="wait for a JSON object body with this field (repeatable, all must match)")
    p.add_argument("--count", type=int, default=1, help="how many messages to wait for (default 1)")
    p.add_argument("--timeout", type=float, help="give up after SECONDS (exit 124)")
    p.add_argument("--output", type=Path, metavar="FILE", help="write the message(s) to FILE atomically")
    p.add_argument("--format", choices=("body", "json"), default="body",
                   help="print bodies (default) or whole messages as JSON lines")
    p.add_argument("--peek", action="store_true", help="do not claim: leave messages for others")
    p.add_argument("--interval", type=float, default=1.0, help="first poll interval in seconds (default 1)")
    p.add_argument("--max-interval", type=float, default=30.0,
                   help="poll interval grows to at most this (default 30)")
    p.add_argument("--root", help="ddmq root directory")
    p.add_argument("--no-create", dest="create", action="store_false",
                   help="fail if the root or queue does not exist (default: create them)")
    return p


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # parse_intermixed_args rejects "--", the only way to name a queue that starts with "-"
    args = parser().parse_args(argv) if "--" in argv else parser().parse_intermixed_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)

    def deliver(messages: list[Message]) -> None:
        text = render(messages, args.format)
        if args.output is not None:
            write_atomically(args.output, text)
        else:
            sys.stdout.write(text)
            sys.stdout.flush()

    try:
        wait(args.queue, root=args.root, match=args.match, regex=args.regex,
             fields=parse_fields(args.field), count=args.count, timeout=args.timeout, peek=args.peek,
             interval=args.interval, max_interval=args.max_interval, create=args.create, deliver=deliver)
    except Interrupted as exc:
        print(f"ddmq-wait: interrupted by {exc}; nothing was consumed", file=sys.stderr)
        sys.exit(128 + exc.signum)
    except DdmqError as exc:
        print(f"ddmq-wait: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except OSError as exc:
        print(f"ddmq-wait: cannot write output: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
