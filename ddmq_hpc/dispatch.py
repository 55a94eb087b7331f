"""``ddmq-dispatch QUEUE --handler CMD``: run a command once per queued request, from cron.

A cluster login node often allows cron but no daemons. Run from cron every
minute, this turns a queue into a service: each run claims up to
``--max-messages`` requests for at most ``--max-seconds`` and runs the handler
once per request, acking on success and nacking on failure (so the queue's
requeue limit and dead letters apply). Overlapping runs, on one node or many,
need no lock: claiming a message is one atomic rename, so two dispatchers
never hold the same message at once.

The message reaches the handler only on stdin and in environment variables,
and the handler command line is split with :mod:`shlex` and executed without
a shell, so nothing in a message can be run as a command.

Cron mails whatever a job prints, so a run where everything succeeded prints
nothing; each failure is one line on stderr, never a traceback. ``--log-file``
keeps a line per message for a persistent record.

Whatever goes wrong preparing or starting the handler for one message never
stops the dispatcher with a traceback, nor leaves the message leased for every
later run to die on. What becomes of the message depends on whose fault it is:

- The message's: a value that cannot be passed to a process (a NUL byte, a
  lone surrogate), a body larger than this process may write (EFBIG), a
  command line or environment exec refuses, anything unforeseen. The message
  is *nacked*, like a failed handler: the attempt counts against its requeue
  limit, so a poison message ends in the dead letters instead of coming back
  for ever, and the run goes on with the next message.
- This host's, for now: no room or no inodes in $TMPDIR for the handler's
  stdin file (ENOSPC, EDQUOT), an I/O error there, no free processes, file
  descriptors or memory to start the handler. The message is *released*: it
  goes back unchanged and the attempt does not count, since nacking would
  dead-letter good requests whenever /tmp fills up. The run stops with exit 1
  (the next message would meet the same full disk) and says why in one line,
  which cron mails every run until the host is fixed. (A body too large for
  the room left in $TMPDIR is treated the same way: it is reported, not
  dead-lettered.)

Values that come from the payload are never trusted as environment values:
``DDMQ_QUEUE`` is the queue the message was taken from (ddmq takes a
message's queue from the directory it lies in, never from its payload, which
a member of the group could have planted); ``DDMQ_HEADERS`` is ASCII JSON; a
body holding NUL reaches the handler on stdin only.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any, Mapping

import click

from ddmq import Broker, DdmqError, LeaseLost, Message, PartlyPublished, console, storage_error

from . import options

PROG = "ddmq-dispatch"
# How much of the handler's stdout/stderr goes into the reply message.
TAIL_BYTES = 4096
# Linux refuses to exec a program with any one environment string above
# 128 KiB (MAX_ARG_STRLEN); larger values are left out of the environment
# (the body is always on stdin) rather than making every delivery fail.
ENV_VALUE_MAX = 64 * 1024
# How often the running handler is looked at: bounds how late a signal, the
# handler timeout or a lease extension is acted on.
POLL_SECONDS = 0.1
_HOST = socket.gethostname()
# Errors of starting a process that say "this host, now", not "this message or
# this handler": the message is released rather than nacked, and the run stops.
SPAWN_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN})


# ------------------------------------------------------------------ options
@dataclass
class Options:
    """What one run was asked to do: ``ddmq-dispatch``'s options, the handler aside."""

    queue: str
    root: str | None = None
    max_messages: int = 10
    max_seconds: float = 50.0
    lease: float | None = None
    handler_timeout: float | None = None
    kill_grace: float = 5.0
    reply_queue: str | None = None
    log_file: str | None = None


