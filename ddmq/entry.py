"""The ``ddmq`` command's entry point: a plain ``ddmq publish`` without click.

``ddmq publish`` ends many batch jobs, and importing click takes longer than
the publish itself. So a command line made only of what ``ddmq publish``
accepts is parsed here and run by the function the click command calls,
:func:`ddmq.ops.publish_command`, with the same output and exit codes.
Anything else -- help, version, another subcommand, an option or value this
parser does not handle -- goes untouched to click (:mod:`ddmq.cli`), which
also words the usage errors. Nothing is guessed: when in doubt, click decides.
"""
from __future__ import annotations

import errno
import os
import stat
import sys

from .errors import DdmqError
from .ops import EXIT_ERROR, FORMATS, failed, publish_command

TYPE_CHECKING = False  # typing is for annotations only: it slows every command's start-up
if TYPE_CHECKING:
    from typing import Any

# Options that take a value, and flags (with the value they set): name on the
# command line -> parameter of publish_command.
_GROUP_OPTIONS = {"-r": "root", "--root": "root", "-f": "fmt", "--format": "fmt"}
_PUBLISH_OPTIONS = {
    **_GROUP_OPTIONS, "-H": "headers", "--header": "headers", "-p": "priority", "--priority": "priority",
    "--message-timeout": "message_timeout", "--requeue-prio": "requeue_prio", "--requeue-limit": "requeue_limit",
}
_PUBLISH_FLAGS = {
    "--json": ("as_json", True), "-c": ("create", True), "--create": ("create", True),
    "--requeue": ("requeue", True), "--no-requeue": ("requeue", False),
    "--durable": ("durable", True), "--no-durable": ("durable", False),
}
_NUMBERS = {"priority": int, "message_timeout": float, "requeue_prio": int, "requeue_limit": int}


def _options(args: list[str], options: dict[str, str], flags: dict[str, tuple[str, bool]],
             interspersed: bool) -> tuple[dict[str, Any], list[str]] | None:
    """Split ``args`` into options and positional arguments as click's parser does.

    An option's value is the next argument, whatever it looks like, or what
    follows ``=`` in a long option. Without ``interspersed`` the first
    positional argument ends the options, and it and all after it are
    returned. None for what is left to click: ``--``, unknown options
    (``-h``, ``--help`` and ``-v`` among them), bundled short options or
    attached values (``-cp5``), a flag given a value, a missing value, an
    option given twice (only ``-H`` may repeat).
    """
    found: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "-" or not arg.startswith("-"):
            if not interspersed:
                return found, args[i - 1:]
            positional.append(arg)
            continue
        name, equals, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name in options:
            if not equals:
                if i == len(args):
                    return None
                value = args[i]
                i += 1
            param = options[name]
        elif name in flags and not equals:
            param, value = flags[name]
        else:
            return None
        if param == "headers":
            found.setdefault(param, []).append(value)
        elif param in found:
            return None
        else:
            found[param] = value
    return found, positional


def _click_accepts_root(path: str | None) -> bool:
    """What ``--root``'s ``click.Path(file_okay=False)`` lets through: a missing path or a readable non-file."""
    if path is None:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return True
    return not stat.S_ISREG(mode) and os.access(path, os.R_OK)


def _parse_publish(argv: list[str]) -> dict[str, Any] | None:
    """The arguments of :func:`publish_command` if ``argv`` is a publish this module can run
    exactly as click would; else None."""
    parsed = _options(argv, _GROUP_OPTIONS, {}, interspersed=False)
    if parsed is None or parsed[1][:1] != ["publish"]:
        return None
    group = parsed[0]
    parsed = _options(parsed[1][1:], _PUBLISH_OPTIONS, _PUBLISH_FLAGS, interspersed=True)
    if parsed is None or not parsed[1]:  # no QUEUE: click says what is missing
        return None
    options, positional = parsed
    for given in (group, options):
        if given.get("fmt", "plain") not in FORMATS or not _click_accepts_root(given.get("root")):
            return None
    try:
        numbers = {name: convert(options.pop(name)) for name, convert in _NUMBERS.items() if name in options}
    except ValueError:  # click's int and float types convert with int() and float() too
        return None
    return {
        # as cli._context: --root and --format after the subcommand win over those before it
        "root": options.pop("root", None) or group.get("root"),
        "fmt": options.pop("fmt", None) or group.get("fmt") or "plain",
        "queue": positional[0], "messages": positional[1:], **options, **numbers,
    }


def _publish(args: dict[str, Any]) -> None:
    """Run the publish; end as the click command would (``_Group.invoke`` and click's ``main``)."""
    try:
        try:
            publish_command(**args)
        except (DdmqError, KeyboardInterrupt) as exc:
            sys.exit(failed(exc))
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        # The reader of stdout or stderr went away: exit 1 quietly, and let
        # Python's own flush of them at exit go nowhere instead of failing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
        sys.exit(EXIT_ERROR)


def main() -> None:
    """The ``ddmq`` command: a plain publish here, anything else through click."""
    # click answers shell completion (the _DDMQ_COMPLETE variable) before it parses anything
    args = None if os.environ.get("_DDMQ_COMPLETE") else _parse_publish(sys.argv[1:])
    if args is None:
        from .cli import main as click_main

        click_main()
    else:
        _publish(args)
