"""Output before ack, and only what was delivered is acked; nothing published whose ids could not be printed.

``ddmq consume`` claims without acking, prints, and acks a message only once
it has been written and flushed; ``ddmq publish`` prints the new ids before
any message becomes visible. When stdout will not take the output -- the
reader of a pipe went away, the disk is full -- every claimed message not yet
delivered is given back and nothing is published: a broken pipe exits 141
quietly (what a shell reports for a process killed by SIGPIPE), any other
output error exits 1 with one line saying what was given back. Each case runs
the installed ``ddmq`` script in real processes, through real pipes and
``/dev/full``.

Also here: ``ddmq json`` arguments must have the type the operation expects
("false" is not false), JSON nested too deep is a usage error, and numbers on
the command line that no queue can use (NaN, infinities, absurd magnitudes)
are usage errors -- never a traceback.
"""
from __future__ import annotations

import fcntl
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner

from ddmq import Broker
from ddmq.cli import cli
from tests.support.processes import wait_blocked_on_pipe

DDMQ_SCRIPT = Path(sys.executable).parent / "ddmq"
ROUTES = {"script": [str(DDMQ_SCRIPT)]}
ENOSPC_LINE = "ddmq: cannot write output: no space left on device; {}\n"
BODY = 1000  # bytes per body: 3000 of them are far more than a pipe holds
COUNT = 3000
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")


# ------------------------------------------------------------------- helpers
@pytest.fixture(params=sorted(ROUTES))
def route(request) -> list[str]:
    assert DDMQ_SCRIPT.is_file(), f"the ddmq command is not installed at {DDMQ_SCRIPT}"
    return ROUTES[request.param]


@pytest.fixture(params=["buffered", "unbuffered"])
def buffering(request, monkeypatch) -> None:
    """Unbuffered (PYTHONUNBUFFERED, as many container images set it), stdout is one write(2) per
    call, and Python itself drops what a partial write into a pipe did not take."""
    if request.param == "unbuffered":
        monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    else:
        monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)


def bodies(count: int = COUNT) -> list[str]:
    """Distinct bodies of BODY bytes each, in the order they are published (and consumed)."""
    return [f"{i:05d}".ljust(BODY, "x") for i in range(count)]


def filled(root: Path, published: list[str]) -> Path:
    Broker(root, create=True).publish_many("q", published, create=True, durable=False)
    return root


def state(root: Path) -> dict[str, int]:
    return Broker(root).counts("q")


def ready_bodies(root: Path) -> list[str]:
    return [m.message for m in Broker(root).peek("q", n=COUNT + 10)]


def leftover_payloads(root: Path) -> list[str]:
    return [n for n in os.listdir(root / "q" / "tmp") if re.fullmatch(r"[0-9a-f]{32}\.tmp", n)]


def run(route: list[str], *args: object, stdout, stdin=None, env: dict | None = None) -> subprocess.CompletedProcess:
    with open(os.devnull) if stdin is None else stdin as given:
        return subprocess.run([*route, *map(str, args)], stdin=given, stdout=stdout, stderr=subprocess.PIPE,
                              timeout=120, env={**os.environ, **(env or {})})


def closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone."""
    read, write = os.pipe()
    os.close(read)
    return write


def one_line(stderr: bytes) -> str:
    text = stderr.decode()
    assert "Traceback" not in text, text
    assert text.count("\n") == 1 and text.startswith("ddmq: "), text
    return text


# ------------------------------------------------------- consume: output before ack
@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_consume_into_a_pipe_its_reader_closes_acks_only_what_got_through(route, buffering, tmp_path, fmt):
    """``ddmq consume q -n 3000 | reader`` where the reader takes ten lines and leaves: the messages
    flushed into the pipe before it left are delivered (and acked), all the others are back in ready/."""
    published = bodies()
    root = filled(tmp_path / "root", published)
    read, write = os.pipe()
    pipe_size = fcntl.fcntl(write, F_GETPIPE_SZ)
    proc = subprocess.Popen([*route, "--root", str(root), "-f", fmt, "consume", "q", "-n", str(COUNT)],
                            stdin=subprocess.DEVNULL, stdout=write, stderr=subprocess.PIPE)
    os.close(write)
    wanted, got = 10 * (BODY + 1), b""
    try:
        while len(got) < wanted:
            chunk = os.read(read, wanted - len(got))
            assert chunk, "the consumer ended before writing ten lines"
            got += chunk
    finally:
        os.close(read)
        _, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stderr) == (141, b"")
    counts = state(root)
    assert counts["work"] == 0, "claimed messages were left leased instead of given back"
    acked = COUNT - counts["ready"] - counts["dead"]
    if fmt == "plain":
        assert got.decode().splitlines() == published[:10]
        # at least what the reader read; at most what could be in the pipe when it left
        assert 10 <= acked <= (wanted + pipe_size) // (BODY + 1) + 1, acked
    else:  # one document: it never got through whole, so nothing is acked
        assert acked == 0
    assert ready_bodies(root) == published[acked:]


def test_consume_piped_to_head_exits_141_quietly_and_loses_nothing(route, buffering, tmp_path):
    """The case of the issue, through a shell: ``ddmq consume q -n 3000 | head -1``."""
    published = bodies()
    root = filled(tmp_path / "root", published)
    out, status = tmp_path / "head.out", tmp_path / "status"
    script = f'"$@" | head -1 > {out}; echo "${{PIPESTATUS[0]}}" > {status}'
    proc = subprocess.run(["bash", "-c", script, "bash", *route, "--root", str(root), "consume", "q", "-n",
                           str(COUNT)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode == 0
    assert (status.read_text(), proc.stderr) == ("141\n", b"")
    assert out.read_text() == published[0] + "\n"
    counts = state(root)
    acked = COUNT - counts["ready"]
    assert counts["work"] == 0 and counts["dead"] == 0
    assert 1 <= acked < COUNT // 2, acked  # at most what a pipe and head's buffer held
    assert ready_bodies(root) == published[acked:]


def test_consume_interrupted_while_the_pipe_is_full_gives_back_what_it_did_not_print(route, buffering, tmp_path):
    """Ctrl-C while ``ddmq consume q -n 3000 | slow-reader`` waits for the reader: exit 130, and
    exactly the messages whose lines are whole in the pipe were acked."""
    published = bodies()
    root = filled(tmp_path / "root", published)
    read, write = os.pipe()
    proc = subprocess.Popen([*route, "--root", str(root), "consume", "q", "-n", str(COUNT)],
                            stdin=subprocess.DEVNULL, stdout=write, stderr=subprocess.PIPE)
    os.close(write)
    try:
        wait_blocked_on_pipe(proc, "writing into the full pipe", timeout=30)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        with os.fdopen(read, "rb") as pipe:
            read = -1
            got = pipe.read().decode()
    finally:
        proc.kill()
        if read >= 0:
            os.close(read)
    assert (proc.returncode, stderr) == (130, b"ddmq: interrupted\n")
    counts = state(root)
    acked = COUNT - counts["ready"]
    assert counts["work"] == 0 and 0 < acked < COUNT // 2, counts
    whole, _, partial = got.rpartition("\n")
    assert whole.split("\n") == published[:acked]
    assert published[acked].startswith(partial)  # a line cut short is given back, not acked
    assert ready_bodies(root) == published[acked:]


@needs_dev_full
@pytest.mark.parametrize("no_ack", [False, True], ids=["ack", "no-ack"])
@pytest.mark.parametrize("fmt", ["plain", "json", "yaml"])
def test_consume_to_a_full_disk_gives_every_message_back(route, tmp_path, fmt, no_ack):
    root = filled(tmp_path / "root", ["a", "b", "c", "d", "e"])
    with open("/dev/full", "w") as full:
        proc = run(route, "--root", root, "-f", fmt, "consume", "q", "-n", 5, *(["--no-ack"] * no_ack),
                   stdout=full)
    assert proc.returncode == 1
    assert one_line(proc.stderr) == ENOSPC_LINE.format("5 message(s) given back")
    assert state(root) == {"ready": 5, "work": 0, "dead": 0}
    again = Broker(root).peek("q", n=5)
    assert [m.message for m in again] == ["a", "b", "c", "d", "e"]
    assert [m.requeues for m in again] == [0] * 5  # given back as they were: no requeue spent


@pytest.mark.parametrize("fmt", ["plain", "json"])
@pytest.mark.parametrize("no_ack", [False, True], ids=["ack", "no-ack"])
def test_consume_into_a_closed_pipe_exits_141_quietly_and_gives_everything_back(route, tmp_path, fmt, no_ack):
    root = filled(tmp_path / "root", ["a", "b", "c"])
    write = closed_pipe()
    try:
        proc = run(route, "--root", root, "-f", fmt, "consume", "q", "-n", 3, *(["--no-ack"] * no_ack), stdout=write)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, b"")
    assert state(root) == {"ready": 3, "work": 0, "dead": 0}


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_consume_with_stdout_closed_gives_everything_back(route, tmp_path, fmt):
    """``ddmq consume q >&-``: nothing can be printed, so nothing may be acked."""
    root = filled(tmp_path / "root", ["a", "b"])
    proc = subprocess.run([*route, "--root", str(root), "-f", fmt, "consume", "q", "-n", "2"], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
                          preexec_fn=lambda: os.close(1))
    assert proc.returncode == 1
    assert one_line(proc.stderr) == "ddmq: cannot write output: stdout is closed; 2 message(s) given back\n"
    assert state(root) == {"ready": 2, "work": 0, "dead": 0}


def test_consume_a_body_the_output_cannot_encode_gives_it_back(route, tmp_path):
    """A latin-1 stdout cannot take '日本': one line and exit 1, not a traceback after the ack."""
    root = filled(tmp_path / "root", ["fine", "日本", "never reached"])
    proc = run(route, "--root", root, "consume", "q", "-n", 3, stdout=subprocess.PIPE,
               env={"PYTHONIOENCODING": "latin-1"})
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert line.startswith("ddmq: cannot write output: ") and line.endswith("; 2 message(s) given back\n"), line
    assert proc.stdout == b"fine\n"
    assert ready_bodies(root) == ["日本", "never reached"]
    assert state(root)["work"] == 0


def test_consume_that_succeeds_prints_what_it_did_before(route, tmp_path):
    """Acked messages are printed as before: whole messages in json, receipt null (it is spent)."""
    root = filled(tmp_path / "root", ["a", "b"])
    proc = run(route, "--root", root, "-f", "json", "consume", "q", "-n", 2, stdout=subprocess.PIPE)
    assert (proc.returncode, proc.stderr) == (0, b"")
    rows = json.loads(proc.stdout)
    assert [(r["message"], r["receipt"]) for r in rows] == [("a", None), ("b", None)]
    assert state(root) == {"ready": 0, "work": 0, "dead": 0}
    root = filled(tmp_path / "other", ["c"])
    proc = run(route, "--root", root, "-f", "json", "consume", "q", "--no-ack", stdout=subprocess.PIPE)
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["receipt"]
    assert state(root) == {"ready": 0, "work": 1, "dead": 0}


@needs_dev_full
@pytest.mark.parametrize("ack", [True, False])
def test_json_command_consume_to_a_full_disk_gives_messages_back(route, tmp_path, ack):
    root = filled(tmp_path / "root", ["a", "b"])
    request = json.dumps({"cmd": "consume", "queue": "q", "n": 2, "ack": ack})
    with open("/dev/full", "w") as full:
        proc = run(route, "--root", root, "json", request, stdout=full)
    assert proc.returncode == 1
    assert one_line(proc.stderr) == ENOSPC_LINE.format("2 message(s) given back")
    assert state(root) == {"ready": 2, "work": 0, "dead": 0}


def test_json_command_consume_into_a_closed_pipe_exits_141(route, tmp_path):
    root = filled(tmp_path / "root", ["a", "b"])
    write = closed_pipe()
    try:
        proc = run(route, "--root", root, "json", '{"cmd": "consume", "queue": "q", "n": 2}', stdout=write)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, b"")
    assert state(root) == {"ready": 2, "work": 0, "dead": 0}


# --------------------------------------------------- publish: ids printed, then visible
@needs_dev_full
@pytest.mark.parametrize("fmt", ["plain", "json", "yaml"])
def test_publish_to_a_full_disk_publishes_nothing(route, tmp_path, fmt):
    """A script that retries a publish whose output failed must not create a duplicate."""
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    with open("/dev/full", "w") as full:
        proc = run(route, "--root", root, "-f", fmt, "publish", "q", "x", "y", stdout=full)
    assert proc.returncode == 1
    assert one_line(proc.stderr) == ENOSPC_LINE.format("nothing was published")
    assert state(root) == {"ready": 0, "work": 0, "dead": 0}
    assert leftover_payloads(root) == []


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_publish_into_a_closed_pipe_exits_141_quietly_and_publishes_nothing(route, tmp_path, fmt):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    write = closed_pipe()
    try:
        proc = run(route, "--root", root, "-f", fmt, "publish", "q", "x", stdout=write)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, b"")
    assert state(root) == {"ready": 0, "work": 0, "dead": 0}
    assert leftover_payloads(root) == []


@needs_dev_full
@pytest.mark.parametrize("argv", [["view"], ["peek", "q"], ["publish", "--help"], ["--help"], ["--version"],
                                  ["json", '{"cmd": "view"}']], ids=" ".join)
def test_other_output_to_a_full_disk_is_one_line(tmp_path, argv):
    root = filled(tmp_path / "root", ["a"])
    with open("/dev/full", "w") as full:
        proc = run(ROUTES["script"], "--root", root, *argv, stdout=full)
    assert proc.returncode == 1
    assert one_line(proc.stderr) == "ddmq: cannot write output: no space left on device\n"
    assert state(root) == {"ready": 1, "work": 0, "dead": 0}


@pytest.mark.parametrize("argv", [["view"], ["publish", "--help"], ["--help"], ["--version"]], ids=" ".join)
def test_other_output_into_a_closed_pipe_exits_141(tmp_path, argv):
    root = filled(tmp_path / "root", ["a"])
    write = closed_pipe()
    try:
        proc = run(ROUTES["script"], "--root", root, *argv, stdout=write)
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (141, b"")


@pytest.mark.parametrize("fmt", ["plain", "json", "yaml"])
def test_publish_output_is_unchanged(route, tmp_path, fmt):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q", priority=7)
    proc = run(route, "--root", root, "-f", fmt, "publish", "q", "x", "y", stdout=subprocess.PIPE)
    assert (proc.returncode, proc.stderr) == (0, b"")
    published = Broker(root).peek("q", n=5)
    rows = [{"queue": "q", "id": m.id, "priority": 7} for m in published]
    if fmt == "plain":
        assert proc.stdout.decode() == "".join(m.id + "\n" for m in published)
    elif fmt == "json":
        assert proc.stdout.decode() == json.dumps(rows, sort_keys=True) + "\n"
    else:
        import yaml

        assert yaml.safe_load(proc.stdout) == rows


# ------------------------------------------------------ ddmq json: argument types
def _runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into stdout unless told not to
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def ddmq_json(root: Path, request: str):
    result = _runner().invoke(cli, ["--root", str(root), "json", request], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError("".join(traceback.format_exception(*result.exc_info)))
    return result


WRONG_TYPES = [
    {"cmd": "consume", "queue": "q", "ack": "false"},
    {"cmd": "consume", "queue": "q", "ack": 0},
    {"cmd": "consume", "queue": "q", "ack": None},
    {"cmd": "consume", "queue": "q", "n": True},
    {"cmd": "consume", "queue": "q", "n": 1.0},
    {"cmd": "consume", "queue": "q", "n": "1"},
    {"cmd": "consume", "queue": "q", "lease": "30"},
    {"cmd": "consume", "queue": "q", "lease": True},
    {"cmd": "consume", "queue": "q", "lease": [30]},
    {"cmd": "consume", "queue": 5},
    {"cmd": "consume", "queue": None},
    {"cmd": "consume", "queue": ["q"]},
    {"cmd": "purge", "queues": "q", "dead": "false"},
    {"cmd": "purge", "queues": [1]},
    {"cmd": "purge", "queues": [["q"]]},
    {"cmd": "delete", "queues": "q", "force": "false"},
    {"cmd": "create", "queues": "q2", "exist_ok": "no"},
    {"cmd": "view", "queues": 5},
    {"cmd": "peek", "queue": "q", "state": 1},
    {"cmd": "peek", "queue": "q", "n": "2"},
    {"cmd": "publish", "queue": "q", "message": "x", "create": "true"},
    {"cmd": "publish", "queue": "q", "message": "x", "priority": "5"},
    {"cmd": "publish", "queue": "q", "message": "x", "priority": 5.0},
    {"cmd": "publish", "queue": "q", "message": "x", "requeue": "false"},
    {"cmd": "publish", "queue": "q", "message": "x", "durable": 1},
    {"cmd": "publish", "queue": "q", "message": "x", "headers": "k=v"},
    {"cmd": "publish", "queue": "q", "message": "x", "headers": ["k"]},
    {"cmd": "publish", "queue": "q", "message": "x", "message_timeout": "60"},
    {"cmd": "nack", "queue": "q", "receipts": "0" * 32 + ".000000000000", "requeue": "false"},
    {"cmd": "ack", "queue": "q", "receipts": [None]},
    {"cmd": "extend", "queue": "q", "receipt": 5},
    {"cmd": "extend", "queue": "q", "receipt": "0" * 32 + ".000000000000", "seconds": "10"},
]


@pytest.mark.parametrize("request_", WRONG_TYPES, ids=lambda r: json.dumps(r, sort_keys=True)[:80])
def test_json_arguments_of_the_wrong_type_are_usage_errors(b, root, request_):
    """"false" is not false: before, {"ack": "false"} consumed and acked, {"dead": "false"} purged ready/."""
    b.publish("q", "keep me", create=True)
    result = ddmq_json(root, json.dumps(request_))
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    one_line(result.stderr.encode())
    assert f'"{list(request_)[-1]}"' in result.stderr, result.stderr  # the wrong one is the last
    assert b.counts("q") == {"ready": 1, "work": 0, "dead": 0}
    assert sorted(b.list_queues()) == ["q"]


@pytest.mark.parametrize("text", ['{"cmd": "consume", "queue": "q", "lease": NaN}',
                                  '{"cmd": "consume", "queue": "q", "lease": Infinity}',
                                  '{"cmd": "consume", "queue": "q", "lease": -Infinity}',
                                  '{"cmd": "consume", "queue": "q", "lease": 1e400}'])
def test_json_non_finite_numbers_are_usage_errors(b, root, text):
    b.publish("q", "keep me", create=True)
    result = ddmq_json(root, text)
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    one_line(result.stderr.encode())
    assert b.counts("q") == {"ready": 1, "work": 0, "dead": 0}


@pytest.mark.parametrize("request_", [
    {"cmd": "consume", "queue": "q", "n": 2, "lease": 30, "ack": False},
    {"cmd": "consume", "queue": "q", "lease": 30.5, "ack": True},
    {"cmd": "view", "queues": ["q"]},
    {"cmd": "view", "queues": "q"},
    {"cmd": "view", "queues": None},
    {"cmd": "peek", "queue": "q", "n": 2, "state": "ready"},
    {"cmd": "publish", "queue": "q", "message": {"any": ["json", 1, None]}, "priority": 3, "headers": {"k": "v"},
     "requeue": False, "durable": True, "message_timeout": 60, "requeue_limit": None, "create": False},
    {"cmd": "create", "queues": ["q2", "q3"], "exist_ok": True, "message_timeout": 30.5},
    {"cmd": "purge", "queues": "q", "dead": True},
])
def test_json_arguments_of_the_right_type_still_work(b, root, request_):
    b.publish("q", "m", create=True)
    result = ddmq_json(root, json.dumps(request_))
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)


def test_json_argument_types_come_from_every_operations_signature():
    """Each parameter's annotation is one the checker understands, so no operation goes unchecked."""
    from ddmq.json_request import expected_types
    from ddmq.ops import OPERATIONS

    for name, func in OPERATIONS.items():
        for param in list(inspect.signature(func).parameters.values())[1:]:
            if param.kind is not param.VAR_KEYWORD:  # create's settings: checked by the settings schema
                assert expected_types(param.annotation), (name, param.name, param.annotation)


