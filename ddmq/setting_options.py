"""The command-line options that mirror queue settings, and ``KEY=VALUE`` settings, for every ddmq command.

Generated from :data:`ddmq.settings.SCHEMA`, so a setting's default and valid
values are written once: ``ddmq create --message-timeout``, ``ddmq publish
-p``, ``ddmq-notify --priority`` and ``ddmq settings q priority=5`` all read
a value the same way, and the core checks it as it checks a settings file.
"""
from __future__ import annotations

import click

from .errors import UsageError
from .settings import SCHEMA

TYPE_CHECKING = False  # typing is for annotations only
if TYPE_CHECKING:
    from typing import Any, Callable


# Options that mirror a queue setting: the flags and value type each has on
# the command line, and what it means. Defaults and valid values come from
# ddmq.settings.SCHEMA, and the core checks the values, as for a settings file.
_SETTING_OPTIONS: dict[str, tuple[tuple[str, ...], Any, str]] = {
    "priority": (("-p",), int, "Priority, 0 is served first"),
    "message_timeout": ((), float, "Lease length in seconds"),
    "requeue": ((), bool, "Requeue expired or nacked messages, or dead-letter them"),
    "requeue_prio": ((), int, "Priority a requeued message gets"),
    "requeue_limit": ((), int, "Requeues before dead-lettering"),
    "durable": ((), bool, "fsync each message before it becomes visible"),
    "clean_interval": ((), float, "Seconds between consumers' housekeeping"),
    "mode": ((), str, "Mode of the queue's files (0660 for a queue shared by a group)"),
}


def setting_value(key: str, text: str) -> Any:
    """``text`` (from ``KEY=VALUE``) as a value of setting ``key``, typed as its option is; UsageError if not.

    ``none`` (or ``null``) is no value, for the settings that may have none;
    whether the value is valid is the core's to say, as for a settings file.
    """
    if key not in _SETTING_OPTIONS:
        raise UsageError(f"unknown setting {key!r} (known: {', '.join(_SETTING_OPTIONS)})")
    kind = _SETTING_OPTIONS[key][1]
    if text.strip().lower() in ("none", "null") and SCHEMA[key][0] is None:
        return None
    try:
        return click.BOOL.convert(text, None, None) if kind is bool else kind(text)
    except (ValueError, click.BadParameter):
        raise UsageError(f"invalid value {text!r} for {key}: expected {SCHEMA[key][2]}") from None


def setting_help(key: str, meaning: str | None = None) -> str:
    """Help for an option that sets ``key``: what it means, its valid values and its default."""
    default, _, valid = SCHEMA[key]
    meaning = meaning or _SETTING_OPTIONS[key][2]
    if isinstance(default, bool):  # a --key/--no-key pair: the valid values go without saying
        return f"{meaning} (default: --{'' if default else 'no-'}{key.replace('_', '-')})."
    return f"{meaning}: {valid} (default: {'none' if default is None else default})."


def setting_option(key: str, type: Any = None, help: str | None = None) -> Callable[[Callable[..., Any]], Any]:
    """The option that sets queue setting ``key`` (``--message-timeout``), None unless given.

    A boolean setting is a ``--requeue/--no-requeue`` pair. ``type`` and
    ``help`` replace the usual value type and meaning (``ddmq-notify``
    checks ``--priority`` while parsing).
    """
    flags, kind, _ = _SETTING_OPTIONS[key]
    long = "--" + key.replace("_", "-")
    if kind is bool:
        return click.option(f"{long}/--no-{long[2:]}", key, default=None, help=setting_help(key, help))
    return click.option(*flags, long, key, type=type or kind, default=None, help=setting_help(key, help))


def setting_options(*keys: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """:func:`setting_option` for each of ``keys``, in that order in the help."""
    def add(func: Callable[..., Any]) -> Callable[..., Any]:
        for key in reversed(keys):
            func = setting_option(key)(func)
        return func
    return add
