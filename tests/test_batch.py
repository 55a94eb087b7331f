"""Batch publishing: one durability barrier per batch, `ddmq publish` with several messages and --lines,
and ddmq-dispatch's replies at the end of a run.

What a fault at each step of a batch leaves behind is tested with every
other transition in tests/test_faults.py (scenario ``publish_many``).
"""
from __future__ import annotations

import errno
import itertools
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddmq import Broker, PartlyPublished
from ddmq.queuedir import Queue
from tests.support.crashpoint import ALL_STEPS, Call, Injector

DDMQ = [sys.executable, "-m", "ddmq"]


def syncs(calls: list[Call], root: Path) -> list[str]:
    """The fsync and syncfs calls of a traced operation, as 'PRIM DIR' (the directory synced, or the file's).

    The directories of ready/'s tree are shown as ``ready/SLOT``, ``ready/BAND`` and ``ready/ERA``.
    """
    out = []
    for c in calls:
        if c.prim in ("fsync", "syncfs"):
            rel = os.path.relpath(c.path, os.path.realpath(root))
            rel = rel if c.prim == "syncfs" or os.path.isdir(c.path) else os.path.dirname(rel)
            queue, _, below = rel.partition("/ready/")
            out.append(f"{c.prim} {queue}/ready/{['ERA', 'BAND', 'SLOT'][below.count('/')]}" if below else
                       f"{c.prim} {rel}")
    return out


@pytest.fixture
def one_slot(mocker) -> None:
    """Publish times within one slot of ready/'s tree, whatever the machine's speed."""
    times = itertools.count((time.time_ns() >> 26) << 26)
    mocker.patch("ddmq.transitions.publish_time", side_effect=lambda: next(times))


def test_a_durable_batch_pays_one_barrier_and_one_directory_sync(b: Broker, root: Path, one_slot: None) -> None:
    b.create_queue("q")
    b.publish("q", "makes the slot")
    inj = Injector(root, ALL_STEPS)
    with inj.installed():
        published = b.publish_many("q", [f"m{i}" for i in range(50)])
    assert syncs(inj.calls, root) == ["syncfs q/tmp", "fsync q/ready/SLOT"]
    # the barrier comes before the first message becomes visible
    first_rename = next(i for i, c in enumerate(inj.calls) if c.prim == "rename")
    assert any(c.prim == "syncfs" for c in inj.calls[:first_rename])
    assert [m.message for m in b.consume("q", n=100, ack=True)[1:]] == [m.message for m in published]


def test_a_batch_that_makes_its_slot_makes_each_new_directory_durable(b: Broker, root: Path) -> None:
    b.create_queue("q")
    inj = Injector(root, ALL_STEPS)
    with inj.installed():
        b.publish_many("q", ["x", "y"])
    assert syncs(inj.calls, root)[:1] == ["syncfs q/tmp"]
    # each directory made, in its parent; then the renames into the slot
    assert syncs(inj.calls, root)[1:] in (
        ["fsync q/ready", "fsync q/ready/ERA", "fsync q/ready/BAND", "fsync q/ready/SLOT"],
        # (the two messages fell into two slots of one band)
        ["fsync q/ready", "fsync q/ready/ERA", "fsync q/ready/BAND", "fsync q/ready/BAND", "fsync q/ready/SLOT",
         "fsync q/ready/SLOT"])


def test_a_single_message_and_a_non_durable_batch_keep_their_own_syncs(b: Broker, root: Path, one_slot: None) -> None:
    b.create_queue("q")
    b.publish("q", "makes the slot")
    inj = Injector(root, ALL_STEPS)
    with inj.installed():
        b.publish_many("q", ["alone"])
    assert syncs(inj.calls, root) == ["fsync q/tmp", "fsync q/ready/SLOT"]  # no filesystem-wide sync for one
    inj = Injector(root, ALL_STEPS)
    with inj.installed():
        b.publish_many("q", ["x", "y"], durable=False)
    assert syncs(inj.calls, root) == []


