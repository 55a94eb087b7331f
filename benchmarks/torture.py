"""Torture run: everything that can go wrong, at random, for minutes; then an account.

    python -m benchmarks.torture --minutes 5 [--seed 1] [--two-mounts] [--faults 0.01] [--no-hostile]

Publishers, consumers with short leases and cleaners run at once (on two sshfs
mounts of one directory with --two-mounts, as root), while the conductor, with a
fixed seed: SIGKILLs workers at random instants and starts new ones, runs some
workers with a clock 2 minutes ahead or behind (libfaketime, if installed),
has workers' writes, fsyncs, renames and unlinks fail at random (ENOSPC, EIO,
EDQUOT, ESTALE), and drops hostile files into the queue (corrupt, empty,
binary, non-UTF-8, foreign names, a symlink out of the root). A hostile
co-tenant (--hostile, the default) also swaps tmp/, ready/, work/ or dead/ for
a link to a directory outside the root for a moment (the real one waits under
a hidden name in the queue and comes back), replaces the queue's ddmq.yaml
for a moment by a FIFO, a YAML alias bomb or a link to /dev/zero, and plants
FIFOs and links to /dev/zero named like messages in ready/ and work/. At the
end the queue is recovered the way a cluster would (leases expire, clean,
drain) and every message is accounted for. Exits non-zero if anything was
lost, delivered twice after an ack, or held by two consumers at once, if
anything outside the root changed, or if a worker hung or crashed. Not part
of the test suite: run it by hand from the checkout (its workers are the
tests' ``tests.support.workers``, run from there too), results go to
docs/reliability.md.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from ddmq import Broker
from tests.support.hostile import READY_LIKE, TMP_LIKE, WORK_LIKE, alias_bomb, changes, payload, plant_tree, snapshot
from tests.support.queuefiles import ready_path
from tests.support.swarm import held_twice, read_log, worker

HARNESS = Path(__file__).resolve().parent.parent / "tests" / "harness"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
LEASE = 0.5
HOSTILE = {
    "corrupt": b"{not json",
    "empty": b"",
    "binary": bytes(range(256)),
    "latin1": "caf\xe9".encode("latin-1"),
    "wrongid": json.dumps({"format": 1, "id": "0" * 32}).encode(),
}
STATE_DIRS = ("tmp", "ready", "work", "dead")
# What the hostile co-tenant does (--hostile): swaps that are undone after WINDOW
# seconds, and files planted for good (dead-lettered like the other hostile files).
CO_TENANT = ("link-as-state-dir", "fifo-as-settings", "alias-bomb-as-settings", "dev-zero-as-settings",
             "fifo-in-ready", "fifo-in-work", "dev-zero-link-in-ready", "dev-zero-link-in-work")
# Two attacks succeed on sshfs whatever a client does, and are not tried in a
# --two-mounts run (docs/protocol.md, Threat model, "sshfs"): sshfs sends
# paths, not directory handles, to the SFTP server, which follows a link
# planted in place of a state directory; and that server opens a FIFO renamed
# over a file the client has cached as regular the blocking way, hanging the
# mount for every program. New FIFOs are tried: the kernel knows them as FIFOs
# and opens them itself, without blocking.
SSHFS_CO_TENANT = tuple(kind for kind in CO_TENANT if kind not in ("fifo-as-settings", "link-as-state-dir"))
WINDOW = (0.1, 0.6)
# A directory tree outside the root, which nothing may change: the targets of
# every planted link. Old files (housekeeping's prey), names ddmq's grammar
# could have made, and a mode-700 subdirectory (plant_tree makes every directory 0700).
OUTSIDE = {
    "target.txt": b"must survive",
    "notes.txt": b"someone's notes\n",
    READY_LIKE: payload(READY_LIKE.split(".")[2], "q", "someone's file named like a message"),
    WORK_LIKE: b"someone's file named like an expired lease",
    TMP_LIKE: b"someone's file named like a temporary file",
    "old": {"data.csv": b"1,2,3\n", "deeper": {"thesis.tex": b"\\documentclass{article}\n"}},
    "private": {"secret.txt": b"private\n", "old": {"data.csv": b"4,5,6\n"}},
}
# A worker that used no CPU for STALL_SPARE seconds is never picked for a random
# kill (a kill would hide a hang); after STALL_REPLACE seconds another worker of
# its kind is started beside it. Every worker must exit by itself within
# STOP_DEADLINE of the stop (publishers: be running, not stalled, when killed
# at the stop); those that do not are the clients that hung.
STALL_SPARE, STALL_REPLACE, STOP_DEADLINE = 1.0, 5.0, 60.0
# Address space of a worker: a client that reads /dev/zero or expands an alias
# bomb fails with MemoryError (a crash, counted) instead of exhausting the host.
WORKER_MEMORY = 1 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))


def _cpu_ticks(pid: int) -> int | None:
    """User + system CPU time of a process, in clock ticks (None if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of proc(5)
    except (OSError, ValueError, IndexError):
        return None


class Conductor:
    def __init__(self, roots: list[Path], truth: Path, logs: Path, rng: random.Random, faults: float, skew: bool):
        self.roots, self.truth, self.logs, self.rng, self.faults = roots, truth, logs, rng, faults
        self.skew = skew and LIBFAKETIME.exists()
        self.stop = logs / "stop"
        self.procs: dict[str, subprocess.Popen] = {}
        self.killed: set[str] = set()
        self.started = 0
        self.skewed: set[str] = set()
        self.hostile: list[str] = []
        # The hostile co-tenant's world: a tree outside the root, its snapshot,
        # the swaps to undo (key -> (when, how)), and what was done.
        self.outside = logs.parent / "outside"
        plant_tree(self.outside, OUTSIDE)
        self.outside_before = snapshot(self.outside)
        self.windows: dict[str, tuple[float, Callable[[], None]]] = {}
        self.co_tenant: collections.Counter = collections.Counter()
        self.co_tenant_files = 0
        # Workers watched for hangs and crashes: CPU ticks and when they last changed.
        self.cpu: dict[str, tuple[int | None, float]] = {}
        self.replaced: set[str] = set()
        self.hung: list[str] = []
        self.crashed: dict[str, int] = {}

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
            # Not FAKETIME_DONT_FAKE_MONOTONIC: with it, libfaketime 0.9.10 makes Python's
            # time.sleep (an absolute clock_nanosleep on CLOCK_MONOTONIC) fail with EINVAL,
            # and skewed workers died at their first sleep. A constant shift of the
            # monotonic clock changes nothing for a process that only measures intervals.
            env.update(LD_PRELOAD=str(LIBFAKETIME), FAKETIME=self.rng.choice(["+120", "-120"]), NO_FAKE_STAT="1")
            self.skewed.add(name)
        with open(self.logs / f"{name}.err", "wb") as err:  # a crash's traceback, for the account
            self.procs[name] = subprocess.Popen(cmd, env=env, stderr=err, preexec_fn=_limit_memory)
        self.cpu[name] = (None, time.monotonic())

    def stalled_for(self, name: str) -> float:
        """Seconds since the worker last used CPU (0 if unknown)."""
        ticks, since = self.cpu.get(name, (None, 0.0))
        return 0.0 if ticks is None else time.monotonic() - since

    def watch(self) -> None:
        """Note which workers use CPU; restart crashed ones; start a helper beside a stalled one."""
        now = time.monotonic()
        for name, proc in list(self.procs.items()):
            code = proc.poll()
            if code is not None:  # workers run until the stop (or a kill): this one crashed
                self.crashed[name] = code
                del self.procs[name]
                self.start(name[0])
                continue
            ticks = _cpu_ticks(proc.pid)
            if ticks is None or ticks != self.cpu[name][0]:
                self.cpu[name] = (ticks, now)
            elif self.stalled_for(name) > STALL_REPLACE and name not in self.replaced:
                self.replaced.add(name)
                self.start(name[0])

    def kill_one(self) -> None:
        alive = sorted(n for n in self.procs if self.stalled_for(n) < STALL_SPARE)
        if not alive:
            return
        name = self.rng.choice(alive)
        self.procs.pop(name).send_signal(signal.SIGKILL)
        self.killed.add(name)
        self.start(name[0])

    def state_dir(self, state: str) -> Path:
        """Where files planted in ``state`` go: the real directory, also while a link stands in its place."""
        q = self.truth / "q"
        return q / f".{state}.aside" if state in self.windows else q / state

    def plant_hostile(self) -> None:
        """A file no ddmq client wrote, in ready/ or work/, named to look like a message or not."""
        kind = self.rng.choice(sorted(HOSTILE) + ["foreign", "symlink"])
        n = len(self.hostile)
        if kind == "foreign":
            path = self.state_dir(self.rng.choice(["ready", "work"])) / f"notes-{n}.txt"
            path.write_text("someone's file")
        elif kind == "symlink":  # in its slot of ready/'s tree, where a consumer claims it
            path = ready_path(self.state_dir("ready"), f"000000.{time.time_ns():020d}.{n:032x}.0.msg")
            path.symlink_to(self.outside / "target.txt")
        else:
            path = ready_path(self.state_dir("ready"), f"000000.{time.time_ns():020d}.{n:032x}.0.msg")
            path.write_bytes(HOSTILE[kind])
        self.hostile.append(path.name)

    # -------------------------------------------------------- the hostile co-tenant
    def plant_co_tenant(self) -> None:
        """One thing a hostile member of the queue's group can do (see CO_TENANT)."""
        kind = self.rng.choice(CO_TENANT if len(self.roots) == 1 else SSHFS_CO_TENANT)
        q = self.truth / "q"
        token = f"{len(self.hostile):012x}"
        if kind == "link-as-state-dir":
            state = self.rng.choice(STATE_DIRS)
            if state in self.windows:
                return
            target = self.outside / self.rng.choice(["", "private", "old"])
            aside = q / f".{state}.aside"
            os.rename(q / state, aside)  # kept in the queue, so no message is lost
            os.symlink(target, q / state)

            def undo(state: str = state, aside: Path = aside) -> None:
                if (q / state).is_symlink():
                    os.unlink(q / state)
                os.rename(aside, q / state)  # fails loudly if anything took its place
            self.window(state, undo)
        elif kind.endswith("-as-settings"):
            if "settings" in self.windows:
                return
            settings = q / "ddmq.yaml"
            original, mode = settings.read_bytes(), stat.S_IMODE(settings.stat().st_mode)
            planted = q / f".hostile.{token}"
            if kind == "fifo-as-settings":
                os.mkfifo(planted, 0o666)
            elif kind == "dev-zero-as-settings":
                os.symlink("/dev/zero", planted)
            else:
                planted.write_text(alias_bomb()[0])
            os.rename(planted, settings)  # atomically: the queue never lacks its marker

            def undo(original: bytes = original, mode: int = mode) -> None:
                restored = q / f".restored.{token}"
                restored.write_bytes(original)
                restored.chmod(mode)
                os.rename(restored, settings)
            self.window("settings", undo)
        else:
            state = "ready" if kind.endswith("-in-ready") else "work"
            now = time.time_ns()
            name = (f"000000.{now:020d}.{token:0>32}.0.msg" if state == "ready" else
                    self.rng.choice([f"000000.{now:020d}.{token:0>32}.0.{0:020d}.{token}.msg",
                                     f"notes-{token}.fifo"]))
            path = ready_path(self.state_dir(state), name) if state == "ready" else self.state_dir(state) / name
            if kind.startswith("fifo"):
                os.mkfifo(path, 0o666)
            else:
                os.symlink("/dev/zero", path)
            self.hostile.append(name)
            self.co_tenant_files += 1
        self.co_tenant[kind] += 1

    def window(self, key: str, undo: Callable[[], None]) -> None:
        self.windows[key] = (time.monotonic() + self.rng.uniform(*WINDOW), undo)

    def close_windows(self, everything: bool = False) -> None:
        now = time.monotonic()
        for key, (due, undo) in list(self.windows.items()):
            if everything or now >= due:
                undo()
                del self.windows[key]

    def finish(self) -> None:
        self.close_windows(everything=True)
        for name, proc in self.procs.items():
            if name[0] == "p":
                if proc.poll() is not None:
                    self.crashed[name] = proc.returncode
                elif self.stalled_for(name) > STALL_REPLACE:
                    self.hung.append(name)  # blocked for seconds: it would never have finished
                proc.send_signal(signal.SIGKILL)
                self.killed.add(name)
        self.stop.touch()
        deadline = time.monotonic() + STOP_DEADLINE
        for name, proc in self.procs.items():
            try:
                code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.hung.append(name)
                proc.send_signal(signal.SIGKILL)
                try:  # a process stuck on a dead network mount may not even die: report it, do not hang too
                    proc.wait(timeout=STOP_DEADLINE)
                except subprocess.TimeoutExpired:
                    pass
                self.killed.add(name)
                continue
            if name[0] != "p" and code != 0:
                self.crashed[name] = code

    def outside_touched(self) -> list[str]:
        return changes(self.outside_before, snapshot(self.outside))

    def crash_lines(self) -> list[str]:
        lines = []
        for name in sorted(self.crashed)[:5]:
            err = (self.logs / f"{name}.err").read_text(errors="replace").strip().splitlines()
            lines.append(f"{name}: exit {self.crashed[name]}: {err[-1] if err else ''}")
        return lines


def run(args: argparse.Namespace, roots: list[Path], truth: Path, logs: Path) -> dict:
    rng = random.Random(args.seed)
    Broker(roots[0], create=True).create_queue("q", clean_interval=0.2, requeue_limit=1000)
    c = Conductor(roots, truth, logs, rng, args.faults, skew=not args.no_skew)
    for kind in "ppcccx":
        c.start(kind)
    faults_planted = 0
    deadline = time.monotonic() + args.minutes * 60
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.05, 0.5))
            c.watch()
            c.close_windows()
            roll = rng.random()
            if roll < 0.6:
                c.kill_one()
            elif roll < 0.7:
                c.plant_hostile()
                faults_planted += 1
            elif roll < 0.8 and args.hostile:
                c.plant_co_tenant()
    finally:
        c.finish()  # undoes every swap first: no message may stay in a directory set aside

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
        path = truth / "q" / "dead" / name
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):  # a planted FIFO or link: never opened
                continue
            dead_bodies.append(json.loads(path.read_bytes())["message"])
        except (ValueError, KeyError, TypeError, OSError):
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
    outside = c.outside_touched()
    return {
        "seconds": args.minutes * 60, "seed": args.seed, "two_mounts": len(roots) > 1,
        "published": len(confirmed),
        "publish_failures_reported": sum(e[0] == "fail" for e in events),
        "delivered_and_acked": len(acked),
        "redelivered": sum(1 for n in claims.values() if n > 1),
        "drained_at_end": len(drained),
        "dead_lettered_messages": len(ours),
        "hostile_files_planted": faults_planted,
        "hostile_co_tenant": args.hostile,
        "co_tenant_actions": dict(sorted(c.co_tenant.items())),
        "co_tenant_files_planted": c.co_tenant_files,
        "dead_letters_by_reason": dict(dead_reasons),
        "processes_started": c.started, "processes_killed": len(c.killed),
        "processes_with_clock_off_2_minutes": len(c.skewed),
        "faults_injected_rate": args.faults,
        "fault_errors_seen_by_workers": sum(e[0] == "fault" for e in events),
        "symlink_target_intact": (c.outside / "target.txt").read_bytes() == OUTSIDE["target.txt"],
        "files_touched_outside_root": len(outside),
        "clients_hung": len(c.hung),
        "clients_crashed": len(c.crashed),
        "lost": len(lost), "delivered_twice_after_ack": len(twice),
        "held_by_two_at_once": len(held_twice(plain)),
        "held_by_two_at_once_involving_a_skewed_clock": len(held_twice(events)) - len(held_twice(plain)),
        "examples": {"lost": sorted(lost)[:5], "twice": twice[:5], "outside": outside[:5],
                     "hung": c.hung[:5], "crashed": c.crash_lines()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", type=float, default=0.01, help="probability of each I/O call failing")
    parser.add_argument("--two-mounts", action="store_true", help="two sshfs mounts (needs root, sshfs)")
    parser.add_argument("--no-skew", action="store_true", help="no workers with a shifted clock")
    parser.add_argument("--hostile", action=argparse.BooleanOptionalAction, default=True,
                        help="a hostile co-tenant: links for state directories, FIFO, alias-bomb and "
                             "/dev/zero settings, FIFOs and /dev/zero links as messages (default: on)")
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
    print(f"files touched outside the root: {report['files_touched_outside_root']}, "
          f"messages lost: {report['lost']}, clients that hung: {report['clients_hung']}"
          f" (and crashed: {report['clients_crashed']})")
    bad = (report["lost"] or report["delivered_twice_after_ack"] or report["held_by_two_at_once"]
           or report["files_touched_outside_root"] or report["clients_hung"] or report["clients_crashed"])
    sys.exit(1 if bad or not report["symlink_target_intact"] else 0)


if __name__ == "__main__":
    main()
