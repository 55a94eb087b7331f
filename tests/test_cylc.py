"""The Cylc 8 xtrigger ``ddmq_message`` and the event handlers that publish, with the real cylc-flow.

Workflows are installed and run (``cylc play --no-detach``) under the test's
own HOME, so ``~/cylc-run`` and ``~/.cylc/flow/global.cylc`` are the test's;
the schedulers are children of the test, and whatever is still running at
the end is stopped (``cylc stop --now --now``, then killed). Cylc takes its
Python path from ``CYLC_PYTHONPATH`` (it drops PYTHONPATH from sys.path):
that holds this checkout and, in front, the ``cylc.xtriggers`` entry point
this checkout's pyproject.toml declares, so Cylc finds ``ddmq_message`` as
an installed ddmq would give it, whatever ddmq this venv has installed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

pytest.importorskip("cylc.flow", reason="cylc-flow is not installed (pip install -e '.[test]')")

from ddmq import Broker, UsageError  # noqa: E402 - after the skip: nothing here runs without Cylc
from ddmq.console import body_text  # noqa: E402
from ddmq_hpc.cylc import ddmq_message, for_job_script  # noqa: E402

CHECKOUT = Path(__file__).resolve().parent.parent
EXAMPLE = CHECKOUT / "workflow_examples" / "cylc"
BIN = Path(sys.executable).parent
# Scheduler start-up and a job take seconds; on 2 shared CPUs, many.
RUN_TIMEOUT = 180.0

# What the scheduler's debug log says of an xtrigger call that was not satisfied.
NOT_YET = "[xtrigger-func out] [false, {}]"
# Values a publisher could put in a field to run commands in the task that
# gets it, or that Cylc's stripping, dedenting, unquoting and tilde rules
# would change on the way to the job's environment.
HOSTILE = {
    "subst": "$(touch PWNED) and `touch PWNED`",
    "quote": 'a"; touch PWNED; echo "',
    "tilde": "~;touch PWNED",
    "tilde_path": "~root/x y",
    "single": "'quoted'",
    "spaces": "  padded  ",
    "lines": "  first\n   \n  second\n",
    "backslash": "C:\\dir\\ \\$HOME\\",
    "percent": "100%(point)s %%",
    "empty": "",
}


class Cylc:
    """Runs ``cylc`` commands as one user of one machine would, inside the test's HOME."""

    def __init__(self, tmp_path: Path, root: Path):
        self.home = Path(os.environ["HOME"])
        self.root = root
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.plays: dict[str, subprocess.Popen] = {}
        global_cylc = self.home / ".cylc" / "flow" / "global.cylc"
        global_cylc.parent.mkdir(parents=True)
        # A job runs in a login shell, whose PATH need not hold this venv.
        global_cylc.write_text(f"[platforms]\n    [[localhost]]\n        cylc path = {BIN}\n")
        entry_points = tmp_path / "entry-points"
        _checkout_entry_points(entry_points)
        # The checkout by another name: Cylc takes out of sys.path whatever
        # PYTHONPATH names (which holds the checkout, for the commands that
        # event handlers run), CYLC_PYTHONPATH's entries too.
        checkout = tmp_path / "checkout"
        checkout.symlink_to(CHECKOUT)
        self.cwd = tmp_path
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                    "CYLC_PYTHONPATH": f"{entry_points}{os.pathsep}{checkout}", "DDMQ_ROOT": str(root)}

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "cylc"), *args], env=self.env, cwd=self.cwd, capture_output=True,
                              text=True, timeout=timeout)

    def install(self, source: Path, name: str) -> Path:
        done = self.run("install", str(source), f"--workflow-name={name}", "--no-run-name")
        assert done.returncode == 0, done.stderr
        return self.home / "cylc-run" / name

    def play(self, name: str, *options: str) -> subprocess.Popen:
        """``cylc play --no-detach`` in the background; its log is :meth:`log`."""
        with open(self.logs / name, "w") as log:
            self.plays[name] = subprocess.Popen(
                [str(BIN / "cylc"), "play", "--no-detach", "--debug", *options, name], env=self.env,
                cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.plays[name]

    def log(self, name: str) -> str:
        return (self.logs / name).read_text()

    def wait_until(self, name: str, condition: Callable[[str], bool], what: str) -> None:
        """Return once ``condition`` holds for the log of ``name``, which must still be running."""
        deadline = time.monotonic() + RUN_TIMEOUT
        while not condition(self.log(name)):
            if self.plays[name].poll() is not None:
                raise AssertionError(f"{name} ended waiting for {what}:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.log(name)[-3000:]}")
            time.sleep(0.2)

    def finish(self, name: str) -> None:
        """Wait for the workflow to run to its end; it must end well."""
        try:
            code = self.plays[name].wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} still running after {RUN_TIMEOUT:g} s:\n{self.log(name)[-3000:]}") from None
        assert code == 0, f"{name} exited {code}:\n{self.log(name)[-3000:]}"

    def stop_all(self) -> None:
        """Stop every scheduler still running, killing it if it will not stop."""
        for name, proc in self.plays.items():
            if proc.poll() is not None:
                continue
            try:
                self.run("stop", "--now", "--now", name, timeout=30)
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _checkout_entry_points(directory: Path) -> None:
    """A distribution's metadata declaring the ``cylc.xtriggers`` entry points of this checkout's pyproject.toml.

    First on Cylc's path, it is the ``ddmq`` distribution Cylc sees (the
    first of a name wins), so the test runs what the checkout declares, not
    what an older install of ddmq declared. Before Python 3.11 (no tomllib)
    the installed ddmq's entry points are used.
    """
    try:
        import tomllib
    except ModuleNotFoundError:
        return

    declared = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]["entry-points"]["cylc.xtriggers"]
    info = directory / "ddmq-0+checkout.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ddmq\nVersion: 0+checkout\n")
    (info / "entry_points.txt").write_text(
        "[cylc.xtriggers]\n" + "".join(f"{name} = {target}\n" for name, target in declared.items()))


