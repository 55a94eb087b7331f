"""A ddmq root held open: its marker, its queues, and the queues this process has opened in it.

A directory is a root if it holds a regular file ``ddmq.yaml``; each queue is
a sub-directory with its own ``ddmq.yaml`` (see ``docs/protocol.md``,
"Layout"). A :class:`Root` keeps the root directory open and up to
OPEN_QUEUES :class:`~ddmq.queuedir.Queue` objects, least recently opened let go
first, and decides in one place whether the queue it holds is still the one
its name means: another client may delete a queue, or delete it and make it
again, at any moment.
"""
from __future__ import annotations

import errno
import os
import stat

from . import atomic
from .clock import LeaseClock
from .errors import (
    DdmqError, ForeignFiles, NotARoot, QueueExists, QueueNotFound, RootNotFound, StorageError, UnknownLayout, UsageError,
    storage_error,
)
from .housekeeping import foreign_entries
from .layout import LAYOUT, JOBS, QUEUE_MARKER, ROOT_MARKER, STATE_DIRS, check_queue_name, doomed_name, marker_tmp_name, \
    settings_tmp_name, staging_name
from .queuedir import Queue
from .settings import DEFAULTS, LAYOUT_KEY, SCHEMA, Settings, SettingsCache, dump, dump_value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_ROOT = "~/.ddmq"


def resolve_root(root: str | os.PathLike[str] | None) -> tuple[str, bool]:
    """The root to use and whether it is the default (``~/.ddmq``, created on first use).

    An explicit ``root`` wins, then the ``DDMQ_ROOT`` environment variable,
    then the default; ``~`` is expanded.
    """
    if root is not None and os.fspath(root) != "":
        return os.path.expanduser(os.fspath(root)), False
    env = os.environ.get("DDMQ_ROOT")
    if env:
        return os.path.expanduser(env), False
    return os.path.expanduser(DEFAULT_ROOT), True


# Queues whose directories a Root keeps open at once (five descriptors each);
# the least recently opened is let go beyond that.
OPEN_QUEUES = 32


