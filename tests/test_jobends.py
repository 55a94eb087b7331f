"""Job end records: exactly one terminal event per job, whoever publishes first; its state in one lookup."""
from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddmq import Broker, ForeignFiles, StorageError, UsageError
from ddmq.layout import job_key, job_shard


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
    assert recorded.queue == q  # the queue it was published to, not the directory above its shard
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
    assert (root / q / "jobs" / job_shard("c.1") / "c.1.end").is_file()


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


# ------------------------------------------------------------------ shards of jobs/
# Two keys whose records fall in different shards (the values pin the hash:
# CRC-32, the same for every client, not Python's per-process hash()).
KEY_A, SHARD_A = "linux.1234_7", "9f"
KEY_B, SHARD_B = "c.1", job_shard("c.1")


def test_the_shard_of_a_key_is_the_low_byte_of_its_crc32() -> None:
    from binascii import crc32

    keys = [KEY_A, KEY_B, "x", "9" * 200, *(job_key(f"c{i}", f"{i * 7919}_{i}") for i in range(2000))]
    assert [job_shard(key) for key in keys] == ["%02x" % (crc32(key.encode()) & 0xFF) for key in keys]
    assert job_shard(KEY_A) == SHARD_A
    assert subprocess.run([sys.executable, "-c", f"from ddmq.layout import job_shard; print(job_shard({KEY_A!r}))"],
                          env={**os.environ, "PYTHONHASHSEED": "1"}, capture_output=True, text=True,
                          check=True).stdout == SHARD_A + "\n"
    assert SHARD_A != SHARD_B


def test_a_million_jobs_leave_no_directory_of_jobs_over_ten_thousand_entries() -> None:
    from collections import Counter

    shards = Counter(job_shard(job_key("linux", str(job_id))) for job_id in range(1_000_000))
    assert len(shards) == 256 and max(shards.values()) < 10_000 * 0.5, shards.most_common(3)


def test_each_record_is_in_its_keys_shard(b: Broker, q: str, root: Path) -> None:
    for key in (KEY_A, KEY_B):
        assert b.publish_job_end(q, key, key) is not None
    jobs = root / q / "jobs"
    assert sorted(os.listdir(jobs)) == sorted([SHARD_A, SHARD_B])
    assert os.listdir(jobs / SHARD_A) == [f"{KEY_A}.end"] and os.listdir(jobs / SHARD_B) == [f"{KEY_B}.end"]
    assert b.job_end(q, KEY_A).message == KEY_A and b.job_end(q, KEY_B).message == KEY_B
    assert b.job_ends(q) == sorted([KEY_A, KEY_B])


def test_a_lookup_in_a_shard_nobody_wrote_to_finds_nothing_and_makes_nothing(b: Broker, q: str, root: Path) -> None:
    b.publish_job_end(q, KEY_A, "ended")
    assert b.job_end(q, KEY_B) is None and b.job_ends(q) == [KEY_A]
    assert os.listdir(root / q / "jobs") == [SHARD_A]


def test_a_new_shard_is_made_with_the_queue_mode_and_durably(root: Path, mocker) -> None:
    from ddmq import atomic

    b = Broker(root, create=True)
    b.create_queue("events", mode=0o660)
    synced = mocker.spy(atomic, "fsync_dir")
    b.publish_job_end("events", KEY_A, "first", durable=True)
    jobs = root / "events" / "jobs"
    assert (jobs / SHARD_A).stat().st_mode & 0o7777 == 0o2770
    paths = [call.args[0].path for call in synced.call_args_list]
    assert str(jobs) in paths and str(jobs / SHARD_A) in paths  # the shard's entry in jobs/, the record in it
    synced.reset_mock()
    same_shard = next(key for key in (f"c.{i}" for i in range(10_000)) if job_shard(key) == SHARD_A)
    b.publish_job_end("events", same_shard, "second", durable=True)
    paths = [call.args[0].path for call in synced.call_args_list]
    assert paths[0] == str(jobs / SHARD_A) and str(jobs) not in paths  # the shard is there: jobs/ is not synced
    assert paths[-1].startswith(str(root / "events" / "ready" / "")), "then the event's slot of ready/"


def test_a_shard_made_under_a_private_umask_has_the_bits_of_jobs(b: Broker, q: str, root: Path) -> None:
    """In a queue without ``mode`` the umask decides, but the creator's: a member whose umask is 077 must not
    make a shard only it can enter (the others' job ends in that shard could not be recorded)."""
    b.publish_job_end(q, KEY_B, "made by the queue's creator")
    old = os.umask(0o077)
    try:
        b.publish_job_end(q, KEY_A, "first in its shard")
    finally:
        os.umask(old)
    jobs = root / q / "jobs"
    assert (jobs / SHARD_A).stat().st_mode & 0o7777 == jobs.stat().st_mode & 0o7777 != 0o700


