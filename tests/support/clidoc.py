"""``docs/cli.md``: the reference of every ddmq command, made from the installed commands' own ``--help``.

A reference written by hand drifts from the commands; this one is their
help text, so it says exactly what ``--help`` says. It lives with the tests,
not in the ``ddmq`` package, because the commands start at the end of every
batch job and carry nothing they do not need to run.
``tests/test_command_family.py`` fails when ``docs/cli.md`` differs from
what this gives, so a change to an option cannot go unrecorded.

Regenerate (from the checkout, with a Python environment where ddmq is installed)::

    python -m tests.support.clidoc

The subcommands of ``ddmq`` are read from ``ddmq --help``, so a new one is
in the reference as soon as it is in the command.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

COMMANDS = ("ddmq", "ddmq-notify", "ddmq-wait", "ddmq-template", "ddmq-dispatch", "ddmq-jobstate", "ddmq-reconcile")
CHECKOUT = Path(__file__).resolve().parents[2]
DOC = CHECKOUT / "docs" / "cli.md"
REGENERATE = "python -m tests.support.clidoc"
# Help is wrapped to the terminal's width: a fixed one makes the text the same everywhere.
WIDTH = "80"

HEADER = f"""\
# Command-line reference

<!-- Generated from the commands' own --help by tests/support/clidoc.py: do not edit by hand.
     Regenerate with `{REGENERATE}`; tests/test_command_family.py fails while it is out of date. -->

This page is the `--help` of every ddmq command, generated: regenerate it
with `{REGENERATE}` (from the checkout, with ddmq's virtual environment active)
after changing a command. All five commands share the conventions of
`ddmq/console.py`: `-h`/`--help`, `-V`/`--version`, `-v`/`--verbose`,
`-r`/`--root` (else `$DDMQ_ROOT`, else `~/.ddmq`), one-line errors on stderr
(`PROG: why`) and one table of exit codes. Times people read (events,
results, log lines) are ISO 8601 UTC.

## Shell completion

Each command completes its subcommands, options and choices in bash, zsh and
fish (click's completion). Add to `~/.bashrc`:

```sh
{{completion}}
```

For zsh use `zsh_source` instead of `bash_source`, for fish `fish_source`
(`_DDMQ_COMPLETE=fish_source ddmq > ~/.config/fish/completions/ddmq.fish`).
Running the command each time a shell starts costs a fraction of a second;
to avoid it, write the output to a file once and source that file.
"""


def completion_variable(command: str) -> str:
    """The environment variable that makes ``command`` print its completion script (click's name for it)."""
    return "_" + command.replace("-", "_").upper() + "_COMPLETE"


def executable(command: str) -> str:
    """The installed ``command`` of the running interpreter's environment, else the one in PATH."""
    beside = Path(sys.executable).parent / command
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(command)
    if found is None:
        raise SystemExit(f"clidoc: {command} is not installed (pip install -e . in this checkout)")
    return found


def help_text(*argv: str) -> str:
    """What ``argv --help`` prints, at the fixed WIDTH, without the user's ddmq settings.

    The command runs this checkout's code (PYTHONPATH), as the tests do,
    whichever checkout the environment's scripts were installed from.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("DDMQ_")}
    env["COLUMNS"] = WIDTH
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([executable(argv[0]), *argv[1:], "--help"], env=env, capture_output=True,
                          text=True, check=True)
    return done.stdout


def subcommands(group_help: str) -> list[str]:
    """The subcommand names of a click group's help (its ``Commands:`` section)."""
    lines = group_help.splitlines()
    start = lines.index("Commands:") + 1
    names = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        if not line.startswith("   "):  # a description wrapped onto the next line is indented further
            names.append(line.split()[0])
    return names


def render() -> str:
    """The whole of ``docs/cli.md`` as the installed commands give it now."""
    completion = "\n".join(f'eval "$({completion_variable(c)}=bash_source {c})"' for c in COMMANDS)
    parts = [HEADER.format(completion=completion)]
    for command in COMMANDS:
        text = help_text(command)
        parts.append(f"## {command}\n\n```\n{text.rstrip()}\n```\n")
        if command == "ddmq":
            for sub in subcommands(text):
                parts.append(f"### ddmq {sub}\n\n```\n{help_text(command, sub).rstrip()}\n```\n")
    return "\n".join(parts)


def main() -> None:
    """Rewrite ``docs/cli.md``."""
    DOC.write_text(render(), encoding="utf-8")
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
