"""``ddmq-notify``: what a batch job's epilogue publishes, and that it always finishes.

End-to-end behaviour runs the installed ``ddmq-notify`` script in a subprocess
on a real root under ``tmp_path`` (with ``DDMQ_ROOT``/``HOME`` set explicitly);
faults (ESTALE, EIO, ENOSPC, a filesystem that never answers) are injected
with pytest-mock, in-process through ``main([...])`` / ``notify(...)``, or in a
``python -c`` subprocess when the process itself must be seen to exit.
"""
from __future__ import annotations

import errno
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from calendar import timegm
from pathlib import Path

import pytest

from ddmq import Broker, StorageError
from ddmq_hpc import notify as notify_mod
from ddmq_hpc.retry import retry
from tests.support.queuefiles import queue_files

BIN = Path(sys.executable).parent
NOTIFY = BIN / "ddmq-notify"
SCHEDULER_PREFIXES = ("SLURM", "PBS_", "DDMQ_")
EVENT_KEYS = {"event", "scheduler", "host", "user", "time", "status", "state"}
SLURM_ENV = {
    "SLURM_JOB_ID": "4242", "SLURM_ARRAY_JOB_ID": "4240", "SLURM_ARRAY_TASK_ID": "2",
    "SLURM_JOB_NAME": "align-7", "SLURM_JOB_USER": "alice", "SLURM_SUBMIT_DIR": "/home/alice/run",
}
PBS_ENV = {
    "PBS_JOBID": "777[3].pbs01", "PBS_ARRAY_ID": "777[].pbs01", "PBS_ARRAY_INDEX": "3",
    "PBS_JOBNAME": "assemble", "PBS_O_LOGNAME": "bob", "PBS_O_WORKDIR": "/home/bob/proj",
}


# ------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def notify_script() -> Path:
    if not NOTIFY.is_file():
        pytest.fail(f"the ddmq-notify console script is not installed next to {sys.executable} "
                    f"(expected {NOTIFY}); run `pip install -e .`")
    return NOTIFY


def clean_env(tmp_path: Path, root: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a job: no scheduler variables unless given, own HOME and root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_PREFIXES)}
    env["HOME"] = str(tmp_path / "home")
    env["USER"] = env["LOGNAME"] = "tester"
    if root is not None:
        env["DDMQ_ROOT"] = str(root)
    env.update(extra)
    return env


def run_notify(script: Path, *args: object, env: dict[str, str], timeout: float = 30,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *map(str, args)], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def run_all(script: Path, arg_lists: list[list[object]], env: dict[str, str] | list[dict[str, str]],
            timeout: float = 30) -> list[subprocess.CompletedProcess]:
    """Run several ``ddmq-notify`` commands at once (they are independent); results in order."""
    envs = env if isinstance(env, list) else [env] * len(arg_lists)
    procs = [subprocess.Popen([str(script), *map(str, args)], env=e, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args, e in zip(arg_lists, envs)]
    results = []
    for args, p in zip(arg_lists, procs):
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess([str(script), *map(str, args)], p.returncode, out, err))
    return results


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr


def one_line_error(proc_or_text, code: int | None = None, *fragments: str) -> str:
    """Exactly one line on stderr, starting ``ddmq-notify:``, no traceback."""
    if isinstance(proc_or_text, subprocess.CompletedProcess):
        if code is not None:
            assert proc_or_text.returncode == code, (proc_or_text.returncode, proc_or_text.stderr)
        else:
            assert proc_or_text.returncode != 0, proc_or_text.stderr
        text = proc_or_text.stderr
    else:
        text = proc_or_text
    assert "Traceback" not in text, text
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {text!r}"
    assert lines[0].startswith("ddmq-notify: "), lines
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


def bodies(root: Path, queue: str = "q") -> list:
    return [m.message for m in Broker(root).peek(queue, n=10_000)]


def only_body(root: Path, queue: str = "q"):
    found = bodies(root, queue)
    assert len(found) == 1, found
    return found[0]


def state_files(root: Path, queue: str = "q") -> dict[str, list[str]]:
    return queue_files(root / queue)


def raise_exit(code: int = 0):
    raise SystemExit(code)


@pytest.fixture
def no_hard_exit(mocker):
    """main() leaves with os._exit on failure (it may have a hung thread); make that testable.

    Its publishing thread may outlive main() then: it is joined before the
    mocks it uses are undone, so it cannot publish behind the test's back.
    """
    before = set(threading.enumerate())
    yield mocker.patch.object(notify_mod.os, "_exit", side_effect=raise_exit)
    for thread in set(threading.enumerate()) - before:
        thread.join(10)


