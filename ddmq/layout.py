"""The on-disk layout: directory names, file names, and how to parse them.

Everything that changes about a message after it is published (its current
priority, how often it was requeued, who holds its lease and until when) lives
in its *file name*, so that every state change is a single ``rename`` of an
immutable file. This module is the only place that builds or parses those
names; ``docs/protocol.md`` describes the same formats.

Fixed-width numeric fields make a plain string sort of ready names equal to
delivery order: priority, then publish time, then message id.
"""
from __future__ import annotations

import functools
import os
import re

from .errors import InvalidQueueName, UsageError

ROOT_MARKER = "ddmq.yaml"
QUEUE_MARKER = "ddmq.yaml"
READY, WORK, DEAD, TMP = "ready", "work", "dead", "tmp"
STATE_DIRS = (READY, WORK, DEAD, TMP)
# Job end records (see job_end_name): made with a queue, or on first use in a queue older than them.
JOBS = "jobs"
CLEAN_STAMP = "clean.stamp"
REASON_SUFFIX = ".reason"
# The directories of a queue that hold messages, at their top or in their shards.
QUEUE_DIRS = STATE_DIRS + (JOBS,)
# Entries a queue directory may hold; anything else was not written by ddmq.
QUEUE_ENTRIES = frozenset((QUEUE_MARKER, CLEAN_STAMP, JOBS) + STATE_DIRS)

MAX_PRIORITY = 999_999
_PRIO_WIDTH = 6
_TIME_WIDTH = 20
MAX_QUEUE_NAME = 128

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,%d}\Z" % (MAX_QUEUE_NAME - 1))
_ID = r"[0-9a-f]{32}"
_TOKEN = r"[0-9a-f]{12}"
# Name patterns are compiled on first use (see compiled): a publish never parses a name.
_READY_NAME = (
    rf"(?P<priority>\d{{{_PRIO_WIDTH}}})\.(?P<published>\d{{{_TIME_WIDTH}}})"
    rf"\.(?P<id>{_ID})\.(?P<requeues>\d{{1,9}})\.msg\Z"
)
_WORK_NAME = (
    rf"(?P<priority>\d{{{_PRIO_WIDTH}}})\.(?P<published>\d{{{_TIME_WIDTH}}})"
    rf"\.(?P<id>{_ID})\.(?P<requeues>\d{{1,9}})"
    rf"\.(?P<expires>\d{{{_TIME_WIDTH}}})\.(?P<token>{_TOKEN})\.msg\Z"
)
# printf-style: the quickest way Python has to build these, once per message.
_READY_FORMAT = f"%0{_PRIO_WIDTH}d.%0{_TIME_WIDTH}d.%s.%d.msg"
_WORK_FORMAT = f"%0{_PRIO_WIDTH}d.%0{_TIME_WIDTH}d.%s.%d.%0{_TIME_WIDTH}d.%s.msg"
_CLAIM_FORMAT = f"%s.%0{_TIME_WIDTH}d.%s.msg"  # a ready name without ".msg", then the lease
_RECEIPT = rf"(?P<id>{_ID})\.(?P<token>{_TOKEN})\Z"
_MESSAGE_ID = rf"{_ID}\Z"
DEAD_REASONS = ("requeue-limit", "expired", "rejected", "corrupt", "unreadable", "foreign")


