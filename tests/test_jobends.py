"""Job end records: exactly one terminal event per job, whoever publishes first; its state in one lookup."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddmq import Broker, ForeignFiles, StorageError, UsageError
from ddmq.layout import job_key


@pytest.fixture
def q(b: Broker) -> str:
    b.create_queue("events")
    return "events"


def test_the_first_end_is_published_and_every_later_one_is_not(b: Broker, q: str, root: Path) -> None:
    key = job_key("linux", "1234_7")
    first = b.publish_job_end(q, key, {"job_id": "1234_7", "state": "FAILED", "source": "trap"})
    assert first is not None
    assert b.publish_job_end(q, key, {"job_id": "1234_7", "state": "NODE_FAIL", "source": "scheduler"}) is None
    [event] = b.consume(q)
    assert event.id == first.id and event.message["source"] == "trap"
    b.ack(event)
    recorded = b.job_end(q, key)  # the record outlives the consumed message
    assert recorded is not None and recorded.id == first.id and recorded.message["state"] == "FAILED"
    assert b.job_ends(q) == [key]
    assert b.job_end(q, job_key("linux", "99")) is None
    assert not list((root / q / "tmp").iterdir())


def test_racing_publishers_on_many_processes_record_one_end(root: Path, q: str) -> None:
    code = ("import sys; from ddmq import Broker; b = Broker(sys.argv[1]); "
            "print('won' if b.publish_job_end('events', 'c.42', {'by': sys.argv[2]}) else 'lost')")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(i)], stdout=subprocess.PIPE, text=True)
             for i in range(8)]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["lost"] * 7 + ["won"]
    b = Broker(root)
    assert len(b.consume("events", n=10)) == 1


def test_a_queue_made_before_job_ends_gets_its_jobs_directory_on_first_use(b: Broker, q: str, root: Path) -> None:
    (root / q / "jobs").rmdir()
    fresh = Broker(root)
    assert fresh.job_end(q, "c.1") is None and not (root / q / "jobs").exists()  # a read makes nothing
    assert fresh.publish_job_end(q, "c.1", "done") is not None
    assert (root / q / "jobs" / "c.1.end").is_file()


def test_a_crash_between_record_and_publish_is_rolled_forward(b: Broker, q: str, root: Path, mocker) -> None:
    from ddmq import jobends

    mocker.patch("ddmq.atomic.rename_private", side_effect=SystemExit("killed after the link"))
    with pytest.raises(SystemExit):
        b.publish_job_end(q, "c.7", "ended")
    mocker.stopall()
    [left] = list((root / q / "tmp").iterdir())
    assert left.stat().st_nlink == 2 and b.consume(q) == []
    assert b.job_end(q, "c.7").message == "ended"  # the end is recorded: jobstate knows it already
    old = time.time() - jobends.ROLL_FORWARD_AFTER - 1
    os.utime(left, (old, old))
    b.clean(q)
    [event] = b.consume(q)
    assert event.message == "ended" and not list((root / q / "tmp").iterdir())


def test_files_in_jobs_that_ddmq_did_not_write_are_foreign(b: Broker, q: str, root: Path) -> None:
    (root / q / "jobs" / "notes.txt").write_text("mine")
    with pytest.raises(ForeignFiles, match="jobs/notes.txt"):
        b.delete_queue(q)


@pytest.mark.parametrize("bad", ["", "../x", ".hidden", "a/b", "x" * 201, "job id"])
def test_job_keys_are_checked(b: Broker, q: str, bad: str) -> None:
    with pytest.raises(UsageError, match="invalid job"):
        b.publish_job_end(q, bad, "x")
    with pytest.raises(UsageError, match="invalid job"):
        b.job_end(q, bad)


LOOKUP = """
import sys
from ddmq import Broker
b = Broker(sys.argv[1])
b.job_end('events', 'c.1')  # warm: the root and the queue are open
counts = {}
def hook(event, args):
    if event.startswith(("os.", "open")):
        counts[event] = counts.get(event, 0) + 1
sys.addaudithook(hook)
b.job_end('events', 'c.1')
print(__import__('json').dumps(counts))
"""


def test_a_job_end_lookup_costs_the_same_whatever_the_queue_holds(tmp_path: Path) -> None:
    """Filesystem calls (Python's audit events) of one lookup with 10 and with 3 000 messages queued."""
    costs = []
    for n in (10, 3000):
        root = tmp_path / f"r{n}"
        b = Broker(root, create=True)
        b.create_queue("events")
        b.publish_many("events", range(n), durable=False)
        b.publish_job_end("events", "c.1", "done", durable=False)
        out = subprocess.run([sys.executable, "-c", LOOKUP, str(root)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        costs.append(json.loads(out.stdout))
    assert costs[0] == costs[1] and "os.listdir" not in costs[0] and "os.scandir" not in costs[0], costs


def test_a_link_refused_with_eperm_is_a_lost_race_only_if_the_record_exists(b: Broker, q: str, root: Path,
                                                                             mocker) -> None:
    """sshfs reports the loser of a link race as EPERM; a filesystem without hard links says EPERM too."""
    import errno

    b.publish_job_end(q, "c.1", "first")
    mocker.patch("os.link", side_effect=PermissionError(errno.EPERM, "Operation not permitted"))
    assert b.publish_job_end(q, "c.1", "second") is None
    from ddmq import StorageError

    with pytest.raises(StorageError, match="does not allow hard links"):
        b.publish_job_end(q, "c.2", "first")
    assert not list((root / q / "tmp").iterdir()) and len(b.consume(q, n=5)) == 1


def test_a_failed_publish_after_the_record_is_rolled_forward_not_lost(b: Broker, q: str, root: Path, mocker) -> None:
    """The record is the arbiter: once linked, its event must reach the queue even if the rename fails."""
    from ddmq import jobends

    mocker.patch("ddmq.atomic.os.rename", side_effect=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StorageError, match="the end of job c.8 is recorded"):
        b.publish_job_end(q, "c.8", "ended")
    mocker.stopall()
    assert b.publish_job_end(q, "c.8", "again") is None  # recorded: a retry publishes nothing
    [left] = list((root / q / "tmp").iterdir())
    old = time.time() - jobends.ROLL_FORWARD_AFTER - 1
    os.utime(left, (old, old))
    b.clean(q)
    assert [m.message for m in b.consume(q)] == ["ended"]