# --------------------------------------------------------- JSON nested too deep
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("depth", [65, 1000, 50_000])  # an argument holds at most 128 KiB
def test_publish_json_body_nested_too_deep_is_a_usage_error(route, tmp_path, depth):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    proc = run(route, "--root", root, "publish", "--json", "q", "[" * depth + "]" * depth, stdout=subprocess.PIPE)
    assert proc.returncode == 2, proc.stderr
    assert "nested deeper than 64 levels" in one_line(proc.stderr)
    assert state(root)["ready"] == 0


@pytest.mark.parametrize("body", ["NaN", "[Infinity]", '{"a": -Infinity}'])
def test_publish_json_body_with_non_finite_numbers_is_a_usage_error(route, tmp_path, body):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    proc = run(route, "--root", root, "publish", "--json", "q", body, stdout=subprocess.PIPE)
    assert proc.returncode == 2, proc.stderr
    one_line(proc.stderr)
    assert state(root)["ready"] == 0


@pytest.mark.parametrize("request_", [
    DEEP,
    '{"cmd": "publish", "queue": "q", "message": ' + DEEP + "}",
    '{"cmd": "publish", "queue": "q", "message": ' + "[" * 1000 + "]" * 1000 + "}",
    '{"cmd": "publish", "queue": "q", "message": ' + "[" * 65 + "]" * 65 + "}",
], ids=["request", "deep-message", "message-1000", "message-65"])
def test_json_command_nested_too_deep_is_a_usage_error(route, tmp_path, request_):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    proc = run(route, "--root", root, "json", "-", stdout=subprocess.PIPE, stdin=_text_file(tmp_path, request_))
    assert proc.returncode == 2, proc.stderr
    one_line(proc.stderr)
    assert state(root)["ready"] == 0


