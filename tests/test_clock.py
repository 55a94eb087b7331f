"""Clock skew: a client whose clock is minutes off must not break other clients' leases.

The skewed client is a real process with libfaketime preloaded (its
``time.time()`` is shifted; file timestamps still come from the kernel, as on
a real node with a wrong clock). Without libfaketime these tests skip, unless
DDMQ_REQUIRE_FAKETIME=1 (set by CI) makes that a failure.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddmq import Broker
from tests.support.capability import need

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SRC = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _need_faketime() -> None:
    need("faketime", None if LIBFAKETIME.exists() else f"{LIBFAKETIME} is missing (apt-get install faketime)")


def skewed(root: Path, seconds: int, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` (with ``b``, a Broker on ``root``) in a process whose clock is off by ``seconds``."""
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"{seconds:+d}", "NO_FAKE_STAT": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1", "PYTHONPATH": str(SRC)}
    script = f"import time\nfrom ddmq import Broker\nb = Broker({str(root)!r})\nassert abs(time.time() - {time.time()} - {seconds}) < 60\n{code}"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize("skew", [+600, -600])
def test_skewed_cleaner_neither_steals_live_leases_nor_keeps_expired_ones(b: Broker, root: Path, skew: int) -> None:
    b.create_queue("q")
    b.publish("q", "live")
    b.publish("q", "expired")
    [live] = b.consume("q", lease=60)
    [expired] = b.consume("q", lease=0.1)
    time.sleep(0.2)
    result = skewed(root, skew, "r = b.clean('q'); print(r.requeued)")
    assert result.stdout.split() == ["1"], "only the expired lease is requeued"
    assert "clock differs from the file server's" in result.stderr
    b.ack(live)
    assert [m.message for m in b.consume("q")] == ["expired"]


@pytest.mark.parametrize("skew", [+600, -600])
def test_leases_taken_by_a_skewed_client_last_as_long_as_asked(b: Broker, root: Path, skew: int) -> None:
    b.create_queue("q")
    b.publish("q", "x")
    skewed(root, skew, "[m] = b.consume('q', lease=3)")
    assert b.clean("q").requeued == 0, "the lease is still live on the server's clock"
    time.sleep(3.5)
    assert b.clean("q").requeued == 1, "and expired on the server's clock"


def test_small_skew_is_tolerated_without_correction(b: Broker, root: Path) -> None:
    b.create_queue("q")
    result = skewed(root, 1, "b.publish('q', 'x'); b.consume('q', lease=30)")
    assert "clock differs" not in result.stderr
