"""What is in a queue, file by file, for the person looking after it: stats, entries, repair.

Consumers only ever look at the head of ``ready/``; an operator needs the
rest: how old the oldest waiting message is, how many leases expired without
anyone noticing, what one message id is doing, why each dead letter died —
including files that are not valid messages at all, which a consumer can
only dead-letter — and a way to put dead letters back. Everything here reads
names first (the state is in the name, see :mod:`ddmq.layout`) and payloads
only where a message is shown.
"""
from __future__ import annotations

import json
import time

from . import atomic
from .errors import NotFound, StorageError, UsageError
from .layout import (
    DEAD, READY, REASON_SUFFIX, WORK, ReadyName, WorkName, parse_dead, parse_in, parse_ready, parse_work,
)
from .log import logger
from .message import CorruptMessage
from .transitions import read

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable

    from .message import Message
    from .queuedir import Queue

# A .reason record is a few hundred bytes; anything longer was not written by ddmq.
MAX_REASON_BYTES = 64 << 10


class Entry:
    """One file in a queue's ``ready/``, ``work/`` or ``dead/`` as an operator sees it.

    ``message`` is the payload when it is a valid message this user may read,
    else ``problem`` says why not. For ``work/``, ``lease_expires`` is when
    the claim runs out; for ``dead/``, ``reason``, ``dead_at`` and ``detail``
    say why and when it was dead-lettered.
    """

    def __init__(self, state: str, name: str):
        self.state = state
        self.name = name
        self.id: str | None = None
        self.priority: int | None = None
        self.requeues: int | None = None
        self.lease_expires: int | None = None
        self.reason: str | None = None
        self.dead_at: int | None = None
        self.detail: str | None = None
        self.message: Message | None = None
        self.problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Everything, for JSON/YAML output; stable keys, times in ns since the epoch."""
        data = {k: getattr(self, k) for k in ("state", "name", "id", "priority", "requeues", "lease_expires",
                                                "reason", "dead_at", "detail", "problem")}
        data["message"] = self.message.to_dict() if self.message is not None else None
        return data


def _named(entry: Entry, parsed: ReadyName | WorkName | None) -> None:
    if parsed is not None:
        entry.id, entry.priority, entry.requeues = parsed.id, parsed.priority, parsed.requeues
        if isinstance(parsed, WorkName):
            entry.lease_expires = parsed.expires


def entry(q: Queue, state: str, directory: atomic.Dir, name: str, with_message: bool = True) -> Entry:
    """The entry for ``name`` in ``directory`` (``state``'s, or a slot of ready/), its payload read if ``with_message``."""
    found = Entry(state, name)
    if state == DEAD:
        dead = parse_dead(name)
        if dead is not None:
            found.reason, found.dead_at = dead.reason, dead.dead_at
            _named(found, dead.message)
            found.detail = _reason_detail(q, name)
        else:
            found.problem = "not a ddmq dead-letter name"
    else:
        parsed = parse_in(state, name)
        _named(found, parsed)
        if parsed is None:
            found.problem = f"not a ddmq {state} name (a consumer or clean will dead-letter it)"
    if with_message and found.problem is None:
        try:
            found.message = read(directory, name, found.id)
        except CorruptMessage as exc:
            found.problem = str(exc)
        except StorageError as exc:
            found.problem = str(exc)
        if found.message is not None:
            msg = found.message
            msg.priority = found.priority if found.priority is not None else msg.priority
            msg.requeues = found.requeues if found.requeues is not None else msg.requeues
    return found


def _reason_detail(q: Queue, dead: str) -> str | None:
    """The detail from a dead letter's ``.reason`` record, if there is a readable one."""
    try:
        data = atomic.read_file(q.dead, dead + REASON_SUFFIX, MAX_REASON_BYTES)
        record = json.loads(data) if data else None
    except (OSError, ValueError):
        return None
    detail = record.get("detail") if isinstance(record, dict) else None
    return detail if isinstance(detail, str) else None


def listed(q: Queue, state: str) -> list[tuple[atomic.Dir, str]]:
    """Every entry of ``state`` with its directory, ``.reason`` records left out, in name order.

    For ready/, its messages in delivery order, then anything in its tree
    that fits no name grammar (where it lies).
    """
    if state == READY:
        messages, foreign = q.tree.contents()
        return messages + foreign
    directory = q.state(state)
    return [(directory, name) for name in sorted(atomic.listdir(directory)) if not name.endswith(REASON_SUFFIX)]


def entries(q: Queue, state: str, n: int | None = None) -> list[Entry]:
    """Up to ``n`` entries of ``state`` in name order (delivery order for ready/, age for dead/)."""
    return [entry(q, state, directory, name) for directory, name in listed(q, state)[:n]]


def find(q: Queue, message_id: str) -> Entry:
    """The message ``message_id`` wherever it is now (ready, work or dead), or NotFound."""
    for state in (READY, WORK, DEAD):
        for directory, name in listed(q, state):
            if message_id in name:
                found = entry(q, state, directory, name, with_message=False)
                if found.id == message_id:
                    return entry(q, state, directory, name)
    raise NotFound(f"no message {message_id} in queue {q.name!r} (acked, purged, or never published here)")


def dead_letters(q: Queue) -> list[str]:
    """The names of the dead letters in dead/, their ``.reason`` records left out."""
    return [n for n in atomic.listdir(q.dead) if not n.endswith(REASON_SUFFIX)]


def _names(q: Queue) -> tuple[list[str], list[str], list[str]]:
    """The names in ready/ (its whole tree), work/ and dead/ (``.reason`` records left out)."""
    return [name for _, name in listed(q, READY)], atomic.listdir(q.work), dead_letters(q)


def counts(q: Queue) -> dict[str, int]:
    """How many messages are ready, in work (leased) and dead."""
    ready, work, dead = _names(q)
    return {"ready": len(ready), "work": len(work), "dead": len(dead)}


def stats(q: Queue) -> dict[str, Any]:
    """Counts, the age of the oldest ready message (s) and how many leases have expired."""
    ready, work, dead = _names(q)
    published = [p.published for p in map(parse_ready, ready) if p is not None]
    now = q.now()
    return {
        "ready": len(ready), "work": len(work), "dead": len(dead),
        "oldest_ready_age": max(0.0, (time.time_ns() - min(published)) / 1e9) if published else None,
        "expired_leases": sum(1 for w in map(parse_work, work) if w is not None and w.expires <= now),
    }


def requeue_dead(q: Queue, ids: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """Move dead letters back to ready/, with a fresh requeue count; (ids requeued, names skipped).

    With ``ids``, exactly those (NotFound for one that is not dead here);
    without, every dead letter except ``corrupt`` ones, which would only be
    dead-lettered again. Each move is one rename from dead/ to a fresh
    ready/ name (the original priority and publish time, requeue count 0),
    so a message is never in both places; the ``.reason`` record is removed
    after it. A file whose original name was not a message's cannot be
    requeued and is skipped.
    """
    wanted = set(ids) if ids is not None else None
    requeued: list[str] = []
    skipped: list[str] = []
    for name in sorted(atomic.listdir(q.dead)):
        dead = parse_dead(name)
        original = dead.message if dead is not None else None
        if wanted is not None and (original is None or original.id not in wanted):
            continue
        if dead is None or original is None:
            if not name.endswith(REASON_SUFFIX):
                skipped.append(name)
            continue
        if wanted is None and dead.reason == "corrupt":
            skipped.append(name)
            continue
        fresh = str(ReadyName(original.priority, original.published, original.id, 0))
        if q.tree.move_in(q.dead, name, fresh):
            q.readied(fresh)
            atomic.remove(q.dead, name + REASON_SUFFIX)
            requeued.append(original.id)
            logger().info("requeued dead letter %s/dead/%s (%s) as ready/%s", q.dir.path, name, dead.reason, fresh)
    missing = (wanted or set()) - set(requeued)
    if missing:
        raise NotFound(f"not dead in queue {q.name!r}: {', '.join(sorted(missing))}"
                       + (f" ({len(requeued)} requeued)" if requeued else ""))
    return requeued, skipped


def check_ids(ids: Iterable[object]) -> list[str]:
    """Message ids as given on a command line: 32 hex digits each, or UsageError."""
    checked = []
    for message_id in ids:
        if not isinstance(message_id, str) or len(message_id) != 32 or \
                any(c not in "0123456789abcdef" for c in message_id):
            raise UsageError(f"invalid message id {message_id!r}: expected 32 hex digits as printed by publish")
        checked.append(message_id)
    return checked