class Root:
    """The root directory, held open, and the queues opened in it."""

    def __init__(self, path: str, create: bool):
        """Open the root at ``path``; with ``create``, make it (and its marker) if it is not one yet."""
        self.path = path
        self.files = SettingsCache()
        self.clock = LeaseClock()
        self._dir: atomic.Dir | None = None
        self._queues: dict[str, Queue] = {}  # open queues, oldest first (at most OPEN_QUEUES)
        self._cached_remotely: bool | None = None
        self._open(create)

    @property
    def dir(self) -> atomic.Dir:
        """The root, held open: every queue is opened relative to it, without following links."""
        if self._dir is None:
            try:
                self._dir = atomic.open_root(self.path)
            except FileNotFoundError:
                raise RootNotFound(f"ddmq root {self.path} no longer exists") from None
            except OSError as exc:
                raise storage_error("open root", self.path, exc) from None
        return self._dir

    def close(self) -> None:
        """Let go of every queue and of the root directory; they are opened again when used."""
        self._queues.clear()
        if self._dir is not None:
            self._dir.close()
            self._dir = None

    def _open(self, create: bool) -> None:
        try:
            self._dir = atomic.open_root(self.path)
            mode = self._dir.lstat(ROOT_MARKER).st_mode
            if stat.S_ISREG(mode):
                self._check_layout()
                return
            raise NotARoot(f"{self.path}/{ROOT_MARKER} is not a regular file (a link, FIFO or device "
                           "is in its place); refusing to use this root")
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:  # e.g. not in the group that shares the root
            raise storage_error("open root", self.path, exc) from None
        if not create:
            if not os.path.exists(self.path):
                raise RootNotFound(f"ddmq root {self.path} does not exist (create it with `ddmq create`)")
            raise NotARoot(f"{self.path} is not a ddmq root (no {ROOT_MARKER}); refusing to use it")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise NotARoot(f"{self.path} exists and is not a directory")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise storage_error("create root", self.path, exc) from None
        root = self.dir
        atomic.publish_file(root, marker_tmp_name(), root, ROOT_MARKER, dump({}, LAYOUT).encode(), durable=True)

    def _check_layout(self) -> None:
        """UnknownLayout unless the root marker says ``layout: LAYOUT``: the tree this code reads and writes.

        A client that wrote messages in a layout other clients do not read
        would strand them (or, worse, have those clients dead-letter whole
        directories as foreign); so one that does not know the root's layout
        refuses it, before touching any queue.
        """
        layout = self.files.values_in(self.dir, ROOT_MARKER).get(LAYOUT_KEY)
        if layout == LAYOUT:
            return
        marker = self.dir.join(ROOT_MARKER)
        if layout is None:
            raise UnknownLayout(
                f"{marker} has no '{LAYOUT_KEY}:' line: the root was made by an earlier ddmq, whose on-disk "
                f"layout this ddmq (layout {LAYOUT}) does not read; drain its queues with that ddmq, or, if "
                f"they hold no messages, add the line '{LAYOUT_KEY}: {LAYOUT}'")
        raise UnknownLayout(f"{marker} says {LAYOUT_KEY}: {str(layout)[:20]}, an on-disk layout this ddmq "
                            f"(layout {LAYOUT}) does not read: use a ddmq that does")

    def cached_remotely(self) -> bool:
        """Whether the root is on a filesystem whose clients cache listings: not a local disk or tmpfs.

        Read once from /proc/self/mountinfo, when a consumer first finds a
        queue idle. Where it cannot be read, assume a cache (a probe is cheap).
        """
        if self._cached_remotely is None:
            from .mounts import local_filesystem

            self._cached_remotely = not local_filesystem(self.path)
        return self._cached_remotely

    def settings(self) -> Settings:
        """The root's settings: defaults overridden by its ``ddmq.yaml``."""
        return Settings(self.files.merged((self.dir, ROOT_MARKER)))

    # ---------------------------------------------------------------- queues
    def queue(self, name: str) -> Queue:
        """The open queue ``name``, opened on first use (QueueNotFound if there is none), unchecked."""
        q = self._queues.get(name) if isinstance(name, str) else None
        if q is None:
            q = Queue(self.dir, check_queue_name(name), self.files, self.clock, self.cached_remotely)
            if len(self._queues) >= OPEN_QUEUES:
                self.forget(next(iter(self._queues)))
            self._queues[name] = q
        return q

    def forget(self, name: str) -> None:
        """Drop what this process holds of a queue (its directories close once unused)."""
        self._queues.pop(name, None)

    def current(self, name: str) -> Queue:
        """The queue, opened again if the one held open is no longer called by its name."""
        q = self.queue(name)
        if q.is_named_by(self.dir):
            return q
        self.forget(name)
        return self.queue(name)

    def checked(self, name: str) -> Queue:
        """The queue, checked now to exist (its marker), or QueueNotFound."""
        q = self.current(name)
        if not q.has_marker():
            self.forget(name)
            q = self.queue(name)  # QueueNotFound, or a queue made again meanwhile
        return q

    def with_settings(self, name: str) -> tuple[Queue, Settings]:
        """An existing queue and its effective settings, or QueueNotFound.

        The stats that tell whether the queue's settings changed also tell
        whether the queue is still the one held open (not deleted, or
        deleted and made again), and they are made at most once per
        SETTINGS_MAX_AGE: a publish or consume otherwise costs no system call
        beyond its own renames.
        """
        q = self.queue(name)
        settings = q.recent_settings()
        if settings is None:
            q = self.current(name)
            try:
                settings = q.check()
            except (FileNotFoundError, NotADirectoryError):
                self.forget(name)
                raise QueueNotFound(f"no queue {name!r} in {self.path}") from None
        return q, settings

    def gone(self, name: str, exc: StorageError) -> DdmqError:
        """What to raise after a StorageError inside a queue: QueueNotFound if the queue itself is gone.

        Within SETTINGS_MAX_AGE a queue deleted by another client is noticed
        this way, by the operation that fails, not by a stat before each one.
        """
        self.forget(name)
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE):
            try:
                self.checked(name)
            except QueueNotFound as missing:
                return missing
            except DdmqError:
                pass
        return exc

    def is_queue(self, name: str) -> bool:
        try:
            self.checked(name)
            return True
        except QueueNotFound:
            return False

    def list_queues(self) -> list[str]:
        """Names of the queues in this root, sorted: directories (not links) holding a queue marker."""
        root = self.dir
        return sorted(
            name for name in atomic.listdir(root)
            if name != ROOT_MARKER and stat.S_ISDIR(root.mode(name) or 0)
            and stat.S_ISREG(root.mode(f"{name}/{QUEUE_MARKER}") or 0)
        )

    def settings_sources(self, name: str) -> dict[str, tuple[Any, str]]:
        """Each effective setting of a queue with where it came from: ``default``, or the file that set it."""
        q = self.checked(name)
        layers = [(self.files.values_in(q.dir, QUEUE_MARKER), q.dir.join(QUEUE_MARKER)),
                  (self.files.values_in(self.dir, ROOT_MARKER), self.dir.join(ROOT_MARKER))]
        return {key: next(((values[key], source) for values, source in layers if key in values),
                          (default, "default"))
                for key, default in DEFAULTS.items()}

    def set_settings(self, name: str, values: dict[str, Any], unset: list[str]) -> None:
        """Change the settings a queue's own ``ddmq.yaml`` sets: ``values`` (validated) set, ``unset`` removed.

        The new file is written privately in the queue's tmp/ and renamed over
        the old one, so every client reads either the old settings or the new.
        Two operators changing one queue at once: the last rename wins.
        """
        unknown = [key for key in unset if key not in SCHEMA]
        if unknown:
            raise UsageError(f"unknown setting {unknown[0]!r} (known: {', '.join(SCHEMA)})")
        q = self.checked(name)
        try:
            own = self.files.values_in(q.dir, QUEUE_MARKER, required=True)
        except (FileNotFoundError, NotADirectoryError):
            raise QueueNotFound(f"no queue {name!r} in {self.path}") from None
        current = {k: v for k, v in own.items() if k not in unset}
        current.update(values)
        mode = current.get("mode", self.settings().mode)
        atomic.publish_file(q.tmp, settings_tmp_name(), q.dir, QUEUE_MARKER, dump(current).encode(), durable=True,
                            mode=mode)

    # ------------------------------------------------------- create, delete
    def create_queue(self, name: str, exist_ok: bool, values: dict[str, Any]) -> None:
        """Create a queue with the (validated) settings ``values``; see Broker.create_queue."""
        check_queue_name(name)
        # With exist_ok, a queue deleted by another client between our look and
        # our rename is made again, not reported as existing (each lost race
        # means another client made progress, so the tries are bounded).
        for _ in range(100 if exist_ok else 1):
            try:
                if exist_ok and self.is_queue(name):
                    return self._same_settings(name, values)
                try:
                    self._create(name, values)
                    return
                except QueueExists:
                    if not exist_ok:
                        raise
                    if self.is_queue(name):
                        return self._same_settings(name, values)
            except QueueNotFound:
                continue  # deleted while we looked at its settings: make it again
        raise QueueExists(f"queue {name!r} already exists in {self.path} and is not a queue "
                          "(or other clients keep deleting and creating it)")

    def _create(self, name: str, values: dict[str, Any]) -> None:
        """One attempt to build a queue under a hidden name and rename it into place; QueueExists if taken."""
        root = self.dir
        mode = values.get("mode", self.settings().mode)
        staging = staging_name(name)
        try:
            made = atomic.make_own_dir(root, staging, mode)
            try:
                for state in STATE_DIRS + (JOBS,):
                    atomic.make_own_dir(made, state, mode).close()
                atomic.write_private(made, QUEUE_MARKER, dump(values).encode(), durable=True, mode=mode)
            finally:
                made.close()
            os.rename(staging, name, src_dir_fd=root.fd, dst_dir_fd=root.fd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ESTALE) and atomic.renamed(root, staging, root, name):
                atomic.fsync_dir(root)  # our rename happened; only its reply was lost
                return
            atomic.remove_tree(root, staging)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise QueueExists(f"queue {name!r} already exists in {self.path}") from None
            raise storage_error("create queue", root.join(name), exc) from None
        except DdmqError:
            atomic.remove_tree(root, staging)
            raise
        atomic.fsync_dir(root)

    def _same_settings(self, name: str, values: dict[str, Any]) -> None:
        """With exist_ok: the existing queue must have the settings asked for, else QueueExists.

        ``create --exist-ok --message-timeout 5`` on a queue with another
        timeout would otherwise succeed and leave the old value in force.
        """
        if not values:
            return
        q = self.checked(name)
        current = q.read_settings().as_dict()
        differ = [f"{key} {dump_value(key, current[key])}, not {dump_value(key, value)}"
                  for key, value in values.items() if current[key] != value]
        if differ:
            raise QueueExists(f"queue {name!r} already exists with {'; '.join(differ)} "
                              f"(change it in {q.dir.join(QUEUE_MARKER)})")

    def delete_queue(self, name: str, force: bool) -> None:
        """Delete a queue and all its messages; see Broker.delete_queue."""
        q = self.checked(name)
        if not force:
            foreign = foreign_entries(q)
            if foreign:
                shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
                raise ForeignFiles(
                    f"queue {name!r} holds files ddmq did not write ({shown}); "
                    "move them away or delete with force"
                )
        root = self.dir
        doomed = doomed_name(name)
        try:
            os.rename(name, doomed, src_dir_fd=root.fd, dst_dir_fd=root.fd)
        except OSError as exc:
            lost_reply = exc.errno in (errno.ENOENT, errno.ESTALE) and atomic.renamed(root, name, root, doomed)
            if not lost_reply:
                self.forget(name)
                if exc.errno == errno.ENOENT:
                    raise QueueNotFound(f"no queue {name!r} in {self.path}") from None
                raise storage_error("delete queue", q.dir.path, exc) from None
        self.forget(name)
        atomic.remove_tree(root, doomed)
