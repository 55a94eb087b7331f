"""Durable batch publishing: ddmq's group commit against RabbitMQ persistent with batched confirms.

    python3 -m benchmarks.batch [--n 5000] [--reps 5] [--batch 100] [--cache DIR]

W1 (one process publishes n messages, then consumes and acks them all), with
the publishing done in batches of ``--batch``:

  ddmq durable, batch       Broker.publish_many: one barrier (syncfs) per batch
  ddmq durable:false, batch the same without any barrier: the non-durable cost
  RabbitMQ persistent       durable queue, persistent messages, the whole batch
                            published, then every confirm awaited (prefetch 100,
                            manual acks), as a client using confirms would
  ddmq durable, one each    Broker.publish per message (an fsync each), for scale

on an ext4 image with a journal and on an XFS image, both loop-mounted on the
cache directory's disk (root only; mkfs.xfs from xfsprogs), RabbitMQ's data on
the same image. The cases take turns within every repetition (the order
rotates); medians are reported, and the ratios are medians of the
per-repetition ratios. Writes ``benchmarks/results/batch-TIMESTAMP.json`` and
prints the table that docs/performance.md's "Durable batches" section shows.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import time
from pathlib import Path

from benchmarks.barrier import measure as measure_barriers
from benchmarks.provision import (AMQP_PORT, Ext4Image, Rabbit, XfsImage, add_cache_option, enter_cache, ensure_apt,
                                  ensure_venv, install_working_tree, log, run_command)
from benchmarks.report import RESULTS
from benchmarks.workloads import WORKER

DURABLE, NON_DURABLE, RABBIT, ONE_EACH = ("ddmq durable, batch", "ddmq durable:false, batch",
                                          "RabbitMQ persistent, confirms per batch", "ddmq durable, one each")
CASES = {DURABLE: ("ddmq", "ddmq", True, True), NON_DURABLE: ("ddmq", "ddmq", False, True),
         RABBIT: ("rabbit", "rabbit", True, True), ONE_EACH: ("ddmq", "ddmq", True, False)}


def run_case(venvs: dict[str, Path], base: Path, label: str, n: int, batch: int, rabbit: Rabbit | None) -> dict:
    venv, impl, durable, batched = CASES[label]
    root = base / f"r-{time.monotonic_ns()}"
    cmd = [str(venvs[venv] / "bin" / "python"), str(WORKER), "w1", "--impl", impl, "--root", str(root),
           "--n", str(n), "--batch", str(batch if batched else 1), *(["--durable"] if durable else [])]
    if impl == "rabbit":
        cmd += ["--amqp-port", str(AMQP_PORT), "--idle", "2"]
        if rabbit is not None and rabbit.server_pid:
            cmd += ["--server-pid", str(rabbit.server_pid)]
    os.sync()  # no dirty data of the previous run waiting to be written
    try:
        out = run_command(cmd, capture_output=True, timeout=900)
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result.update({"label": label, "n": n, "batch": batch if batched else 1, "loadavg": os.getloadavg()[0],
                   "msgs_per_s": n / result["total_s"], "us_per_msg": result["total_s"] / n * 1e6})
    log(f"  {label:42s} {result['us_per_msg']:8.1f} us/msg  {result['msgs_per_s']:8.0f} msg/s  ok={result['ok']}")
    return result


def paired_ratio(by_rep: dict[int, dict[str, dict]], num: str, den: str, key: str) -> float | None:
    """The median over repetitions of ``num``'s ``key`` divided by ``den``'s in the same repetition."""
    pairs = [rep[num][key] / rep[den][key] for rep in by_rep.values() if num in rep and den in rep]
    return statistics.median(pairs) if pairs else None


def summary(runs: list[dict]) -> dict:
    """Per filesystem: each case's median, and the paired ratios the targets are about."""
    out: dict = {}
    for fs in sorted({r["fs"] for r in runs}):
        mine = [r for r in runs if r["fs"] == fs]
        by_rep: dict[int, dict[str, dict]] = {}
        for r in mine:
            by_rep.setdefault(r["rep"], {})[r["label"]] = r
        cases = {label: {"median_us_per_msg": statistics.median(r["us_per_msg"] for r in mine if r["label"] == label),
                         "median_msgs_per_s": statistics.median(r["msgs_per_s"] for r in mine if r["label"] == label),
                         "all_ok": all(r["ok"] for r in mine if r["label"] == label)}
                 for label in CASES if any(r["label"] == label for r in mine)}

        out[fs] = {"cases": cases,
                   "durable_vs_rabbit_throughput": paired_ratio(by_rep, DURABLE, RABBIT, "msgs_per_s"),
                   "durable_vs_non_durable_cost": paired_ratio(by_rep, DURABLE, NON_DURABLE, "us_per_msg"),
                   "batch_vs_one_each_throughput": paired_ratio(by_rep, DURABLE, ONE_EACH, "msgs_per_s")}
    return out


