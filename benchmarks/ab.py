#!/usr/bin/env python3
"""Two ddmq source trees side by side: did a change make ddmq faster?

    python3 -m benchmarks.ab --b /path/to/patched/checkout            # A is this working tree
    python3 -m benchmarks.ab --a /old/tree --b /new/tree --reps 7 --fs tmpfs,disk

Each tree is copied and installed (non-editable) into its own venv under the
benchmark cache. Then, alternating A and B within every repetition:
W1 (publish n, consume + ack all) with durable off and on, W3 (one publisher,
4 consumers, durable off), and the command
line (``python -c pass``, ``ddmq-notify``, ``ddmq publish``, ``ddmq
consume``); plus system calls per message (strace, not timed). Prints a
Markdown table with medians and the ratio B/A (below 1: B is faster).
Writes nothing into the repository.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import provision, workloads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", default=str(provision.REPO), help="tree A (default: this working tree)")
    ap.add_argument("--b", required=True, help="tree B")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cli-reps", type=int, default=15)
    ap.add_argument("--fs", default="tmpfs")
    provision.add_cache_option(ap)
    args = ap.parse_args()
    cache = provision.enter_cache(args.cache)
    venvs, described = {}, {}
    for side, tree in (("A", args.a), ("B", args.b)):
        venv = provision.ensure_venv(cache, f"ab-{side.lower()}")
        described[side] = provision.install_working_tree(cache, venv, Path(tree).resolve())["describe"] or tree
        venvs[side] = venv
    dirs = {"disk": cache / f"ab-queues-{os.getpid()}", "tmpfs": Path("/dev/shm") / f"ddmq-ab-{os.getpid()}"}
    rows: dict[tuple, dict[str, list[float]]] = {}
    try:
        for fs in args.fs.split(","):
            for rep in range(args.reps):
                for durable in (False, True):
                    n = args.n if not (fs == "disk" and durable) else min(args.n, 500)
                    sides = ["A", "B"] if (rep + durable) % 2 == 0 else ["B", "A"]
                    for side in sides:
                        root = dirs[fs] / f"{side}{rep}{int(durable)}"
                        os.sync()
                        out = provision.run_command([str(venvs[side] / "bin" / "python"), str(workloads.WORKER), "w1", "--impl",
                                         "ddmq", "--root", str(root), "--n", str(n),
                                         *(["--durable"] if durable else [])], capture_output=True)
                        shutil.rmtree(root, ignore_errors=True)
                        r = __import__("json").loads(out.stdout)
                        assert r["ok"], r
                        key = (f"W1 durable:{str(durable).lower()} (µs/msg)", fs)
                        rows.setdefault(key, {"A": [], "B": []})[side].append(r["total_s"] / n * 1e6)
                        key = (f"W1 durable:{str(durable).lower()} CPU (µs/msg)", fs)
                        rows.setdefault(key, {"A": [], "B": []})[side].append(r["cpu_s"] / n * 1e6)
                # W3: one publisher, 4 consumers
                for side in (["A", "B"] if rep % 2 == 0 else ["B", "A"]):
                    root = dirs[fs] / f"{side}{rep}w3"
                    os.sync()
                    out = provision.run_command([str(venvs[side] / "bin" / "python"), str(workloads.WORKER), "w3", "--impl", "ddmq",
                                     "--root", str(root), "--n", str(args.n), "--consumers", "4"], capture_output=True)
                    shutil.rmtree(root, ignore_errors=True)
                    r = __import__("json").loads(out.stdout)
                    assert r["ok"], r
                    rows.setdefault(("W3 durable:false, 4 consumers (µs/msg)", fs),
                                    {"A": [], "B": []})[side].append(r["total_s"] / args.n * 1e6)
                provision.log(f"{fs} rep {rep} done")
            # command line
            root = dirs[fs] / "cli"
            for side in ("A", "B"):
                py = str(venvs[side] / "bin" / "python")
                provision.run_command([py, "-c", "import sys; from ddmq import Broker; b = Broker(sys.argv[1], create=True)\n"
                           "b.create_queue('cli')\nfor i in range(int(sys.argv[2])): b.publish('cli', 'm')",
                           str(root / side), str(args.cli_reps + 5)])
            cmds = {}
            for side in ("A", "B"):
                b = venvs[side] / "bin"
                env = {**os.environ, "DDMQ_ROOT": str(root / side)}
                cmds[("python -c pass", side)] = ([str(b / "python"), "-c", "pass"], env)
                cmds[("ddmq-notify", side)] = ([str(b / "ddmq-notify"), "note", "hi"], env)
                cmds[("ddmq publish", side)] = ([str(b / "ddmq"), "publish", "cli", "hi"], env)
                cmds[("ddmq consume", side)] = ([str(b / "ddmq"), "consume", "cli"], env)
            for cmd, env in cmds.values():
                provision.run_command(cmd, check=False, env=env, capture_output=True)
            for rep in range(args.cli_reps):
                keys = list(cmds)
                random.Random(rep).shuffle(keys)
                for key in keys:
                    cmd, env = cmds[key]
                    t0 = time.perf_counter()
                    provision.run_command(cmd, check=False, env=env, capture_output=True)
                    rows.setdefault((f"{key[0]} (ms)", fs), {"A": [], "B": []})[key[1]].append(
                        (time.perf_counter() - t0) * 1e3)
            shutil.rmtree(root, ignore_errors=True)
        # system calls per message
        if shutil.which("strace"):
            for durable in (False, True):
                for side in ("A", "B"):
                    counts = {}
                    for size in (0, 1000):
                        root = dirs["tmpfs"] / f"sys{side}{size}"
                        summary = Path(tempfile.mkstemp(suffix=".strace")[1])
                        provision.run_command(["strace", "-f", "-c", "-o", str(summary), str(venvs[side] / "bin" / "python"),
                                   str(workloads.WORKER), "w1", "--impl", "ddmq", "--root", str(root), "--n", str(size),
                                   *(["--durable"] if durable else [])], capture_output=True)
                        counts[size] = workloads.parse_strace_summary(summary.read_text())
                        summary.unlink()
                        shutil.rmtree(root, ignore_errors=True)
                    per = sum(counts[1000].values()) - sum(counts[0].values())
                    fs_per = sum(v - counts[0].get(k, 0) for k, v in counts[1000].items() if k in workloads.FS_SYSCALLS)
                    rows.setdefault((f"W1 durable:{str(durable).lower()} syscalls/msg", "tmpfs"),
                                    {"A": [], "B": []})[side].append(per / 1000)
                    rows.setdefault((f"W1 durable:{str(durable).lower()} fs syscalls/msg", "tmpfs"),
                                    {"A": [], "B": []})[side].append(fs_per / 1000)
    finally:
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)
    print(f"A: {described['A']}  ({args.a})\nB: {described['B']}  ({args.b})\n")
    print("| measure | fs | A | B | B / A |")
    print("|---|---|---:|---:|---:|")
    for (name, fs), v in rows.items():
        a, b = statistics.median(v["A"]), statistics.median(v["B"])
        print(f"| {name} | {fs} | {a:,.1f} | {b:,.1f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
