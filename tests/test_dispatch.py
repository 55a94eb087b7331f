"""``ddmq-dispatch``: the installed command, run in real subprocesses, with real handlers.

Every handler here is a small Python program (written into the test's
directory) that records what it received in one JSON file per invocation,
so the tests can check exactly which messages ran, how often, with what
input, and whether two runs of one message ever overlapped.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from ddmq import Broker
from tests.support.crontab import cron_entry
from tests.support.queuefiles import message_path, ready_files

DISPATCH = Path(sys.executable).parent / "ddmq-dispatch"
EXAMPLE = Path(__file__).resolve().parent.parent / "workflow_examples" / "cron"

HANDLER = r'''
import json, os, signal, subprocess, sys, time
out, code, pause, extra = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
msg_id = os.environ["DDMQ_MESSAGE_ID"]
running = os.path.join(out, "running." + msg_id)
try:
    os.close(os.open(running, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
except FileExistsError:
    open(os.path.join(out, "concurrent." + msg_id), "w").close()
record = {
    "stdin": sys.stdin.buffer.read().decode("utf-8", "surrogateescape"),
    "env": {k: v for k, v in os.environ.items() if k.startswith("DDMQ_")},
    "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
}
if extra == "child":  # a grandchild that ignores SIGTERM: only SIGKILL of the group stops it
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(); time.sleep(60)"],
        stdout=subprocess.PIPE)
    child.stdout.readline()  # it ignores SIGTERM from now on
    record["child"] = child.pid
name = "%s.%s.%d.json" % (msg_id, os.environ["DDMQ_DELIVERY_COUNT"], os.getpid())
with open(os.path.join(out, name + ".tmp"), "w") as f:
    json.dump(record, f)
os.rename(os.path.join(out, name + ".tmp"), os.path.join(out, name))
if extra == "flood":
    for i in range(2000):
        print("line %d of the handler's output" % i)
print("handler done", file=sys.stderr if code else sys.stdout)
time.sleep(pause)
os.unlink(running)
sys.exit(code)
'''


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    if not DISPATCH.exists():
        pytest.fail(f"{DISPATCH} is missing: install the package first "
                    "(python3 -m pip install -e '.[test]')", pytrace=False)


@pytest.fixture
def out(tmp_path: Path) -> Iterator[Path]:
    """Where handlers record their runs; a failed test leaves no handler running."""
    directory = tmp_path / "out"
    directory.mkdir()
    yield directory
    for record in records(directory):
        for pid in (record["pid"], record.get("child")):
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def handler(tmp_path: Path, out: Path):
    """The --handler string: exit with ``code`` after ``pause`` seconds."""
    script = tmp_path / "handler.py"
    script.write_text(HANDLER)

    def make(code: int = 0, pause: float = 0.0, extra: str = "-") -> str:
        return shlex.join([sys.executable, str(script), str(out), str(code), str(pause), extra])
    return make


def records(out: Path) -> list[dict]:
    """What every handler invocation received, in no particular order."""
    found = []
    for path in out.glob("*.json"):
        data = json.loads(path.read_text())
        data["id"], data["delivery"] = path.name.split(".")[:2]
        found.append(data)
    return found


def dispatch(root: Path, queue: str, *args: object, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(DISPATCH), queue, "--root", str(root), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def start(root: Path, queue: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen([str(DISPATCH), queue, "--root", str(root), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def alive(pid: int) -> bool:
    """Whether a process still runs (a zombie nobody reaped yet counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


# ----------------------------------------------------------- ack and nack
def test_success_acks_and_says_nothing(b: Broker, root: Path, out: Path, handler) -> None:
    b.create_queue("q")
    ids = {b.publish("q", f"job {i}").id for i in range(3)}
    done = dispatch(root, "q", "--handler", handler())
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert {r["id"] for r in records(out)} == ids
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 0}
    empty = dispatch(root, "q", "--handler", handler())
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "")


