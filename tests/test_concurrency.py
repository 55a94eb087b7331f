"""Real processes racing on one real directory: nothing lost, nothing claimed twice, order kept."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ddmq import Broker
from tests.support.swarm import check_no_loss_no_overlap, run_swarm, worker

PUBLISHERS, PER_PUBLISHER, CONSUMERS = 3, 1000, 4


def swarm_on_one_root(tmp_path: Path, lease: float, hold: float):
    """3 publishers, 4 consumers and 1 cleaner at once (8 processes) on one queue."""
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q", clean_interval=0, durable=False)
    published, events = run_swarm(tmp_path, [root], PUBLISHERS, PER_PUBLISHER, CONSUMERS, lease, hold)
    assert len(published) == PUBLISHERS * PER_PUBLISHER
    return check_no_loss_no_overlap(root, published, events)


@pytest.mark.slow
def test_many_processes_long_leases_each_message_once(tmp_path: Path) -> None:
    claims = swarm_on_one_root(tmp_path, lease=60, hold=0)
    assert max(claims.values()) == 1, "with long leases no message is delivered twice"


@pytest.mark.slow
def test_many_processes_short_leases_requeue_races(tmp_path: Path) -> None:
    claims = swarm_on_one_root(tmp_path, lease=0.02, hold=0.03)
    redelivered = sum(1 for n in claims.values() if n > 1)
    assert redelivered > 0, "short leases must actually have caused requeues"


def test_priority_and_fifo_across_publisher_processes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q", durable=False)
    procs = [
        subprocess.Popen(worker("publish", root, "q", f"p{i}", 300, tmp_path / f"p{i}.log",
                                "--priorities", "5,1,9"))
        for i in range(3)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    got = Broker(root).consume("q", n=10_000, ack=True)
    assert len(got) == 900
    keys = [(m.priority, m.published) for m in got]
    assert keys == sorted(keys), "priority first, then publish time"
    assert [m.priority for m in got] == [1] * 300 + [5] * 300 + [9] * 300
    for tag in ("p0", "p1", "p2"):
        for prio in (1, 5, 9):
            seq = [int(m.message.split(":")[1]) for m in got if m.message.startswith(tag + ":") and m.priority == prio]
            assert seq == sorted(seq), f"{tag} priority {prio} kept its publish order"
