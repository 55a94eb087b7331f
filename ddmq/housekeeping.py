"""Housekeeping: what a crashed or careless client leaves behind, put right by whoever comes next.

There is no server to do it, so every client takes a share: :func:`maybe_clean`
runs a pass on a queue when nobody has in the last ``clean_interval``
seconds (the queue's ``clean.stamp``, whose mtime the file server sets, lets
every client on every host agree on when that was), and ``ddmq clean`` runs
one at once. A pass requeues (or dead-letters) messages whose lease expired,
dead-letters files that are not ddmq's, and removes the private temporary
files of writers that died. It removes only names ``layout``'s grammar
produces and enters only directories ddmq made, whatever a member of the
group left there.
"""
from __future__ import annotations

import stat
import time

from . import atomic
from .errors import storage_error
from .jobends import foreign_records, roll_forward
from .layout import (
    CLEAN_STAMP, DEAD, JOBS, QUEUE_ENTRIES, READY, REASON_SUFFIX, TMP, WORK, abandoned_in_ready, abandoned_in_tmp,
    is_publish_tmp, parse_work, stamp_tmp_name,
)
from .log import logger
from .message import CorruptMessage
from .transitions import dead_letter, dead_letter_unusable, read, retire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

    from .layout import WorkName
    from .queuedir import Queue

# A temporary file or directory older than this was certainly abandoned by a
# crashed writer: no write takes an hour between create and rename.
ABANDONED_AFTER = 3600.0
# A consume that finds nothing ready looks for expired leases at most this often.
EXPIRY_CHECK_EVERY = 1.0


class CleanReport:
    """What one ``clean`` pass did, per queue or summed."""

    def __init__(self, requeued: int = 0, dead_lettered: int = 0, temp_removed: int = 0):
        self.requeued = requeued
        self.dead_lettered = dead_lettered
        self.temp_removed = temp_removed

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CleanReport):
            return NotImplemented
        return (self.requeued, self.dead_lettered, self.temp_removed) == (
            other.requeued, other.dead_lettered, other.temp_removed)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"CleanReport(requeued={self.requeued}, dead_lettered={self.dead_lettered}, "
                f"temp_removed={self.temp_removed})")

    def add(self, other: CleanReport) -> None:
        self.requeued += other.requeued
        self.dead_lettered += other.dead_lettered
        self.temp_removed += other.temp_removed


def maybe_clean(q: Queue, interval: float) -> None:
    """Clean the queue if nobody has in the last ``interval`` seconds (its ``clean_interval``)."""
    now = time.monotonic()
    if now < q.clean_due:
        return
    try:
        age = (q.now() - q.dir.lstat(CLEAN_STAMP).st_mtime_ns) / 1e9
    except FileNotFoundError:
        age = float("inf")
    except OSError as exc:
        raise storage_error("read", q.clean_stamp, exc) from None
    if age >= interval or age < -interval:
        clean_queue(q, scan_ready=False)
        age = 0.0
    # Other clients can only make the stamp newer, so the queue cannot be
    # due before ``interval - age`` from now: no need to stat it until then
    # (but at least once a minute, so a shorter clean_interval set in
    # ddmq.yaml is seen soon).
    q.clean_due = now + min(interval - age, interval, 60.0)


def clean_queue(q: Queue, scan_ready: bool) -> CleanReport:
    """One housekeeping pass over a queue.

    Consumers pass ``scan_ready=False``: listing a ready/ of 100 000
    messages on every pass would make housekeeping cost O(queue), and a
    consumer dead-letters a foreign name in ready/ anyway when it reaches it.
    """
    report = CleanReport()
    # A fresh file renamed over the stamp: its mtime is the server's time of
    # creation, and replacing it needs only write access to the directory,
    # not ownership of the old stamp (which another user may have made).
    atomic.publish_file(q.tmp, stamp_tmp_name(), q.dir, CLEAN_STAMP, b"", durable=False, mode=q.settings().mode)
    now = q.now()
    for name in atomic.listdir(q.work):
        work = parse_work(name)
        if work is None:
            report.dead_lettered += dead_letter(q, q.work, name, "foreign", "file name is not a ddmq lease name")
        elif work.expires <= now:
            _expired(q, name, work, now, report)
    if scan_ready:  # one walk of ready/'s tree, however long the queue
        foreign: list[tuple[atomic.Dir, str]] = []
        for directory in q.tree.directories(lambda d, name: foreign.append((d, name)), remove_before=now):
            # probes a consumer killed between making and removing one (see Queue.refresh_view)
            report.temp_removed += remove_abandoned(directory, now, abandoned_in_ready)
        for directory, name in foreign:
            report.dead_lettered += dead_letter(q, directory, name, "foreign", "file name is not a ddmq message name")
    names = atomic.list_all(q.tmp)
    for name in filter(is_publish_tmp, names):
        try:
            st = q.tmp.lstat(name)
        except OSError:
            continue  # published or removed meanwhile
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            roll_forward(q, name, st, now)  # a job end recorded, its publisher gone before the rename
    report.temp_removed += remove_abandoned(q.tmp, now, in_tmp, names)
    return report