@pytest.fixture
def cylc(tmp_path: Path, root: Path):
    runner = Cylc(tmp_path, root)
    try:
        yield runner
    finally:
        runner.stop_all()


def job_env(run_dir: Path, job: str) -> dict[str, str]:
    """The environment a job had: its script wrote ``env -0`` to share/env-<point>-<task>."""
    raw = (run_dir / "share" / f"env-{job}").read_text()
    return dict(entry.split("=", 1) for entry in raw.split("\0") if entry)


# ------------------------------------------------------------ a task waits for a message

WAITER = """
[scheduler]
    [[events]]
        # A wait that went wrong ends the run at once instead of at the test's timeout.
        stall timeout = PT0S
        abort on stall timeout = True
[scheduling]
    cycling mode = integer
    initial cycle point = 7
    final cycle point = 7
    [[xtriggers]]
        go = ddmq_message(queue=go_q, field_kind=go, field_point=%(point)s):PT1S
    [[graph]]
        P1 = "@go => work"
[runtime]
    [[work]]
        script = "env -0 > $CYLC_WORKFLOW_SHARE_DIR/env-$CYLC_TASK_CYCLE_POINT-work"
"""


def test_a_task_runs_once_a_matching_message_is_published_and_gets_its_fields(cylc, tmp_path, root):
    """The xtrigger is called and not satisfied while the queue is missing or holds only other
    points' messages; the one for the task's point (%(point)s filled in) lets it run, with the
    message id and every field, however hostile, in its environment exactly, and stays in the queue."""
    source = tmp_path / "waiter"
    source.mkdir()
    (source / "flow.cylc").write_text(WAITER)
    run_dir = cylc.install(source, "waiter")
    play = cylc.play("waiter")

    # No root, no queue yet: Cylc keeps asking, the task does not run.
    cylc.wait_until("waiter", lambda log: log.count(NOT_YET) >= 2, "two unsatisfied calls")
    assert "ddmq_message: ddmq root " in cylc.log("waiter")  # why, in the scheduler's debug log
    b = Broker(root, create=True)
    b.publish("go_q", {"kind": "go", "point": "8"}, create=True)  # another point's
    b.publish("go_q", {"kind": "stop", "point": 7})  # another kind
    b.publish("go_q", "go 7")  # not an object
    calls = cylc.log("waiter").count(NOT_YET)
    cylc.wait_until("waiter", lambda log: log.count(NOT_YET) >= calls + 2, "two more unsatisfied calls")
    assert play.poll() is None
    assert not (run_dir / "log" / "job" / "7").exists(), "the task ran before its message was published"

    body = {"kind": "go", "point": 7, "nested": {"a": [1, None]}, "not-a-name": "x", **HOSTILE}
    event = b.publish("go_q", body)
    cylc.finish("waiter")

    env = job_env(run_dir, "7-work")
    got = {key: value for key, value in env.items() if key.startswith("go_")}
    fields = {"kind": "go", "point": "7", "nested": '{"a": [1, null]}', **HOSTILE}
    assert got == {"go_message_id": event.id, "go_message": body_text(body),
                   **{f"go_field_{key}": value for key, value in fields.items()}}
    assert not list(run_dir.rglob("PWNED")), "a message field ran a command in the task"
    assert [m.id for m in b.peek("go_q", n=10)][-1] == event.id  # looked at, not consumed


# ------------------------------------------------------------ one workflow triggers another

