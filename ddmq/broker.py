"""The broker: every queue operation, done by the calling process itself.

There is no server. Each method is a short sequence of the atomic steps in
:mod:`ddmq.atomic` on the layout of :mod:`ddmq.layout`; ``docs/protocol.md``
explains each transition. Housekeeping (requeueing expired leases, moving
unreadable files to the dead-letter area, removing abandoned temporary files)
is done by whichever client calls :meth:`Broker.clean`, and by consumers at
most once per ``clean_interval``.
"""
from __future__ import annotations

import errno
import heapq
import json
import os
import stat
import time
import warnings

from . import atomic
from .errors import (
    DdmqError, ForeignFiles, InvalidSetting, LeaseLost, NotARoot, QueueExists, QueueNotFound, RootNotFound,
    StorageError, UsageError, storage_error,
)
from .layout import (
    CLEAN_STAMP, DEAD, QUEUE_ENTRIES, QUEUE_MARKER, READY, REASON_SUFFIX, ROOT_MARKER, STATE_DIRS, WORK,
    ReadyName, WorkName, abandoned_in_root, abandoned_in_tmp, check_queue_name, claimed_name, clock_probe_name,
    dead_name, doomed_name, lease_receipt, marker_tmp_name, new_message_id, new_token, parse_ready, parse_receipt,
    parse_work, publish_tmp_name, ready_name, reason_tmp_name, stamp_tmp_name, staging_name,
)
from .message import MAX_MESSAGE_BYTES, CorruptMessage, Message, Unreadable, decode, encode
from .queuedir import QueueDir
from .settings import MAX_SECONDS, MIN_SECONDS, SettingsCache, dump, dump_value, validate

DEFAULT_ROOT = "~/.ddmq"
# A temporary file or directory older than this was certainly abandoned by a
# crashed writer: no write takes an hour between create and rename.
ABANDONED_AFTER = 3600.0
# A consumer re-lists ready/ at least this often, so a newly published message
# of higher priority waits at most this long behind an older listing.
LISTING_MAX_AGE = 1.0
# ... unless listing it takes longer than this share of that time: a ready/ of
# 100 000 names takes 0.1-0.2 s to list, and re-listing it every second would
# cost a consumer more than its claims. Such a listing is kept 20x as long as
# it took to make.
LISTING_MAX_SHARE = 0.05
# Clocks that differ from the file server's by more than this are corrected
# for lease times; within it (NTP, coarse file timestamps) the local clock is
# used as it is. The offset is measured at most once per CLOCK_CHECK_EVERY.
CLOCK_TOLERANCE = 2.0
CLOCK_CHECK_EVERY = 60.0
# A client re-reads a queue's settings (a stat of each ddmq.yaml) at most this
# often: an edit to ddmq.yaml, or a queue deleted by another client, reaches a
# running client within this time (an operation on a deleted queue fails
# sooner, with QueueNotFound).
SETTINGS_MAX_AGE = 1.0
# A directory's mtime is trusted to show that nothing entered or left it only
# once it is this much older than the listing taken after it: a change in the
# same timestamp tick (1 s on sshfs) as an earlier one leaves the mtime as it
# was, and the clock it is compared with may be off by CLOCK_TOLERANCE.
SETTLED_AFTER = CLOCK_TOLERANCE + 1.0
# Queues whose directories a Broker keeps open at once (five descriptors each);
# the least recently opened is let go beyond that.
OPEN_QUEUES = 32
_HOST = os.uname().nodename  # what socket.gethostname() returns, without importing socket
# This process's id, for every payload it writes: getpid(2) is a system call
# (glibc does not cache it), one in eleven of a message's. A forked child
# learns its own.
_PID = os.getpid()
_last_published = 0  # see Broker._publish_time


def _forked() -> None:
    global _PID
    _PID = os.getpid()


os.register_at_fork(after_in_child=_forked)

# Names for type annotations only: importing typing at run time costs a
# command-line tool several milliseconds of start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Callable, Iterable, Iterator, Union
    from weakref import WeakKeyDictionary


    Receipt = Union[Message, str]
    Match = Callable[[Message], bool]


def resolve_root(root: str | os.PathLike | None) -> tuple[str, bool]:
    """The root to use and whether it is the default (created on first use)."""
    if root is not None and os.fspath(root) != "":
        return os.path.expanduser(os.fspath(root)), False
    env = os.environ.get("DDMQ_ROOT")
    if env:
        return os.path.expanduser(env), False
    return os.path.expanduser(DEFAULT_ROOT), True


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

    def __repr__(self) -> str:
        return (f"CleanReport(requeued={self.requeued}, dead_lettered={self.dead_lettered}, "
                f"temp_removed={self.temp_removed})")

    def add(self, other: "CleanReport") -> None:
        self.requeued += other.requeued
        self.dead_lettered += other.dead_lettered
        self.temp_removed += other.temp_removed


# publish's overrides when a call makes none: (priority, message_timeout, requeue,
# requeue_prio, durable, requeue_limit)
_NO_OVERRIDES = (None,) * 6


class _Listing:
    """A consumer's snapshot of ready/ as a heap, so the best name pops first.

    Names this process itself moves into ready/ (publish, nack, requeue) are
    pushed in, so its own writes are never hidden behind an older listing.
    ``stamp`` is ready/'s stat taken just before the listing, when it can
    prove later that nothing entered or left since (see Broker._ready_names);
    ``skip`` is the set of names filtered out of it.
    """

    def __init__(self, names: list[str], started: float, stamp: tuple[int, ...] | None,
                 skip: set[str] | frozenset[str]):
        heapq.heapify(names)
        self.names = names
        self.taken = time.monotonic()
        self.max_age = max(LISTING_MAX_AGE, (self.taken - started) / LISTING_MAX_SHARE)
        self.stamp = stamp
        self.skip = skip

    def pop(self) -> str:
        return heapq.heappop(self.names)

    def push(self, name: str) -> None:
        heapq.heappush(self.names, name)

    def drop(self, count: int) -> None:
        """Leave out the next ``count`` names (seen again at the next listing)."""
        for _ in range(min(count, len(self.names))):
            heapq.heappop(self.names)


def _dir_stamp(directory: atomic.Dir) -> tuple[int, ...] | None:
    """What changes when an entry is added to, removed from or renamed within a directory.

    StorageError(ENOENT) for a directory that was removed while held open (a
    deleted queue): listing it would show it empty, not gone.
    """
    try:
        st = os.fstat(directory.fd)
    except OSError:
        return None  # the listing that follows reports the error
    if st.st_nlink == 0:
        raise StorageError(f"{directory.path} was removed", errno.ENOENT)
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_size)


