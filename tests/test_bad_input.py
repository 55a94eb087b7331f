"""Hostile and broken input: bad queue names, junk in the queue directories,
broken roots, failing storage and bad settings files.

The rules under test: a bad name is refused before any path is built from it;
junk found in a queue is moved to ``dead/`` (never followed, never deleted
behind the user's back) while good messages keep flowing; every failure is a
:class:`ddmq.errors.DdmqError` subclass that says what went wrong.
"""
from __future__ import annotations

import errno
import json
import os
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddmq import Broker
from ddmq.cli import cli
from ddmq.errors import (
    DdmqError, InvalidQueueName, NotARoot, NotFound, RootNotFound, SettingsError, StorageError, UsageError,
)
from ddmq.layout import ReadyName, WorkName, new_message_id, new_token
from tests.support.queuefiles import ready_files, ready_path

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ------------------------------------------------------------------- helpers
@pytest.fixture
def q(b: Broker) -> str:
    """A queue cleaned on every consume (clean_interval 0), so junk in work/ is found at once."""
    b.create_queue("q", clean_interval=0)
    return "q"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the root that symlinks in the queue point at."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "target.txt").write_text("do not touch")
    return d


def tree(path: Path) -> dict[str, bytes | str]:
    """Everything under ``path`` (hidden names included, symlinks not followed), with file contents."""
    found: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                found[rel] = "-> " + os.readlink(full)
            elif os.path.isdir(full):
                found[rel] = "<dir>"
            elif os.path.isfile(full):
                with open(full, "rb") as f:
                    found[rel] = f.read()
            else:
                found[rel] = "<special>"
    return found


def ready_name() -> str:
    return str(ReadyName(5, time.time_ns(), new_message_id(), 0))


def expired_work_name() -> str:
    return str(WorkName(5, time.time_ns(), new_message_id(), 0, 1, new_token()))


def valid_payload(b: Broker) -> bytes:
    """The bytes of a real message (published to a scratch queue, then removed)."""
    b.create_queue("scratch", exist_ok=True)
    b.publish("scratch", {"real": "message"})
    [path] = (b.root / "scratch" / "ready").rglob("*.msg")
    data = path.read_bytes()
    b.delete_queue("scratch")
    return data


def dead_entries(root: Path, queue: str = "q") -> dict[str, dict]:
    """Dead letters (not the sidecars) with the parsed ``.reason`` sidecar of each."""
    dead = root / queue / "dead"
    result = {}
    for name in os.listdir(dead):
        if name.endswith(".reason"):
            continue
        sidecar = dead / (name + ".reason")
        assert sidecar.is_file(), f"dead letter {name} has no .reason sidecar"
        result[name] = json.loads(sidecar.read_text())
    return result


def fail_os(mocker, name: str, err: int, when=lambda *args: True):
    """Make ``os.<name>`` raise OSError(err) for the calls ``when`` selects; others go through."""
    real = getattr(os, name)

    def fake(*args, **kwargs):
        if when(*args, **kwargs):
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    return mocker.patch.object(os, name, side_effect=fake)


def _full_path(path, dir_fd=None) -> str | None:
    """The path a call names: ddmq works relative to open directories (``dir_fd``, ``src_dir_fd``)."""
    if isinstance(path, int):
        return os.readlink(f"/proc/self/fd/{path}")
    if not isinstance(path, (str, os.PathLike)):
        return None
    path = os.fspath(path)
    if dir_fd is not None and not os.path.isabs(path):
        return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
    return path


def under(root: Path):
    prefix = os.path.realpath(root)

    def inside(path, *rest, **kwargs):
        full = _full_path(path, kwargs.get("dir_fd", kwargs.get("src_dir_fd")))
        return full is not None and os.path.realpath(full).startswith(prefix)
    return inside