def requeue_expired(q: Queue) -> CleanReport:
    """Requeue (or dead-letter) the expired leases in work/, for a consume that found nothing ready.

    Without it a message whose consumer died waits for the next clean pass
    (``clean_interval``, 30 s by default) while consumers report the queue
    empty. Listing work/ is cheap (it holds only what is being worked on),
    and an idle consumer does it at most once per EXPIRY_CHECK_EVERY.
    """
    report = CleanReport()
    due = time.monotonic()
    if due < q.expiry_due:
        return report
    q.expiry_due = due + EXPIRY_CHECK_EVERY
    now = q.now()
    for name in atomic.listdir(q.work):
        work = parse_work(name)
        if work is not None and work.expires <= now:
            _expired(q, name, work, now, report)
    return report


def _expired(q: Queue, name: str, work: WorkName, now: int, report: CleanReport) -> None:
    """Requeue, or dead-letter, the message ``name`` in work/, whose lease expired before ``now``."""
    try:
        msg = read(q.work, name, work.id)
    except CorruptMessage as exc:
        report.dead_lettered += dead_letter_unusable(q, q.work, name, exc)
        return
    if msg is None:
        return
    where = retire(q, work, msg, True, "expired")
    if where == READY:
        logger().info("requeued %s/work/%s: its lease expired %.1f s ago", q.dir.path, name, (now - work.expires) / 1e9)
    report.requeued += where == READY
    report.dead_lettered += where == DEAD


def remove_abandoned(directory: atomic.Dir, now_ns: int, kind: Callable[[str], tuple[bool, bool]],
                     names: list[str] | None = None) -> int:
    """Remove ddmq's own private entries untouched for ABANDONED_AFTER seconds.

    ``names``: the directory's entries, if the caller listed it already.

    ``kind(name)`` says whether a name is one this protocol makes there
    (layout's grammar) and whether it is a directory ddmq made: nothing
    else is removed, and no other directory is entered. ``now_ns`` is on the
    lease clock (see :mod:`ddmq.clock`), so a client whose clock runs ahead
    cannot remove a file another client is still writing.
    """
    removed = 0
    cutoff = now_ns / 1e9 - ABANDONED_AFTER
    for name in atomic.list_all(directory) if names is None else names:
        ours, made_dir = kind(name)
        if not ours:
            continue
        try:
            st = directory.lstat(name)
        except OSError:
            continue
        if st.st_mtime >= cutoff:
            continue
        if stat.S_ISDIR(st.st_mode):
            if made_dir:
                atomic.remove_tree(directory, name)
                removed += 1
        else:
            removed += atomic.remove(directory, name)
    return removed


def in_tmp(name: str) -> tuple[bool, bool]:
    """For remove_abandoned in a queue's tmp/, where ddmq makes no directories."""
    return abandoned_in_tmp(name), False


def foreign_entries(q: Queue) -> list[str]:
    """Everything in the queue ddmq did not write: what ``delete`` refuses to remove without force."""
    foreign = [n for n in sorted(atomic.listdir(q.dir)) if n not in QUEUE_ENTRIES]
    messages, stray = q.tree.contents()
    stray += [(directory, name) for directory, name in messages if not stat.S_ISREG(directory.mode(name) or 0)]
    foreign += [directory.join(name)[len(q.dir.path) + 1:] for directory, name in stray]
    for state in (WORK, DEAD, TMP):
        directory = q.state(state)
        for name in atomic.listdir(directory):
            ours = state != WORK or parse_work(name) is not None
            if not ours or not stat.S_ISREG(directory.mode(name) or 0):
                foreign.append(f"{state}/{name}")
    if atomic.exists(q.dir, JOBS):
        foreign += foreign_records(q)
    return foreign


def purge(q: Queue, dead: bool) -> int:
    """Remove every ready message (or, with ``dead``, every dead letter); returns how many.

    Anything else in ready/'s tree or dead/ goes too (a foreign directory
    removed without following a link in it); empty bands and slots are left
    for consumers to remove.
    """
    if dead:
        listed = [(q.dead, name) for name in atomic.listdir(q.dead)]
    else:
        messages, foreign = q.tree.contents()
        listed = messages + foreign
    removed = 0
    for directory, name in listed:
        mode = directory.mode(name)
        if mode is None:
            continue  # gone meanwhile
        if stat.S_ISDIR(mode):
            atomic.remove_tree(directory, name)  # a dead-lettered foreign directory: never left by a link
            removed += 1
        elif atomic.remove(directory, name) and not name.endswith(REASON_SUFFIX):
            removed += 1
    q.listing = None
    return removed