def _may_read(directory: atomic.Dir, name: str) -> bool:
    """Whether the file's permissions let this process read it.

    Tells a file this user will never be able to read (dead-letter it, or it
    blocks the queue) from a read that failed for another reason (a network
    filesystem's hiccup: give the message back).
    """
    effective = os.access in os.supports_effective_ids
    try:
        return os.access(name, os.R_OK, dir_fd=directory.fd, effective_ids=effective, follow_symlinks=False)
    except (OSError, NotImplementedError):
        return True


def _check_count(n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"n must be a whole number >= 1, not {n!r}")


def _check_seconds(value: object, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not MIN_SECONDS <= value <= MAX_SECONDS:
        raise UsageError(f"{what} must be a number of seconds from {MIN_SECONDS:g} to {MAX_SECONDS:g}, not {value!r}")


class Broker:
    """A handle on one ddmq root directory.

    ``Broker(root, create=True)`` initialises the root if needed. Without a root
    the ``DDMQ_ROOT`` environment variable is used, else ``~/.ddmq``, which is
    created on first use unless ``create=False`` says never to create a root.
    A Broker holds no locks; it keeps the directories of the root and of the
    queues it uses open (see :mod:`ddmq.queuedir`), until it is garbage-collected
    or :meth:`close` d. Any number of Brokers, in any number of processes on
    any number of hosts, may share a root.
    """

    def __init__(self, root: str | os.PathLike | None = None, create: bool | None = None):
        self._root, is_default = resolve_root(root)
        self._settings = SettingsCache()
        # Per queue name: when it is next due for housekeeping, its settings
        # and when they were read, this process's listing of its ready/.
        self._clean_due: dict[str, float] = {}
        self._checked: dict[str, tuple[float, dict[str, Any]]] = {}
        self._listings: dict[str, _Listing] = {}
        self._rejected: WeakKeyDictionary[Match, set[str]] | None = None  # made when first needed
        self._clock_offset = 0
        self._queues: dict[str, QueueDir] = {}  # open queues, oldest first (at most OPEN_QUEUES)
        self._root_dir: atomic.Dir | None = None
        self._clock_checked: float | None = None
        # Broker(root, create=True) creates missing queues on publish and consume
        # too, as the seed documented; by default a mistyped queue name is an error.
        self._create_queues = create is True
        self._open_root(is_default if create is None else create)

    def __repr__(self) -> str:
        return f"Broker({self._root!r})"

    def close(self) -> None:
        """Close the directories this Broker holds open; it opens them again when used."""
        for name in list(self._queues):
            self._forget(name)
        if self._root_dir is not None:
            self._root_dir.close()
            self._root_dir = None

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def _rootdir(self) -> atomic.Dir:
        """The root, held open: every queue is opened relative to it, without following links."""
        if self._root_dir is None:
            try:
                self._root_dir = atomic.open_root(self._root)
            except FileNotFoundError:
                raise RootNotFound(f"ddmq root {self._root} no longer exists") from None
            except OSError as exc:
                raise storage_error("open root", self._root, exc) from None
        return self._root_dir

    @property
    def root(self) -> Path:
        """The root directory. Held as a string inside: importing pathlib costs
        a command-line tool more start-up time than its whole publish."""
        from pathlib import Path

        return Path(self._root)

    # ------------------------------------------------------------------ root
    def _open_root(self, create: bool) -> None:
        try:
            self._root_dir = atomic.open_root(self._root)
            mode = self._root_dir.lstat(ROOT_MARKER).st_mode
            if stat.S_ISREG(mode):
                return
            raise NotARoot(f"{self._root}/{ROOT_MARKER} is not a regular file (a link, FIFO or device "
                           "is in its place); refusing to use this root")
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:  # e.g. not in the group that shares the root
            raise storage_error("open root", self._root, exc) from None
        if not create:
            if not os.path.exists(self._root):
                raise RootNotFound(f"ddmq root {self._root} does not exist (create it with `ddmq create`)")
            raise NotARoot(f"{self._root} is not a ddmq root (no {ROOT_MARKER}); refusing to use it")
        if os.path.exists(self._root) and not os.path.isdir(self._root):
            raise NotARoot(f"{self._root} exists and is not a directory")
        try:
            os.makedirs(self._root, exist_ok=True)
        except OSError as exc:
            raise storage_error("create root", self._root, exc) from None
        root = self._rootdir
        atomic.publish_file(root, marker_tmp_name(), root, ROOT_MARKER, dump({}).encode(), durable=True)

    def _checked_values(self, paths: QueueDir) -> dict[str, Any] | None:
        """The queue's settings if they were read less than SETTINGS_MAX_AGE ago."""
        checked = self._checked.get(paths.name)
        if checked is not None and time.monotonic() - checked[0] < SETTINGS_MAX_AGE:
            return checked[1]
        return None

    def _queue_values(self, paths: QueueDir) -> dict[str, Any]:
        """Effective settings of a queue whose paths are known, read within SETTINGS_MAX_AGE."""
        values = self._checked_values(paths)
        if values is None:
            values = self._read_settings(paths)
        return values

    def _read_settings(self, paths: QueueDir, required: bool = False) -> dict[str, Any]:
        """A queue's effective settings from its files: defaults, the root's file, then the queue's.

        With ``required``, a missing queue file raises FileNotFoundError: it is the queue's marker.
        """
        return self._settings.merged((self._rootdir, ROOT_MARKER), (paths.dir, QUEUE_MARKER), required=required)

    # ---------------------------------------------------------------- queues
    def _paths(self, queue: str) -> QueueDir:
        """The open directories of an existing queue, or QueueNotFound (opened on first use)."""
        paths = self._queues.get(queue) if isinstance(queue, str) else None
        if paths is None:
            paths = self._open_queue(check_queue_name(queue))
            if len(self._queues) >= OPEN_QUEUES:
                self._forget(next(iter(self._queues)))
            self._queues[queue] = paths
        return paths

    def _open_queue(self, queue: str) -> QueueDir:
        root = self._rootdir
        try:
            directory = atomic.open_dir(root, queue)
        except (FileNotFoundError, NotADirectoryError) as exc:
            if isinstance(exc, NotADirectoryError) and stat.S_ISLNK(root.mode(queue) or 0):
                raise atomic.refused(root.join(queue), exc) from None
            raise QueueNotFound(f"no queue {queue!r} in {self._root}") from None
        except OSError as exc:
            raise atomic.refused(root.join(queue), exc) from None
        try:
            directory.lstat(QUEUE_MARKER)
        except (FileNotFoundError, NotADirectoryError):
            raise QueueNotFound(f"no queue {queue!r} in {self._root}") from None
        except OSError as exc:
            raise storage_error("open queue", directory.path, exc) from None
        try:
            return QueueDir(directory, queue)
        except OSError as exc:
            raise atomic.refused(directory.join(exc.filename) if exc.filename else directory.path, exc) from None

    def _forget(self, queue: str) -> None:
        """Drop what this Broker holds of a queue: its directories (closed once unused) and caches."""
        self._queues.pop(queue, None)
        self._checked.pop(queue, None)
        self._listings.pop(queue, None)

    def _queue(self, queue: str) -> QueueDir:
        """The directories of an existing queue, checked now, or QueueNotFound."""
        paths = self._current(queue)
        if not atomic.exists(paths.dir, QUEUE_MARKER):
            self._forget(queue)
            paths = self._paths(queue)  # QueueNotFound, or a queue made again meanwhile
        return paths

    def _queue_settings(self, queue: str) -> tuple[QueueDir, dict[str, Any]]:
        """Directories and effective settings of an existing queue, or QueueNotFound.

        The stats that tell whether the queue's settings changed also tell
        whether the queue is still the one this Broker holds open (not deleted,
        or deleted and made again), and they are made at most once per
        SETTINGS_MAX_AGE: a publish or consume otherwise costs no system call
        beyond its own renames.
        """
        paths = self._paths(queue)
        values = self._checked_values(paths)
        if values is None:
            paths = self._current(queue)
            try:
                values = self._read_settings(paths, required=True)
            except (FileNotFoundError, NotADirectoryError):
                self._forget(queue)
                raise QueueNotFound(f"no queue {queue!r} in {self._root}") from None
            self._checked[queue] = (time.monotonic(), values)
        return paths, values

    def _current(self, queue: str) -> QueueDir:
        """The queue's directories, opened again if the one held open is no longer called by its name.

        (Deleted, or deleted and made again, by another client.) QueueNotFound if there is none now.
        """
        paths = self._paths(queue)
        try:
            named = self._rootdir.lstat(queue)
            held = os.fstat(paths.dir.fd)
            if (named.st_ino, named.st_dev) == (held.st_ino, held.st_dev):
                return paths
        except OSError:
            pass
        self._forget(queue)
        return self._paths(queue)

    def _existing_or_created(self, queue: str) -> tuple[QueueDir, dict[str, Any]]:
        """As _queue_settings, but a Broker made with ``create=True`` first creates a missing queue."""
        try:
            return self._queue_settings(queue)
        except QueueNotFound as exc:
            if not self._create_queues:
                raise
            missing = exc
        try:
            self.create_queue(queue, exist_ok=True)
        except QueueExists:  # a directory of that name that is not a queue is in the way
            raise missing from None
        return self._queue_settings(queue)

    def _gone(self, queue: str, paths: QueueDir, exc: StorageError) -> DdmqError:
        """What to raise after ENOENT inside a queue: QueueNotFound if the queue itself is gone.

        Within SETTINGS_MAX_AGE a queue deleted by another client is noticed
        this way, by the operation that fails, not by a stat before each one.
        """
        self._forget(queue)
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE):
            try:
                self._queue(queue)
            except QueueNotFound as missing:
                return missing
            except DdmqError:
                pass
        return exc

    def settings(self, queue: str | None = None) -> dict[str, Any]:
        """Effective settings of a queue (or of the root when ``queue`` is None)."""
        if queue is None:
            return self._settings.merged((self._rootdir, ROOT_MARKER))
        return self._read_settings(self._queue(queue))

    def create_queue(self, queue: str, exist_ok: bool = False, **settings: Any) -> None:
        """Create a queue, with optional settings written to its ``ddmq.yaml``.

        The queue is built under a hidden name and renamed into place, so other
        clients see either no queue or a complete one. Every directory is made
        private, opened without following links and only then given its
        permissions (see :func:`ddmq.atomic.make_own_dir`).
        """
        check_queue_name(queue)
        values = validate(settings, "create_queue", InvalidSetting)
        # With exist_ok, a queue deleted by another client between our look and
        # our rename is made again, not reported as existing (each lost race
        # means another client made progress, so the tries are bounded).
        for _ in range(100 if exist_ok else 1):
            try:
                if exist_ok and self._is_queue(queue):
                    return self._same_settings(queue, values)
                try:
                    self._create(queue, values)
                    return
                except QueueExists:
                    if not exist_ok:
                        raise
                    if self._is_queue(queue):
                        return self._same_settings(queue, values)
            except QueueNotFound:
                continue  # deleted while we looked at its settings: make it again
        raise QueueExists(f"queue {queue!r} already exists in {self._root} and is not a queue "
                          "(or other clients keep deleting and creating it)")

    def _create(self, queue: str, values: dict[str, Any]) -> None:
        """One attempt to build a queue under a hidden name and rename it into place; QueueExists if taken."""
        root = self._rootdir
        mode = {**self.settings(), **values}["mode"]
        staging = staging_name(queue)
        try:
            made = atomic.make_own_dir(root, staging, mode)
            try:
                for state in STATE_DIRS:
                    atomic.make_own_dir(made, state, mode).close()
                atomic.write_private(made, QUEUE_MARKER, dump(values).encode(), durable=True, mode=mode)
            finally:
                made.close()
            os.rename(staging, queue, src_dir_fd=root.fd, dst_dir_fd=root.fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ESTALE) and atomic.renamed(root, staging, root, queue):
                atomic.fsync_dir(root)  # our rename happened; only its reply was lost
                return
            atomic.remove_tree(root, staging)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise QueueExists(f"queue {queue!r} already exists in {self._root}") from None
            raise storage_error("create queue", root.join(queue), exc) from None
        except DdmqError:
            atomic.remove_tree(root, staging)
            raise
        atomic.fsync_dir(root)

    def _same_settings(self, queue: str, values: dict[str, Any]) -> None:
        """With exist_ok: the existing queue must have the settings asked for, else QueueExists.

        ``create --exist-ok --message-timeout 5`` on a queue with another
        timeout would otherwise succeed and leave the old value in force.
        """
        if not values:
            return
        paths = self._queue(queue)
        current = self._read_settings(paths)
        differ = [f"{key} {dump_value(key, current[key])}, not {dump_value(key, value)}"
                  for key, value in values.items() if current[key] != value]
        if differ:
            raise QueueExists(f"queue {queue!r} already exists with {'; '.join(differ)} "
                              f"(change it in {paths.dir.join(QUEUE_MARKER)})")

    def _is_queue(self, queue: str) -> bool:
        try:
            self._queue(queue)
            return True
        except QueueNotFound:
            return False

    def delete_queue(self, queue: str, force: bool = False) -> None:
        """Delete a queue and all its messages.

        Refuses, unless ``force``, when the directory holds anything ddmq did
        not write, so a mistyped name cannot wipe someone's data. The queue is
        first renamed to a hidden name (atomic: clients see it gone at once),
        then removed.
        """
        paths = self._queue(queue)
        if not force:
            foreign = self._foreign_entries(paths)
            if foreign:
                shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
                raise ForeignFiles(
                    f"queue {queue!r} holds files ddmq did not write ({shown}); "
                    "move them away or delete with force"
                )
        root = self._rootdir
        doomed = doomed_name(queue)
        try:
            os.rename(queue, doomed, src_dir_fd=root.fd, dst_dir_fd=root.fd)
        except OSError as exc:
            lost_reply = exc.errno in (errno.ENOENT, errno.ESTALE) and atomic.renamed(root, queue, root, doomed)
            if not lost_reply:
                self._forget(queue)
                if exc.errno == errno.ENOENT:
                    raise QueueNotFound(f"no queue {queue!r} in {self._root}") from None
                raise storage_error("delete queue", paths.dir.path, exc) from None
        self._forget(queue)
        atomic.remove_tree(root, doomed)

    def _foreign_entries(self, paths: QueueDir) -> list[str]:
        foreign = [n for n in sorted(atomic.listdir(paths.dir)) if n not in QUEUE_ENTRIES]
        checks = {READY: parse_ready, WORK: parse_work}
        for state in STATE_DIRS:
            directory = paths.state(state)
            parse = checks.get(state)
            for name in atomic.listdir(directory):
                ours = parse(name) is not None if parse else True
                if not ours or not stat.S_ISREG(directory.mode(name) or 0):
                    foreign.append(f"{state}/{name}")
        return foreign

    def list_queues(self) -> list[str]:
        """Names of the queues in this root, sorted."""
        names = atomic.listdir(self._rootdir)
        return sorted(n for n in names if n != ROOT_MARKER and self._looks_like_queue(n))

    def _looks_like_queue(self, name: str) -> bool:
        """A directory (not a link to one) holding a queue marker."""
        root = self._rootdir
        return stat.S_ISDIR(root.mode(name) or 0) and stat.S_ISREG(root.mode(f"{name}/{QUEUE_MARKER}") or 0)

    def counts(self, queue: str) -> dict[str, int]:
        """How many messages are ready, in work (leased) and dead."""
        paths = self._queue(queue)
        dead = [n for n in atomic.listdir(paths.dead) if not n.endswith(REASON_SUFFIX)]
        return {
            "ready": len(atomic.listdir(paths.ready)),
            "work": len(atomic.listdir(paths.work)),
            "dead": len(dead),
        }

    # --------------------------------------------------------------- publish
    @staticmethod
    def _publish_time() -> int:
        """Publish time in ns, strictly increasing within this process (FIFO for one publisher).

        Kept per process, not per Broker, so a script that makes a new Broker
        per message still publishes in order on a coarse clock; in a module
        global, not a class attribute: writing one of those once per message
        would invalidate every cached attribute lookup on Broker.
        """
        global _last_published
        now = time.time_ns()
        if now <= _last_published:
            now = _last_published + 1
        _last_published = now
        return now

    @staticmethod
    def _overridden(values: dict[str, Any], **overrides: Any) -> dict[str, Any]:
        """A queue's settings with a publish call's overrides (those not None), validated."""
        chosen = {k: v for k, v in overrides.items() if v is not None and k != "requeue_limit"}
        chosen = validate(chosen, "publish", InvalidSetting)
        if overrides["requeue_limit"] is not None:
            chosen.update(validate({"requeue_limit": overrides["requeue_limit"]}, "publish", InvalidSetting))
        return {**values, **chosen}

    def publish(
        self,
        queue: str,
        message: Any,
        *,
        priority: int | None = None,
        message_timeout: float | None = None,
        requeue: bool | None = None,
        requeue_prio: int | None = None,
        requeue_limit: int | None = None,
        durable: bool | None = None,
        headers: dict[str, Any] | None = None,
        create: bool = False,
    ) -> Message:
        """Publish one message; it is visible to consumers, complete, when this returns.

        Keyword arguments override the queue's settings for this message;
        ``create`` creates the queue if it does not exist (so does a Broker
        made with ``create=True``).
        """
        paths, values = self._publish_settings(queue, create, (priority, message_timeout, requeue, requeue_prio,
                                                                 durable, requeue_limit))
        msg, data = self._payload(queue, message, values, headers)
        name = ready_name(msg.priority, msg.published, msg.id)
        try:
            atomic.publish_file(paths.tmp, publish_tmp_name(msg.id), paths.ready, name, data, msg.durable,
                                values["mode"])
        except StorageError as exc:
            raise self._gone(queue, paths, exc) from None
        self._readied(paths, name)
        return msg

    def publish_many(
        self,
        queue: str,
        messages: Iterable[Any],
        *,
        priority: int | None = None,
        message_timeout: float | None = None,
        requeue: bool | None = None,
        requeue_prio: int | None = None,
        requeue_limit: int | None = None,
        durable: bool | None = None,
        headers: dict[str, Any] | None = None,
        create: bool = False,
        before_visible: Callable[[list[Message]], None] | None = None,
    ) -> list[Message]:
        """Publish several messages, each one atomically, with one durability barrier for all.

        Every payload is written (and, if durable, synced) first; then
        ``before_visible`` is called with the messages, if given; then each is
        renamed into ``ready/`` and the directory is synced once. A failure
        before the first rename, ``before_visible`` raising included, publishes
        nothing: so a command can print the new ids first and publish only if
        that worked. A failure after it says how many were published.
        """
        paths, values = self._publish_settings(queue, create, (priority, message_timeout, requeue, requeue_prio,
                                                                 durable, requeue_limit))
        pending: list[tuple[Message, str, str]] = []  # (message, tmp name, ready name)
        try:
            for body in messages:
                msg, data = self._payload(queue, body, values, headers)
                tmp = publish_tmp_name(msg.id)
                try:
                    atomic.write_private(paths.tmp, tmp, data, msg.durable, values["mode"])
                except StorageError as exc:
                    raise self._gone(queue, paths, exc) from None
                pending.append((msg, tmp, ready_name(msg.priority, msg.published, msg.id)))
            if before_visible is not None:
                before_visible([msg for msg, _, _ in pending])
        except BaseException:
            for _, tmp, _ in pending:
                atomic.discard(paths.tmp, tmp)
            raise
        for done, (msg, tmp, name) in enumerate(pending):
            try:
                atomic.rename_private(paths.tmp, tmp, paths.ready, name)
            except StorageError as exc:
                for _, rest, _ in pending[done:]:
                    atomic.discard(paths.tmp, rest)
                raise StorageError(f"{exc} ({done} of {len(pending)} messages were published)",
                                   exc.errno) from None
            self._readied(paths, name)
        if any(msg.durable for msg, _, _ in pending):
            atomic.fsync_dir(paths.ready)
        return [msg for msg, _, _ in pending]

    def _publish_settings(self, queue: str, create: bool,
                          overrides: tuple[Any, ...]) -> tuple[QueueDir, dict[str, Any]]:
        """The queue's paths and settings for a publish, with the call's overrides applied."""
        if create:
            self.create_queue(queue, exist_ok=True)
        paths, values = self._existing_or_created(queue)
        if overrides != _NO_OVERRIDES:
            priority, message_timeout, requeue, requeue_prio, durable, requeue_limit = overrides
            values = self._overridden(values, priority=priority, message_timeout=message_timeout,
                                      requeue=requeue, requeue_prio=requeue_prio, durable=durable,
                                      requeue_limit=requeue_limit)
        return paths, values

    def _payload(self, queue: str, body: Any, values: dict[str, Any],
                 headers: dict[str, Any] | None) -> tuple[Message, bytes]:
        """A new message and its payload bytes; UsageError for a body or headers that cannot be published."""
        if headers is not None and (
            not isinstance(headers, dict) or not all(isinstance(k, str) for k in headers)
        ):
            raise UsageError("headers must be a mapping with string keys")
        msg = Message(  # positionally: once per message, and keywords cost more
            new_message_id(), queue, body, values["priority"], self._publish_time(),
            values["message_timeout"], values["requeue"], values["requeue_prio"], values["requeue_limit"],
            values["durable"], _HOST, _PID, dict(headers) if headers else {},
        )
        try:
            data = encode(msg)
        except TypeError as exc:
            raise UsageError(str(exc)) from None
        if len(data) > MAX_MESSAGE_BYTES:
            raise UsageError(f"message too large: {len(data)} bytes (at most {MAX_MESSAGE_BYTES})")
        return msg, data

    # --------------------------------------------------------------- consume
    def _ready_names(self, queue: str, paths: QueueDir,
                     skip: set[str] | frozenset[str] = frozenset()) -> Iterator[str]:
        """Ready names in delivery order, from a listing at most LISTING_MAX_AGE old (see LISTING_MAX_SHARE).

        Listing a directory of 100 000 entries for every consume would make each
        message cost O(queue); instead the sorted listing is kept and consumed
        from the front, and re-read when it runs out or grows old. Names taken by
        other consumers meanwhile simply fail to claim.
        """
        listing = self._listings.get(paths.name)
        fresh = False
        while True:
            if listing is None or not listing.names or time.monotonic() - listing.taken > listing.max_age:
                if fresh and listing is not None and not listing.names:
                    return
                started = time.monotonic()
                try:
                    stamp = _dir_stamp(paths.ready)
                except StorageError as exc:
                    raise self._gone(queue, paths, exc) from None
                if (listing is not None and not listing.names and listing.stamp is not None
                        and listing.stamp == stamp and listing.skip is skip):
                    # Nothing entered or left ready/ since it was last listed:
                    # an idle waiter's poll is this one stat, not a listing
                    # whose cost grows with the queue.
                    return
                if stamp is not None and self._lease_clock(paths.tmp) - stamp[0] < SETTLED_AFTER * 1e9:
                    stamp = None
                try:
                    names = atomic.listdir(paths.ready)
                except StorageError as exc:
                    raise self._gone(queue, paths, exc) from None
                listing = _Listing([n for n in names if n not in skip] if skip else names, started, stamp, skip)
                self._listings[paths.name] = listing
                fresh = True
                if not listing.names:
                    return
            yield listing.pop()

    def _lost_race(self, paths: QueueDir) -> None:
        """After another consumer claimed the name we tried: skip 0-3 of the next ones.

        Consumers that listed ready/ at the same time pop the same names in
        the same order, and in lockstep each name costs all but one of them a
        failed rename (about two per message with four consumers). Skipping a
        few at random spreads them over the queue; what one skips, the others
        take, and it sees any left at its next listing. A lone consumer never
        loses a race, so its order is untouched. The low bits of the clock
        are random enough to break a lockstep.
        """
        listing = self._listings.get(paths.name)
        if listing is not None:
            listing.drop(time.perf_counter_ns() & 3)

    def _readied(self, paths: QueueDir, name: ReadyName | str) -> None:
        """Tell this process's listing about a message it just put into ready/."""
        listing = self._listings.get(paths.name)
        if listing is not None:
            listing.push(str(name))

    def consume(
        self, queue: str, n: int = 1, lease: float | None = None, ack: bool = False,
        match: Match | None = None,
    ) -> list[Message]:
        """Claim up to ``n`` messages, best priority first; returns a list, maybe empty.

        Each message is leased to this consumer for ``lease`` seconds (default:
        the message's ``message_timeout``); ack, nack or extend it before then,
        or it is requeued for someone else. ``ack=True`` acks at once
        (at-most-once from here on). With ``match``, only messages for which
        ``match(message)`` is true are claimed; the others are not disturbed
        (see :meth:`_matching` for the cost).
        """
        _check_count(n)
        if lease is not None:
            _check_seconds(lease, "lease")
        paths, settings = self._existing_or_created(queue)
        self._maybe_clean(paths, settings)
        claimed: list[Message] = []
        # A waiter polls with the same predicate over and over: names it already
        # rejected are dropped when ready/ is listed, before any parsing, so an
        # idle poll costs one listing, not a parse per waiting message.
        rejected = self._rejected_by(match) if match is not None else frozenset()
        for name in self._ready_names(queue, paths, rejected):
            ready = parse_ready(name)
            if ready is None:
                self._dead_letter(paths, paths.ready, name, "foreign", "file name is not a ddmq message name")
                continue
            if match is not None and self._matching(paths.ready, name, match) is None:
                continue
            seconds = lease if lease is not None else settings["message_timeout"]
            expires, token = self._lease_clock(paths.tmp) + int(seconds * 1e9), new_token()
            work_name = claimed_name(name, expires, token)
            if not atomic.move(paths.ready, name, paths.work, work_name):
                self._lost_race(paths)
                continue
            held = lease_receipt(ready.id, token)
            try:
                msg = self._load(paths, paths.work, work_name, ready.id)
                if msg is None:
                    continue
                self._fill_state(msg, ready)
                msg.lease_expires, msg.receipt, msg._lease_name = expires, held, work_name
                if lease is None and msg.message_timeout != seconds:
                    self.extend(msg, msg.message_timeout)
                if ack:
                    self.ack(msg)
            except DdmqError:
                # Nothing claimed here reaches the caller: give it back now instead
                # of hiding it from every consumer until the lease expires.
                for taken in [held] + ([] if ack else [m.receipt for m in claimed]):
                    try:
                        self.release(taken, queue)
                    except DdmqError:
                        pass  # best effort: otherwise the lease expires and clean requeues it
                raise
            claimed.append(msg)
            if len(claimed) >= n:
                break
        return claimed

    @staticmethod
    def _fill_state(msg: Message, name: ReadyName | WorkName) -> None:
        msg.priority = name.priority
        msg.requeues = name.requeues
        if isinstance(name, WorkName):
            msg.lease_expires = name.expires

    @staticmethod
    def _read(directory: atomic.Dir, name: str, expected_id: str | None) -> Message | None:
        """Read and check one message file: None if it vanished, CorruptMessage if it is not one.

        A file this user may not read (published by a member with umask 077
        into a queue without ``mode``) is Unreadable: it would block the
        queue for everyone who cannot read it.
        """
        try:
            data = atomic.read_file(directory, name, MAX_MESSAGE_BYTES)
        except OSError as exc:
            if exc.errno in atomic.NOT_A_FILE_ERRNOS:
                raise CorruptMessage("not a regular file") from None
            if exc.errno in (errno.EACCES, errno.EPERM) and not _may_read(directory, name):
                raise Unreadable("this user may not read it (published with a umask that shut the group out?)") \
                    from None
            raise storage_error("read", directory.join(name), exc) from None
        if data is None:
            return None
        if len(data) > MAX_MESSAGE_BYTES:
            raise CorruptMessage(f"larger than {MAX_MESSAGE_BYTES} bytes")
        msg = decode(data)
        if expected_id is not None and msg.id != expected_id:
            raise CorruptMessage(f"payload id {msg.id!r} does not match the file name")
        # A message belongs to the queue it lies in (a state directory's parent),
        # whatever its payload says: ack, nack and release find it there.
        if directory.parent is not None and directory.parent.name:
            msg.queue = directory.parent.name
        return msg

    def _load(self, paths: QueueDir, directory: atomic.Dir, name: str, expected_id: str,
              report: CleanReport | None = None) -> Message | None:
        """Read a message we hold; a file that is not a valid message is dead-lettered with the reason."""
        try:
            return self._read(directory, name, expected_id)
        except CorruptMessage as exc:
            reason = "unreadable" if isinstance(exc, Unreadable) else "corrupt"
            if self._dead_letter(paths, directory, name, reason, str(exc)) and report is not None:
                report.dead_lettered += 1
            return None

    def _peeked(self, directory: atomic.Dir, name: str, parsed: ReadyName | WorkName | None) -> Message | None:
        """Read a message without holding it; unreadable files are skipped, left for its holder."""
        try:
            msg = self._read(directory, name, parsed.id if parsed else None)
        except CorruptMessage:
            return None
        if msg is not None and parsed is not None:
            self._fill_state(msg, parsed)
        return msg

    def _rejected_by(self, match: Match) -> set[str]:
        """Names ``match`` rejected, kept as long as the predicate object lives."""
        if self._rejected is None:
            from weakref import WeakKeyDictionary  # deferred: only waiters need it

            self._rejected = WeakKeyDictionary()
        return self._rejected.setdefault(match, set())

    def _matching(self, directory: atomic.Dir, name: str, match: Match) -> Message | None:
        """The message in ``directory/name`` if ``match`` accepts it, else None.

        Payloads are immutable, so a name once rejected by a predicate is never
        read again for that predicate: an idle waiter's cost per poll is one
        listing, however many non-matching messages sit in the queue. The
        cache lives as long as the predicate object, so pass the same one on
        every call.
        """
        rejected = self._rejected_by(match)
        if name in rejected:
            return None
        msg = self._peeked(directory, name, parse_ready(name) or parse_work(name))
        if msg is None:
            return None
        if not match(msg):
            rejected.add(name)
            return None
        return msg

    def peek(self, queue: str, n: int = 1, state: str = READY, match: Match | None = None) -> list[Message]:
        """Look at up to ``n`` messages without claiming them (state: ready, work or dead).

        ``match`` selects messages as in :meth:`consume`.
        """
        _check_count(n)
        if state not in (READY, WORK, DEAD):
            raise UsageError(f"state must be one of ready, work, dead; not {state!r}")
        paths = self._queue(queue)
        directory = paths.state(state)
        found: list[Message] = []
        for name in sorted(atomic.listdir(directory)):
            if len(found) >= n:
                break
            parsed = parse_ready(name) if state == READY else parse_work(name) if state == WORK else None
            if state != DEAD and parsed is None or name.endswith(REASON_SUFFIX):
                continue
            msg = self._matching(directory, name, match) if match else self._peeked(directory, name, parsed)
            if msg is not None:
                found.append(msg)
        return found

    # ------------------------------------------------------------ the lease
    def _held(self, receipt: Receipt, queue: str | None) -> tuple[QueueDir, WorkName]:
        """Where the lease named by ``receipt`` is now, or LeaseLost."""
        if isinstance(receipt, Message):
            if receipt.receipt is None:
                raise UsageError(f"message {receipt.id} is not held by this consumer")
            paths = self._queue(queue or receipt.queue)
            msg_id, token = parse_receipt(receipt.receipt)
            # Where this consumer last put the lease (recorded by consume and extend).
            held = parse_work(receipt._lease_name) if receipt._lease_name else None
            if held is not None and atomic.exists(paths.work, receipt._lease_name):
                return paths, held
        else:
            if queue is None:
                raise UsageError("a queue is needed to find a message by its receipt")
            paths = self._queue(queue)
            msg_id, token = parse_receipt(receipt)
        for name in atomic.listdir(paths.work):
            work = parse_work(name)
            if work is not None and work.id == msg_id and (token is None or work.token == token):
                return paths, work
        raise LeaseLost(
            f"message {msg_id} is no longer leased here: it was acked or nacked, "
            "or its lease expired and it was requeued"
        )

    def ack(self, message: Receipt, queue: str | None = None) -> None:
        """Done with the message: remove it. LeaseLost if the lease is no longer ours."""
        if isinstance(message, Message) and message.receipt and message._lease_name:
            # Fast path, one unlink: the lease is where this consumer last put it.
            if atomic.remove(self._paths(queue or message.queue).work, message._lease_name):
                message.receipt = message._lease_name = None
                return
        paths, work = self._held(message, queue)
        if not atomic.remove(paths.work, str(work)):
            raise LeaseLost(f"message {work.id} was taken back before it could be acked")
        if isinstance(message, Message):
            message.receipt = message._lease_name = None

    def nack(self, message: Receipt, queue: str | None = None, requeue: bool = True) -> str:
        """Give the message back: requeue it (until its requeue limit) or dead-letter it.

        Returns where it went: ``"ready"`` or ``"dead"``.
        """
        paths, work = self._held(message, queue)
        msg = message if isinstance(message, Message) else self._load(paths, paths.work, str(work), work.id)
        if msg is None:
            return DEAD
        where = self._retire(paths, work, msg, requeue, "rejected")
        if where is None:
            raise LeaseLost(f"message {work.id} was taken back before it could be nacked")
        if isinstance(message, Message):
            message.receipt = message._lease_name = None
        return where

    def release(self, message: Receipt, queue: str | None = None) -> None:
        """Put a claimed message back exactly as it was, as if never claimed.

        For a consumer that took a message it turns out it cannot use yet (a
        waiter interrupted before it had all it waited for): unlike nack, the
        priority and requeue count are unchanged, so no requeue limit is spent.
        """
        paths, work = self._held(message, queue)
        ready = ReadyName(work.priority, work.published, work.id, work.requeues)
        if not atomic.move(paths.work, str(work), paths.ready, str(ready)):
            raise LeaseLost(f"message {work.id} was taken back before it could be released")
        self._readied(paths, ready)
        if isinstance(message, Message):
            message.receipt = message._lease_name = None
            message.lease_expires = None

    def extend(self, message: Receipt, seconds: float | None = None, queue: str | None = None) -> int:
        """Renew the lease for ``seconds`` from now (default: the message timeout).

        Returns the new expiry (ns since the epoch). LeaseLost if it was requeued.
        """
        paths, work = self._held(message, queue)
        if seconds is None:
            seconds = (message.message_timeout if isinstance(message, Message)
                       else self._queue_values(paths)["message_timeout"])
        _check_seconds(seconds, "seconds")
        renewed = work.extended(self._lease_clock(paths.tmp) + int(seconds * 1e9))
        if not atomic.move(paths.work, str(work), paths.work, str(renewed)):
            raise LeaseLost(f"message {work.id} was taken back before its lease could be extended")
        if isinstance(message, Message):
            message.lease_expires = renewed.expires
            message._lease_name = str(renewed)
        return renewed.expires

    def _retire(self, paths: QueueDir, work: WorkName, msg: Message, requeue: bool, reason: str) -> str | None:
        """Requeue a message we hold, or dead-letter it if it may not be requeued.

        One rename either way; None if another client moved it first.
        """
        if requeue and msg.requeue:
            if msg.requeue_limit is None or work.requeues < msg.requeue_limit:
                requeued = work.requeued(msg.requeue_prio)
                if not atomic.move(paths.work, str(work), paths.ready, str(requeued)):
                    return None
                self._readied(paths, requeued)
                return READY
            reason = "requeue-limit"
        moved = self._dead_letter(paths, paths.work, str(work), reason,
                                  f"requeued {work.requeues} times" if reason == "requeue-limit" else "")
        return DEAD if moved else None

    def _dead_letter(self, paths: QueueDir, directory: atomic.Dir, name: str, reason: str, detail: str) -> bool:
        """Move ``name`` in ``directory`` to dead/ with the reason in its name, then record details beside it.

        The rename is the atomic step; the ``.reason`` file is written after it
        and is best effort (a crash in between leaves the reason code in the name).
        """
        original = name + ("_" if name.endswith(REASON_SUFFIX) else "")
        dead = dead_name(reason, original, time.time_ns())
        if not atomic.move(directory, name, paths.dead, dead):
            return False
        record = {
            "reason": reason, "detail": detail, "from": f"{os.path.basename(directory.path)}/{name}",
            "time": time.time(), "host": _HOST, "pid": _PID,
        }
        try:
            mode = self._queue_values(paths)["mode"]
            atomic.publish_file(paths.tmp, reason_tmp_name(dead), paths.dead, dead + REASON_SUFFIX,
                                json.dumps(record, sort_keys=True).encode(), durable=False, mode=mode)
        except DdmqError:
            pass
        return True

    # ----------------------------------------------------------------- clock
    def _lease_clock(self, probe_dir: atomic.Dir) -> int:
        """Now, in ns, for lease expiries: the local clock unless it is off from the file server's.

        Leases are written by one host and judged by others. A node whose
        clock is minutes off would otherwise requeue other clients' live
        leases early (clock ahead) or keep expired ones (clock behind). So the
        offset to the file server is measured now and then, and when it
        exceeds CLOCK_TOLERANCE lease times are taken on the server's clock.
        """
        checked = time.monotonic()
        if self._clock_checked is None or checked - self._clock_checked > CLOCK_CHECK_EVERY:
            self._clock_offset = self._server_offset(probe_dir)
            self._clock_checked = checked
        return time.time_ns() + self._clock_offset

    @staticmethod
    def _server_offset(probe_dir: atomic.Dir) -> int:
        """File server's clock minus ours (ns), from the mtime it gives a new file; 0 if within tolerance.

        A file's mtime at creation is stamped by the server on NFS, Lustre,
        GPFS and sshfs. If the probe cannot be made (read-only, full), the
        local clock is used: a lease decision must not fail for want of it.
        """
        probe = clock_probe_name()
        before = time.time_ns()
        try:
            fd = os.open(probe, atomic.OPEN_FLAGS, 0o600, dir_fd=probe_dir.fd)
        except OSError:
            return 0
        try:
            stamped = os.fstat(fd).st_mtime_ns
        except OSError:
            return 0
        finally:
            try:
                os.close(fd)
            except OSError:
                pass  # nothing was written through it
            atomic.discard(probe_dir, probe)
        offset = stamped - (before + time.time_ns()) // 2
        if abs(offset) <= CLOCK_TOLERANCE * 1e9:
            return 0
        warnings.warn(
            f"ddmq: this host's clock differs from the file server's by {-offset / 1e9:+.1f} s; "
            "using the server's time for leases (fix NTP on this host)",
            RuntimeWarning, stacklevel=4,
        )
        return offset

    # --------------------------------------------------------------- purge
    def purge(self, queue: str, dead: bool = False) -> int:
        """Remove every ready message (or, with ``dead``, every dead letter); returns how many."""
        paths = self._queue(queue)
        directory = paths.dead if dead else paths.ready
        removed = 0
        for name in atomic.listdir(directory):
            mode = directory.mode(name)
            if mode is None:
                continue  # gone meanwhile
            if stat.S_ISDIR(mode):
                atomic.remove_tree(directory, name)  # a dead-lettered foreign directory: never left by a link
                removed += 1
            elif atomic.remove(directory, name) and not name.endswith(REASON_SUFFIX):
                removed += 1
        self._listings.pop(paths.name, None)
        return removed

    # ----------------------------------------------------------- housekeeping
    def _maybe_clean(self, paths: QueueDir, settings: dict[str, Any]) -> None:
        """Clean the queue if nobody has in the last ``clean_interval`` seconds.

        The stamp's mtime is set by the file server, so every client on every
        host agrees on when the queue was last cleaned.
        """
        interval = settings["clean_interval"]
        now = time.monotonic()
        if now < self._clean_due.get(paths.name, 0.0):
            return
        try:
            age = (self._lease_clock(paths.tmp) - paths.dir.lstat(CLEAN_STAMP).st_mtime_ns) / 1e9
        except FileNotFoundError:
            age = float("inf")
        except OSError as exc:
            raise storage_error("read", paths.clean_stamp, exc) from None
        if age >= interval or age < -interval:
            self._clean_queue(paths, scan_ready=False)
            age = 0.0
        # Other clients can only make the stamp newer, so the queue cannot be
        # due before ``interval - age`` from now: no need to stat it until then
        # (but at least once a minute, so a shorter clean_interval set in
        # ddmq.yaml is seen soon).
        self._clean_due[paths.name] = now + min(interval - age, interval, 60.0)

    def clean(self, queue: str | None = None) -> CleanReport:
        """Housekeeping now, for one queue or all.

        Requeues (or dead-letters) messages whose lease expired, dead-letters
        files in ready/ and work/ that are not ddmq messages, and removes
        temporary files abandoned by crashed writers.
        """
        report = CleanReport()
        if queue is None:
            root = self._rootdir
            self._remove_abandoned(root, self._lease_clock(root), abandoned_in_root)
            refused: StorageError | None = None
            for name in self.list_queues():
                try:
                    paths = self._paths(name)
                except StorageError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    # A queue a member broke (a link in place of its directories) is
                    # refused, but must not stop the others being cleaned.
                    refused = refused or exc
                    continue
                report.add(self._clean_queue(paths, scan_ready=True))
            if refused is not None:
                raise refused
        else:
            report.add(self._clean_queue(self._queue(queue), scan_ready=True))
        return report

    def _clean_queue(self, paths: QueueDir, scan_ready: bool) -> CleanReport:
        """One housekeeping pass; see :meth:`clean`.

        Consumers pass ``scan_ready=False``: listing a ready/ of 100 000
        messages on every pass would make housekeeping cost O(queue), and a
        consumer dead-letters a foreign name in ready/ anyway when it reaches it.
        """
        report = CleanReport()
        # A fresh file renamed over the stamp: its mtime is the server's time of
        # creation, and replacing it needs only write access to the directory,
        # not ownership of the old stamp (which another user may have made).
        mode = self._queue_values(paths)["mode"]
        atomic.publish_file(paths.tmp, stamp_tmp_name(), paths.dir, CLEAN_STAMP, b"", durable=False, mode=mode)
        now = self._lease_clock(paths.tmp)
        for name in atomic.listdir(paths.work):
            work = parse_work(name)
            if work is None:
                report.dead_lettered += self._dead_letter(paths, paths.work, name, "foreign",
                                                          "file name is not a ddmq lease name")
            elif work.expires <= now:
                msg = self._load(paths, paths.work, name, work.id, report)
                if msg is None:
                    continue
                where = self._retire(paths, work, msg, True, "expired")
                report.requeued += where == READY
                report.dead_lettered += where == DEAD
        for name in atomic.listdir(paths.ready) if scan_ready else ():
            if parse_ready(name) is None:
                report.dead_lettered += self._dead_letter(paths, paths.ready, name, "foreign",
                                                          "file name is not a ddmq message name")
        report.temp_removed += self._remove_abandoned(paths.tmp, now, _in_tmp)
        return report

    def _remove_abandoned(self, directory: atomic.Dir, now_ns: int,
                          kind: Callable[[str], tuple[bool, bool]]) -> int:
        """Remove ddmq's own private entries untouched for ABANDONED_AFTER seconds.

        ``kind(name)`` says whether a name is one this protocol makes there
        (layout's grammar) and whether it is a directory ddmq made: nothing
        else is removed, and no other directory is entered, whatever a
        member of the group left there. ``now_ns`` is on the server's clock
        (see _lease_clock), so a client whose clock runs ahead cannot remove
        a file another client is still writing.
        """
        removed = 0
        cutoff = now_ns / 1e9 - ABANDONED_AFTER
        for name in atomic.list_all(directory):
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


def _in_tmp(name: str) -> tuple[bool, bool]:
    return abandoned_in_tmp(name), False


# The seed's spelling: ``broker(root, create=True)``.
broker = Broker
