"""``ddmq doctor``: is this root's filesystem, clock, permissions and queues fit for ddmq, and if not, what to do.

ddmq trusts the filesystem with everything, so most of what goes wrong is a
property of the storage that nobody looked at: an ext4 without a journal, an
NFS or sshfs mount that caches directory listings for a minute, a node whose
clock is off, a root shared by a group but not setgid, a full disk. Each
check here turns one such property into a :class:`Finding`: what was seen, in
one line, and for anything not ok, the one line that fixes it. Nothing is
changed and no link inside the root is followed (the directories are opened
as ddmq's core opens them); the only file written is the clock probe, made
and removed under a name ``ddmq clean`` recognises.
"""
from __future__ import annotations

import errno
import os
import stat
import time

from . import atomic
from .clock import CLOCK_TOLERANCE, measure_offset
from .errors import DdmqError
from .layout import STATE_DIRS, check_queue_name, parse_work
from .mounts import SSHFS_DCACHE_DEFAULT, Mount, ext_journal, mount_of, parse_mountinfo, sshfs_listing_delay, \
    sshfs_options

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterable

    from .queuedir import Queue
    from .root import Root
    from .settings import Settings

OK, WARNING, PROBLEM = "ok", "warning", "problem"
LISTING_DELAY_OK = 5.0  # seconds another node's publish may go unseen here before doctor says so
NFS_ACDIRMAX_DEFAULT = 60  # seconds, nfs(5); mountinfo shows acdirmax only when it differs
# Below these a publish is about to fail; below LOW_FREE_SHARE of the total, it will before long.
MIN_FREE_BYTES, MIN_FREE_INODES, LOW_FREE_SHARE = 100 << 20, 10_000, 0.05
SHARED_FILESYSTEMS = {"lustre": "Lustre", "gpfs": "GPFS (Spectrum Scale)", "nfs": "NFS", "nfs4": "NFS"}
LOCAL_FILESYSTEMS = {"ext3", "ext4", "xfs", "btrfs", "zfs"}
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}
# Object stores behind FUSE: rename is a copy and a delete, so two consumers can both win a claim.
NO_ATOMIC_RENAME = {"fuse.s3fs", "fuse.gcsfuse", "fuse.goofys"}


class Finding:
    """One check's verdict: ``severity`` is ok, warning or problem; ``fix`` is empty when ok."""

    __slots__ = ("check", "severity", "found", "fix", "queue")

    def __init__(self, check: str, severity: str, found: str, fix: str = "", queue: str | None = None):
        self.check, self.severity, self.found, self.fix, self.queue = check, severity, found, fix, queue

    def __repr__(self) -> str:
        return f"Finding({self.check!r}, {self.severity!r}, {self.found!r})"

    def as_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__slots__}


# ------------------------------------------------------------------ filesystem
def check_filesystem(path: str, mountinfo: str | None = None) -> list[Finding]:
    """What the root's filesystem is, and whether its type or mount options hurt ddmq."""
    def found(severity: str, text: str, fix: str = "") -> Finding:
        return Finding("filesystem", severity, text, fix)

    real = os.path.realpath(path)
    try:
        if mountinfo is None:
            with open("/proc/self/mountinfo") as file:
                mountinfo = file.read()
        st_dev = os.stat(real).st_dev
    except OSError as exc:
        return [found(OK, f"not checked: {exc.strerror} (mount information is read from Linux's /proc)")]
    mount = mount_of(real, parse_mountinfo(mountinfo), (os.major(st_dev), os.minor(st_dev)))
    if mount is None:
        return [found(OK, f"not checked: no mount in /proc/self/mountinfo holds {real}")]
    kind, where = mount.fstype, f"{mount.source} at {mount.mount_point}"
    journal = ext_journal(mount) if kind in ("ext2", "ext4") else kind == "ext3"
    findings = []
    if "ro" in mount.options or "ro" in mount.super_options:
        findings.append(found(PROBLEM, f"{kind} {where} is mounted read-only: nothing can be published or consumed",
                              f"remount it read-write (mount -o remount,rw {mount.mount_point})"))
    if kind in NO_ATOMIC_RENAME:
        findings.append(found(PROBLEM, f"{kind} {where}: an object store, whose rename is a copy and a delete, "
                                       "so two consumers can both claim one message",
                              "put the root on a POSIX filesystem (local disk, NFS, Lustre, GPFS)"))
    elif kind in ("ext2", "ext4") and journal is False:
        findings.append(found(WARNING, f"{kind} {where} has no journal: every create slows down the faster a "
                                       "queue runs (recently freed inodes are skipped) and a crash needs fsck",
                              f"add a journal (tune2fs -O has_journal {mount.source}, then remount) or use a "
                              "journaled filesystem; see docs/performance.md"))
    elif kind in MEMORY_FILESYSTEMS:
        findings.append(found(WARNING, f"{kind} {where}: in this node's memory, so other nodes cannot see the "
                                       "queues and a reboot loses every message",
                              "fine for queues used on one node whose messages may be lost; else put the root "
                              "on a disk or a shared filesystem"))
    elif kind in ("nfs", "nfs4"):
        findings.append(_nfs(mount, where))
    elif kind == "fuse.sshfs":
        findings.append(_sshfs(mount, where))
    if not findings:
        what = SHARED_FILESYSTEMS.get(kind) or (f"local {kind}" if kind in LOCAL_FILESYSTEMS else None)
        text = f"{what or kind} {where}" + ("" if what else ": not a filesystem ddmq is tested on; it needs "
                                           "atomic rename, exclusive create and unlink")
        findings.append(found(OK, text + (", with a journal" if journal else "")))
    return findings


