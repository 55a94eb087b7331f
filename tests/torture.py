"""Torture run: everything that can go wrong, at random, for minutes; then an account.

    python tests/torture.py --minutes 5 [--seed 1] [--two-mounts] [--faults 0.01]

Publishers, consumers with short leases and cleaners run at once (on two sshfs
mounts of one directory with --two-mounts, as root), while the conductor, with a
fixed seed: SIGKILLs workers at random instants and starts new ones, runs some
workers with a clock 2 minutes ahead or behind (libfaketime, if installed),
has workers' writes, fsyncs, renames and unlinks fail at random (ENOSPC, EIO,
EDQUOT, ESTALE), and drops hostile files into the queue (corrupt, empty,
binary, non-UTF-8, foreign names, a symlink out of the root). At the end the
queue is recovered the way a cluster would (leases expire, clean, drain) and
every message is accounted for. Exits non-zero if anything was lost,
delivered twice after an ack, or held by two consumers at once. Not part of
the test suite: run it by hand, results go to docs/reliability.md.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ddmq import Broker  # noqa: E402
from swarm import held_twice, read_log, worker  # noqa: E402

HARNESS = Path(__file__).resolve().parent / "harness"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
LEASE = 0.5
HOSTILE = {
    "corrupt": b"{not json",
    "empty": b"",
    "binary": bytes(range(256)),
    "latin1": "caf\xe9".encode("latin-1"),
    "wrongid": json.dumps({"format": 1, "id": "0" * 32}).encode(),
}


class Conductor:
    def __init__(self, roots: list[Path], logs: Path, rng: random.Random, faults: float, skew: bool):
        self.roots, self.logs, self.rng, self.faults = roots, logs, rng, faults
        self.skew = skew and LIBFAKETIME.exists()
        self.stop = logs / "stop"
        self.procs: dict[str, subprocess.Popen] = {}
        self.killed: set[str] = set()
        self.started = 0
        self.skewed: set[str] = set()
        self.hostile: list[str] = []
        self.outside = logs / "outside-target"
        self.outside.write_text("must survive")

    def start(self, kind: str) -> None:
        name = f"{kind}{self.started}"
        self.started += 1
        root = self.rng.choice(self.roots)
        fault = ["--faults", str(self.faults)] if self.faults else []
        if kind == "p":
            cmd = worker(*fault, "publish", root, "q", name, 10**9, self.logs / f"{name}.log",
                         "--priorities", "1,5,9", "--pause", 0.01,
                         *(["--durable"] if self.rng.random() < 0.3 else []))
        elif kind == "c":
            cmd = worker(*fault, "consume", root, "q", self.logs / f"{name}.log", self.stop,
                         "--lease", LEASE, "--hold", self.rng.choice([0, 0, 0.01, 0.3, 0.7]),
                         "--batch", self.rng.choice([1, 2, 5]))
        else:
            cmd = worker(*fault, "clean", root, "q", self.stop)
        env = dict(os.environ)
        if self.skew and kind != "p" and self.rng.random() < 0.3:
            env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME=self.rng.choice(["+120", "-120"]),
                       NO_FAKE_STAT="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
            self.skewed.add(name)
        self.procs[name] = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)

    def kill_one(self) -> None:
        name = self.rng.choice(sorted(self.procs))
        self.procs.pop(name).send_signal(signal.SIGKILL)
        self.killed.add(name)
        self.start(name[0])

    def plant_hostile(self) -> None:
        """A file no ddmq client wrote, in ready/ or work/, named to look like a message or not."""
        q = self.roots[0] / "q"
        kind = self.rng.choice(sorted(HOSTILE) + ["foreign", "symlink"])
        n = len(self.hostile)
        if kind == "foreign":
            path = q / self.rng.choice(["ready", "work"]) / f"notes-{n}.txt"
            path.write_text("someone's file")
        elif kind == "symlink":
            path = q / "ready" / f"000000.{time.time_ns():020d}.{n:032x}.0.msg"
            path.symlink_to(self.outside)
        else:
            path = q / "ready" / f"000000.{time.time_ns():020d}.{n:032x}.0.msg"
            path.write_bytes(HOSTILE[kind])
        self.hostile.append(path.name)

    def finish(self) -> None:
        for name, proc in self.procs.items():
            if name[0] == "p":
                proc.send_signal(signal.SIGKILL)
                self.killed.add(name)
        self.stop.touch()
        for proc in self.procs.values():
            proc.wait()


def run(args: argparse.Namespace, roots: list[Path], truth: Path, logs: Path) -> dict:
    rng = random.Random(args.seed)
    Broker(roots[0], create=True).create_queue("q", clean_interval=0.2, requeue_limit=1000)
    c = Conductor(roots, logs, rng, args.faults, skew=not args.no_skew)
    for kind in "ppcccx":
        c.start(kind)
    faults_planted = 0
    deadline = time.monotonic() + args.minutes * 60
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.05, 0.5))
        roll = rng.random()
        if roll < 0.6:
            c.kill_one()
        elif roll < 0.7:
            c.plant_hostile()
            faults_planted += 1
    c.finish()

    # Recovery, as on a cluster: leases expire, someone cleans, someone drains.
    time.sleep(LEASE + 2.5)  # + clock tolerance: a lease written 2 s ahead is live until then
    b = Broker(truth)
    b.clean("q")
    drained = [m.message for m in b.consume("q", n=10**9, ack=True)]
    dead_bodies, dead_reasons = [], collections.Counter()
    for name in os.listdir(truth / "q" / "dead"):
        if name.endswith(".reason"):
            continue
        dead_reasons[name.split(".")[2]] += 1
        try:
            dead_bodies.append(json.loads((truth / "q" / "dead" / name).read_bytes())["message"])
        except (ValueError, KeyError, OSError, IsADirectoryError):
            pass

    events = [line for log in sorted(logs.glob("*.log")) for line in read_log(log)]
    by_log = {log.stem: read_log(log) for log in logs.glob("*.log")}
    # Holds of messages ever touched by a skewed consumer are judged apart:
    # its lease clock is the server's time as read from file timestamps,
    # exact only to CLOCK_TOLERANCE plus their granularity (1 s on sshfs).
    skewed_bodies = {e[1] for name in c.skewed for e in by_log.get(name, []) if e[0] == "claim"}
    plain = [e for e in events if e[1] not in skewed_bodies]
    confirmed = {e[1] for e in events if e[0] == "ok"}
    acked = collections.Counter(e[1] for e in events if e[0] == "ack")
    claims = collections.Counter(e[1] for e in events if e[0] == "claim")
    claimed_by_killed = {e[1] for name in c.killed for e in by_log.get(name, []) if e[0] == "claim"}
    ours = [x for x in dead_bodies if isinstance(x, str) and ":" in x]
    remaining = collections.Counter(drained + ours)
    lost = confirmed - set(acked) - claimed_by_killed - set(remaining)
    twice = [b for b, n in (acked + remaining).items() if n > 1]
    return {
        "seconds": args.minutes * 60, "seed": args.seed, "two_mounts": len(roots) > 1,
        "published": len(confirmed),
        "publish_failures_reported": sum(e[0] == "fail" for e in events),
        "delivered_and_acked": len(acked),
        "redelivered": sum(1 for n in claims.values() if n > 1),
        "drained_at_end": len(drained),
        "dead_lettered_messages": len(ours),
        "hostile_files_planted": faults_planted,
        "dead_letters_by_reason": dict(dead_reasons),
        "processes_started": c.started, "processes_killed": len(c.killed),
        "processes_with_clock_off_2_minutes": len(c.skewed),
        "faults_injected_rate": args.faults,
        "fault_errors_seen_by_workers": sum(e[0] == "fault" for e in events),
        "symlink_target_intact": c.outside.read_text() == "must survive",
        "lost": len(lost), "delivered_twice_after_ack": len(twice),
        "held_by_two_at_once": len(held_twice(plain)),
        "held_by_two_at_once_involving_a_skewed_clock": len(held_twice(events)) - len(held_twice(plain)),
        "examples": {"lost": sorted(lost)[:5], "twice": twice[:5]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", type=float, default=0.01, help="probability of each I/O call failing")
    parser.add_argument("--two-mounts", action="store_true", help="two sshfs mounts (needs root, sshfs)")
    parser.add_argument("--no-skew", action="store_true", help="no workers with a shifted clock")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ddmq-torture-") as tmp:
        base = Path(tmp)
        logs = base / "logs"
        logs.mkdir()
        if args.two_mounts:
            subprocess.run([str(HARNESS / "mount-shared.sh"), str(base / "mnt")], check=True,
                           stdout=subprocess.DEVNULL)
            try:
                roots = [base / "mnt" / "mnt-a" / "root", base / "mnt" / "mnt-b" / "root"]
                report = run(args, roots, base / "mnt" / "export" / "root", logs)
            finally:
                subprocess.run([str(HARNESS / "umount-shared.sh"), str(base / "mnt")],
                               env={**os.environ, "PURGE": "1"}, stdout=subprocess.DEVNULL)
        else:
            report = run(args, [base / "root"], base / "root", logs)
    print(json.dumps(report, indent=2))
    bad = report["lost"] or report["delivered_twice_after_ack"] or report["held_by_two_at_once"]
    sys.exit(1 if bad or not report["symlink_target_intact"] else 0)


if __name__ == "__main__":
    main()
