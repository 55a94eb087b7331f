"""Cross-node latency: from ``ddmq-notify`` on one sshfs mount to ``ddmq-wait`` returning on the other.

    sudo python -m benchmarks.crossmount [--samples 10] [--cache default|none|both] [--backlog]

Mounts one exported directory twice with ``tests/harness/mount-shared.sh``
(two SFTP sessions: two "nodes", each with its own client caches), starts a
``ddmq-wait`` on mount B, lets it poll long enough to have cached the queue's
listing, runs ``ddmq-notify`` on mount A and times until the waiter exits.
Prints the median and the maximum per cache setting. With ``--backlog`` the
queue already holds a message the waiter is not waiting for, so the
directories of ``ready/``'s tree the new message goes into already exist
(and are cached by B's client): the case a probe of ``ready/`` alone would
not refresh. Needs root, sshd and
sshfs (``tests/harness/install-system-deps.sh``). Writes nothing into the
repository.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.provision import HARNESS, SSHFS_OPTIONS

BIN = Path(sys.executable).parent
# --cache's names for the suite's two sshfs filesystems' options.
CACHES = {"default": SSHFS_OPTIONS["sshfs"], "none": SSHFS_OPTIONS["sshfs-nocache"]}


def sample(a: Path, b: Path, i: int, backlog: bool) -> float:
    """One publish on A seen by a waiter on B: seconds from the start of ddmq-notify to the waiter's exit."""
    queue = f"events{i}"
    subprocess.run([str(BIN / "ddmq"), "--root", str(a), "create", queue], check=True, stdout=subprocess.DEVNULL)
    if backlog:
        subprocess.run([str(BIN / "ddmq-notify"), queue, "--root", str(a), "--field", "job_id=6"], check=True)
    waiter = subprocess.Popen([str(BIN / "ddmq-wait"), queue, "--root", str(b), "--field", "job_id=7",
                               "--interval", "0.2", "--max-interval", "1", "--timeout", "120"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # several polls: B's client has cached the queue's (empty) listing
    start = time.monotonic()
    subprocess.run([str(BIN / "ddmq-notify"), queue, "--root", str(a), "--field", "job_id=7"], check=True)
    _, err = waiter.communicate(timeout=150)
    if waiter.returncode != 0:
        raise SystemExit(f"ddmq-wait failed: {err}")
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--cache", choices=["default", "none", "both"], default="both")
    ap.add_argument("--backlog", action="store_true", help="a message the waiter does not want is already queued")
    args = ap.parse_args()
    if os.geteuid() != 0 or shutil.which("sshfs") is None:
        raise SystemExit("needs root and sshfs (tests/harness/install-system-deps.sh)")
    for cache in ["default", "none"] if args.cache == "both" else [args.cache]:
        state = Path(tempfile.mkdtemp(prefix=f"ddmq-crossmount-{cache}-"))
        env = {**os.environ, "SSHFS_OPTS": CACHES[cache]}
        subprocess.run([str(HARNESS / "mount-shared.sh"), str(state)], env=env, check=True, stdout=subprocess.DEVNULL)
        try:
            a, b = state / "mnt-a" / "root", state / "mnt-b" / "root"
            subprocess.run([str(BIN / "ddmq"), "--root", str(a), "create", "warmup"], check=True,
                           stdout=subprocess.DEVNULL)
            times = [sample(a, b, i, args.backlog) for i in range(args.samples)]
        finally:
            subprocess.run([str(HARNESS / "umount-shared.sh"), str(state)], env={**os.environ, "PURGE": "1"},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"sshfs {cache} cache{', backlog' if args.backlog else ''}: {len(times)} samples, median {statistics.median(times):.2f} s, "
              f"max {max(times):.2f} s  ({', '.join(f'{t:.2f}' for t in times)})")


if __name__ == "__main__":
    main()
