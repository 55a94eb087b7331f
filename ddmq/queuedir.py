"""One queue as this process holds it: open directories, a settings snapshot, a listing, a clean schedule.

Everything a client keeps about a queue between operations lives in one
:class:`Queue`, so that letting a queue go (deleted by another client, made
again, or simply least recently used) is dropping one object.

The queue directory and its four state directories are opened once, without
following symbolic links (see :class:`ddmq.atomic.Dir`), and every rename,
unlink, create and listing inside them is made relative to those
descriptors. A member of the sharing group who replaces ``QUEUE/tmp`` (or the
queue itself) by a link to somebody's home can then make an operation fail,
but never make it act outside the root.
"""
from __future__ import annotations

import heapq
import os
import stat
import time

from . import atomic
from .clock import CLOCK_TOLERANCE
from .errors import QueueNotFound, StorageError, storage_error
from .layout import CLEAN_STAMP, DEAD, JOBS, QUEUE_MARKER, READY, ROOT_MARKER, TMP, WORK, ready_probe_name, shard_range
from .settings import Settings
from .shards import ReadyTree, dir_stamp, ignore_foreign

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterator
    from weakref import WeakKeyDictionary

    from .clock import LeaseClock
    from .message import Message
    from .settings import SettingsCache
    from .shards import Foreign, Stamps

    Match = Callable[[Message], bool]

# A consumer re-lists ready/ at least this often, so a newly published message
# of higher priority waits at most this long behind an older listing.
LISTING_MAX_AGE = 1.0
# ... unless listing it takes longer than this share of that time: a ready/ of
# 100 000 names takes 0.1-0.2 s to list, and re-listing it every second would
# cost a consumer more than its claims. Such a listing is kept 20x as long as
# it took to make.
LISTING_MAX_SHARE = 0.05
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
# On a filesystem whose clients cache directory listings (NFS, sshfs...), a
# consumer that finds nothing ready refreshes its client's view of ready/ at
# most this often (see Queue.refresh_view): another node's publish is seen
# within about this time, not the cache's 20-60 s.
PROBE_EVERY = 1.0


class Listing:
    """A consumer's snapshot of ready/ as a heap, so the best name pops first.

    Filled slot by slot from a walk of ready/'s tree (see
    :meth:`ddmq.shards.ReadyTree.walk`): the next slot is listed only when
    the names at hand run out, or when the best of them lies beyond it (a
    name this process pushed). Names this process itself moves into ready/
    (publish, nack, requeue) are pushed in, so its own writes are never
    hidden behind an older listing. ``stamps`` holds each directory's stat
    taken just before it was listed, to prove later that nothing entered or
    left (see Queue.ready_names); ``skip`` is the set of names filtered out.
    """

    def __init__(self, tree: ReadyTree, started: float, skip: set[str] | frozenset[str],
                 foreign: Foreign, now_ns: int):
        self.names: list[str] = []
        self.stamps: Stamps = []
        self.skip = skip
        self.done = False  # the walk reached its end: every slot was listed
        self._walk = tree.walk(self.stamps, foreign, remove_before=now_ns)
        self._listed_at = now_ns  # on the lease clock, as the directories' mtimes
        self._beyond = ""  # the first name beyond the slots listed so far
        self._cost = 0.0
        self.taken = started
        self.max_age = LISTING_MAX_AGE

    def pop(self) -> str | None:
        """The best name not yet handed out, listing further slots as needed; None once all were."""
        names = self.names
        while not self.done and (not names or names[0] >= self._beyond):
            started = time.monotonic()
            try:
                key, _, found = next(self._walk)
                self._beyond = shard_range(tuple(key.split("/")))[1]
            except StopIteration:
                self.done = True
            else:
                skip = self.skip
                names.extend([name for name in found if name not in skip] if skip else found)
                heapq.heapify(names)
            self._cost += time.monotonic() - started
            self.max_age = max(LISTING_MAX_AGE, self._cost / LISTING_MAX_SHARE)
        return heapq.heappop(names) if names else None

    def push(self, name: str) -> None:
        heapq.heappush(self.names, name)

    def drop(self, count: int) -> None:
        """Leave out the next ``count`` names (seen again at the next listing)."""
        for _ in range(min(count, len(self.names))):
            heapq.heappop(self.names)

    def idle(self) -> bool:
        """Whether every slot was listed and every name handed out."""
        return self.done and not self.names

    def unchanged(self) -> bool:
        """Whether no directory of this listing changed since it was listed.

        A stamp is trusted only if its mtime is SETTLED_AFTER older than the
        listing: a change in the same timestamp tick as an earlier one leaves
        the mtime as it was.
        """
        settled = self._listed_at - SETTLED_AFTER * 1e9
        try:
            return all(stamp is not None and stamp[0] <= settled and dir_stamp(directory) == stamp
                       for directory, stamp in self.stamps)
        except StorageError:
            return False  # a directory of the tree was removed meanwhile