def _text_file(tmp_path: Path, text: str):
    path = tmp_path / "stdin.txt"
    path.write_text(text)
    return open(path)


# ------------------------------------------------------ numbers on the command line
NUMBERS = [
    ("consume", "--lease", "nan"), ("consume", "--lease", "inf"), ("consume", "--lease", "-inf"),
    ("consume", "--lease", "1e300"), ("consume", "--lease", "1e-300"), ("consume", "--lease", "-1"),
    ("consume", "-n", "1e400"), ("consume", "-n", "9" * 5000),
    ("publish", "--message-timeout", "nan"), ("publish", "--message-timeout", "1e-300"),
    ("publish", "--message-timeout", "inf"), ("publish", "--message-timeout", "1e300"),
    ("publish", "-p", "1e400"), ("publish", "-p", "9" * 30), ("publish", "-p", "9" * 5000),
    ("publish", "--requeue-prio", "1e400"), ("publish", "--requeue-prio", "9" * 30),
    ("publish", "--requeue-limit", "1e400"), ("publish", "--requeue-limit", "-1"),
    ("create", "--message-timeout", "nan"), ("create", "--clean-interval", "inf"), ("create", "-p", "1e400"),
    ("extend", "--seconds", "nan"),
]


@pytest.mark.parametrize("command, option, value", NUMBERS, ids=lambda v: v[:12])
def test_numbers_no_queue_can_use_are_usage_errors(route, tmp_path, command, option, value):
    root = filled(tmp_path / "root", ["keep me"])
    arguments = {"consume": ["q"], "publish": ["q", "x"], "create": ["q2"], "extend": ["q"]}[command]
    if command == "extend":
        arguments.append(Broker(root).consume("q")[0].receipt)
    proc = run(route, "--root", root, command, *arguments, option, value, stdout=subprocess.PIPE)
    assert proc.returncode == 2, proc.stderr
    text = proc.stderr.decode()
    assert "Traceback" not in text
    # one line: ddmq's own, or click's usage error
    assert text.count("\n") == 1 and text.startswith("ddmq: "), text
    assert Broker(root).list_queues() == ["q"]
    assert [m.message for m in Broker(root).peek("q", state="work" if command == "extend" else "ready")] == ["keep me"]