def test_failure_requeues_then_dead_letters(b: Broker, root: Path, out: Path, handler) -> None:
    b.create_queue("q", requeue_limit=1)
    msg = b.publish("q", "doomed")
    first = dispatch(root, "q", "--handler", handler(code=3))
    assert first.returncode == 1 and first.stdout == ""
    assert first.stderr == f"ddmq-dispatch: message {msg.id}: handler exited 3 (requeued): handler done\n"
    # tried once per run, not again at once although the requeue put it first in line
    assert len(records(out)) == 1
    assert b.counts("q") == {"ready": 1, "work": 0, "dead": 0}
    second = dispatch(root, "q", "--handler", handler(code=3))
    assert second.returncode == 1
    said, dispatched = second.stderr.splitlines()  # the core's dead-letter warning, then the dispatcher's line
    assert said.startswith("ddmq-dispatch: dead-lettered work/") and "requeue-limit" in said
    assert dispatched == f"ddmq-dispatch: message {msg.id}: handler exited 3 (dead-lettered): handler done"
    assert sorted(r["delivery"] for r in records(out)) == ["1", "2"]
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 1}


def test_a_failing_request_does_not_block_the_others(b: Broker, root: Path, out: Path, tmp_path: Path) -> None:
    b.create_queue("q")
    bad = b.publish("q", "bad", priority=0)
    good = {b.publish("q", f"good {i}").id for i in range(3)}
    script = tmp_path / "picky.py"
    script.write_text("import sys; sys.exit(sys.stdin.read() == 'bad')\n")
    done = dispatch(root, "q", "--handler", f"{sys.executable} {script}")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"ddmq-dispatch: message {bad.id}: handler exited 1 (requeued)"]
    assert b.counts("q") == {"ready": 1, "work": 0, "dead": 0}
    assert b.peek("q")[0].id == bad.id and bad.id not in good


# ------------------------------------------------------------ the handler's input
def test_message_reaches_handler_on_stdin_and_in_env(b: Broker, root: Path, out: Path, handler) -> None:
    b.create_queue("q")
    text = "héllo\nwörld ✓ \"quoted\" 'single'"
    as_string = b.publish("q", text, headers={"user": "ann", "n": 1})
    as_object = b.publish("q", {"command": "sleep 1", "n": [1, 2.5, None]})
    done = dispatch(root, "q", "--handler", handler(), cwd=out)
    assert done.returncode == 0, done.stderr
    got = {r["id"]: r for r in records(out)}
    s, o = got[as_string.id], got[as_object.id]
    assert s["stdin"] == s["env"]["DDMQ_MESSAGE"] == text
    assert json.loads(o["stdin"]) == {"command": "sleep 1", "n": [1, 2.5, None]}
    assert o["env"]["DDMQ_MESSAGE"] == o["stdin"]
    assert s["env"]["DDMQ_MESSAGE_ID"] == as_string.id
    assert s["env"]["DDMQ_QUEUE"] == "q"
    assert s["env"]["DDMQ_ROOT"] == str(root)
    assert s["env"]["DDMQ_DELIVERY_COUNT"] == "1"
    assert re.fullmatch(rf"{as_string.id}\.[0-9a-f]{{12}}", s["env"]["DDMQ_RECEIPT"])
    assert json.loads(s["env"]["DDMQ_HEADERS"]) == {"user": "ann", "n": 1}
    assert json.loads(o["env"]["DDMQ_HEADERS"]) == {}
    assert s["ppid"] == o["ppid"] and s["cwd"] == str(out)


