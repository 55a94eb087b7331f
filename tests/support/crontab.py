"""A crontab example as cron would run it: its variable lines and its one command, with a test's paths."""
from __future__ import annotations

import re
from pathlib import Path


def cron_entry(example: Path, replacements: dict[str, str]) -> tuple[list[str], str]:
    """The ``NAME=value`` lines and the one command line of ``example``, each placeholder path replaced.

    The command is what follows the five time fields; a ``%`` in it would be
    turned into a newline by cron, so an example must not have one.
    """
    assignments, commands = [], []
    for line in example.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        for placeholder, path in replacements.items():
            line = line.replace(placeholder, path)
        if re.match(r"[A-Za-z_][A-Za-z0-9_]*=", line):
            assignments.append(line)
        else:
            command = line.split(None, 5)[5]
            assert "%" not in command  # cron would turn it into a newline
            commands.append(command)
    [command] = commands
    return assignments, command
