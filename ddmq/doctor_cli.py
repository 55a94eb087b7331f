"""The ``ddmq doctor`` subcommand: :func:`ddmq.doctor.diagnose` from the shell.

Kept apart from the checks so that the checks can be used without click,
and the ``ddmq`` group can register this command with one ``add_command``.
"""
from __future__ import annotations

import click

from .doctor import OK, PROBLEM, WARNING, Finding, diagnose, plural

EXIT_HEALTHY, EXIT_FINDINGS = 0, 1
DOCTOR_EPILOG = """\b
Exit codes:
  0    every check is ok
  1    at least one warning or problem (each printed with its fix)
  2    usage error (bad option or queue name)
  4    root or queue not found
"""


def healthy(findings: list[Finding]) -> bool:
    """Warnings count: a script running ``ddmq doctor || alert`` wants to hear of a 60 s NFS cache too."""
    return all(f.severity == OK for f in findings)


def plain(findings: list[Finding]) -> str:
    """One line per finding, its fix under anything not ok, then a summary."""
    lines = []
    for f in findings:
        lines.append(f"{f.severity if f.severity == OK else f.severity.upper():8} {f.check:13} {f.found}")
        if f.fix:
            lines.append(f"{'':22} fix: {f.fix}")
    problems, warnings = (plural(sum(f.severity == s for f in findings), s) for s in (PROBLEM, WARNING))
    lines.append("healthy" if healthy(findings) else f"{problems}, {warnings}")
    return "\n".join(lines)


@click.command("doctor", context_settings={"help_option_names": ["-h", "--help"]}, epilog=DOCTOR_EPILOG)
@click.option("-r", "--root", type=click.Path(file_okay=False), default=None,
              help="Root directory (default: $DDMQ_ROOT, else ~/.ddmq).")
@click.option("-f", "--format", "fmt", type=click.Choice(["plain", "json", "yaml"]), default=None,
              help="Output format (default: plain).")
@click.argument("queues", nargs=-1)
def doctor(root: str | None, fmt: str | None, queues: tuple[str, ...]) -> None:
    """Check that the root's filesystem, clock, permissions and QUEUES (default: all) suit ddmq.

    \b
    Each check says what it found, and how to fix it when it is not ok:
      filesystem    type and mount options: ext4 without a journal, the NFS
                    and sshfs directory caches, tmpfs, read-only mounts
      space         free space and inodes
      clock         this host's clock against the file server's
      permissions   a setgid root and queue groups when `mode` shares queues
      (per queue)   foreign files, expired leases nobody requeues, dead letters
    Nothing is changed: the only file written is a clock probe, removed at once.
    """
    from .ops import exit_code_of, render

    ctx = click.get_current_context()
    outer = ctx.find_root().params  # --root and --format may also precede the subcommand
    root, fmt = root or outer.get("root"), fmt or outer.get("fmt") or "plain"
    findings: list[Finding] = []

    def run() -> None:
        findings.extend(diagnose(root, queues))
        render([f.as_dict() for f in findings], fmt, lambda rows: plain(findings))

    code = exit_code_of(run)
    ctx.exit(code if code is not None else EXIT_HEALTHY if healthy(findings) else EXIT_FINDINGS)
