"""One queue's directories, held open: the handle every operation on a queue goes through.

The queue directory and its four state directories are opened once, without
following symbolic links (see :class:`ddmq.atomic.Dir`), and every rename,
unlink, create and listing inside them is made relative to those
descriptors. A member of the sharing group who replaces ``QUEUE/tmp`` (or the
queue itself) by a link to somebody's home can then make an operation fail,
but never make it act outside the root.
"""
from __future__ import annotations

from . import atomic
from .layout import CLEAN_STAMP, DEAD, READY, TMP, WORK


class QueueDir:
    """The open directories of one queue (closed when the last reference goes)."""

    __slots__ = ("name", "dir", "ready", "work", "dead", "tmp")

    def __init__(self, directory: atomic.Dir, name: str):
        """Open the state directories of the queue ``name`` opened as ``directory``.

        OSError as :func:`atomic.open_dir` gives it, its filename the state directory's.
        """
        self.name = name
        self.dir = directory
        self.ready = atomic.open_dir(self.dir, READY)
        self.work = atomic.open_dir(self.dir, WORK)
        self.dead = atomic.open_dir(self.dir, DEAD)
        self.tmp = atomic.open_dir(self.dir, TMP)

    def __repr__(self) -> str:
        return f"QueueDir({self.dir.path!r})"

    def state(self, name: str) -> atomic.Dir:
        """The state directory called ``name`` (ready, work, dead or tmp)."""
        return {READY: self.ready, WORK: self.work, DEAD: self.dead, TMP: self.tmp}[name]

    @property
    def clean_stamp(self) -> str:
        """The clean stamp's path, for messages."""
        return self.dir.join(CLEAN_STAMP)
