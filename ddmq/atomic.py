"""The atomic filesystem steps every ddmq state change is made of.

Only three primitives change state: an exclusive create of a private
temporary file, a ``rename`` (atomic on a local disk, NFS, Lustre, GPFS and
sshfs within one directory tree), and an ``unlink``. This module also decides
what a failed rename *means*: on shared storage losing a race to another
client is normal and must not look like an error, while a full disk must.
"""
from __future__ import annotations

import errno
import os
import stat

from .errors import storage_error

# Names for type annotations only: importing typing at run time costs a
# command-line tool several milliseconds of start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .errors import StorageError

# Errors with which the loser of a rename race can come back: ENOENT (the
# source is gone) everywhere; EEXIST/ENOTEMPTY on some network filesystems;
# EPERM/EACCES through sshfs, whose SFTP server maps most failures to them.
_RACE_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ESTALE}
_AMBIGUOUS_ERRNOS = {errno.EPERM, errno.EACCES}

OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: a FIFO planted in a queue must not hang the reader.
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# What a planted symlink, FIFO, device or directory in the place of a file gives at open.
NOT_A_FILE_ERRNOS = {errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EMLINK, errno.ENOTDIR, errno.EAGAIN}


class Dir:
    """An open directory: every name in it is reached through its descriptor, never by path.

    A member of the group that shares a queue can replace any directory in it
    by a symbolic link at any instant. A path is resolved afresh at every
    system call, so a path-based rename or unlink could land in whatever the
    link points to; a descriptor opened with ``O_NOFOLLOW`` stays on the
    directory that was there when it was opened. ``path`` is for messages only.

    The descriptor is closed when the object is garbage-collected, so a
    handle still in use is never closed under its user. ``parent`` and
    ``name`` let it be opened afresh for a listing (see :func:`listdir`).
    """

    __slots__ = ("path", "fd", "parent", "name")

    def __init__(self, path: str, fd: int, parent: Dir | None = None, name: str | None = None):
        self.path = path
        self.fd = fd
        self.parent = parent
        self.name = name

    def __repr__(self) -> str:
        return f"Dir({self.path!r}, fd={self.fd})"

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass

    def join(self, name: str) -> str:
        return f"{self.path}/{name}"

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def mode(self, name: str) -> int | None:
        """``name``'s type and permission bits, a link's own; None if it cannot be looked at (gone)."""
        try:
            return self.lstat(name).st_mode
        except OSError:
            return None


