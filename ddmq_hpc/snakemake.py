"""Snakemake helpers: rules that wait for a queue message, and workflows that announce their end.

A Snakefile imports this module every time Snakemake parses it, and Snakemake
parses it again in every job it spawns, so importing it is cheap: ddmq itself
is imported only when a helper is called. ::

    from ddmq_hpc.snakemake import notify, wait_command, wait_for

    rule wait_for_data:                 # Python: waits, then writes the message to the output
        output: "data_ready.txt"
        localrule: True
        run:
            wait_for(output, "data_ready", root=config["root"], timeout=3600)

    rule wait_for_data_shell:           # the same as a shell command (ddmq-wait ... --output)
        output: "data_ready.json"
        localrule: True
        shell: wait_command("data_ready", root=config["root"], fmt="json", timeout=3600)

    onsuccess:
        notify("workflow_done", root=config["root"], state="COMPLETED")
    onerror:
        notify("workflow_done", root=config["root"], state="FAILED")

Make waiting rules ``localrule: True``. When the other rules are submitted
to SLURM or PBS, a waiting rule would otherwise be a batch job holding a
cluster slot (and its place in the batch queue) while doing nothing; as a
local rule it waits in the Snakemake process's host, costing one directory
listing per poll. Let the waiting rule only wait, and have downstream rules
use its output: Snakemake deletes the output of a failed rule, so a message
consumed by a rule that then failed for another reason would be lost to the
workflow.

Messages are claimed while waiting and acked only once the rule's output has
been written (atomically: a reader sees all of it or nothing, and the
temporary file beside it has a random name and is created exclusively, so a
symlink planted in a shared directory is never written through); ``peek=True``
leaves them on the queue for other waiters. Both helpers run ``ddmq-wait``,
so Ctrl-C stops a waiting workflow at once and gives back any message held.

A timeout is a rule failure. :func:`wait_for` raises
:class:`ddmq_hpc.wait.WaitTimeout`, which Snakemake prints as::

    RuleException:
    WaitTimeout in file ".../Snakefile", line 13:
    timed out after 600 s with 0 of 1 message(s) from 'data_ready' (root /shared/ddmq); data.txt not written

and the ``wait_command`` shell command exits 124 after printing the same
reason on stderr (Snakemake then reports the rule's non-zero exit status).
Either way Snakemake marks the rule failed, runs ``onerror:``, no output file
is left, and any message held so far goes back to the queue unchanged.
"""
from __future__ import annotations

import os
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

if TYPE_CHECKING:
    from ddmq import Message

PathLike = Union[str, "os.PathLike[str]"]
FORMATS = ("plain", "json", "body")  # "body": plain's name before 1.0, still taken


def _output_path(output: PathLike | Sequence[PathLike]) -> str:
    """The one file to write, given a path or a rule's ``output`` holding exactly one."""
    if isinstance(output, (str, os.PathLike)):
        return os.fspath(output)
    paths = list(output)
    if len(paths) != 1:
        from ddmq import UsageError

        raise UsageError(f"wait_for writes one file, but the rule has {len(paths)} outputs: pass one of them")
    return os.fspath(paths[0])


def _text_fields(fields: Mapping[str, Any] | None) -> dict[str, str]:
    """Field values as the text they are compared as, so ``status=0`` may be given as the int 0."""
    if not fields:
        return {}
    from ddmq.console import body_text

    return {str(key): body_text(value) for key, value in fields.items()}


def ddmq_wait_executable() -> str:
    """The ``ddmq-wait`` installed with the Python running Snakemake, else the one on PATH.

    Jobs may run with a different PATH (a module system, a cluster node), so
    the absolute path of the script next to this interpreter
    (:func:`ddmq.console.beside_python`) is the safe choice.
    """
    from ddmq.console import beside_python

    return beside_python("ddmq-wait") or "ddmq-wait"


def _wait_options(root: PathLike | None, match: str | None, regex: str | None,
                  fields: Mapping[str, Any] | None, count: int, timeout: float | None, peek: bool,
                  interval: float, max_interval: float, fmt: str, create: bool | None) -> list[str]:
    """``ddmq-wait`` options for these settings; defaults are left out to keep commands readable.

    Text values are joined to their option (``--match=-x``) so that one
    starting with a dash is not read as an option. Numbers are checked here
    as ``ddmq-wait`` would check them (UsageError), so that a NaN or infinite
    timeout fails the rule at once instead of waiting for ever.
    """
    from ddmq import UsageError

    from . import options

    if fmt not in FORMATS:
        raise UsageError(f"fmt must be plain or json, not {fmt!r}")
    options.check_wait_numbers(count, timeout, interval, max_interval)
    args: list[str] = []
    if root is not None:
        args.append(f"--root={os.fspath(root)}")
    if match is not None:
        args.append(f"--match={match}")
    if regex is not None:
        args.append(f"--regex={regex}")
    for key, value in _text_fields(fields).items():
        args.append(f"--field={key}={value}")
    if count != 1:
        args += ["--count", str(count)]
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    if peek:
        args.append("--peek")
    if interval != 1.0:
        args += ["--interval", str(interval)]
    if max_interval != 30.0:
        args += ["--max-interval", str(max_interval)]
    if fmt == "json":
        args += ["--format", fmt]
    if create is not None:
        args.append("--create" if create else "--no-create")
    return args


def _queue_args(queue: str) -> list[str]:
    """The queue, last on the command line: after ``--`` if it starts with a dash (a valid name)."""
    return ["--", queue] if queue.startswith("-") else [queue]


