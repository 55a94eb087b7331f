"""Job end records: exactly one terminal event per job, and a job's state in one lookup.

A batch job's end can be announced by several parties that cannot see each
other: the job script's trap, an epilogue, and a reconciler that asks the
scheduler about jobs killed too hard to say anything. Whoever comes first
must publish the one terminal event; everyone after must not. Without a
server the only arbiter is the filesystem, so the event's payload, written
privately in ``tmp/``, is hard-linked to ``jobs/KEY.end`` (``link`` fails
with EEXIST when the name exists: exactly one publisher wins, on every
filesystem ddmq supports, across nodes) and only then renamed into
``ready/`` as an ordinary message. The record and the message are one
immutable payload under two names: consuming the message does not remove
the record, so any number of askers can read a job's end by its key
(``jobs/KEY.end``: one open), whatever the length of the queue.

A crash between the link and the rename leaves the payload in ``tmp/`` with
two links; housekeeping publishes such a file instead of removing it (see
:func:`roll_forward`), so a recorded end always reaches the queue.
"""
from __future__ import annotations

import errno
import os

from . import atomic
from .errors import DdmqError, StorageError, storage_error
from .layout import JOBS, RECONCILED_STAMP, job_end_name, parse_job_end, publish_tmp_name, ready_name, \
    stamp_tmp_name
from .log import logger
from .message import CorruptMessage
from .transitions import read

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .message import Message
    from .queuedir import Queue

# A payload with a job end record, still in tmp/ this long after it was written,
# lost its publisher between the link and the rename: publish it.
ROLL_FORWARD_AFTER = 60.0


def publish_end(q: Queue, key: str, msg: Message, data: bytes, mode: int | None) -> bool:
    """Publish ``msg`` as job ``key``'s terminal event unless one is recorded; False if one was."""
    tmp, end = publish_tmp_name(msg.id), job_end_name(key)
    jobs = q.jobs
    atomic.write_private(q.tmp, tmp, data, msg.durable, mode)
    try:
        os.link(tmp, end, src_dir_fd=q.tmp.fd, dst_dir_fd=jobs.fd, follow_symlinks=False)
    except OSError as exc:
        if not _ours(q, tmp, end):  # an NFS client whose link reply was lost sees EEXIST for its own link
            atomic.discard(q.tmp, tmp)
            # sshfs reports a lost link race as EPERM (its SFTP server maps most failures so).
            if exc.errno == errno.EEXIST or exc.errno in (errno.EPERM, errno.EACCES) and atomic.exists(jobs, end):
                logger().info("job %s: an end is already recorded in %s; not publishing another", key, jobs.path)
                return False
            if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                raise StorageError(f"cannot record the end of job {key} in {jobs.path}: this filesystem "
                                   f"does not allow hard links ({os.strerror(exc.errno)})", exc.errno) from None
            raise storage_error("record job end", jobs.join(end), exc) from None
    if msg.durable:
        atomic.fsync_dir(jobs)
    name = ready_name(msg.priority, msg.published, msg.id)
    try:
        # kept on failure: the record links it, and housekeeping publishes it (roll_forward)
        slot = q.tree.put(q.tmp, tmp, name, keep=True)
    except StorageError as exc:
        raise StorageError(f"{exc} (the end of job {key} is recorded; the queue's next clean publishes it "
                           f"once it is {ROLL_FORWARD_AFTER:.0f} s old)", exc.errno) from None
    if msg.durable:
        q.tree.sync([slot])
    q.readied(name)
    return True


def _ours(q: Queue, tmp: str, end: str) -> bool:
    """Whether ``jobs/end`` is our payload in ``tmp/`` (the same file), after a failed link."""
    try:
        mine, recorded = q.tmp.lstat(tmp), q.jobs.lstat(end)
    except OSError:
        return False
    return (mine.st_ino, mine.st_dev) == (recorded.st_ino, recorded.st_dev)


def end_of(q: Queue, key: str) -> Message | None:
    """The terminal event recorded for job ``key``, or None: one bounded read, never following a link."""
    if not q.jobs_made and not atomic.exists(q.dir, JOBS):
        return None  # a queue older than job end records, in which no job has ended yet
    try:
        return read(q.jobs, job_end_name(key), None)
    except CorruptMessage as exc:
        raise DdmqError(f"{q.jobs.join(job_end_name(key))}: not a job end ddmq recorded ({exc})") from None


def recorded(q: Queue) -> list[str]:
    """The keys of every job whose end is recorded in the queue (one listing of ``jobs/``)."""
    return sorted(key for key in map(parse_job_end, atomic.listdir(q.jobs)) if key is not None)


def reconcile_due(q: Queue, min_interval: float) -> bool:
    """Whether a reconciler may ask the scheduler about this queue's jobs now; if so, from now on it is not.

    ``jobs/.reconciled``'s mtime is when one last did, on the file server's
    clock: a fresh empty file renamed over it (as ``clean.stamp``), so any
    member of the group may renew it, whoever made the last one. Two
    reconcilers passing at the same moment both ask: harmless, since a job's
    end is published once whoever publishes it.
    """
    now = q.now()
    try:
        last: int | None = q.jobs.lstat(RECONCILED_STAMP).st_mtime_ns
    except FileNotFoundError:
        last = None
    except OSError as exc:
        raise storage_error("read", q.jobs.join(RECONCILED_STAMP), exc) from None
    if last is not None and 0 <= now - last < min_interval * 1e9:
        return False
    atomic.publish_file(q.tmp, stamp_tmp_name(), q.jobs, RECONCILED_STAMP, b"", durable=False, mode=q.settings().mode)
    return True


def roll_forward(q: Queue, name: str, st: os.stat_result, now_ns: int) -> bool:
    """Publish a payload left in tmp/ between its job end record's link and its rename into ready/.

    ``st`` is its lstat: a regular file with two links (the record is the
    other) untouched for ROLL_FORWARD_AFTER. True if this call published it.
    """
    if st.st_nlink < 2 or now_ns / 1e9 - st.st_mtime < ROLL_FORWARD_AFTER:
        return False
    try:
        msg = read(q.tmp, name, name[:-len(".tmp")])
    except (CorruptMessage, StorageError):
        return False
    if msg is None:
        return False
    ready = ready_name(msg.priority, msg.published, msg.id)
    if not q.tree.move_in(q.tmp, name, ready):
        return False
    logger().warning("published %s/tmp/%s: its job end was recorded but its publisher stopped before "
                     "making it visible", q.dir.path, name)
    q.readied(ready)
    return True
