"""Real users sharing a queue through a Unix group, for the multi-user and hostile co-tenant tests.

Accounts and a group are created (as root), and a copy of the ddmq source is
put where every account can read it: the checkout may sit in a home no other
user can enter. Without root the tests that use ``shared`` skip, unless
DDMQ_REQUIRE_ROOT=1 (set by CI) makes that a failure.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from ddmq import Broker
from tests.support.capability import need

SRC = Path(__file__).resolve().parents[2] / "ddmq"
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
        (root / "ddmq.yaml").write_text("layout: 2\nmode: 0660\n")
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def user_env(base: Path) -> dict[str, str]:
    """The environment of a command run as another user with ``SYSTEM_PYTHON -S``.

    -S keeps out site-packages (where an editable install of this checkout
    may sit); ddmq comes from the copy in ``base``, PyYAML from Debian's
    python3-yaml.
    """
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{base / 'src'}:/usr/lib/python3/dist-packages",
            "HOME": str(base), "LANG": "C.UTF-8"}
