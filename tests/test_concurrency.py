"""Real processes racing on one real directory: nothing lost, nothing claimed twice, order kept."""
from __future__ import annotations

import collections
import subprocess
from pathlib import Path

import pytest

from ddmq import Broker

PUBLISHERS, PER_PUBLISHER, CONSUMERS = 3, 1000, 4


def read_log(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def run_swarm(tmp_path: Path, worker_cmd, lease: float, hold: float, clean_interval: float):
    """3 publishers, 4 consumers and 1 cleaner at once (8 processes) on one queue."""
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q", clean_interval=clean_interval, durable=False)
    stop = tmp_path / "stop"
    consumers = [
        subprocess.Popen(worker_cmd("consume", root, "q", tmp_path / f"c{i}.log", stop,
                                    "--lease", lease, "--hold", hold, "--batch", 1 + i % 3))
        for i in range(CONSUMERS)
    ]
    cleaner = subprocess.Popen(worker_cmd("clean", root, "q", stop))
    publishers = [
        subprocess.Popen(worker_cmd("publish", root, "q", f"p{i}", PER_PUBLISHER, tmp_path / f"p{i}.log"))
        for i in range(PUBLISHERS)
    ]
    for p in publishers:
        assert p.wait(timeout=300) == 0
    stop.touch()
    for p in consumers + [cleaner]:
        assert p.wait(timeout=300) == 0
    published = {line[1] for i in range(PUBLISHERS) for line in read_log(tmp_path / f"p{i}.log") if line[0] == "ok"}
    events = [line for i in range(CONSUMERS) for line in read_log(tmp_path / f"c{i}.log")]
    return root, published, events


def check_no_loss_no_overlap(root: Path, published: set[str], events: list[list[str]]) -> collections.Counter:
    assert len(published) == PUBLISHERS * PER_PUBLISHER
    acks = collections.Counter(e[1] for e in events if e[0] == "ack")
    assert set(acks) == published, "every published message is acked"
    assert max(acks.values()) == 1, "no message is acked twice"
    # A claim holds the message from the claim until its ack/loss or lease expiry;
    # the next claim of the same message must start after that.
    claims: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    ends = {(e[1], e[2]): int(e[3]) for e in events if e[0] in ("ack", "lost")}
    for e in events:
        if e[0] == "claim":
            start, expires = int(e[3]), int(e[4])
            claims[e[1]].append((start, min(expires, ends.get((e[1], e[2]), expires))))
    for body, spans in claims.items():
        spans.sort()
        for (_, end), (next_start, _) in zip(spans, spans[1:]):
            assert next_start >= end, f"{body} was held by two consumers at once"
    assert Broker(root).counts("q") == {"ready": 0, "work": 0, "dead": 0}
    return collections.Counter(e[1] for e in events if e[0] == "claim")


@pytest.mark.slow
def test_many_processes_long_leases_each_message_once(tmp_path: Path, worker_cmd) -> None:
    root, published, events = run_swarm(tmp_path, worker_cmd, lease=60, hold=0, clean_interval=0)
    claims = check_no_loss_no_overlap(root, published, events)
    assert max(claims.values()) == 1, "with long leases no message is delivered twice"


@pytest.mark.slow
def test_many_processes_short_leases_requeue_races(tmp_path: Path, worker_cmd) -> None:
    root, published, events = run_swarm(tmp_path, worker_cmd, lease=0.02, hold=0.03, clean_interval=0)
    claims = check_no_loss_no_overlap(root, published, events)
    redelivered = sum(1 for n in claims.values() if n > 1)
    assert redelivered > 0, "short leases must actually have caused requeues"


def test_priority_and_fifo_across_publisher_processes(tmp_path: Path, worker_cmd) -> None:
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q", durable=False)
    procs = [
        subprocess.Popen(worker_cmd("publish", root, "q", f"p{i}", 300, tmp_path / f"p{i}.log",
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