def table(data: dict) -> str:
    lines = [f"| filesystem | case (W1, n = {data['n']}, batches of {data['batch']}) | µs/msg | msg/s |",
             "|---|---|---:|---:|"]
    for fs, s in data["summary"].items():
        for label, c in s["cases"].items():
            lines.append(f"| {fs} | {label} | {c['median_us_per_msg']:.1f} | {c['median_msgs_per_s']:.0f} |")
    lines += ["", "| filesystem | ddmq durable ÷ RabbitMQ persistent (throughput; target ≥ 2) "
              "| durable ÷ non-durable (cost per message; target ≤ 1.5) | batch ÷ one each (throughput) |",
              "|---|---:|---:|---:|"]
    for fs, s in data["summary"].items():
        cells = [s["durable_vs_rabbit_throughput"], s["durable_vs_non_durable_cost"], s["batch_vs_one_each_throughput"]]
        lines.append(f"| {fs} | " + " | ".join("—" if x is None else f"{x:.2f}" for x in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="messages per run (default 5000)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions (default 5)")
    ap.add_argument("--batch", type=int, default=100, help="messages per batch (default 100)")
    ap.add_argument("--barrier-rounds", type=int, default=20, help="rounds of benchmarks.barrier per filesystem")
    ap.add_argument("--no-rabbit", action="store_true", help="leave RabbitMQ out")
    add_cache_option(ap)
    args = ap.parse_args()
    cache = enter_cache(args.cache)
    tools = ensure_apt({"/usr/lib/rabbitmq/bin/rabbitmq-server": "rabbitmq-server", "mkfs.xfs": "xfsprogs"})
    use_rabbit = tools["/usr/lib/rabbitmq/bin/rabbitmq-server"] and not args.no_rabbit
    venvs = {name: ensure_venv(cache, name) for name in ("ddmq", "rabbit")}
    ddmq_version = install_working_tree(cache, venvs["ddmq"])
    labels = [label for label in CASES if use_rabbit or label != RABBIT]
    runs: list[dict] = []
    barriers: dict = {}
    started = time.time()
    for image in (Ext4Image(cache), XfsImage(cache)):
        fs = image.NAME
        try:
            base = image.mount()
            log(f"{fs}: barrier candidates, batch {args.batch}")
            barriers[fs] = measure_barriers(base, args.batch, args.barrier_rounds)
            rabbit = Rabbit(base / "rabbit") if use_rabbit else None
            if rabbit is not None:
                rabbit.start()
            try:
                for rep in range(args.reps):
                    order = labels[rep % len(labels):] + labels[:rep % len(labels)]
                    log(f"{fs}: repetition {rep + 1} of {args.reps}")
                    for label in order:
                        runs.append({**run_case(venvs, base, label, args.n, args.batch, rabbit), "fs": fs, "rep": rep})
            finally:
                if rabbit is not None:
                    rabbit.stop()
        finally:
            image.remove()
    data = {"kind": "batch", "started": started, "finished": time.time(), "n": args.n, "batch": args.batch,
            "reps": args.reps, "kernel": os.uname().release, "cpus": os.cpu_count(), "ddmq": ddmq_version,
            "rabbitmq": Rabbit(cache).version() if use_rabbit else "not run", "barriers": barriers,
            "runs": runs, "summary": summary(runs)}
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"batch-{stamp}.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(table(data))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