def test_the_example_downstream_workflow_runs_on_the_upstream_workflows_task_events(cylc, root):
    """workflow_examples/cylc: downstream starts first and waits; upstream's event handler
    publishes each task's end (ddmq-notify); downstream runs each point once its event is there."""
    for name in ("upstream", "downstream"):
        done = cylc.run("validate", str(EXAMPLE / name))
        assert done.returncode == 0, done.stderr
    down_dir = cylc.install(EXAMPLE / "downstream", "downstream")
    up_dir = cylc.install(EXAMPLE / "upstream", "upstream")
    cylc.play("downstream", "-s", 'POLL="PT1S"')
    cylc.wait_until("downstream", lambda log: NOT_YET in log, "downstream to wait")
    assert not (down_dir / "log" / "job" / "1").exists()

    started = time.time()
    cylc.play("upstream")
    cylc.finish("upstream")
    cylc.finish("downstream")

    events = Broker(root).peek("cylc_events", n=10)
    assert [e.message for e in events] == [
        {"workflow": "upstream", "point": str(point), "task": "model", "event": "succeeded", "submit_num": "1"}
        for point in (1, 2)]
    for point, event in zip((1, 2), events):
        out = (down_dir / "log" / "job" / str(point) / "process" / "01" / "job.out").read_text()
        assert f"upstream's model succeeded at point {point}" in out
        assert f"message {event.id}: " in out
        assert event.published / 1e9 >= started
    assert (up_dir / "log" / "job" / "2" / "model" / "01" / "job.out").exists()


# ------------------------------------------------------------ cylc validate

@pytest.mark.parametrize("call, says", [
    ("queue=q, regx=^done", "unknown argument 'regx': ddmq_message takes queue, match, regex, root and field_NAME"),
    ("queue=q, field_=1", "unknown argument 'field_'"),
    ('queue="no such/queue"', "invalid queue name 'no such/queue'"),
    ("queue=q, regex=(unclosed", "regex='(unclosed': missing ), unterminated subpattern"),
    ("queue=q, match=50%", "match='50%': a literal % is written %%"),
    ("queue=007", 'queue=7 is not text: quote it (queue="7")'),
    ("queue=q, field_point=%(cycle)s", "Illegal template in xtrigger: cycle"),  # Cylc's own check
    ("match=done", "missing a required argument: 'queue'"),  # Cylc's, from the signature
])
def test_cylc_validate_rejects_bad_arguments_in_one_clear_line(cylc, tmp_path, call, says):
    source = tmp_path / "bad"
    source.mkdir()
    (source / "flow.cylc").write_text(WAITER.replace(
        "ddmq_message(queue=go_q, field_kind=go, field_point=%(point)s)", f"ddmq_message({call})"))
    done = cylc.run("validate", str(source))
    assert done.returncode != 0
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_cylc_validate_accepts_templates_numbers_and_a_root(cylc, tmp_path):
    source = tmp_path / "good"
    source.mkdir()
    (source / "flow.cylc").write_text(WAITER.replace(
        "ddmq_message(queue=go_q, field_kind=go, field_point=%(point)s)",
        'ddmq_message(done_q, regex="^\\d+%%$", root=~/ddmq, field_status=0, field_run=%(workflow)s, '
        'field_text="a, b = c", sequential=False)'))
    done = cylc.run("validate", str(source))
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------ the function itself

def test_a_call_only_peeks_and_says_why_it_is_not_satisfied(root, monkeypatch, capsys):
    """What Cylc's function-run calls, called directly: a missing queue is 'not yet', a
    match is returned every time (never consumed), bad arguments raise."""
    monkeypatch.setenv("DDMQ_ROOT", str(root))
    assert ddmq_message("done_q", field_status=0) == (False, {})
    assert "ddmq_message: ddmq root" in capsys.readouterr().err
    b = Broker(root, create=True)
    b.create_queue("done_q")
    assert ddmq_message("done_q") == (False, {})
    msg = b.publish("done_q", {"status": 0, "job": "a b"})
    for _ in range(2):
        assert ddmq_message("done_q", field_status=0, regex="job") == (
            True, {"message_id": msg.id, "message": r'{\"job\": \"a b\", \"status\": 0}', "field_status": "0",
                   "field_job": "a b"})
    assert ddmq_message("done_q", field_status=1) == (False, {})
    assert ddmq_message("done_q", match="other", root=str(root)) == (False, {})
    with pytest.raises(UsageError, match="invalid queue name"):
        ddmq_message("bad/queue")
    with pytest.raises(UsageError, match="unknown argument 'status'"):
        ddmq_message("done_q", status=0)


def test_values_reach_a_job_script_exactly_through_cylcs_quoting(tmp_path):
    """for_job_script against the two steps Cylc really applies (the broadcast's coercion and
    the job file's quoting), then bash: each value comes back as it was, and runs nothing."""
    from cylc.flow.job_file import JobFileWriter
    from cylc.flow.parsec.validate import BroadcastConfigValidator

    values = [*HOSTILE.values(), "plain", "   ", "\n", "~", "~/x", "'", '"', "\\", "$", "\t tab", "trailing\n", "a\n\t\n b",
              "'''x'''", "\"\"\"y\"\"\"", "€ ünï", "!history"]
    lines = []
    for i, value in enumerate(values):
        coerced = BroadcastConfigValidator.coerce_str(for_job_script(value), ["environment", f"V{i}"])
        lines.append(f"V{i}={JobFileWriter._get_variable_value_definition(coerced, {})}")
    script = "\n".join(lines) + "\n" + "".join(f'printf "%s\\0" "$V{i}"\n' for i in range(len(values)))
    done = subprocess.run(["bash", "-c", script], capture_output=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split("\0")[:-1] == values
    assert not (tmp_path / "PWNED").exists()
