"""A queue shared by a Unix group: two members use it, an outsider can do nothing.

Real users and a real group are created (as root) and each step runs as one
of them with the system Python. Without root these tests skip, unless
DDMQ_REQUIRE_ROOT=1 (set by CI) makes that a failure.
"""
from __future__ import annotations

import grp
import shutil
import stat
import subprocess
from pathlib import Path

from ddmq import Broker
from tests.support.multiuser import GROUP, MEMBERS, OUTSIDER, SYSTEM_PYTHON, user_env


def as_user(user: str, base: Path, code: str) -> subprocess.CompletedProcess:
    script = f"from ddmq import Broker\nb = Broker({str(base / 'root')!r})\n{code}"
    return subprocess.run([shutil.which("runuser") or "runuser", "-u", user, "--", SYSTEM_PYTHON, "-S", "-c", script],
                          env=user_env(base), capture_output=True, text=True, timeout=60)


def test_two_group_members_share_a_queue(shared: Path) -> None:
    a, b = MEMBERS
    r = as_user(a, shared, "b.create_queue('jobs'); b.publish('jobs', 'from a')")
    assert r.returncode == 0, r.stderr
    r = as_user(b, shared, "[m] = b.consume('jobs'); b.ack(m); print(m.message); b.publish('jobs', 'from b')")
    assert (r.returncode, r.stdout.strip()) == (0, "from a"), r.stderr
    r = as_user(a, shared, "[m] = b.consume('jobs', lease=0.01); import time; time.sleep(0.05); print(m.message)")
    assert (r.returncode, r.stdout.strip()) == (0, "from b"), r.stderr
    r = as_user(b, shared, "print(b.clean('jobs').requeued); [m] = b.consume('jobs', ack=True)")
    assert (r.returncode, r.stdout.strip()) == (0, "1"), r.stderr
    gid = grp.getgrnam(GROUP).gr_gid
    for path in (shared / "root" / "jobs").rglob("*"):
        st = path.lstat()
        assert st.st_gid == gid, f"{path} lost the group"
        expected = 0o2770 if path.is_dir() else 0o660
        assert stat.S_IMODE(st.st_mode) == expected, f"{path} has mode {oct(st.st_mode)}"


def test_outsider_can_neither_read_nor_write(shared: Path) -> None:
    r = as_user(MEMBERS[0], shared, "b.create_queue('private', exist_ok=True); b.publish('private', 'secret')")
    assert r.returncode == 0, r.stderr
    for code in ("b.publish('private', 'x')", "print(b.peek('private'))", "b.consume('private')"):
        r = as_user(OUTSIDER, shared, code)
        assert r.returncode != 0
        assert "permission denied" in r.stderr.lower()
        assert "secret" not in r.stdout
    assert Broker(shared / "root").counts("private") == {"ready": 1, "work": 0, "dead": 0}


def test_group_members_record_job_ends_in_a_shard_either_of_them_made(shared: Path) -> None:
    """The first end in a shard makes it; it must take the group and the queue's mode, or the next member's fails."""
    from ddmq.layout import job_shard

    a, b = MEMBERS
    first = "c.1"
    second = next(key for key in (f"c.{i}" for i in range(2, 10_000)) if job_shard(key) == job_shard(first))
    r = as_user(a, shared, f"b.create_queue('ends', exist_ok=True); print(b.publish_job_end('ends', {first!r}, 'a'))")
    assert r.returncode == 0 and r.stdout.strip() != "None", r.stderr
    r = as_user(b, shared, f"print(b.publish_job_end('ends', {second!r}, 'b') is not None, "
                           f"b.job_end('ends', {first!r}).message)")
    assert (r.returncode, r.stdout.strip()) == (0, "True a"), r.stderr
    shard = shared / "root" / "ends" / "jobs" / job_shard(first)
    st = shard.lstat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (grp.getgrnam(GROUP).gr_gid, 0o2770)