@functools.lru_cache(maxsize=None)
def compiled(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled on first use (here and for the payload envelope in
    :mod:`ddmq.message`): compiling them all at import costs a command-line
    run about a millisecond, and most runs use one or none.

    ASCII: in a str pattern \\d also matches other scripts' digits, which int()
    accepts but no name ddmq writes contains.
    """
    return re.compile(pattern, re.ASCII)


def check_queue_name(name: object) -> str:
    """Return ``name`` if it is a valid queue name, else raise InvalidQueueName.

    Checked before any path is built from the name: only letters, digits,
    ``_``, ``-`` and ``.`` (never leading, so no hidden names and no ``..``).
    """
    if not isinstance(name, str) or not _QUEUE_NAME.match(name) or name == ROOT_MARKER:
        raise InvalidQueueName(
            f"invalid queue name {name!r}: use 1-{MAX_QUEUE_NAME} letters, digits, "
            "'_', '-' or '.', not starting with '.'"
        )
    return name


class _RandomHex:
    """Random hex strings of one width, cut from one getrandom(2) for many.

    A system call per message id and another per claim token were two of the
    thirteen a message cost. Each refill takes twice as many as the last (up
    to 256), so a command that needs one id pays for one. list.pop is atomic,
    so no two threads get the same string; a forked child empties what it
    inherited (os.register_at_fork), or it and its parent would hand out the
    same ids.
    """

    def __init__(self, width: int):
        self.width = width
        self.batch = 1
        self.ready: list[str] = []

    def refill(self) -> str:
        """Cut the next batch, and return one of it."""
        width = self.width
        text = os.urandom(width // 2 * self.batch).hex()
        self.batch = min(self.batch * 2, 256)
        self.ready.extend([text[i:i + width] for i in range(0, len(text), width)])
        return self.ready.pop()

    def forget(self) -> None:
        self.ready.clear()
        self.batch = 1


_message_ids = _RandomHex(32)
_tokens = _RandomHex(12)


def _forget_inherited() -> None:
    _message_ids.forget()
    _tokens.forget()


os.register_at_fork(after_in_child=_forget_inherited)


def new_message_id() -> str:
    """128 random bits as 32 hex digits."""
    try:
        return _message_ids.ready.pop()
    except IndexError:
        return _message_ids.refill()


def new_token() -> str:
    """A claim token (48 random bits): makes each lease's file name unique to one claim."""
    try:
        return _tokens.ready.pop()
    except IndexError:
        return _tokens.refill()


class _Name:
    """Fields of a file name; plain slots classes, neither a dataclass (importing
    dataclasses imports inspect, ast, dis and tokenize) nor a NamedTuple
    (typing): both cost a command-line run more than its work."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{self.__class__.__name__}({fields})"


class ReadyName(_Name):
    """A message waiting in ``ready/``."""

    __slots__ = ("priority", "published", "id", "requeues")

    def __init__(self, priority: int, published: int, id: str, requeues: int):
        self.priority = priority
        self.published = published  # nanoseconds since the epoch, publisher's clock
        self.id = id
        self.requeues = requeues

    def __str__(self) -> str:
        return _READY_FORMAT % (self.priority, self.published, self.id, self.requeues)


class WorkName(_Name):
    """A message leased to one consumer in ``work/`` until ``expires``."""

    __slots__ = ("priority", "published", "id", "requeues", "expires", "token")

    def __init__(self, priority: int, published: int, id: str, requeues: int, expires: int, token: str):
        self.priority = priority
        self.published = published
        self.id = id
        self.requeues = requeues
        self.expires = expires  # nanoseconds since the epoch, claimer's clock
        self.token = token

    def __str__(self) -> str:
        return _WORK_FORMAT % (self.priority, self.published, self.id, self.requeues, self.expires, self.token)

    @property
    def receipt(self) -> str:
        """What a consumer needs to ack, nack or extend: stable across extensions."""
        return lease_receipt(self.id, self.token)

    def extended(self, expires: int) -> WorkName:
        return WorkName(self.priority, self.published, self.id, self.requeues, expires, self.token)

    def requeued(self, priority: int) -> ReadyName:
        return ReadyName(priority, self.published, self.id, self.requeues + 1)


def ready_name(priority: int, published: int, message_id: str, requeues: int = 0) -> str:
    """The ready/ name of a message, without building a ReadyName first (publish)."""
    return _READY_FORMAT % (priority, published, message_id, requeues)


def claimed_name(ready: str, expires: int, token: str) -> str:
    """The work/ name of a claim of ``ready`` (a name parse_ready accepted).

    The ready name as it stands with the lease appended: for every name ddmq
    writes, what str(WorkName) gives, without building a WorkName and
    formatting all six fields, which cost a consume 4 % of its instructions.
    """
    return _CLAIM_FORMAT % (ready[:-4], expires, token)


def lease_receipt(message_id: str, token: str) -> str:
    """What identifies one claim of a message: its id and the claim's token."""
    return f"{message_id}.{token}"


def parse_ready(name: str) -> ReadyName | None:
    m = compiled(_READY_NAME).match(name)
    if not m:
        return None
    priority, published, message_id, requeues = m.groups()  # one call, not four lookups by name
    return ReadyName(int(priority), int(published), message_id, int(requeues))


def parse_work(name: str) -> WorkName | None:
    m = compiled(_WORK_NAME).match(name)
    if not m:
        return None
    return WorkName(
        int(m["priority"]), int(m["published"]), m["id"], int(m["requeues"]),
        int(m["expires"]), m["token"],
    )


# ------------------------------------------------------ ready/ as a tree
# The on-disk layout this code reads and writes, in the root marker as
# ``layout: 2``; a client refuses a root with another (see ddmq.root).
# Layout 1 kept every ready message directly in ready/.
LAYOUT = 2
# ready/ERA/BAND/SLOT/NAME. An era is one priority and 2**47 ns (about 39 h)
# of publish times; a band, 2**37 ns (about 137 s) of its era; a slot, 2**26
# ns (about 67 ms) of its band: at most 1024 bands in an era and 2048 slots
# in a band. However long the queue, its head is found by listing four
# small directories (see ddmq.shards). A slot holds what one priority got in
# 67 ms: one publisher writing a batch on tmpfs fills it to about 5 000.
_ERA_SHIFT, _BAND_SHIFT, _SLOT_SHIFT = _SHARD_SHIFTS = (47, 37, 26)
SHARD_LEVELS = len(_SHARD_SHIFTS)
_BANDS_PER_ERA = 1 << (_ERA_SHIFT - _BAND_SHIFT)
_SLOTS_PER_BAND = 1 << (_BAND_SHIFT - _SLOT_SHIFT)
_ERA_NAME = rf"\d{{{_PRIO_WIDTH}}}\.\d{{6}}\Z"
_SUB_SHARD_NAME = r"\d{4}\Z"


def era_name(priority: int, published: int) -> str:
    """The era of ready/ for a priority and a publish time (ns): ``PPPPPP.EEEEEE``."""
    return f"{priority:0{_PRIO_WIDTH}d}.{published >> _ERA_SHIFT:06d}"


def band_name(published: int) -> str:
    """The band of its era for a publish time (ns): ``BBBB``, 0000 to 1023."""
    return f"{(published >> _BAND_SHIFT) % _BANDS_PER_ERA:04d}"


def slot_name(published: int) -> str:
    """The slot of its band for a publish time (ns): ``SSSS``, 0000 to 2047."""
    return f"{(published >> _SLOT_SHIFT) % _SLOTS_PER_BAND:04d}"


def shard_of(ready: str) -> tuple[str, str, str]:
    """(era, band, slot) of a ready name: the directories under ready/ it lies in.

    Read from the name's fixed-width priority and publish time, so anyone
    holding the name (a consumer's listing, a requeue, an operator's
    ``requeue --dead``) knows where it is without a lookup.
    """
    published = int(ready[_PRIO_WIDTH + 1:_PRIO_WIDTH + 1 + _TIME_WIDTH])
    return era_name(int(ready[:_PRIO_WIDTH]), published), band_name(published), slot_name(published)


def shard_range(path: tuple[str, ...]) -> tuple[str, str]:
    """The ready names that lie in the era, band or slot at ``path``: from the first, up to (not including) the second.

    Names sort as their fields, so telling whether a name lies in a
    directory of the tree, or beyond it, is a string comparison.
    """
    end = shard_end(path)
    start = end - (1 << _SHARD_SHIFTS[len(path) - 1])
    priority = path[0][:_PRIO_WIDTH]
    return f"{priority}.{start:0{_TIME_WIDTH}d}", f"{priority}.{end:0{_TIME_WIDTH}d}"


def has_ready_grammar(name: str) -> bool:
    """Whether ``name`` has a ready name's grammar (what parse_ready reads, without reading it)."""
    return compiled(_READY_NAME).match(name) is not None


def is_shard(level: int, name: str) -> bool:
    """Whether ``name`` is a directory name of ready/'s tree at ``level`` (0: an era, 1: a band, 2: a slot)."""
    if level == 0:
        return bool(compiled(_ERA_NAME).match(name))
    return bool(compiled(_SUB_SHARD_NAME).match(name)) and int(name) < (_BANDS_PER_ERA, _SLOTS_PER_BAND)[level - 1]


def shard_end(path: tuple[str, ...]) -> int:
    """When the time range of an era, band or slot (its path under ready/) ends, in ns.

    No publisher whose clock is right writes into it after that.
    """
    start = int(path[0][_PRIO_WIDTH + 1:]) << _SHARD_SHIFTS[0]
    for part, shift in zip(path[1:], _SHARD_SHIFTS[1:]):
        start += int(part) << shift
    return start + (1 << _SHARD_SHIFTS[len(path) - 1])


def parse_in(state: str, name: str) -> ReadyName | WorkName | None:
    """A name in ``state``'s directory parsed by that directory's grammar.

    None when it does not fit, and always in ``dead/`` and ``tmp/``, which
    have no message-name grammar of their own.
    """
    if state == READY:
        return parse_ready(name)
    if state == WORK:
        return parse_work(name)
    return None


def parse_receipt(receipt: object) -> tuple[str, str | None]:
    """Split a receipt ``ID.TOKEN`` (or a bare message ID) into its parts.

    Refuses anything else, so a receipt from the command line can never name a
    path outside the queue.
    """
    if isinstance(receipt, str):
        m = compiled(_RECEIPT).match(receipt)
        if m:
            return m["id"], m["token"]
        if compiled(_MESSAGE_ID).match(receipt):
            return receipt, None
    raise UsageError(f"invalid receipt {receipt!r}: expected ID.TOKEN as printed by consume")


class DeadName(_Name):
    """A dead letter in ``dead/``: when and why it was moved there, and the name it had before."""

    __slots__ = ("dead_at", "reason", "original")

    def __init__(self, dead_at: int, reason: str, original: str):
        self.dead_at = dead_at  # nanoseconds since the epoch, on the clock of the client that moved it
        self.reason = reason
        self.original = original  # cut to 160 characters; "_" appended to a name that ended in .reason

    @property
    def message(self) -> ReadyName | WorkName | None:
        """The original name parsed, if it was a message's: id, priority and requeue count."""
        return parse_ready(self.original) or parse_work(self.original)


_DEAD_NAME = rf"(\d{{{_TIME_WIDTH}}})\.[0-9a-f]{{6}}\.({'|'.join(DEAD_REASONS)})\.(.+)\Z"


def parse_dead(name: str) -> DeadName | None:
    """A name in dead/ parsed; None for a ``.reason`` record or a name ddmq did not write."""
    if name.endswith(REASON_SUFFIX):
        return None
    m = compiled(_DEAD_NAME).match(name)
    if not m:
        return None
    return DeadName(int(m[1]), m[2], m[3])


def dead_name(reason: str, original: str, now_ns: int) -> str:
    """Name of a dead letter: when, why, and (shortened) what it was called."""
    if reason not in DEAD_REASONS:
        raise ValueError(f"unknown dead-letter reason {reason!r}")
    return f"{now_ns:0{_TIME_WIDTH}d}.{os.urandom(3).hex()}.{reason}.{original[:160]}"


# ----------------------------------------------------- job end records
MAX_JOB_KEY = 200
_JOB_KEY = rf"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{{0,{MAX_JOB_KEY - 1}}}"
_JOB_END_SUFFIX = ".end"
_JOB_SHARD = r"[0-9a-f]{2}\Z"
_CRC32_POLYNOMIAL = 0xEDB88320  # CRC-32 of zlib, PNG and Ethernet, bits reversed
# In jobs/: mtime = when a reconciler last asked the scheduler about the queue's jobs (server time).
RECONCILED_STAMP = ".reconciled"


def job_key(cluster: str | None, job_id: str) -> str:
    """The key of a job's end record: ``CLUSTER.JOBID`` (``JOBID`` alone without a cluster name).

    ``JOBID`` as a key writes it: ``1234``, ``1234_7`` for an array task
    (``ddmq_hpc.jobevents`` turns PBS's ``88[7].server`` into cluster
    ``server``, job ``88_7``). UsageError for anything that could not be a
    file name in a shard of ``jobs/``.
    """
    key = job_id if not cluster else f"{cluster}.{job_id}"
    if not isinstance(key, str) or not compiled(_JOB_KEY + r"\Z").match(key):
        raise UsageError(f"invalid job {key!r}: letters, digits, '_', '+', '-' and '.' only "
                         f"(not first), at most {MAX_JOB_KEY} characters")
    return key


def job_shard(key: str) -> str:
    """The directory of ``jobs/`` that holds job ``key``'s end record: 2 hex digits, one of 256.

    A record is kept for every job that ever ended, so a flat ``jobs/``
    would grow without bound (a million jobs, a million entries), while HPC
    sites ask for directories of thousands. The shard is the low byte of the
    key's CRC-32 (zlib's, as ``binascii.crc32`` gives it): the same on every
    platform, Python version and language, unlike ``hash()``, which is
    salted per process. Computed here bit by bit: a few microseconds for a
    key, where importing binascii would cost every ``ddmq-notify`` and
    ``ddmq-jobstate`` run half a millisecond and a dozen system calls.
    """
    crc = 0xFFFFFFFF
    for byte in key.encode():
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CRC32_POLYNOMIAL & -(crc & 1))
    return "%02x" % (~crc & 0xFF)