def test_shell_metacharacters_are_data_not_commands(b: Broker, root: Path, out: Path, handler,
                                                    tmp_path: Path) -> None:
    b.create_queue("q")
    victim = tmp_path / "x"
    victim.mkdir()
    marker = Path(f"/tmp/ddmq-pwned-{os.getpid()}-{time.time_ns()}")
    marker2 = tmp_path / "pwned2"
    evil = (f"$(touch {marker}); rm -rf {victim} `touch {marker2}` ; touch {marker2} && "
            f"echo ${{HOME}} | cat > {marker2} \n'\"; touch {marker2} #")
    msg = b.publish("q", evil, headers={"h": f"$(touch {marker2})"})
    done = dispatch(root, "q", "--handler", handler(), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [record] = records(out)
    assert record["stdin"] == record["env"]["DDMQ_MESSAGE"] == evil
    assert record["env"]["DDMQ_MESSAGE_ID"] == msg.id
    assert not marker.exists() and not marker2.exists()
    assert victim.is_dir()


# ----------------------------------------------------------- time limits
def test_handler_timeout_kills_the_whole_group_and_nacks(b: Broker, root: Path, out: Path,
                                                          handler) -> None:
    b.create_queue("q")
    msg = b.publish("q", "slow")
    began = time.monotonic()
    done = dispatch(root, "q", "--handler", handler(pause=60, extra="child"),
                    "--handler-timeout", 1, "--kill-grace", 0.5)
    assert time.monotonic() - began < 10
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"ddmq-dispatch: message {msg.id}: "
                           "handler killed after --handler-timeout 1 s (requeued)\n")
    [record] = records(out)
    wait_for(lambda: not alive(record["pid"]) and not alive(record["child"]), timeout=3)
    assert b.counts("q") == {"ready": 1, "work": 0, "dead": 0}


def test_lease_is_extended_while_the_handler_runs(b: Broker, root: Path, out: Path, handler) -> None:
    b.create_queue("q")
    b.publish("q", "long")
    proc = start(root, "q", "--handler", handler(pause=3), "--lease", 1)
    cleaner = Broker(root)
    wait_for(lambda: records(out))
    while proc.poll() is None:
        cleaner.clean("q")  # would requeue the message if its 1 s lease were not renewed
        assert b.counts("q")["ready"] == 0
        time.sleep(0.1)
    _, stderr = proc.communicate()
    assert (proc.returncode, stderr) == (0, "")
    assert len(records(out)) == 1
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 0}


@pytest.mark.parametrize("pause", [0, 0.8], ids=["lost-before-ack", "lost-before-extend"])
def test_lost_lease_is_reported_and_not_acked(b: Broker, root: Path, pause: float) -> None:
    b.create_queue("q")
    msg = b.publish("q", "taken away")
    # The handler nacks its own message, as another client requeueing it would.
    handler = f"{sys.executable} -c " + shlex.quote(
        "import os, time; from ddmq import Broker; "
        "Broker(os.environ['DDMQ_ROOT']).nack(os.environ['DDMQ_RECEIPT'], 'q'); "
        f"time.sleep({pause})")
    done = dispatch(root, "q", "--handler", handler, "--lease", 1, "--max-messages", 1)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"ddmq-dispatch: message {msg.id}: handler exited 0, but the lease was "
                           "lost meanwhile; not acked, it will be redelivered\n")
    [again] = b.peek("q")
    assert again.id == msg.id and again.requeues == 1  # requeued once, by the handler's nack only


