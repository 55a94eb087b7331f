"""The ``ddmq`` command's entry point: a plain ``ddmq publish`` or ``ddmq consume`` without click.

``ddmq publish`` ends many batch jobs, ``ddmq consume`` runs in shell loops,
and importing click takes longer than either. So a command line made only of
what one of them accepts is parsed here and run by the function the click
command calls (:func:`ddmq.ops.publish_command`,
:func:`ddmq.ops.consume_command`), with the same output and exit codes.
Anything else -- help, version, another subcommand, an option or value this
parser does not handle -- goes untouched to click (:mod:`ddmq.cli`), which
also words the usage errors. Nothing is guessed: when in doubt, click decides.
"""
from __future__ import annotations

import os
import stat
import sys

from .ops import FORMATS, consume_command, exit_code_of, publish_command

TYPE_CHECKING = False  # typing is for annotations only: it slows every command's start-up
if TYPE_CHECKING:
    from typing import Any, Callable

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
_PUBLISH_NUMBERS = {"priority": int, "message_timeout": float, "requeue_prio": int, "requeue_limit": int}
_CONSUME_OPTIONS = {**_GROUP_OPTIONS, "-n": "count", "--lease": "lease"}
_CONSUME_FLAGS = {"--no-ack": ("no_ack", True)}
_CONSUME_NUMBERS = {"count": int, "lease": float}


class _Command:
    """What one subcommand accepts, and the function that runs it."""

    def __init__(self, run: Callable[..., None], options: dict[str, str], flags: dict[str, tuple[str, bool]],
                 numbers: dict[str, Callable[[str], Any]], arguments: Callable[[list[str]], dict[str, Any] | None]):
        self.run = run
        self.options = options
        self.flags = flags
        self.numbers = numbers
        self.arguments = arguments  # the positional arguments as parameters; None if click must word an error


def _publish_arguments(positional: list[str]) -> dict[str, Any] | None:
    return {"queue": positional[0], "messages": positional[1:]} if positional else None


def _consume_arguments(positional: list[str]) -> dict[str, Any] | None:
    return {"queue": positional[0]} if len(positional) == 1 else None


_COMMANDS = {
    "publish": _Command(publish_command, _PUBLISH_OPTIONS, _PUBLISH_FLAGS, _PUBLISH_NUMBERS, _publish_arguments),
    "consume": _Command(consume_command, _CONSUME_OPTIONS, _CONSUME_FLAGS, _CONSUME_NUMBERS, _consume_arguments),
}


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


def _parse(argv: list[str]) -> tuple[_Command, dict[str, Any]] | None:
    """The command and its function's arguments if ``argv`` is a publish or a consume this
    module can run exactly as click would; else None."""
    parsed = _options(argv, _GROUP_OPTIONS, {}, interspersed=False)
    if parsed is None or not parsed[1] or parsed[1][0] not in _COMMANDS:
        return None
    group, (name, *rest) = parsed
    command = _COMMANDS[name]
    parsed = _options(rest, command.options, command.flags, interspersed=True)
    if parsed is None:
        return None
    options, positional = parsed
    arguments = command.arguments(positional)
    if arguments is None:  # a missing QUEUE, or one argument too many: click says which
        return None
    for given in (group, options):
        if given.get("fmt", "plain") not in FORMATS or not _click_accepts_root(given.get("root")):
            return None
    try:
        numbers = {name: convert(options.pop(name)) for name, convert in command.numbers.items() if name in options}
    except ValueError:  # click's int and float types convert with int() and float() too
        return None
    if numbers.get("count", 1) < 1:  # consume's -n is click.IntRange(min=1)
        return None
    return command, {
        # as cli._context: --root and --format after the subcommand win over those before it
        "root": options.pop("root", None) or group.get("root"),
        "fmt": options.pop("fmt", None) or group.get("fmt") or "plain",
        **arguments, **options, **numbers,
    }


def _run(command: _Command, args: dict[str, Any]) -> None:
    """Run the command; end as the click command would (``cli._Group``: :func:`ddmq.ops.exit_code_of`)."""
    code = exit_code_of(lambda: command.run(**args))
    if code is not None:
        sys.exit(code)


def main() -> None:
    """The ``ddmq`` command: a plain publish or consume here, anything else through click."""
    # click answers shell completion (the _DDMQ_COMPLETE variable) before it parses anything
    parsed = None if os.environ.get("_DDMQ_COMPLETE") else _parse(sys.argv[1:])
    if parsed is None:
        from .cli import main as click_main

        click_main()
    else:
        _run(*parsed)