def is_job_shard(name: str) -> bool:
    """Whether ``name`` in ``jobs/`` is one that :func:`job_shard` gives."""
    return bool(compiled(_JOB_SHARD).match(name))


def job_end_name(key: str) -> str:
    """A job's end record in its shard of ``jobs/``: a hard link to the payload of its one terminal event."""
    return key + _JOB_END_SUFFIX


def parse_job_end(name: str) -> str | None:
    """The job key of an end record's name; None for any other name."""
    if name.endswith(_JOB_END_SUFFIX) and compiled(_JOB_KEY + r"\Z").match(name[:-len(_JOB_END_SUFFIX)]):
        return name[:-len(_JOB_END_SUFFIX)]
    return None


# ------------------------------------------------------ private names
# Every name ddmq writes besides messages, built here and recognised here, so
# that housekeeping removes only what this grammar produced.
_TMP_PUBLISH = rf"{_ID}\.tmp\Z"  # tmp/ID.tmp: a payload being published
_TMP_STAMP = rf"\.stamp\.{_TOKEN}\Z"  # tmp/.stamp.TOKEN: the next clean.stamp
_TMP_CLOCK = rf"\.clock\.{_TOKEN}\Z"  # tmp/ or ROOT/.clock.TOKEN: the clock probe
# a .reason being written: the dead name's first 40 characters (see reason_tmp_name), a token
_TMP_REASON = rf"\d{{{_TIME_WIDTH}}}\.[0-9a-f]{{6}}\.[^/]{{1,12}}\.{_TOKEN}\.tmp\Z"
_ROOT_STAGING = rf"\.(?:create|delete)\.{_TOKEN}\.[A-Za-z0-9_.-]{{1,{MAX_QUEUE_NAME}}}\Z"  # queue being made/removed
_ROOT_MARKER_TMP = rf"\.ddmq\.yaml\.{_TOKEN}\Z"  # the root marker being written
_TMP_SETTINGS = rf"\.settings\.{_TOKEN}\Z"  # tmp/.settings.TOKEN: the queue's next ddmq.yaml
_READY_PROBE = rf"\.probe\.{_TOKEN}\Z"  # ready/.probe.TOKEN: made and removed at once, to refresh a client's view