def creating_under(root: Path):
    """os.open calls that would create a file under ``root`` (reads and directory opens go through)."""
    inside = under(root)
    return lambda path, flags=0, *rest, **kwargs: inside(path, **kwargs) and bool(flags & os.O_CREAT)


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def ddmq_(*args: object, input: str | None = None):
    result = _runner().invoke(cli, [str(a) for a in args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback
        raise AssertionError("ddmq crashed:\n" + "".join(traceback.format_exception(*result.exc_info)))
    return result


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddmq: ") and "Traceback" not in result.output, result.stderr
    return lines[0]


# --------------------------------------------------------------- queue names
BAD_NAMES = [
    "..", ".", ".hidden", "a/b", "/abs", "../escape", "a/../b", "", "x" * 129, "a b", "a\nb", "q\n", "a\x00b",
    "a\\b", "tab\tq", "é", "*", 5, None, b"q", ["q"], 1.5,
]
NAME_IDS = [repr(n)[:20] for n in BAD_NAMES]

API_CALLS = {
    "create_queue": lambda b, n: b.create_queue(n),
    "create_queue_exist_ok": lambda b, n: b.create_queue(n, exist_ok=True),
    "publish_create": lambda b, n: b.publish(n, "m", create=True),
    "publish": lambda b, n: b.publish(n, "m"),
    "consume": lambda b, n: b.consume(n),
    "peek": lambda b, n: b.peek(n),
    "counts": lambda b, n: b.counts(n),
    "settings": lambda b, n: b.settings(n),
    "purge": lambda b, n: b.purge(n, dead=True),
    "clean": lambda b, n: b.clean(n),
    "delete_queue": lambda b, n: b.delete_queue(n, force=True),
    "ack": lambda b, n: b.ack("0" * 32, queue=n),
    "nack": lambda b, n: b.nack("0" * 32, queue=n),
    "extend": lambda b, n: b.extend("0" * 32, 5, queue=n),
}


@pytest.mark.parametrize("name", BAD_NAMES, ids=NAME_IDS)
def test_invalid_queue_names_refused_by_every_api_call(b, q, tmp_path, name):
    before = tree(tmp_path)
    for call_name, call in API_CALLS.items():
        if name is None and call_name in ("clean", "settings"):
            continue  # None means "all queues" / "the root" there
        with pytest.raises(UsageError) as info:
            call(b, name)
        if name is not None or call_name not in ("ack", "nack", "extend"):  # there None means "no queue given"
            assert isinstance(info.value, InvalidQueueName) and "invalid queue name" in str(info.value), call_name
        assert tree(tmp_path) == before, f"{call_name}({name!r}) changed the disk"


def test_longest_valid_name_and_dots_inside_are_accepted(b):
    for name in ("x" * 128, "a.b", "a..b", "-x", "_", "0"):
        b.create_queue(name)
        b.publish(name, "m")
        assert b.consume(name)[0].message == "m"


def test_root_marker_name_is_not_a_queue_name(b, root):
    """A queue called ``ddmq.yaml`` would collide with the root marker: refuse it as a name."""
    marker = (root / "ddmq.yaml").read_bytes()
    with pytest.raises(InvalidQueueName):
        b.create_queue("ddmq.yaml")
    assert (root / "ddmq.yaml").read_bytes() == marker


CLI_BAD_NAMES = ["..", ".hidden", "a/b", "../escape", "", "x" * 129, "a b", "a\nb", "a\x00b"]


CLI_NAME_ARGS = [
    ["create", "{}"], ["create", "ok1,{}"], ["publish", "-c", "{}", "m"], ["publish", "{}", "m"], ["consume", "{}"],
    ["peek", "{}"], ["view", "{}"], ["purge", "{}"], ["purge", "--dead", "{}"], ["delete", "--force", "{}"],
    ["clean", "{}"], ["ack", "{}", "0" * 32],
]
CLI_NAME_CASES = [
    pytest.param(name, args, id=" ".join(args).replace("{}", "NAME").replace("0" * 32, "ID") + f" NAME={name!r:.20}")
    for args in CLI_NAME_ARGS for name in CLI_BAD_NAMES
    if not (name == "" and args[1] == "ok1,{}")  # "ok1," is just a trailing comma
]


@pytest.mark.parametrize("name, args", CLI_NAME_CASES)
def test_invalid_queue_names_refused_by_the_cli(b, q, tmp_path, name, args):
    before = tree(tmp_path)
    argv = [a.replace("{}", name) for a in args]
    result = ddmq_("--root", b.root, *argv)
    one_line_error(result, 2)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("args", [["create", "../bad"], ["publish", "-c", "a/b", "m"], ["create", ".hidden"]])
def test_invalid_name_does_not_create_the_root_either(tmp_path, args):
    root = tmp_path / "newroot"
    one_line_error(ddmq_("--root", root, *args), 2)
    assert not root.exists()
    assert tree(tmp_path) == {}


def test_json_command_refuses_bad_names_before_touching_disk(b, q, tmp_path):
    before = tree(tmp_path)
    for request in ({"cmd": "create", "queues": "../x"}, {"cmd": "create", "queues": ["fine", "../x"]},
                    {"cmd": "publish", "queue": "a\u0000b", "message": "m", "create": True},
                    {"cmd": "publish", "queue": ["q"], "message": "m"}):
        one_line_error(ddmq_("--root", b.root, "json", json.dumps(request)), 2)
        assert tree(tmp_path) == before, request


# --------------------------------------------------------- junk in a queue
def _plant(kind: str, directory: Path, b: Broker, outside: Path, state: str) -> tuple[str, str]:
    """Put one bad entry in ``directory``; returns (its name, the dead-letter reason expected)."""
    name = ready_name() if state == "ready" else expired_work_name()
    path = ready_path(directory, name) if state == "ready" else directory / name
    if kind == "garbage":
        path.write_bytes(b"\x00\x01 this is not json {{{")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = valid_payload(b)
        path.write_bytes(data[: len(data) // 2])
    elif kind == "non_utf8":
        path.write_bytes(b'{"format": 1, "message": "\xff\xfe\xfd"}')
    elif kind == "nested_too_deeply":
        path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    elif kind == "trailing_garbage":  # a complete message of this name's id, then more
        data = valid_payload(b)
        message_id = path.name.split(".")[2]
        path.write_bytes(re.sub(rb'"id": "[0-9a-f]{32}"', b'"id": "%s"' % message_id.encode(), data) + b" {}")
    elif kind == "json_list":
        path.write_bytes(b"[1, 2, 3]")
    elif kind == "wrong_id":
        path.write_bytes(valid_payload(b))  # a complete message, but under another message's id
    elif kind == "directory":
        path.mkdir()
        (path / "inside.txt").write_text("x")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink_out":
        (outside / "payload.msg").write_bytes(valid_payload(b))
        os.symlink(outside / "payload.msg", path)
    elif kind == "symlink_dir_out":
        os.symlink(outside, path)
    elif kind == "dangling_symlink":
        os.symlink(outside / "does-not-exist", path)
    elif kind == "foreign_file":
        name = "notes.txt"
        (directory / name).write_text("someone's notes")
        return name, "foreign"
    elif kind == "foreign_dir":
        name = "results"
        (directory / name).mkdir()
        (directory / name / "r.csv").write_text("1,2")
        return name, "foreign"
    elif kind == "foreign_symlink":
        name = "link-to-outside"
        os.symlink(outside / "target.txt", directory / name)
        return name, "foreign"
    elif kind == "foreign_unicode_digits":
        # a message name but for its digits (Arabic-Indic): \d alone would accept them
        ours = ready_name() if state == "ready" else expired_work_name()
        name = "".join(chr(0x660 + int(c)) for c in ours[:6]) + ours[6:]
        (directory / name).write_bytes(valid_payload(b))
        return name, "foreign"
    elif kind == "foreign_msg_like":
        name = "000005.123.deadbeef.0.msg"  # almost a message name
        (directory / name).write_bytes(valid_payload(b))
        return name, "foreign"
    else:
        raise AssertionError(kind)
    return name, "corrupt"


JUNK = ["garbage", "empty", "truncated", "non_utf8", "nested_too_deeply", "trailing_garbage", "json_list", "wrong_id", "directory", "fifo", "symlink_out",
        "symlink_dir_out", "dangling_symlink", "foreign_file", "foreign_dir", "foreign_symlink", "foreign_msg_like",
        "foreign_unicode_digits"]


@pytest.mark.parametrize("state", ["ready", "work"])
@pytest.mark.parametrize("kind", JUNK)
def test_junk_is_dead_lettered_and_good_messages_still_flow(b, q, root, outside, kind, state):
    b.publish(q, "good-1", priority=9)
    name, reason = _plant(kind, root / q / state, b, outside, state)
    b.publish(q, "good-2", priority=9)
    outside_before = tree(outside)

    consumer = Broker(root)
    got = []
    for _ in range(5):  # a consumer keeps going; none of these calls may raise
        got += consumer.consume(q, n=10)
    assert sorted(m.message for m in got) == ["good-1", "good-2"]
    for m in got:
        consumer.ack(m)

    assert name not in os.listdir(root / q / state)
    dead = dead_entries(root, q)
    assert len(dead) == 1, dead
    [(dead_name, record)] = dead.items()
    # a consumer claims a ready file before reading it, so a corrupt one is dead-lettered under its
    # work/ name; the message id (or the foreign name) is kept either way
    key = name.split(".")[2] if reason == "corrupt" else name
    assert f".{reason}." in dead_name and key in dead_name
    assert record["reason"] == reason and key in record["from"] and record["detail"]
    assert b.counts(q) == {"ready": 0, "work": 0, "dead": 1}
    assert tree(outside) == outside_before  # a symlink's target is never touched
    # peeking at the dead letters does not crash either
    assert all(isinstance(m.message, dict) for m in b.peek(q, n=10, state="dead"))


@pytest.mark.parametrize("kind", JUNK)
def test_dead_junk_can_be_purged_and_the_queue_deleted(b, q, root, outside, kind):
    state = "ready"
    _plant(kind, root / q / state, b, outside, state)
    b.consume(q)
    outside_before = tree(outside)
    assert b.counts(q)["dead"] == 1
    assert b.purge(q, dead=True) == 1
    assert os.listdir(root / q / "dead") == []
    b.delete_queue(q)
    assert tree(outside) == outside_before


@pytest.mark.parametrize("kind", ["garbage", "directory", "symlink_out", "foreign_file"])
def test_clean_dead_letters_junk_without_a_consumer(b, q, root, outside, kind):
    _plant(kind, root / q / "work", b, outside, "work")
    _plant(kind if kind != "foreign_file" else "foreign_dir", root / q / "ready", b, outside, "ready")
    report = b.clean(q)
    assert report.dead_lettered >= 1
    # junk with a valid ready name is only found by a consumer; anything else is gone now
    assert b.counts(q)["work"] == 0
    b.consume(q)
    assert b.counts(q) == {"ready": 0, "work": 0, "dead": 2}
    assert (outside / "target.txt").read_text() == "do not touch"


@pytest.mark.parametrize("kind", JUNK)
def test_peek_skips_junk_without_moving_it(b, q, root, outside, kind):
    b.publish(q, "good", priority=9)
    name, _ = _plant(kind, root / q / "ready", b, outside, "ready")
    before = tree(root / q)
    assert [m.message for m in b.peek(q, n=10)] == ["good"]
    assert tree(root / q) == before


def test_cli_consume_survives_junk(b, q, root, outside):
    for kind in ("garbage", "directory", "symlink_out", "foreign_file", "fifo"):
        _plant(kind, root / q / "ready", b, outside, "ready")
    b.publish(q, "good", priority=999_999)
    result = ddmq_("--root", root, "consume", q)
    assert result.exit_code == 0 and result.stdout == "good\n", (result.stdout, result.stderr)
    assert ddmq_("--root", root, "consume", q).exit_code == 3
    assert b.counts(q) == {"ready": 0, "work": 0, "dead": 5}
    assert (outside / "target.txt").read_text() == "do not touch"


def test_oversized_message_is_dead_lettered(b, q, root, mocker):
    b.publish(q, "x" * 500)
    b.publish(q, "small")
    mocker.patch("ddmq.transitions.MAX_MESSAGE_BYTES", 400)
    assert [m.message for m in b.consume(q, n=5)] == ["small"]
    [(name, record)] = dead_entries(root, q).items()
    assert ".corrupt." in name and "larger" in record["detail"]


def test_hidden_files_are_left_alone(b, q, root):
    hidden = {root / q / state / ".nfs000123": f"silly-{state}".encode() for state in ("ready", "work", "dead")}
    hidden[root / q / "ready" / ".fuse_hidden0001"] = b"fuse"
    for path, data in hidden.items():
        path.write_bytes(data)
    b.publish(q, "good")
    assert b.counts(q) == {"ready": 1, "work": 0, "dead": 0}
    assert [m.message for m in b.peek(q, n=5)] == ["good"]
    assert [m.message for m in b.consume(q, n=5, ack=True)] == ["good"]
    assert b.consume(q) == []
    b.clean()
    b.purge(q)
    b.purge(q, dead=True)
    for path, data in hidden.items():
        assert path.read_bytes() == data, path
    assert b.counts(q) == {"ready": 0, "work": 0, "dead": 0}


# ---------------------------------------------------------------- bad roots
def test_missing_root(tmp_path):
    for path in (tmp_path / "missing", tmp_path / "no" / "such" / "parent"):
        with pytest.raises(RootNotFound) as info:
            Broker(path)
        assert isinstance(info.value, NotFound) and str(path) in str(info.value)
    assert tree(tmp_path) == {}


def test_missing_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DDMQ_ROOT", str(tmp_path / "missing"))
    with pytest.raises(RootNotFound):
        Broker()
    assert tree(tmp_path) == {}


def test_directory_that_is_not_a_root(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "thesis.tex").write_text("precious")
    (d / "q").mkdir()
    with pytest.raises(NotARoot) as info:
        Broker(d)
    assert "ddmq.yaml" in str(info.value)
    assert tree(tmp_path) == {"data": "<dir>", "data/thesis.tex": b"precious", "data/q": "<dir>"}


def test_root_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for create in (False, True):
        with pytest.raises(NotARoot):
            Broker(f, create=create)
    assert f.read_text() == "x"


def test_queue_directory_without_marker_is_not_a_queue(b, root):
    (root / "fake").mkdir()
    (root / "fake" / "ready").mkdir()
    assert b.list_queues() == []
    with pytest.raises(NotFound):
        b.publish("fake", "m")
    assert os.listdir(root / "fake" / "ready") == []


def test_read_only_root_when_initialising(tmp_path, mocker):
    root = tmp_path / "root"
    root.mkdir()
    fail_os(mocker, "open", errno.EACCES, creating_under(root))
    with pytest.raises(StorageError) as info:
        Broker(root, create=True)
    assert info.value.errno == errno.EACCES and "permission denied" in str(info.value)
    mocker.stopall()
    assert os.listdir(root) == []  # no marker, no temporary marker left behind


def test_read_only_root_when_creating_a_queue(b, root, mocker):
    fail_os(mocker, "open", errno.EROFS, creating_under(root))
    with pytest.raises(StorageError) as info:
        b.create_queue("q")
    assert info.value.errno == errno.EROFS and "read-only" in str(info.value)
    mocker.stopall()
    assert os.listdir(root) == ["ddmq.yaml"]  # no queue, no half-built staging directory
    b.create_queue("q")


def test_read_only_queue_when_publishing(b, q, root, mocker):
    fail_os(mocker, "rename", errno.EROFS, under(root))
    with pytest.raises(StorageError) as info:
        b.publish(q, "m")
    assert "read-only" in str(info.value)
    mocker.stopall()
    assert ready_files(root / q / "ready") == [] and os.listdir(root / q / "tmp") == []
    b.publish(q, "m")
    assert b.consume(q)[0].message == "m"


def test_read_only_queue_when_consuming(b, q, root, mocker):
    b.publish(q, "m")
    fail_os(mocker, "rename", errno.EROFS, under(root))
    with pytest.raises(StorageError):
        b.consume(q)
    mocker.stopall()
    assert b.counts(q) == {"ready": 1, "work": 0, "dead": 0}
    assert b.consume(q)[0].message == "m"


def test_permission_denied_when_consuming_is_an_error_not_an_empty_queue(b, q, root, mocker):
    b.publish(q, "m")
    fail_os(mocker, "rename", errno.EACCES, under(root))
    mocker.patch.object(os, "access", return_value=False)  # the directories really are not writable
    with pytest.raises(StorageError) as info:
        b.consume(q)
    assert "permission denied" in str(info.value)
    mocker.stopall()
    assert b.counts(q)["ready"] == 1


def test_read_only_queue_when_acking_and_nacking(b, q, root, mocker):
    b.publish(q, "m")
    [m] = b.consume(q)
    fail_os(mocker, "unlink", errno.EROFS, under(root))
    fail_os(mocker, "rename", errno.EROFS, under(root))
    with pytest.raises(StorageError):
        b.ack(m)
    with pytest.raises(StorageError):
        b.nack(m)
    mocker.stopall()
    assert b.counts(q) == {"ready": 0, "work": 1, "dead": 0}
    b.ack(m)
    assert b.counts(q)["work"] == 0


def test_read_only_cli_is_one_line_exit_1(b, q, root, mocker):
    fail_os(mocker, "open", errno.EROFS, creating_under(root))
    line = one_line_error(ddmq_("--root", root, "publish", q, "m"), 1)
    assert "read-only" in line


@pytest.mark.skipif(IS_ROOT, reason="permissions do not bind root; the mocked tests above cover this")
def test_really_read_only_root(b, q, root):
    b.publish(q, "m")
    modes = {}
    try:
        for d in (root, root / q, *(root / q / s for s in ("ready", "work", "dead", "tmp"))):
            modes[d] = d.stat().st_mode
            d.chmod(0o555)
        with pytest.raises(StorageError):
            b.create_queue("other")
        with pytest.raises(StorageError):
            b.publish(q, "m2")
        with pytest.raises(StorageError):
            Broker(root).consume(q)
    finally:
        for d, mode in modes.items():
            d.chmod(mode)
    assert b.counts(q) == {"ready": 1, "work": 0, "dead": 0}
    assert os.listdir(root / q / "tmp") == []


# ------------------------------------------------------------ failing disks
def test_disk_full_during_publish(b, q, root, mocker):
    fail_os(mocker, "write", errno.ENOSPC, lambda fd, *rest: fd > 2)
    with pytest.raises(StorageError) as info:
        b.publish(q, "x" * 1000)
    assert "no space" in str(info.value) and info.value.errno == errno.ENOSPC
    mocker.stopall()
    assert ready_files(root / q / "ready") == [] and os.listdir(root / q / "tmp") == []
    b.publish(q, "after")
    assert [m.message for m in b.consume(q, n=5)] == ["after"]


def test_short_writes_still_write_the_whole_message(b, q, mocker):
    """write(2) may write less than asked (a signal, a network filesystem): the rest follows."""
    real_write = os.write
    mocker.patch.object(os, "write", side_effect=lambda fd, data: real_write(fd, bytes(data[:100])))
    body = "".join(chr(0x41 + i % 26) for i in range(10_000))
    b.publish(q, body)
    mocker.stopall()
    assert b.consume(q)[0].message == body


def test_disk_full_after_a_partial_write(b, q, root, mocker):
    real_write = os.write
    calls = []

    def write(fd, data):
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data[:100]))  # short write: the loop must go on ...
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # ... and hit the full disk

    mocker.patch.object(os, "write", side_effect=write)
    with pytest.raises(StorageError, match="no space"):
        b.publish(q, "y" * 10_000)
    mocker.stopall()
    assert len(calls) == 2
    assert ready_files(root / q / "ready") == [] and os.listdir(root / q / "tmp") == []
    b.publish(q, "after")
    assert b.consume(q)[0].message == "after"


def test_io_error_at_fsync(b, q, root, mocker):
    fail_os(mocker, "fsync", errno.EIO)
    with pytest.raises(StorageError) as info:
        b.publish(q, "m")
    assert "I/O error" in str(info.value) and info.value.errno == errno.EIO
    mocker.stopall()
    assert ready_files(root / q / "ready") == [] and os.listdir(root / q / "tmp") == []
    b.publish(q, "after")
    assert b.consume(q)[0].message == "after"


def test_disk_full_at_rename(b, q, root, mocker):
    fail_os(mocker, "rename", errno.ENOSPC, under(root))
    with pytest.raises(StorageError, match="no space"):
        b.publish(q, "m")
    mocker.stopall()
    assert ready_files(root / q / "ready") == [] and os.listdir(root / q / "tmp") == []


def test_disk_full_while_creating_a_queue(b, root, mocker):
    fail_os(mocker, "write", errno.ENOSPC, lambda fd, *rest: fd > 2)
    with pytest.raises(StorageError, match="no space"):
        b.create_queue("q", priority=3)
    mocker.stopall()
    assert os.listdir(root) == ["ddmq.yaml"]
    b.create_queue("q", priority=3)
    assert b.settings("q")["priority"] == 3


def test_disk_full_through_the_cli(b, q, root, mocker):
    fail_os(mocker, "write", errno.ENOSPC, lambda fd, *rest: fd > 2)
    line = one_line_error(ddmq_("--root", root, "publish", q, "m"), 1)
    mocker.stopall()
    assert "no space" in line
    assert ready_files(root / q / "ready") == [] and os.listdir(root / q / "tmp") == []


def test_disk_full_while_dead_lettering_still_dead_letters(b, q, root, outside, mocker):
    """The .reason sidecar is best effort: a full disk must not stop the junk being moved aside."""
    _plant("garbage", root / q / "ready", b, outside, "ready")
    b.publish(q, "good", priority=999_999)
    fail_os(mocker, "write", errno.ENOSPC, lambda fd, *rest: fd > 2)
    got = b.consume(q, n=5)
    mocker.stopall()
    assert [m.message for m in got] == ["good"]
    assert b.counts(q)["dead"] == 1


# ------------------------------------------------------------ settings files
BAD_SETTINGS = [
    ("unknown_key", "priority: 5\nprioritty: 3\n", ["prioritty"]),
    ("wrong_type_str", "priority: high\n", ["priority"]),
    ("wrong_type_bool", "durable: 'yes please'\n", ["durable"]),
    ("wrong_type_list", "message_timeout: [1, 2]\n", ["message_timeout"]),
    ("out_of_range", "requeue_limit: -1\n", ["requeue_limit"]),
    ("float_priority", "priority: 1.5\n", ["priority"]),
    ("bool_as_number", "clean_interval: true\n", ["clean_interval"]),
    ("infinite_timeout", "message_timeout: .inf\n", ["message_timeout"]),  # would overflow the lease
    ("huge_timeout", "message_timeout: 1.0e+300\n", ["message_timeout"]),
    ("invalid_yaml", "priority: [1, 2\n", ["YAML"]),
    ("tab_indent", "priority:\n\t- 1\n", ["YAML"]),
    ("list", "- priority\n- 5\n", ["mapping"]),
    ("scalar", "just some text\n", ["mapping"]),
    ("python_tag", "priority: !!python/object/apply:os.system ['touch {marker}']\n", ["priority"]),
    ("python_object", "!!python/object:ddmq.broker.CleanReport {requeued: 1}\n", ["python"]),
]


@pytest.mark.parametrize("where", ["root", "queue"])
@pytest.mark.parametrize("label, text, fragments", BAD_SETTINGS, ids=[c[0] for c in BAD_SETTINGS])
def test_bad_settings_files(b, q, root, tmp_path, where, label, text, fragments):
    marker = tmp_path / "PWNED"
    path = root / "ddmq.yaml" if where == "root" else root / q / "ddmq.yaml"
    path.write_text(text.replace("{marker}", str(marker)))
    for call in (lambda: b.settings(q), lambda: b.publish(q, "m"), lambda: Broker(root).consume(q),
                 lambda: Broker(root).settings(q)):
        with pytest.raises(SettingsError) as info:
            call()
        message = str(info.value)
        assert str(path) in message, message
        for fragment in fragments:
            assert fragment in message, (fragment, message)
        assert "\n" not in message
    assert not marker.exists(), "the YAML loader executed a python tag"
    assert b.counts(q) == {"ready": 0, "work": 0, "dead": 0}
    # fixing the file makes the queue usable again
    path.write_text("priority: 7\n# fixed\n")
    assert b.publish(q, "m").priority == 7


def test_settings_file_not_utf8(b, q, root):
    (root / q / "ddmq.yaml").write_bytes(b"priority: \xff\xfe\n")
    with pytest.raises(SettingsError, match="UTF-8") as info:
        b.settings(q)
    assert str(root / q / "ddmq.yaml") in str(info.value)


def test_empty_and_comment_only_settings_files_mean_defaults(b, q, root):
    for text in ("", "# nothing\n", "---\n", "\n\n"):
        (root / q / "ddmq.yaml").write_text(text)
        assert Broker(root).settings(q)["priority"] == 999


def test_bad_settings_through_the_cli_name_file_and_key(b, q, root):
    (root / q / "ddmq.yaml").write_text("requeue: maybe\n")
    for args in (["publish", q, "m"], ["consume", q]):
        line = one_line_error(ddmq_("--root", root, *args), 1)
        assert str(root / q / "ddmq.yaml") in line and "requeue" in line


def test_bad_settings_arguments_create_nothing(b, root):
    for kwargs, key in (({"prioritty": 1}, "prioritty"), ({"priority": "1"}, "priority"),
                        ({"requeue": 1}, "requeue"), ({"message_timeout": 0}, "message_timeout")):
        with pytest.raises(SettingsError, match=key):
            b.create_queue("q", **kwargs)
    assert b.list_queues() == [] and os.listdir(root) == ["ddmq.yaml"]


def test_bad_per_message_arguments_publish_nothing(b, q):
    for kwargs in ({"priority": -1}, {"priority": True}, {"message_timeout": "10"}, {"requeue_limit": 1.5},
                   {"headers": {1: "x"}}, {"headers": ["x"]}):
        with pytest.raises(DdmqError):
            b.publish(q, "m", **kwargs)
    with pytest.raises(UsageError):
        b.publish(q, object())  # not JSON-serialisable
    with pytest.raises(UsageError):
        b.publish(q, float("nan"))
    assert b.counts(q)["ready"] == 0
