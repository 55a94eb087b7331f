#!/usr/bin/env python3
"""The ddmq benchmark suite: ddmq (this working tree) against ddmq 0.9.14, RabbitMQ and dirq.

    python3 benchmarks/run.py            # full run, ~20 min on 2 cores; writes docs/performance.md
    python3 benchmarks/run.py --quick    # ~2-3 min; prints the tables, writes only the JSON

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
makes and loop-mounts on that disk (as root), and on tmpfs (/dev/shm).
Results: ``benchmarks/results/
{quick,full}-TIMESTAMP.json`` (raw, every run) and, for full runs,
``docs/performance.md`` (everything above its "Analysis" heading is
regenerated; the analysis below it is kept).
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "worker.py"
RESULTS = HERE / "results"
DOC = REPO / "docs" / "performance.md"
ANALYSIS_MARK = "<!-- Everything below this line is written by hand and kept by benchmarks/run.py. -->"

AMQP_PORT, DIST_PORT, EPMD_PORT = 35672, 35673, 43690
RABBIT_NODE = "ddmqbench@localhost"

# The filesystems, in the order they are run and reported: the local disk as
# mounted, an ext4 image with a journal loop-mounted on it (see ext4_image),
# and tmpfs.
FILESYSTEMS = ("disk", "ext4-journal", "tmpfs")
EXT4_IMAGE_GIB = 4

# Sizes and repetitions. "disk_durable_n" caps the fsync-bound runs on
# block devices (ddmq durable, floor durable, RabbitMQ persistent): one fsync
# costs milliseconds there, and per-message cost is what is compared.
PROFILES = {
    "full": dict(
        w1_n=5000, w1_reps=5, disk_durable_n=500,
        old_reps=1, old_cap=120.0,
        w2_sizes=(20000, 100000), w2_reps=2, w2_peer_sizes=(20000,), old_w2_n=20000, old_w2_cap=60.0,
        w3_n=5000, w3_reps=5,
        w4_reps=15, w5_samples=8, sys_n=1000, w5_intervals=(0.05, 0.2), w5_strace_s=20.0, w5_backlog=1000,
        ops_n=2000, ops_rounds=3,
    ),
    "quick": dict(
        w1_n=1000, w1_reps=2, disk_durable_n=200,
        old_reps=1, old_cap=30.0,
        w2_sizes=(5000,), w2_reps=1, w2_peer_sizes=(), old_w2_n=0, old_w2_cap=0.0,
        w3_n=1000, w3_reps=2,
        w4_reps=5, w5_samples=3, sys_n=200, w5_intervals=(0.05,), w5_strace_s=5.0, w5_backlog=1000,
        ops_n=500, ops_rounds=3,
    ),
}

VENVS = {
    # name: (pip requirement lines, extra steps)
    "ddmq": ["pyyaml>=5.1", "click>=8.0"],  # + the working tree, reinstalled every run
    "old": ["ddmq==0.9.14"],  # + pyyaml<6 built with cython<3 (no wheel for Python 3.11)
    "dirq": ["dirq"],
    "rabbit": ["pika"],
    "prof": ["pyinstrument", "py-spy", "pyyaml>=5.1", "click>=8.0"],  # for benchmarks/profile.py
    "ab-a": ["pyyaml>=5.1", "click>=8.0"],  # benchmarks/ab.py: two ddmq trees side by side
    "ab-b": ["pyyaml>=5.1", "click>=8.0"],
    "instr": ["pyyaml>=5.1", "click>=8.0"],  # benchmarks/instructions.py: one ddmq tree after another
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, **kw)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ------------------------------------------------------------------ set-up
def ensure_apt(packages: dict[str, str]) -> dict[str, bool]:
    """Install missing Debian packages (command -> package) when root; report what is there."""
    missing = [pkg for cmd, pkg in packages.items() if not shutil.which(cmd) and not Path(cmd).exists()]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"apt-get install {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # policy-rc.d keeps Debian's maintainer scripts from starting a system RabbitMQ.
        run(["apt-get", "update", "-q"], check=False, env=env, stdout=subprocess.DEVNULL)
        run(["apt-get", "install", "-y", "-q", *missing], check=False, env=env, stdout=subprocess.DEVNULL)
    return {cmd: bool(shutil.which(cmd) or Path(cmd).exists()) for cmd in packages}


def pip(venv: Path, *args: str) -> None:
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        stdout=subprocess.DEVNULL)


def ensure_venv(cache: Path, name: str) -> Path:
    venv = cache / f"venv-{name}"
    stamp = venv / "bench-spec.json"
    spec = json.dumps({"python": sys.version, "reqs": VENVS[name]})
    if stamp.exists() and stamp.read_text() == spec:
        return venv
    log(f"creating {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    run([sys.executable, "-m", "venv", str(venv)])
    if name == "old":
        # ddmq 0.9.14 calls yaml.load() without a Loader, which PyYAML 6 refuses;
        # PyYAML 5.x has no wheel for this Python and its sdist needs Cython < 3.
        pip(venv, "cython<3", "wheel", "setuptools")
        pip(venv, "--no-build-isolation", "pyyaml<6")
    pip(venv, *VENVS[name])
    stamp.write_text(spec)
    return venv


def install_working_tree(cache: Path, venv: Path, tree: Path = REPO) -> dict:
    """Copy the working tree (uncommitted edits included) and install that copy, non-editable.

    Building from a copy keeps pip's build/ and egg-info out of the repository.
    """
    src = cache / f"src-{venv.name}"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(tree, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".benchmarks",
        "benchmarks", "tests", "workflow_examples", "docs"))
    pip(venv, "--no-deps", "--force-reinstall", str(src))
    git = lambda *a: run(["git", "-C", str(tree), *a], check=False, capture_output=True).stdout.strip()
    dirty = [line for line in git("status", "--porcelain", "--", "ddmq", "ddmq_hpc", "pyproject.toml").splitlines()]
    # What exactly was measured: a hash of the package sources installed (equal to
    # `git archive COMMIT` of the same files when the tree was clean), and any diff.
    digest = hashlib.sha256()
    for f in sorted(p for d in ("ddmq", "ddmq_hpc") for p in (src / d).rglob("*.py")):
        digest.update(str(f.relative_to(src)).encode() + b"\0" + f.read_bytes())
    return {"commit": git("rev-parse", "HEAD"), "describe": git("log", "-1", "--format=%h %s"),
            "uncommitted_changes_in_package": dirty, "package_sha256": digest.hexdigest(),
            "uncommitted_diff": git("diff", "HEAD", "--", "ddmq", "ddmq_hpc") if dirty else ""}


def pkg_version(venv: Path, dist: str) -> str:
    out = run([str(venv / "bin" / "python"), "-c",
               f"import importlib.metadata as m; print(m.version({dist!r}))"], check=False, capture_output=True)
    return out.stdout.strip() or "?"


def fs_info(path: Path) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    out = run(["df", "--output=source,fstype", str(path)], check=False, capture_output=True).stdout.split()
    source, fstype = (out[-2], out[-1]) if len(out) >= 2 else ("?", "?")
    options = "?"
    best = ""
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, typ, opts = line.split()[:4]
        if str(path.resolve()).startswith(mnt) and len(mnt) >= len(best):
            best, options = mnt, opts
    info = {"path": str(path), "device": source, "fstype": fstype, "mount": best, "options": options}
    # /proc/fs/ext4 names every mounted ext4 by its kernel device name (vda,
    # loop0, dm-0: what /dev/mapper/... links to), and jbd2 lists the journal
    # of each one that has one as NAME-INODE. Unknown when the name is not there.
    device = os.path.basename(os.path.realpath(source))
    if fstype == "ext4" and os.path.isdir(f"/proc/fs/ext4/{device}"):
        journals = os.listdir("/proc/fs/jbd2") if os.path.isdir("/proc/fs/jbd2") else []
        info["journal"] = any(j.rsplit("-", 1)[0] == device for j in journals)
    return info


def machine_info(dirs: dict[str, Path]) -> dict:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
    virt = run(["systemd-detect-virt"], check=False, capture_output=True).stdout.strip() if shutil.which(
        "systemd-detect-virt") else ""
    lscpu = run(["lscpu"], check=False, capture_output=True).stdout if shutil.which("lscpu") else ""
    hyper = re.search(r"Hypervisor vendor:\s*(.+)", lscpu)
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(mem) / 2**20, 1),
        "kernel": platform.release(), "os": platform.platform(), "python": platform.python_version(),
        "hypervisor": hyper.group(1).strip() if hyper else virt or "none seen",
        "filesystems": {k: fs_info(v) for k, v in dirs.items()},
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# ------------------------------------------------------------- ext4 image
class Ext4Image:
    """An ext4 filesystem with mkfs.ext4's defaults (a journal), in a file, loop-mounted for the run.

    The local disk a benchmark happens to run on may be formatted unusually
    (this machine's has no journal, and then ext4 will not reuse an inode
    freed in the last minute or more, which makes every create after many
    unlinks scan them); the image gives every run a filesystem as most
    machines have it. Inode tables and the journal are written at mkfs
    (lazy init off), so no background zeroing runs during the measurements.
    """

    def __init__(self, cache: Path):
        self.file = cache / f"ext4-journal-{os.getpid()}.img"
        self.mountpoint = cache / f"ext4-journal-{os.getpid()}"
        self.mounted = False

    def mount(self) -> Path:
        if os.geteuid() != 0:
            raise OSError("mounting an image needs root")
        with open(self.file, "wb") as f:
            f.truncate(EXT4_IMAGE_GIB << 30)
        run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.file)],
            capture_output=True)
        self.mountpoint.mkdir(exist_ok=True)
        run(["mount", "-o", "loop", str(self.file), str(self.mountpoint)], capture_output=True)
        self.mounted = True
        return self.mountpoint

    def remove(self) -> None:
        if self.mounted and run(["umount", str(self.mountpoint)], check=False).returncode != 0:
            run(["umount", "-l", str(self.mountpoint)], check=False)
        self.mounted = False
        self.file.unlink(missing_ok=True)
        try:
            self.mountpoint.rmdir()
        except OSError:
            pass


# ---------------------------------------------------------------- RabbitMQ
class Rabbit:
    """A private RabbitMQ node: own epmd port, node name, ports, data and log dirs."""

    def __init__(self, base: Path):
        self.base = base
        self.proc = None
        self.epmd = None
        self.server_pid = None
        self.log = None

    def env(self) -> dict:
        b = self.base
        return {
            **os.environ,
            "HOME": str(b / "home"),
            "ERL_EPMD_PORT": str(EPMD_PORT),
            "RABBITMQ_NODENAME": RABBIT_NODE,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(AMQP_PORT),
            "RABBITMQ_DIST_PORT": str(DIST_PORT),
            "RABBITMQ_MNESIA_BASE": str(b / "mnesia"),
            "RABBITMQ_LOG_BASE": str(b / "log"),
            "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(b / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(b / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(b / "rabbit.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _port_open(self, port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def start(self) -> None:
        for port in (AMQP_PORT, DIST_PORT, EPMD_PORT):
            if self._port_open(port):
                raise RuntimeError(f"port {port} on 127.0.0.1 is in use: is another benchmark's RabbitMQ running?")
        shutil.rmtree(self.base, ignore_errors=True)
        for d in ("home", "mnesia", "log"):
            (self.base / d).mkdir(parents=True)
        (self.base / "rabbitmq.conf").write_text("loopback_users = none\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "enabled_plugins").write_text("[].\n")
        env = self.env()
        self.log = open(self.base / "log" / "console.log", "w")
        epmd = shutil.which("epmd") or "/usr/bin/epmd"
        self.epmd = subprocess.Popen([epmd, "-port", str(EPMD_PORT), "-address", "127.0.0.1"], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.proc = subprocess.Popen(["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while not self._port_open(AMQP_PORT):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ did not start; see {self.base / 'log'}")
            time.sleep(0.3)
        pidfile = self.base / "rabbit.pid"
        for _ in range(50):
            if pidfile.exists() and pidfile.read_text().strip():
                self.server_pid = int(pidfile.read_text().strip())
                break
            time.sleep(0.1)

    def version(self) -> str:
        out = run(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"], check=False, capture_output=True)
        erl = run(["dpkg-query", "-W", "-f", "${Version}", "erlang-base"], check=False, capture_output=True)
        return f"rabbitmq-server {out.stdout.strip()} (Debian), erlang-base {erl.stdout.strip()}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the script runs `rabbitmqctl stop`
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                pass
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.server_pid:
            try:  # beam.smp, if it outlived the script
                os.kill(self.server_pid, 0)
                time.sleep(2)
                os.kill(self.server_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.terminate()
            try:
                self.epmd.wait(10)
            except subprocess.TimeoutExpired:
                self.epmd.kill()
        if self.log:
            self.log.close()
        self.proc = self.epmd = None
        shutil.rmtree(self.base, ignore_errors=True)


# ------------------------------------------------------------- measurements
class Suite:
    def __init__(self, args, prof: dict, venvs: dict[str, Path], dirs: dict[str, Path], tools: dict):
        self.args = args
        self.p = prof
        self.venvs = venvs
        self.dirs = dirs
        self.tools = tools
        self.rabbit: Rabbit | None = None
        self.runs: list[dict] = []
        self.opcosts: dict[str, dict] = {}
        self.notes: list[str] = []
        self.seq = 0

    # A case: (label, venv, impl, durable)
    def cases_w1(self, fs: str) -> list[tuple]:
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

    def n_for(self, fs: str, durable: bool, n: int) -> int:
        return capped_n(self.p, fs, durable, n)

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
        if impl.startswith("rabbit"):
            cmd += ["--amqp-port", str(AMQP_PORT)]
            if self.rabbit and self.rabbit.server_pid:
                cmd += ["--server-pid", str(self.rabbit.server_pid)]
        os.sync()  # start every run with no dirty data of the previous one waiting to be written
        t0 = time.time()
        try:
            out = run(cmd, capture_output=True, timeout=timeout)
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
        n, rounds = self.p.get("ops_n", 2000), self.p.get("ops_rounds", 3)
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
        for rep in range(p["w1_reps"]):
            k = rep % len(cases)
            order = cases[k:] + cases[:k]
            if rep % 2:
                order.reverse()
            for label, venv, impl, durable in order:
                self.worker("w1", fs, label, venv, impl, durable, self.n_for(fs, durable, p["w1_n"]), rep=rep)
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
                out = run(cmd, check=False, capture_output=True, timeout=900)
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

    # W3 ---------------------------------------------------------------------
    def w3(self, fs: str) -> None:
        p = self.p
        cases = [("ddmq durable:false", "ddmq", "ddmq", False), ("ddmq durable:true", "ddmq", "ddmq", True),
                 ("dirq", "dirq", "dirq", False)]
        if self.rabbit is not None:
            cases.append(("RabbitMQ persistent+confirms", "rabbit", "rabbit", True))
        for rep in range(p["w3_reps"]):
            order = cases[rep % len(cases):] + cases[:rep % len(cases)]
            for label, venv, impl, durable in order:
                n = self.n_for(fs, durable, p["w3_n"])
                self.worker("w3", fs, label, venv, impl, durable, n, extra=["--consumers", "4"], rep=rep)
                if impl == "ddmq" and not durable:  # its W1 twin, in the same round
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
        run([py, "-c", "import sys; from ddmq import Broker; b = Broker(sys.argv[1], create=True)\n"
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
        for name, cmd in commands.items():  # warm-up (page cache, .pyc)
            run(cmd, check=False, env=env, capture_output=True)
        for rep in range(reps):
            names = list(commands)
            random.Random(rep).shuffle(names)
            for name in names:
                t0 = time.perf_counter()
                out = run(commands[name], check=False, env=env, capture_output=True)
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
        out = run([str(venv / "bin" / "ddmq"), "--help"], check=False, capture_output=True)
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
        run(["hyperfine", "-N", "--warmup", "3", "--runs", str(self.p["w4_reps"] * 2), "--export-json",
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
                run([str(bin_ / "ddmq"), "--root", str(root), "create", "ev"], capture_output=True)
                waiter = subprocess.Popen(
                    [str(bin_ / "ddmq-wait"), "ev", "--root", str(root), "--match", "go", "--format", "json",
                     "--interval", str(interval), "--max-interval", str(interval), "--timeout", "60"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                time.sleep(0.6 + random.Random(i).uniform(0, interval))  # past start-up, random poll phase
                t_notify = time.time_ns()
                run([str(bin_ / "ddmq-notify"), "ev", "go", "--root", str(root)], capture_output=True)
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
            run([str(bin_ / "ddmq"), "--root", str(root), "create", "ev"], capture_output=True)
            if backlog:
                run([str(venv / "bin" / "python"), "-c",
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


def _proc_cpu(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


# ---------------------------------------------------------------- summaries
def summarise(runs: list[dict], prof: dict) -> dict:
    """Medians per (workload, fs, label, n), paired ratios, and the targets."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r.get("workload") in ("w1", "w2", "w3") and "label" in r:
            groups.setdefault((r["workload"], r["fs"], r["label"], r["n"]), []).append(r)
    table = []
    for (wl, fs, label, n), rs in sorted(groups.items()):
        ok = [r for r in rs if r.get("total_s")]
        table.append({
            "workload": wl, "fs": fs, "label": label, "n": n, "runs": len(rs),
            "median_total_s": median([r["total_s"] for r in ok]),
            "median_us_per_msg": median([r["total_s"] / r["n"] * 1e6 for r in ok]),
            "median_cpu_us_per_msg": median([r["cpu_s"] / r["n"] * 1e6 for r in ok if r.get("cpu_s")]),
            "median_server_cpu_us_per_msg": median(
                [r["server_cpu_s"] / r["n"] * 1e6 for r in ok if r.get("server_cpu_s") is not None]),
            "min_us_per_msg": min([r["total_s"] / r["n"] * 1e6 for r in ok], default=None),
            "max_us_per_msg": max([r["total_s"] / r["n"] * 1e6 for r in ok], default=None),
            "all_ok": all(r.get("ok") for r in rs),
            "capped": any(r.get("capped") for r in rs),
            "missing": sum(r.get("missing", 0) or 0 for r in rs),
            "duplicates": sum(r.get("duplicates", 0) or 0 for r in rs),
            "errors": sorted({r["error"] for r in rs if r.get("error")}),
        })
    return {"table": table}