# ---------------------------------------------------------- message bodies
def test_publishes_a_text_message_creating_root_and_queue(notify_script, tmp_path):
    root = tmp_path / "deep" / "root"
    ok(run_notify(notify_script, "q", "hello from job 7", env=clean_env(tmp_path, root)))
    assert (root / "ddmq.yaml").is_file() and (root / "q" / "ddmq.yaml").is_file()
    assert only_body(root) == "hello from job 7"
    # Text that looks like JSON stays text without --json.
    ok(run_notify(notify_script, "q", '{"a": 1}', env=clean_env(tmp_path, root)))
    assert bodies(root) == ["hello from job 7", '{"a": 1}']


JSON_CASES = [
    ('{"job": 7, "files": ["a", "b"], "ok": true}', {"job": 7, "files": ["a", "b"], "ok": True}),
    ("42", 42),
    ('"just text"', "just text"),
    ("null", None),
    ("[1, 2.5]", [1, 2.5]),
]


def test_json_message(notify_script, tmp_path):
    root = tmp_path / "root"
    results = run_all(notify_script, [[f"q{i}", text, "--json"] for i, (text, _) in enumerate(JSON_CASES)],
                      clean_env(tmp_path, root))
    for i, ((text, value), proc) in enumerate(zip(JSON_CASES, results)):
        ok(proc)
        assert only_body(root, f"q{i}") == value, text


def test_fields_extend_a_json_object(notify_script, tmp_path):
    root = tmp_path / "root"
    ok(run_notify(notify_script, "q", "--json", '{"step": "align", "n": 1}', "--field", "sample=S1",
                  "--field", "expr=a=b", "--field", "n=2", "--field", "empty=", env=clean_env(tmp_path, root)))
    assert only_body(root) == {"step": "align", "n": "2", "sample": "S1", "expr": "a=b", "empty": ""}


def test_fields_without_message_extend_the_completion_event(notify_script, tmp_path):
    root = tmp_path / "root"
    ok(run_notify(notify_script, "q", "--field", "sample=S1", "--field", "stage=2",
                  env=clean_env(tmp_path, root)))
    event = only_body(root)
    assert EVENT_KEYS <= set(event)
    assert event["sample"] == "S1" and event["stage"] == "2"


BAD_MESSAGES = [
    (["q", "--field", "novalue"], "novalue"),
    (["q", "--field", "=value"], "=value"),
    (["q", "plain text", "--field", "a=1"], "--field"),
    (["q", "--json", "{not json"], "json"),
    (["q", "--json", "[1, 2]", "--field", "a=1"], "object"),
]


def test_bad_message_or_field_is_a_usage_error(notify_script, tmp_path):
    root = tmp_path / "root"
    results = run_all(notify_script, [args for args, _ in BAD_MESSAGES], clean_env(tmp_path, root))
    for (_, fragment), proc in zip(BAD_MESSAGES, results):
        one_line_error(proc, 2, fragment)
    assert not (root / "q").exists() or bodies(root) == []


def test_argument_errors_exit_2(notify_script, tmp_path):
    root = tmp_path / "root"
    cases = [
        [],                                  # no queue
        ["q", "--state", "BOGUS"],
        ["q", "--status", "zero"],
        ["q", "--timeout", "soon"],
        ["q", "--bogus-option"],
    ]
    for args, proc in zip(cases, run_all(notify_script, cases, clean_env(tmp_path, root))):
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr and "error" in proc.stderr, (args, proc.stderr)
    assert not root.exists()


def test_priority(notify_script, tmp_path):
    root = tmp_path / "root"
    ok(run_notify(notify_script, "q", "late", env=clean_env(tmp_path, root)))
    ok(run_notify(notify_script, "q", "urgent", "--priority", "3", env=clean_env(tmp_path, root)))
    msgs = Broker(root).peek("q", n=10)
    assert [(m.message, m.priority) for m in msgs] == [("urgent", 3), ("late", 999)]


# ---------------------------------------------------- completion events
def _check_time(stamp: str) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", stamp), stamp
    when = timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(when - time.time()) < 120, stamp


