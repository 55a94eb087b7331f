"""Start-up time of the command-line tools, which run at the end of every batch job.

Measures paired runs -- each round runs every command once, in turn, so a
busy machine slows them alike -- of ``python -c pass`` (the floor),
``python -c 'import click'``, ``ddmq publish``, ``ddmq consume`` and
``ddmq-notify``, with the queue on tmpfs (/dev/shm) so that the filesystem
does not count, and prints each command's median and its ratio to the floor.
``--compare DIR`` adds the same commands from another installation's bin
directory (another checkout's venv), measured in the same rounds.

    python -m benchmarks.startup [--rounds 40] [--compare /work/main/.venv/bin]

Standard library only; imports nothing from the other benchmark modules.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Sequence


def commands(bin_dir: str, root: str, label: str) -> dict[str, list[str]]:
    """The ddmq commands of one installation, on the queue ``q`` under ``root``."""
    python = os.path.join(bin_dir, "python")
    return {
        f"{label}ddmq publish": [os.path.join(bin_dir, "ddmq"), "--root", root, "publish", "q", "event"],
        f"{label}ddmq consume": [os.path.join(bin_dir, "ddmq"), "--root", root, "consume", "q"],
        f"{label}ddmq-notify": [os.path.join(bin_dir, "ddmq-notify"), "q", "event", "--root", root],
        f"{label}python -c 'import click'": [python, "-c", "import click"],
    }


def measure(argvs: dict[str, list[str]], rounds: int) -> dict[str, list[float]]:
    """Seconds per run of each command, ``rounds`` paired rounds (one warm-up round not counted)."""
    times: dict[str, list[float]] = {name: [] for name in argvs}
    for round_ in range(rounds + 1):
        for name, argv in argvs.items():
            start = time.perf_counter()
            done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            elapsed = time.perf_counter() - start
            if done.returncode not in (0, 3):  # 3: consume found the queue empty
                raise SystemExit(f"{name} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
            if round_:
                times[name].append(elapsed)
    return times


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40, help="paired rounds (default 40)")
    parser.add_argument("--bin", default=os.path.dirname(sys.executable),
                        help="bin directory of the installation measured (default: this Python's)")
    parser.add_argument("--compare", metavar="BIN", help="another installation's bin directory, measured alongside")
    args = parser.parse_args(argv)
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    work = tempfile.mkdtemp(prefix="ddmq-startup-", dir=base)
    try:
        argvs = {"python -c pass": [os.path.join(args.bin, "python"), "-c", "pass"]}
        installations = [("", args.bin)] + ([("before: ", args.compare)] if args.compare else [])
        for label, bin_dir in installations:
            root = os.path.join(work, label.strip(": ") or "after")
            subprocess.run([os.path.join(bin_dir, "ddmq"), "--root", root, "create", "q"], check=True)
            argvs.update(commands(bin_dir, root, label))
        times = measure(argvs, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = statistics.median(times["python -c pass"])
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; {args.rounds} paired rounds, queue on {base or 'the temp dir'}")
    print(f"{'command':40} {'median ms':>10} {'x pass':>7}")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"{name:40} {median * 1000:10.1f} {median / floor:7.2f}")


if __name__ == "__main__":
    main()
