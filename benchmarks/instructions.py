#!/usr/bin/env python3
"""User-space instructions per message and per command: a measure that does not drift with the load.

    python3 -m benchmarks.instructions [--tree DIR ...] [--fs-dir /dev/shm]

Wall times on a shared VM move by 10-30 % from one minute to the next, which
hides a 5 % change. The number of instructions a process executes does not:
this runs W1 (``worker.py``: publish n, then consume and ack them all,
durable:false) under valgrind's cachegrind at two sizes and prints
(instructions at n2 - instructions at n1) / (n2 - n1), for ddmq trees (the
working tree by default; ``--tree`` for others, e.g. a ``git worktree`` of an
older commit), dirq and the floor + read, from the venvs ``provision`` sets up;
then the instructions of one run of each W4 command (``ddmq-notify``, ``ddmq
publish``, ``ddmq consume``) against ``python -c pass``, for each tree.

It counts only what runs in the process, not in the kernel: a system call
saved does not show, and dirq makes 22 file-system calls a message where ddmq
and the floor + read make 10. Use it to compare Python-level changes; wall
time (``benchmarks.run``, ``benchmarks.ab``) stays the measure of the targets. Nothing is
written to the repository.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks import provision, workloads


def counted(command: list[str], env: dict[str, str]) -> int:
    """Instructions cachegrind counts for one run of ``command``."""
    done = provision.run_command(["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
                      *command], env=env, cwd=tempfile.gettempdir(), capture_output=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if not found:
        raise SystemExit(f"no instruction count from cachegrind:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def instructions(python: Path, impl: str, n: int, fs_dir: str, env: dict[str, str]) -> int:
    """Instructions for one W1 run of ``n`` messages."""
    root = tempfile.mkdtemp(prefix="ddmq-instr-", dir=fs_dir)
    shutil.rmtree(root)  # the worker makes it
    try:
        return counted([str(python), str(workloads.WORKER), "w1", "--impl", impl, "--root", root, "--n", str(n)], env)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def command_line(venv: Path, fs_dir: str, env: dict[str, str]) -> dict[str, int]:
    """Instructions of one run of each W4 command, and of ``python -c pass``, in ``venv``."""
    python, bin_dir = str(venv / "bin" / "python"), venv / "bin"
    root = tempfile.mkdtemp(prefix="ddmq-instr-cli-", dir=fs_dir)
    try:
        provision.run_command([python, "-c", "import sys; from ddmq import Broker; b = Broker(sys.argv[1], create=True)\n"
                   "for i in range(3): b.publish('cli', 'm', create=True)", root], env=env)
        return {
            "python -c pass": counted([python, "-c", "pass"], env),
            "ddmq-notify": counted([python, str(bin_dir / "ddmq-notify"), "--root", root, "cli", "hi"], env),
            "ddmq publish": counted([python, str(bin_dir / "ddmq"), "--root", root, "publish", "cli", "hi"], env),
            "ddmq consume": counted([python, str(bin_dir / "ddmq"), "--root", root, "consume", "cli"], env),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def per_message(python: Path, impl: str, n1: int, n2: int, fs_dir: str, env: dict[str, str]) -> float:
    return (instructions(python, impl, n2, fs_dir, env) - instructions(python, impl, n1, fs_dir, env)) / (n2 - n1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", default=[], help="a ddmq source tree (repeatable; default: this one)")
    ap.add_argument("--n1", type=int, default=500)
    ap.add_argument("--n2", type=int, default=2500)
    ap.add_argument("--fs-dir", default="/dev/shm", help="where the queues go (default /dev/shm)")
    provision.add_cache_option(ap)
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        provision.ensure_apt({"/usr/bin/valgrind": "valgrind"})
    cache = provision.enter_cache(args.cache)
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONHASHSEED": "0"}
    rows, commands = [], []
    for tree in args.tree or [str(provision.REPO)]:
        venv = provision.ensure_venv(cache, "instr")
        described = (provision.install_working_tree(cache, venv, Path(tree).resolve())["describe"] or tree)[:60]
        rows.append((f"ddmq {described}", per_message(venv / "bin" / "python", "ddmq", args.n1, args.n2,
                                                      args.fs_dir, env)))
        commands.append((f"ddmq {described}", command_line(venv, args.fs_dir, env)))
    dirq = provision.ensure_venv(cache, "dirq")
    rows.append(("dirq", per_message(dirq / "bin" / "python", "dirq", args.n1, args.n2, args.fs_dir, env)))
    rows.append(("floor + read", per_message(Path(sys.executable), "floor-read", args.n1, args.n2, args.fs_dir,
                                             env)))
    print("\n| W1, durable:false | user-space instructions per message |\n|---|---:|")
    for label, count in rows:
        print(f"| {label} | {count / 1000:,.1f} k |")
    print("\n| W4, one run | " + " | ".join(commands[0][1]) + " |\n|---|" + "---:|" * len(commands[0][1]))
    for label, counts in commands:
        base = counts["python -c pass"]
        print(f"| {label} | " + " | ".join(f"{c / 1e6:,.1f} M ({c / base:.2f}×)" for c in counts.values()) + " |")


if __name__ == "__main__":
    main()
