#!/usr/bin/env python3
"""Where ddmq's time goes: profiles to read beside the numbers of ``benchmarks.run``.

    python3 -m benchmarks.hotspots [--n 5000] [--dir /dev/shm]

Installs the working tree and pyinstrument into their own venv under the
benchmark cache (``venv-prof``), then prints:

1. the system calls of one publish + consume + ack, in order (strace);
2. a pyinstrument tree and a cProfile table of W1 (publish n, then consume
   and ack them all, durable:false);
3. ``python -X importtime`` of what ``ddmq-notify`` and ``ddmq`` import,
   the slowest modules by their own time (median of 5 runs).

Nothing is written to the repository.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks import provision

ONE_MESSAGE = r"""
import os, sys
from ddmq import Broker
b = Broker(sys.argv[1], create=True)
b.create_queue("q", durable=sys.argv[2] == "1")
for i in range(3):  # warm: settings cached, listing made, clock checked
    b.publish("q", f"warm {i}")
for m in b.consume("q", n=3):
    b.ack(m)
os.path.exists("/ddmq-profile-start")  # markers in the trace (ENOENT)
b.publish("q", "hello")
m = b.consume("q")[0]
b.ack(m)
os.path.exists("/ddmq-profile-end")
"""

W1 = r"""
import sys, time
from ddmq import Broker
root, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
b = Broker(root, create=True)
b.create_queue("q", durable=False)
def w1():
    for i in range(n):
        b.publish("q", f"message {i:07d}")
    while True:
        got = b.consume("q")
        if not got:
            break
        b.ack(got[0])
if mode == "pyinstrument":
    from pyinstrument import Profiler
    p = Profiler(interval=0.0005)
    p.start(); w1(); p.stop()
    print(p.output_text(unicode=True, color=False, show_all=False))
else:
    import cProfile, pstats
    pr = cProfile.Profile(); pr.enable(); w1(); pr.disable()
    st = pstats.Stats(pr, stream=sys.stdout)
    st.sort_stats("tottime").print_stats(25)
"""


def section(title: str) -> None:
    print(f"\n{'=' * 78}\n{title}\n{'=' * 78}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dir", default="/dev/shm")
    provision.add_cache_option(ap)
    args = ap.parse_args()
    cache = provision.enter_cache(args.cache)
    venv = provision.ensure_venv(cache, "prof")
    version = provision.install_working_tree(cache, venv)
    py = str(venv / "bin" / "python")
    print(f"ddmq working tree at {version['describe']}"
          + (" + uncommitted changes" if version["uncommitted_changes_in_package"] else ""))
    work = Path(tempfile.mkdtemp(prefix="ddmq-prof-", dir=args.dir))
    try:
        if shutil.which("strace"):
            for durable in ("0", "1"):
                section(f"1. System calls of one publish + consume + ack (durable:{'true' if durable == '1' else 'false'})")
                root = work / f"one{durable}"
                out = subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file,%desc,getrandom", py, "-c",
                                      ONE_MESSAGE, str(root), durable],
                                     capture_output=True, text=True)
                lines = out.stderr.splitlines()
                start = next((i for i, line in enumerate(lines) if "ddmq-profile-start" in line), None)
                end = next((i for i, line in enumerate(lines) if "ddmq-profile-end" in line), None)
                if start is None or end is None:
                    print(out.stderr[-2000:])
                    continue
                shown = [re.sub(str(root), "ROOT", line) for line in lines[start + 1:end]]
                for line in shown:
                    print("  " + (line if len(line) < 160 else line[:157] + "..."))
                print(f"  -- {len(shown)} system calls")
        section(f"2a. pyinstrument: W1, {args.n} messages, durable:false, on {args.dir}")
        subprocess.run([py, "-c", W1, str(work / "w1a"), str(args.n), "pyinstrument"])
        section(f"2b. cProfile: W1, {args.n} messages, durable:false (tottime; cProfile inflates call-heavy code)")
        subprocess.run([py, "-c", W1, str(work / "w1b"), str(args.n), "cprofile"])
        for target in ("ddmq_hpc.notify", "ddmq.entry", "ddmq.cli"):
            section(f"3. python -X importtime -c 'import {target}' (median of 5, µs)")
            runs = []
            for _ in range(5):
                out = subprocess.run([py, "-X", "importtime", "-c", f"import {target}"],
                                     capture_output=True, text=True)
                mods = {}
                for line in out.stderr.splitlines():
                    m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
                    if m:
                        mods[m.group(4)] = (int(m.group(1)), int(m.group(2)), len(m.group(3)))
                runs.append(mods)
            names = runs[0].keys()
            med = {k: (statistics.median(r[k][0] for r in runs if k in r),
                       statistics.median(r[k][1] for r in runs if k in r), runs[0][k][2]) for k in names}
            total = med[target][1]
            print(f"  total {total / 1000:.1f} ms for {len(med)} modules")
            print("  slowest by own time:")
            for k, (own, cum, _depth) in sorted(med.items(), key=lambda kv: -kv[1][0])[:15]:
                print(f"    {own / 1000:7.1f} ms own {cum / 1000:7.1f} ms cumulative  {k}")
            print("  imported directly by ddmq / ddmq_hpc modules (cumulative):")
            for k, (_own, cum, depth) in med.items():
                if depth <= 4 and cum > 1000:
                    print(f"    {cum / 1000:7.1f} ms  {'  ' * (depth // 2)}{k}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
