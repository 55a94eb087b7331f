"""kill -9 at random instants, then recover: every published message is accounted for."""
from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ddmq import Broker
from tests.support.swarm import read_log, worker

LEASE = 0.3


def payload_bodies(root: Path, state: str) -> list[str]:
    """Bodies of the message files in one state directory (dead: only real messages)."""
    import json

    bodies = []
    for name in os.listdir(root / "q" / state):
        if name.endswith(".reason"):
            continue
        bodies.append(json.loads((root / "q" / state / name).read_text())["message"])
    return bodies


@pytest.mark.slow
def test_kill_9_publishers_and_consumers_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q", clean_interval=0.1, requeue_limit=50)
    stop = tmp_path / "never"
    logs = []
    for rnd in range(6):
        procs = []
        for i in range(2):
            log = tmp_path / f"r{rnd}p{i}.log"
            logs.append(log)
            procs.append(subprocess.Popen(
                worker("publish", root, "q", f"r{rnd}p{i}", 100_000, log,
                           "--priorities", "3,7", *(["--durable"] if i else []))))
        for i in range(3):
            log = tmp_path / f"r{rnd}c{i}.log"
            logs.append(log)
            procs.append(subprocess.Popen(
                worker("consume", root, "q", log, stop, "--lease", LEASE, "--hold", 0.005)))
        # Let every publisher get going (interpreter start-up is slow on a loaded machine).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
            sum(e[0] == "ok" for e in read_log(log)) >= 20 for log in logs[-5:-3]
        ):
            time.sleep(0.05)
        for p in rng.sample(procs, len(procs)):
            time.sleep(rng.uniform(0, 0.15))
            p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait()

    events = [line for log in logs for line in read_log(log)]
    confirmed = {e[1] for e in events if e[0] == "ok"}
    attempted = {e[1] for e in events if e[0] == "try"}
    claimed = {e[1] for e in events if e[0] == "claim"}
    acked = collections.Counter(e[1] for e in events if e[0] == "ack")
    assert len(confirmed) > 100, "the publishers got some work done before dying"
    assert claimed, "the consumers got some work done before dying"
    assert max(acked.values()) == 1

    # Recovery: leases expire, a client cleans, a consumer drains the queue.
    time.sleep(LEASE + 0.1)
    b = Broker(root)
    b.clean("q")
    assert os.listdir(root / "q" / "work") == []
    drained = [m.message for m in b.consume("q", n=10**6, ack=True)]
    dead = payload_bodies(root, "dead")
    remaining = collections.Counter(drained + dead)
    assert not remaining or max(remaining.values()) == 1, "no message exists twice"
    assert not set(drained + dead) - attempted, "nothing appears that nobody published"
    # Every confirmed publish was acked by a live consumer, claimed by a consumer
    # that may have died before logging its ack, or is still in the queue.
    lost = confirmed - set(acked) - claimed - set(remaining)
    assert not lost, f"lost messages: {sorted(lost)[:10]}"
    assert not set(acked) & set(remaining), "an acked message came back"
    # Partial writes from killed publishers are never visible, and clean removes them once old.
    tmp = root / "q" / "tmp"
    for name in os.listdir(tmp):
        os.utime(tmp / name, (time.time() - 7200,) * 2)
    b.clean("q")
    assert [n for n in os.listdir(tmp)] == []


def test_crash_between_write_and_rename_leaves_no_visible_message(b: Broker, root: Path, mocker) -> None:
    b.create_queue("q")
    mocker.patch("ddmq.atomic.os.rename", side_effect=SystemExit("killed"))
    with pytest.raises(SystemExit):
        b.publish("q", "half")
    mocker.stopall()
    assert b.counts("q")["ready"] == 0 and b.consume("q") == []
    assert len(os.listdir(root / "q" / "tmp")) == 1  # the orphan, for clean to remove when old


def test_crash_after_claim_is_redelivered_after_lease(b: Broker, root: Path, mocker) -> None:
    b.publish("q", "x", create=True)
    mocker.patch("ddmq.transitions.load", side_effect=SystemExit("killed after claim"))
    with pytest.raises(SystemExit):
        b.consume("q", lease=0.05)
    mocker.stopall()
    assert b.counts("q") == {"ready": 0, "work": 1, "dead": 0}
    time.sleep(0.1)
    b.clean("q")
    [m] = Broker(root).consume("q")
    assert m.message == "x" and m.delivery_count == 2


def test_crash_during_dead_letter_keeps_reason_in_name(b: Broker, root: Path, mocker) -> None:
    b.publish("q", "x", create=True)
    [m] = b.consume("q")
    mocker.patch("ddmq.atomic.publish_file", side_effect=SystemExit("killed before the .reason file"))
    with pytest.raises(SystemExit):
        b.nack(m, requeue=False)
    mocker.stopall()
    [name] = os.listdir(root / "q" / "dead")
    assert ".rejected." in name and b.counts("q")["dead"] == 1
