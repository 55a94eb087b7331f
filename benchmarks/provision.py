"""Provisioning for the benchmarks: what is measured on, set up and torn down around the measurements.

Virtual environments (one per implementation, under the cache directory),
the working tree installed into one of them as a copy, Debian packages
(as root), the ext4 image with a journal loop-mounted for the run, a private
RabbitMQ node, and a description of the machine and its filesystems for the
report. Nothing here measures anything.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

AMQP_PORT, DIST_PORT, EPMD_PORT = 35672, 35673, 43690
RABBIT_NODE = "ddmqbench@localhost"

# The filesystems, in the order they are run and reported: the local disk as
# mounted, an ext4 image with a journal loop-mounted on it (see Ext4Image),
# tmpfs, and one directory shared through two sshfs mounts (see SshfsPair),
# with sshfs's default caching and, when asked for, with its caches off.
FILESYSTEMS = ("disk", "ext4-journal", "tmpfs", "sshfs")
OPTIONAL_FILESYSTEMS = ("sshfs-nocache",)
EXT4_IMAGE_GIB = 4
# sshfs -o options of each shared filesystem (tests/test_shared_storage.py tests the same two).
SSHFS_OPTIONS = {"sshfs": "", "sshfs-nocache": "dir_cache=no,entry_timeout=0,attr_timeout=0,negative_timeout=0"}
HARNESS = REPO / "tests" / "harness"

VENVS = {
    # name: (pip requirement lines, extra steps)
    "ddmq": ["pyyaml>=5.1", "click>=8.0"],  # + the working tree, reinstalled every run
    "old": ["ddmq==0.9.14"],  # + pyyaml<6 built with cython<3 (no wheel for Python 3.11)
    "dirq": ["dirq"],
    "rabbit": ["pika"],
    "prof": ["pyinstrument", "py-spy", "pyyaml>=5.1", "click>=8.0"],  # for benchmarks/hotspots.py
    "ab-a": ["pyyaml>=5.1", "click>=8.0"],  # benchmarks/ab.py: two ddmq trees side by side
    "ab-b": ["pyyaml>=5.1", "click>=8.0"],
    "instr": ["pyyaml>=5.1", "click>=8.0"],  # benchmarks/instructions.py: one ddmq tree after another
    "scale": ["pyyaml>=5.1", "click>=8.0"],  # benchmarks/scale.py: the tree measured at a million messages
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_command(cmd, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True, **kw)


def ensure_apt(packages: dict[str, str]) -> dict[str, bool]:
    """Install missing Debian packages (command -> package) when root; report what is there."""
    missing = [pkg for cmd, pkg in packages.items() if not shutil.which(cmd) and not Path(cmd).exists()]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"apt-get install {' '.join(missing)}")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # policy-rc.d keeps Debian's maintainer scripts from starting a system RabbitMQ.
        run_command(["apt-get", "update", "-q"], check=False, env=env, stdout=subprocess.DEVNULL)
        run_command(["apt-get", "install", "-y", "-q", *missing], check=False, env=env, stdout=subprocess.DEVNULL)
    return {cmd: bool(shutil.which(cmd) or Path(cmd).exists()) for cmd in packages}


def pip(venv: Path, *args: str) -> None:
    run_command([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
        stdout=subprocess.DEVNULL)


def ensure_venv(cache: Path, name: str) -> Path:
    venv = cache / f"venv-{name}"
    stamp = venv / "bench-spec.json"
    spec = json.dumps({"python": sys.version, "reqs": VENVS[name]})
    if stamp.exists() and stamp.read_text() == spec:
        return venv
    log(f"creating {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    run_command([sys.executable, "-m", "venv", str(venv)])
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
    def git(*a: str) -> str:
        return run_command(["git", "-C", str(tree), *a], check=False, capture_output=True).stdout.strip()

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
    out = run_command([str(venv / "bin" / "python"), "-c",
               f"import importlib.metadata as m; print(m.version({dist!r}))"], check=False, capture_output=True)
    return out.stdout.strip() or "?"


def fs_info(path: Path) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    out = run_command(["df", "--output=source,fstype", str(path)], check=False, capture_output=True).stdout.split()
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
    virt = run_command(["systemd-detect-virt"], check=False, capture_output=True).stdout.strip() if shutil.which(
        "systemd-detect-virt") else ""
    lscpu = run_command(["lscpu"], check=False, capture_output=True).stdout if shutil.which("lscpu") else ""
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

    NAME = "ext4-journal"
    MKFS = ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]
    GIB = EXT4_IMAGE_GIB  # the image file's size (sparse until written)

    def __init__(self, cache: Path):
        self.file = cache / f"{self.NAME}-{os.getpid()}.img"
        self.mountpoint = cache / f"{self.NAME}-{os.getpid()}"
        self.mounted = False

    def mount(self) -> Path:
        if os.geteuid() != 0:
            raise OSError("mounting an image needs root")
        with open(self.file, "wb") as f:
            f.truncate(self.GIB << 30)
        run_command([*self.MKFS, str(self.file)], capture_output=True)
        self.mountpoint.mkdir(exist_ok=True)
        run_command(["mount", "-o", "loop", str(self.file), str(self.mountpoint)], capture_output=True)
        self.mounted = True
        return self.mountpoint

    def remove(self) -> None:
        if self.mounted and run_command(["umount", str(self.mountpoint)], check=False).returncode != 0:
            run_command(["umount", "-l", str(self.mountpoint)], check=False)
        self.mounted = False
        self.file.unlink(missing_ok=True)
        try:
            self.mountpoint.rmdir()
        except OSError:
            pass


class XfsImage(Ext4Image):
    """The same with XFS (mkfs.xfs's defaults; its log is always on): the other common local filesystem."""

    NAME = "xfs"
    MKFS = ["mkfs.xfs", "-q", "-f"]


# ------------------------------------------------------------ sshfs pair
class SshfsPair:
    """One directory exported by a private sshd and mounted twice with sshfs: two "nodes" on shared storage.

    Each mount is its own SFTP session with its own client caches, as two
    cluster nodes on NFS are (``tests/harness/mount-shared.sh``, which the
    shared-storage tests use too). Every system call that reaches the
    filesystem is a round trip to the server, so this is where a queue's
    call count shows. ``a`` and ``b`` are the same directory through each
    mount; ``remove`` unmounts both and stops the sshd, also after a failure.
    """

    def __init__(self, cache: Path, name: str):
        self.state = cache / f"{name}-{os.getpid()}"
        self.options = SSHFS_OPTIONS[name]
        self.mounted = False
        self.a = self.state / "mnt-a" / "queues"
        self.b = self.state / "mnt-b" / "queues"

    def sshfs_pids(self) -> list[int]:
        """The sshfs processes serving mount A and mount B, as the harness recorded them."""
        for line in (self.state / "env").read_text().splitlines():
            if line.startswith("SSHFS_PIDS="):
                return [int(pid) for pid in line.split("=", 1)[1].strip("'").split()]
        return []

    def mount(self) -> tuple[Path, Path]:
        if os.geteuid() != 0:
            raise OSError("the sshfs harness needs root (a private sshd and FUSE mounts)")
        self.mounted = True  # from the first step on: a half-made mount is undone too
        try:
            out = run_command([str(HARNESS / "mount-shared.sh"), str(self.state)], check=False,
                              capture_output=True, env={**os.environ, "SSHFS_OPTS": self.options})
        except BaseException:  # Ctrl-C while mounting
            self.remove()
            raise
        if out.returncode != 0:
            self.remove()
            raise OSError((out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1])
        self.a.mkdir()
        return self.a, self.b

    def remove(self) -> None:
        if self.mounted:
            run_command([str(HARNESS / "umount-shared.sh"), str(self.state)], check=False, capture_output=True,
                        env={**os.environ, "PURGE": "1"})
        self.mounted = False


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
        out = run_command(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"], check=False, capture_output=True)
        erl = run_command(["dpkg-query", "-W", "-f", "${Version}", "erlang-base"], check=False, capture_output=True)
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
