"""The protocol's transitions, each a short sequence of atomic steps on one :class:`~ddmq.queuedir.Queue`.

This module reads one-to-one with "States and transitions" in
``docs/protocol.md``: publish, claim, ack, extend, nack (and requeue),
release, dead-letter; then reading a message, which every transition that
looks inside a file shares. Each state change is one ``rename`` or
``unlink`` of an immutable file (see :mod:`ddmq.atomic`, which also decides
what a lost race means); nothing here holds a lock or keeps state beyond the
Queue it is given.
"""
from __future__ import annotations

import errno
import json
import os
import time

from . import atomic
from .errors import DdmqError, LeaseLost, NotFound, PartlyPublished, StorageError, UsageError, storage_error
from .layout import (
    DEAD, QUEUE_DIRS, READY, REASON_SUFFIX, WORK, ReadyName, WorkName, claimed_name, dead_name, lease_receipt,
    new_message_id, new_token, parse_dead, parse_in, parse_ready, parse_receipt, parse_work, publish_tmp_name, ready_name,
    reason_tmp_name,
)
from .log import logger
from .message import MAX_MESSAGE_BYTES, CorruptMessage, Lease, Message, Unreadable, decode, encode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Union

    from .queuedir import Queue
    from .settings import Settings

    Receipt = Union[Message, str]
    Match = Callable[[Message], bool]

HOST = os.uname().nodename  # what socket.gethostname() returns, without importing socket
# This process's id, for every payload it writes: getpid(2) is a system call
# (glibc does not cache it), one in eleven of a message's. A forked child
# learns its own.
_pid = os.getpid()
_last_published = 0  # see publish_time


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


# ----------------------------------------------------------------- publish
def publish_time() -> int:
    """Publish time in ns, strictly increasing within this process (FIFO for one publisher).

    Kept per process, not per Broker, so a script that makes a new Broker per
    message still publishes in order on a coarse clock.
    """
    global _last_published
    now = time.time_ns()
    if now <= _last_published:
        now = _last_published + 1
    _last_published = now
    return now


def new_message(queue: str, body: Any, settings: Settings,
                headers: dict[str, Any] | None) -> tuple[Message, bytes]:
    """A new message and its payload bytes; UsageError for a body or headers that cannot be published."""
    if headers is not None and (
        not isinstance(headers, dict) or not all(isinstance(k, str) for k in headers)
    ):
        raise UsageError("headers must be a mapping with string keys")
    msg = Message(  # positionally: once per message, and keywords cost more
        new_message_id(), queue, body, settings.priority, publish_time(), settings.message_timeout,
        settings.requeue, settings.requeue_prio, settings.requeue_limit, settings.durable, HOST, _pid,
        dict(headers) if headers else {},
    )
    try:
        data = encode(msg)
    except TypeError as exc:
        raise UsageError(str(exc)) from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise UsageError(f"message too large: {len(data)} bytes (at most {MAX_MESSAGE_BYTES})")
    return msg, data


def publish(q: Queue, msg: Message, data: bytes, mode: int | None) -> None:
    """Write the payload privately in tmp/, then rename it into ready/: visible and complete at once."""
    name, tmp = ready_name(msg.priority, msg.published, msg.id), publish_tmp_name(msg.id)
    atomic.write_private(q.tmp, tmp, data, msg.durable, mode)
    slot = q.tree.put(q.tmp, tmp, name)
    if msg.durable:
        q.tree.sync([slot])
    q.readied(name)


