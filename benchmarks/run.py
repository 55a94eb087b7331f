"""The ddmq benchmark suite: ddmq (this working tree) against ddmq 0.9.14, RabbitMQ and dirq.

    python3 -m benchmarks.run            # full run, ~25 min on 2 cores; writes docs/performance.md
    python3 -m benchmarks.run --quick    # ~2-3 min; prints the tables, writes only the JSON

(from the checkout). This module is the command line and the order of the
phases; what is measured on is set up in ``provision``, the measurements are
``workloads``, and the tables, targets and docs/performance.md are ``report``.

Run by hand, never by the test suite. Everything it needs it installs
itself, outside the repository: one virtual environment per implementation
under the cache directory (``--cache``, default ``$DDMQ_BENCH_CACHE`` or
``~/.cache/ddmq-bench``), and, as root, the Debian packages rabbitmq-server,
strace and hyperfine. RabbitMQ is started by the suite on 127.0.0.1 with its
own node name, ports, data and log directories, and stopped at the end.

Each comparison runs side by side in the same run: the implementations take
turns within every repetition (the order rotates), medians are reported, and
ratios are the medians of the per-repetition ratios. Everything runs on the
local disk as it is mounted, on an ext4 image with a journal that the suite
makes and loop-mounts on that disk (as root), and on tmpfs (/dev/shm);
W1 and W3 also run across two sshfs mounts of one directory (as root;
``--fs sshfs-nocache`` adds the same with sshfs's caches off), ddmq beside
dirq, with their SFTP round trips per message. Results: ``benchmarks/results/
{quick,full}-TIMESTAMP.json`` (raw, every run) and, for full runs,
``docs/performance.md`` (everything above its "Analysis" heading is
regenerated; the analysis below it is kept).
"""
from __future__ import annotations

import argparse
import atexit
import datetime as dt
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from benchmarks import report
from benchmarks.provision import (FILESYSTEMS, OPTIONAL_FILESYSTEMS, SSHFS_OPTIONS, Ext4Image, Rabbit, SshfsPair,
                                  add_cache_option, enter_cache, ensure_apt, ensure_venv, install_working_tree, log,
                                  machine_info, pkg_version)
from benchmarks.workloads import PROFILES, Suite