@pytest.mark.parametrize("planted", ["link", "file"])
def test_a_link_or_file_in_a_shards_place_is_refused_and_nothing_is_written_outside(
        b: Broker, q: str, root: Path, tmp_path: Path, planted: str) -> None:
    """A member of the group puts a link to somebody's directory (or a file) where a shard will be made."""
    from ddmq import StorageError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shard = root / q / "jobs" / SHARD_A
    if planted == "link":
        shard.symlink_to(elsewhere, target_is_directory=True)
    else:
        shard.write_text("not a directory")
    for attempt in (lambda: b.publish_job_end(q, KEY_A, "ended"), lambda: b.job_end(q, KEY_A), lambda: b.job_ends(q)):
        with pytest.raises(StorageError, match=f"refusing to use .*jobs/{SHARD_A}: it is not a directory ddmq made"):
            attempt()
    assert not list(elsewhere.iterdir()) and not list((root / q / "tmp").iterdir()) and b.consume(q) == []
    assert b.publish_job_end(q, KEY_B, "another shard") is not None  # the rest of jobs/ works


def foreign_listed(b: Broker, q: str) -> set[str]:
    """The paths ``delete`` refuses to remove without force, from its one-line error."""
    with pytest.raises(ForeignFiles) as refused:
        b.delete_queue(q)
    listed = re.search(r"did not write \((.*)\);", str(refused.value))
    assert listed, refused.value
    return set(listed[1].split(", "))


def test_a_file_in_a_shard_is_foreign_and_the_shards_are_not(b: Broker, q: str, root: Path) -> None:
    b.publish_job_end(q, KEY_A, "ended")
    b.publish_job_end(q, KEY_B, "ended")
    jobs = root / q / "jobs"
    (jobs / SHARD_A / "notes.txt").write_text("mine")
    (jobs / SHARD_B / "x").mkdir()
    os.link(jobs / SHARD_A / f"{KEY_A}.end", jobs / SHARD_B / f"{KEY_A}.end")  # a record ddmq would never put there
    (jobs / "zz").mkdir()  # not a shard's name
    (jobs / "0a").write_text("a file where a shard would be")
    assert foreign_listed(b, q) == {f"jobs/{SHARD_A}/notes.txt", f"jobs/{SHARD_B}/x", f"jobs/{SHARD_B}/{KEY_A}.end",
                                    "jobs/zz", "jobs/0a"}
    for path in (jobs / SHARD_A / "notes.txt", jobs / SHARD_B / f"{KEY_A}.end", jobs / "0a"):
        path.unlink()
    for path in (jobs / SHARD_B / "x", jobs / "zz"):
        path.rmdir()
    b.reconcile_due(q, 60)  # jobs/.reconciled: ddmq's, as every hidden name
    b.delete_queue(q)
    assert not (root / q).exists()


def test_a_shard_that_cannot_be_made_fails_in_one_error_and_leaves_nothing(b: Broker, q: str, root: Path,
                                                                          mocker) -> None:
    import errno

    from ddmq import StorageError

    mocker.patch("os.mkdir", side_effect=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(StorageError, match=f"(?i)jobs/{SHARD_A}: no space left on device"):
        b.publish_job_end(q, KEY_A, "ended")
    mocker.stopall()
    assert not list((root / q / "tmp").iterdir()) and b.consume(q) == [] and b.job_end(q, KEY_A) is None
    assert b.publish_job_end(q, KEY_A, "ended") is not None


def test_a_shard_made_by_another_client_meanwhile_is_used(b: Broker, q: str, root: Path, mocker) -> None:
    """Two first ends in one shard at once: one mkdir fails with EEXIST, and its publisher goes on."""
    real_mkdir = os.mkdir

    def another_client_first(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, mode, dir_fd=dir_fd)
        raise FileExistsError(17, "File exists", name)

    mocker.patch("os.mkdir", side_effect=another_client_first)
    assert b.publish_job_end(q, KEY_A, "ended") is not None
    mocker.stopall()
    assert b.job_end(q, KEY_A).message == "ended"


def test_a_shard_swapped_for_a_link_between_mkdir_and_open_is_refused(b: Broker, q: str, root: Path,
                                                                      tmp_path: Path, mocker) -> None:
    from ddmq import StorageError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    real_mkdir = os.mkdir

    def swapped(name, mode=0o777, *, dir_fd=None):
        real_mkdir(name, mode, dir_fd=dir_fd)
        os.rmdir(name, dir_fd=dir_fd)
        os.symlink(elsewhere, name, dir_fd=dir_fd)

    mocker.patch("os.mkdir", side_effect=swapped)
    with pytest.raises(StorageError, match="refusing to use"):
        b.publish_job_end(q, KEY_A, "ended")
    assert not list(elsewhere.iterdir()) and not list((root / q / "tmp").iterdir())