def test_max_messages_and_max_seconds(b: Broker, root: Path, out: Path, handler) -> None:
    b.create_queue("q")
    for i in range(5):
        b.publish("q", f"m{i}")
    done = dispatch(root, "q", "--handler", handler(), "--max-messages", 2)
    assert done.returncode == 0 and len(records(out)) == 2
    assert b.counts("q")["ready"] == 3
    # the first message takes longer than --max-seconds: no second one is taken,
    # but the running handler is not cut short
    done = dispatch(root, "q", "--handler", handler(pause=0.6), "--max-seconds", 0.5)
    assert done.returncode == 0 and len(records(out)) == 3
    assert b.counts("q") == {"ready": 2, "work": 0, "dead": 0}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_kills_handler_nacks_and_stops(b: Broker, root: Path, out: Path, handler,
                                              signum: int) -> None:
    b.create_queue("q")
    first = b.publish("q", "one")
    b.publish("q", "two")
    proc = start(root, "q", "--handler", handler(pause=60, extra="child"), "--kill-grace", 0.5)
    wait_for(lambda: records(out))
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 128 + signum
    name = signal.Signals(signum).name
    assert stderr == f"ddmq-dispatch: message {first.id}: interrupted by {name}, handler killed (requeued)\n"
    [record] = records(out)
    wait_for(lambda: not alive(record["pid"]) and not alive(record["child"]), timeout=3)
    assert b.counts("q") == {"ready": 2, "work": 0, "dead": 0}


# ------------------------------------------------------------ concurrency
def test_two_dispatchers_handle_each_message_exactly_once(b: Broker, root: Path, out: Path,
                                                          handler) -> None:
    b.create_queue("q")
    ids = {b.publish("q", f"m{i}").id for i in range(40)}
    procs = [start(root, "q", "--handler", handler(pause=0.02), "--max-messages", 100)
             for _ in range(2)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=60)
        assert (proc.returncode, stderr) == (0, "")
    got = records(out)
    assert sorted(r["id"] for r in got) == sorted(ids)  # each exactly once
    assert not list(out.glob("concurrent.*"))
    assert {r["ppid"] for r in got} == {p.pid for p in procs}  # both took part
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 0}


# ------------------------------------------------------ replies and the log
def test_reply_queue(b: Broker, root: Path, out: Path, handler) -> None:
    b.create_queue("q")
    b.create_queue("replies")
    ok = b.publish("q", "fine")
    before = time.time()
    done = dispatch(root, "q", "--handler", handler(extra="flood"), "--reply-queue", "replies")
    assert done.returncode == 0
    bad = b.publish("q", "broken")
    done = dispatch(root, "q", "--handler", handler(code=3), "--reply-queue", "replies")
    assert done.returncode == 1
    replies = {m.message["request_id"]: m.message for m in b.consume("replies", 10, ack=True)}
    assert set(replies) == {ok.id, bad.id}
    good, failed = replies[ok.id], replies[bad.id]
    assert good["state"] == "ok" and good["exit_status"] == 0 and good["disposition"] == "acked"
    assert good["queue"] == "q" and good["host"] and good["handler_seconds"] >= 0
    utc = "%Y-%m-%dT%H:%M:%SZ"  # ISO 8601 UTC, as every event's time
    assert time.strftime(utc, time.gmtime(before)) <= good["time"] <= time.strftime(utc, time.gmtime())
    assert good["stdout"].endswith("line 1999 of the handler's output\nhandler done\n")
    assert 0 < len(good["stdout"].encode()) <= 4096  # a bounded tail of 50 kB of output
    assert failed["state"] == "failed" and failed["exit_status"] == 3
    assert failed["disposition"] == "requeued" and failed["stderr"] == "handler done\n"


def test_log_file_has_a_line_per_message(b: Broker, root: Path, out: Path, tmp_path: Path) -> None:
    b.create_queue("q")
    ok = b.publish("q", "0", priority=1)
    bad = b.publish("q", "5", priority=2)
    log = tmp_path / "dispatch.log"
    log.write_text("earlier line\n")
    handler = f"{sys.executable} -c 'import sys; sys.exit(int(sys.stdin.read()))'"
    done = dispatch(root, "q", "--handler", handler, "--log-file", log)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    lines = log.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S+ ddmq-dispatch\[\d+\] q"  # ISO 8601 UTC
    assert lines[0] == "earlier line"
    assert re.fullmatch(rf"{stamp} {ok.id} ok acked \(\d+\.\d\d s\)", lines[1])
    assert re.fullmatch(rf"{stamp} {bad.id} failed handler exited 5 \(requeued\)", lines[2])
    assert len(lines) == 3


