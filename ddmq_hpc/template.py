"""``ddmq-template slurm|pbs``: a job script that publishes its own completion event.

The trap logic is where hand-written event scripts go wrong: under ``dash``
the EXIT trap does not run on SIGTERM, a ``ddmq-notify`` line after the
command is skipped when the job is cancelled or times out, a command run in
the foreground delays the TERM trap until it ends, and an unquoted command
runs something other than what was meant. The templates in
``ddmq_hpc/templates/`` get this right once (their comments explain each
step); this module fills them in, with ``string.Template``.
"""
from __future__ import annotations

import errno
import os
import re
import shlex
import string
import sys
from importlib import resources
from typing import Sequence

import click

from ddmq import DdmqError, UsageError, check_queue_name, console, resolve_root

from .jobevents import PBS_WATCH_VARIABLE, pbs_watch_value, watch_tag

PROG = "ddmq-template"
SCHEDULERS = ("slurm", "pbs")
_PREFIX = {"slurm": "#SBATCH", "pbs": "#PBS"}
_NAMES = {"slurm": "SLURM", "pbs": "PBS"}
# --time as each scheduler reads it: SLURM [days-]hours[:minutes[:seconds]] or
# minutes[:seconds] or hours:minutes:seconds, or no limit (sbatch takes these
# words in any case, and -1); PBS Pro and Torque [[hours:]minutes:]seconds[.fraction]
# (rounded to the nearest second; there is no word for no limit).
_TIME = {
    "slurm": re.compile(r"(?:(?P<days>[0-9]+)-)?(?P<clock>[0-9]+(?::[0-9]+){0,2})"),
    "pbs": re.compile(r"(?P<clock>[0-9]+(?::[0-9]+){0,2})(?:\.(?P<fraction>[0-9]*))?"),
}
_SLURM_NO_LIMIT = ("unlimited", "infinite", "-1")
_TIME_FORMATS = {
    "slurm": "minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]] or UNLIMITED",
    "pbs": "seconds, minutes:seconds or hours:minutes:seconds, with an optional .fraction",
}


class _ShellTemplate(string.Template):
    """``@@{name}`` placeholders, because ``$`` belongs to the shell."""

    delimiter = "@@"


def limit_seconds(scheduler: str, text: str) -> int | None:
    """``--time`` in seconds as ``scheduler`` reads it; None for 0, which means no limit.

    The rendered script compares it with its own run time to tell a time-out
    from a cancellation when the scheduler cannot be asked.
    """
    if scheduler == "slurm" and text.lower() in _SLURM_NO_LIMIT:
        return None
    m = _TIME[scheduler].fullmatch(text)
    if m is None:
        raise UsageError(f"--time {text!r}: use {_TIME_FORMATS[scheduler]}: {_NAMES[scheduler]} reads no other")
    fields = [int(f) for f in m.group("clock").split(":")]
    if m.groupdict().get("days") is not None:
        hours, minutes, seconds = (fields + [0, 0])[:3]
        total = int(m.group("days")) * 86400 + hours * 3600 + minutes * 60 + seconds
    elif len(fields) == 1:
        total = fields[0] * (60 if scheduler == "slurm" else 1)
    else:
        total = 0
        for field in fields:
            total = total * 60 + field
    if (m.groupdict().get("fraction") or "0")[0] >= "5":
        total += 1
    return total or None


def pbs_value(option: str, value: str) -> str:
    """A ``#PBS`` value: one word, because qsub ends it at white space (and PBS takes no job
    name with any), and without quotes or backslashes, which PBS versions read differently."""
    if not value or any(c.isspace() for c in value):
        raise UsageError(f"{option} {value!r}: must be one word: qsub ends a #PBS value at white space")
    if any(c in "'\"\\" for c in value):
        raise UsageError(f"{option} {value!r}: must be without quotes or backslashes: PBS versions read "
                         "them differently in a #PBS line, so they cannot be written in safely")
    return value