def wait_for(output: PathLike | Sequence[PathLike], queue: str, *, root: PathLike | None = None,
             match: str | None = None, regex: str | None = None, fields: Mapping[str, Any] | None = None,
             count: int = 1, timeout: float | None = None, peek: bool = False, interval: float = 1.0,
             max_interval: float = 30.0, fmt: str = "plain", create: bool | None = None) -> None:
    """Wait for ``count`` matching messages on ``queue`` and write them to ``output``; for ``run:`` blocks.

    ``output`` is a path or the rule's ``output`` (which must then hold one
    file). The file gets one body per line (``fmt="plain"``) or one JSON
    object per message (``fmt="json"``), written atomically; messages are
    acked only after that, so a failed write leaves them on the queue. The
    other options are those of :func:`ddmq_hpc.wait.wait`; ``fields``
    values may be any JSON value (``status=0`` matches the number 0).

    The wait runs in a ``ddmq-wait`` child process, not in this one:
    Snakemake runs ``run:`` blocks in a worker thread, which no signal
    reaches, so an in-process wait would keep Snakemake from stopping on
    Ctrl-C until the message or the timeout came. The child gets the
    terminal's SIGINT (or a SIGTERM), gives back what it held
    and exits, and the rule fails.

    Raises WaitTimeout (naming queue, root and timeout) when ``timeout``
    seconds pass first: the rule fails, no output is written and the queue
    is as it was. Any other failure of the wait raises DdmqError with
    ``ddmq-wait``'s reason.
    """
    import subprocess

    from ddmq import DdmqError

    path = _output_path(output)
    options = _wait_options(root, match, regex, fields, count, timeout, peek, interval, max_interval, fmt,
                            create)
    argv = [ddmq_wait_executable(), *options, f"--output={path}", *_queue_args(queue)]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, check=False)
    except OSError as exc:
        raise DdmqError(f"cannot run {argv[0]} (is ddmq installed for {sys.executable}?): {exc}") from None
    if done.returncode == 0:
        return
    said = [line[len("ddmq-wait: "):] if line.startswith("ddmq-wait: ") else line
            for line in done.stderr.splitlines() if line.strip()]
    reason = "; ".join(said)
    from .wait import EXIT_TIMEOUT, WaitTimeout

    if done.returncode == EXIT_TIMEOUT:  # the last line says why (the one before may be "waiting for it")
        from ddmq import resolve_root

        raise WaitTimeout(f"{said[-1] if said else reason} (root {resolve_root(root)[0]}); {path} not written")
    raise DdmqError(f"waiting for queue {queue!r} failed (ddmq-wait exit {done.returncode}): {reason}; "
                    f"{path} not written")


def _literal(arg: str) -> str:
    """One shell word that survives Snakemake's ``str.format`` of the command unchanged."""
    return shlex.quote(arg).replace("{", "{{").replace("}", "}}")


def wait_command(queue: str, output: str | None = "{output:q}", *, root: PathLike | None = None,
                 match: str | None = None, regex: str | None = None, fields: Mapping[str, Any] | None = None,
                 count: int = 1, timeout: float | None = None, peek: bool = False, interval: float = 1.0,
                 max_interval: float = 30.0, fmt: str = "plain", create: bool | None = None) -> str:
    """The ``ddmq-wait`` command line that does what :func:`wait_for` does; for ``shell:`` rules.

    Every argument is shell-quoted, and braces are doubled so that Snakemake's
    formatting of the command leaves them alone (a regex ``x{2}`` stays one);
    ``output`` is inserted as given, a Snakemake placeholder (the default,
    ``{output:q}``, is the rule's output, quoted) or None to print the
    messages on stdout. On a timeout ``ddmq-wait`` exits 124 with a message
    naming the queue and the time waited, which fails the rule.
    """
    options = _wait_options(root, match, regex, fields, count, timeout, peek, interval, max_interval, fmt,
                            create)
    words = [_literal(arg) for arg in (ddmq_wait_executable(), *options)]
    if output is not None:
        words.append(f"--output={output}")
    return " ".join([*words, *map(_literal, _queue_args(queue))])


def notify(queue: str, message: Any = None, *, event: str | None = None, status: int | None = None,
           state: str | None = None, root: PathLike | None = None, create: bool = True,
           priority: int | None = None, timeout: float = 60.0, **fields: Any) -> Message:
    """Publish ``message`` to ``queue``; for ``onsuccess:``/``onerror:`` handlers and announcing rules.

    With no message, publish a JSON event like the one ``ddmq-notify``
    publishes at the end of a batch job (host, user, time, working
    directory, scheduler job ids when inside a job, ``status``/``state``),
    with ``"event"`` set to ``event``: by default ``"rule_end"`` if a
    ``rule`` field is given (``notify(q, rule=rule)`` in a ``run:`` block),
    else ``"workflow_end"``. Keyword ``fields`` are added to the event, or to
    ``message`` if it is a dict. Transient filesystem errors are retried for
    up to ``timeout`` seconds; any other failure raises, which makes the rule
    (or, in a handler, the Snakemake run) fail rather than silently not
    announce. A missing queue is created, as ``ddmq-notify`` creates it,
    and a line on stderr says so.
    """
    from ddmq import UsageError
    from ddmq.console import say

    from .jobenv import completion_event
    from .notify import notify as publish

    if message is None:
        message = {**completion_event(status, state),
                   "event": event or ("rule_end" if "rule" in fields else "workflow_end"), **fields}
    elif fields or event is not None or status is not None or state is not None:
        if not isinstance(message, dict):
            raise UsageError("fields, event, status and state need no message, or a dict message")
        extra = {"event": event, "status": status, "state": state}
        message = {**message, **{k: v for k, v in extra.items() if v is not None}, **fields}
    return publish(queue, message, root=None if root is None else os.fspath(root), create=create,
                   priority=priority, deadline=time.monotonic() + timeout,
                   created=lambda what: say("ddmq_hpc.snakemake.notify", what))