def paired_ratio(runs, wl, fs, num_label, den_label, n=None, den_wl=None, num_n=None, den_n=None):
    """Median over repetitions of (per-message time of num) / (per-message time of den), same rep."""
    def per_rep(wl_, label, n_):
        out = {}
        for r in runs:
            if (r.get("workload") == wl_ and r.get("fs") == fs and r.get("label") == label and r.get("total_s")
                    and (n_ is None or r["n"] == n_)):
                out.setdefault(r.get("rep"), []).append(r["total_s"] / r["n"])
        return {k: statistics.median(v) for k, v in out.items()}
    a = per_rep(wl, num_label, num_n or n)
    b = per_rep(den_wl or wl, den_label, den_n or n)
    ratios = [a[k] / b[k] for k in a if k in b]
    if not ratios:
        ma, mb = median(list(a.values())), median(list(b.values()))
        return (ma / mb if ma and mb else None), []
    return statistics.median(ratios), ratios


def cell(rows, wl, fs, label, n=None, key="median_us_per_msg"):
    for row in rows:
        if row["workload"] == wl and row["fs"] == fs and row["label"] == label and (n is None or row["n"] == n):
            return row
    return None


def targets(data: dict) -> list[dict]:
    runs, rows, p = data["runs"], data["summary"]["table"], data["profile"]
    out = []

    def add(name, fs, value, goal, met, detail=""):
        out.append({"target": name, "fs": fs, "value": value, "goal": goal, "met": met, "detail": detail})

    for fs in [f for f in FILESYSTEMS if any(r.get("fs") == f for r in runs)]:
        n = p["w1_n"]
        # W1 durable:false vs 0.9.14 (old runs are bracketed by ddmq runs with rep "oldK")
        r, rs = paired_ratio(runs, "w1", fs, "ddmq 0.9.14", "ddmq durable:false", n=n)
        old = cell(rows, "w1", fs, "ddmq 0.9.14", n)
        capped = bool(old and old["capped"])
        if r is not None:
            add("W1 durable:false ≥ 50× faster than ddmq 0.9.14", fs, r, 50, r >= 50,
                ("0.9.14 stopped at its time cap: ratio is a lower bound" if capped else ""))
        for peer, goal, name in (("RabbitMQ persistent+confirms", 5, "W1 durable:false ≥ 5× faster than RabbitMQ"),
                                 ("RabbitMQ transient", 5,
                                  "W1 durable:false ≥ 5× faster than RabbitMQ (transient, for reference)"),
                                 ("dirq", 1, "W1 durable:false faster than dirq")):
            r, rs = paired_ratio(runs, "w1", fs, peer, "ddmq durable:false",
                                 num_n=n_for_fs(p, fs, peer), den_n=n)
            if r is not None:
                add(name, fs, r, goal, r >= goal if goal > 1 else r > 1)
        r, rs = paired_ratio(runs, "w1", fs, "ddmq durable:false", "floor", n=n)
        if r is not None:
            add("W1 durable:false within 2× of the floor", fs, r, 2, r <= 2)
        r, rs = paired_ratio(runs, "w1", fs, "ddmq durable:false", "floor + read", n=n)
        if r is not None:
            add("W1 durable:false within 2× of the floor + read (the payload read every consumer does)",
                fs, r, 2, r <= 2)
        dn = n_for_fs(p, fs, "ddmq durable:true")
        r, rs = paired_ratio(runs, "w1", fs, "RabbitMQ persistent+confirms", "ddmq durable:true", n=dn)
        if r is not None:
            add("W1 durable:true faster than RabbitMQ persistent+confirms", fs, r, 1, r > 1)
        # W2 flatness: per-message cost at the largest size vs at 5000, same round.
        big = max(p["w2_sizes"])
        r, rs = paired_ratio(runs, "w2", fs, "ddmq durable:false", "ddmq durable:false",
                             num_n=big, den_n=p["w1_n"])
        if r is not None and big != p["w1_n"]:
            add(f"W2 per-message cost at {big} within 1.3× of {p['w1_n']}", fs, r, 1.3, r <= 1.3)
        # W3
        w3 = cell(rows, "w3", fs, "ddmq durable:false")
        if w3:
            r, rs = paired_ratio(runs, "w3", fs, "ddmq durable:false", "ddmq durable:false (W3 twin)",
                                 den_wl="w1")
            rs_w3 = [x for x in runs if x.get("workload") == "w3" and x.get("fs") == fs
                     and x.get("label", "").startswith("ddmq")]
            clean = all(x.get("ok") for x in rs_w3)
            add("W3 no loss / no double delivery (ddmq, all runs)", fs, clean, True, clean,
                f"{len(rs_w3)} runs, missing {sum(x.get('missing', 0) for x in rs_w3)}, "
                f"duplicates {sum(x.get('duplicates', 0) for x in rs_w3)}")
            if r is not None:
                add("W3 wall time no worse than W1 (durable:false, same n)", fs, r, 1, r <= 1)
    # W4
    for r in runs:
        if r.get("workload") != "w4":
            continue
        base = median(r["times"]["python -c pass"])
        for cmd in ("ddmq-notify", "ddmq publish"):
            v = median(r["times"][cmd]) / base
            add(f"W4 {cmd} ≤ 3× `python -c pass`", r["fs"], v, 3, v <= 3)
    # W5
    lat = {}
    for r in runs:
        if r.get("workload") == "w5-latency":
            lat.setdefault((r["fs"], r["interval"]), []).append(r.get("publish_to_exit_s"))
    for (fs, interval), xs in lat.items():
        worst = max((x for x in xs if x is not None), default=None)
        goal = interval + 0.05
        add(f"W5 ddmq-wait returns within interval + 50 ms (interval {interval:g} s, worst of {len(xs)})", fs,
            worst, goal, worst is not None and worst <= goal and all(x is not None for x in xs),
            f"median {median(xs) * 1e3:.0f} ms" if median(xs) else "")
    st = {r["backlog"]: r for r in runs if r.get("workload") == "w5-strace"}
    if len(st) == 2 and st[0]["polls"] and st[max(st)]["polls"]:
        a, b = st[0], st[max(st)]

        def per_poll(r, skip=()):
            return sum(v for k, v in r["fs_by_call"].items() if k not in skip) / r["polls"]
        pa, pb = per_poll(a), per_poll(b)
        qa, qb = per_poll(a, ("getdents64", "getdents")), per_poll(b, ("getdents64", "getdents"))
        ra = sum(a["fs_by_call"].get(k, 0) for k in ("read", "pread64")) / a["polls"]
        rb = sum(b["fs_by_call"].get(k, 0) for k in ("read", "pread64")) / b["polls"]
        add(f"W5 idle waiter: fs syscalls per poll other than reading the directory, {max(st)} "
            "non-matching messages vs empty", "disk", qb / qa if qa else None, 1.0, qb <= qa * 1.1,
            f"{qb:.1f} vs {qa:.1f}; file reads per poll {rb:.1f} vs {ra:.1f}")
        add(f"W5 idle waiter: all fs syscalls per poll (getdents64 included), {max(st)} vs empty", "disk",
            pb / pa, 1.0, pb <= pa * 1.1,
            f"{pb:.1f} vs {pa:.1f}; getdents64 per poll {b['fs_by_call'].get('getdents64', 0) / b['polls']:.1f} "
            f"vs {a['fs_by_call'].get('getdents64', 0) / a['polls']:.1f}")
        if a.get("cpu_s") is not None and b.get("cpu_s") is not None:
            ca, cb = a["cpu_s"] / a["polls"] * 1e3, b["cpu_s"] / b["polls"] * 1e3
            add(f"W5 idle waiter: CPU per poll, {max(st)} vs empty (informational)", "disk",
                cb / ca if ca else None, 1.0, cb <= max(ca, 0.1) * 1.5, f"{cb:.2f} ms vs {ca:.2f} ms per poll")
    return out