def test_off_a_local_filesystem_a_batch_syncs_each_payload(b: Broker, root: Path, mocker, one_slot: None) -> None:
    """syncfs does not reach an sshfs server, and NFS flushes each file at close anyway: fsync each there."""
    b.create_queue("q")
    b.publish("q", "makes the slot")
    mocker.patch.object(Queue, "on_local_filesystem", return_value=False)
    inj = Injector(root, ALL_STEPS)
    with inj.installed():
        b.publish_many("q", ["x", "y", "z"])
    assert syncs(inj.calls, root) == ["fsync q/tmp"] * 3 + ["fsync q/ready/SLOT"]


def test_a_failed_barrier_publishes_nothing(b: Broker, root: Path, mocker) -> None:
    b.create_queue("q")
    inj = Injector(root, ALL_STEPS, at=lambda c, top: c.prim == "syncfs", action=errno.EIO)
    with inj.installed(mocker), pytest.raises(Exception) as raised:
        b.publish_many("q", ["x", "y"])
    assert "I/O error" in str(raised.value) and not isinstance(raised.value, PartlyPublished)
    assert b.counts("q")["ready"] == 0 and os.listdir(root / "q" / "tmp") == []


# ---------------------------------------------------------------- the CLI
def ddmq(root: Path, *args: str, stdin: str | bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([*DDMQ, "-r", str(root), *args], input=stdin if isinstance(stdin, bytes) else stdin.encode(),
                          capture_output=True, timeout=60)


def test_publish_several_messages_is_one_batch(b: Broker, root: Path) -> None:
    b.create_queue("q")
    done = ddmq(root, "publish", "q", "a", "b", "c")
    assert done.returncode == 0 and len(done.stdout.split()) == 3
    assert [m.message for m in b.consume("q", n=10)] == ["a", "b", "c"]


def test_publish_lines_in_batches_skips_empty_lines(b: Broker, root: Path) -> None:
    b.create_queue("q")
    lines = "".join(f"line {i}\n" if i % 7 else "\n" for i in range(1, 2501))
    done = ddmq(root, "publish", "q", "--lines", "--batch", "100", stdin=lines + "no newline at the end")
    assert done.returncode == 0, done.stderr
    want = [f"line {i}" for i in range(1, 2501) if i % 7] + ["no newline at the end"]
    ids = done.stdout.decode().split()
    got = b.consume("q", n=5000, ack=True)
    assert [m.message for m in got] == want and [m.id for m in got] == ids


def test_publish_lines_json(b: Broker, root: Path) -> None:
    b.create_queue("q")
    done = ddmq(root, "publish", "q", "--lines", "--json", stdin='{"n": 1}\n[2]\n"three"\n')
    assert done.returncode == 0
    assert [m.message for m in b.consume("q", n=10)] == [{"n": 1}, [2], "three"]


@pytest.mark.parametrize("args", [["--lines", "x"], ["--lines", "--batch", "0"]])
def test_publish_lines_usage_errors(b: Broker, root: Path, args: list[str]) -> None:
    b.create_queue("q")
    done = ddmq(root, "publish", "q", *args, stdin="a\n")
    assert done.returncode == 2 and done.stderr.decode().count("\n") == 1
    assert b.counts("q")["ready"] == 0


def test_a_bad_line_midway_says_what_was_published_and_where_to_resume(b: Broker, root: Path) -> None:
    b.create_queue("q")
    text = b"".join(b"ok %d\n" % i for i in range(1, 251)) + b"\xff bad\n" + b"after\n"
    done = ddmq(root, "publish", "q", "--lines", "--batch", "100", stdin=text)
    err = done.stderr.decode()
    assert done.returncode == 2 and err.count("\n") == 1, err
    assert "line 251 of stdin is not UTF-8" in err
    assert "200 message(s) were published, from input lines 1-200" in err and "tail -n +201" in err
    # resuming where it says (with the bad line fixed) publishes every line exactly once
    fixed = text.replace(b"\xff bad", b"fixed")
    rest = subprocess.run(f"tail -n +201 | {shlex.join([*DDMQ, '-r', str(root), 'publish', 'q', '--lines'])}",
                          shell=True, input=fixed, capture_output=True, timeout=60)
    assert rest.returncode == 0, rest.stderr
    assert [m.message for m in b.consume("q", n=1000)] == [f"ok {i}" for i in range(1, 251)] + ["fixed", "after"]


def test_a_storage_error_midway_says_how_many_were_published(b: Broker, root: Path) -> None:
    """The 150th rename into ready/ fails (EIO): batch 1 (100) and 49 of batch 2 are in, nothing else."""
    b.create_queue("q")
    code = (
        "import sys; from tests.support.crashpoint import Injector, ALL_STEPS; from ddmq.cli import cli\n"
        "n = []\n"
        "at = lambda c, top: c.prim == 'rename' and '/ready/' in (c.dst or '') and n.append(1) is None "
        "and len(n) == 150\n"
        f"with Injector({str(root)!r}, ALL_STEPS, at=at, action='EIO').installed():\n"
        f"    cli.main(['-r', {str(root)!r}, 'publish', 'q', '--lines', '--batch', '100'], prog_name='ddmq')\n"
    )
    lines = "".join(f"m{i}\n" for i in range(1, 301))
    done = subprocess.run([sys.executable, "-c", code], input=lines.encode(), capture_output=True, timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 1 and err.count("\n") == 1, err
    assert "(49 of 100 messages were published)" in err and "in all 149 message(s) were published" in err
    assert "tail -n +150" in err
    assert [m.message for m in b.consume("q", n=1000)] == [f"m{i}" for i in range(1, 150)]
    assert os.listdir(root / "q" / "tmp") == []  # the rest of the batch was removed, not left for clean


def test_lines_whose_ids_cannot_be_printed_are_not_published(b: Broker, root: Path, tmp_path: Path) -> None:
    """stdout is a full disk (/dev/full) from the start: nothing is published, and it says so."""
    b.create_queue("q")
    with open("/dev/full", "w") as full:
        done = subprocess.run([*DDMQ, "-r", str(root), "publish", "q", "--lines"], input=b"a\nb\n",
                              stdout=full, stderr=subprocess.PIPE, timeout=60)
    err = done.stderr.decode()
    assert done.returncode == 1 and "nothing was published" in err, err
    assert b.counts("q")["ready"] == 0


# ---------------------------------------------------------- ddmq-dispatch
def test_dispatch_replies_to_the_failed_messages_of_a_run_in_one_batch(b: Broker, root: Path) -> None:
    """Failed messages are nacked at the end of a run: their replies then go out with one barrier."""
    from ddmq_hpc.dispatch import main

    b.create_queue("q")
    b.create_queue("replies")
    ids = {m.id for m in b.publish_many("q", ["1", "2", "3"])}
    inj = Injector(root, ALL_STEPS)
    with inj.installed():
        code = main(["q", "--root", str(root), "--reply-queue", "replies", "--handler", "false"])
    assert code == 1
    replies = b.consume("replies", n=10, ack=True)
    assert {m.message["request_id"] for m in replies} == ids
    assert {m.message["disposition"] for m in replies} == {"requeued"}
    assert [s for s in syncs(inj.calls, root) if "replies" in s][:1] == ["syncfs replies/tmp"]
    assert [s for s in syncs(inj.calls, root) if "replies" in s][-1] == "fsync replies/ready/SLOT"
    assert not [s for s in syncs(inj.calls, root) if s.startswith("fsync replies/tmp")], "no fsync per payload"


def test_ctrl_c_between_batches_says_what_was_published(b: Broker, root: Path) -> None:
    """A publisher fed by a slow pipe publishes what is waiting; interrupted, it names the line to resume from."""
    import signal

    b.create_queue("q")
    proc = subprocess.Popen([*DDMQ, "-r", str(root), "publish", "q", "--lines"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(b"one\ntwo\n\nthree\n")
    proc.stdin.flush()
    ids = [proc.stdout.readline() for _ in range(3)]  # published without waiting for a whole batch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.decode() == ("ddmq: interrupted; in all 3 message(s) were published, from input lines 1-4: "
                            "resume with the lines after 4 (tail -n +5)\n")
    assert [m.id for m in b.consume("q", n=10)] == [i.decode().strip() for i in ids]