# ------------------------------------------------------------ bad usage
def test_usage_and_missing_queues(b: Broker, root: Path, handler) -> None:
    b.create_queue("q")
    b.publish("q", "keep me")
    for args, code in [
        (["--handler", "no-such-command-anywhere"], 2),
        (["--handler", "'unbalanced"], 2),
        (["--handler", ""], 2),
        (["--handler", handler(), "--max-messages", "0"], 2),
        (["--handler", handler(), "--lease", "-1"], 2),
        ([], 2),
        (["--handler", handler(), "--reply-queue", "nope"], 4),
    ]:
        done = dispatch(root, "q", *args)
        assert done.returncode == code, (args, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith(
            "ddmq-dispatch: "), done.stderr
    missing = dispatch(root, "nope", "--handler", handler())
    assert (missing.returncode, missing.stderr) == (4, f"ddmq-dispatch: no queue 'nope' in {root}\n")
    assert b.counts("q") == {"ready": 1, "work": 0, "dead": 0}  # nothing was claimed


# ------------------------------------------------------- the cron example
def test_cron_example_runs_as_cron_would(b: Broker, root: Path, tmp_path: Path) -> None:
    """The crontab line, run with cron's bare environment, no terminal and stdin from /dev/null.

    The only addition is DRY_RUN=1 (sbatch may be installed here without a
    cluster behind it), set the way the crontab would set it.
    """
    b.create_queue("submit-requests")
    b.create_queue("submit-results")
    request = b.publish("submit-requests", {"command": "python train.py $(rm -rf ~)",
                                            "options": {"time": "00:30:00"}})
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    assignments, command = cron_entry(EXAMPLE / "crontab.example", {
        "/shared/ddmq": str(root), "/path/to/venv/bin": str(DISPATCH.parent), "/path/to/ddmq-cron": str(EXAMPLE)})
    env = ["HOME=" + str(home), "PATH=/usr/bin:/bin", "SHELL=/bin/sh", "LOGNAME=nobody",
           *assignments, "DRY_RUN=1"]
    done = subprocess.run(["env", "-i", *env, "/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, start_new_session=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    [result] = b.consume("submit-results", ack=True)
    assert result.message["request_id"] == request.id and result.message["state"] == "ok"
    assert result.message["stdout"] == (
        f"would run: sbatch --parsable --job-name=ddmq-{request.id[:8]} --time=00:30:00 "
        "--wrap 'python train.py $(rm -rf ~)'\n")
    [line] = (home / "ddmq-dispatch.log").read_text().splitlines()
    assert f" submit-requests {request.id} ok acked " in line
    assert b.counts("submit-requests") == {"ready": 0, "work": 0, "dead": 0}


def test_submit_handler_calls_sbatch_or_says_what_it_would(tmp_path: Path) -> None:
    script = str(EXAMPLE / "submit_handler.py")
    assert os.access(script, os.X_OK)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls"
    fake = bin_dir / "sbatch"
    fake.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {calls}\necho 4242\n")
    fake.chmod(0o755)
    request = json.dumps({"command": "echo 'hi'; date", "job_name": "j",
                          "options": {"mem": "1G", "cpus-per-task": 2}, "workdir": "/scratch"})
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "DDMQ_MESSAGE_ID": "0" * 32}
    done = subprocess.run([sys.executable, script], input=request, env=env,
                          capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, "4242\n", "")
    assert calls.read_text().splitlines() == [
        "--parsable", "--job-name=j", "--chdir=/scratch", "--cpus-per-task=2", "--mem=1G",
        "--wrap", "echo 'hi'; date"]
    nowhere = subprocess.run([sys.executable, script], input=request, env={"PATH": str(tmp_path / "none")},
                             capture_output=True, text=True, timeout=30)
    assert nowhere.returncode == 127 and nowhere.stdout == ""  # no silent dry run: see test_job_scripts.py
    assert nowhere.stderr.startswith("submit_handler: sbatch not found in PATH")
    for bad in ['{"options": {}}', '"just a string"', 'not json',
                '{"command": "x", "options": {"wrap": "y"}}', '{"command": "x", "options": {"a b": 1}}']:
        refused = subprocess.run([sys.executable, script], input=bad, env=env,
                                 capture_output=True, text=True, timeout=30)
        assert refused.returncode == 2 and refused.stderr.startswith("submit_handler: "), bad


# ------------------------------------- a message the handler cannot be given
def _plant_payload(root: Path, msg_id: str, in_queue: str = "q", **fields) -> None:
    """Rewrite a ready message's payload with ``fields``, as a hostile member of the group could
    (json.dumps escapes NUL as ``\\u0000`` and keeps lone surrogates as ``\\udXXX``)."""
    path = message_path(root / in_queue / "ready", msg_id)
    raw = json.loads(path.read_text())
    raw.update(fields)
    new = path.with_name(path.name + ".new")
    new.write_text(json.dumps(raw))
    os.replace(new, path)


def test_nul_or_lone_surrogate_in_a_payload_field_does_not_stop_the_dispatcher(
        b: Broker, root: Path, out: Path, handler, tmp_path: Path) -> None:
    """The payload's ``queue`` field is not checked against the queue it lies in: a planted NUL or
    lone surrogate there must neither crash the run (execve refuses NUL) nor reach the handler."""
    b.create_queue("q")
    b.create_queue("replies")
    nul, surrogate, plain = (b.publish("q", f"request {i}") for i in range(3))
    _plant_payload(root, nul.id, queue="q\u0000DDMQ_EVIL=1")
    _plant_payload(root, surrogate.id, queue="q\ud800")
    log = tmp_path / "dispatch.log"
    done = dispatch(root, "q", "--handler", handler(), "--reply-queue", "replies", "--log-file", log)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    got = {r["id"]: r for r in records(out)}
    assert set(got) == {nul.id, surrogate.id, plain.id}
    assert {r["env"]["DDMQ_QUEUE"] for r in got.values()} == {"q"}, "the queue it was taken from"
    assert "DDMQ_EVIL" not in got[nul.id]["env"]
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 0}
    replies = b.consume("replies", 10, ack=True)
    assert sorted(m.message["queue"] for m in replies) == ["q", "q", "q"]
    assert len(log.read_text().splitlines()) == 3


def test_a_message_popen_refuses_is_nacked_and_the_run_goes_on(b: Broker, root: Path, out: Path, handler,
                                                                mocker, capsys, restore_signals) -> None:
    """Whatever the handler cannot be started with, for one message, is that message's failure: it is
    nacked (so a poison message ends in the dead letters) and the next message is handled."""
    from ddmq_hpc import dispatch as dispatch_mod

    b.create_queue("q", requeue_limit=1)
    poison = b.publish("q", "poison")
    fine = b.publish("q", "fine")
    real_popen = subprocess.Popen

    def popen(argv, *args, **kwargs):
        if kwargs.get("env", {}).get("DDMQ_MESSAGE") in ("poison", b"poison"):
            raise ValueError("embedded null byte")
        return real_popen(argv, *args, **kwargs)

    mocker.patch("subprocess.Popen", side_effect=popen)
    argv = ["q", "--root", str(root), "--handler", handler()]
    assert dispatch_mod.main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"ddmq-dispatch: message {poison.id}: cannot start the handler: embedded null byte (requeued)\n"
    assert [r["id"] for r in records(out)] == [fine.id]
    assert dispatch_mod.main(argv) == 1
    assert capsys.readouterr().err.endswith("(dead-lettered)\n")
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 1}


