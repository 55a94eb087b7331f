"""A queue shared by a Unix group: two members use it, an outsider can do nothing.

Real users and a real group are created (as root) and each step runs as one
of them with the system Python. Without root these tests skip, unless
DDMQ_REQUIRE_ROOT=1 (set by CI) makes that a failure.
"""
from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from ddmq import Broker
from support.capability import need

SRC = Path(__file__).resolve().parent.parent / "ddmq"
GROUP, MEMBERS, OUTSIDER = "ddmqtest", ("ddmqtest_a", "ddmqtest_b"), "ddmqtest_c"
SYSTEM_PYTHON = "/usr/bin/python3"


def _ensure_accounts() -> None:
    if subprocess.run(["getent", "group", GROUP], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", GROUP], check=True)
    for user in (*MEMBERS, OUTSIDER):
        if subprocess.run(["getent", "passwd", user], capture_output=True).returncode != 0:
            extra = ["-G", GROUP] if user in MEMBERS else []
            subprocess.run(["useradd", "-M", "-s", "/bin/sh", *extra, user], check=True)


@pytest.fixture(scope="module")
def shared() -> Iterator[Path]:
    """A directory everyone can enter, holding a copy of ddmq and a group-shared root."""
    missing = [c for c in ("useradd", "groupadd", "runuser") if shutil.which(c) is None]
    reason = ("needs root" if os.geteuid() != 0 else f"missing {missing}" if missing
              else None if os.path.exists(SYSTEM_PYTHON) else f"no {SYSTEM_PYTHON}")
    need("root", reason and f"the multi-user tests cannot run: {reason}")
    _ensure_accounts()
    base = Path(tempfile.mkdtemp(prefix="ddmq-multiuser-", dir="/tmp"))
    try:
        base.chmod(0o755)
        shutil.copytree(SRC, base / "src" / "ddmq", ignore=shutil.ignore_patterns("__pycache__"))
        for path in (base / "src").rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        (base / "src").chmod(0o755)
        root = base / "root"
        root.mkdir()
        shutil.chown(root, group=GROUP)
        root.chmod(0o2770)  # the recommended setup, see README
        Broker(root, create=True)
        (root / "ddmq.yaml").write_text("mode: 0660\n")
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_user(user: str, base: Path, code: str) -> subprocess.CompletedProcess:
    script = f"from ddmq import Broker\nb = Broker({str(base / 'root')!r})\n{code}"
    # -S: no site-packages (where an editable install of this checkout may sit);
    # PyYAML comes from Debian's python3-yaml instead.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{base / 'src'}:/usr/lib/python3/dist-packages",
           "HOME": str(base), "LANG": "C.UTF-8"}
    return subprocess.run([shutil.which("runuser") or "runuser", "-u", user, "--", SYSTEM_PYTHON, "-S", "-c", script],
                          env=env, capture_output=True, text=True, timeout=60)


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