def _nfs(mount: Mount, where: str) -> Finding:
    """NFS caches a directory's attributes up to acdirmax: that long, another node's publish goes unseen."""
    version = mount.option("vers")
    what = f"NFS{' ' + version if version else ''} {where}"
    if mount.option("noac"):
        return Finding("filesystem", OK, f"{what} with noac: other nodes' messages are seen at once "
                                         "(every stat asks the server; actimeo=1 is nearly as fresh and cheaper)")
    acdirmax = mount.option("acdirmax")
    delay = float(acdirmax) if acdirmax and acdirmax.isdigit() else NFS_ACDIRMAX_DEFAULT
    lookupcache = mount.option("lookupcache") or "all"
    text = f"{what}, acdirmax={delay:g} s, lookupcache={lookupcache}"
    if delay <= LISTING_DELAY_OK:
        return Finding("filesystem", OK, f"{text}: other nodes' messages are seen within {delay:g} s")
    return Finding("filesystem", WARNING,
                   f"{text}: listings (ddmq view, peek, a busy consumer's) can be {delay:g} s old here; "
                   "idle consumers refresh theirs every second",
                   "remount with -o actimeo=1,lookupcache=positive (about 1 s; see docs/reliability.md)")


def _sshfs(mount: Mount, where: str) -> Finding:
    fix = "mount with sshfs -o dir_cache=no (every listing fresh; see docs/reliability.md)"
    options = sshfs_options(mount.mount_point)
    if options is None:
        return Finding("filesystem", WARNING,
                       f"fuse.sshfs {where}: its cache options cannot be seen (no readable sshfs process serves "
                       f"it); by default sshfs lists directories from a {SSHFS_DCACHE_DEFAULT} s cache", fix)
    delay = sshfs_listing_delay(options)
    text = f"fuse.sshfs {where}, directory cache {f'{delay:g} s' if delay else 'off'}"
    if delay <= LISTING_DELAY_OK:
        return Finding("filesystem", OK, text)
    return Finding("filesystem", WARNING,
                   f"{text}: listings (ddmq view, peek, a busy consumer's) can be {delay:g} s old here; "
                   "idle consumers refresh theirs every second", fix)


# ----------------------------------------------------------------------- clock
def check_clock(offset: int | None, where: str) -> Finding:
    """ddmq corrects lease times for a skewed clock by itself, but a node that needs it is misconfigured."""
    if offset is None:
        return Finding("clock", WARNING, f"not measured: cannot create a file in {where} or in any queue's tmp/",
                       "run doctor as a user who can write to the root")
    seconds = offset / 1e9
    if abs(seconds) <= CLOCK_TOLERANCE:
        return Finding("clock", OK, f"this host's clock and the file server's agree within {abs(seconds):.1f} s")
    return Finding("clock", WARNING,
                   f"this host's clock is {abs(seconds):.1f} s {'ahead of' if seconds < 0 else 'behind'} the file "
                   "server's: ddmq times leases by the server, but logs, events and other tools do not",
                   "synchronise this host's clock with NTP (chronyc tracking, timedatectl)")


# ------------------------------------------------------------- space, inodes
def plural(n: int, thing: str) -> str:
    """"1 dead letter", "2 dead letters"."""
    return f"{n} {thing}{'s' * (n != 1)}"