def test_full_tmpdir_releases_the_message_and_stops_the_run(b: Broker, root: Path, out: Path, handler,
                                                            mocker, capsys, restore_signals) -> None:
    """ENOSPC while writing the body to the handler's stdin file in $TMPDIR is this host's trouble,
    not the message's: the message goes back as it was (the attempt does not count against its
    requeue limit), the run stops (the next message would meet the same full disk), exit 1."""
    import io
    import tempfile

    from ddmq_hpc import dispatch as dispatch_mod

    b.create_queue("q", requeue_limit=0)
    first = b.publish("q", "first")
    b.publish("q", "second")
    before = ready_files(root / "q" / "ready")
    real_tempfile = tempfile.TemporaryFile

    class FullDisk(io.BufferedRandom):
        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    mocker.patch("tempfile.TemporaryFile", side_effect=lambda *a, **k: FullDisk(real_tempfile(*a, **k).detach()))
    assert dispatch_mod.main(["q", "--root", str(root), "--handler", handler()]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"ddmq-dispatch: message {first.id}: ") and "No space left on device" in line, line
    assert "released" in line, line
    assert records(out) == []
    assert ready_files(root / "q" / "ready") == before, "both back (or never taken) under their names"
    assert b.counts("q") == {"ready": 2, "work": 0, "dead": 0}
    mocker.stopall()
    done = dispatch(root, "q", "--handler", handler())  # the disk has room again
    assert (done.returncode, done.stderr) == (0, "")
    assert sorted(r["delivery"] for r in records(out)) == ["1", "1"]