def open_root(path: str) -> Dir:
    """Open the root directory itself (the user named it, so a symlink to it is followed)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    return Dir(path, fd)


def open_dir(parent: Dir, name: str) -> Dir:
    """Open the directory ``name`` in ``parent`` without following a symbolic link.

    OSError as the system call gives it: ELOOP for a symlink, ENOTDIR for
    anything else that is not a directory, ENOENT if there is none.
    """
    return Dir(parent.join(name), os.open(name, DIR_FLAGS, dir_fd=parent.fd), parent, name)


def refused(path: str, exc: OSError) -> StorageError:
    """The error for a directory that is a symlink or not a directory where ddmq expects its own."""
    from .errors import StorageError

    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return StorageError(f"refusing to use {path}: it is not a directory ddmq made "
                            "(a symbolic link or another kind of file is in its place)", exc.errno)
    return storage_error("open", path, exc)


def dir_mode(file_mode: int) -> int:
    """Directory bits for a file mode: search where read is allowed, and setgid
    when the group may write, so files created inside keep the shared group."""
    mode = file_mode | ((file_mode & 0o444) >> 2)
    return mode | 0o2000 if file_mode & 0o020 else mode


def make_own_dir(parent: Dir, name: str, file_mode: int | None) -> Dir:
    """mkdir ``name`` in ``parent`` and open it; permissions set on what was opened, not on a path.

    Made private first (0700), opened without following links, checked to be
    this user's, and only then given its final bits with ``fchmod``: a member
    who swaps the new directory for a link or a directory of their own between
    the mkdir and the open makes this fail, and never makes it chmod theirs.
    """
    return _make_dir(parent, name, None if file_mode is None else dir_mode(file_mode), errno.EPERM)


def make_dir_like(parent: Dir, name: str, model: Dir) -> Dir:
    """mkdir ``name`` in ``parent`` and open it, with ``model``'s permission bits, set on what was opened.

    For directories any member of the group makes on demand (ready/'s tree,
    jobs/'s shards): made as :func:`make_own_dir` makes one, then given the
    bits of the directory they extend, so a member's umask never shuts the
    group out. FileExistsError if another client made it first, or swapped
    ours for its own before we opened it: then use theirs.
    """
    return _make_dir(parent, name, stat.S_IMODE(os.fstat(model.fd).st_mode), errno.EEXIST)


def _make_dir(parent: Dir, name: str, bits: int | None, theirs: int) -> Dir:
    """mkdir (0700, or as the umask says when ``bits`` is None), open, check it is ours, fchmod to ``bits``.

    OSError(``theirs``) when the directory opened is another user's.
    """
    os.mkdir(name, 0o700 if bits is not None else 0o777, dir_fd=parent.fd)
    made = open_dir(parent, name)
    try:
        if os.fstat(made.fd).st_uid != os.geteuid():
            raise OSError(theirs, "not the directory this process made", made.path)
        if bits is not None:
            os.fchmod(made.fd, bits)
    except BaseException:
        made.close()
        raise
    return made


def open_if_there(parent: Dir, name: str) -> Dir | None:
    """The directory ``name`` in ``parent``, opened without following a link; None if there is none.

    A link or a file in its place is refused (:func:`refused`).
    """
    try:
        return open_dir(parent, name)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise refused(parent.join(name), exc) from None


def open_or_make_dir(parent: Dir, name: str, model: Dir) -> tuple[Dir, bool] | None:
    """The directory ``name`` in ``parent``, made first if missing (:func:`make_dir_like`); and whether this call made it.

    A directory another client made meanwhile is used as it is. None if
    ``parent`` itself was removed (ENOENT or ESTALE) or the directory
    vanished again before it could be opened: the caller starts again from
    further up. A link or a file in its place is refused; any other failure
    is a StorageError.
    """
    found = open_if_there(parent, name)
    if found is not None:
        return found, False
    try:
        return make_dir_like(parent, name, model), True
    except FileExistsError:
        found = open_if_there(parent, name)
        return None if found is None else (found, False)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ESTALE):
            return None
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped for a link or a file between mkdir and open
            raise refused(parent.join(name), exc) from None
        raise storage_error("create", parent.join(name), exc) from None


def probe(directory: Dir, name: str) -> os.stat_result | None:
    """Create the private file ``name`` exclusively, stat it and remove it at once; None if it cannot be made.

    The stat is what the file server stamped on a new file (its clock); the
    create and remove are a change this client made to the directory, which
    drops its cached view of it on NFS and sshfs.
    """
    try:
        fd = os.open(name, OPEN_FLAGS, 0o600, dir_fd=directory.fd)
    except OSError:
        return None
    try:
        return os.fstat(fd)
    except OSError:
        return None
    finally:
        try:
            os.close(fd)
        except OSError:
            pass  # nothing was written through it
        discard(directory, name)


def fsync_dir(directory: Dir) -> None:
    """Make a rename into ``directory`` durable."""
    try:
        os.fsync(directory.fd)
    except OSError:
        pass  # some network filesystems refuse fsync on directories; the data itself was synced


def _kernel_at_least(major: int, minor: int) -> bool:
    """Whether the running Linux kernel is at least ``major.minor`` (False elsewhere or when unreadable)."""
    if os.uname().sysname != "Linux":
        return False
    try:
        got = tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2])
    except ValueError:
        return False
    return got >= (major, minor)


_libc_syncfs: Any = None  # libc's syncfs, looked up on first use (ctypes costs start-up time)


def syncfs_reliable() -> bool:
    """Whether :func:`syncfs` may stand in for an fsync of every file: Linux, and a kernel that reports its errors.

    Before Linux 5.8 syncfs(2) returned 0 even when writing back a file
    failed, so a batch could be reported durable when it was not; fsync
    always reported such errors.
    """
    return _kernel_at_least(5, 8)


def syncfs_fd(fd: int) -> None:
    """syncfs(2) on the filesystem of ``fd``; OSError as ``os.fsync`` raises it (``os`` has no syncfs)."""
    global _libc_syncfs
    import ctypes

    if _libc_syncfs is None:
        # The C library already loaded into this process (ctypes.util.find_library would run ldconfig).
        _libc_syncfs = ctypes.CDLL(None, use_errno=True).syncfs
        _libc_syncfs.argtypes = [ctypes.c_int]
    if _libc_syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def syncfs(directory: Dir) -> None:
    """One barrier for every file written on ``directory``'s filesystem: on stable storage when this returns.

    syncfs(2) writes back and waits for all dirty data and metadata of the
    filesystem (on ext4 one journal commit, on XFS one log force, then one
    cache flush), where an fsync per file pays that commit and flush once
    per file. It is only as good as the filesystem's own ``sync_fs``:
    complete on local filesystems (ext4, XFS, btrfs), not on FUSE (sshfs),
    so it is used only on a local filesystem (see transitions.publish_many).
    """
    try:
        syncfs_fd(directory.fd)
    except OSError as exc:
        raise storage_error("sync the filesystem of", directory.path, exc) from None


def write_private(directory: Dir, name: str, data: bytes, durable: bool, mode: int | None = None) -> None:
    """Create ``name`` in ``directory`` exclusively and write all of ``data`` to it.

    ``mode`` (permission bits) is set exactly, whatever the umask, so files in
    a queue shared by a group stay usable by the group; None leaves it to the umask.
    On any failure the partial file is removed (best effort: ``clean`` removes
    what a crash leaves behind) and a StorageError is raised.
    """
    try:
        fd = os.open(name, OPEN_FLAGS, 0o666 if mode is None else mode, dir_fd=directory.fd)
    except OSError as exc:
        raise storage_error("create", directory.join(name), exc) from None
    try:
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            written = 0
            while written < len(data):  # once, but after a short write (a signal, a network filesystem)
                written += os.write(fd, memoryview(data)[written:] if written else data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        discard(directory, name)
        raise storage_error("write", directory.join(name), exc) from None


def publish_file(tmp_dir: Dir, tmp: str, directory: Dir, final: str, data: bytes, durable: bool,
                 mode: int | None = None) -> None:
    """Write ``data`` under the private name ``tmp``, then rename it to ``final``.

    ``final`` becomes visible complete or not at all. With ``durable`` the data
    is on stable storage before the rename, and the rename itself before return.
    """
    write_private(tmp_dir, tmp, data, durable, mode)
    rename_private(tmp_dir, tmp, directory, final)
    if durable:
        fsync_dir(directory)


def rename_private(tmp_dir: Dir, tmp: str, directory: Dir, final: str, may_vanish: bool = False,
                   keep: bool = False) -> bool:
    """Rename a private file written by :func:`write_private` into place; StorageError if it failed.

    An NFS client whose rename reply was lost can report ENOENT/ESTALE for a
    rename that happened (retrying would publish twice). ``final`` is not
    always fresh (clean.stamp is replaced), so the proof is that our private
    file is gone *and* the destination is there. On failure ``tmp`` is removed
    (left with ``keep``), except with ``may_vanish`` when ``directory`` itself
    was removed meanwhile (ENOENT or ESTALE, ``tmp`` still there): then
    False, and the caller makes the directory again (a slot of ready/, see
    :mod:`ddmq.shards`).
    """
    try:
        os.rename(tmp, final, src_dir_fd=tmp_dir.fd, dst_dir_fd=directory.fd)
    except OSError as exc:
        if exc.errno in _RACE_ERRNOS and renamed(tmp_dir, tmp, directory, final):
            return True
        if may_vanish and exc.errno in (errno.ENOENT, errno.ESTALE) and exists(tmp_dir, tmp) and removed(directory):
            return False
        if not keep:
            discard(tmp_dir, tmp)
        raise storage_error("publish", directory.join(final), exc) from None
    return True


def move(src_dir: Dir, src: str, dst_dir: Dir, dst: str) -> bool:
    """Rename ``src`` to ``dst``; True if this call moved it, False if another client did first.

    Exactly one of several clients renaming the same source wins. A loser is
    told so by ENOENT (or EEXIST/EPERM on some network filesystems); an NFS
    client whose rename reply was lost can also see ENOENT for a rename that
    *did* happen, so on failure the destination is checked too. Destinations
    are always fresh unique names, so finding ``dst`` means we moved it.
    """
    try:
        os.rename(src, dst, src_dir_fd=src_dir.fd, dst_dir_fd=dst_dir.fd)
        return True
    except OSError as exc:
        if exc.errno not in _RACE_ERRNOS and exc.errno not in _AMBIGUOUS_ERRNOS:
            raise storage_error("move", src_dir.join(src), exc) from None
        if exists(dst_dir, dst):
            return True
        if exc.errno in _AMBIGUOUS_ERRNOS and not _writable(src_dir, dst_dir):
            raise storage_error("move", src_dir.join(src), exc) from None
        return False


def removed(directory: Dir) -> bool:
    """Whether a directory held open was removed: no links left (local), or a stale handle (NFS)."""
    try:
        return os.fstat(directory.fd).st_nlink == 0
    except OSError:
        return True


def exists(directory: Dir, name: str) -> bool:
    """Whether ``name`` is in ``directory`` (a link counts as itself, not as what it points to)."""
    return directory.mode(name) is not None


def renamed(src_dir: Dir, src: str, dst_dir: Dir, dst: str) -> bool:
    """After a failed rename of a private ``src``: did it happen anyway (reply lost)?"""
    return not exists(src_dir, src) and exists(dst_dir, dst)


def remove_tree(parent: Dir, name: str) -> None:
    """Remove the tree ``name`` in ``parent``, best effort: what is left, ``clean`` removes later.

    Every step goes through descriptors opened without following links, so a
    link planted anywhere in the tree is removed as a link and never followed
    out of it, whatever is swapped meanwhile.
    """
    try:
        top = open_dir(parent, name)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link or a file in the place of the tree
            _unlink_quietly(parent, name)
        return
    try:
        for entry in _names(top):
            try:
                is_dir = stat.S_ISDIR(top.lstat(entry).st_mode)
            except OSError:
                continue
            if is_dir:
                remove_tree(top, entry)
            else:
                _unlink_quietly(top, entry)
    finally:
        top.close()
    try:
        os.rmdir(name, dir_fd=parent.fd)
    except OSError:
        pass


def _names(directory: Dir) -> list[str]:
    try:
        return os.listdir(directory.fd)  # opened just now by remove_tree
    except OSError:
        return []


def _unlink_quietly(directory: Dir, name: str) -> None:
    try:
        os.unlink(name, dir_fd=directory.fd)
    except OSError:
        pass


def _writable(*dirs: Dir) -> bool:
    return all(os.access(".", os.W_OK | os.X_OK, dir_fd=d.fd) for d in dirs)


def remove(directory: Dir, name: str) -> bool:
    """Unlink ``name``; True if this call removed it, False if it was already gone."""
    try:
        os.unlink(name, dir_fd=directory.fd)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ESTALE:
            return False
        raise storage_error("remove", directory.join(name), exc) from None


def discard(directory: Dir, name: str) -> None:
    """Remove a file of our own that failed half-way; errors are left to ``clean``."""
    _unlink_quietly(directory, name)


def read_file(directory: Dir, name: str, limit: int) -> bytes | None:
    """Read a regular file without following symlinks or blocking; None if it vanished.

    Raises OSError for anything else (the caller decides whether the file is
    corrupt or the storage failed): ELOOP for a link, EISDIR for a directory,
    EAGAIN for a FIFO someone holds open for writing (one nobody writes to
    reads as empty). No fstat to tell them apart first: that would be one more
    system call per message, and each of these already fails as a message.
    Reads at most ``limit`` + 1 bytes so a huge foreign file cannot exhaust memory.
    """
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=directory.fd)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        remaining = limit + 1
        # Start small and grow: os.read allocates its whole buffer before the
        # system call, and a 1 MiB buffer costs more than the read itself.
        size = 1 << 16
        while remaining > 0:
            chunk = os.read(fd, min(remaining, size))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
            if len(chunk) == size:  # a big file: fewer, larger reads
                size = min(size * 2, 1 << 22)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def list_all(directory: Dir) -> list[str]:
    """Every name in ``directory``, from a directory opened afresh for this listing.

    A directory held open can serve a stale listing: FUSE filesystems such as
    sshfs read a directory's entries once per open handle, and an NFS client
    revalidates a directory at open. So each listing opens the directory
    again, relative to its parent and without following a link (a root, named
    by the user, by its path).
    """
    try:
        if directory.parent is None or directory.name is None:
            return os.listdir(directory.path)
        fd = os.open(directory.name, DIR_FLAGS, dir_fd=directory.parent.fd)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise storage_error("list", directory.path, exc) from None


def hidden(name: str) -> bool:
    """A name no state directory's grammar has: NFS silly-renames, .fuse_hidden, ddmq's own private names."""
    return name.startswith(".")


def listdir(directory: Dir) -> list[str]:
    """Names in a state directory, hidden names left out (see :func:`hidden`)."""
    return [name for name in list_all(directory) if not hidden(name)]