def _size(n: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    while n >= 1024 and len(units) > 1:
        n /= 1024
        units.pop(0)
    return f"{n:.1f} {units[0]}"


def check_space(path: str) -> Finding:
    """Every message is a file: running out of space or of inodes stops publishing."""
    try:
        vfs = os.statvfs(path)
    except OSError as exc:
        return Finding("space", WARNING, f"not checked: {exc.strerror}", "check that the filesystem is reachable")
    free, total = vfs.f_bavail * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize
    inodes, all_inodes = vfs.f_favail, vfs.f_files  # 0 inodes in all: this filesystem does not count them
    text = f"{_size(free)} ({free / max(total, 1):.0%}) free" + (
        f", {inodes:,} inodes ({inodes / all_inodes:.0%}) free" if all_inodes else ", inodes not counted here")
    fix = "delete what is not needed (ddmq purge QUEUE --dead removes dead letters) or move the root"
    if free < MIN_FREE_BYTES or (all_inodes and inodes < MIN_FREE_INODES):
        return Finding("space", PROBLEM, f"{text}: publishing is about to fail", fix)
    if free < LOW_FREE_SHARE * total or (all_inodes and inodes < LOW_FREE_SHARE * all_inodes):
        return Finding("space", WARNING, f"{text}: running low", fix)
    return Finding("space", OK, text)


# ----------------------------------------------------------------- permissions
def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def check_root_permissions(path: str, st: os.stat_result, modes: dict[str, int | None]) -> Finding:
    """A group shares a root only if it is setgid: else each queue gets its creator's primary group.

    ``modes`` maps where a ``mode`` setting is in force (the root, a queue) to its value.
    """
    shared = {where: mode for where, mode in modes.items() if mode is not None and mode & 0o070}
    group, bits = _group(st.st_gid), stat.S_IMODE(st.st_mode)
    if not shared:
        return Finding("permissions", OK, f"no mode setting gives a group access: files get each creator's umask "
                                          f"(root {path}: group {group}, {bits:04o})")
    where, mode = next(iter(shared.items()))
    why = f"mode {mode:04o} ({where}) gives group access, but {path} (group {group}, {bits:04o})"
    fix = f"chgrp GROUP {path} && chmod 2770 {path} (GROUP: the group that shares the queues)"
    if not st.st_mode & stat.S_ISGID:
        return Finding("permissions", PROBLEM, f"{why} is not setgid: each new queue gets its creator's primary "
                                               "group, which other members cannot use", fix)
    if st.st_mode & 0o050 != 0o050:
        return Finding("permissions", PROBLEM, f"{why} does not let the group enter it", fix)
    return Finding("permissions", OK, f"{path} is group {group}, setgid, {bits:04o}; mode {mode:04o} ({where})")


def queue_permissions(q: Queue, mode: int | None, root_gid: int) -> list[Finding]:
    """With a group ``mode``, every directory of the queue must be the root's group and open to it."""
    if mode is None or not mode & 0o070:
        return []
    wanted = atomic.dir_mode(mode) & 0o070
    wrong = []
    for directory in [q.dir] + [q.state(s) for s in STATE_DIRS]:
        st = os.fstat(directory.fd)  # the directory ddmq opened, never a link's target
        name = os.path.relpath(directory.path, q.dir.path)
        if st.st_gid != root_gid:
            wrong.append(f"{name} is group {_group(st.st_gid)}")
        elif st.st_mode & wanted != wanted:
            wrong.append(f"{name} is {stat.S_IMODE(st.st_mode):04o}")
    if not wrong:
        return []
    group = _group(root_gid)
    return [Finding("permissions", PROBLEM,
                    f"queue {q.name}: {', '.join(wrong)}, but mode {mode:04o} shares it with group {group}: "
                    "other members cannot use it",
                    f"chgrp -R {group} {q.dir.path} && chmod -R g+rwX {q.dir.path} && "
                    f"find {q.dir.path} -type d -exec chmod g+s {{}} +", q.name)]


# ---------------------------------------------------------------------- queues
def check_queue(q: Queue, settings: Settings, root_gid: int, now_ns: int) -> list[Finding]:
    """Foreign files, leases nobody's housekeeping requeued, dead letters and permissions of one queue."""
    from .housekeeping import foreign_entries
    from .inventory import dead_letters

    findings = queue_permissions(q, settings.mode, root_gid)
    foreign = foreign_entries(q)
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        findings.append(Finding("foreign files", WARNING, f"queue {q.name}: {plural(len(foreign), 'file')} ddmq did "
                                                          f"not write ({shown})",
                                f"move {'it' if len(foreign) == 1 else 'them'} out of {q.dir.path} (ddmq clean "
                                f"{q.name} dead-letters those in ready/ and work/)", q.name))
    expired = [now_ns - w.expires for w in map(parse_work, atomic.listdir(q.work)) if w and w.expires <= now_ns]
    oldest = max(expired, default=0) / 1e9
    if oldest > settings.clean_interval + CLOCK_TOLERANCE:
        findings.append(Finding("leases", WARNING,
                                f"queue {q.name}: {plural(len(expired), 'expired lease')}, the oldest {oldest:.0f} s "
                                f"ago, longer than clean_interval ({settings.clean_interval:g} s): no consumer or "
                                "cleaner is running", f"ddmq clean {q.name} (or run it from cron)", q.name))
    dead = dead_letters(q)
    if dead:
        findings.append(Finding("dead letters", WARNING, f"queue {q.name}: {plural(len(dead), 'dead letter')}",
                                f"look at them (ddmq peek {q.name} --state dead), then ddmq requeue {q.name} --dead "
                                f"or ddmq purge {q.name} --dead", q.name))
    if not findings:
        leases = f"{plural(len(expired), 'expired lease')} due for requeue" if expired else "no expired leases"
        findings.append(Finding("queue", OK, f"queue {q.name}: no foreign files, {leases}, no dead letters", "",
                                q.name))
    return findings


def _opened(root: Root, name: str) -> tuple[Queue, Settings] | DdmqError:
    """The queue and its settings (QueueNotFound raised), or why it cannot be used (a planted link, a bad file)."""
    from .errors import QueueNotFound

    try:
        q = root.checked(name)
        return q, q.read_settings()
    except QueueNotFound:
        raise
    except DdmqError as exc:
        return exc


def _unusable(name: str, exc: DdmqError) -> Finding:
    refused = getattr(exc, "errno", None) in (errno.ELOOP, errno.ENOTDIR)
    return Finding("queue", PROBLEM, f"queue {name}: {exc}",
                   "move the link or file away (ddmq delete --force removes the queue)" if refused
                   else "fix what the message names, then run doctor again", name)


def healthy(findings: list[Finding]) -> bool:
    """Warnings count: a script running ``ddmq doctor || alert`` wants to hear of a 60 s NFS cache too."""
    return all(f.severity == OK for f in findings)


def plain(findings: list[Finding]) -> str:
    """One line per finding, its fix under anything not ok, then a summary."""
    lines = []
    for f in findings:
        lines.append(f"{f.severity if f.severity == OK else f.severity.upper():8} {f.check:13} {f.found}")
        if f.fix:
            lines.append(f"{'':22} fix: {f.fix}")
    problems, warnings = (plural(sum(f.severity == s for f in findings), s) for s in (PROBLEM, WARNING))
    lines.append("healthy" if healthy(findings) else f"{problems}, {warnings}")
    return "\n".join(lines)


def diagnose(root: str | os.PathLike[str] | None = None, queues: Iterable[str] | None = None) -> list[Finding]:
    """Run every check on ``root`` (default: $DDMQ_ROOT, else ~/.ddmq) and ``queues`` (default: all).

    Raises RootNotFound/NotARoot or QueueNotFound (exit 4) before checking
    anything, and InvalidQueueName (exit 2) for a bad name; a check that
    cannot be made is itself a finding.
    """
    from .broker import resolve_root
    from .root import Root

    names = [check_queue_name(name) for name in ([queues] if isinstance(queues, str) else queues or ())]
    handle = Root(resolve_root(root)[0], create=False)  # never make a root to check it
    path, root_dir = handle.path, handle.dir
    opened = {name: _opened(handle, name) for name in names or handle.list_queues()}
    usable = {name: q for name, q in opened.items() if not isinstance(q, DdmqError)}
    findings = check_filesystem(path)
    findings.append(check_space(path))
    offset = measure_offset(root_dir)
    for q, _ in usable.values():
        offset = measure_offset(q.tmp) if offset is None else offset
    findings.append(check_clock(offset, path))
    root_stat = os.fstat(root_dir.fd)
    try:
        modes = {"root ddmq.yaml": handle.settings().mode}
    except DdmqError as exc:
        modes = {}
        findings.append(Finding("settings", PROBLEM, str(exc), "correct the root's ddmq.yaml"))
    modes.update({f"queue {name}": settings.mode for name, (_, settings) in usable.items()})
    findings.append(check_root_permissions(path, root_stat, modes))
    now = time.time_ns() + (offset if offset is not None and abs(offset) > CLOCK_TOLERANCE * 1e9 else 0)
    for name, state in opened.items():  # leases judged on the server's clock, as ddmq.clock does
        try:
            if isinstance(state, DdmqError):
                raise state
            findings += check_queue(state[0], state[1], root_stat.st_gid, now)
        except DdmqError as exc:
            findings.append(_unusable(name, exc))
    return findings
