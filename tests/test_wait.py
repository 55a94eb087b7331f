"""``ddmq-wait``: block until matching messages arrive, hand them over exactly once, never leak a claim.

End-to-end behaviour runs the installed ``ddmq-wait`` (and ``ddmq-notify``,
``ddmq``) scripts in subprocesses on a real root under ``tmp_path``, with
``DDMQ_ROOT``/``HOME`` set explicitly. What cannot be seen from outside (how
often a file is read, the polling schedule) and fault injection (a signal at
a chosen instant) run in-process with pytest-mock.
"""
from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import ddmq.atomic
from ddmq import Broker
from ddmq_hpc import wait as wait_mod
from ddmq_hpc.wait import wait
from tests.support.queuefiles import message_path, queue_files

BIN = Path(sys.executable).parent
SCRIPTS = {name: BIN / name for name in ("ddmq-wait", "ddmq-notify", "ddmq")}
MESSAGE_KEYS = {"id", "queue", "message", "priority", "published", "headers", "message_timeout",
                "requeue", "requeue_prio", "requeue_limit", "durable", "host", "pid", "requeues",
                "receipt", "lease_expires", "delivery_count"}
FAST = ["--interval", "0.05", "--max-interval", "0.2"]


# ------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def scripts() -> dict[str, Path]:
    missing = [str(path) for path in SCRIPTS.values() if not path.is_file()]
    if missing:
        pytest.fail(f"console scripts not installed next to {sys.executable}: {', '.join(missing)}; "
                    "run `pip install -e .`")
    return SCRIPTS


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def env(tmp_path: Path, root: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PBS_", "DDMQ_"))}
    e["HOME"] = str(tmp_path / "home")
    e["DDMQ_ROOT"] = str(root)
    return e


def start(scripts, *args: object, env: dict[str, str], name: str = "ddmq-wait") -> subprocess.Popen:
    return subprocess.Popen([str(scripts[name]), *map(str, args)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args} still running after {timeout} s (stderr: {err!r})")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(scripts, *args: object, env: dict[str, str], name: str = "ddmq-wait",
        timeout: float = 30) -> subprocess.CompletedProcess:
    return finish(start(scripts, *args, env=env, name=name), timeout)


def run_all(scripts, arg_lists: list[list[object]], env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """Independent commands, run at once; results in order."""
    return [finish(p) for p in [start(scripts, *args, env=env) for args in arg_lists]]


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (proc.args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert proc.returncode == code, (proc.args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {proc.stderr!r}"
    assert lines[0].startswith("ddmq-wait: "), lines
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


def files(root: Path, queue: str = "q") -> dict[str, list[str]]:
    """Every name in every state directory of the queue (hidden ones included)."""
    return queue_files(root / queue)


def ctimes(root: Path, queue: str = "q") -> dict[str, int]:
    """Inode change times of ready messages: a claim (rename) changes them, a read does not."""
    return {path.name: path.stat().st_ctime_ns for path in (root / queue / "ready").rglob("*.msg")}


def wait_for(condition, timeout: float = 15, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def queue_exists(root: Path, queue: str = "q"):
    return lambda: (root / queue / "ddmq.yaml").is_file()


@pytest.fixture
def broker(root: Path) -> Broker:
    return Broker(root, create=True)


# -------------------------------------------------------- basic delivery
def test_takes_a_waiting_message_prints_the_body_and_acks_it(scripts, env, root, broker):
    broker.publish("q", "hello world", create=True)
    assert ok(run(scripts, "q", "--timeout", "10", env=env)) == "hello world\n"
    assert files(root) == {"ready": [], "work": [], "dead": [], "tmp": []}


def test_create_makes_root_and_queue_and_waits_for_a_message_from_another_process(scripts, env, root):
    """Latency: with --interval 0.1 --max-interval 0.2 a publish is seen within about a second."""
    waiter = start(scripts, "q", "--create", "--interval", "0.1", "--max-interval", "0.2", "--timeout", "30",
                   env=env)
    wait_for(queue_exists(root), what="the waiter to create the queue")
    time.sleep(0.6)  # let its backoff reach the maximum interval
    assert waiter.poll() is None, "the waiter must block while the queue is empty"
    ok(run(scripts, "q", "--json", '{"job_id": 7, "state": "COMPLETED"}', env=env, name="ddmq-notify"))
    published = time.monotonic()
    result = finish(waiter)
    seen = time.monotonic() - published
    assert json.loads(ok(result)) == {"job_id": 7, "state": "COMPLETED"}
    assert seen < 5, f"waiter took {seen:.2f} s to see the message"
    assert files(root)["ready"] == [] and files(root)["work"] == []


def test_format_json_prints_whole_messages_one_per_line(scripts, env, root, broker):
    first = broker.publish("q", {"job_id": 1, "files": ["a", "b"]}, create=True, priority=7)
    second = broker.publish("q", "two", priority=7)
    out = ok(run(scripts, "q", "--count", "2", "--format", "json", "--timeout", "10", env=env))
    lines = out.splitlines()
    assert len(lines) == 2
    got = [json.loads(line) for line in lines]
    for msg, sent in zip(got, (first, second)):
        assert MESSAGE_KEYS <= set(msg)
        assert msg["id"] == sent.id and msg["queue"] == "q" and msg["priority"] == 7
        assert msg["message"] == sent.message
    assert files(root)["ready"] == [] and files(root)["work"] == []


def test_count_waits_for_all_of_them(scripts, env, root, broker):
    broker.publish("q", "one", create=True)
    broker.publish("q", "two")
    waiter = start(scripts, "q", "--count", "3", "--timeout", "30", *FAST, env=env)
    wait_for(lambda: len(files(root)["work"]) == 2, what="the waiter to hold two messages")
    time.sleep(0.3)
    assert waiter.poll() is None, "two of three is not enough"
    broker.publish("q", "three")
    assert ok(finish(waiter)) == "one\ntwo\nthree\n"
    assert files(root) == {"ready": [], "work": [], "dead": [], "tmp": []}


# --------------------------------------------------------------- matching
def test_match_takes_only_the_exact_body_and_leaves_the_rest_alone(scripts, env, root, broker):
    for body in ("Done", "done!", "not done", " done", "done\n"):
        broker.publish("q", body, create=True)
    broker.publish("q", {"state": "done"})
    before, before_ctimes = files(root), ctimes(root)
    waiter = start(scripts, "q", "--match", "done", "--timeout", "30", *FAST, env=env)
    time.sleep(0.5)
    assert waiter.poll() is None, "nothing matches yet"
    broker.publish("q", "done")
    assert ok(finish(waiter)) == "done\n"
    assert files(root) == before, "non-matching messages must not be claimed, moved or renamed"
    assert ctimes(root) == before_ctimes, "non-matching messages must not have been renamed and back"


def test_regex(scripts, env, root, broker):
    for body in ("job-x done", "job-17 done later", {"note": "job-3 done"}, "job-17 done"):
        broker.publish("q", body, create=True)
    before = files(root)
    assert ok(run(scripts, "q", "--regex", r"^job-[0-9]+ done$", "--timeout", "10", *FAST, env=env)) \
        == "job-17 done\n"
    after = files(root)
    assert len(after["ready"]) == 3 and set(after["ready"]) < set(before["ready"])
    assert after["work"] == [] and after["dead"] == []


def test_field_matches_numbers_and_strings_alike(scripts, env, root, broker):
    bodies = [{"job_id": 1234}, {"job": 123}, "job_id=123", [123], {"job_id": "123", "x": 1},
              {"job_id": 12}, {"job_id": 123}, {"job_id": "0123"}]
    for body in bodies:
        broker.publish("q", body, create=True)
    keep = [m.id for m in Broker(root).peek("q", n=100) if m.message not in ({"job_id": "123", "x": 1},
                                                                            {"job_id": 123})]
    out = ok(run(scripts, "q", "--field", "job_id=123", "--count", "2", "--timeout", "10", *FAST, env=env))
    assert [json.loads(line) for line in out.splitlines()] == [{"job_id": "123", "x": 1}, {"job_id": 123}]
    assert [m.id for m in Broker(root).peek("q", n=100)] == keep
    assert files(root)["work"] == []


def test_all_fields_must_match(scripts, env, root, broker):
    broker.publish("q", {"job_id": "5", "state": "FAILED", "ok": False}, create=True)
    broker.publish("q", {"job_id": "6", "state": "COMPLETED", "ok": True})
    broker.publish("q", {"job_id": "5", "state": "COMPLETED", "ok": True})
    out = ok(run(scripts, "q", "--field", "job_id=5", "--field", "state=COMPLETED", "--field", "ok=true",
                 "--timeout", "10", *FAST, env=env))
    assert json.loads(out) == {"job_id": "5", "state": "COMPLETED", "ok": True}
    assert [m.message["job_id"] for m in Broker(root).peek("q", n=10)] == ["5", "6"]


def test_nothing_matching_times_out_with_124_and_disturbs_nothing(scripts, env, root, broker):
    for i in range(5):
        broker.publish("q", {"job_id": i}, create=True)
    before, before_ctimes = files(root), ctimes(root)
    output = root.parent / "never.txt"
    began = time.monotonic()
    proc = run(scripts, "q", "--field", "job_id=99", "--timeout", "0.7", "--output", output, *FAST, env=env)
    assert time.monotonic() - began < 0.7 + 5
    one_line_error(proc, 124, "timed out")
    assert proc.stdout == "" and not output.exists()
    assert files(root) == before and ctimes(root) == before_ctimes


def test_empty_queue_times_out(scripts, env, root, broker):
    broker.create_queue("q")
    began = time.monotonic()
    proc = run(scripts, "q", "--timeout", "0.5", env=env)
    assert time.monotonic() - began < 0.5 + 5
    one_line_error(proc, 124, "timed out")


# ---------------------------------------------------- one waiter per event
def test_one_event_goes_to_exactly_one_of_three_waiters(scripts, env, root, broker):
    broker.create_queue("q")
    waiters = [start(scripts, "q", "--match", "go", "--timeout", "2.5", "--interval", "0.05",
                     "--max-interval", "0.1", env=env) for _ in range(3)]
    time.sleep(0.8)  # all three polling
    broker.publish("q", "go")
    results = [finish(w) for w in waiters]
    codes = sorted(r.returncode for r in results)
    assert codes == [0, 124, 124], [(r.returncode, r.stderr) for r in results]
    assert [r.stdout for r in results if r.returncode == 0] == ["go\n"]
    for r in results:
        if r.returncode == 124:
            assert r.stdout == ""
            assert "Traceback" not in r.stderr
    assert files(root) == {"ready": [], "work": [], "dead": [], "tmp": []}


def test_peek_lets_every_waiter_see_the_event(scripts, env, root, broker):
    broker.create_queue("q")
    waiters = [start(scripts, "q", "--peek", "--match", "go", "--timeout", "20", *FAST, env=env)
               for _ in range(3)]
    time.sleep(0.5)
    broker.publish("q", "go")
    before = files(root)
    results = [finish(w) for w in waiters]
    assert [ok(r) for r in results] == ["go\n"] * 3
    assert files(root) == before and len(before["ready"]) == 1


def test_peek_count_needs_distinct_messages(scripts, env, root, broker):
    broker.publish("q", "only one", create=True)
    before = files(root)
    one_line_error(run(scripts, "q", "--peek", "--count", "2", "--timeout", "0.7", *FAST, env=env), 124)
    assert files(root) == before
    broker.publish("q", "another")
    assert ok(run(scripts, "q", "--peek", "--count", "2", "--timeout", "10", *FAST, env=env)) \
        == "only one\nanother\n"
    assert len(files(root)["ready"]) == 2


# ----------------------------------------------- timeouts release what is held
def test_timeout_releases_held_messages_unchanged(scripts, env, root, broker):
    sent = broker.publish("q", "first of two", create=True, priority=5)
    before = files(root)
    proc = run(scripts, "q", "--count", "2", "--timeout", "0.7", *FAST, env=env)
    one_line_error(proc, 124, "1 of 2")
    assert proc.stdout == ""
    assert files(root) == before, "the held message must be back under its old name"
    peeked = json.loads(ok(run(scripts, "peek", "q", "--format", "json", env=env, name="ddmq")))
    peeked = peeked if isinstance(peeked, list) else [peeked]
    assert len(peeked) == 1
    assert peeked[0]["id"] == sent.id
    assert peeked[0]["priority"] == 5 and peeked[0]["requeues"] == 0
    assert peeked[0]["message"] == "first of two"
    # The waiter's claim is not counted: the next consumer is its first delivery.
    [again] = Broker(root).consume("q")
    assert again.id == sent.id and again.requeues == 0 and again.delivery_count == 1


# --------------------------------------------------------- --output FILE
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x2, 0x8, 0x80, 0x100, 0x200


class DirectoryEvents:
    """What the kernel saw happen to names in a directory (Linux inotify via ctypes), else None.

    Deterministic where a polling reader is not: a file written in place shows
    IN_CREATE/IN_MODIFY/IN_CLOSE_WRITE under its own name however fast the write.
    """

    def __init__(self, directory: Path):
        self.fd = -1
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            self.fd = libc.inotify_init1(os.O_NONBLOCK)
            watched = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE
            if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(directory), watched) < 0:
                self.close()
        except (OSError, AttributeError):
            self.close()

    def read(self) -> list[tuple[str, int]] | None:
        if self.fd < 0:
            return None
        data = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        events = []
        offset = 0
        while offset + 16 <= len(data):
            _, mask, _, length = struct.unpack_from("iIII", data, offset)
            name = data[offset + 16: offset + 16 + length].rstrip(b"\0").decode()
            events.append((name, mask))
            offset += 16 + length
        return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


def test_output_file_is_written_atomically(scripts, env, root, broker, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    target = outdir / "result.txt"
    target.write_text("old content\n")
    body = "".join(f"line {i:07d} of a large event\n" for i in range(80_000))  # ~2 MB
    expected = body + "\n"
    broker.create_queue("q")
    seen: set[str] = set()
    torn: list[int] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                with open(target, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                torn.append(-1)
                continue
            if text not in ("old content\n", expected):
                torn.append(len(text))
            seen.add("new" if text == expected else "old")

    kernel = DirectoryEvents(outdir)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        waiter = start(scripts, "q", "--output", target, "--timeout", "30", *FAST, env=env)
        wait_for(lambda: "old" in seen, what="the watcher")
        broker.publish("q", body)
        result = finish(waiter)
        time.sleep(0.05)
    finally:
        stop.set()
        watcher.join()
    assert ok(result) == "", "with --output nothing goes to stdout"
    assert torn == [], f"a reader saw a missing or partial file: {torn[:5]}"
    events = kernel.read()
    kernel.close()
    if events is not None:
        on_target = [mask for name, mask in events if name == target.name]
        assert on_target and all(mask & IN_MOVED_TO for mask in on_target), (
            f"{target.name} was created, written or deleted in place, not renamed into place: {events}")
    assert target.read_text(encoding="utf-8") == expected
    assert sorted(os.listdir(outdir)) == ["result.txt"], "no temporary file may be left behind"
    assert files(root)["ready"] == [] and files(root)["work"] == []


def test_output_file_with_json_format(scripts, env, root, broker, tmp_path):
    sent = broker.publish("q", {"job_id": 3}, create=True)
    target = tmp_path / "event.json"
    ok(run(scripts, "q", "--output", target, "--format", "json", "--timeout", "10", env=env))
    data = json.loads(target.read_text())
    assert data["id"] == sent.id and data["message"] == {"job_id": 3}
    assert "event.json" in os.listdir(tmp_path)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")], "temporary file left behind"


@pytest.mark.parametrize("where", ["missing-dir/out.txt", "a-directory"])
def test_unwritable_output_fails_and_puts_the_message_back(scripts, env, root, broker, tmp_path, where):
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-directory" / "keep").write_text("x")
    broker.publish("q", "precious", create=True)
    before = files(root)
    proc = run(scripts, "q", "--output", tmp_path / where, "--timeout", "10", env=env)
    one_line_error(proc, 1)
    assert files(root) == before, "the message must be released, not lost or left leased"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert os.listdir(tmp_path / "a-directory") == ["keep"]


# -------------------------------------------------------------- signals
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_while_waiting_exits_promptly(scripts, env, root, broker, signum, code):
    broker.create_queue("q")
    waiter = start(scripts, "q", "--timeout", "60", "--interval", "1", "--max-interval", "30", env=env)
    time.sleep(0.8)
    sent = time.monotonic()
    waiter.send_signal(signum)
    result = finish(waiter, timeout=10)
    assert time.monotonic() - sent < 5
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert files(root)["work"] == []


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_puts_back_the_messages_held(scripts, env, root, broker, signum, code):
    broker.publish("q", "half of what we wait for", create=True, priority=4)
    before = files(root)
    waiter = start(scripts, "q", "--count", "2", "--timeout", "60", *FAST, env=env)
    wait_for(lambda: len(files(root)["work"]) == 1, what="the waiter to claim the first message")
    time.sleep(0.2)
    sent = time.monotonic()
    waiter.send_signal(signum)
    result = finish(waiter, timeout=10)
    assert time.monotonic() - sent < 5
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert files(root) == before, "work/ must be empty and the message back under its old name"


def test_signal_after_delivery_leaves_nothing_leased(root, broker, restore_signals, mocker, capsys):
    """A SIGTERM landing while the delivered messages are being acked must not strand them in work/."""
    broker.publish("q", "one", create=True)
    broker.publish("q", "two")
    real_ack = Broker.ack
    acks: list[str] = []

    def ack_then_signal(self, message, queue=None):
        acks.append(message.id)
        if len(acks) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_ack(self, message, queue)

    mocker.patch.object(Broker, "ack", ack_then_signal)
    try:
        wait_mod.main(["q", "--root", str(root), "--count", "2", "--timeout", "10"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr().out
    assert out == "one\ntwo\n"  # delivered ...
    assert code in (0, 143)
    state = files(root)
    assert state["work"] == [], "delivered messages were left claimed but not acked"
    assert state["ready"] == [], "... so they must be acked, not handed out again"


def test_signal_while_writing_output_is_taken_after_delivery(root, broker, restore_signals, mocker,
                                                             tmp_path, capsys):
    """Delivery and ack are one step as far as signals go: the output is whole and the messages acked."""
    broker.publish("q", "one", create=True)
    broker.publish("q", "two")
    before = files(root)
    real_fsync = os.fsync

    def fsync_then_signal(fd):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_fsync(fd)

    mocker.patch("os.fsync", side_effect=fsync_then_signal)
    target = tmp_path / "out" / "events.txt"
    target.parent.mkdir()
    wait_mod.main(["q", "--root", str(root), "--count", "2", "--timeout", "10", "--output", str(target)])
    assert os.listdir(target.parent) == ["events.txt"], "no temporary file left"
    assert target.read_text() == "one\ntwo\n"
    assert files(root) != before and Broker(root).counts("q") == {"ready": 0, "work": 0, "dead": 0}
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------- polling, in-process
@pytest.mark.parametrize("peek", [False, True])
def test_each_non_matching_message_is_read_at_most_once(root, broker, mocker, peek):
    for i in range(40):
        broker.publish("q", {"job_id": i}, create=True)
    reads = mocker.spy(ddmq.atomic, "read_file")
    listings = mocker.spy(ddmq.atomic, "listdir")
    publisher = threading.Timer(0.6, lambda: Broker(root).publish("q", {"job_id": "wanted"}))
    publisher.start()
    try:
        got = wait("q", root=str(root), fields={"job_id": "wanted"}, timeout=20, peek=peek,
                   interval=0.05, max_interval=0.1)
    finally:
        publisher.join()
    assert [m.message for m in got] == [{"job_id": "wanted"}]
    polls = sum(1 for c in listings.call_args_list if Path(c.args[0].path).name == "ready")
    assert polls >= 4, f"only {polls} polls: the test did not exercise repeated polling"
    per_file: dict[str, int] = {}
    for c in reads.call_args_list:  # read_file(directory, name, limit)
        per_file[c.args[1]] = per_file.get(c.args[1], 0) + 1
    wanted_id = got[0].id
    repeated = {name: n for name, n in per_file.items() if wanted_id not in name and n > 1}
    assert repeated == {}, f"non-matching files read more than once: {list(repeated.items())[:3]}"
    assert sum(n for name, n in per_file.items() if wanted_id not in name) == 40
    remaining = Broker(root).peek("q", n=100)
    assert len(remaining) == (41 if peek else 40)


def test_polling_backs_off_exponentially_with_jitter_to_the_maximum(root, broker, mocker):
    broker.create_queue("q")
    pauses: list[float] = []

    def fake_sleep(seconds):
        pauses.append(seconds)
        if len(pauses) == 12:
            broker.publish("q", "at last")

    mocker.patch.object(wait_mod.time, "sleep", side_effect=fake_sleep)
    got = wait("q", root=str(root), interval=0.1, max_interval=1.6)
    assert [m.message for m in got] == ["at last"]
    assert len(pauses) == 12
    assert 0.08 <= pauses[0] <= 0.12
    for earlier, later in zip(pauses[:4], pauses[1:5]):
        assert 1.5 < later / earlier < 2.5, pauses  # doubling (with some jitter)
    assert max(pauses) <= 1.6 * 1.15, "never much beyond --max-interval"
    capped = pauses[6:]
    assert all(p >= 1.6 * 0.85 for p in capped), pauses
    assert len(set(capped)) > 1, "pauses at the maximum should be jittered"


def test_transient_listing_errors_do_not_end_the_wait(root, broker, mocker):
    """An ESTALE/EIO blip of the network filesystem while polling is waited out, not fatal."""
    broker.publish("q", "after the blip", create=True)
    real_listdir = os.listdir
    failures: list[str] = []

    def flaky(path="."):
        listed = os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else path  # ddmq lists open dirs
        if Path(listed).name == "ready" and len(failures) < 2:
            failures.append(str(path))
            raise OSError(errno.ESTALE if not failures[:-1] else errno.EIO, "blip")
        return real_listdir(path)

    mocker.patch("os.listdir", side_effect=flaky)
    got = wait("q", root=str(root), timeout=20, interval=0.05, max_interval=0.1)
    assert [m.message for m in got] == ["after the blip"] and len(failures) == 2
    mocker.stopall()
    assert files(root) == {"ready": [], "work": [], "dead": [], "tmp": []}


# --------------------------------------------------------------- errors
def test_usage_errors_exit_2(scripts, env, root):
    cases = [
        [],
        ["q", "--count", "0"],
        ["q", "--count", "-3"],
        ["q", "--interval", "0"],
        ["q", "--interval", "2", "--max-interval", "1"],
        ["q", "--regex", "(unclosed"],
        ["q", "--field", "novalue"],
        ["q", "--format", "xml"],
        ["q", "--timeout", "soon"],
        ["q", "--no-such-option"],
    ]
    for args, proc in zip(cases, run_all(scripts, cases, env)):
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr, (args, proc.stderr)
        assert proc.stderr.strip(), args
        assert proc.stdout == ""


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", ""])
def test_invalid_queue_name(scripts, env, root, broker, tmp_path, name):
    results = run_all(scripts, [[name, "--timeout", "1"], [name, "--timeout", "1", "--no-create"],
                                [name, "--timeout", "1", "--peek"]], env)
    for proc in results:
        one_line_error(proc, 2, "invalid queue name")
    assert not (tmp_path / "escape").exists()
    if root.exists():
        assert Broker(root).list_queues() == []


def test_no_create_on_a_missing_queue_exits_4(scripts, env, root, broker):
    broker.create_queue("other")
    for args in (["q", "--no-create", "--timeout", "5"], ["q", "--no-create", "--peek", "--timeout", "5"]):
        one_line_error(run(scripts, *args, env=env), 4, "'q'")
    assert Broker(root).list_queues() == ["other"]


def test_no_create_on_a_missing_root_exits_4(scripts, env, root):
    one_line_error(run(scripts, "q", "--no-create", "--timeout", "5", env=env), 4, str(root))
    assert not root.exists()


def test_no_create_does_not_create_the_default_root(scripts, env, tmp_path):
    del env["DDMQ_ROOT"]
    (tmp_path / "home").mkdir()
    one_line_error(run(scripts, "q", "--no-create", "--timeout", "5", env=env), 4)
    assert not (tmp_path / "home" / ".ddmq").exists(), "--no-create created ~/.ddmq"


# ------------------------------------------------- hostile names and numbers
def _plant_payload(root: Path, msg_id: str, in_queue: str = "q", raw_body: str | None = None, **fields) -> None:
    """Rewrite a ready message's payload with ``fields`` (JSON escapes: ``\\u0000``, lone surrogates),
    or with ``raw_body`` (JSON text) as its body."""
    path = message_path(root / in_queue / "ready", msg_id)
    raw = json.loads(path.read_text())
    raw.update(fields)
    text = json.dumps(raw)  # ensure_ascii: every odd character escaped
    if raw_body is not None:
        raw["message"] = "@BODY@"
        text = json.dumps(raw).replace('"@BODY@"', raw_body)
    new = path.with_name(path.name + ".new")
    new.write_text(text)
    os.replace(new, path)


def test_output_does_not_follow_a_symlink_planted_at_a_temporary_name(scripts, env, root, broker, tmp_path):
    """A member of the group who can write the output's directory plants a symlink where the waiter
    once put its temporary file (``.NAME.ddmq-wait.PID``): the waiter must not write through it.
    The shell plants it at its own pid ($$), which exec hands on to ddmq-wait."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    outdir = tmp_path / "shared"
    outdir.mkdir()
    target = outdir / "event.txt"
    broker.publish("q", "the event", create=True)
    plant = 'ln -s "$1" "$2/.event.txt.ddmq-wait.$$" && shift 2 && exec "$@"'
    proc = subprocess.run(["sh", "-c", plant, "sh", str(victim), str(outdir), str(scripts["ddmq-wait"]), "q",
                           "--output", str(target), "--timeout", "10"],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    assert victim.read_text() == "precious\n", "the waiter wrote through a planted symlink"
    assert not target.is_symlink() and target.read_text() == "the event\n"
    assert [n for n in os.listdir(outdir) if n != "event.txt" and not (outdir / n).is_symlink()] == [], \
        "temporary file left behind"
    assert files(root)["ready"] == [] and files(root)["work"] == []


def test_output_temporary_name_is_never_reused(root, broker, restore_signals, mocker, tmp_path, capsys):
    """The temporary file is created exclusively: a name taken by anything, even a dangling symlink,
    is passed over for another random one, never opened."""
    broker.publish("q", "the event", create=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    outdir = tmp_path / "shared"
    outdir.mkdir()
    tokens = iter(["taken", "dangling", "free"])
    mocker.patch.object(wait_mod, "_token", side_effect=lambda: next(tokens))
    (outdir / ".event.txt.taken.ddmq-wait").symlink_to(victim)
    (outdir / ".event.txt.dangling.ddmq-wait").symlink_to(tmp_path / "nowhere")
    wait_mod.main(["q", "--root", str(root), "--timeout", "10", "--output", str(outdir / "event.txt")])
    assert victim.read_text() == "precious\n" and not (tmp_path / "nowhere").exists()
    assert (outdir / "event.txt").read_text() == "the event\n"
    assert sorted(os.listdir(outdir)) == [".event.txt.dangling.ddmq-wait", ".event.txt.taken.ddmq-wait",
                                          "event.txt"]
    assert "Traceback" not in capsys.readouterr().err


def test_output_write_failure_removes_the_temporary_file(root, broker, restore_signals, mocker, tmp_path,
                                                         capsys):
    """ENOSPC while the output is made durable: one line, exit 1, message back, no temporary file."""
    broker.publish("q", "precious", create=True)
    before = files(root)
    real_fsync = os.fsync

    def full(fd):
        if "ddmq-wait" in os.readlink(f"/proc/self/fd/{fd}"):  # the output's temporary file
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    mocker.patch("os.fsync", side_effect=full)
    with pytest.raises(SystemExit) as exited:
        wait_mod.main(["q", "--root", str(root), "--timeout", "10", "--output", str(tmp_path / "out.txt")])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("ddmq-wait: ") and "No space left" in err, err
    assert [n for n in os.listdir(tmp_path) if n.startswith(".") or n.startswith("out")] == [], \
        "temporary or partial output left behind"
    assert files(root) == before


BAD_NUMBERS = [
    ["--timeout", "inf"], ["--timeout", "1e300"], ["--timeout", "nan"], ["--timeout", "-1"],
    ["--timeout", "-inf"], ["--timeout", "1e10"],
    ["--interval", "1e10"], ["--interval", "nan"], ["--interval", "inf"], ["--interval", "-1"],
    ["--interval", "0"],
    ["--max-interval", "1e10"], ["--max-interval", "nan"], ["--max-interval", "inf"], ["--max-interval", "-2"],
    ["--count", "99999999999"], ["--count", "0"],
]


def test_numbers_out_of_range_are_one_line_usage_errors(scripts, env, root):
    procs = [start(scripts, "q", *args, env=env) for args in BAD_NUMBERS]
    try:
        results = [finish(p, timeout=15) for p in procs]
    finally:
        for p in procs:  # before the fix some of them waited for ever
            if p.poll() is None:
                p.kill()
                p.wait()
    for args, proc in zip(BAD_NUMBERS, results):
        line = one_line_error(proc, 2)
        assert args[0] in line, (args, line)
    assert not root.exists(), "a usage error must not create the root"


def test_largest_numbers_are_accepted(scripts, env, root, broker):
    """1e9 s (the core's longest lease) is a valid interval and timeout; the timeout still wins."""
    broker.create_queue("q")
    began = time.monotonic()
    proc = run(scripts, "q", "--interval", "1e9", "--max-interval", "1e9", "--timeout", "0.5", env=env)
    assert time.monotonic() - began < 10
    one_line_error(proc, 124, "timed out")
    proc = run(scripts, "q", "--timeout", "0", env=env)  # one look, no waiting
    one_line_error(proc, 124, "timed out")


def test_python_api_refuses_bad_numbers(root):
    """wait() itself refuses them (in a child process: before the fix, NaN waited for ever)."""
    code = textwrap.dedent(f"""
        from ddmq.errors import UsageError
        from ddmq_hpc.wait import wait
        for kwargs in ({{"timeout": float("nan")}}, {{"timeout": float("inf")}}, {{"timeout": -1}},
                       {{"interval": 1e10, "max_interval": 1e10}}, {{"max_interval": float("nan")}},
                       {{"count": 10**12}}):
            try:
                wait("q", root={str(root)!r}, **kwargs)
            except UsageError as exc:
                print("refused", exc)
            else:
                print("accepted", kwargs)
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 6 and all(line.startswith("refused ") for line in lines), lines


@pytest.mark.parametrize("fmt", ["body", "json"])
def test_a_body_that_cannot_be_encoded_as_is_is_still_delivered(scripts, env, root, broker, fmt):
    """A planted payload whose body holds a lone surrogate: printed (JSON: escaped), never a traceback."""
    sent = broker.publish("q", "placeholder", create=True)
    _plant_payload(root, sent.id, message="a\ud800b")
    proc = subprocess.run([str(scripts["ddmq-wait"]), "q", "--format", fmt, "--timeout", "10"], env=env,
                          capture_output=True, timeout=30)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    if fmt == "json":
        assert json.loads(proc.stdout)["message"] == "a\ud800b"
    else:
        assert proc.stdout == "a\ud800b\n".encode("utf-8", "surrogatepass")  # as ddmq-dispatch passes it on
    assert files(root)["ready"] == [] and files(root)["work"] == []


@pytest.mark.parametrize("peek", [False, True])
def test_a_planted_deep_body_is_never_rendered(scripts, env, root, broker, peek):
    sent = broker.publish("q", "placeholder", create=True)
    _plant_payload(root, sent.id, raw_body="[" * 2000 + "]" * 2000)
    proc = run(scripts, "q", "--format", "json", "--timeout", "1", *FAST, *(["--peek"] if peek else []), env=env)
    one_line_error(proc, 124, "timed out")
    assert files(root)["work"] == []


def test_sigterm_stops_a_waiter_stuck_on_a_fifo(scripts, env, root):
    """A FIFO planted as the queue's ddmq.yaml must not make the waiter unkillable (scancel sends TERM)."""
    Broker(root, create=True).create_queue("q")
    settings = root / "q" / "ddmq.yaml"
    settings.unlink()
    os.mkfifo(settings)
    waiter = start(scripts, "q", "--no-create", "--root", root, "--timeout", "30", env=env)
    time.sleep(1)
    sent = time.monotonic()
    if waiter.poll() is None:
        waiter.send_signal(signal.SIGTERM)
    result = finish(waiter, timeout=10)
    assert time.monotonic() - sent < 5, "SIGTERM did not stop the waiter promptly"
    assert "Traceback" not in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("ddmq-wait: "), result.stderr
    assert result.returncode in (1, 143), (result.returncode, result.stderr)


@pytest.mark.parametrize("planted", ["q\u0000x", "q\ud800", "other"])
def test_a_planted_queue_field_does_not_strand_the_message(scripts, env, root, broker, planted):
    """The payload's ``queue`` field is not checked against the queue the file lies in: the waiter
    acks (and on a timeout releases) the message in the queue it took it from."""
    broker.create_queue("other")
    sent = broker.publish("q", "first", create=True)
    _plant_payload(root, sent.id, queue=planted)
    one_line_error(run(scripts, "q", "--count", "2", "--timeout", "0.5", *FAST, env=env), 124, "1 of 2")
    assert files(root)["work"] == [] and len(files(root)["ready"]) == 1, "released into its own queue"
    assert ok(run(scripts, "q", "--timeout", "10", env=env)) == "first\n"
    assert files(root) == {"ready": [], "work": [], "dead": [], "tmp": []}
    assert files(root, "other") == {"ready": [], "work": [], "dead": [], "tmp": []}
