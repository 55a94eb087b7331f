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

from .errors import storage_error

# Names for type annotations only: importing typing at run time costs a
# command-line tool several milliseconds of start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Union

    # Paths are plain strings inside ddmq (see layout.QueuePaths); callers may pass PathLike.
    StrPath = Union[str, "os.PathLike[str]"]

# Errors with which the loser of a rename race can come back: ENOENT (the
# source is gone) everywhere; EEXIST/ENOTEMPTY on some network filesystems;
# EPERM/EACCES through sshfs, whose SFTP server maps most failures to them.
_RACE_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ESTALE}
_AMBIGUOUS_ERRNOS = {errno.EPERM, errno.EACCES}

OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: a FIFO planted in a queue must not hang the reader.
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def dir_mode(file_mode: int) -> int:
    """Directory bits for a file mode: search where read is allowed, and setgid
    when the group may write, so files created inside keep the shared group."""
    mode = file_mode | ((file_mode & 0o444) >> 2)
    return mode | 0o2000 if file_mode & 0o020 else mode


def make_dir(path: StrPath, file_mode: int | None) -> None:
    """mkdir, with permissions derived from ``file_mode`` whatever the umask (None: umask)."""
    os.mkdir(path)
    if file_mode is not None:
        os.chmod(path, dir_mode(file_mode))


def fsync_dir(path: StrPath) -> None:
    """Make a rename into ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some network filesystems refuse fsync on directories; the data itself was synced
    finally:
        os.close(fd)


def write_private(tmp: StrPath, data: bytes, durable: bool, mode: int | None = None) -> None:
    """Create ``tmp`` exclusively and write all of ``data`` to it.

    ``mode`` (permission bits) is set exactly, whatever the umask, so files in
    a queue shared by a group stay usable by the group; None leaves it to the umask.
    On any failure the partial file is removed (best effort: ``clean`` removes
    what a crash leaves behind) and a StorageError is raised.
    """
    try:
        fd = os.open(tmp, OPEN_FLAGS, 0o666 if mode is None else mode)
    except OSError as exc:
        raise storage_error("create", tmp, exc) from None
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
        discard(tmp)
        raise storage_error("write", tmp, exc) from None


def publish_file(tmp: StrPath, final: StrPath, data: bytes, durable: bool, mode: int | None = None) -> None:
    """Write ``data`` under the private name ``tmp``, then rename it to ``final``.

    ``final`` becomes visible complete or not at all. With ``durable`` the data
    is on stable storage before the rename, and the rename itself before return.
    """
    write_private(tmp, data, durable, mode)
    rename_private(tmp, final)
    if durable:
        fsync_dir(os.path.dirname(final))


def rename_private(tmp: StrPath, final: StrPath) -> None:
    """Rename a private file written by :func:`write_private` into place; StorageError if it failed.

    An NFS client whose rename reply was lost can report ENOENT/ESTALE for a
    rename that happened (retrying would publish twice). ``final`` is not
    always fresh (clean.stamp is replaced), so the proof is that our private
    file is gone *and* the destination is there. On failure ``tmp`` is removed.
    """
    try:
        os.rename(tmp, final)
    except OSError as exc:
        if not (exc.errno in _RACE_ERRNOS and renamed(tmp, final)):
            discard(tmp)
            raise storage_error("publish", final, exc) from None


def move(src: StrPath, dst: StrPath) -> bool:
    """Rename ``src`` to ``dst``; True if this call moved it, False if another client did first.

    Exactly one of several clients renaming the same source wins. A loser is
    told so by ENOENT (or EEXIST/EPERM on some network filesystems); an NFS
    client whose rename reply was lost can also see ENOENT for a rename that
    *did* happen, so on failure the destination is checked too. Destinations
    are always fresh unique names, so finding ``dst`` means we moved it.
    """
    try:
        os.rename(src, dst)
        return True
    except OSError as exc:
        if exc.errno not in _RACE_ERRNOS and exc.errno not in _AMBIGUOUS_ERRNOS:
            raise storage_error("move", src, exc) from None
        if os.path.lexists(dst):
            return True
        if exc.errno in _AMBIGUOUS_ERRNOS and not _writable(os.path.dirname(src), os.path.dirname(dst)):
            raise storage_error("move", src, exc) from None
        return False


def renamed(src: StrPath, dst: StrPath) -> bool:
    """After a failed rename of a private ``src``: did it happen anyway (reply lost)?"""
    return not os.path.lexists(src) and os.path.lexists(dst)


def remove_tree(path: StrPath) -> None:
    """Remove a directory tree, best effort: what is left, ``clean`` removes later.

    ``shutil.rmtree(ignore_errors=True)`` still raises on Python < 3.12 when
    the fstat of a directory it opened fails (ESTALE: another client removed it).
    """
    import shutil  # deferred: rarely needed, and slow to import (start-up of every CLI run)

    try:
        shutil.rmtree(path, ignore_errors=True)
    except OSError:
        pass


def _writable(*dirs: StrPath) -> bool:
    return all(os.access(d, os.W_OK | os.X_OK) for d in dirs)


def remove(path: StrPath) -> bool:
    """Unlink ``path``; True if this call removed it, False if it was already gone."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ESTALE:
            return False
        raise storage_error("remove", path, exc) from None


def discard(path: StrPath) -> None:
    """Remove a file of our own that failed half-way; errors are left to ``clean``."""
    try:
        os.unlink(path)
    except OSError:
        pass


def read_file(path: StrPath, limit: int) -> bytes | None:
    """Read a message file without following symlinks; None if it vanished.

    Raises OSError for anything else (the caller decides whether the file is
    corrupt or the storage failed); reads at most ``limit`` + 1 bytes so a
    huge foreign file cannot exhaust memory.
    """
    try:
        fd = os.open(path, READ_FLAGS)
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


def listdir(path: StrPath) -> list[str]:
    """Names in a state directory, hidden names (NFS silly-renames, .fuse_hidden) left out."""
    try:
        return [name for name in os.listdir(path) if not name.startswith(".")]
    except OSError as exc:
        raise storage_error("list", path, exc) from None
