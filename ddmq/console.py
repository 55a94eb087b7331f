"""The console conventions every ddmq command shares: ``ddmq`` and the ``ddmq_hpc`` helpers alike.

A command run by a script or at the end of a batch job must end in a way the
script can act on, so every command here follows the same rules:

- **One line on stderr**, never a traceback: ``PROG: why`` for a failure
  (:func:`failed`), ``PROG: error: why`` for a command line click refuses
  (no usage summary, no hint: cron and batch jobs mail stderr, and the reason
  must not be buried). A broken pipe ends quietly with exit 141.
- **Exit codes from the error hierarchy** (:mod:`ddmq.errors`): each
  :class:`~ddmq.errors.DdmqError` subclass carries its code, and the
  ``EXIT_*`` constants below are read from those classes, not restated.
- The same **options** with the same names and help: ``--root`` (else
  ``$DDMQ_ROOT``, else ``~/.ddmq``), ``--version``/``-V``, ``-v``/``--verbose``
  (and ``$DDMQ_LOG``) for the ``ddmq`` logger, whose warnings (a message
  dead-lettered, a clock corrected) every command shows, and the options that
  mirror queue settings (:mod:`ddmq.setting_options`).
- The same **text**: times in ISO 8601 UTC (:func:`utc_time`), ``KEY=VALUE``
  pairs (:func:`parse_pairs`) and a message body as text (:func:`body_text`),
  so a ``ddmq-dispatch`` handler sees in ``DDMQ_MESSAGE`` exactly what
  ``ddmq consume`` prints.

Commands are click commands of class :class:`Command` (or :class:`Group`);
:func:`run` runs one without leaving the interpreter. Importing this module
imports click; logging is imported only when it is asked for.
"""
from __future__ import annotations

import errno
import os
import signal
import sys

import click

from .errors import _STORAGE_REASONS, DdmqError, LeaseLost, NotFound, UsageError

# The options that mirror queue settings, for the commands built on this module.
from .setting_options import setting_help as setting_help
from .setting_options import setting_option as setting_option
from .setting_options import setting_options as setting_options
from .setting_options import setting_value as setting_value

TYPE_CHECKING = False  # typing is for annotations only
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Sequence


class Empty(DdmqError):
    """Nothing to consume or peek: not a failure, but scripts need to tell it apart."""

    exit_code = 3


EXIT_OK = 0
EXIT_ERROR = DdmqError.exit_code
EXIT_USAGE = UsageError.exit_code
EXIT_EMPTY = Empty.exit_code
EXIT_NOT_FOUND = NotFound.exit_code
EXIT_LEASE_LOST = LeaseLost.exit_code
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a process that SIGPIPE killed

ROOT_HELP = "ddmq root directory (default: $DDMQ_ROOT, else ~/.ddmq)."


# --------------------------------------------------------------------- output
def _is_ascii(encoding: str) -> bool:
    import codecs

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


def os_reason(exc: OSError) -> str:
    """Why an OSError happened, in the words ddmq uses everywhere ("no space left on device")."""
    return _STORAGE_REASONS.get(exc.errno or 0) or exc.strerror or str(exc)


def say(prog: str, text: str) -> int | None:
    """Write ``PROG: text`` as one line on stderr; None, or 141 if stderr is a broken pipe.

    Any other failure to write is swallowed (and stderr silenced): the exit
    code still says what happened.
    """
    try:
        echo(f"{prog}: {text}", err=True)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return broken_pipe()
        silence(sys.stderr)
    return None


def failed(prog: str, exc: DdmqError | KeyboardInterrupt) -> int:
    """Say in one line on stderr why a command failed; return the exit code it ends with.

    An error with an empty message (:class:`Empty`) or one whose code is 141
    (the reader of the output went away) says nothing. If stderr cannot take
    the line either, the exit code says it all: 141 if stderr is a broken
    pipe, the failure's own code otherwise.
    """
    if isinstance(exc, KeyboardInterrupt):
        text, code = "interrupted", EXIT_INTERRUPTED
    else:
        text, code = str(exc), exc.exit_code
    if code == EXIT_BROKEN_PIPE:
        return broken_pipe()
    if text:
        return say(prog, text) or code
    return code


def exit_code_of(prog: str, run: Callable[[], object]) -> int | None:
    """Run a command; None if it succeeded, else the exit code it ends with, its failure said.

    A failure (:class:`~ddmq.errors.DdmqError` or Ctrl-C) is one line on
    stderr (:func:`failed`). A broken pipe -- there should be none that a
    command did not turn into an error of its own -- ends the same way,
    never with a traceback.
    """
    try:
        try:
            run()
        except (DdmqError, KeyboardInterrupt) as exc:
            return failed(prog, exc)
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        return broken_pipe()
    return None