def test_completion_event_from_slurm(notify_script, tmp_path):
    root = tmp_path / "root"
    ok(run_notify(notify_script, "q", "--status", "0", env=clean_env(tmp_path, root, **SLURM_ENV)))
    event = only_body(root)
    assert event["event"] == "job_end" and event["scheduler"] == "slurm"
    assert event["job_id"] == "4242"
    assert event["array_job_id"] == "4240" and event["array_task_id"] == "2"
    assert event["job_name"] == "align-7"
    assert event["user"] == "alice"
    assert event["submit_dir"] == "/home/alice/run"
    assert event["host"] == socket.gethostname()
    assert event["status"] == 0 and event["state"] == "COMPLETED"
    _check_time(event["time"])


def test_completion_event_from_pbs(notify_script, tmp_path):
    root = tmp_path / "root"
    ok(run_notify(notify_script, "q", "--status", "1", env=clean_env(tmp_path, root, **PBS_ENV)))
    event = only_body(root)
    assert event["event"] == "job_end" and event["scheduler"] == "pbs"
    assert event["job_id"] == "777[3].pbs01"
    assert event["array_job_id"] == "777[].pbs01" and event["array_task_id"] == "3"
    assert event["job_name"] == "assemble"
    assert event["user"] == "bob"
    assert event["submit_dir"] == "/home/bob/proj"
    assert event["host"] == socket.gethostname()
    assert event["status"] == 1 and event["state"] == "FAILED"
    _check_time(event["time"])


def test_torque_array_index_and_old_slurm_job_id(notify_script, tmp_path):
    root = tmp_path / "root"
    results = run_all(notify_script, [["torque"], ["slurm"]],
                      [clean_env(tmp_path, root, PBS_JOBID="12[4].torque", PBS_ARRAYID="4"),
                       clean_env(tmp_path, root, SLURM_JOBID="99")])
    for proc in results:
        ok(proc)
    torque, slurm = only_body(root, "torque"), only_body(root, "slurm")
    assert torque["scheduler"] == "pbs" and torque["array_task_id"] == "4" and torque["job_id"] == "12[4].torque"
    assert slurm["scheduler"] == "slurm" and slurm["job_id"] == "99"


def test_status_and_state(notify_script, tmp_path):
    root = tmp_path / "root"
    cases = [
        (["--status", "0"], 0, "COMPLETED"),
        (["--status", "137"], 137, "FAILED"),
        (["--status", "0", "--state", "CANCELLED"], 0, "CANCELLED"),
        (["--status", "1", "--state", "TIMEOUT"], 1, "TIMEOUT"),
        (["--state", "COMPLETED"], None, "COMPLETED"),
    ]
    results = run_all(notify_script, [[f"q{i}", *args] for i, (args, _, _) in enumerate(cases)],
                      clean_env(tmp_path, root, **SLURM_ENV))
    for i, ((args, status, state), proc) in enumerate(zip(cases, results)):
        ok(proc)
        event = only_body(root, f"q{i}")
        assert (event["status"], event["state"]) == (status, state), args
        assert event["job_id"] == "4242"


def test_completion_event_outside_a_job(notify_script, tmp_path):
    root = tmp_path / "root"
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    ok(run_notify(notify_script, "q", env=clean_env(tmp_path, root), cwd=workdir))
    event = only_body(root)
    assert EVENT_KEYS <= set(event)
    assert event["scheduler"] is None and "job_id" not in event
    assert event["host"] == socket.gethostname()
    assert event["user"] == "tester"
    assert event["submit_dir"] == str(workdir)
    _check_time(event["time"])


# -------------------------------------------------------------- the root
def test_root_from_option_then_env_then_home(notify_script, tmp_path):
    opt_root, env_root = tmp_path / "opt", tmp_path / "env"
    home_root = tmp_path / "home" / ".ddmq"
    for proc in run_all(notify_script, [["q", "to-option", "--root", opt_root], ["q", "to-env"], ["q", "to-home"]],
                        [clean_env(tmp_path, env_root), clean_env(tmp_path, env_root), clean_env(tmp_path)]):
        ok(proc)
    assert only_body(opt_root) == "to-option"
    assert only_body(env_root) == "to-env"
    assert only_body(home_root) == "to-home"


def test_no_create_refuses_a_missing_root(notify_script, tmp_path):
    root = tmp_path / "missing"
    proc = run_notify(notify_script, "q", "x", "--no-create", env=clean_env(tmp_path, root))
    one_line_error(proc, 4, str(root))  # not found, as for ddmq publish
    assert not root.exists()