def test_a_body_larger_than_the_file_size_limit_is_nacked(b: Broker, root: Path, out: Path, handler) -> None:
    """A real fault: RLIMIT_FSIZE makes writing a large body to the stdin file fail (EFBIG). That is
    the message's doing (it fails on every try), so it is nacked and the run goes on."""
    import resource

    b.create_queue("q", requeue_limit=0)
    big = b.publish("q", "x" * (2 << 20))
    small = b.publish("q", "small")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    done = dispatch(root, "q", "--handler", handler(), preexec_fn=limit)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    said, line = done.stderr.splitlines()  # the core's dead-letter warning, then the dispatcher's line
    assert said.startswith("ddmq-dispatch: dead-lettered work/"), said
    assert line.startswith(f"ddmq-dispatch: message {big.id}: ") and line.endswith("(dead-lettered)"), line
    assert [r["id"] for r in records(out)] == [small.id]
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 1}


# ------------------------------------------------------------ numbers
BAD_NUMBERS = [
    ["--max-seconds", "nan"], ["--max-seconds", "inf"], ["--max-seconds", "-1"], ["--max-seconds", "1e10"],
    ["--lease", "nan"], ["--lease", "inf"], ["--lease", "1e300"], ["--lease", "0"],
    ["--handler-timeout", "nan"], ["--handler-timeout", "inf"], ["--handler-timeout", "-5"],
    ["--kill-grace", "nan"], ["--kill-grace", "inf"], ["--kill-grace", "-1"], ["--kill-grace", "1e10"],
    ["--max-messages", "99999999999"], ["--max-messages", "0"], ["--max-messages", "1e3"],
]


def test_numbers_out_of_range_are_one_line_usage_errors(b: Broker, root: Path, out: Path, handler) -> None:
    b.create_queue("q")
    b.publish("q", "keep me")
    procs = [start(root, "q", "--handler", handler(), *args) for args in BAD_NUMBERS]
    try:
        results = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for args, p, (stdout, stderr) in zip(BAD_NUMBERS, procs, results):
        assert p.returncode == 2 and stdout == "", (args, p.returncode, stderr)
        assert "Traceback" not in stderr and len(stderr.splitlines()) == 1, (args, stderr)
        assert stderr.startswith("ddmq-dispatch: ") and args[0] in stderr, (args, stderr)
    assert records(out) == [] and b.counts("q") == {"ready": 1, "work": 0, "dead": 0}
