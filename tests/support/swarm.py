"""Many worker processes on one queue, and the checks that nothing was lost or held twice.

Shared by the local-disk concurrency tests and the two-mount (sshfs) tests,
where each process reaches the queue through one of several paths (mounts).
"""
from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

from ddmq import Broker


def worker(*args: object) -> list[str]:
    """The command line of one worker process (see tests.support.workers); needs the checkout on PYTHONPATH."""
    return [sys.executable, "-m", "tests.support.workers", *map(str, args)]


def read_log(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def run_swarm(logs: Path, roots: list[Path], publishers: int, per_publisher: int, consumers: int,
              lease: float, hold: float) -> tuple[set[str], list[list[str]]]:
    """Publishers, consumers and one cleaner per root, all at once, on queue ``q``.

    Process ``i`` of each kind uses ``roots[i % len(roots)]``. Returns the
    bodies confirmed published and every consumer event.
    """
    stop = logs / "stop"
    consumer_procs = [
        subprocess.Popen(worker("consume", roots[i % len(roots)], "q", logs / f"c{i}.log", stop,
                                "--lease", lease, "--hold", hold, "--batch", 1 + i % 3))
        for i in range(consumers)
    ]
    cleaners = [subprocess.Popen(worker("clean", root, "q", stop)) for root in roots]
    publisher_procs = [
        subprocess.Popen(worker("publish", roots[i % len(roots)], "q", f"p{i}", per_publisher,
                                logs / f"p{i}.log"))
        for i in range(publishers)
    ]
    for p in publisher_procs:
        assert p.wait(timeout=600) == 0
    stop.touch()
    for p in consumer_procs + cleaners:
        assert p.wait(timeout=600) == 0
    published = {line[1] for i in range(publishers) for line in read_log(logs / f"p{i}.log") if line[0] == "ok"}
    events = [line for i in range(consumers) for line in read_log(logs / f"c{i}.log")]
    return published, events


def check_no_loss_no_overlap(root: Path, published: set[str], events: list[list[str]]) -> collections.Counter:
    """Every message acked exactly once, never held by two consumers at once, queue empty.

    Returns how often each message was claimed.
    """
    acks = collections.Counter(e[1] for e in events if e[0] == "ack")
    assert set(acks) == published, "every published message is acked"
    assert max(acks.values()) == 1, "no message is acked twice"
    assert not held_twice(events), "no message is held by two consumers at once"
    assert Broker(root).counts("q") == {"ready": 0, "work": 0, "dead": 0}
    return collections.Counter(e[1] for e in events if e[0] == "claim")


def held_twice(events: list[list[str]]) -> list[str]:
    """Bodies that two consumers held at the same time (must be none).

    A claim holds the message from the instant of the claim (logged by the
    worker) until its ack or its lease expiry, whichever is first; the next
    claim of the same message must start after that.
    """
    claims: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    ends = {(e[1], e[2]): int(e[3]) for e in events if e[0] == "ack"}
    for e in events:
        if e[0] == "claim":
            start, expires = int(e[3]), int(e[4])
            claims[e[1]].append((start, min(expires, ends.get((e[1], e[2]), expires))))
    overlapping = []
    for body, spans in claims.items():
        spans.sort()
        if any(next_start < end for (_, end), (next_start, _) in zip(spans, spans[1:])):
            overlapping.append(body)
    return overlapping