def publish_many(q: Queue, bodies: Iterable[Any], settings: Settings, headers: dict[str, Any] | None,
                 before_visible: Callable[[list[Message]], None] | None) -> list[Message]:
    """Publish several messages, each atomically, with one durability barrier (see Broker.publish_many).

    Group commit: every payload is written under its private name first, with
    no barrier of its own; then one barrier makes them all durable; only then
    is each renamed into ready/ (visible, complete, and already on stable
    storage), and each slot of ready/ they went into is synced once. On a local
    filesystem the barrier is one syncfs(2); elsewhere (NFS, where closing a
    file already flushes and COMMITs it, FUSE, where syncfs does not reach
    the server) it stays an fsync per payload. docs/protocol.md says why.
    """
    bodies = list(bodies)
    group = settings.durable and len(bodies) > 1 and atomic.syncfs_reliable() and q.on_local_filesystem()
    pending: list[tuple[Message, str, str]] = []  # (message, tmp name, ready name)
    try:
        for body in bodies:
            msg, data = new_message(q.name, body, settings, headers)
            tmp = publish_tmp_name(msg.id)
            atomic.write_private(q.tmp, tmp, data, msg.durable and not group, settings.mode)
            pending.append((msg, tmp, ready_name(msg.priority, msg.published, msg.id)))
        if group:
            atomic.syncfs(q.tmp)
        if before_visible is not None:
            before_visible([msg for msg, _, _ in pending])
    except BaseException:
        for _, tmp, _ in pending:
            atomic.discard(q.tmp, tmp)
        raise
    slots: list[atomic.Dir] = []
    for done, (_, tmp, name) in enumerate(pending):
        try:
            slot = q.tree.put(q.tmp, tmp, name)
        except StorageError as exc:
            for _, rest, _ in pending[done + 1:]:
                atomic.discard(q.tmp, rest)
            raise PartlyPublished(f"{exc} ({done} of {len(pending)} messages were published)", exc.errno, done) \
                from None
        if slot not in slots:
            slots.append(slot)
        q.readied(name)
    if settings.durable and pending:
        q.tree.sync(slots)
    return [msg for msg, _, _ in pending]


# ------------------------------------------------------------------- claim
def claim(q: Queue, n: int, lease: float | None, settings: Settings, ack: bool,
          match: Match | None) -> list[Message]:
    """Claim up to ``n`` messages, best first, by renaming each from ready/ into work/ (see Broker.consume)."""
    claimed: list[Message] = []
    # A waiter polls with the same predicate over and over: names it already
    # rejected are dropped when ready/ is listed, before any parsing, so an
    # idle poll costs one listing, not a parse per waiting message.
    rejected: set[str] | frozenset[str] = q.rejected_by(match) if match is not None else frozenset()
    for name in q.ready_names(rejected, lambda directory, foreign: dead_letter(
            q, directory, foreign, "foreign", "file name is not a ddmq message name")):
        ready = parse_ready(name)
        if ready is None:
            continue  # the walk hands out message names only, and dead-letters the rest
        if match is not None and not _matches(q, name, match):
            continue
        seconds = lease if lease is not None else settings.message_timeout
        expires, token = q.now() + int(seconds * 1e9), new_token()
        work_name = claimed_name(name, expires, token)
        if not q.tree.move_out(name, q.work, work_name):
            logger().debug("lost race: %s/%s/%s was claimed by another client", q.root.path, q.name, name)
            q.lost_race()
            continue
        held = lease_receipt(ready.id, token)
        try:
            msg = load(q, q.work, work_name, ready.id)
            if msg is None:
                continue
            _fill_state(msg, ready)
            msg.lease = Lease(expires, held, work_name)
            if lease is None and msg.message_timeout != seconds:
                extend(q, msg, msg.message_timeout)
            if ack and not ack_held(q, msg):
                settle(q, msg)
        except DdmqError:
            # Nothing claimed here reaches the caller: give it back now instead
            # of hiding it from every consumer until the lease expires.
            give_back(q, [held] + ([] if ack else claimed))
            raise
        claimed.append(msg)
        if len(claimed) >= n:
            break
    return claimed


def give_back(q: Queue, claims: list[Message] | list[str] | list[Message | str]) -> None:
    """Release claims that will not reach the caller, best effort: a failure leaves the lease to expire."""
    for taken in claims:
        try:
            release(q, taken)
        except DdmqError:
            pass  # the lease expires and housekeeping requeues it


def _fill_state(msg: Message, name: ReadyName | WorkName) -> None:
    """The state a message's file name holds: its current priority, requeues and lease."""
    msg.priority = name.priority
    msg.requeues = name.requeues
    if isinstance(name, WorkName):
        msg.lease = Lease(name.expires)