class Queue:
    """One queue's open directories and what this process remembers about it."""

    __slots__ = ("name", "dir", "ready", "tree", "work", "dead", "tmp", "root", "clock", "listing", "clean_due", "expiry_due", "_jobs",
                 "_probe_due", "_cached_remotely",
                 "_files", "_checked", "_rejected")

    def __init__(self, root: atomic.Dir, name: str, files: SettingsCache, clock: LeaseClock,
                 cached_remotely: Callable[[], bool]):
        """Open the queue ``name`` (a checked queue name) in ``root``.

        ``cached_remotely()`` says whether the root's filesystem is one whose
        clients cache listings (asked only once a consumer finds the queue
        idle). QueueNotFound if there is none; a StorageError refusal if a
        link or another file is in the place of one of its directories.
        """
        self.name = name
        self.root = root
        self.clock = clock
        self._files = files
        self.dir = _open_queue_dir(root, name)
        try:
            self.ready = atomic.open_dir(self.dir, READY)
            self.work = atomic.open_dir(self.dir, WORK)
            self.dead = atomic.open_dir(self.dir, DEAD)
            self.tmp = atomic.open_dir(self.dir, TMP)
        except OSError as exc:
            raise atomic.refused(self.dir.join(exc.filename) if exc.filename else self.dir.path, exc) from None
        self.tree = ReadyTree(self.ready)
        self._jobs: atomic.Dir | None = None
        self._cached_remotely = cached_remotely
        self._probe_due = 0.0  # monotonic time of the next refresh_view
        self.listing: Listing | None = None
        self.clean_due = 0.0  # monotonic time before which housekeeping is certainly not due
        self.expiry_due = 0.0  # monotonic time before which no consume looks for expired leases
        self._checked: tuple[float, Settings] | None = None
        self._rejected: WeakKeyDictionary[Match, set[str]] | None = None  # made when first needed

    def __repr__(self) -> str:
        return f"Queue({self.dir.path!r})"

    def on_local_filesystem(self) -> bool:
        """Whether the root is on a filesystem only this host writes to (ext4, XFS...), not a network one."""
        return not self._cached_remotely()

    def state(self, name: str) -> atomic.Dir:
        """The state directory called ``name`` (ready, work, dead or tmp)."""
        return {READY: self.ready, WORK: self.work, DEAD: self.dead, TMP: self.tmp}[name]

    @property
    def jobs(self) -> atomic.Dir:
        """``jobs/``, the job end records, opened on first use (and made, in a queue older than them)."""
        if self._jobs is None:
            if not atomic.exists(self.dir, JOBS):
                try:
                    atomic.make_own_dir(self.dir, JOBS, self.settings().mode).close()
                except FileExistsError:
                    pass  # another client made it meanwhile
                except OSError as exc:
                    raise storage_error("create", self.dir.join(JOBS), exc) from None
            self._jobs = self._open_jobs()
        return self._jobs

    @property
    def jobs_made(self) -> bool:
        """Whether ``jobs/`` was opened already (so it exists); False only means "not looked yet"."""
        return self._jobs is not None

    def _open_jobs(self) -> atomic.Dir:
        try:
            return atomic.open_dir(self.dir, JOBS)
        except OSError as exc:
            raise atomic.refused(self.dir.join(JOBS), exc) from None

    @property
    def clean_stamp(self) -> str:
        """The clean stamp's path, for messages."""
        return self.dir.join(CLEAN_STAMP)

    def now(self) -> int:
        """Now in ns on the lease clock (see :mod:`ddmq.clock`), probing in this queue's tmp/."""
        return self.clock.now(self.tmp)

    # -------------------------------------------------------------- settings
    def read_settings(self, required: bool = False) -> Settings:
        """Effective settings from the files: defaults, the root's file, then the queue's.

        With ``required``, a missing queue file raises FileNotFoundError: it is the queue's marker.
        """
        return Settings(self._files.merged((self.root, ROOT_MARKER), (self.dir, QUEUE_MARKER), required=required))

    def recent_settings(self) -> Settings | None:
        """The settings if :meth:`check` read them less than SETTINGS_MAX_AGE ago."""
        checked = self._checked
        if checked is not None and time.monotonic() - checked[0] < SETTINGS_MAX_AGE:
            return checked[1]
        return None

    def settings(self) -> Settings:
        """Effective settings, read within SETTINGS_MAX_AGE."""
        return self.recent_settings() or self.read_settings()

    def check(self) -> Settings:
        """Read the settings now, requiring the queue's marker (FileNotFoundError without it), and keep them."""
        settings = self.read_settings(required=True)
        self._checked = (time.monotonic(), settings)
        return settings

    def has_marker(self) -> bool:
        return atomic.exists(self.dir, QUEUE_MARKER)

    def is_named_by(self, root: atomic.Dir) -> bool:
        """Whether the directory held open is still the one called by this queue's name in ``root``.

        False once another client deleted it, or deleted it and made it again.
        """
        try:
            named = root.lstat(self.name)
            held = os.fstat(self.dir.fd)
        except OSError:
            return False
        return (named.st_ino, named.st_dev) == (held.st_ino, held.st_dev)

    # --------------------------------------------------------------- listing
    def ready_names(self, skip: set[str] | frozenset[str] = frozenset(), foreign: Foreign = ignore_foreign) \
            -> Iterator[str]:
        """Ready names in delivery order, from a listing at most LISTING_MAX_AGE old (see LISTING_MAX_SHARE).

        The head of the queue is found by listing ready/, its first era, band
        and non-empty slot (see :mod:`ddmq.shards`); further
        slots are listed only as the names at hand run out. The listing is
        kept and consumed from the front, and walked again when it runs out
        or grows old; names taken by other consumers meanwhile simply fail
        to claim. Entries that fit no name grammar go to ``foreign``.
        StorageError (ENOENT) once the queue was deleted.
        """
        listing = self.listing
        fresh = False
        while True:
            if listing is not None and (fresh or time.monotonic() - listing.taken <= listing.max_age):
                name = listing.pop()
                if name is not None:
                    yield name
                    continue
                if fresh:
                    return
            started = time.monotonic()
            idle = listing is not None and listing.idle()
            probed = idle and self.refresh_view(started)
            if idle and not probed and listing is not None and listing.skip is skip and listing.unchanged():
                # Nothing entered or left any directory of ready/ since it was
                # last walked: an idle waiter's poll is a stat of each (ready/,
                # and the few directories of its tree not yet removed), not a walk.
                return
            listing = self.listing = Listing(self.tree, started, skip, foreign, self.now())
            fresh = True

    def refresh_view(self, now: float) -> bool:
        """Make this client's cached view of ready/ fresh, if it caches one and a refresh is due.

        NFS and sshfs clients serve a directory's listing and attributes from
        a cache for 20-60 s, so a consumer on one node would not see another
        node's publish for that long. A change a client makes itself to a
        directory drops its cached view of it (sshfs invalidates the
        directory; NFS sees in its own change's reply that others changed it
        too), so an idle consumer makes and removes a private file in ready/
        and in each directory of its tree a publisher may still write to (whose time
        range has not ended; see :func:`ddmq.shards.ReadyTree.open_directories`),
        at most once per PROBE_EVERY. It costs publishers nothing. True if
        this call made the probe.
        """
        if now < self._probe_due or not self._cached_remotely():
            return False
        self._probe_due = now + PROBE_EVERY
        listed = [directory for directory, _ in self.listing.stamps] if self.listing is not None else []
        made = False
        # None without write access: the listing is then as fresh as the cache lets it be.
        for directory in [self.ready] + self.tree.open_directories(listed, self.now()):
            made = atomic.probe(directory, ready_probe_name()) is not None or made
        return made

    def lost_race(self) -> None:
        """After another consumer claimed the name we tried: skip 0-3 of the next ones.

        Consumers that listed ready/ at the same time pop the same names in
        the same order, and in lockstep each name costs all but one of them a
        failed rename (about two per message with four consumers). Skipping a
        few at random spreads them over the queue; what one skips, the others
        take, and it sees any left at its next listing. A lone consumer never
        loses a race, so its order is untouched. The low bits of the clock
        are random enough to break a lockstep.
        """
        if self.listing is not None:
            self.listing.drop(time.perf_counter_ns() & 3)

    def readied(self, name: str) -> None:
        """Tell this process's listing about a message it just put into ready/."""
        if self.listing is not None:
            self.listing.push(name)

    def rejected_by(self, match: Match) -> set[str]:
        """Names in this queue that ``match`` rejected, kept as long as the predicate object lives."""
        if self._rejected is None:
            from weakref import WeakKeyDictionary  # deferred: only waiters need it

            self._rejected = WeakKeyDictionary()
        return self._rejected.setdefault(match, set())


def _open_queue_dir(root: atomic.Dir, name: str) -> atomic.Dir:
    """The queue directory ``name`` in ``root``, opened without following links, or QueueNotFound."""
    try:
        directory = atomic.open_dir(root, name)
    except (FileNotFoundError, NotADirectoryError) as exc:
        if isinstance(exc, NotADirectoryError) and stat.S_ISLNK(root.mode(name) or 0):
            raise atomic.refused(root.join(name), exc) from None
        raise QueueNotFound(f"no queue {name!r} in {root.path}") from None
    except OSError as exc:
        raise atomic.refused(root.join(name), exc) from None
    try:
        directory.lstat(QUEUE_MARKER)
    except (FileNotFoundError, NotADirectoryError):
        raise QueueNotFound(f"no queue {name!r} in {root.path}") from None
    except OSError as exc:
        raise storage_error("open queue", directory.path, exc) from None
    return directory
