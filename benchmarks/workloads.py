"""The workloads: what is measured, and how, on the filesystems provisioning made.

W1-W3 run in a fresh process each (``benchmarks/worker.py``, with the
interpreter of the implementation's venv) on a fresh queue; W4 and W5 time
the command-line tools; the filesystem operation costs and the system-call
counts (strace) are measured here too. Every measurement appends one record
to ``Suite.runs``; turning those into tables is the report's job.
"""
from __future__ import annotations

import collections
import json
import os
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.provision import AMQP_PORT, SSHFS_OPTIONS, Rabbit, SshfsPair, log, run_command

WORKER = Path(__file__).resolve().parent / "worker.py"
# dirq dies at a lost lock race between two sshfs mounts (SFTP reports it as EPERM); this is dirq with
# that fixed (worker.DirqLostRaceEperm), run beside it where consumers race across mounts.
DIRQ_EPERM = "dirq, EPERM as lost race"

# Sizes and repetitions. "disk_durable_n" caps the fsync-bound runs on
# block devices (ddmq durable, floor durable, RabbitMQ persistent): one fsync
# costs milliseconds there, and per-message cost is what is compared.
# "shared_*" are W1's and W3's size and repetitions, and the operation costs'
# file count, on a filesystem shared through two sshfs mounts, where every
# system call is a round trip to the server (milliseconds per message).
PROFILES = {
    "full": dict(
        w1_n=5000, w1_reps=5, disk_durable_n=500,
        old_reps=1, old_cap=120.0,
        w2_sizes=(20000, 100000), w2_reps=2, w2_peer_sizes=(20000,), old_w2_n=20000, old_w2_cap=60.0,
        w3_n=5000, w3_reps=5,
        w4_reps=15, w5_samples=8, sys_n=1000, w5_intervals=(0.05, 0.2), w5_strace_s=20.0, w5_backlog=1000,
        ops_n=2000, ops_rounds=3,
        shared_n=2000, shared_reps=5, shared_ops_n=300, shared_trace_n=500,
    ),
    "quick": dict(
        w1_n=1000, w1_reps=2, disk_durable_n=200,
        old_reps=1, old_cap=30.0,
        w2_sizes=(5000,), w2_reps=1, w2_peer_sizes=(), old_w2_n=0, old_w2_cap=0.0,
        w3_n=1000, w3_reps=2,
        w4_reps=5, w5_samples=3, sys_n=200, w5_intervals=(0.05,), w5_strace_s=5.0, w5_backlog=1000,
        ops_n=500, ops_rounds=3,
        shared_n=300, shared_reps=2, shared_ops_n=100, shared_trace_n=100,
    ),
}


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Suite:
    """The workloads of one run, on the directories and venvs provisioned; every result lands in ``runs``."""

    def __init__(self, args, prof: dict, venvs: dict[str, Path], dirs: dict[str, Path], tools: dict,
                 shared: dict[str, SshfsPair] | None = None):
        self.args = args
        self.p = prof
        self.venvs = venvs
        self.dirs = dirs
        # A shared filesystem's two mounts; its queues directory through mount A is also in dirs.
        self.shared = shared or {}
        self.tools = tools
        self.rabbit: Rabbit | None = None
        self.runs: list[dict] = []
        self.opcosts: dict[str, dict] = {}
        self.notes: list[str] = []
        self.seq = 0

    # A case: (label, venv, impl, durable)
    def cases_w1(self, fs: str) -> list[tuple]:
        if fs in self.shared:  # the floor a queue is measured against, ddmq and dirq (compared non-durable)
            return [("floor + read", "ddmq", "floor-read", False), ("ddmq durable:false", "ddmq", "ddmq", False),
                    ("dirq", "dirq", "dirq", False)]
        cases = [
            ("floor", "ddmq", "floor", False),
            ("floor + read", "ddmq", "floor-read", False),  # no durable variant
            ("floor durable", "ddmq", "floor", True),
            ("ddmq durable:false", "ddmq", "ddmq", False),
            ("ddmq durable:true", "ddmq", "ddmq", True),
            ("dirq", "dirq", "dirq", False),
        ]
        if self.rabbit is not None:
            cases += [("RabbitMQ persistent+confirms", "rabbit", "rabbit", True),
                      ("RabbitMQ transient", "rabbit", "rabbit-transient", False)]
        return cases

    def reps(self, fs: str, key: str) -> int:
        return self.p["shared_reps"] if fs in self.shared else self.p[key]

    def fresh_root(self, fs: str) -> Path:
        self.seq += 1
        root = self.dirs[fs] / f"r{self.seq:05d}"
        shutil.rmtree(root, ignore_errors=True)
        return root

    def worker(self, workload: str, fs: str, label: str, venv: str, impl: str, durable: bool, n: int,
               extra: list[str] | None = None, timeout: float = 1800, **meta) -> dict:
        root = self.fresh_root(fs)
        cmd = [str(self.venvs[venv] / "bin" / "python"), str(WORKER), "w3" if workload == "w3" else "w1",
               "--impl", impl,
               "--root", str(root), "--n", str(n), *(["--durable"] if durable else []), *(extra or [])]
        if fs in self.shared:  # the other node: W1 consumes there, half of W3's consumers too
            cmd += ["--root-b", str(self.shared[fs].b / root.name)]
        if impl.startswith("rabbit"):
            cmd += ["--amqp-port", str(AMQP_PORT)]
            if self.rabbit and self.rabbit.server_pid:
                cmd += ["--server-pid", str(self.rabbit.server_pid)]
        os.sync()  # start every run with no dirty data of the previous one waiting to be written
        t0 = time.time()
        try:
            out = run_command(cmd, capture_output=True, timeout=timeout)
            result = json.loads(out.stdout.strip().splitlines()[-1])
        except subprocess.TimeoutExpired:
            result = {"error": f"timed out after {timeout:.0f} s", "ok": False}
        except (subprocess.CalledProcessError, ValueError, IndexError) as exc:
            err = getattr(exc, "stderr", "") or ""
            result = {"error": f"{type(exc).__name__}: {err.strip().splitlines()[-1:] or exc}", "ok": False}
        finally:
            shutil.rmtree(root, ignore_errors=True)
        result.update({"workload": workload, "fs": fs, "label": label, "impl": impl, "durable": durable,
                       "n": n, "started": t0, "loadavg": os.getloadavg()[0], **meta})
        per = result.get("total_s")
        log(f"  {workload} {fs:5s} {label:30s} n={n:<6d} "
            + (f"{per / n * 1e6:9.1f} us/msg ok={result.get('ok')}" if per else f"ERROR {result.get('error')}"))
        self.runs.append(result)
        return result

    # Filesystem operation costs ---------------------------------------------
    def op_costs(self, fs: str) -> None:
        """Cost of each system call of the floor, alone, in this process, in two fresh directories."""
        n, rounds = self.p["shared_ops_n" if fs in self.shared else "ops_n"], self.p["ops_rounds"]
        base = self.dirs[fs]
        base.mkdir(parents=True, exist_ok=True)
        out = {"n": n, "rounds": rounds, "body_bytes": OPCOST_BODY, "dirs": []}
        try:
            for k in (1, 2):
                d = Path(tempfile.mkdtemp(prefix=f"opcosts{k}-", dir=base))
                try:
                    res = measure_opcosts(d, n, rounds)
                finally:
                    shutil.rmtree(d, ignore_errors=True)
                out["dirs"].append(res)
                log(f"  opcosts {fs:5s} dir {k}: " + ", ".join(f"{op} {res['us'][op]:.1f}" for op, _ in OPCOST_OPS)
                    + f" us; create CPU {res['create_cpu_us']:.1f} us (system {res['create_sys_us']:.1f})")
        except OSError as exc:
            self.notes.append(f"filesystem operation costs on {fs} failed: {exc}")
            log(f"  opcosts {fs}: {exc}")
        out["loadavg"] = os.getloadavg()[0]
        self.opcosts[fs] = out

    # W1 + W2 ---------------------------------------------------------------
    def w1(self, fs: str) -> None:
        p = self.p
        cases = self.cases_w1(fs)
        for rep in range(self.reps(fs, "w1_reps")):
            k = rep % len(cases)
            order = cases[k:] + cases[:k]
            if rep % 2:
                order.reverse()
            for label, venv, impl, durable in order:
                self.worker("w1", fs, label, venv, impl, durable, capped_n(p, fs, durable, p["w1_n"]), rep=rep)
        if fs in self.shared:
            return
        # ddmq 0.9.14: quadratic and slow, so fewer repetitions, each bracketed by
        # a ddmq durable:false run so the ratio is still side by side.
        for rep in range(p["old_reps"]):
            self.worker("w1", fs, "ddmq durable:false", "ddmq", "ddmq", False, p["w1_n"], rep=f"old{rep}")
            self.worker("w1", fs, "ddmq 0.9.14", "old", "ddmq014", False, p["w1_n"],
                        extra=["--cap", str(p["old_cap"])], rep=f"old{rep}")
            self.worker("w1", fs, "ddmq durable:false", "ddmq", "ddmq", False, p["w1_n"], rep=f"old{rep}")

    def w2(self, fs: str) -> None:
        p = self.p
        # ddmq at every size; the floor at the smallest and largest (how the filesystem
        # itself scales); peers at the middle size on tmpfs (time budget).
        cases = [("floor", "ddmq", "floor", False, n) for n in (p["w1_n"], max(p["w2_sizes"]))]
        cases += [("ddmq durable:false", "ddmq", "ddmq", False, n) for n in (p["w1_n"], *p["w2_sizes"])]
        if fs == "tmpfs":
            cases += [("dirq", "dirq", "dirq", False, n) for n in p["w2_peer_sizes"]]
            if self.rabbit is not None:
                cases += [("RabbitMQ transient", "rabbit", "rabbit-transient", False, n)
                          for n in p["w2_peer_sizes"]]
        for rep in range(p["w2_reps"]):
            order = cases[::-1] if rep % 2 else cases
            for label, venv, impl, durable, n in order:
                self.worker("w2", fs, label, venv, impl, durable, n, rep=rep)
        if p["old_w2_n"] and fs == "tmpfs":
            self.worker("w2", fs, "ddmq 0.9.14", "old", "ddmq014", False, p["old_w2_n"],
                        extra=["--cap", str(p["old_w2_cap"])], rep=0)

    def w1_syscalls(self, fs: str) -> None:
        """System calls per message of W1, counted with strace -c -f: independent of machine load.

        Each implementation runs at n and at 0 messages (start-up and queue
        creation only); the difference over n is the cost per message.
        """
        if not self.tools.get("strace"):
            self.notes.append("strace missing: W1 system-call counts skipped")
            return
        n = self.p["sys_n"]
        cases = [("floor", "ddmq", "floor", False), ("floor + read", "ddmq", "floor-read", False),
                 ("floor durable", "ddmq", "floor", True),
                 ("ddmq durable:false", "ddmq", "ddmq", False), ("ddmq durable:true", "ddmq", "ddmq", True),
                 ("dirq", "dirq", "dirq", False), ("ddmq 0.9.14", "old", "ddmq014", False)]
        for label, venv, impl, durable in cases:
            counts = {}
            for size in (0, n):
                root = self.fresh_root(fs)
                summary = Path(tempfile.mkstemp(suffix=".strace")[1])
                cmd = ["strace", "-f", "-c", "-o", str(summary), str(self.venvs[venv] / "bin" / "python"),
                       str(WORKER), "w1", "--impl", impl, "--root", str(root), "--n", str(size),
                       *(["--durable"] if durable else [])]
                out = run_command(cmd, check=False, capture_output=True, timeout=900)
                counts[size] = parse_strace_summary(summary.read_text()) if out.returncode == 0 else {}
                summary.unlink(missing_ok=True)
                shutil.rmtree(root, ignore_errors=True)
            per = {k: (counts[n].get(k, 0) - counts[0].get(k, 0)) / n for k in counts[n]}
            per = {k: round(v, 2) for k, v in per.items() if v >= 0.005}
            rec = {"workload": "w1-syscalls", "fs": fs, "label": label, "n": n, "per_msg": per,
                   "total_per_msg": round(sum(per.values()), 2),
                   "fs_per_msg": round(sum(v for k, v in per.items() if k in FS_SYSCALLS), 2)}
            self.runs.append(rec)
            log(f"  w1 syscalls {label:22s} {rec['total_per_msg']:8.1f} per message ({rec['fs_per_msg']} fs)")

    def shared_round_trips(self, fs: str) -> None:
        """Round trips to the file server per message of W1 across two mounts, counted, so independent of load.

        Every request the kernel sends an sshfs process (a read of /dev/fuse)
        that its caches cannot answer becomes an SFTP request to the server
        (a write to its ssh socket) and waits for the reply: on a network
        filesystem the number of those, not the number of system calls, is
        the cost of a message. Both sshfs processes are traced (strace -f
        attaches to all their threads) while W1 runs at n and at 0 messages;
        the client's own system calls are counted too.
        """
        if not self.tools.get("strace"):
            self.notes.append(f"strace missing: round trips on {fs} not counted")
            return
        n = self.p["shared_trace_n"]
        pair = self.shared[fs]
        for label, venv, impl, _durable in self.cases_w1(fs):  # all non-durable on a shared filesystem
            counts: dict[int, dict[str, float]] = {}
            for size in (0, n):
                root = self.fresh_root(fs)
                out = Path(tempfile.mkdtemp(prefix="round-trips-"))
                tracers = {pid: subprocess.Popen(
                    ["strace", "-f", "-qq", "-xx", "-s", "8", "-e", "trace=read,readv,write,writev",
                     "-o", str(out / f"sshfs.{pid}"), "-p", str(pid)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for pid in pair.sshfs_pids()}
                time.sleep(1.0)  # attached to every thread
                cmd = ["strace", "-f", "-c", "-o", str(out / "client"), str(self.venvs[venv] / "bin" / "python"),
                       str(WORKER), "w1", "--impl", impl, "--root", str(root), "--n", str(size),
                       "--root-b", str(pair.b / root.name)]
                done = run_command(cmd, check=False, capture_output=True, timeout=1800)
                for tracer in tracers.values():
                    tracer.send_signal(signal.SIGINT)
                    tracer.wait(60)
                counts[size] = ({**sshfs_requests(out, list(tracers)),
                                 **{f"client {k}": v for k, v in
                                    parse_strace_summary((out / "client").read_text()).items()}}
                                if done.returncode == 0 else {})
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(root, ignore_errors=True)
            per = {k: round((counts[n].get(k, 0) - counts[0].get(k, 0)) / n, 2) for k in counts[n]}
            rec = {"workload": "shared-round-trips", "fs": fs, "label": label, "n": n,
                   "sftp_requests_per_msg": round(per.get("sftp requests A", 0) + per.get("sftp requests B", 0), 2),
                   "fuse_requests_per_msg": round(per.get("fuse requests A", 0) + per.get("fuse requests B", 0), 2),
                   "sftp_by_type_per_msg": sftp_by_type(per),
                   "client_fs_syscalls_per_msg": round(sum(v for k, v in per.items()
                                                           if k.removeprefix("client ") in FS_SYSCALLS
                                                           and k.startswith("client ")), 2),
                   "per_msg": {k: v for k, v in per.items() if abs(v) >= 0.005}, "ok": bool(counts[n])}
            self.runs.append(rec)
            log(f"  round trips {fs} {label:22s} {rec['sftp_requests_per_msg']:6.1f} SFTP requests per message "
                f"({rec['fuse_requests_per_msg']} FUSE requests, {rec['client_fs_syscalls_per_msg']} client fs calls)")

    # W3 ---------------------------------------------------------------------
    def w3(self, fs: str) -> None:
        p = self.p
        cases = [("ddmq durable:false", "ddmq", "ddmq", False), ("ddmq durable:true", "ddmq", "ddmq", True),
                 ("dirq", "dirq", "dirq", False)]
        if fs in self.shared:  # publisher on A, two consumers on A and two on B; compared non-durable
            cases[1] = (DIRQ_EPERM, "dirq", "dirq-eperm", False)
        if self.rabbit is not None:
            cases.append(("RabbitMQ persistent+confirms", "rabbit", "rabbit", True))
        for rep in range(self.reps(fs, "w3_reps")):
            order = cases[rep % len(cases):] + cases[:rep % len(cases)]
            for label, venv, impl, durable in order:
                n = capped_n(p, fs, durable, p["w3_n"])
                self.worker("w3", fs, label, venv, impl, durable, n, extra=["--consumers", "4"], rep=rep)
                if impl == "ddmq" and not durable and fs not in self.shared:  # its W1 twin, in the same round
                    self.worker("w1", fs, "ddmq durable:false (W3 twin)", venv, impl, durable, n, rep=f"w3-{rep}")

    # W4 ---------------------------------------------------------------------
    def w4(self, fs: str) -> None:
        """Wall time per command-line invocation, alternating commands, same interpreter."""
        venv = self.venvs["ddmq"]
        root = self.fresh_root(fs)
        py = str(venv / "bin" / "python")
        env = {**os.environ, "DDMQ_ROOT": str(root)}
        # Fill the queue so every `ddmq consume` finds a message.
        reps = self.p["w4_reps"]
        run_command([py, "-c", "import sys; from ddmq import Broker; b = Broker(sys.argv[1], create=True)\n"
             "b.create_queue('cli')\nfor i in range(int(sys.argv[2])): b.publish('cli', f'm{i}')",
             str(root), str(reps + 10)])
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import ddmq'": [py, "-c", "import ddmq"],
            "ddmq publish": [str(venv / "bin" / "ddmq"), "publish", "cli", "hello"],
            "ddmq consume": [str(venv / "bin" / "ddmq"), "consume", "cli"],
            "ddmq-notify": [str(venv / "bin" / "ddmq-notify"), "note", "hello"],
            "ddmq-notify (job event)": [str(venv / "bin" / "ddmq-notify"), "note", "--status", "0"],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        errors: dict[str, str] = {}
        for cmd in commands.values():  # warm-up (page cache, .pyc)
            run_command(cmd, check=False, env=env, capture_output=True)
        for rep in range(reps):
            names = list(commands)
            random.Random(rep).shuffle(names)
            for name in names:
                t0 = time.perf_counter()
                out = run_command(commands[name], check=False, env=env, capture_output=True)
                times[name].append(time.perf_counter() - t0)
                if out.returncode != 0:
                    errors[name] = f"exit {out.returncode}: {out.stderr.strip()[-300:]}"
        shutil.rmtree(root, ignore_errors=True)
        result = {"workload": "w4", "fs": fs, "times": times, "errors": errors,
                  "loadavg": os.getloadavg()[0]}
        for name in commands:
            log(f"  w4 {fs:5s} {name:28s} {median(times[name]) * 1e3:7.1f} ms")
        self.runs.append(result)

    def w4_old_cli(self) -> None:
        """ddmq 0.9.14's command line as packaged (a finding: it does not start)."""
        venv = self.venvs["old"]
        out = run_command([str(venv / "bin" / "ddmq"), "--help"], check=False, capture_output=True)
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        self.runs.append({"workload": "w4-old-cli", "returncode": out.returncode, "stderr_last_line": last})
        log(f"  w4 ddmq 0.9.14 CLI: exit {out.returncode}: {last}")

    def hyperfine(self, fs: str) -> None:
        """Cross-check of W4 with hyperfine (sequential, not alternating)."""
        if not self.tools.get("hyperfine"):
            return
        venv = self.venvs["ddmq"]
        root = self.fresh_root(fs)
        out_json = Path(tempfile.mkstemp(suffix=".json")[1])
        py = venv / "bin" / "python"
        cmds = [f"{py} -c pass", f"{venv / 'bin' / 'ddmq-notify'} --root {root} note hello",
                f"{venv / 'bin' / 'ddmq'} --root {root} publish -c note2 hello"]
        run_command(["hyperfine", "-N", "--warmup", "3", "--runs", str(self.p["w4_reps"] * 2), "--export-json",
             str(out_json), *cmds], check=False, capture_output=True)
        try:
            data = json.loads(out_json.read_text())
            self.runs.append({"workload": "w4-hyperfine", "fs": fs, "results": [
                {"command": r["command"].replace(str(root), "ROOT").replace(str(venv), "VENV"),
                 "median_s": r["median"], "mean_s": r["mean"], "stddev_s": r["stddev"]} for r in data["results"]]})
        except (OSError, ValueError, KeyError):
            pass
        out_json.unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)

    # W5 ---------------------------------------------------------------------
    def w5_latency(self, fs: str) -> None:
        """From the publish by ddmq-notify to ddmq-wait returning, with a fixed poll interval."""
        venv = self.venvs["ddmq"]
        bin_ = venv / "bin"
        for interval in self.p["w5_intervals"]:
            for i in range(self.p["w5_samples"]):
                root = self.fresh_root(fs)
                run_command([str(bin_ / "ddmq"), "--root", str(root), "create", "ev"], capture_output=True)
                waiter = subprocess.Popen(
                    [str(bin_ / "ddmq-wait"), "ev", "--root", str(root), "--match", "go", "--format", "json",
                     "--interval", str(interval), "--max-interval", str(interval), "--timeout", "60"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                time.sleep(0.6 + random.Random(i).uniform(0, interval))  # past start-up, random poll phase
                t_notify = time.time_ns()
                run_command([str(bin_ / "ddmq-notify"), "ev", "go", "--root", str(root)], capture_output=True)
                t_notified = time.time_ns()
                out, err = waiter.communicate(timeout=90)
                t_done = time.time_ns()
                rec = {"workload": "w5-latency", "fs": fs, "interval": interval, "returncode": waiter.returncode}
                try:
                    got = json.loads(out.strip().splitlines()[-1])
                    published = got["published"]
                    # The claim time, from the lease the waiter took (expiry - message_timeout).
                    claimed = got["lease_expires"] - int(got["message_timeout"] * 1e9)
                    rec.update({
                        "publish_to_claim_s": (claimed - published) / 1e9,
                        "claim_to_exit_s": (t_done - claimed) / 1e9,
                        "publish_to_exit_s": (t_done - published) / 1e9,
                        "notify_start_to_exit_s": (t_done - t_notify) / 1e9,
                        "notify_exit_to_exit_s": (t_done - t_notified) / 1e9,
                        "notify_run_s": (t_notified - t_notify) / 1e9,
                    })
                except (ValueError, IndexError, KeyError):
                    rec["error"] = (err or out).strip()[-300:]
                self.runs.append(rec)
                shutil.rmtree(root, ignore_errors=True)
            lat = [r.get("publish_to_exit_s") for r in self.runs
                   if r.get("workload") == "w5-latency" and r["interval"] == interval and r["fs"] == fs]
            log(f"  w5 {fs:5s} latency interval={interval}: median {median(lat) * 1e3:.0f} ms, "
                f"max {max(x for x in lat if x is not None) * 1e3:.0f} ms")

    def w5_strace(self, fs: str) -> None:
        """System calls of an idle ddmq-wait, attached after start-up, empty queue vs a backlog."""
        if not self.tools.get("strace"):
            self.notes.append("strace missing: W5 system-call counts skipped")
            return
        venv = self.venvs["ddmq"]
        bin_ = venv / "bin"
        seconds = self.p["w5_strace_s"]
        interval = 0.5
        for backlog in (0, self.p["w5_backlog"]):
            root = self.fresh_root(fs)
            run_command([str(bin_ / "ddmq"), "--root", str(root), "create", "ev"], capture_output=True)
            if backlog:
                run_command([str(venv / "bin" / "python"), "-c",
                     "import sys; from ddmq import Broker; b = Broker(sys.argv[1])\n"
                     "for i in range(int(sys.argv[2])): b.publish('ev', f'other {i}', durable=False)",
                     str(root), str(backlog)])
            waiter = subprocess.Popen(
                [str(bin_ / "ddmq-wait"), "ev", "--root", str(root), "--match", "never",
                 "--interval", str(interval), "--max-interval", str(interval)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(3.0)  # start-up and the first polls (which read each backlog message once)
            cpu0 = _proc_cpu(waiter.pid)
            summary = Path(tempfile.mkstemp(suffix=".strace")[1])
            tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(summary), "-p", str(waiter.pid)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(seconds)
            tracer.send_signal(signal.SIGINT)
            tracer.wait(30)
            cpu1 = _proc_cpu(waiter.pid)
            waiter.terminate()
            waiter.wait(30)
            calls = parse_strace_summary(summary.read_text())
            summary.unlink(missing_ok=True)
            polls = calls.get("clock_nanosleep", 0) or calls.get("select", 0) or calls.get("nanosleep", 0)
            fs_calls = {k: v for k, v in calls.items() if k in FS_SYSCALLS}
            rec = {"workload": "w5-strace", "fs": fs, "backlog": backlog, "seconds": seconds,
                   "interval": interval, "polls": polls, "syscalls": calls, "fs_syscalls": sum(fs_calls.values()),
                   "fs_by_call": fs_calls, "cpu_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0}
            self.runs.append(rec)
            per_poll = rec["fs_syscalls"] / polls if polls else None
            log(f"  w5 {fs:5s} strace backlog={backlog}: {rec['fs_syscalls']} fs calls in {seconds:g} s, "
                f"{polls} polls, {per_poll and round(per_poll, 1)} per poll")
            shutil.rmtree(root, ignore_errors=True)


OPCOST_BODY = 280
OPCOST_OPS = (  # key, as shown in the table
    ("create", "`open(O_CREAT|O_EXCL|O_WRONLY)` of a new file"),
    ("write", f"`write` of {OPCOST_BODY} bytes"),
    ("close", "`close` (of the file just written)"),
    ("rename", "`rename` to a new name in another directory"),
    ("read", f"`open(O_RDONLY)` + `read(65536)` + `read` + `close` of a {OPCOST_BODY}-byte file"),
    ("rewrite", f"`open(O_WRONLY|O_TRUNC)` of an existing file + `write` {OPCOST_BODY} B + `close`"),
    ("stat", "`stat`"),
    ("unlink", "`unlink`"),
)


def _opcost_round(d: Path, n: int, tag: str) -> dict:
    """One pass over n files in d: each operation of OPCOST_OPS as a loop over the files, timed as a whole."""
    pc, body = time.perf_counter, b"x" * OPCOST_BODY
    other = d / "other"
    other.mkdir(exist_ok=True)
    src = [f"{d}/{tag}.{i:06d}.tmp" for i in range(n)]
    dst = [f"{other}/{tag}.{i:06d}.msg" for i in range(n)]
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    batch = n if soft == resource.RLIM_INFINITY else max(64, min(n, soft - 256))  # creates held open
    t = {k: 0.0 for k, _ in OPCOST_OPS}
    sys_s = cpu_s = 0.0
    cflags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    os.sync()  # nothing of the previous round left to write back
    for start in range(0, n, batch):
        part, fds = src[start:start + batch], []
        s0, c0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime, time.process_time(), pc()
        for path in part:
            fds.append(os.open(path, cflags, 0o644))
        t1 = pc()
        c1, s1 = time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
        for fd in fds:
            os.write(fd, body)
        t2 = pc()
        for fd in fds:
            os.close(fd)
        t3 = pc()
        t["create"] += t1 - t0
        t["write"] += t2 - t1
        t["close"] += t3 - t2
        sys_s += s1 - s0
        cpu_s += c1 - c0
    t0 = pc()
    for a, b in zip(src, dst):
        os.rename(a, b)
    t["rename"] = pc() - t0
    sizes = set()
    t0 = pc()
    for path in dst:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        sizes.add(len(os.read(fd, 65536)) + len(os.read(fd, 65536)))
        os.close(fd)
    t["read"] = pc() - t0
    if sizes != {OPCOST_BODY}:
        raise OSError(f"read back sizes {sorted(sizes)[:5]}, expected {OPCOST_BODY}")
    t0 = pc()
    for path in dst:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        os.write(fd, body)
        os.close(fd)
    t["rewrite"] = pc() - t0
    t0 = pc()
    for path in dst:
        os.stat(path)
    t["stat"] = pc() - t0
    t0 = pc()
    for path in dst:
        os.unlink(path)
    t["unlink"] = pc() - t0
    return {"us": {k: v / n * 1e6 for k, v in t.items()},
            "create_sys_us": sys_s / n * 1e6, "create_cpu_us": cpu_s / n * 1e6}


def measure_opcosts(d: Path, n: int, rounds: int) -> dict:
    """Median over rounds of _opcost_round in directory d (the same directory every round)."""
    rs = [_opcost_round(d, n, f"r{i}") for i in range(rounds)]
    return {
        "path": str(d),
        "us": {k: statistics.median(r["us"][k] for r in rs) for k, _ in OPCOST_OPS},
        "rounds_us": {k: [round(r["us"][k], 2) for r in rs] for k, _ in OPCOST_OPS},
        "create_sys_us": statistics.median(r["create_sys_us"] for r in rs),
        "create_cpu_us": statistics.median(r["create_cpu_us"] for r in rs),
        "create_sys_rounds_us": [round(r["create_sys_us"], 2) for r in rs],
        "create_cpu_rounds_us": [round(r["create_cpu_us"], 2) for r in rs],
    }


FS_SYSCALLS = {
    "open", "openat", "openat2", "creat", "close", "read", "pread64", "write", "pwrite64", "lseek",
    "stat", "lstat", "fstat", "newfstatat", "statx", "access", "faccessat", "faccessat2", "getdents",
    "getdents64", "rename", "renameat", "renameat2", "unlink", "unlinkat", "link", "linkat", "mkdir",
    "mkdirat", "rmdir", "utime", "utimes", "utimensat", "futimesat", "fsync", "fdatasync", "readlink",
    "readlinkat", "fcntl", "ioctl", "chmod", "fchmod", "truncate", "ftruncate",
}


def parse_strace_summary(text: str) -> dict[str, int]:
    calls = {}
    for line in text.splitlines():
        parts = line.split()
        # % time  seconds  usecs/call  calls  [errors]  syscall
        if len(parts) >= 5 and re.match(r"^[\d.]+$", parts[0]) and parts[-1] != "total":
            try:
                calls[parts[-1]] = int(parts[3])
            except ValueError:
                pass
    return calls


def sshfs_requests(traces: Path, pids: list[int]) -> dict[str, float]:
    """FUSE requests read and SFTP requests written by each traced sshfs process (A first, then B).

    sshfs 3 reads the kernel's requests from /dev/fuse (its fd 3) and writes
    SFTP requests to its ssh socket (fd 4): the harness's mounts, checked
    against /proc/PID/fd when traced. The last read of /dev/fuse, still
    waiting when tracing stops, is not in the file. Each SFTP request is
    also counted by its type, the fifth byte of the packet (strace -xx
    shows it as the fifth \\xNN of the first buffer written).
    """
    counts: dict[str, float] = collections.Counter()
    for mount, pid in zip("AB", pids):
        for line in (traces / f"sshfs.{pid}").read_text().splitlines():
            call = line.split(None, 1)[-1]
            if call.startswith(("read(3,", "readv(3,")) and "= -1" not in call:
                counts[f"fuse requests {mount}"] += 1
            elif call.startswith(("write(4,", "writev(4,")):
                counts[f"sftp requests {mount}"] += 1
                packet = re.search(r'"((?:\\x[0-9a-f]{2}){5})', call)
                kind = int(packet.group(1).split("\\x")[5], 16) if packet else None
                counts[f"sftp {mount} {SFTP_TYPES.get(kind, kind)}"] += 1
        counts.setdefault(f"fuse requests {mount}", 0)
        counts.setdefault(f"sftp requests {mount}", 0)
    return counts


def sftp_by_type(per: dict[str, float]) -> dict[str, float]:
    """SFTP requests per message by type, both mounts together, most frequent first."""
    kinds: dict[str, float] = collections.Counter()
    for key, value in per.items():
        words = key.split()
        if words[0] == "sftp" and words[1] != "requests":
            kinds[words[2]] += value
    return {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.005}


# SFTP packet types (draft-ietf-secsh-filexfer-02, the version OpenSSH speaks); 200 carries OpenSSH's
# extensions (posix-rename, hardlink, fsync, statvfs).
SFTP_TYPES = {3: "open", 4: "close", 5: "read", 6: "write", 7: "lstat", 8: "fstat", 9: "setstat", 10: "fsetstat",
              11: "opendir", 12: "readdir", 13: "remove", 14: "mkdir", 15: "rmdir", 16: "realpath", 17: "stat",
              18: "rename", 19: "readlink", 20: "symlink", 200: "extended"}


def _proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def capped_n(p: dict, fs: str, durable: bool, n: int) -> int:
    """How many messages a run of ``n`` makes: ``shared_n`` across two sshfs mounts, else fsync-bound runs
    are capped outside tmpfs (the suite's runs and the report's tables both ask here)."""
    if fs in SSHFS_OPTIONS:
        return p["shared_n"]
    return min(n, p["disk_durable_n"]) if fs != "tmpfs" and durable else n