# ------------------------------------------------------------- the lease
def held(q: Queue, receipt: Receipt) -> WorkName:
    """Where the lease named by ``receipt`` (a receipt string or a claimed Message) is now, or LeaseLost."""
    if isinstance(receipt, Message):
        lease = receipt.lease
        if lease is None or lease.receipt is None:
            raise UsageError(f"message {receipt.id} is not held by this consumer")
        msg_id, token = parse_receipt(lease.receipt)
        # Where this consumer last put the lease (recorded by claim and extend).
        where = parse_work(lease.name) if lease.name else None
        if where is not None and atomic.exists(q.work, str(lease.name)):
            return where
    else:
        msg_id, token = parse_receipt(receipt)
    for name in atomic.listdir(q.work):
        work = parse_work(name)
        if work is not None and work.id == msg_id and (token is None or work.token == token):
            return work
    if token is None and not any(msg_id in name for _, name in q.tree.entries()) \
            and not any(msg_id in name for name in atomic.listdir(q.dead)):
        # A bare id (an operator's, not a consumer's receipt) that is nowhere in the queue.
        raise NotFound(f"no message {msg_id} in queue {q.name!r} (acked, purged, or never published here)")
    raise LeaseLost(
        f"message {msg_id} is no longer leased here: it was acked or nacked, "
        "or its lease expired and it was requeued"
    )


# ---------------------------------------------------------------------- ack
def ack_held(q: Queue, msg: Message) -> bool:
    """Ack in one unlink, where this consumer last put the lease; False if it is not there (any more)."""
    lease = msg.lease
    if lease is None or lease.receipt is None or lease.name is None or not atomic.remove(q.work, lease.name):
        return False
    msg.settled()
    return True


def settle(q: Queue, receipt: Receipt) -> None:
    """Ack wherever the lease is now: remove the message. LeaseLost if the lease is no longer ours."""
    work = held(q, receipt)
    if not atomic.remove(q.work, str(work)):
        raise LeaseLost(f"message {work.id} was taken back before it could be acked")
    if isinstance(receipt, Message):
        receipt.settled()


# ------------------------------------------------------------------- extend
def extend(q: Queue, receipt: Receipt, seconds: float) -> int:
    """Renew the lease until ``seconds`` from now; the new expiry (ns). LeaseLost if it was requeued."""
    work = held(q, receipt)
    renewed = work.extended(q.now() + int(seconds * 1e9))
    if not atomic.move(q.work, str(work), q.work, str(renewed)):
        raise LeaseLost(f"message {work.id} was taken back before its lease could be extended")
    if isinstance(receipt, Message):
        receipt.lease = Lease(renewed.expires, receipt.receipt, str(renewed))
    return renewed.expires


# ------------------------------------------------------------ nack, requeue
def nack(q: Queue, receipt: Receipt, requeue: bool) -> str:
    """Give a held message back: requeue it (until its requeue limit) or dead-letter it; where it went."""
    work = held(q, receipt)
    msg = receipt if isinstance(receipt, Message) else load(q, q.work, str(work), work.id)
    if msg is None:
        return DEAD
    where = retire(q, work, msg, requeue, "rejected")
    if where is None:
        raise LeaseLost(f"message {work.id} was taken back before it could be nacked")
    if isinstance(receipt, Message):
        receipt.settled()
    return where


def retire(q: Queue, work: WorkName, msg: Message, requeue: bool, reason: str) -> str | None:
    """Requeue a message in work/, or dead-letter it if it may not be requeued.

    One rename either way; None if another client moved it first.
    """
    if requeue and msg.requeue:
        if msg.requeue_limit is None or work.requeues < msg.requeue_limit:
            requeued = work.requeued(msg.requeue_prio)
            if not q.tree.move_in(q.work, str(work), str(requeued)):
                return None
            q.readied(str(requeued))
            return READY
        reason = "requeue-limit"
    moved = dead_letter(q, q.work, str(work), reason,
                        f"requeued {work.requeues} times" if reason == "requeue-limit" else "")
    return DEAD if moved else None


# ------------------------------------------------------------------ release
def release(q: Queue, receipt: Receipt) -> None:
    """Put a held message back exactly as it was: priority and requeue count unchanged."""
    work = held(q, receipt)
    ready = ReadyName(work.priority, work.published, work.id, work.requeues)
    if not q.tree.move_in(q.work, str(work), str(ready)):
        raise LeaseLost(f"message {work.id} was taken back before it could be released")
    q.readied(str(ready))
    if isinstance(receipt, Message):
        receipt.unclaimed()


