"""Job end records: exactly one terminal event per job, and a job's state in one lookup.

A batch job's end can be announced by several parties that cannot see each
other: the job script's trap, an epilogue, and a reconciler that asks the
scheduler about jobs killed too hard to say anything. Whoever comes first
must publish the one terminal event; everyone after must not. Without a
server the only arbiter is the filesystem, so the event's payload, written
privately in ``tmp/``, is hard-linked to ``jobs/SS/KEY.end`` (``link``
fails with EEXIST when the name exists: exactly one publisher wins, on every
filesystem ddmq supports, across nodes) and only then renamed into
``ready/`` as an ordinary message. The record and the message are one
immutable payload under two names: consuming the message does not remove
the record, so any number of askers can read a job's end by its key
(``jobs/SS/KEY.end``: two opens), whatever the length of the queue.

Records are kept for every job that ever ended, so they are spread over 256
shards ``SS`` named by a hash of the key (:func:`ddmq.layout.job_shard`): a
site that ran a million jobs has about 4 000 records per directory, not a
million in one.

A crash between the link and the rename leaves the payload in ``tmp/`` with
two links; housekeeping publishes such a file instead of removing it (see
:func:`roll_forward`), so a recorded end always reaches the queue.
"""
from __future__ import annotations

import errno
import os
import stat

from . import atomic
from .errors import DdmqError, StorageError, storage_error
from .layout import JOBS, RECONCILED_STAMP, is_job_shard, job_end_name, job_shard, parse_job_end, publish_tmp_name, \
    ready_name, stamp_tmp_name
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
    shard = _shard_to_write(q, job_shard(key), msg.durable)
    try:
        atomic.write_private(q.tmp, tmp, data, msg.durable, mode)
        try:
            os.link(tmp, end, src_dir_fd=q.tmp.fd, dst_dir_fd=shard.fd, follow_symlinks=False)
        except OSError as exc:
            if not _ours(q, tmp, shard, end):  # an NFS client whose link reply was lost sees EEXIST for its own link
                atomic.discard(q.tmp, tmp)
                # sshfs reports a lost link race as EPERM (its SFTP server maps most failures so).
                if exc.errno == errno.EEXIST or exc.errno in (errno.EPERM, errno.EACCES) and atomic.exists(shard, end):
                    logger().info("job %s: an end is already recorded in %s; not publishing another", key, shard.path)
                    return False
                if exc.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise StorageError(f"cannot record the end of job {key} in {shard.path}: this filesystem "
                                       f"does not allow hard links ({os.strerror(exc.errno)})", exc.errno) from None
                raise storage_error("record job end", shard.join(end), exc) from None
        if msg.durable:
            atomic.fsync_dir(shard)
    finally:
        shard.close()
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


def _shard_to_write(q: Queue, shard: str, durable: bool) -> atomic.Dir:
    """``jobs/SHARD`` opened, and made (with ``jobs/``'s bits) if this is the first end recorded in it.

    Opened without following a link, as every directory ddmq enters: a link
    or a file that a member of the group put in a shard's place is refused,
    before anything is written. A new shard's own entry in ``jobs/`` is made
    durable with the record, whichever client made it.
    """
    jobs = q.jobs
    found = atomic.open_if_there(jobs, shard)
    if found is not None:
        return found
    made = atomic.open_or_make_dir(jobs, shard, jobs)
    if made is None:  # ddmq removes a shard only with its queue
        raise StorageError(f"{jobs.join(shard)} was removed as it was made", errno.ENOENT)
    if durable:
        atomic.fsync_dir(jobs)
    return made[0]


def _ours(q: Queue, tmp: str, shard: atomic.Dir, end: str) -> bool:
    """Whether ``end`` in ``shard`` is our payload in ``tmp/`` (the same file), after a failed link."""
    try:
        mine, recorded = q.tmp.lstat(tmp), shard.lstat(end)
    except OSError:
        return False
    return (mine.st_ino, mine.st_dev) == (recorded.st_ino, recorded.st_dev)


def end_of(q: Queue, key: str) -> Message | None:
    """The terminal event recorded for job ``key``, or None: one bounded read, never following a link.

    Two opens (the shard, then the record) whatever the number of records.
    """
    if not q.jobs_made and not atomic.exists(q.dir, JOBS):
        return None  # a queue older than job end records, in which no job has ended yet
    shard = atomic.open_if_there(q.jobs, job_shard(key))
    if shard is None:
        return None  # no job whose key falls in this shard has ended yet
    name = job_end_name(key)
    try:
        return read(shard, name, None)  # (which names the queue above jobs/, not the shard)
    except CorruptMessage as exc:
        raise DdmqError(f"{shard.join(name)}: not a job end ddmq recorded ({exc})") from None
    finally:
        shard.close()


def recorded(q: Queue) -> list[str]:
    """The keys of every job whose end is recorded in the queue (a listing of each shard of ``jobs/``)."""
    keys = []
    for shard_name in filter(is_job_shard, atomic.listdir(q.jobs)):
        shard = atomic.open_if_there(q.jobs, shard_name)
        if shard is None:
            continue
        try:
            keys += [key for key in map(parse_job_end, atomic.listdir(shard)) if key is not None]
        finally:
            shard.close()
    return sorted(keys)


def foreign_records(q: Queue) -> list[str]:
    """What ``jobs/`` holds that ddmq did not write, as paths in the queue (hidden names aside).

    Shards are ddmq's when they are directories, and so are the records in
    them that are regular files named by the grammar, each in its key's
    shard; anything else (a link or a file in a shard's place included) is not.
    """
    foreign = []
    for shard_name in atomic.listdir(q.jobs):
        if not (is_job_shard(shard_name) and stat.S_ISDIR(q.jobs.mode(shard_name) or 0)):
            foreign.append(f"{JOBS}/{shard_name}")
            continue
        shard = atomic.open_if_there(q.jobs, shard_name)
        if shard is None:
            continue
        try:
            for name in atomic.listdir(shard):
                key = parse_job_end(name)
                if key is None or job_shard(key) != shard_name or not stat.S_ISREG(shard.mode(name) or 0):
                    foreign.append(f"{JOBS}/{shard_name}/{name}")
        finally:
            shard.close()
    return foreign


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
