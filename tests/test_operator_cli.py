"""The operator's ``ddmq``: dead letters to read and requeue, what is stuck, one message, settings (issue 11).

Every case runs the installed ``ddmq`` script in a real process on a real
root, as the person looking after a queue would, and checks what it prints,
how it ends, and what is left in the queue afterwards.
"""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ddmq import Broker
from ddmq.errors import LeaseLost

DDMQ_SCRIPT = Path(sys.executable).parent / "ddmq"
ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def ddmq(root: Path, *args: object, input: str | bytes | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the installed script (text in and out unless ``input`` is bytes); never a traceback."""
    assert DDMQ_SCRIPT.is_file(), f"the ddmq command is not installed at {DDMQ_SCRIPT}"
    binary = isinstance(input, bytes)
    proc = subprocess.run([str(DDMQ_SCRIPT), "--root", str(root), *map(str, args)], input=input,
                          capture_output=True, text=not binary, timeout=60, env={**os.environ, **(env or {})})
    stderr = proc.stderr.decode(errors="replace") if binary else proc.stderr
    assert "Traceback" not in stderr, stderr
    return proc


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def fails(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Exit ``code`` with one line on stderr naming every fragment."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("ddmq: ") and proc.stderr.count("\n") == 1, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)
    return proc.stderr


def plant_foreign(root: Path, queue: str, name: str = "notes.txt") -> None:
    """A file a co-tenant dropped into ready/: not a ddmq message."""
    (root / queue / "ready" / name).write_text("not a message")


def kill_by_requeue_limit(b: Broker, queue: str) -> str:
    """A message nacked past its requeue limit of 1: dead after one requeue."""
    msg_id = b.publish(queue, "poison", requeue_limit=1).id
    for _ in range(2):
        [msg] = b.consume(queue)
        b.nack(msg)
    return msg_id


# ---------------------------------------------------------------- dead letters
def test_peek_dead_lists_every_dead_letter_with_reason_time_and_requeues(b, root):
    b.create_queue("q")
    poison = kill_by_requeue_limit(b, "q")
    plant_foreign(root, "q")
    ok(ddmq(root, "clean", "q"))
    before = sorted(os.listdir(root / "q" / "dead"))

    lines = ok(ddmq(root, "peek", "q", "--state", "dead")).splitlines()
    assert lines[0].split() == ["DEAD_AT", "REASON", "REQUEUES", "ID", "DETAIL"]
    assert len(lines) == 3  # every dead letter, not only the first: -n defaults to all here
    by_reason = {line.split()[1]: line for line in lines[1:]}
    assert re.match(rf"{ISO_UTC}\s+requeue-limit\s+1\s+{poison}\s+\S", by_reason["requeue-limit"])
    assert re.match(rf"{ISO_UTC}\s+foreign\s+-\s+\S*notes.txt\s+file name is not", by_reason["foreign"])

    rows = json.loads(ok(ddmq(root, "-f", "json", "peek", "q", "--state", "dead")))
    [dead] = [r for r in rows if r["reason"] == "requeue-limit"]
    assert dead["id"] == poison and dead["requeues"] == 1 and dead["state"] == "dead"
    assert isinstance(dead["dead_at"], int) and abs(dead["dead_at"] / 1e9 - time.time()) < 60
    assert "requeued 1 times" in dead["detail"] and dead["message"] == "poison"
    [foreign] = [r for r in rows if r["reason"] == "foreign"]
    assert foreign["id"] is None and foreign["name"].endswith("notes.txt") and foreign["problem"]
    assert yaml.safe_load(ok(ddmq(root, "-f", "yaml", "peek", "q", "--state", "dead"))) == rows
    assert ok(ddmq(root, "peek", "q", "--state", "dead", "-n", "1")).count("\n") == 2
    assert sorted(os.listdir(root / "q" / "dead")) == before  # peeking moves nothing


def test_peek_of_ready_says_on_stderr_when_files_there_are_not_messages(b, root):
    b.create_queue("q")
    plant_foreign(root, "q", "a.txt")
    plant_foreign(root, "q", "b.txt")
    proc = ddmq(root, "peek", "q")
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1
    assert "2 file(s) in ready/ of queue 'q' are not valid messages" in proc.stderr
    assert "--state dead" in proc.stderr
    b.publish("q", "good")
    proc = ddmq(root, "peek", "q", "-n", "5")
    assert proc.stdout == "good\n" and "2 file(s)" in proc.stderr
    proc = ddmq(root, "peek", "q")  # found all it was asked for: nothing to say
    assert proc.stdout == "good\n" and proc.stderr == ""


def test_requeue_dead_moves_dead_letters_back_and_names_those_skipped(b, root):
    b.create_queue("q")
    poison = kill_by_requeue_limit(b, "q")
    other = b.publish("q", "other").id
    b.nack(b.consume("q")[0], requeue=False)
    plant_foreign(root, "q")
    ok(ddmq(root, "clean", "q"))
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 3}

    fails(ddmq(root, "requeue", "q"), 2, "--dead")
    fails(ddmq(root, "requeue", "q", "--dead", "0" * 32), 4, "0" * 32)
    assert ok(ddmq(root, "requeue", "q", "--dead", other)).startswith("requeued 1 dead letter(s)")
    assert [m.id for m in b.peek("q", n=10)] == [other]

    out = ok(ddmq(root, "requeue", "q", "--dead"))
    assert out.startswith("requeued 1 dead letter(s); skipped 1") and "notes.txt" in out
    [msg] = [m for m in b.peek("q", n=10) if m.id == poison]
    assert msg.requeues == 0 and msg.message == "poison"  # a fresh start
    assert b.counts("q") == {"ready": 2, "work": 0, "dead": 1}
    result = json.loads(ok(ddmq(root, "-f", "json", "requeue", "q", "--dead")))
    assert result["requeued"] == [] and result["skipped"][0].endswith("notes.txt")
    assert ok(ddmq(root, "purge", "q", "--dead")) == "q: 1\n"  # what cannot be requeued is purged


# ------------------------------------------------------- dead-lettering is said
def test_consume_that_dead_letters_a_foreign_file_says_so_on_stderr(b, root):
    b.create_queue("q")
    plant_foreign(root, "q", "stray.txt")
    proc = ddmq(root, "consume", "q")
    assert proc.returncode == 3 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("ddmq: dead-lettered ") and "ready/stray.txt" in proc.stderr
    assert "(foreign: file name is not a ddmq message name)" in proc.stderr
    assert b.counts("q")["dead"] == 1


def test_clean_counts_and_reports_what_it_dead_letters(b, root):
    b.create_queue("q")
    plant_foreign(root, "q", "stray.txt")
    proc = ddmq(root, "-f", "json", "clean", "q")
    assert json.loads(ok(proc))[0]["dead_lettered"] == 1
    assert "dead-lettered" in proc.stderr and "stray.txt" in proc.stderr


def test_verbose_levels_and_the_clock_warning_said_once(root, tmp_path):
    """-v and -vv still add info and debug; the clock RuntimeWarning is not printed besides its log line."""
    Broker(root, create=True).create_queue("q")
    script = f"""
import sys, warnings
from ddmq import console
from ddmq.cli import cli
from ddmq.log import logger
@cli.command("say-clock")
def say_clock():
    logger().warning("clock correction: off by 30 s")
    warnings.warn("ddmq: this host's clock differs from the file server's by +30.0 s", RuntimeWarning)
    logger().info("an info line")
sys.exit(console.run(cli, ["--root", {str(root)!r}] + sys.argv[1:] + ["say-clock"]))
"""
    def run(*args: str) -> list[str]:
        proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr.splitlines()

    assert run() == ["ddmq: clock correction: off by 30 s"]
    assert run("-v") == ["ddmq: clock correction: off by 30 s", "ddmq: an info line"]


# ------------------------------------------------------------ what is stuck
def test_view_shows_the_oldest_ready_message_and_expired_leases(b, root):
    b.create_queue("q")
    b.create_queue("idle")
    b.publish("q", "waiting")
    b.publish("q", "taken")
    b.consume("q", lease=0.05)
    time.sleep(1.1)
    lines = ok(ddmq(root, "view")).splitlines()
    assert lines[0].split() == ["QUEUE", "READY", "WORK", "DEAD", "OLDEST", "EXPIRED"]
    assert lines[1].split() == ["idle", "0", "0", "0", "-", "0"]
    assert re.fullmatch(r"q +1 +1 +0 +[12]s +1", lines[2])
    rows = {r["queue"]: r for r in json.loads(ok(ddmq(root, "-f", "json", "view")))}
    assert rows["idle"]["oldest_ready_age"] is None and rows["idle"]["expired_leases"] == 0
    assert 1.0 <= rows["q"]["oldest_ready_age"] < 60 and rows["q"]["expired_leases"] == 1


def test_show_prints_one_message_in_any_state(b, root):
    b.create_queue("q")
    held = b.publish("q", "held").id
    ready = b.publish("q", "line one\nline two", headers={"k": "v"}).id
    [claimed] = b.consume("q", lease=600)  # first published, first served
    assert claimed.id == held
    out = ok(ddmq(root, "show", "q", held))
    assert "state:         work" in out and "file:          work/" in out
    [lease] = [line for line in out.splitlines() if line.startswith("lease expires:")]
    assert re.fullmatch(rf"lease expires: +{ISO_UTC} \(in 9m5\ds\)", lease)
    out = ok(ddmq(root, "show", "q", ready))
    assert "state:         ready" in out and "lease expires" not in out and "k=v" in out
    assert re.search(rf"published: +{ISO_UTC} by ", out)
    assert out.endswith("body:          line one\nline two\n")  # the body last, as it is

    row = json.loads(ok(ddmq(root, "-f", "json", "show", "q", held)))
    assert row["id"] == held and row["state"] == "work" and row["message"] == "held"
    assert row["lease_expires"] == claimed.lease_expires
    fails(ddmq(root, "show", "q", "f" * 32), 4, "f" * 32)
    fails(ddmq(root, "show", "q", "nonsense"), 2, "32 hex digits")
    assert "holder" in ok(ddmq(root, "show", "--help"))  # says what is not recorded


def test_show_of_a_dead_letter_gives_reason_time_and_detail(b, root):
    b.create_queue("q")
    poison = kill_by_requeue_limit(b, "q")
    out = ok(ddmq(root, "show", "q", poison))
    assert "state:         dead" in out and "dead reason:   requeue-limit" in out
    assert re.search(rf"dead since: +{ISO_UTC}\n", out) and "requeued 1 times" in out


def test_release_puts_a_leased_message_back_by_id_without_its_receipt(b, root):
    b.create_queue("q")
    msg_id = b.publish("q", "stuck").id
    [held] = b.consume("q", lease=600)
    assert ok(ddmq(root, "release", "q", msg_id)) == ""
    assert b.counts("q") == {"ready": 1, "work": 0, "dead": 0}
    [again] = b.peek("q")
    assert again.id == msg_id and again.requeues == 0  # no requeue spent
    with pytest.raises(LeaseLost):
        b.ack(held)  # the lease is gone: its consumer learns it at ack


# ------------------------------------------------------------------- settings
def test_settings_show_where_each_comes_from_and_change_the_queue_file(b, root):
    b.create_queue("q", priority=5)
    (root / "ddmq.yaml").write_text("layout: 2\nclean_interval: 7\n")
    lines = {line.split()[0]: line.split() for line in ok(ddmq(root, "settings", "q")).splitlines()}
    assert lines["KEY"] == ["KEY", "VALUE", "SOURCE", "FILE"]
    assert lines["priority"][1:3] == ["5", "queue"] and lines["priority"][3].endswith("q/ddmq.yaml")
    assert lines["clean_interval"][1:3] == ["7", "root"]
    assert lines["message_timeout"][1:] == ["600", "default", "-"]
    assert lines["requeue_limit"][1:3] == ["none", "default"]

    ok(ddmq(root, "settings", "q", "message_timeout=90", "requeue=false", "mode=0640", "--unset", "priority"))
    assert b.settings("q") | {} == {**b.settings(None), "clean_interval": 7, "message_timeout": 90,
                                    "requeue": False, "mode": 0o640}
    rows = {r["key"]: r for r in json.loads(ok(ddmq(root, "-f", "json", "settings", "q")))}
    assert rows["mode"]["value"] == "0640" and rows["mode"]["source"] == "queue"
    assert rows["priority"] == {"key": "priority", "value": 999, "source": "default", "file": None}
    assert not [n for n in os.listdir(root / "q" / "tmp")]  # written atomically: nothing left behind
    ok(ddmq(root, "settings", "q", "requeue_limit=3"))
    ok(ddmq(root, "settings", "q", "requeue_limit=none"))
    assert b.settings("q")["requeue_limit"] is None

    fails(ddmq(root, "settings", "q", "priority=high"), 2, "priority")
    fails(ddmq(root, "settings", "q", "colour=red"), 2, "colour")
    fails(ddmq(root, "settings", "q", "priority"), 2, "KEY=VALUE")
    fails(ddmq(root, "settings", "q", "--unset", "colour"), 2, "colour")
    fails(ddmq(root, "settings", "missing"), 4)
    assert b.settings("q")["message_timeout"] == 90  # refused changes change nothing


def test_create_exist_ok_with_different_settings_says_which(b, root):
    b.create_queue("q", message_timeout=60)
    ok(ddmq(root, "create", "q", "--exist-ok", "--message-timeout", "60"))
    err = fails(ddmq(root, "create", "q", "--exist-ok", "--message-timeout", "5"), 1, "message_timeout", "60")
    assert "ddmq.yaml" in err  # where to change it


# ---------------------------------------------------------------- consistency
def test_format_before_the_json_command_is_honoured(b, root):
    b.publish("q", "x", create=True)
    out = ok(ddmq(root, "-f", "yaml", "json", '{"cmd": "peek", "queue": "q"}'))
    assert yaml.safe_load(out)[0]["message"] == "x" and not out.startswith("[")


def test_ack_or_release_of_an_id_that_never_existed_is_not_found(b, root):
    b.create_queue("q")
    fails(ddmq(root, "ack", "q", "a" * 32), 4)
    fails(ddmq(root, "release", "q", "e" * 32), 4)


def test_binary_stdin_is_not_utf8_not_a_json_position(b, root):
    b.create_queue("q")
    proc = ddmq(root, "publish", "q", input=b"ok \xff\xfe then")
    assert proc.returncode == 2
    assert proc.stderr == b"ddmq: the message on stdin is not UTF-8 (bad byte at offset 3): " \
                          b"publish binary data with --base64 (and --file PATH)\n"
    assert b.counts("q")["ready"] == 0


def test_null_separated_output_keeps_multi_line_bodies_apart(b, root):
    b.create_queue("q")
    for body in ("one\nline two", "three"):
        b.publish("q", body)
    assert ok(ddmq(root, "peek", "q", "-n", "5", "-0")) == "one\nline two\0three\0"
    assert ok(ddmq(root, "consume", "q", "-n", "5", "--null")) == "one\nline two\0three\0"
    assert b.counts("q")["ready"] == 0


def test_plain_consume_no_ack_prints_the_receipt_to_ack_with(b, root):
    b.create_queue("q")
    b.publish("q", "work item")
    line = ok(ddmq(root, "consume", "q", "--no-ack"))
    receipt, body = line.rstrip("\n").split("\t")
    assert re.fullmatch(r"[0-9a-f]{32}\.[0-9a-f]{12}", receipt) and body == "work item"
    assert b.counts("q")["work"] == 1
    ok(ddmq(root, "ack", "q", receipt))
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 0}
    assert "RECEIPT" in ok(ddmq(root, "consume", "--help"))


def test_binary_file_round_trips_through_base64(b, root, tmp_path):
    payload = bytes(range(256)) * 4 + b"\0\0end\n\0"
    (tmp_path / "blob.bin").write_bytes(payload)
    b.create_queue("q")
    fails(ddmq(root, "publish", "q", "--file", tmp_path / "blob.bin"), 2, "not UTF-8", "--base64")
    [msg_id] = ok(ddmq(root, "publish", "q", "--base64", "--file", tmp_path / "blob.bin")).split()
    [row] = json.loads(ok(ddmq(root, "-f", "json", "peek", "q")))
    assert row["id"] == msg_id and row["headers"] == {"content-transfer-encoding": "base64"}
    out = ok(ddmq(root, "consume", "q", "--base64"))
    assert base64.b64decode(out) == payload and out.count("\n") == 1

    # base64 text on stdin (as base64(1) writes it, in lines) is carried as it is
    ok(ddmq(root, "publish", "q", "--base64", input=base64.encodebytes(payload).decode()))
    assert base64.b64decode(ok(ddmq(root, "consume", "q", "--base64"))) == payload
    fails(ddmq(root, "publish", "q", "--base64", "not base64!"), 2, "not valid base64")
    # a text body comes out of --base64 as its UTF-8, so one pipeline serves both
    b.publish("q", "héllo")
    assert base64.b64decode(ok(ddmq(root, "consume", "q", "--base64"))) == "héllo".encode()
    # a text file is published exactly, trailing newline included
    (tmp_path / "note.txt").write_text("a note\n")
    ok(ddmq(root, "publish", "q", "--file", tmp_path / "note.txt"))
    assert b.peek("q")[0].message == "a note\n"