def _handler_argv(text: str) -> list[str]:
    """``--handler`` as an argv, checked before anything is claimed.

    A typo in the crontab must not use up every message's requeue limit and
    fill the dead letters.
    """
    try:
        argv = shlex.split(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--handler") from None
    if not argv:
        raise click.BadParameter("empty command", param_hint="--handler")
    if shutil.which(argv[0]) is None:
        raise click.BadParameter(f"command not found or not executable: {argv[0]}", param_hint="--handler")
    return argv


# ------------------------------------------------------------- the handler
@dataclass
class Outcome:
    """What became of one run of the handler."""

    state: str  # ok, failed, timeout, interrupted (a lost lease is reported beside it)
    returncode: int | None  # as subprocess reports it: negative = killed by that signal
    detail: str  # why it failed, for stderr and the log; empty when ok
    stdout: str  # tails, for the reply
    stderr: str
    seconds: float
    lease_lost: bool = False


class LocalTrouble(Exception):
    """The handler could not be prepared or started for a reason of this host, not of the message.

    The message is released (the attempt does not count) and the run stops;
    see the module docstring.
    """


class StopRequest:
    """Signal handler for SIGTERM/SIGINT: remembers the signal, the loop acts on it.

    Nothing is done inside the handler itself, so a signal can never cut a
    queue operation in half; the dispatcher notices it within POLL_SECONDS.
    """

    def __init__(self) -> None:
        self.signum = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum


def body_bytes(msg: Message) -> bytes:
    """The body as the handler sees it: :func:`ddmq.console.body_text`, as ``ddmq consume`` prints it.

    ``surrogatepass``: publish refuses lone surrogates, but a payload written
    by other means may hold one, and it must reach the handler rather than
    crash the dispatcher.
    """
    return console.body_text(msg.message).encode("utf-8", "surrogatepass")


def handler_env(msg: Message, root: str, body: bytes, base: Mapping[str, str]) -> dict[str, Any]:
    """The handler's environment: ours plus the DDMQ_* description of the message.

    Values are passed as data (never through a shell), and none is a string
    from the payload that could hold a NUL byte or a lone surrogate, which
    exec cannot take: DDMQ_QUEUE is the queue the message was taken from
    (the core's, from the directory, not the payload's), DDMQ_MESSAGE_ID was checked against the file name by the core,
    DDMQ_HEADERS is ASCII JSON. DDMQ_MESSAGE is left out when the body holds
    a NUL byte or is too large for exec; an inherited DDMQ_MESSAGE is removed
    so it cannot pass for this message's body.
    """
    env: dict[str, Any] = dict(base)
    env.pop("DDMQ_MESSAGE", None)
    env.pop("DDMQ_HEADERS", None)
    env.update(
        DDMQ_MESSAGE_ID=msg.id, DDMQ_QUEUE=msg.queue, DDMQ_ROOT=root,
        DDMQ_DELIVERY_COUNT=str(msg.delivery_count), DDMQ_RECEIPT=msg.receipt or "",
    )
    headers = json.dumps(msg.headers, sort_keys=True)  # ensure_ascii: NUL and surrogates escaped
    if len(headers) <= ENV_VALUE_MAX:
        env["DDMQ_HEADERS"] = headers
    if len(body) <= ENV_VALUE_MAX and b"\0" not in body:
        env["DDMQ_MESSAGE"] = body
    return env


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def kill_handler(proc: subprocess.Popen, grace: float) -> int:
    """Stop the handler and everything it started; returns its return code.

    The handler leads its own process group (``start_new_session``), so the
    whole group gets SIGTERM, then, if anything of it is left after ``grace``
    seconds, SIGKILL: a handler that started ``srun`` or a pipeline does not
    leave orphans running.
    """
    _signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, or the group stays alive through its zombie
        if not _group_alive(proc.pid):
            break
        time.sleep(0.05)
    else:
        _signal_group(proc.pid, signal.SIGKILL)
    return proc.wait()


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0, os.SEEK_END)
    stream.seek(max(0, stream.tell() - TAIL_BYTES))
    return stream.read().decode("utf-8", "replace")


