"""Shared fixtures: every test gets its own root on the local disk."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from ddmq import Broker
from tests.support.multiuser import shared  # noqa: F401 - a fixture: a root shared by real users
from tests.support.slurm import accounting, slurm  # noqa: F401 - fixtures: the real SLURM (with accounting), else skip

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def b(root: Path) -> Broker:
    return Broker(root, create=True)


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may touch the real ~/.ddmq or inherit a DDMQ_ROOT."""
    monkeypatch.delenv("DDMQ_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    src = str(TESTS.parent)
    monkeypatch.setenv("PYTHONPATH", src + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture
def restore_signals():
    """Commands' main() install SIGINT/SIGTERM handlers (and may block them): give the test process its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