# -------------------------------------------------------------- dead-letter
def dead_letter(q: Queue, directory: atomic.Dir, name: str, reason: str, detail: str) -> bool:
    """Move ``name`` in ``directory`` to dead/ with the reason in its name, then record details beside it.

    The rename is the atomic step; the ``.reason`` file is written after it
    and is best effort (a crash in between leaves the reason code in the name).
    False if another client moved the file first.
    """
    original = name + ("_" if name.endswith(REASON_SUFFIX) else "")
    dead = dead_name(reason, original, time.time_ns())
    if not atomic.move(directory, name, q.dead, dead):
        return False
    where = f"{os.path.basename(directory.path)}/{name}"
    logger().warning("dead-lettered %s of queue %s (%s%s)", where if len(where) <= 60 else where[:57] + "...",
                     q.name, reason, f": {detail}" if detail else "")
    record = {"reason": reason, "detail": detail, "from": where, "time": time.time(), "host": HOST, "pid": _pid}
    try:
        atomic.publish_file(q.tmp, reason_tmp_name(dead), q.dead, dead + REASON_SUFFIX,
                            json.dumps(record, sort_keys=True).encode(), durable=False, mode=q.settings().mode)
    except DdmqError:
        pass
    return True


def dead_letter_unusable(q: Queue, directory: atomic.Dir, name: str, exc: CorruptMessage) -> bool:
    """Dead-letter a file that is not a valid message, or that this user may not read."""
    return dead_letter(q, directory, name, "unreadable" if isinstance(exc, Unreadable) else "corrupt", str(exc))


# -------------------------------------------------------- reading a message
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


def read(directory: atomic.Dir, name: str, expected_id: str | None) -> Message | None:
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
    # A message belongs to the queue it lies in (the parent of the state
    # directory it is in, or under), whatever its payload says: ack, nack
    # and release find it there.
    state = directory
    while state.parent is not None and state.name not in QUEUE_DIRS:
        state = state.parent  # from a shard of ready/ or jobs/
    if state.parent is not None and state.parent.name:
        msg.queue = state.parent.name
    return msg


def load(q: Queue, directory: atomic.Dir, name: str, expected_id: str) -> Message | None:
    """Read a message we hold; a file that is not a valid message is dead-lettered with the reason."""
    try:
        return read(directory, name, expected_id)
    except CorruptMessage as exc:
        dead_letter_unusable(q, directory, name, exc)
        return None


def peeked(directory: atomic.Dir, name: str, parsed: ReadyName | WorkName | None) -> Message | None:
    """Read a message without holding it; unreadable files are skipped, left for its holder."""
    try:
        msg = read(directory, name, parsed.id if parsed else None)
    except CorruptMessage:
        return None
    if msg is not None and parsed is not None:
        _fill_state(msg, parsed)
    return msg


def matching(q: Queue, directory: atomic.Dir, name: str, match: Match) -> Message | None:
    """The message in ``directory/name`` if ``match`` accepts it, else None.

    Payloads are immutable, so a name once rejected by a predicate is never
    read again for that predicate: an idle waiter's cost per poll is one
    listing, however many non-matching messages sit in the queue. The
    cache lives as long as the predicate object, so pass the same one on
    every call.
    """
    rejected = q.rejected_by(match)
    if name in rejected:
        return None
    msg = peeked(directory, name, parse_ready(name) or parse_work(name))
    if msg is None:
        return None
    if not match(msg):
        rejected.add(name)
        return None
    return msg


def _matches(q: Queue, name: str, match: Match) -> bool:
    """Whether ``match`` accepts the ready message ``name`` (False if it is gone meanwhile)."""
    slot = q.tree.slot_dir(name)
    return slot is not None and matching(q, slot, name, match) is not None


def peek(q: Queue, n: int, state: str, match: Match | None) -> list[Message]:
    """Up to ``n`` messages in ``state``'s directory, in name order, without claiming them."""
    listed: Iterable[tuple[atomic.Dir, str]]
    if state == READY:
        listed = q.tree.entries()  # lazily: a peek of one message lists the head's slot, not the queue
    else:
        directory = q.state(state)
        listed = [(directory, name) for name in sorted(atomic.listdir(directory))]
    found: list[Message] = []
    for directory, name in listed:
        if len(found) >= n:
            break
        if state == DEAD:  # its requeue count and priority are in the name it had before
            dead = parse_dead(name)
            parsed = dead.message if dead is not None else None
        else:
            parsed = parse_in(state, name)
        if state in (READY, WORK) and parsed is None or name.endswith(REASON_SUFFIX):
            continue
        msg = matching(q, directory, name, match) if match else peeked(directory, name, parsed)
        if msg is not None:
            found.append(msg)
    return found