def _input_file(body: bytes) -> IO[bytes]:
    """An anonymous temporary file holding ``body``, at its start; the handler's stdin."""
    stdin = tempfile.TemporaryFile()
    try:
        stdin.write(body)
        stdin.flush()  # a full disk is found here, not when the handler reads
        stdin.seek(0)
    except BaseException:
        with contextlib.suppress(OSError):
            stdin.close()
        raise
    return stdin


def _tmpdir() -> str:
    try:
        return tempfile.gettempdir()
    except OSError:
        return "$TMPDIR"


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _not_started(detail: str) -> Outcome:
    """The outcome for a message the handler could not be given: a failure, nacked like one."""
    return Outcome("failed", None, detail, "", "", 0.0)


def run_handler(argv: list[str], msg: Message, broker: Broker, lease: float,
                timeout: float | None, grace: float, stop: StopRequest) -> Outcome:
    """Run the handler for one message, keeping its lease alive until it exits.

    Input and output go through anonymous temporary files (in $TMPDIR), not
    pipes: a handler that ignores stdin, prints megabytes, or leaves a
    background child holding its stdout open can never block the dispatcher.
    Only the last TAIL_BYTES of each output are kept for the reply.

    Whatever goes wrong before the handler runs is the message's failure
    (an Outcome "failed", to be nacked), or raises LocalTrouble when it is
    this host's (see the module docstring); it never escapes otherwise.
    """
    try:
        body = body_bytes(msg)
        env = handler_env(msg, os.path.abspath(broker.root), body,
                          os.environ)
    except Exception as exc:  # a value of this message's that cannot be passed on
        return _not_started(f"cannot pass the message to the handler: {_why(exc)}")
    start = time.monotonic()
    with contextlib.ExitStack() as files:
        try:
            stdin = files.enter_context(_input_file(body))
            out = files.enter_context(tempfile.TemporaryFile())
            err = files.enter_context(tempfile.TemporaryFile())
        except OSError as exc:
            if exc.errno == errno.EFBIG:  # larger than this process may write: it always will be
                return _not_started(f"cannot write the message to the handler's stdin: {_why(exc)}")
            raise LocalTrouble(f"cannot write the handler's stdin file in {_tmpdir()}: {_why(exc)}") from None
        if stop.signum:
            return Outcome("interrupted", None, "interrupted before the handler started", "", "", 0.0)
        try:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=err, env=env,
                                    start_new_session=True)
        except OSError as exc:
            if exc.errno in SPAWN_LOCAL_ERRNOS:
                raise LocalTrouble(f"cannot start the handler: {_why(exc)}") from None
            return _not_started(f"cannot run handler: {_why(exc)}")
        except Exception as exc:  # ValueError (a NUL byte), UnicodeEncodeError, ...: this message's values
            return _not_started(f"cannot start the handler: {_why(exc)}")
        state, detail, lease_lost = "", "", False
        next_extend = start + lease / 3
        while True:
            try:
                returncode = proc.wait(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if stop.signum:
                returncode = kill_handler(proc, grace)
                state = "interrupted"
                detail = f"interrupted by {signal.Signals(stop.signum).name}, handler killed"
                break
            if timeout is not None and now - start >= timeout:
                returncode = kill_handler(proc, grace)
                state, detail = "timeout", f"handler killed after --handler-timeout {timeout:g} s"
                break
            if not lease_lost and now >= next_extend:
                next_extend = now + lease / 3
                try:
                    broker.extend(msg, lease)
                except LeaseLost:
                    lease_lost = True
                except DdmqError as exc:  # transient storage trouble: try again next time
                    console.say(PROG, f"message {msg.id}: cannot extend lease: {exc}")
        if not state:
            if returncode == 0:
                state = "ok"
            else:
                state = "failed"
                detail = (f"handler exited {returncode}" if returncode > 0
                          else f"handler killed by {_signal_name(-returncode)}")
        return Outcome(state, returncode, detail, _tail(out), _tail(err),
                       time.monotonic() - start, lease_lost)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ---------------------------------------------------------------- reporting
def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def summary(outcome: Outcome, disposition: str) -> str:
    """One line about a message's fate, for stderr and the log file."""
    if outcome.state == "ok" and disposition == "acked":
        return f"acked ({outcome.seconds:.2f} s)"
    if disposition == "lease-lost":
        ran = f"handler exited {outcome.returncode}" if outcome.state == "ok" else outcome.detail
        text = f"{ran}, but the lease was lost meanwhile; not acked, it will be redelivered"
    else:
        text = f"{outcome.detail} ({disposition})"
    last = _last_line(outcome.stderr)
    return f"{text}: {last}" if last else text


class LogFile:
    """The ``--log-file``: one appended line per message, written in one ``write``.

    ``O_APPEND`` with a single write per line keeps lines from concurrent
    dispatchers on one host whole (on NFS, appends from different hosts can
    still interleave; give each host its own file there).
    """

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise storage_error("open log file", path, exc) from None

    def write(self, queue: str, msg_id: str, state: str, text: str) -> None:
        stamp = console.iso_utc()
        line = f"{stamp} {_HOST} {PROG}[{os.getpid()}] {queue} {msg_id} {state} {text}\n"
        try:
            os.write(self.fd, line.encode("utf-8", "replace"))
        except OSError as exc:
            raise storage_error("write log file", self.path, exc) from None


# -------------------------------------------------------------- dispatching
def settle(broker: Broker, msg: Message, outcome: Outcome) -> str:
    """Ack or nack the message; returns what became of it.

    ``acked``, ``requeued``, ``dead-lettered`` (requeue limit reached), or
    ``lease-lost`` when the lease is no longer ours: then the message is
    neither acked nor nacked, and whoever requeued it owns it now.
    """
    if outcome.lease_lost:
        return "lease-lost"
    try:
        if outcome.state == "ok":
            broker.ack(msg)
            return "acked"
        return "requeued" if broker.nack(msg) == "ready" else "dead-lettered"
    except LeaseLost:
        return "lease-lost"


def reply(outcome: Outcome, msg: Message, disposition: str) -> dict[str, Any]:
    """The result message published to ``--reply-queue``.

    It is published after the ack or nack, so ``disposition`` is what really
    happened: a requester can tell a failure that will be retried from a
    final one. ``time`` (when it was settled) is ISO 8601 UTC, as in every
    ddmq event; ``handler_seconds`` is how long the handler ran. ``queue`` is the queue the request was taken from (the
    core's, from the directory, not the payload's).
    """
    code = outcome.returncode
    return {
        "request_id": msg.id, "queue": msg.queue, "state": outcome.state,
        "exit_status": code if code is not None and code >= 0 else None,
        "signal": -code if code is not None and code < 0 else None,
        "disposition": disposition, "delivery_count": msg.delivery_count,
        "stdout": outcome.stdout, "stderr": outcome.stderr,
        "handler_seconds": round(outcome.seconds, 3), "host": _HOST, "time": console.iso_utc(),
    }


class Dispatcher:
    """One run: claim, handle and settle messages one at a time until a limit is hit."""

    def __init__(self, args: Options, handler: list[str]):
        self.args = args
        self.handler = handler
        self.broker = Broker(args.root)
        self.broker.settings(args.queue)  # QueueNotFound before anything is claimed
        if args.reply_queue is not None:
            self.broker.settings(args.reply_queue)
        self.log = LogFile(args.log_file) if args.log_file else None
        self.stop = StopRequest()

    def run(self) -> int:
        """Handle messages; returns the exit code.

        One message at a time, so a dispatcher never holds leases on requests
        it is not working on: a concurrent dispatcher (an overlapping cron
        run, or another node) takes those instead of waiting for them.

        Failed messages are nacked only at the end of the run. A requeued
        message goes to the front of the queue (``requeue_prio``, 0 by
        default), so nacking at once would make this run retry the same
        failing request back to back, spending its whole requeue limit within
        a minute and starving the requests behind it. Held until the end, it
        is retried by a later run; if its lease runs out first, expiry
        requeues it just as the nack would. They are nacked even when the run
        ends early on an error.

        A message the handler could not be started for because of this host
        (LocalTrouble) is released at once and ends the run (exit 1).
        """
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        args = self.args
        started = time.monotonic()
        failed: list[tuple[Message, Outcome]] = []
        all_ok = True
        try:
            for _ in range(args.max_messages):
                if self.stop.signum or time.monotonic() - started >= args.max_seconds:
                    break
                claimed = self.broker.consume(args.queue, 1, lease=args.lease)
                if not claimed:
                    break
                msg = claimed[0]
                lease = args.lease if args.lease is not None else msg.message_timeout
                try:
                    outcome = run_handler(self.handler, msg, self.broker, lease, args.handler_timeout,
                                          args.kill_grace, self.stop)
                except LocalTrouble as exc:
                    self.give_back(msg, str(exc))
                    all_ok = False
                    break
                if outcome.state == "ok" or outcome.lease_lost:
                    if not self.finish([(msg, outcome)]):
                        all_ok = False
                else:
                    failed.append((msg, outcome))
        finally:
            self.finish(failed)
        if self.stop.signum:
            return 128 + self.stop.signum
        return console.EXIT_OK if all_ok and not failed else console.EXIT_ERROR

    def finish(self, done: list[tuple[Message, Outcome]]) -> bool:
        """Settle messages, then reply to them (one batch) and report each; True if every one was acked.

        Never raises: a message that cannot be settled is left to its lease
        (expiry requeues it), a reply or log line that cannot be written is
        reported, and the run goes on. Each reply is published after its
        message was settled, so its disposition is what happened; the failed
        messages nacked at the end of a run are settled first and their
        replies then published together, with one durability barrier.
        """
        settled: list[tuple[Message, Outcome, str]] = []
        for msg, outcome in done:
            try:
                settled.append((msg, outcome, settle(self.broker, msg, outcome)))
            except DdmqError as exc:
                self.report(msg, "failed", f"{outcome.detail or 'handler exited 0'}, but it could not be settled: "
                                           f"{exc}; it will be redelivered when its lease expires")
        if self.args.reply_queue is not None and settled:
            self.publish_replies(self.args.reply_queue, settled)
        all_acked = len(settled) == len(done)
        for msg, outcome, disposition in settled:
            text = summary(outcome, disposition)
            state = "lease-lost" if disposition == "lease-lost" else outcome.state
            self.report(msg, state, text, quiet=disposition == "acked")
            all_acked = all_acked and disposition == "acked"
        return all_acked

    def publish_replies(self, queue: str, settled: list[tuple[Message, Outcome, str]]) -> None:
        """Publish the replies of settled messages as one batch; what a batch could not publish, one by one.

        One reply that cannot be published (a handler's output that cannot be
        encoded) must not cost the others theirs: after a failed batch, the
        replies it did not publish are tried alone, and each failure is
        reported against its own message.
        """
        try:
            self.broker.publish_many(queue, [reply(outcome, msg, disposition) for msg, outcome, disposition in settled])
            return
        except PartlyPublished as exc:
            rest = settled[exc.published:]
        except (DdmqError, TypeError, ValueError):
            rest = settled
        for msg, outcome, disposition in rest:
            try:
                self.broker.publish(queue, reply(outcome, msg, disposition))
            except (DdmqError, TypeError, ValueError) as exc:
                console.say(PROG, f"message {msg.id}: cannot publish the reply to {queue!r}: {exc}")

    def give_back(self, msg: Message, why: str) -> None:
        """Release a message the handler was not started for (LocalTrouble): unchanged, not counted."""
        try:
            self.broker.release(msg)
            what = "released, not counted as a delivery; the run stops"
        except LeaseLost:
            what = "its lease was lost meanwhile; the run stops"
        except DdmqError as exc:
            what = f"could not release it ({exc}): it is requeued when its lease expires; the run stops"
        self.report(msg, "not-started", f"{why} ({what})")

    def report(self, msg: Message, state: str, text: str, quiet: bool = False) -> None:
        """The log line and (unless ``quiet``) the stderr line about one message."""
        if self.log is not None:
            try:
                self.log.write(self.args.queue, msg.id, state, text)
            except DdmqError as exc:
                console.say(PROG, str(exc))
        if not quiet:
            console.say(PROG, f"message {msg.id}: {text}")


@click.command(
    name=PROG, cls=console.Command, context_settings=console.CONTEXT,
    epilog="The handler gets the message body on stdin and in DDMQ_MESSAGE (as ddmq consume prints it), and "
           "DDMQ_MESSAGE_ID, DDMQ_QUEUE, DDMQ_ROOT, DDMQ_DELIVERY_COUNT, DDMQ_RECEIPT, DDMQ_HEADERS (JSON). "
           "Seconds are at most 1e9. REQUEST_QUEUE and --reply-queue must exist: a mistyped name in a crontab "
           "fails every run, loudly, instead of serving a queue nobody publishes to.\n\n"
           + console.exit_codes_help({
               console.EXIT_OK: "all handled messages succeeded (or none were waiting)",
               console.EXIT_ERROR: "a handler failed or could not be started",
               console.EXIT_USAGE: "usage error (bad option, --handler not found)",
               console.EXIT_NOT_FOUND: "root or queue not found",
               console.EXIT_INTERRUPTED: "stopped by SIGINT; 143: by SIGTERM (128+N: signal N)",
           }),
)
@click.argument("queue", metavar="REQUEST_QUEUE")
@click.option("--handler", required=True, metavar="'COMMAND ARGS'",
              help="Command to run per message (split like a shell would, run without one).")
@console.root_option()
@click.option("--max-messages", type=options.count(), default=10, metavar="N",
              help=f"Handle at most N messages per run (default 10, at most {options.MAX_COUNT}).")
@click.option("--max-seconds", type=options.seconds(), default=50.0, metavar="S",
              help="Take no new message after S seconds (default 50, so a run started by cron ends before "
                   "the next one); a running handler is not cut short.")
@click.option("--lease", type=options.Number(low=options.MIN_LEASE), metavar="S",
              help="Lease length in seconds, renewed every S/3 while the handler runs "
                   "(default: the message's message_timeout).")
@click.option("--handler-timeout", type=options.seconds(), metavar="S",
              help="Kill a handler running longer than S seconds and nack its message (default: no limit).")
@click.option("--kill-grace", type=options.seconds(positive=False), default=5.0, metavar="S",
              help="Seconds between SIGTERM and SIGKILL when a handler is killed (default 5).")
@click.option("--reply-queue", metavar="QUEUE",
              help="Publish a result (JSON object) per message to this existing queue, once the message is "
                   "settled (the failed ones, nacked at the end of the run, in one batch).")
@click.option("--log-file", metavar="FILE",
              help="Append a line per message (success or failure), stamped in ISO 8601 UTC, to FILE.")
@console.common_options(PROG)
def command(handler: str, **given: Any) -> None:
    """Run HANDLER once for each message of REQUEST_QUEUE: ack on exit 0, nack (requeue until the
    requeue limit, then dead-letter) otherwise.

    Meant to be run from cron every minute; prints nothing when all went well.
    """
    argv = _handler_argv(handler)
    try:
        code = Dispatcher(Options(**given), argv).run()
    except DdmqError:
        raise  # one line and its exit code, as for every ddmq command
    except OSError as exc:
        code = console.say(PROG, exc.strerror or str(exc)) or console.EXIT_ERROR
    except Exception as exc:  # unforeseen: still one line; failed messages were nacked on the way out
        code = console.say(PROG, f"{type(exc).__name__}: {exc}") or console.EXIT_ERROR
    raise click.exceptions.Exit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ddmq-dispatch``; returns the exit code. Errors are one line, never a traceback."""
    return console.run(command, argv)


if __name__ == "__main__":
    sys.exit(main())
