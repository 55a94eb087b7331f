"""ready/ as a tree of small directories, so that finding the head of the queue never lists all of it.

Layout 2 (``docs/protocol.md``, "ready/ as a tree"): a message waiting lies
in ``ready/ERA/BAND/SLOT/NAME``, where :func:`ddmq.layout.shard_of` computes
ERA (its priority and 39 h of publish time), BAND (137 s of that) and SLOT
(67 ms of that) from NAME. Sorted by name, eras, bands, slots, then names
are delivery order, so the head of the queue is the first name of the first
non-empty slot of the first band of the first era: four listings of small
directories, however long the queue. A fresh process (every ``ddmq
consume`` at the end of a batch job) pays that, not a listing of a million
names; and no directory holds more than what was published in 67 ms (a
slot), 2048 entries (a band; an era 1024), or one era per priority per 39 h of
backlog (ready/ itself).

Directories come and go without a lock:

- **Made on demand.** Whoever puts a message into a slot (publish, requeue,
  release, requeue of a dead letter, a job end) opens its era, band and
  slot, and makes whichever is missing, with ready/'s own permission bits set
  on the directory it opened (:func:`ddmq.atomic.make_dir_like`). A client
  that finds one made by another first uses that one.
- **Removed when empty and closed.** A consumer that lists a slot empty after
  its time range ended (plus SHARD_GRACE, for publishers whose clock lags
  or a requeue into an old slot) removes it with ``rmdir``, and a band or
  era once it holds nothing. ``rmdir`` removes only an empty directory: it
  never takes a message with it.
- **Made again where one vanished.** A client whose era, band or slot was
  removed between its open and its rename gets ENOENT (ESTALE on NFS) for
  the rename while its source is still there: it opens or makes the
  directories again and retries, at most MAX_ATTEMPTS times (a directory
  removed that often in a row is no race but a fault, and is reported).

Every directory of the tree is opened without following a link and kept
open (the OPEN_SHARDS most recent), and every rename into or out of it is
relative to that descriptor, as for the state directories
(:class:`ddmq.atomic.Dir`): a member who plants a link in the tree makes an
operation fail, or has it moved to dead/, never act outside the root.
"""
from __future__ import annotations

import errno
import os

from . import atomic
from .errors import DdmqError, StorageError, storage_error
from .layout import SHARD_LEVELS, has_ready_grammar, is_shard, shard_end, shard_of, shard_range

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Generator, Iterator, List, Optional, Tuple

    Stamp = Tuple[int, ...]
    Slot = Tuple[str, atomic.Dir, List[str]]
    Stamps = List[Tuple[atomic.Dir, Optional[Stamp]]]
    Foreign = Callable[[atomic.Dir, str], object]

# An empty slot or band is removed only once its time range ended this long
# ago: a publisher whose clock is behind still writes into it meanwhile, and
# removing it under the publisher costs both sides a retry.
SHARD_GRACE = 10.0
# Puts into a slot that vanished this many times in a row are reported.
MAX_ATTEMPTS = 8
# Directories of the tree a process keeps open: a publisher uses one slot at
# a time, a consumer the few at the head of the queue.
OPEN_SHARDS = 64


def dir_stamp(directory: atomic.Dir) -> Stamp | None:
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


def ignore_foreign(directory: atomic.Dir, name: str) -> None:
    """What a reader that moves nothing does with a name that fits no grammar: nothing."""