def test_no_create_refuses_a_missing_default_root(notify_script, tmp_path):
    """--no-create must not create ~/.ddmq either (the default root is no exception)."""
    (tmp_path / "home").mkdir()
    proc = run_notify(notify_script, "q", "x", "--no-create", env=clean_env(tmp_path))
    one_line_error(proc)
    assert not (tmp_path / "home" / ".ddmq").exists(), os.listdir(tmp_path / "home" / ".ddmq")


def test_no_create_refuses_a_missing_queue(notify_script, tmp_path):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("other")
    proc = run_notify(notify_script, "q", "x", "--no-create", env=clean_env(tmp_path, root))
    one_line_error(proc, 4, "'q'")  # not found, as for ddmq publish
    assert not (root / "q").exists()
    ok(run_notify(notify_script, "other", "x", "--no-create", env=clean_env(tmp_path, root)))
    assert only_body(root, "other") == "x"


def test_invalid_queue_name(notify_script, tmp_path):
    root = tmp_path / "root"
    names = ["../escape", "a/b", ".hidden", "", "x" * 129]
    for name, proc in zip(names, run_all(notify_script, [[n, "x"] for n in names], clean_env(tmp_path, root))):
        one_line_error(proc, None, "invalid queue name")
        assert proc.returncode in (1, 2), (name, proc.returncode)
    assert not (tmp_path / "escape").exists()
    if root.exists():
        assert Broker(root).list_queues() == []


