"""The lease clock: now, on the file server's clock when this host's is off.

Leases are written by one host and judged by others. A node whose clock is
minutes off would otherwise requeue other clients' live leases early (clock
ahead) or keep expired ones (clock behind). So the offset to the file server
is measured now and then, from the mtime the server stamps on a new file
(NFS, Lustre, GPFS and sshfs all do), and when it exceeds CLOCK_TOLERANCE
lease times are taken on the server's clock. Within the tolerance (NTP,
coarse file timestamps) the local clock is used as it is.
"""
from __future__ import annotations

import time
import warnings

from . import atomic
from .layout import clock_probe_name
from .log import logger

CLOCK_TOLERANCE = 2.0
# The offset is measured at most once per CLOCK_CHECK_EVERY seconds.
CLOCK_CHECK_EVERY = 60.0


class LeaseClock:
    """Now in ns for lease expiries, corrected by the measured offset to the file server."""

    def __init__(self) -> None:
        self._offset = 0
        self._checked: float | None = None

    def now(self, probe_dir: atomic.Dir) -> int:
        """Now, in ns since the epoch; ``probe_dir`` is where a probe file may be made if a check is due."""
        checked = time.monotonic()
        if self._checked is None or checked - self._checked > CLOCK_CHECK_EVERY:
            self._offset = server_offset(probe_dir)
            self._checked = checked
        return time.time_ns() + self._offset


def measure_offset(directory: atomic.Dir) -> int | None:
    """File server's clock minus ours (ns), from the mtime it gives a new file; None if no probe can be made."""
    before = time.time_ns()
    made = atomic.probe(directory, clock_probe_name())
    if made is None:
        return None
    stamped = made.st_mtime_ns
    return stamped - (before + time.time_ns()) // 2


def server_offset(probe_dir: atomic.Dir) -> int:
    """The offset to correct lease times by: :func:`measure_offset`, or 0 within tolerance.

    If the probe cannot be made (read-only, full), the local clock is used: a
    lease decision must not fail for want of it.
    """
    offset = measure_offset(probe_dir)
    if offset is None or abs(offset) <= CLOCK_TOLERANCE * 1e9:
        return 0
    logger().warning("clock correction: this host's clock differs from the file server's (%s) by %+.1f s; "
                     "leases use the server's time", probe_dir.path, -offset / 1e9)
    warnings.warn(
        f"ddmq: this host's clock differs from the file server's by {-offset / 1e9:+.1f} s; "
        "using the server's time for leases (fix NTP on this host)",
        RuntimeWarning, stacklevel=6,
    )
    return offset