class ReadyTree:
    """One queue's ready/ and the directories of its tree this process holds open."""

    __slots__ = ("ready", "_open", "_made_in", "_recent")

    def __init__(self, ready: atomic.Dir):
        self.ready = ready
        self._open: dict[str, atomic.Dir] = {}  # "ERA", "ERA/BAND" or "ERA/BAND/SLOT": held open, oldest first
        self._made_in: list[atomic.Dir] = []  # directories that gained an era, band or slot, not yet synced
        # The slot last used and the range of names in it: a publisher's or a
        # consumer's next name is almost always there, found by two string
        # comparisons instead of working out its path.
        self._recent: tuple[str, str, atomic.Dir] | None = None

    # ------------------------------------------------------------ directories
    def _hold(self, key: str, directory: atomic.Dir) -> atomic.Dir:
        self._recent = None
        self._open.pop(key, None)
        if len(self._open) >= OPEN_SHARDS:
            del self._open[next(iter(self._open))]  # closed when its last user lets go of it
        self._open[key] = directory
        return directory

    def forget(self, name: str) -> None:
        """Let go of the directories of ``name``'s slot: the next use opens them afresh."""
        path = shard_of(name)
        self._recent = None
        for depth in range(1, SHARD_LEVELS + 1):
            self._open.pop("/".join(path[:depth]), None)

    def _sub(self, parent: atomic.Dir, key: str, name: str, create: bool) -> atomic.Dir | None:
        """The era, band or slot ``name`` in ``parent``, held open; None if it is not there (or vanished)."""
        held = self._open.get(key)
        if held is not None:
            return held
        if not create:
            found = atomic.open_if_there(parent, name)
            return None if found is None else self._hold(key, found)
        made = atomic.open_or_make_dir(parent, name, self.ready)
        if made is None:
            return None  # the parent was removed meanwhile: the caller starts again
        directory, new = made
        if new:
            self._made_in.append(parent)
        return self._hold(key, directory)

    def slot_dir(self, name: str, create: bool = False) -> atomic.Dir | None:
        """The slot the ready name ``name`` lies in, held open; None if there is none (with ``create``: it vanished)."""
        recent = self._recent
        if recent is not None and recent[0] <= name < recent[1]:
            return recent[2]
        path = shard_of(name)
        directory: atomic.Dir | None = self._open.get("/".join(path))
        if directory is None:
            directory = self.ready
            for depth in range(1, SHARD_LEVELS + 1):
                directory = self._sub(directory, "/".join(path[:depth]), path[depth - 1], create)
                if directory is None:
                    return None
        self._recent = (*shard_range(path), directory)
        return directory

    def sync(self, slots: list[atomic.Dir]) -> None:
        """Make durable the renames into ``slots`` and the directories made for them."""
        made, self._made_in = self._made_in, []
        for directory in made + slots:
            atomic.fsync_dir(directory)

    # ----------------------------------------------------------------- moves
    def put(self, tmp_dir: atomic.Dir, tmp: str, name: str, keep: bool = False) -> atomic.Dir:
        """Publish: rename the private ``tmp`` to ``name`` in its slot, made if missing; the slot.

        StorageError as :func:`ddmq.atomic.rename_private` gives it, ``tmp``
        removed (unless ``keep``: a job end whose record links it, for
        housekeeping to publish): nothing became visible.
        """
        try:
            for _ in range(MAX_ATTEMPTS):
                slot = self.slot_dir(name, create=True)
                if slot is not None and atomic.rename_private(tmp_dir, tmp, slot, name, may_vanish=True, keep=keep):
                    return slot
                self.forget(name)
            raise self._vanished(name)
        except DdmqError:
            if not keep:
                atomic.discard(tmp_dir, tmp)  # e.g. a slot that could not be made
            raise

    def move_in(self, src_dir: atomic.Dir, src: str, name: str) -> bool:
        """Move ``src`` (from work/, dead/ or tmp/) to the ready name ``name``; False if another client moved it first."""
        for _ in range(MAX_ATTEMPTS):
            slot = self.slot_dir(name, create=True)
            if slot is not None:
                if atomic.move(src_dir, src, slot, name):
                    return True
                if not atomic.exists(src_dir, src) or not atomic.removed(slot):
                    return False
            self.forget(name)  # the slot was removed after we opened it: ours is still at src
        raise self._vanished(name)

    def move_out(self, name: str, dst_dir: atomic.Dir, dst: str) -> bool:
        """Move the ready message ``name`` to ``dst``; False if another client took it first (or it is gone)."""
        slot = self.slot_dir(name)
        return slot is not None and atomic.move(slot, name, dst_dir, dst)

    def _vanished(self, name: str) -> StorageError:
        return StorageError(f"{self.ready.path}/{'/'.join(shard_of(name))} was removed {MAX_ATTEMPTS} times "
                            "in a row while a message was put into it", errno.ENOENT)

    # --------------------------------------------------------------- listing
    def walk(self, stamps: Stamps, foreign: Foreign = ignore_foreign,
             remove_before: int | None = None) -> Iterator[Slot]:
        """Every non-empty slot as (``ERA/BAND/SLOT``, its directory, its names), slots in delivery order.

        Lazily: a consumer that wants the head stops after the first slot.
        Each directory is opened afresh for its listing (sshfs reads a
        directory once per open handle; NFS revalidates at open) and held
        for the renames that follow. ``stamps`` gets each directory's
        :func:`dir_stamp`, taken before its listing, so that an idle
        consumer can tell nothing changed. Non-hidden entries that fit no
        grammar of their level go to ``foreign``. With ``remove_before``
        (ns), empty directories whose time range ended SHARD_GRACE before
        it are removed on the way.
        """
        stamps.append((self.ready, dir_stamp(self.ready)))
        yield from self._below(self.ready, (), atomic.listdir(self.ready), stamps, foreign, remove_before)

    def _below(self, parent: atomic.Dir, path: tuple[str, ...], names: list[str], stamps: Stamps,
               foreign: Foreign, remove_before: int | None) -> Generator[Slot, None, int]:
        """The non-empty slots under ``parent`` (at ``path``, listed as ``names``); returns how many entries it kept."""
        level = len(path)
        kept = 0
        for name in sorted(self._fitting(parent, names, lambda entry: is_shard(level, entry), foreign)):
            below = path + (name,)
            key = "/".join(below)
            directory = self._relisted(parent, key, name, foreign)
            if directory is None:
                continue
            stamps.append((directory, dir_stamp(directory)))
            listed = _listed(directory)
            if len(below) == SHARD_LEVELS:
                found = self._fitting(directory, listed, _lies_in(below), foreign)
                if found:
                    kept += 1
                    yield key, directory, found
                    continue
                left = 0
            else:
                left = yield from self._below(directory, below, listed, stamps, foreign, remove_before)
            if not left and remove_before is not None \
                    and shard_end(below) + int(SHARD_GRACE * 1e9) < remove_before and self._remove(parent, name, key):
                stamps.pop()  # its own: whatever it held was removed before it
            else:
                kept += 1
        return kept

    def contents(self) -> tuple[list[tuple[atomic.Dir, str]], list[tuple[atomic.Dir, str]]]:
        """(every message with its directory, in delivery order; every entry that fits no grammar, where it lies)."""
        foreign: list[tuple[atomic.Dir, str]] = []
        messages = list(self.entries(lambda directory, name: foreign.append((directory, name))))
        return messages, foreign

    def entries(self, foreign: Foreign = ignore_foreign) -> Iterator[tuple[atomic.Dir, str]]:
        """Every message in every slot with its directory, in delivery order, lazily; removes nothing."""
        for _, slot_dir, names in self.walk([], foreign):
            for name in sorted(names):
                yield slot_dir, name

    def directories(self, foreign: Foreign = ignore_foreign, remove_before: int | None = None) -> list[atomic.Dir]:
        """ready/ and every directory of its tree, after a walk (for housekeeping)."""
        stamps: Stamps = []
        for _ in self.walk(stamps, foreign, remove_before):
            pass
        return [directory for directory, _ in stamps]

    def open_directories(self, listed: list[atomic.Dir], now_ns: int) -> list[atomic.Dir]:
        """The directories of the tree among ``listed`` a publisher may still write to: their time range has not ended.

        (Ended SHARD_GRACE ago, as for removal: a publisher whose clock lags.)
        """
        prefix = len(self.ready.path) + 1
        found = []
        for directory in listed:
            if directory is self.ready:
                continue
            path = tuple(directory.path[prefix:].split("/"))
            if shard_end(path) + int(SHARD_GRACE * 1e9) >= now_ns:
                found.append(directory)
        return found

    @staticmethod
    def _fitting(directory: atomic.Dir, names: list[str], fits: Callable[[str], bool], foreign: Foreign) -> list[str]:
        """The names that fit their level's grammar, in listing order; the others go to ``foreign``."""
        found = []
        for name in names:
            if fits(name):
                found.append(name)
            else:
                foreign(directory, name)
        return found

    def _relisted(self, parent: atomic.Dir, key: str, name: str, foreign: Foreign) -> atomic.Dir | None:
        """``name`` in ``parent`` opened afresh and held; None if it vanished or is not a directory (then foreign)."""
        try:
            return self._hold(key, atomic.open_dir(parent, name))
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                foreign(parent, name)
                return None
            raise atomic.refused(parent.join(name), exc) from None

    def _remove(self, parent: atomic.Dir, name: str, key: str) -> bool:
        """rmdir an empty directory of the tree; False if it is not empty (a message arrived) or is gone."""
        try:
            os.rmdir(name, dir_fd=parent.fd)
        except OSError:
            return False
        self._open.pop(key, None)
        self._recent = None
        return True


def _lies_in(path: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a name is a message name whose place is this slot (not one moved there by hand)."""
    first, beyond = shard_range(path)

    def fits(name: str) -> bool:
        return first <= name < beyond and has_ready_grammar(name)
    return fits


def _listed(directory: atomic.Dir) -> list[str]:
    """The names in a directory this process just opened, hidden names left out."""
    try:
        return [name for name in os.listdir(directory.fd) if not atomic.hidden(name)]
    except OSError as exc:
        raise storage_error("list", directory.path, exc) from None
