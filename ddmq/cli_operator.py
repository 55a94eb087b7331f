"""The operator's subcommands of ``ddmq``: one message by id, release, requeue of dead letters, settings.

For the person looking after a queue rather than the programs using it:
what a message is doing and why, how to put it back, and what the queue's
settings are and where they come from. Registered on the ``ddmq`` group by
:mod:`ddmq.cli`, with the conventions of :mod:`ddmq.subcommand`.
"""
from __future__ import annotations

import click

from . import console
from .subcommand import EXIT_CODES_HELP, options, run

TYPE_CHECKING = False  # typing is for annotations only: it slows every command's start-up
if TYPE_CHECKING:
    from typing import Any


@click.command(cls=console.Command, epilog=EXIT_CODES_HELP)
@options
@click.argument("queue")
@click.argument("message_id", metavar="ID")
def show(root: str | None, fmt: str | None, queue: str, message_id: str) -> None:
    """Print one message of QUEUE by ID, in whatever state it is: ready, work or dead.

    \b
    Shows its state and file, priority and requeue count, when its lease
    expires (UTC, and how long from now) if it is in work, why and when it
    was dead-lettered if dead, who published it and when, and its body.
    Which consumer holds a lease is not recorded (the protocol keeps no
    holder host or pid): a lease that expired long ago is a consumer gone.
    Exit 4 if no state of QUEUE holds ID (acked, purged, never published).
    """
    import time

    from .render import show_text

    run("show", root, fmt, lambda row: show_text(row, time.time_ns()), queue=queue, message_id=message_id)


@click.command(cls=console.Command, epilog=EXIT_CODES_HELP)
@options
@click.argument("queue")
@click.argument("messages", nargs=-1, required=True, metavar="ID...")
def release(root: str | None, fmt: str | None, queue: str, messages: tuple[str, ...]) -> None:
    """Put leased messages back in ready, as they were, by ID (or RECEIPT): an operator's un-claim.

    For a message whose consumer hangs or is gone: no receipt is needed, and
    unlike nack no requeue is spent. Its consumer, if still alive, loses the
    lease (its ack fails with exit 5).
    """
    run("release", root, fmt, lambda rows: "", queue=queue, messages=list(messages))


@click.command(cls=console.Command, epilog=EXIT_CODES_HELP)
@options
@click.argument("queue")
@click.argument("ids", nargs=-1, metavar="[ID...]")
@click.option("--dead", is_flag=True, help="Requeue dead letters (required: the only kind there is).")
def requeue(root: str | None, fmt: str | None, queue: str, ids: tuple[str, ...], dead: bool) -> None:
    """Move dead letters of QUEUE back to ready: those IDs, or all but corrupt ones.

    Each goes back with its priority and a fresh requeue count. Files that
    cannot be delivered (corrupt, or not ddmq messages) are skipped and
    named: look at them with `ddmq peek QUEUE --state dead`, remove them with
    `ddmq purge QUEUE --dead`. Exit 4 if an ID is not a dead letter of QUEUE.
    """
    def plain(result: dict[str, Any]) -> str:
        text = f"requeued {len(result['requeued'])} dead letter(s)"
        skipped = result["skipped"]
        return text + (f"; skipped {len(skipped)} (corrupt or not a message): {', '.join(skipped)}" if skipped else "")

    run("requeue", root, fmt, plain, queue=queue, dead=dead, ids=list(ids) or None)


def _as_written(value: Any) -> str:
    """A setting's value as a settings file (YAML) or ``ddmq settings KEY=VALUE`` writes it."""
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@click.command(cls=console.Command, epilog=EXIT_CODES_HELP)
@options
@click.argument("queue")
@click.argument("changes", nargs=-1, metavar="[KEY=VALUE...]")
@click.option("--unset", multiple=True, metavar="KEY", help="Remove KEY from the queue's file (repeatable).")
def settings(root: str | None, fmt: str | None, queue: str, changes: tuple[str, ...], unset: tuple[str, ...]) -> None:
    """Show QUEUE's effective settings and where each comes from; KEY=VALUE changes them.

    \b
    SOURCE is "default", "root" (ROOT/ddmq.yaml: defaults for every queue)
    or "queue" (the queue's own ddmq.yaml). KEY=VALUE writes the queue's
    file (atomically: every client reads the old settings or the new);
    --unset KEY removes a key from it, so the root's value or the default
    applies again. Values as the create options take them: numbers, true or
    false, mode in octal (0660), none for no requeue_limit. New settings
    apply to messages published afterwards.
    """
    from .render import plain_table

    values = {key: console.setting_value(key, text) for key, text in console.parse_pairs(changes, "setting").items()}
    run("settings", root, fmt, lambda rows: plain_table([{**r, "value": _as_written(r["value"]), "file": r["file"] or "-"}
                                                          for r in rows], ["key", "value", "source", "file"]),
         queue=queue, values=values or None, unset=list(unset) or None)