def on_signal(signum, frame):
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (~2-3 min)")
    add_cache_option(ap)
    ap.add_argument("--tmpfs", default="/dev/shm", help="tmpfs directory (default /dev/shm)")
    ap.add_argument("--only", default="", help="comma-separated subset: w1,w2,w3,w4,w5 (default: all)")
    ap.add_argument("--fs", default=",".join(FILESYSTEMS),
                    help="comma-separated: " + ",".join(FILESYSTEMS + OPTIONAL_FILESYSTEMS)
                    + " (default all but sshfs-nocache); sshfs runs only W1 and W3, across two mounts")
    ap.add_argument("--no-rabbit", action="store_true", help="leave RabbitMQ out")
    ap.add_argument("--doc", action=argparse.BooleanOptionalAction, default=None,
                    help="write docs/performance.md (default: only for a full run of everything)")
    ap.add_argument("--render", metavar="RESULTS.json",
                    help="measure nothing: redo the summary, targets and Markdown of a results file")
    args = ap.parse_args()
    if args.render:
        report.rerender(Path(args.render), args.doc)
        return
    mode = "quick" if args.quick else "full"
    prof = dict(PROFILES[mode])
    only = set(filter(None, args.only.split(","))) or {"w1", "w2", "w3", "w4", "w5"}
    fss = [f for f in args.fs.split(",") if f]
    cache = enter_cache(args.cache)
    tmpfs = Path(args.tmpfs) / f"ddmq-bench-{os.getpid()}"
    dirs = {"disk": cache / f"queues-{os.getpid()}", "tmpfs": tmpfs}
    started = time.time()
    image, notes = None, []
    if "ext4-journal" in fss:
        image = Ext4Image(cache)
        try:
            dirs["ext4-journal"] = image.mount() / "queues"
        except (OSError, subprocess.CalledProcessError) as exc:
            image.remove()
            image = None
            fss.remove("ext4-journal")
            notes.append(f"ext4-journal left out: {exc}")
            log(notes[-1])

    tools = ensure_apt({"/usr/lib/rabbitmq/bin/rabbitmq-server": "rabbitmq-server", "strace": "strace",
                        "hyperfine": "hyperfine"})
    use_rabbit = tools["/usr/lib/rabbitmq/bin/rabbitmq-server"] and not args.no_rabbit
    venvs = {name: ensure_venv(cache, name) for name in ("ddmq", "old", "dirq", "rabbit")}
    log("installing the working tree into " + str(venvs["ddmq"]))
    ddmq_version = install_working_tree(cache, venvs["ddmq"])
    pairs: list[SshfsPair] = []
    shared: dict[str, SshfsPair] = {}  # fs -> its two mounts
    signal.signal(signal.SIGTERM, on_signal)
    for fs in [f for f in fss if f in SSHFS_OPTIONS]:
        pair = SshfsPair(cache, fs)
        pairs.append(pair)
        atexit.register(pair.remove)  # whatever fails before the measurements' own cleanup (remove is idempotent)
        try:
            dirs[fs] = pair.mount()[0]
            shared[fs] = pair
        except OSError as exc:
            fss.remove(fs)
            notes.append(f"{fs} left out: {exc}")
            log(notes[-1])
    machine = machine_info(dirs)
    suite = Suite(args, prof, venvs, dirs, tools, shared)
    suite.notes.extend(notes)
    versions = {"ddmq": ddmq_version, "old": pkg_version(venvs["old"], "ddmq"),
                "dirq": pkg_version(venvs["dirq"], "dirq"), "pika": pkg_version(venvs["rabbit"], "pika"),
                "rabbitmq": Rabbit(cache).version() if use_rabbit else "not run"}
    if not use_rabbit:
        suite.notes.append("RabbitMQ was not run")

    interrupted = False
    try:
        suite.w4_old_cli()
        for fs in fss:
            log(f"== {fs}: {dirs[fs]}" + (f" and {shared[fs].b}" if fs in shared else ""))
            if only & {"w1", "w2"}:
                suite.op_costs(fs)  # before RabbitMQ starts: nothing else of the suite running
            if use_rabbit and only & {"w1", "w2", "w3"} and fs not in shared:
                suite.rabbit = Rabbit(dirs[fs] / "rabbitmq")
                log("starting RabbitMQ")
                suite.rabbit.start()
            try:
                if "w1" in only:
                    suite.w1(fs)
                if "w2" in only and fs not in shared:
                    suite.w2(fs)
                if "w3" in only:
                    suite.w3(fs)
            finally:
                if suite.rabbit is not None:
                    log("stopping RabbitMQ")
                    suite.rabbit.stop()
                    suite.rabbit = None
            if fs in shared:  # a queue across two mounts: W1 and W3 (ddmq beside dirq) and W1's round trips
                if "w1" in only:
                    suite.shared_round_trips(fs)
                continue
            if "w1" in only and fs == "tmpfs":
                suite.w1_syscalls(fs)
            if "w4" in only:
                suite.w4(fs)
                if mode == "full":
                    suite.hyperfine(fs)
            if "w5" in only and fs == "disk":
                suite.w5_latency(fs)
                suite.w5_strace(fs)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: writing what was measured, not the doc")
    finally:
        if suite.rabbit is not None:
            suite.rabbit.stop()
        for fs, d in dirs.items():
            if fs not in shared:
                shutil.rmtree(d, ignore_errors=True)
        if image is not None:
            image.remove()
        for pair in pairs:
            pair.remove()  # unmounts, stops its sshd and deletes the export

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    data = {
        "mode": mode, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "elapsed_s": time.time() - started, "profile": prof, "machine": machine, "versions": versions,
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3], "only": sorted(only), "fs": fss,
        "results_file": f"{mode}-{stamp}.json", "notes": suite.notes, "runs": suite.runs,
        "opcosts": suite.opcosts, "interrupted": interrupted,
    }
    write_doc = args.doc if args.doc is not None else (mode == "full" and only == {"w1", "w2", "w3", "w4", "w5"})
    results = report.save(data, write_doc and not interrupted)
    log(f"wrote {results} ({data['elapsed_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