# ----------------------------------------------------------------------- text
def parse_pairs(pairs: Iterable[str], what: str) -> dict[str, str]:
    """``KEY=VALUE`` strings (``-H``, ``--field``) as a dict; UsageError naming ``what`` for a malformed one.

    The value may hold ``=`` and may be empty; the key may not.
    """
    found: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid {what} {pair!r}: use KEY=VALUE")
        found[key] = value
    return found


def body_text(body: Any) -> str:
    """A message body as text: a string as it is, any other JSON value as compact, key-sorted JSON.

    What ``ddmq consume`` prints, what ``ddmq-wait`` prints and matches, and
    what a ``ddmq-dispatch`` handler gets: the same body is the same text
    everywhere, so a script can compare them.
    """
    import json

    return body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, sort_keys=True)


def utc_time(ns: int | None) -> str:
    """A time (ns since the epoch) as people read it in every ddmq output: ISO 8601 UTC, ``-`` for none."""
    return "-" if ns is None else iso_utc(ns // 1_000_000_000)


def beside_python(name: str) -> str | None:
    """The ``name`` script installed with the running interpreter, if there is one.

    It is the same ddmq as this one, and a real file: PATH may hold another
    installation, or a pyenv shim that needs the user's shell setup, and a
    batch job may have neither. Not resolved, because a virtual
    environment's ``python`` is a symlink out of it.
    """
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.isfile(beside) and os.access(beside, os.X_OK) else None


# -------------------------------------------------------------------- logging
# logging's numbers for the levels a command line may ask for (logging itself
# is imported only if something is logged).
LOG_LEVELS = {"warning": 30, "info": 20, "debug": 10}
_log_warned: list[str] = []
_shown: dict[str, Any] = {}  # what this command line asked for: "prog" and "level"


def log_to_stderr(prog: str, verbosity: int) -> None:
    """Show the ``ddmq`` logger's records on stderr, one ``PROG: message`` line each.

    Warnings always: the core logs one whenever it dead-letters a message or
    corrects its clock, and the command that did it must say so. ``-v`` adds
    info, ``-vv`` debug; without ``-v``, ``$DDMQ_LOG`` (debug, info or
    warning) decides. Unless one of them asks, the handler is set up through
    :func:`ddmq.log.when_used`: ``logging`` is imported only when something
    is logged, which most runs never do. Called once per ``-v`` option of the command line (``ddmq -v publish``):
    the most verbose level asked for wins. The clock correction's
    RuntimeWarning (for library users) is not shown: its log record says it.
    """
    env = os.environ.get("DDMQ_LOG", "").strip().lower()
    asked = bool(verbosity) or env in LOG_LEVELS
    if verbosity:
        level = list(LOG_LEVELS)[min(verbosity, 2)]
    elif asked:
        level = env
    else:
        level = "warning"
        if env and not _log_warned:  # said once, though every -v option of the command line comes here
            _log_warned.append(env)
            say(prog, f"warning: DDMQ_LOG={env!r} ignored: use one of {', '.join(LOG_LEVELS)}")
    if _shown.get("level", 99) <= LOG_LEVELS[level]:
        return
    _shown.update(prog=prog, level=LOG_LEVELS[level])
    import warnings

    warnings.filterwarnings("ignore", "ddmq: this host's clock", RuntimeWarning)
    from .log import logger, when_used

    if asked:  # someone is debugging: set up now, so that what the command itself logs is shown too
        _show_records(logger())
    else:
        when_used(_show_records)


def _show_records(logger: Any) -> None:
    """Add the handler that says the ``ddmq`` logger's records on stderr (once), at the level asked for."""
    import logging

    class Say(logging.Handler):
        ddmq_console = True

        def emit(self, record: logging.LogRecord) -> None:
            say(_shown.get("prog", "ddmq"), record.getMessage().replace("\n", " "))

    if not any(getattr(h, "ddmq_console", False) for h in logger.handlers):
        logger.addHandler(Say())
    logger.setLevel(_shown.get("level", logging.WARNING))


# --------------------------------------------------------------- click glue
class _OneLineErrors:
    """What :class:`Command` and :class:`Group` add to click: the conventions of the module docstring.

    ``main`` in standalone mode (a console script, click's CliRunner) exits
    with the code; otherwise (:func:`run`) it returns it. Either way errors
    have been said in one line, never raised.
    """

    name: str | None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        prog = prog_name or self.name or "ddmq"
        _shown.clear()  # a new command line: its own -v options decide
        try:
            code = super().main(args, prog, complete_var, standalone_mode=False, **extra) or 0  # type: ignore[misc]
        except click.UsageError as exc:
            code = say(prog, f"error: {exc.format_message()}") or exc.exit_code
        except click.ClickException as exc:
            code = say(prog, exc.format_message()) or exc.exit_code
        except click.Abort:  # Ctrl-C while click parsed the command line
            code = failed(prog, KeyboardInterrupt())
        except OSError as exc:  # a broken pipe while click wrote a usage error
            if exc.errno != errno.EPIPE:
                raise
            code = broken_pipe()
        if standalone_mode:
            sys.exit(code)
        return code

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            context: click.Context = super().make_context(*args, **kwargs)  # type: ignore[misc]
            return context
        except OSError as exc:  # only --help and --version write while the command line is parsed
            if exc.errno == errno.EPIPE:
                raise click.exceptions.Exit(broken_pipe()) from None
            parent = kwargs.get("parent")
            prog = parent.find_root().info_name if parent is not None else args[0] if args else self.name
            code = say(str(prog), f"cannot write output: {os_reason(exc)}") or EXIT_ERROR
            raise click.exceptions.Exit(code) from None

    def invoke(self, ctx: click.Context) -> None:
        """Run the command; a DdmqError (or Ctrl-C) becomes its one line and exit code."""
        code = exit_code_of(ctx.find_root().info_name or "ddmq",
                            lambda: super(_OneLineErrors, self).invoke(ctx))  # type: ignore[misc]
        if code is not None:
            raise click.exceptions.Exit(code)


class Command(_OneLineErrors, click.Command):
    """A click command that follows ddmq's console conventions (see the module docstring)."""


class Group(_OneLineErrors, click.Group):
    """A click group that follows ddmq's console conventions, and so do its subcommands."""

    command_class = Command


def run(command: click.Command, argv: Sequence[str] | None = None) -> int:
    """Run ``command`` on ``argv`` (default: ``sys.argv[1:]``) and return its exit code, without exiting."""
    code: int = command.main(argv, prog_name=command.name, standalone_mode=False)
    return code


CONTEXT = {"help_option_names": ["-h", "--help"]}


def common_options(prog: str, version: bool = True) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-v``/``--verbose``, which every command has, and ``--version``/``-V`` (not on ``ddmq``'s subcommands)."""
    def add(func: Callable[..., Any]) -> Callable[..., Any]:
        from . import __version__

        func = click.option("-v", "--verbose", count=True, expose_value=False, is_eager=True,
                            callback=lambda ctx, param, value: log_to_stderr(prog, value),
                            help="Also log what ddmq does on rare paths to stderr (-vv: more; or set "
                                 "DDMQ_LOG=debug|info|warning); warnings, such as a message dead-lettered, "
                                 "always are.")(func)
        return click.version_option(__version__, "-V", "--version", prog_name=prog)(func) if version else func
    return add


def root_option(help: str = ROOT_HELP, checked: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``-r``/``--root``; ``checked`` makes click refuse a root that is a file (``ddmq``).

    The helpers leave the root unchecked while parsing: ``ddmq-notify``
    bounds everything it does on the filesystem with ``--timeout``, and a
    stat of a hung network filesystem would not be.
    """
    kind = click.Path(file_okay=False) if checked else None
    return click.option("-r", "--root", type=kind, default=None, help=help)


# ------------------------------------------------------------ exit codes help
def exit_codes_help(meanings: dict[int, str]) -> str:
    """A command's "Exit codes:" epilog, laid out as ``ddmq --help`` lays out its own.

    The codes are the ``EXIT_*`` constants above (one table for every ddmq
    command); ``meanings`` says what each code this command can end with
    means for it, one short line each (the block is not re-wrapped: ``\\b``).
    """
    rows = [f"  {code:<4} {meanings[code]}" for code in sorted(meanings)]
    return "\b\nExit codes:\n" + "\n".join(rows) + "\n"


def iso_utc(seconds: float | None = None) -> str:
    """``seconds`` since the epoch (default: now) as ISO 8601 UTC, ``2024-05-01T12:00:00Z``.

    Every time a person reads (events, results, log lines) is written so,
    whatever the host's time zone: the nodes of a cluster may disagree on
    it, and the lines of two of them must compare as text.
    """
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