def test_many_jobs_notify_at_once(notify_script, tmp_path):
    """Eight epilogues racing to create the same root and queue: all publish, none fails."""
    root = tmp_path / "root"
    procs = [subprocess.Popen([str(notify_script), "q", "--json", str(i)], env=clean_env(tmp_path, root),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    for p in procs:
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
    assert sorted(bodies(root)) == list(range(8))


# ---------------------------------------------------------------- start-up
def _imported_modules(importtime_stderr: str) -> set[str]:
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def _heavy(modules: set[str]) -> list[str]:
    """YAML: a settings file holding only comments is not parsed. (click is the command line, issue 12.)"""
    return sorted(m for m in modules if m.split(".")[0] in ("yaml", "_yaml"))


def _imported_without_site(code: str) -> set[str]:
    """Modules imported by ``code`` run without site, so an editable install's import hook does not count."""
    repo = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c",
                           f"import sys; sys.path[:0] = [{repo!r}, {os.path.dirname(click_dir())!r}]; {code}"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return _imported_modules(proc.stderr)


def click_dir() -> str:
    import click

    return os.path.dirname(click.__file__)


def test_import_is_lean():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import ddmq_hpc.notify"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    modules = _imported_modules(proc.stderr)
    assert "ddmq_hpc.notify" in modules, proc.stderr[-2000:]
    assert _heavy(modules) == []


def test_publishing_leaves_out_slow_standard_modules(tmp_path):
    """ddmq-notify runs at the end of every job: pathlib, random, dataclasses, copy, shutil, socket and
    getpass each cost milliseconds of start-up and are not needed. Modules click imports itself
    (typing, inspect, weakref...) are the price of one command-line framework for every command."""
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    modules = _imported_without_site(
        f"import ddmq_hpc.notify; ddmq_hpc.notify.main(['q', 'lean', '--root', {str(root)!r}])")
    assert "ddmq_hpc.notify" in modules
    slow = {"typing", "pathlib", "random", "dataclasses", "inspect", "copy", "shutil", "socket", "getpass",
            "weakref"}
    assert sorted((slow & modules) - _imported_without_site("import click")) == []
    assert only_body(root) == "lean"


def test_publishing_to_an_existing_queue_needs_no_yaml(notify_script, tmp_path):
    """Settings files holding only comments are not parsed: no YAML at run time."""
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    proc = subprocess.run([sys.executable, "-X", "importtime", str(notify_script), "q", "lean"],
                          env=clean_env(tmp_path, root), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = _imported_modules(proc.stderr)
    assert "ddmq_hpc.notify" in modules
    assert _heavy(modules) == []
    assert only_body(root) == "lean"


# ------------------------------------------------ transient errors, in-process
def _failing(real, errno_: int, times: int | None, calls: list, only=lambda *a, **k: True):
    """A stand-in for ``real`` that raises OSError(errno_) the first ``times`` matching calls (None: always)."""
    def fake(*args, **kwargs):
        if only(*args, **kwargs):
            calls.append(args)
            if times is None or len(calls) <= times:
                raise OSError(errno_, os.strerror(errno_))
        return real(*args, **kwargs)
    return fake


def _into_queue(*args, **kwargs) -> bool:
    """The private file a publish writes: QUEUE/tmp/ID.tmp (named relative to the open tmp/)."""
    path = Path(os.fspath(args[0]))
    dir_fd = kwargs.get("dir_fd", kwargs.get("src_dir_fd"))
    if dir_fd is not None and not path.is_absolute():
        path = Path(os.readlink(f"/proc/self/fd/{dir_fd}")) / path
    return path.parent.name == "tmp" and path.name.endswith(".tmp")


@pytest.mark.parametrize("code", [errno.ESTALE, errno.EIO, errno.EAGAIN])
def test_transient_rename_error_is_retried_and_published_once(mocker, tmp_path, capsys, no_hard_exit, code):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    calls: list = []
    mocker.patch("os.rename", side_effect=_failing(os.rename, code, 2, calls))
    start = time.monotonic()
    notify_mod.main(["q", "survived", "--root", str(root), "--timeout", "20"])
    assert time.monotonic() - start < 10
    assert len(calls) == 3
    assert only_body(root) == "survived"
    assert state_files(root)["tmp"] == [] and state_files(root)["work"] == []
    assert capsys.readouterr().err == ""


def test_transient_error_while_writing_is_retried(mocker, tmp_path):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    calls: list = []
    mocker.patch("os.open", side_effect=_failing(os.open, errno.EIO, 1, calls, only=_into_queue))
    msg = notify_mod.notify("q", {"k": 1}, root=str(root), deadline=time.monotonic() + 20)
    assert len(calls) == 2
    assert [m.id for m in Broker(root).peek("q", n=10)] == [msg.id]
    assert state_files(root)["tmp"] == []


def test_transient_errors_while_creating_root_and_queue_are_retried(mocker, tmp_path):
    root = tmp_path / "root"
    calls: list = []
    mocker.patch("os.rename", side_effect=_failing(os.rename, errno.ESTALE, 2, calls))
    notify_mod.notify("q", "first", root=str(root), deadline=time.monotonic() + 20)
    assert only_body(root) == "first"
    assert [n for n in os.listdir(root) if n.startswith(".")] == []


def test_persistent_transient_error_gives_up_within_the_timeout(mocker, tmp_path, capsys, no_hard_exit):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    calls: list = []
    mocker.patch("os.rename", side_effect=_failing(os.rename, errno.ESTALE, None, calls))
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        notify_mod.main(["q", "doomed", "--root", str(root), "--timeout", "8"])
    elapsed = time.monotonic() - start
    assert exit_.value.code == 1
    assert elapsed < 8
    assert 2 <= len(calls) <= 10, "retries must be bounded"
    one_line_error(capsys.readouterr().err, None, "'q'", "stale")
    assert bodies(root) == [] and state_files(root)["tmp"] == []


def test_short_timeout_cuts_retries_short(mocker, tmp_path, capsys, no_hard_exit):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    mocker.patch("os.rename", side_effect=_failing(os.rename, errno.EIO, None, []))
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        notify_mod.main(["q", "doomed", "--root", str(root), "--timeout", "0.7"])
    assert exit_.value.code == 1
    assert time.monotonic() - start < 0.7 + 1.0
    one_line_error(capsys.readouterr().err)
    assert bodies(root) == []


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only"),
                                          (errno.EDQUOT, "quota")])
def test_permanent_storage_error_fails_at_once(mocker, tmp_path, capsys, no_hard_exit, code, reason):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    calls: list = []
    mocker.patch("os.rename", side_effect=_failing(os.rename, code, None, calls))
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        notify_mod.main(["q", "no room", "--root", str(root), "--timeout", "20"])
    assert exit_.value.code == 1
    assert len(calls) == 1, "a full disk is not retried"
    assert time.monotonic() - start < 5
    one_line_error(capsys.readouterr().err, None, reason)
    assert bodies(root) == [] and state_files(root)["tmp"] == []


def test_retry_backs_off_and_is_bounded(mocker):
    sleeps = mocker.patch("ddmq_hpc.retry.time.sleep")
    attempts = []

    def stale():
        attempts.append(1)
        raise StorageError("cannot publish x: stale file handle", errno.ESTALE)
    with pytest.raises(StorageError):
        retry(stale)
    pauses = [c.args[0] for c in sleeps.call_args_list]
    assert len(attempts) == len(pauses) + 1 and 2 <= len(attempts) <= 10
    assert all(b > a for a, b in zip(pauses, pauses[1:])), pauses
    assert all(p > 0 for p in pauses)


def test_retry_does_not_repeat_permanent_errors(mocker):
    sleeps = mocker.patch("ddmq_hpc.retry.time.sleep")
    attempts = []

    def full():
        attempts.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError):
        retry(full)
    assert len(attempts) == 1 and not sleeps.called


