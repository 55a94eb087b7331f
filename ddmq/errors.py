"""The one exception hierarchy of ddmq.

Every foreseeable failure (a missing root, an unknown queue, a full disk, a lease
that was lost to another client) is raised as a subclass of :class:`DdmqError`,
so that callers and the command line can report it in one line instead of
showing a traceback. Each class carries the exit code the ``ddmq`` command
uses for it, so scripts can tell the cases apart.
"""
from __future__ import annotations

import errno
import os


class DdmqError(Exception):
    """Base class of every error ddmq raises on purpose."""

    exit_code = 1


class UsageError(DdmqError):
    """The caller asked for something malformed (a bad queue name, a bad value)."""

    exit_code = 2


class InvalidQueueName(UsageError):
    """A queue name that could escape the root or hide from listings."""


class SettingsError(DdmqError):
    """A ``ddmq.yaml`` file that cannot be used; the message names file and key."""


class InvalidSetting(SettingsError, UsageError):
    """A setting passed as an argument (not read from a file) that is invalid."""


class NotFound(DdmqError):
    """Something named by the caller does not exist."""

    exit_code = 4


class RootNotFound(NotFound):
    """The root directory does not exist."""


class NotARoot(NotFound):
    """The directory exists but was never initialised as a ddmq root."""


class UnknownLayout(DdmqError):
    """The root's marker names an on-disk layout this ddmq does not read (or none: an older ddmq's)."""


class QueueNotFound(NotFound):
    """The queue does not exist in this root."""


class QueueExists(DdmqError):
    """``create_queue`` was asked for a queue that is already there."""


class LeaseLost(DdmqError):
    """The message is no longer held by this consumer.

    Another client requeued it after the lease expired (and perhaps someone
    else holds it now), or it was already acked or nacked.
    """

    exit_code = 5


class ForeignFiles(DdmqError):
    """A directory holds files ddmq did not write, so it will not delete it."""


class StorageError(DdmqError):
    """The filesystem refused an operation (full, read-only, no permission, I/O)."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


class PartlyPublished(StorageError):
    """A batch publish failed after some of its messages became visible.

    ``published`` of the batch's messages, its first ones in the order given,
    are in the queue, complete; the others are not and never will be (their
    private files are removed). Retrying only the rest publishes each
    message exactly once.
    """

    def __init__(self, message: str, errno_: int | None, published: int):
        super().__init__(message, errno_)
        self.published = published


_STORAGE_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "I/O error",
    errno.ESTALE: "stale file handle (network filesystem)",
}


def storage_error(action: str, path: str | os.PathLike[str], exc: OSError) -> StorageError:
    """Turn an ``OSError`` into a one-line :class:`StorageError` naming what failed."""
    reason = _STORAGE_REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    return StorageError(f"cannot {action} {os.fspath(path)}: {reason}", exc.errno)