def sbatch_value(option: str, value: str) -> str:
    """A value as sbatch reads it back from an ``#SBATCH`` line, whatever it holds.

    sbatch splits the line with its own tokenizer: white space separates words
    unless quoted (with ' or "), a backslash escapes the next character, even
    in quotes, and an unquoted ``#`` starts a comment. A value holding any of
    those is written in double quotes with backslashes before ``"`` and ``\\``.
    Only what would end the line cannot be written in.
    """
    if "\0" in value:
        raise UsageError(f"{option} {value!r}: a NUL cannot be written into an #SBATCH line")
    if "\n" in value or "\r" in value:
        raise UsageError(f"{option} {value!r}: a line break cannot be written into an #SBATCH line")
    if value and not any(c.isspace() or c in "'\"\\#" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def directives(scheduler: str, *, job_name: str | None = None, time: str | None = None,
               partition: str | None = None, array: str | None = None, output: str | None = None,
               extra: Sequence[str] = ()) -> list[str]:
    """The ``#SBATCH``/``#PBS`` lines; ``extra`` (raw lines) come last so they can override."""
    given = {"--job-name": job_name, "--partition": partition, "--time": time, "--array": array,
             "--output": output}
    value_of = sbatch_value if scheduler == "slurm" else pbs_value
    values = {option: value_of(option, value) for option, value in given.items() if value is not None}
    if scheduler == "slurm":  # ddmq-template's options are named after SLURM's
        lines = [f"#SBATCH {option}={value}" for option, value in values.items()]
    else:
        flags = {"--job-name": "-N {}", "--partition": "-q {}", "--time": "-l walltime={}",
                 "--array": "-J {}", "--output": "-o {}"}
        lines = ["#PBS -S /bin/bash"]  # PBS may run the script with the login shell instead
        lines += [f"#PBS {flags[option].format(value)}" for option, value in values.items()]
        if output is not None:
            lines.append("#PBS -j oe")  # stderr into the same file, as SLURM's --output does
    prefix = _PREFIX[scheduler]
    for line in extra:
        if "\n" in line or "\r" in line or not line.startswith(prefix + " "):
            raise UsageError(f"--directive {line!r}: must be one line starting with '{prefix} '")
        lines.append(line)
    return lines


def find_notify() -> str | None:
    """The ``ddmq-notify`` installed with this ``ddmq-template``, else the one in PATH.

    The one beside the running interpreter (:func:`ddmq.console.beside_python`)
    is the same ddmq, and a real file.
    """
    import shutil

    return console.beside_python("ddmq-notify") or shutil.which("ddmq-notify")


def _template(name: str) -> str:
    return (resources.files("ddmq_hpc") / "templates" / name).read_text(encoding="utf-8")


def render(scheduler: str, command: Sequence[str], queue: str, *, root: str | os.PathLike[str] | None = None,
           job_name: str | None = None, time: str | None = None, partition: str | None = None,
           array: str | None = None, output: str | None = None, extra_directives: Sequence[str] = (),
           notify: str | None = None) -> str:
    """The job script for ``scheduler`` that runs ``command`` and publishes its event to ``queue``.

    ``root`` defaults as everywhere (``$DDMQ_ROOT``, else ``~/.ddmq``) but is
    written into the script as an absolute path, as is ``notify`` (default:
    :func:`find_notify`; a relative path is taken from the current directory,
    a bare name is left to the job's PATH): a job on a compute node may have
    neither the submitter's environment nor its PATH, nor its directory.
    """
    if scheduler not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {scheduler!r}: use one of {', '.join(SCHEDULERS)}")
    check_queue_name(queue)
    if not command:
        raise UsageError("no command: give it after '--'")
    limit = limit_seconds(scheduler, time) if time is not None else None
    lines = directives(scheduler, job_name=job_name, time=time, partition=partition, array=array,
                       output=output, extra=extra_directives)
    root_path = os.path.abspath(resolve_root(root)[0])
    if scheduler == "slurm":
        # What the controller and sacct keep about the job, even one cancelled
        # while pending that never runs a line: ddmq-reconcile finds the jobs it
        # watches by it. Last, so that an --directive cannot drop it.
        lines.append(f"#SBATCH --comment={sbatch_value('--comment', watch_tag(queue, root_path))}")
    else:
        # PBS keeps a job's variables (Variable_List), also in the history of
        # ended jobs. qsub takes only the last '#PBS -v' of a script: the tag
        # joins a list given with --directive rather than replace it.
        tag = f"{PBS_WATCH_VARIABLE}={pbs_watch_value(watch_tag(queue, root_path))}"
        given = [i for i, line in enumerate(lines) if line.startswith("#PBS -v ")]
        if given:
            lines[given[-1]] = f"{lines[given[-1]].rstrip()},{tag}"
        else:
            lines.append(f"#PBS -v {tag}")
    if notify is None:
        notify = find_notify() or ""
    if "/" in notify:  # a path, as the shell reads a command name; a bare name is looked up in PATH
        notify = os.path.abspath(os.path.expanduser(notify))
    values = {
        "notify": shlex.quote(notify),
        "root": shlex.quote(root_path),
        "queue": shlex.quote(queue),
        "time_limit": "" if limit is None else str(limit),
    }
    common = _ShellTemplate(_template("common.sh")).substitute(values)
    return _ShellTemplate(_template(f"{scheduler}.sh")).substitute(
        directives="\n".join(lines), common=common.rstrip("\n"), command=shlex.join(command))


@click.command(
    name=PROG, cls=console.Command, context_settings=console.CONTEXT,
    epilog="COMMAND is quoted: it runs as given, with nothing expanded; for shell syntax or job variables use "
           "-- bash -c '...'. Root: --root, else $DDMQ_ROOT, else ~/.ddmq, written into the script as an "
           "absolute path. The job's ddmq-notify creates QUEUE if it is missing.\n\n" + console.exit_codes_help({
               console.EXIT_OK: "printed",
               console.EXIT_ERROR: "the script could not be written",
               console.EXIT_USAGE: "usage error (bad option, a value the scheduler would not read)",
               console.EXIT_BROKEN_PIPE: "the reader of the output went away (broken pipe)",
           }),
)
@click.argument("scheduler", type=click.Choice(SCHEDULERS))
@click.argument("command", nargs=-1, required=True)
@click.option("--queue", required=True, help="Queue the completion event is published to.")
@console.root_option(help="ddmq root directory the job publishes to (default: $DDMQ_ROOT, else ~/.ddmq).")
@click.option("--job-name", help="Job name (#SBATCH --job-name, #PBS -N).")
@click.option("--time", help="Time limit (#SBATCH --time, #PBS -l walltime=).")
@click.option("--partition", help="Partition or queue to run in (#SBATCH --partition, #PBS -q).")
@click.option("--array", help="Array indices, e.g. 1-3 (#SBATCH --array, PBS Pro #PBS -J; "
                              "for Torque use --directive '#PBS -t 1-3').")
@click.option("--output", help="Job output file, stdout and stderr (#SBATCH --output, #PBS -o + -j oe).")
@click.option("--directive", "directives", multiple=True, metavar="LINE",
              help="A raw '#SBATCH ...' or '#PBS ...' line, after the others (repeatable).")
@click.option("--notify", metavar="PATH",
              help="ddmq-notify on the compute nodes (default: the one installed with this command; "
                   "the job falls back to PATH if it is not there).")
@console.common_options(PROG)
def command(scheduler: str, command: tuple[str, ...], queue: str, root: str | None, job_name: str | None,
            time: str | None, partition: str | None, array: str | None, output: str | None,
            directives: tuple[str, ...], notify: str | None) -> None:
    """Print a SLURM or PBS job script that runs COMMAND (given after '--') and then publishes a
    completion event (ddmq-notify) to QUEUE.

    The event has the command's exit status and state COMPLETED or FAILED, or
    CANCELLED or TIMEOUT when the job is cancelled or reaches its time limit.
    The job's exit status stays the command's. Submit it with sbatch or qsub.
    """
    if notify is None:
        notify = find_notify()
        if notify is None:
            console.say(PROG, "warning: ddmq-notify not found; the job will look for it in its PATH")
    script = render(scheduler, command, queue, root=root, job_name=job_name, time=time, partition=partition,
                    array=array, output=output, extra_directives=directives, notify=notify or "")
    try:
        console.echo(script, nl=False)
    except OSError as exc:  # a broken pipe is 141, as for every command; a full disk is one line
        if exc.errno == errno.EPIPE:
            raise
        raise DdmqError(f"cannot write the script: {console.os_reason(exc)}") from None


def main(argv: list[str] | None = None) -> None:
    """The ``ddmq-template`` console script."""
    code = console.run(command, argv)
    if code:
        sys.exit(code)
