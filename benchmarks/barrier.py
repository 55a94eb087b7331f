"""Which durability barrier a batch publish should use: each candidate timed on real filesystems.

    python3 -m benchmarks.barrier DIR [DIR ...] [--batch 100] [--rounds 20]

A durable batch publish writes N payloads in ``tmp/``, makes them durable,
renames each into ``ready/`` and syncs ``ready/`` once. Only the barrier in
the middle differs between the candidates, so each round does exactly that
sequence (the same system calls ddmq makes, without ddmq around them) and
the candidates take turns within every round, on each DIR given (e.g. an
ext4 and an XFS image, loop-mounted). Prints one table per directory and,
with ``--json``, writes the raw figures.

Candidates:
  none           no barrier at all, no directory sync (durable: false)
  fsync-each     write+fsync per file as it is written (the single-message path, N times)
  fdatasync-each the same with fdatasync
  fsync-after    write all, then fsync each in a row (a journal commit may cover the later ones)
  sfr+fsync      write all, sync_file_range(WRITE) on each (start every writeback), then fsync each
  syncfs         write all, one syncfs(2) on the tmp/ directory's descriptor
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable

from ddmq.atomic import syncfs_fd

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
SYNC_FILE_RANGE_WRITE = 2


def sync_file_range_write(fd: int) -> None:
    if _libc.sync_file_range(fd, ctypes.c_longlong(0), ctypes.c_longlong(0), SYNC_FILE_RANGE_WRITE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _write_all(tmp: int, names: list[str], body: bytes, keep_open: bool,
               sync: Callable[[int], None] | None = None) -> list[int]:
    """Create and write each file in ``tmp``; ``sync`` (if given) on each right after its write."""
    fds = []
    for name in names:
        fd = os.open(name, FLAGS, 0o644, dir_fd=tmp)
        os.write(fd, body)
        if sync is not None:
            sync(fd)
        if keep_open:
            fds.append(fd)
        else:
            os.close(fd)
    return fds


def _reopen_sync(tmp: int, names: list[str], sync: Callable[[int], None]) -> None:
    for name in names:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=tmp)
        try:
            sync(fd)
        finally:
            os.close(fd)


def barrier_none(tmp: int, names: list[str], body: bytes) -> None:
    _write_all(tmp, names, body, keep_open=False)


def barrier_each(sync: Callable[[int], None]) -> Callable[[int, list[str], bytes], None]:
    def run(tmp: int, names: list[str], body: bytes) -> None:
        _write_all(tmp, names, body, keep_open=False, sync=sync)
    return run


def barrier_fsync_after(tmp: int, names: list[str], body: bytes) -> None:
    _write_all(tmp, names, body, keep_open=False)
    _reopen_sync(tmp, names, os.fsync)


def barrier_sfr_fsync(tmp: int, names: list[str], body: bytes) -> None:
    fds = _write_all(tmp, names, body, keep_open=True)
    for fd in fds:
        sync_file_range_write(fd)
    for fd in fds:
        os.fsync(fd)
        os.close(fd)


def barrier_syncfs(tmp: int, names: list[str], body: bytes) -> None:
    _write_all(tmp, names, body, keep_open=False)
    syncfs_fd(tmp)


CANDIDATES: dict[str, Callable[[int, list[str], bytes], None]] = {
    "none": barrier_none,
    "fsync-each": barrier_each(os.fsync),
    "fdatasync-each": barrier_each(os.fdatasync),
    "fsync-after": barrier_fsync_after,
    "sfr+fsync": barrier_sfr_fsync,
    "syncfs": barrier_syncfs,
}


def one_round(base: Path, label: str, batch: int, serial: int, body: bytes) -> float:
    """Seconds for one batch: payloads written and made durable, renamed into ready/, ready/ synced."""
    tmp = os.open(base / "tmp", os.O_RDONLY | os.O_DIRECTORY)
    ready = os.open(base / "ready", os.O_RDONLY | os.O_DIRECTORY)
    names = [f"{serial:06d}.{i:05d}" for i in range(batch)]
    try:
        t0 = time.perf_counter()
        CANDIDATES[label](tmp, [n + ".tmp" for n in names], body)
        for name in names:
            os.rename(name + ".tmp", name + ".msg", src_dir_fd=tmp, dst_dir_fd=ready)
        if label != "none":
            os.fsync(ready)
        elapsed = time.perf_counter() - t0
        for name in names:  # consumed: the directory stays small between rounds
            os.unlink(name + ".msg", dir_fd=ready)
        return elapsed
    finally:
        os.close(tmp)
        os.close(ready)


def measure(directory: Path, batch: int, rounds: int) -> dict[str, dict[str, float]]:
    base = directory / f"ddmq-barrier-{os.getpid()}"
    for d in ("tmp", "ready"):
        (base / d).mkdir(parents=True, exist_ok=True)
    body = json.dumps({"format": 1, "message": "x" * 300}).encode()
    times: dict[str, list[float]] = {label: [] for label in CANDIDATES}
    try:
        for r in range(rounds):
            labels = list(CANDIDATES)
            shift = r % len(labels)
            for k, label in enumerate(labels[shift:] + labels[:shift]):
                times[label].append(one_round(base, label, batch, r * len(labels) + k, body))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return {label: {"median_s": statistics.median(ts), "us_per_message": statistics.median(ts) / batch * 1e6,
                    "min_s": min(ts), "max_s": max(ts)} for label, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    args = ap.parse_args()
    results = {}
    for d in args.dirs:
        res = measure(d, args.batch, args.rounds)
        results[str(d)] = res
        none = res["none"]["median_s"]
        print(f"\n{d}: batch of {args.batch}, median of {args.rounds} rounds, load {os.getloadavg()[0]:.2f}")
        print(f"{'barrier':16} {'ms/batch':>9} {'us/msg':>8} {'x none':>7}")
        for label, r in res.items():
            print(f"{label:16} {r['median_s'] * 1e3:9.2f} {r['us_per_message']:8.1f} {r['median_s'] / none:7.2f}")
    if args.json:
        args.json.write_text(json.dumps({"batch": args.batch, "rounds": args.rounds, "kernel": os.uname().release,
                                         "loadavg": os.getloadavg(), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
