"""Which filesystem a path is on, and the mount options that decide how soon other nodes see a change.

Read from Linux's /proc: the mount table (/proc/self/mountinfo, format in
proc(5)), the ext4 and jbd2 entries that tell a journaled ext4 from one
without, and, for sshfs, whose cache options the kernel never sees, the
command line of the sshfs process serving the mount. :mod:`ddmq.doctor`
judges what is found here.
"""
from __future__ import annotations

import os
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SSHFS_DCACHE_DEFAULT = 20  # seconds, sshfs(1) dcache_timeout


class Mount:
    """One line of /proc/self/mountinfo (see proc(5)): where, what, and with which options."""

    __slots__ = ("device", "mount_point", "options", "fstype", "source", "super_options")
    device: tuple[int, int]
    mount_point: str
    options: list[str]
    fstype: str
    source: str
    super_options: list[str]

    def __init__(self, *fields: Any):
        for key, value in zip(self.__slots__, fields):
            setattr(self, key, value)

    def option(self, name: str) -> str | None:
        """The value of ``name=VALUE`` (or ``name`` itself for a flag), per-mount or per-filesystem."""
        for option in self.options + self.super_options:
            key, _, value = option.partition("=")
            if key == name:
                return value or name
        return None


def _unescape(field: str) -> str:
    r"""mountinfo writes space, tab, newline and backslash in paths as octal escapes (``\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Every well-formed line of a mountinfo file, in its order (a later mount hides an earlier one)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            major, minor = fields[2].split(":")
            mounts.append(Mount((int(major), int(minor)), _unescape(fields[4]), fields[5].split(","),
                                _unescape(fields[separator + 1]), _unescape(fields[separator + 2]),
                                fields[separator + 3].split(",")))
        except (ValueError, IndexError):
            continue
    return mounts


def mount_of(path: str, mounts: list[Mount], device: tuple[int, int] | None = None) -> Mount | None:
    """The mount holding ``path`` (a real path): the longest mount point above it, the last one mounted.

    With ``device`` (the path's st_dev), mounts of other filesystems are left
    out first: a mount point can also be hidden by one mounted above a parent.
    """
    candidates = [m for m in mounts if path == m.mount_point or path.startswith(m.mount_point.rstrip("/") + "/")]
    same_device = [m for m in candidates if m.device == device]
    best = None
    for m in same_device or candidates:
        if best is None or len(m.mount_point) >= len(best.mount_point):
            best = m
    return best


def ext_journal(mount: Mount) -> bool | None:
    """Whether an ext2/3/4 filesystem has a journal; None if this kernel does not say.

    The superblock's options are no help (mountinfo shows ``rw`` either way),
    but a journal has an entry ``DEV-INODE`` in /proc/fs/jbd2, and ext4 lists
    ``data=`` among its options in /proc/fs/ext4/DEV only when journaling.
    DEV is the kernel's name of the block device (``dm-0`` for an LVM volume).
    """
    major, minor = mount.device
    try:
        name = os.path.basename(os.readlink(f"/sys/dev/block/{major}:{minor}"))
    except OSError:
        name = os.path.basename(mount.source)
    try:
        with open(f"/proc/fs/ext4/{name}/options") as file:
            options: list[str] | None = file.read().split()
    except OSError:
        options = None
    try:
        journals = os.listdir("/proc/fs/jbd2")
    except OSError:
        journals = []
    if any(j.rpartition("-")[0] == name for j in journals) or any(o.startswith("data=") for o in options or ()):
        return True
    return False if options is not None else None


def sshfs_options(mount_point: str) -> list[str] | None:
    """The ``-o`` options of the sshfs process serving ``mount_point``; None if none can be read.

    sshfs keeps its cache settings to itself (mountinfo shows only FUSE's
    ``user_id``/``group_id``), so they are read from its command line.
    """
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                argv = [a.decode(errors="replace") for a in file.read().split(b"\0") if a]
        except OSError:
            continue
        if not argv or os.path.basename(argv[0]) != "sshfs" or mount_point not in argv:
            continue
        options = []
        for i, arg in enumerate(argv):
            if arg == "-o" and i + 1 < len(argv):
                options += argv[i + 1].split(",")
            elif arg.startswith("-o") and arg != "-o":
                options += arg[2:].split(",")
        return options
    return None


def sshfs_listing_delay(options: list[str]) -> float:
    """Seconds sshfs serves a directory listing from its cache, by its documented options and defaults."""
    values = dict(option.partition("=")[::2] for option in options)
    if values.get("dir_cache", values.get("cache")) in ("no", "0", "false"):
        return 0.0
    for key in ("dcache_dir_timeout", "cache_dir_timeout", "dcache_timeout", "cache_timeout"):
        try:
            return float(values[key])
        except (KeyError, ValueError):
            continue
    return float(SSHFS_DCACHE_DEFAULT)


# Filesystems whose only client is this kernel: a listing is never stale.
LOCAL_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "zfs", "f2fs", "overlay",
                         "jfs", "reiserfs", "bcachefs"})


def local_filesystem(path: str) -> bool:
    """Whether ``path`` is on a filesystem only this host writes to; False when that cannot be told."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return False
    mount = mount_of(real, parse_mountinfo(text), (os.major(st.st_dev), os.minor(st.st_dev)))
    return mount is not None and mount.fstype in LOCAL_TYPES