def fs_rank(fs: str) -> int:
    return FILESYSTEMS.index(fs) if fs in FILESYSTEMS else len(FILESYSTEMS)


def capped_n(p: dict, fs: str, durable: bool, n: int) -> int:
    """How many messages a run of ``n`` makes: fsync-bound runs are capped outside tmpfs."""
    return min(n, p["disk_durable_n"]) if fs != "tmpfs" and durable else n


def n_for_fs(p: dict, fs: str, label: str) -> int:
    durable = "durable:true" in label or "persistent" in label or label == "floor durable"
    return capped_n(p, fs, durable, p["w1_n"])


# ---------------------------------------------------------------- rendering
def fmt_us(x):
    if x is None:
        return "–"
    return f"{x / 1000:,.2f} ms" if x >= 10000 else f"{x:,.0f} µs" if x >= 100 else f"{x:.1f} µs"


def render(data: dict) -> str:
    m, p, rows = data["machine"], data["profile"], data["summary"]["table"]
    fsd = m["filesystems"]
    L = []
    L.append("# Performance\n")
    L.append(f"Generated by `python3 benchmarks/run.py{' --quick' if data['mode'] == 'quick' else ''}` "
             f"on {data['date']} ({data['elapsed_s'] / 60:.1f} min). Raw results: "
             f"`benchmarks/results/{data['results_file']}`. ddmq measured: the working tree at "
             f"`{data['versions']['ddmq']['describe']}`"
             + (" plus uncommitted changes" if data["versions"]["ddmq"]["uncommitted_changes_in_package"] else "")
             + ".\n")
    L.append("## Machine\n")
    L.append(f"- CPU: {m['cpu']}, {m['cores']} cores ({m['hypervisor']} guest), {m['memory_gib']} GiB memory")
    L.append(f"- Kernel: Linux {m['kernel']}; Python {m['python']}")
    for k, v in sorted(fsd.items(), key=lambda kv: fs_rank(kv[0])):
        journal = {True: ", with a journal", False: ", **without a journal**"}.get(v.get("journal"), "")
        L.append(f"- {k}: `{v['path']}` on {v['fstype']}{journal} ({v['device']}, mounted `{v['mount']}`, "
                 f"options `{v['options']}`)")
    L.append(f"- Load average at start / end: {' '.join(m['loadavg_start'])} / {' '.join(data['loadavg_end'])} "
             "(other work was running on the machine when the load is above ~1)")
    v = data["versions"]
    L.append(f"- Peers: ddmq {v['old']} (PyPI), dirq {v['dirq']} (PyPI, `QueueSimple`), {v['rabbitmq']}, "
             f"pika {v['pika']}\n")

    L.append("## Results\n")
    L.append("Per-message wall time (publish + consume + ack, median of the runs; lower is better), "
             "with the client CPU time per message. Ratios in the targets table are medians of the ratios "
             "within each repetition (implementations take turns, so both sides of a ratio ran under the "
             "same conditions).\n")
    for wl, title in (("w1", f"W1: one process publishes {p['w1_n']} messages, then consumes and acks them all"),
                      ("w2", "W2: the same at larger sizes (per-message cost should stay flat)"),
                      ("w3", f"W3: one publisher and 4 consumer processes at once, {p['w3_n']} messages")):
        sel = [r for r in rows if r["workload"] == wl]
        if not sel:
            continue
        L.append(f"### {title}\n")
        L.append("| implementation | fs | n | runs | per message | min – max | client CPU / msg | "
                 "server CPU / msg | every message once |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for r in sorted(sel, key=lambda r: (fs_rank(r["fs"]), r["n"], r["median_us_per_msg"] or 1e18)):
            once = "yes" if r["all_ok"] else ("cut at time cap" if r["capped"] else
                                               f"**no** (missing {r['missing']}, dup {r['duplicates']})"
                                               + (f" {r['errors']}" if r["errors"] else ""))
            L.append(f"| {r['label']} | {r['fs']} | {r['n']:,} | {r['runs']} | "
                     f"{'> ' if r['capped'] else ''}{fmt_us(r['median_us_per_msg'])} | "
                     f"{fmt_us(r['min_us_per_msg'])} – {fmt_us(r['max_us_per_msg'])} | "
                     f"{fmt_us(r['median_cpu_us_per_msg'])} | {fmt_us(r['median_server_cpu_us_per_msg'])} | {once} |")
        L.append("")
    sc = [r for r in data["runs"] if r.get("workload") == "w1-syscalls"]
    if sc:
        L.append(f"### W1 system calls per message (strace -c -f, {sc[0]['n']} messages minus 0, {sc[0]['fs']})\n")
        L.append("Counted, not timed, so independent of the machine's load.\n")
        L.append("| implementation | all syscalls / msg | filesystem syscalls / msg | largest |")
        L.append("|---|---:|---:|---|")
        for r in sorted(sc, key=lambda r: r["total_per_msg"]):
            top = ", ".join(f"{k} {v:g}" for k, v in sorted(r["per_msg"].items(), key=lambda kv: -kv[1])[:8])
            L.append(f"| {r['label']} | {r['total_per_msg']:g} | {r['fs_per_msg']:g} | {top} |")
        L.append("")
    L.extend(render_opcosts(data.get("opcosts") or {}))
    capped = [r for r in data["runs"] if r.get("capped")]
    if capped:
        L.append("Runs of ddmq 0.9.14 stopped at their time cap (its consume lists the whole queue for every "
                 "message, so a run grows with the square of its size):\n")
        for r in capped:
            L.append(f"- {r['fs']}, n={r['n']:,}: published all in {r['publish_s']:.1f} s "
                     f"({r['publish_s'] / r['n'] * 1e3:.2f} ms each), then consumed {r['consumed_before_cap']:,} "
                     f"in {r['consume_s']:.1f} s ({r['consume_s'] / max(1, r['consumed_before_cap']) * 1e3:.1f} ms "
                     "each) before the cap")
        L.append("")

    w4 = [r for r in data["runs"] if r.get("workload") == "w4"]
    if w4:
        L.append("### W4: command line, wall time per invocation (median, commands alternating)\n")
        names = list(w4[0]["times"])
        L.append("| command | " + " | ".join(r["fs"] for r in w4) + " | × `python -c pass` |")
        L.append("|---|" + "---:|" * len(w4) + "---:|")
        for name in names:
            meds = [median(r["times"][name]) for r in w4]
            base = median(w4[0]["times"]["python -c pass"])
            L.append(f"| `{name}` | " + " | ".join(f"{x * 1e3:.1f} ms" for x in meds)
                     + f" | {meds[0] / base:.2f} |")
        hf = [r for r in data["runs"] if r.get("workload") == "w4-hyperfine"]
        for r in hf:
            L.append("")
            L.append(f"hyperfine cross-check ({r['fs']}): " + "; ".join(
                f"`{x['command'].split('/')[-1]}` {x['median_s'] * 1e3:.1f} ms" for x in r["results"]))
        old = [r for r in data["runs"] if r.get("workload") == "w4-old-cli"]
        for r in old:
            L.append("")
            L.append(f"ddmq 0.9.14's own command line does not start as packaged: `ddmq --help` exits "
                     f"{r['returncode']} with `{r['stderr_last_line']}` (its `cli.py` does `from broker import "
                     "broker`, a Python 2 implicit relative import), so it has no W4 numbers.")
        L.append("")

    lat = [r for r in data["runs"] if r.get("workload") == "w5-latency"]
    st = [r for r in data["runs"] if r.get("workload") == "w5-strace"]
    if lat or st:
        L.append("### W5: waiting\n")
    if lat:
        L.append("Latency from the moment `ddmq-notify` published (the `published` time in the message) to "
                 "`ddmq-wait` exiting, with a fixed poll interval (`--interval I --max-interval I`):\n")
        L.append("| fs | interval | samples | median | max | publish → claim (median / max) | "
                 "claim → exit (median / max) | `ddmq-notify` run time (median) |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        keys = sorted({(r["fs"], r["interval"]) for r in lat})

        def ms(xs, f):
            xs = [x for x in xs if x is not None]
            return f"{f(xs) * 1e3:.0f}" if xs else "–"
        for fs, iv in keys:
            sel = [r for r in lat if r["fs"] == fs and r["interval"] == iv]
            xs = [r.get("publish_to_exit_s") for r in sel]
            pc = [r.get("publish_to_claim_s") for r in sel]
            ce = [r.get("claim_to_exit_s") for r in sel]
            nr = [r.get("notify_run_s") for r in sel]
            L.append(f"| {fs} | {iv * 1e3:.0f} ms | {len(xs)} | {ms(xs, median)} ms | {ms(xs, max)} ms | "
                     f"{ms(pc, median)} / {ms(pc, max)} ms | {ms(ce, median)} / {ms(ce, max)} ms | "
                     f"{ms(nr, median)} ms |")
        L.append("")
    if st:
        L.append("System calls of an idle `ddmq-wait --match never --interval 0.5 --max-interval 0.5`, counted "
                 "with `strace -c -f -p PID` after its first polls:\n")
        L.append("| non-matching messages | seconds | polls | fs syscalls | per poll | per minute | "
                 "getdents64 per poll | CPU per minute |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in st:
            pp = r["fs_syscalls"] / r["polls"] if r["polls"] else 0
            L.append(f"| {r['backlog']:,} | {r['seconds']:g} | {r['polls']} | {r['fs_syscalls']} | {pp:.1f} | "
                     f"{r['fs_syscalls'] / r['seconds'] * 60:.0f} | "
                     f"{r['fs_by_call'].get('getdents64', 0) / max(1, r['polls']):.1f} | "
                     f"{(r['cpu_s'] or 0) / r['seconds'] * 60:.2f} s |")
        L.append("")
        L.append("By call (" + "; ".join(
            f"{r['backlog']:,} messages: " + ", ".join(f"{k} {v}" for k, v in sorted(
                r["fs_by_call"].items(), key=lambda kv: -kv[1])) for r in st) + ").\n")

    L.append("## Targets\n")
    L.append("| target | fs | measured | goal | |")
    L.append("|---|---|---:|---:|---|")
    for t in data["targets"]:
        val = t["value"]
        if val is None:
            shown, goal = "–", "–"
        elif isinstance(val, bool):
            shown, goal = ("yes" if val else "no"), "yes"
        elif "W5 ddmq-wait" in t["target"]:
            shown, goal = f"{val * 1e3:.0f} ms", f"≤ {t['goal'] * 1e3:.0f} ms"
        elif "within" in t["target"] or "no worse" in t["target"] or "per poll" in t["target"] or "≤" in t["target"]:
            shown, goal = f"{val:.2f}×", f"≤ {t['goal']:g}×"
        else:
            shown, goal = f"{val:.2f}×", (f"≥ {t['goal']:g}×" if t["goal"] > 1 else "> 1×")
        status = "info" if "informational" in t["target"] else "met" if t["met"] else "**missed**"
        L.append(f"| {t['target']} | {t['fs']} | {shown} | {goal} | {status}"
                 + (f" ({t['detail']})" if t["detail"] else "") + " |")
    L.append("")
    L.append("For the speed targets, the measured value is how many times longer the other side takes per "
             "message (for “within 2× of the floor” and W2/W3, ddmq's time over the reference's).\n")
    L.append(METHOD.format(**p, amqp=AMQP_PORT, ext4_gib=EXT4_IMAGE_GIB))
    if data["notes"]:
        L.append("Notes from this run:\n")
        L.extend(f"- {n}" for n in data["notes"])
        L.append("")
    return "\n".join(L)


def render_opcosts(oc: dict) -> list[str]:
    """The "Filesystem operation costs" table (results files from before it have no "opcosts")."""
    cols = [(fs, i, d) for fs in FILESYSTEMS if fs in oc for i, d in enumerate(oc[fs].get("dirs", []), 1)]
    if not cols:
        return []
    first = oc[cols[0][0]]
    L = ["### Filesystem operation costs\n",
         "Time per call of each system call the floors make, alone, to show which system call dominates "
         "each filesystem's floor. Measured by `run.py` in its own process before that filesystem's "
         f"workloads: {first['n']:,} files, each operation timed as one loop over all of them, median of "
         f"{first['rounds']} rounds (`os.sync()` before each), in two freshly made directories per filesystem "
         "because on an ext4 without a journal the cost of a create depends on how many inodes were freed "
         "in the last minutes in the block group of its directory. The CPU rows are for the create loop: a create well above its CPU time is waiting "
         "(journal, disk, locks), not computing.\n",
         "| µs per call | " + " | ".join(f"{fs} dir {i}" for fs, i, _ in cols) + " |",
         "|---|" + "---:|" * len(cols)]

    def row(name, f):
        vals = []
        for _fs, _i, d in cols:
            try:
                v = f(d)
            except (KeyError, TypeError):
                v = None
            vals.append("–" if v is None else f"{v:,.1f}")
        L.append(f"| {name.replace('|', chr(92) + '|')} | " + " | ".join(vals) + " |")
    for key, name in OPCOST_OPS:
        row(name, lambda d, key=key: d["us"][key])
    row("create: CPU time (user + system, `time.process_time`)", lambda d: d["create_cpu_us"])
    row("create: system CPU time (`getrusage`)", lambda d: d["create_sys_us"])
    floor = lambda d: sum(d["us"][k] for k in ("create", "write", "close", "unlink")) + 2 * d["us"]["rename"]
    row("sum of the floor's calls: create + write + close + 2 × rename + unlink", floor)
    row("sum of floor + read's calls: the above + read", lambda d: floor(d) + d["us"]["read"])
    L.append("")
    return L


METHOD = """## Method

One command, `python3 benchmarks/run.py` (`--quick` for a smaller run), installs
everything and runs every workload; nothing here is part of the test suite.

- **Environments.** Each implementation runs in its own virtual environment
  under the cache directory (default `~/.cache/ddmq-bench`), created from the
  same interpreter: ddmq from this working tree (a copy installed
  non-editable, reinstalled every run), `ddmq==0.9.14` (with `pyyaml<6`,
  which it needs), `dirq`, and `pika` for RabbitMQ. RabbitMQ is Debian's
  `rabbitmq-server`, started by the suite with its own node name, ports
  ({amqp} and up), epmd, data and log directories (on the filesystem being
  measured), and stopped at the end of each filesystem's phase.
- **Measurement.** Every measurement is a fresh process
  (`benchmarks/worker.py`) on a fresh queue directory; timing starts after
  the queue exists and ends when the last message is acked, and the bodies
  received are checked against those sent (each exactly once). Within each
  repetition the implementations take turns, in a rotating order; tables
  show medians and ratios are medians of per-repetition ratios.
  `os.sync()` runs before each measurement so no run pays for the previous
  one's writeback.
- **Filesystems.** Everything runs on the local disk as it is mounted (the
  cache directory), on *ext4-journal*, a {ext4_gib} GiB ext4 image made with
  `mkfs.ext4`'s defaults (so with a journal) and loop-mounted from the
  cache directory for the run, and on tmpfs (`/dev/shm`). The image is there
  because the local disk of a machine can be formatted in a way few others
  are (see the filesystem lines above and the analysis); every
  implementation runs on all three. Outside tmpfs, runs whose cost is an
  fsync per message (ddmq durable:true, the durable floor, RabbitMQ
  persistent+confirms) use {disk_durable_n} messages instead of {w1_n}:
  they are compared per message.
- **Implementations.** *ddmq*: `Broker.publish`, then `consume()` + `ack()`
  one message at a time, `durable` set on the queue. *ddmq 0.9.14*:
  `broker.publish` / `consume` / `ack` with its defaults (which clean the
  queue, rewriting its settings file, on every call); it is quadratic, so
  it runs {old_reps} time(s) per filesystem, each run bracketed by two ddmq
  runs, with a time cap ({old_cap:g} s at W1, {old_w2_cap:g} s at W2).
  *dirq*: `QueueSimple.add`, then iterate, `lock`, `get`, `remove`; it never
  fsyncs, so it is compared with durable:false. *RabbitMQ
  persistent+confirms*: durable queue, `delivery_mode=2`, publisher confirms
  (`basic_publish` returns once the broker confirmed), `basic_consume` with
  prefetch 100 and one manual `basic_ack` per message. *RabbitMQ
  transient*: the same with a transient queue and messages and no confirms,
  for reference. *Floor*: a Python loop doing only the system calls of one
  publish (`open(O_CREAT|O_EXCL)`, `write`, `close`, `rename`), one claim
  (`rename`) and one ack (`unlink`) per message; *floor durable* adds the
  two fsyncs ddmq durable:true does (file, then directory). *Floor + read*
  is the floor plus reading the claimed message before the ack: `open`
  (`O_RDONLY`), `read(65536)` until it returns nothing, `close`, and the
  bytes compared with the body. Every consumer reads the message it claimed
  (ddmq, dirq and RabbitMQ all deliver the body), so this is the floor a
  real queue is compared against; the plain floor is kept as first defined.
  Floor + read runs with durable off only (it has no durable variant).
- **W2** repeats W1 for ddmq (durable:false) at {w1_n} and {w2_sizes}
  messages, and the floor at the smallest and largest size, in one round,
  so the flatness ratio is side by side; dirq and RabbitMQ transient run at
  {w2_peer_sizes} on tmpfs, and ddmq 0.9.14 once at {old_w2_n} on tmpfs,
  stopped at its cap.
- **W3** forks one publisher and 4 consumers after the queue exists; all
  start at a barrier, consumers poll (sleeping 1 ms when they find nothing)
  until the shared count of acked messages reaches n. Each W3 ddmq
  durable:false run is paired with a W1 run of the same size in the same
  round.
- **W4** runs each command {w4_reps} times, commands shuffled in every round,
  timing `subprocess.run` from the same Python (a cross-check with
  `hyperfine -N` is listed when hyperfine is installed). `ddmq consume`
  finds a message every time; `ddmq-notify` creates nothing after its first
  call.
- **W5** latency: `ddmq-wait --match go --interval I --max-interval I`,
  then after a random delay `ddmq-notify ev go`; latency is from the
  message's `published` time to the waiter's exit ({w5_samples} samples per
  interval). System calls: `strace -c -f -p` attached to an idle waiter for
  {w5_strace_s:g} s after its first polls, with an empty queue and with
  {w5_backlog} non-matching messages; polls are counted as its sleeps
  (`clock_nanosleep`).
"""


# ---------------------------------------------------------------- main
def add_cache_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--cache", default=os.environ.get("DDMQ_BENCH_CACHE", "~/.cache/ddmq-bench"),
                    help="venvs, the working-tree copy and the local-disk queues (default ~/.cache/ddmq-bench)")


def enter_cache(path: str) -> Path:
    """Make the cache directory and work from it: `python -c` puts the current
    directory first on sys.path, and it must never be the checkout."""
    cache = Path(path).expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    os.chdir(cache)
    return cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and smaller sizes (~2-3 min)")
    add_cache_option(ap)
    ap.add_argument("--tmpfs", default="/dev/shm", help="tmpfs directory (default /dev/shm)")
    ap.add_argument("--only", default="", help="comma-separated subset: w1,w2,w3,w4,w5 (default: all)")
    ap.add_argument("--fs", default=",".join(FILESYSTEMS), help="comma-separated: " + ",".join(FILESYSTEMS))
    ap.add_argument("--no-rabbit", action="store_true", help="leave RabbitMQ out")
    ap.add_argument("--doc", action=argparse.BooleanOptionalAction, default=None,
                    help="write docs/performance.md (default: only for a full run of everything)")
    ap.add_argument("--render", metavar="RESULTS.json",
                    help="measure nothing: redo the summary, targets and Markdown of a results file")
    args = ap.parse_args()
    if args.render:
        rerender(Path(args.render), args.doc)
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
    machine = machine_info(dirs)
    suite = Suite(args, prof, venvs, dirs, tools)
    suite.notes.extend(notes)
    versions = {"ddmq": ddmq_version, "old": pkg_version(venvs["old"], "ddmq"),
                "dirq": pkg_version(venvs["dirq"], "dirq"), "pika": pkg_version(venvs["rabbit"], "pika"),
                "rabbitmq": Rabbit(cache).version() if use_rabbit else "not run"}
    if not use_rabbit:
        suite.notes.append("RabbitMQ was not run")

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    interrupted = False
    try:
        suite.w4_old_cli()
        for fs in fss:
            log(f"== {fs}: {dirs[fs]}")
            if only & {"w1", "w2"}:
                suite.op_costs(fs)  # before RabbitMQ starts: nothing else of the suite running
            if use_rabbit and only & {"w1", "w2", "w3"}:
                suite.rabbit = Rabbit(dirs[fs] / "rabbitmq")
                log("starting RabbitMQ")
                suite.rabbit.start()
            try:
                if "w1" in only:
                    suite.w1(fs)
                if "w2" in only:
                    suite.w2(fs)
                if "w3" in only:
                    suite.w3(fs)
            finally:
                if suite.rabbit is not None:
                    log("stopping RabbitMQ")
                    suite.rabbit.stop()
                    suite.rabbit = None
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
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)
        if image is not None:
            image.remove()

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    data = {
        "mode": mode, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "elapsed_s": time.time() - started, "profile": prof, "machine": machine, "versions": versions,
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3], "only": sorted(only), "fs": fss,
        "results_file": f"{mode}-{stamp}.json", "notes": suite.notes, "runs": suite.runs,
        "opcosts": suite.opcosts, "interrupted": interrupted,
    }
    data["summary"] = summarise(suite.runs, prof)
    data["targets"] = targets(data)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / data["results_file"]).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    write_doc = args.doc if args.doc is not None else (mode == "full" and only == {"w1", "w2", "w3", "w4", "w5"})
    output(data, write_doc and not interrupted)
    log(f"wrote {RESULTS / data['results_file']} ({data['elapsed_s'] / 60:.1f} min)")


def output(data: dict, write_doc: bool) -> None:
    text = render(data)
    if write_doc:
        kept = ""
        if DOC.exists() and ANALYSIS_MARK in DOC.read_text():
            kept = DOC.read_text().split(ANALYSIS_MARK, 1)[1]
        DOC.write_text(text + "\n" + ANALYSIS_MARK + (kept or "\n\n## Analysis\n\n(none yet)\n"))
        log(f"wrote {DOC}")
    else:
        print(text)


def rerender(path: Path, write_doc: bool | None) -> None:
    data = json.loads(path.read_text())
    data["summary"] = summarise(data["runs"], data["profile"])
    data["targets"] = targets(data)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    output(data, bool(write_doc))


if __name__ == "__main__":
    main()
