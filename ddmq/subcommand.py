"""What every ``ddmq`` subcommand shares: its options, the exit codes in its help, how it runs an operation.

:mod:`ddmq.cli` (the group and the queue commands) and
:mod:`ddmq.cli_operator` (the operator's commands) are built from these, so
``--root``/``--format`` work before or after any subcommand, and every one
ends in the same way. Only click is imported at start-up: the broker and the
operations are imported by the command that runs.
"""
from __future__ import annotations

import click

from . import console

TYPE_CHECKING = False  # typing is for annotations only: it slows every command's start-up
if TYPE_CHECKING:
    from typing import Any, Callable

FORMATS = ("plain", "json", "yaml")
EXIT_CODES_HELP = f"""\b
Exit codes:
  {console.EXIT_OK}    success
  {console.EXIT_ERROR}    failure (storage error, bad settings file, foreign files, output
       that could not be written: consume gives back what it did not print,
       publish publishes nothing)
  {console.EXIT_USAGE}    usage error (bad option, invalid queue name or receipt)
  {console.EXIT_EMPTY}    nothing to consume or peek: the queue is empty
  {console.EXIT_NOT_FOUND}    root, queue or message not found
  {console.EXIT_LEASE_LOST}    lease lost: the message was requeued or acked by someone else
  {console.EXIT_INTERRUPTED}  interrupted (Ctrl-C)
  {console.EXIT_BROKEN_PIPE}  the reader of the output went away (broken pipe); nothing is said
"""


def options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--root``, ``--format`` and ``-v`` on every subcommand; they may also precede it."""
    func = click.option("-f", "--format", "fmt", type=click.Choice(FORMATS), default=None,
                        help="Output format (default: plain).")(func)
    return console.root_option(checked=True)(console.common_options("ddmq", version=False)(func))


def context(root: str | None, fmt: str | None, default_fmt: str = "plain") -> tuple[str | None, str]:
    """``--root``/``--format`` given after the subcommand win over those before it."""
    parent = click.get_current_context().find_root().params
    return root or parent.get("root"), fmt or parent.get("fmt") or default_fmt


def check_names(arguments: dict[str, Any]) -> None:
    """Refuse bad queue names before anything, even the root, is created."""
    from .layout import check_queue_name
    from .ops import split

    if "queue" in arguments:
        check_queue_name(arguments["queue"])
    if "queues" in arguments and arguments["queues"] is not None:
        for name in split(arguments["queues"]):
            check_queue_name(name)


def run(name: str, root: str | None, fmt: str | None, plain: Callable[[Any], str], /, **kwargs: Any) -> Any:
    """Run operation ``name`` of :data:`ddmq.ops.OPERATIONS` on ``kwargs``, print its result; return it."""
    from . import ops
    from .broker import Broker
    from .render import render

    root, fmt = context(root, fmt)
    check_names(kwargs)
    b = Broker(root, create=True if name == "create" or kwargs.get("create") else None)
    data = ops.OPERATIONS[name](b, **kwargs)
    render(data, fmt, plain)
    return data


def plain_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-0`` and ``--base64``: plain output that a shell loop can split, whatever the bodies hold."""
    func = click.option("--base64", "as_base64", is_flag=True,
                        help="Print each body as the base64 of its bytes (one line, whatever it holds; "
                             "binary bodies published with --base64 come out as they went in).")(func)
    return click.option("-0", "--null", is_flag=True,
                        help="End each message with a NUL, not a newline (for bodies with newlines; "
                             "xargs -0, read -d '').")(func)