def test_retry_respects_its_deadline():
    attempts = []

    def stale():
        attempts.append(1)
        raise OSError(errno.ESTALE, "Stale file handle")
    start = time.monotonic()
    with pytest.raises(OSError):
        retry(stale, attempts=50, first_delay=0.05, deadline=start + 0.5)
    assert time.monotonic() - start < 0.5 + 0.3
    assert len(attempts) < 50


# ----------------------------------------------------------- never hangs
HANG = textwrap.dedent("""
    import sys, time
    from unittest import mock
    import ddmq_hpc.notify as n

    def forever(*args, **kwargs):
        while True:
            time.sleep(3600)

    mock.patch({target!r}, side_effect=forever).start()
    n.main(sys.argv[1:])
""")


@pytest.mark.parametrize("target", ["ddmq_hpc.notify.notify", "os.rename"])
def test_timeout_bounds_a_hung_filesystem(tmp_path, target):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", HANG.format(target=target), "q", "stuck", "--timeout", "1"],
                          env=clean_env(tmp_path, root), capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert elapsed < 1 + 5, elapsed
    one_line_error(proc, 1, "'q'", "timed out")


# ------------------------------------------------ numbers and nesting limits
BAD_NUMBERS = [
    ["--timeout", "inf"], ["--timeout", "1e300"], ["--timeout", "nan"], ["--timeout", "-1"], ["--timeout", "0"],
    ["--timeout", "1e10"],
    ["--priority", "-1"], ["--priority", "1000000"], ["--priority", "9" * 30], ["--priority", "nan"],
    ["--status", "9" * 30], ["--status", "nan"], ["--status", "1e3"],
]


def test_numbers_out_of_range_are_one_line_usage_errors(notify_script, tmp_path):
    root = tmp_path / "root"
    results = run_all(notify_script, [["q", "event", *args] for args in BAD_NUMBERS], clean_env(tmp_path, root))
    for args, proc in zip(BAD_NUMBERS, results):
        line = one_line_error(proc, 2)
        assert args[0] in line, (args, line)
    assert not root.exists(), "nothing may be published, nor the root created"


def test_largest_and_smallest_numbers_are_accepted(notify_script, tmp_path):
    root = tmp_path / "root"
    ok(run_notify(notify_script, "q", "--status", "-11", "--priority", "999999", "--timeout", "1e9",
                  env=clean_env(tmp_path, root)))  # PBS reports negative exit statuses
    ok(run_notify(notify_script, "q", "--status", "271", "--priority", "0", "--timeout", "0.5",
                  env=clean_env(tmp_path, root)))
    msgs = Broker(root).peek("q", n=10)
    assert [(m.message["status"], m.message["state"], m.priority) for m in msgs] == [
        (271, "FAILED", 0), (-11, "FAILED", 999999)]


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [65, 500, 1000, 50_000])
def test_json_nested_too_deeply_is_a_usage_error(notify_script, tmp_path, depth):
    """Refused when given, as the core would refuse to publish it: never a RecursionError, and never
    accepted only to fail to deliver later."""
    root = tmp_path / "root"
    proc = run_notify(notify_script, "q", "--json", _nested(depth), env=clean_env(tmp_path, root))
    one_line_error(proc, 2, "nested deeper than 64")
    assert not root.exists()


def test_json_nested_64_deep_is_published_and_delivered(notify_script, tmp_path):
    root = tmp_path / "root"
    ok(run_notify(notify_script, "q", "--json", _nested(64), env=clean_env(tmp_path, root)))
    [msg] = Broker(root).consume("q")
    depth, value = 0, msg.message
    while value:
        depth, value = depth + 1, value[0]
    assert depth == 63 and value == []  # 64 levels of arrays


@pytest.mark.parametrize("text", ["NaN", "[1, Infinity]", '{"a": -Infinity}'])
def test_json_that_is_not_strict_json_is_a_usage_error(notify_script, tmp_path, text):
    root = tmp_path / "root"
    one_line_error(run_notify(notify_script, "q", "--json", text, env=clean_env(tmp_path, root)), 2, "json")
    assert not root.exists()
