"""Retrying the transient errors of network filesystems, and the backoff every wait in ddmq_hpc uses.

On NFS and Lustre an operation can fail once with ESTALE (a file handle
invalidated by another client), EIO (a server failover) or EAGAIN, and
succeed when repeated. Jobs must not lose their completion event to such a
blip, nor hang on one: attempts are bounded and spaced with backoff.

The same backoff paces ``ddmq-wait``'s polls: many jobs started together
must not all hit the shared metadata server at the same instants.
"""
from __future__ import annotations

import errno
import os
import time

from ddmq import StorageError

TYPE_CHECKING = False  # typing is for annotations only: it slows every job's start-up
if TYPE_CHECKING:
    from typing import Callable, Iterator, TypeVar

    T = TypeVar("T")

TRANSIENT = frozenset({errno.ESTALE, errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.EINTR})


def _jitter() -> float:
    """A factor in [0.9, 1.1): spreads the retries or polls of many jobs started together
    (from os.urandom: the random module costs start-up time for one number)."""
    return 0.9 + 0.2 * int.from_bytes(os.urandom(2), "big") / 65536


def backoff(first: float, cap: float = float("inf")) -> Iterator[float]:
    """Pauses in seconds: ``first``, then doubling up to ``cap``, each with jitter of +-10%."""
    delay = first
    while True:
        yield delay * _jitter()
        delay = min(delay * 2, cap)


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (StorageError, OSError)) and getattr(exc, "errno", None) in TRANSIENT


def retry(action: Callable[[], T], attempts: int = 5, first_delay: float = 0.2,
          deadline: float | None = None) -> T:
    """Run ``action``; on a transient error wait (:func:`backoff`) and run it again.

    Gives up after ``attempts`` tries or when the next wait would pass
    ``deadline`` (a ``time.monotonic()`` value), re-raising the last error.
    """
    pauses = backoff(first_delay)
    for _ in range(attempts - 1):
        try:
            return action()
        except (StorageError, OSError) as exc:
            pause = next(pauses)
            if not is_transient(exc) or (deadline is not None and time.monotonic() + pause > deadline):
                raise
        time.sleep(pause)
    return action()
