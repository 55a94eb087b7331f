"""What the ``ddmq`` command prints: plain text for people and shell loops, JSON or YAML for programs.

Plain output is for reading and for ``while read`` loops, so its rules are
few and fixed: one message per line (or per NUL with ``-0``), tables with a
header line, times in ISO 8601 UTC (:func:`ddmq.console.utc_time`) and ages
as ``3m12s``. JSON and YAML carry the same data whole, times as integer
nanoseconds since the epoch, ages as seconds.

A binary body travels as base64 text with the header
``content-transfer-encoding: base64`` (a JSON payload holds text only):
``ddmq publish --base64`` makes one, and ``--base64`` on consume or peek prints
every body as the base64 of its bytes, so ``ddmq consume q --base64 | base64
-d`` gives back what was published, text or binary.
"""
from __future__ import annotations

import errno
import json
import sys

from .console import EXIT_BROKEN_PIPE, body_text, echo, os_reason, silence, utc_time
from .errors import DdmqError

TYPE_CHECKING = False  # typing is for annotations only: it slows every command's start-up
if TYPE_CHECKING:
    from typing import Any, Callable

# The header that says a body is base64 text standing for bytes.
TRANSFER_ENCODING = "content-transfer-encoding"


class OutputFailed(DdmqError):
    """stdout did not take the output; ``outcome`` says what became of the messages.

    A broken pipe exits 141 without a word: the reader that closed it asked
    for no more, and stderr may be the same pipe. Anything else (a full disk,
    an unencodable character) exits 1 with one line.
    """

    def __init__(self, cause: Exception, outcome: str = ""):
        self.cause = cause
        if isinstance(cause, OSError) and cause.errno == errno.EPIPE:
            self.exit_code = EXIT_BROKEN_PIPE
            super().__init__("")
            return
        reason = os_reason(cause) if isinstance(cause, OSError) else str(cause)
        super().__init__(f"cannot write output: {reason}" + (f"; {outcome}" if outcome else ""))

    def saying(self, outcome: str) -> OutputFailed:
        return OutputFailed(self.cause, outcome)


def write(text: str, nl: bool = True) -> None:
    """:func:`echo` to stdout; OutputFailed if stdout does not take all of it (or was closed)."""
    try:
        if sys.stdout is None:  # started with stdout closed: nothing can be delivered
            raise OSError(errno.EBADF, "stdout is closed")
        echo(text, nl=nl)
    except BaseException as exc:
        # Nothing more goes to stdout: what is left in its buffer (part of a
        # message now given back) must go nowhere, not out, or fail again, at exit.
        silence(sys.stdout)
        if isinstance(exc, (OSError, UnicodeError)):
            raise OutputFailed(exc) from None
        raise


def render(data: Any, fmt: str, plain: Callable[[Any], str], end: str = "\n") -> None:
    """Print ``data`` in ``fmt`` (``plain`` makes the plain text, ended by ``end``); OutputFailed if refused."""
    if fmt == "json":
        write(json.dumps(data, ensure_ascii=False, sort_keys=True))
    elif fmt == "yaml":
        import yaml

        write(yaml.safe_dump(data, allow_unicode=True, sort_keys=True, default_flow_style=False), nl=False)
    else:
        text = plain(data)
        if text:
            write(text + end, nl=False)


# ------------------------------------------------------------------ plain text
def plain_table(rows: list[dict[str, Any]], columns: list[str], end: str = "\n") -> str:
    """``rows`` as aligned columns under a header line; lines joined by ``end``."""
    if not rows:
        return ""
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths)).rstrip() for r in rows]
    return end.join(lines)


def body_base64(body: Any, headers: dict[str, Any] | None) -> str:
    """The body's bytes in base64: as stored if it came base64-encoded, else its text's UTF-8."""
    if (headers or {}).get(TRANSFER_ENCODING) == "base64" and isinstance(body, str):
        return body
    import base64

    return base64.b64encode(body_text(body).encode()).decode("ascii")


def plain_message(row: dict[str, Any], base64: bool = False, receipt: bool = False) -> str:
    """One message of plain consume/peek output: its body as text (or base64), after its receipt if asked."""
    text = body_base64(row["message"], row.get("headers")) if base64 else body_text(row["message"])
    return f"{row['receipt']}\t{text}" if receipt else text


def duration(seconds: float | None) -> str:
    """An age or a time span as people read it at a glance: 42s, 3m12s, 5h07m, 2d03h; ``-`` for none."""
    if seconds is None:
        return "-"
    s = int(abs(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def one_line(text: Any) -> str:
    """A value for a table cell or a ``key: value`` line: never more than one line."""
    return "-" if text is None or text == "" else str(text).replace("\r", "\\r").replace("\n", "\\n")


def view_table(rows: list[dict[str, Any]]) -> str:
    """``ddmq view``: counts, the age of the oldest ready message, and leases that ran out."""
    shown = [{**r, "oldest": duration(r["oldest_ready_age"]), "expired": r["expired_leases"]} for r in rows]
    return plain_table(shown, ["queue", "ready", "work", "dead", "oldest", "expired"])


def dead_table(rows: list[dict[str, Any]], end: str = "\n") -> str:
    """``ddmq peek --state dead``: when, why and after how many requeues each dead letter died."""
    shown = [{"dead_at": utc_time(r["dead_at"]), "reason": one_line(r["reason"]),
              "requeues": one_line(r["requeues"]), "id": r["id"] or r["name"],
              "detail": one_line(r["detail"] or r["problem"])} for r in rows]
    return plain_table(shown, ["dead_at", "reason", "requeues", "id", "detail"], end)


def lease_text(expires: int | None, now: int) -> str:
    """When a lease runs out, and how long from ``now`` that is."""
    if expires is None:
        return "-"
    left = (expires - now) / 1e9
    return f"{utc_time(expires)} ({'in ' + duration(left) if left > 0 else 'expired ' + duration(left) + ' ago'})"


def show_text(row: dict[str, Any], now: int) -> str:
    """``ddmq show``: one message (or file) as ``key: value`` lines, its body last, as it is."""
    lines = [("state", row["state"]), ("id", row["id"]), ("file", f"{row['state']}/{row['name']}"),
             ("priority", row["priority"]), ("requeues", row["requeues"])]
    if row["state"] == "work":
        lines.append(("lease expires", lease_text(row["lease_expires"], now)))
    if row["state"] == "dead":
        lines += [("dead since", utc_time(row["dead_at"])), ("dead reason", row["reason"]),
                  ("dead detail", row["detail"])]
    if row.get("problem"):
        lines.append(("problem", row["problem"]))
    if row.get("published") is not None:
        lines += [("published", f"{utc_time(row['published'])} by {row['host']} (pid {row['pid']})"),
                  ("headers", " ".join(f"{k}={v}" for k, v in sorted(row["headers"].items())) or None)]
    text = "\n".join(f"{key + ':':<14} {one_line(value)}" for key, value in lines)
    return text + (f"\n{'body:':<14} {body_text(row['message'])}" if row.get("published") is not None else "")