def publish_tmp_name(message_id: str) -> str:
    return f"{message_id}.tmp"


def ready_probe_name() -> str:
    """A file made and removed at once in ready/, so that the client's cached listing of it is dropped."""
    return f".probe.{new_token()}"


def is_publish_tmp(name: str) -> bool:
    """Whether ``name`` in tmp/ is a payload being published (what publish_tmp_name makes)."""
    return bool(compiled(_TMP_PUBLISH).match(name))


def stamp_tmp_name() -> str:
    return f".stamp.{new_token()}"


def clock_probe_name() -> str:
    return f".clock.{new_token()}"


def reason_tmp_name(dead: str) -> str:
    """The private name of a dead letter's ``.reason`` file while it is written."""
    return f"{dead[:40]}.{new_token()}.tmp"


def staging_name(queue: str) -> str:
    """A queue being created: built under this hidden name, then renamed into place."""
    return f".create.{new_token()}.{queue}"


def doomed_name(queue: str) -> str:
    """A queue being deleted: renamed to this hidden name, then removed."""
    return f".delete.{new_token()}.{queue}"


def marker_tmp_name() -> str:
    return f".{ROOT_MARKER}.{new_token()}"


def settings_tmp_name() -> str:
    """A queue's new ``ddmq.yaml`` while it is written in the queue's tmp/ (then renamed over the old one)."""
    return f".settings.{new_token()}"


def abandoned_in_tmp(name: str) -> bool:
    """Whether ``name`` in a queue's tmp/ is one of ddmq's private files (removed once abandoned)."""
    return any(compiled(p).match(name) for p in (_TMP_PUBLISH, _TMP_STAMP, _TMP_CLOCK, _TMP_REASON, _TMP_SETTINGS))


def abandoned_in_ready(name: str) -> tuple[bool, bool]:
    """(ddmq's, a directory ddmq made) for a hidden name in ready/: a probe its maker did not remove."""
    return bool(compiled(_READY_PROBE).match(name)), False


def abandoned_in_root(name: str) -> tuple[bool, bool]:
    """(ddmq's, a directory ddmq made) for a hidden name in the root: what clean may remove."""
    if compiled(_ROOT_STAGING).match(name):
        return True, True
    return bool(compiled(_ROOT_MARKER_TMP).match(name) or compiled(_TMP_CLOCK).match(name)), False
