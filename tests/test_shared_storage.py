"""Two "nodes" sharing one queue directory through two independent sshfs mounts.

Each mount is its own SFTP session with its own client-side caches, which is
what two cluster nodes see of NFS or Lustre: stale listings, cached
attributes, and lost races reported as ENOENT (or EPERM). The harness is
``tests/harness/mount-shared.sh``; it needs root, sshd and sshfs. Without
them these tests skip, unless DDMQ_REQUIRE_FUSE=1 (set by CI) makes that a
failure.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from ddmq import Broker
from tests.support.capability import need
from tests.support.swarm import check_no_loss_no_overlap, run_swarm
from tests.support.queuefiles import ready_files

HARNESS = Path(__file__).resolve().parent / "harness"
BIN = Path(sys.executable).parent
CACHING = {
    "default-cache": "",
    "no-cache": "dir_cache=no,entry_timeout=0,attr_timeout=0,negative_timeout=0",
}


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (private sshd and FUSE mounts)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    missing = [c for c in ("sshfs", "fusermount3") if shutil.which(c) is None]
    if missing or not os.path.exists("/usr/sbin/sshd"):
        return f"missing {', '.join(missing) or 'sshd'} (tests/harness/install-system-deps.sh)"
    return None


@pytest.fixture(scope="module", params=sorted(CACHING))
def mounts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(node A's view, node B's view) of one exported directory."""
    reason = _unavailable()
    need("fuse", reason and f"the sshfs harness cannot run: {reason}")
    state = tmp_path_factory.mktemp(f"sshfs-{request.param}")
    env = {**os.environ, "SSHFS_OPTS": CACHING[request.param]}
    subprocess.run([str(HARNESS / "mount-shared.sh"), str(state)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    try:
        yield state / "mnt-a", state / "mnt-b"
    finally:
        subprocess.run([str(HARNESS / "umount-shared.sh"), str(state)], env={**os.environ, "PURGE": "1"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def roots(mounts: tuple[Path, Path], request: pytest.FixtureRequest) -> tuple[Path, Path, Path]:
    """A fresh ddmq root, as seen from A, from B, and on the server (no cache: the truth)."""
    name = f"root-{request.node.name}".replace("[", "-").replace("]", "")
    return mounts[0] / name, mounts[1] / name, mounts[0].parent / "export" / name


def test_publishers_and_consumers_on_both_nodes(roots: tuple[Path, Path], tmp_path: Path) -> None:
    a, b, server = roots
    Broker(a, create=True).create_queue("q", durable=False)
    published, events = run_swarm(tmp_path, [a, b], publishers=2, per_publisher=400, consumers=4,
                                  lease=120, hold=0)
    assert len(published) == 800
    claims = check_no_loss_no_overlap(server, published, events)
    assert max(claims.values()) == 1, "with long leases nothing is delivered twice"


def test_clean_on_both_nodes_while_leases_expire(roots: tuple[Path, Path], tmp_path: Path) -> None:
    a, b, server = roots
    Broker(a, create=True).create_queue("q", durable=False, clean_interval=0)
    published, events = run_swarm(tmp_path, [a, b], publishers=2, per_publisher=150, consumers=4,
                                  lease=0.05, hold=0.08)
    claims = check_no_loss_no_overlap(server, published, events)
    assert any(n > 1 for n in claims.values()), "leases must actually have expired and been requeued"


def test_order_is_kept_across_nodes(roots: tuple[Path, Path, Path]) -> None:
    a, b, _ = roots
    pa = Broker(a, create=True)
    pa.create_queue("q", durable=False)
    for i in range(50):
        pa.publish("q", f"a{i}", priority=5)
    pb = Broker(b)
    for i in range(50):
        pb.publish("q", f"b{i}", priority=1)
    got = Broker(b).consume("q", n=1000, ack=True)
    assert [m.message for m in got] == [f"b{i}" for i in range(50)] + [f"a{i}" for i in range(50)]


@pytest.mark.parametrize("backlog", [False, True], ids=["empty", "backlog"])
def test_wait_on_b_sees_a_publish_on_a(roots: tuple[Path, Path, Path], request: pytest.FixtureRequest,
                                       backlog: bool) -> None:
    a, b, _ = roots
    Broker(a, create=True).create_queue("events")
    if backlog:  # ready/'s tree already has the directories the next message goes into, cached by B's client
        Broker(a).publish("events", {"job_id": "6"})
    waiter = subprocess.Popen([str(BIN / "ddmq-wait"), "events", "--root", str(b), "--field", "job_id=7",
                               "--interval", "0.2", "--max-interval", "1", "--timeout", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # the waiter has listed the queue at least once: its cache is primed
    t0 = time.monotonic()
    subprocess.run([str(BIN / "ddmq-notify"), "events", "--root", str(a), "--field", "job_id=7"], check=True)
    out, err = waiter.communicate(timeout=90)
    latency = time.monotonic() - t0
    assert waiter.returncode == 0, err
    assert json.loads(out)["job_id"] == "7"
    print(f"\n[{request.node.callspec.id}] ddmq-wait on B saw the publish on A after {latency:.2f} s")
    # sshfs caches a directory listing for 20 s by default; an idle waiter refreshes
    # its client's view of ready/, and of the directories of its tree a publisher
    # may still write to, every second instead of waiting the cache out
    # (Queue.refresh_view). Figures: benchmarks/crossmount.py, docs/performance.md.
    assert latency < 10


def test_notify_on_a_dispatch_on_b(roots: tuple[Path, Path, Path], tmp_path: Path) -> None:
    a, b, server = roots
    Broker(a, create=True).create_queue("requests")
    for i in range(3):
        subprocess.run([str(BIN / "ddmq-notify"), "requests", f"req-{i}", "--root", str(a)], check=True)
    handled = tmp_path / "handled.txt"
    handler = f"{sys.executable} -c \"import sys; open({str(handled)!r}, 'a').write(sys.stdin.read() + chr(10))\""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        subprocess.run([str(BIN / "ddmq-dispatch"), "requests", "--root", str(b), "--handler", handler],
                       check=True)
        if handled.exists() and len(handled.read_text().split()) == 3:
            break
        time.sleep(1)
    assert sorted(handled.read_text().split()) == ["req-0", "req-1", "req-2"]
    assert Broker(server).counts("requests") == {"ready": 0, "work": 0, "dead": 0}


def test_job_end_published_from_both_nodes_at_once_is_recorded_once(roots: tuple[Path, Path, Path]) -> None:
    """The hard link that decides who publishes a job's end holds across two sshfs sessions."""
    a, b, server = roots
    Broker(a, create=True).create_queue("events")
    code = ("import sys; from ddmq import Broker; b = Broker(sys.argv[1]); "
            "won = [b.publish_job_end('events', f'c.{i}', sys.argv[2]) is not None for i in range(20)]; "
            "print(sum(won))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(node), str(node)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for node in (a, b, a, b)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    assert sum(int(out) for out, _ in outputs) == 20
    assert len(ready_files(server / "events" / "ready")) == 20
    assert sorted(Broker(server).job_ends("events")) == sorted(f"c.{i}" for i in range(20))
