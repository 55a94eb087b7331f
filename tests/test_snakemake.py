"""``ddmq_hpc.snakemake``: rules that wait for messages, and workflows that announce their end.

The workflow tests run the real ``snakemake`` (a declared test dependency:
if it is missing they fail, they do not skip) on small Snakefiles, in a
temporary working directory with a per-test ddmq root, while other
processes publish. A few fast tests check the helpers without Snakemake.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from ddmq import Broker
from ddmq.errors import UsageError
from ddmq_hpc.snakemake import ddmq_wait_executable, notify, wait_command, wait_for
from ddmq_hpc.wait import WaitTimeout
from tests.support.queuefiles import queue_files as tree_files

EXAMPLE = Path(__file__).resolve().parent.parent / "workflow_examples" / "snakemake" / "Snakefile"
BIN = Path(sys.executable).parent

# Exercises both helpers and both outcomes; the target chosen on the command
# line picks the rule. Polling is fast so the runs are short.
SNAKEFILE = r'''
from ddmq_hpc.snakemake import notify, wait_command, wait_for

ROOT = config["root"]
TIMEOUT = None if str(config.get("timeout", "none")) == "none" else float(config["timeout"])
COUNT = int(config.get("count", 1))
POLL = {"interval": 0.1, "max_interval": 0.5}
WAIT_SHELL = wait_command("data_ready", root=ROOT, regex=r"^dataset \d{2}$", fmt="json", count=COUNT,
                          timeout=TIMEOUT, **POLL)

rule wait_run:
    output: "data.txt"
    localrule: True
    run:
        wait_for(output, "data_ready", root=ROOT, regex="^dataset ", count=COUNT, timeout=TIMEOUT, **POLL)

rule use_data:
    input: "data.txt"
    output: "{sample}.result"
    run:
        with open(input[0]) as f, open(output[0], "w") as g:
            g.write(f.read().upper())
        notify("rule_done", root=ROOT, rule=rule, sample=wildcards.sample)

rule wait_shell:
    output: "data shell.json"
    localrule: True
    shell: WAIT_SHELL

onsuccess:
    notify("workflow_done", root=ROOT, state="COMPLETED")

onerror:
    notify("workflow_done", root=ROOT, state="FAILED")
'''


@pytest.fixture(scope="module")
def snakemake_version() -> str:
    """Snakemake is a declared test dependency: its absence is a failure, not a reason to skip."""
    if importlib.util.find_spec("snakemake") is None:
        pytest.fail("snakemake is not installed for this Python; install the test extra: "
                    "python -m pip install -e '.[test]'")
    version = importlib.metadata.version("snakemake")
    assert int(version.split(".")[0]) >= 8, f"snakemake>=8 needed, found {version}"
    return version


@pytest.fixture
def snakemake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snakemake_version: str) -> None:
    """Snakemake's caches and profiles in the test's directory, not the real home (conftest moves HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
def workflow(tmp_path: Path, snakemake_env: None) -> Path:
    """The test Snakefile."""
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SNAKEFILE)
    return snakefile


def snakemake(snakefile: Path, workdir: Path, *targets: str, **config: object) -> list[str]:
    """The command line of one quick local Snakemake run (no conda, one core)."""
    # targets first: --quiet and --config take every word after them
    return [sys.executable, "-m", "snakemake", *targets, "-s", str(snakefile), "--directory", str(workdir),
            "--cores", "1", "--nocolor", "--quiet", "progress", "host",
            "--config", *(f"{key}={value}" for key, value in config.items())]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)


def start(cmd: list[str]) -> subprocess.Popen:
    """Snakemake in the background, in its own process group (as a terminal would run it)."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen) -> None:
    """Kill what is left of a background run and its jobs (after a failed assertion)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def waiting_on(root: Path) -> bool:
    """True once a ``ddmq-wait`` process runs on ``root`` (the queue may not exist yet, so it is the sign)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"ddmq-wait") for arg in argv) and f"--root={root}".encode() in argv:
            return True
    return False


def queue_files(root: Path, queue: str) -> dict[str, list[str]]:
    """Every message file of a queue by state: equal snapshots mean an unchanged queue."""
    return tree_files(root / queue, ("ready", "work", "dead"))


def events(root: Path, queue: str) -> list[dict]:
    return [m.message for m in Broker(root).peek(queue, n=100)]


# ------------------------------------------------------- real Snakemake runs
def test_rule_waits_for_message_published_during_run(workflow: Path, tmp_path: Path, root: Path) -> None:
    """Also: the downstream rule announces its completion, and so does the workflow."""
    work = tmp_path / "work"
    proc = start(snakemake(workflow, work, "A.result", root=root, timeout=60))
    try:
        # the waiter waits for the queue, which it does not create; then other processes make it and publish
        wait_until(lambda: waiting_on(root), "the waiting rule", seconds=90)
        noise = Broker(root, create=True).publish("data_ready", "not for the workflow", create=True)
        subprocess.run([str(BIN / "ddmq-notify"), "--root", str(root), "data_ready", "dataset 42 is ready"],
                       check=True)
        out, _ = proc.communicate(timeout=120)
    finally:
        finish(proc)
    assert proc.returncode == 0, out
    assert (work / "data.txt").read_text() == "dataset 42 is ready\n"
    assert (work / "A.result").read_text() == "DATASET 42 IS READY\n"
    assert [m.id for m in Broker(root).peek("data_ready", n=10)] == [noise.id]  # only the match consumed
    assert queue_files(root, "data_ready")["work"] == []
    (rule_end,) = events(root, "rule_done")
    assert rule_end["event"] == "rule_end" and rule_end["rule"] == "use_data" and rule_end["sample"] == "A"
    assert {"host", "user", "time"} <= rule_end.keys() and rule_end["submit_dir"] == str(work)
    (done,) = events(root, "workflow_done")
    assert done["event"] == "workflow_end" and done["state"] == "COMPLETED"


@pytest.mark.parametrize("target", ["data.txt", "data shell.json"], ids=["run", "shell"])
def test_timeout_fails_the_rule_and_leaves_queue_unchanged(workflow: Path, tmp_path: Path, root: Path,
                                                           target: str) -> None:
    work = tmp_path / "work"
    b = Broker(root, create=True)
    b.publish("data_ready", "dataset 10", create=True)  # one of the two wanted: held, then given back
    b.publish("data_ready", "unrelated")
    before = queue_files(root, "data_ready")
    done = run(snakemake(workflow, work, target, root=root, timeout=1.5, count=2))
    assert done.returncode != 0, done.stdout
    assert "timed out after 1.5 s with 1 of 2 message(s) from 'data_ready'" in done.stdout
    assert ("WaitTimeout" in done.stdout) if target == "data.txt" else ("exit status 124" in done.stdout)
    assert "Error in rule wait_" in done.stdout
    assert not (work / target).exists()
    assert [p.name for p in work.iterdir() if p.name != ".snakemake"] == []  # no temp file either
    assert queue_files(root, "data_ready") == before
    (failed,) = events(root, "workflow_done")
    assert failed["event"] == "workflow_end" and failed["state"] == "FAILED"


def test_shell_rule_with_wait_command(workflow: Path, tmp_path: Path, root: Path) -> None:
    work = tmp_path / "work"
    b = Broker(root, create=True)
    b.publish("data_ready", "dataset 7", create=True)  # one digit: no match for ^dataset \d{2}$
    wanted = b.publish("data_ready", "dataset 42")
    done = run(snakemake(workflow, work, "data shell.json", root=root, timeout=60))
    assert done.returncode == 0, done.stdout
    (line,) = (work / "data shell.json").read_text().splitlines()
    got = json.loads(line)
    assert got["id"] == wanted.id and got["message"] == "dataset 42"
    assert [m.message for m in b.peek("data_ready", n=10)] == ["dataset 7"]


def test_ctrl_c_stops_a_waiting_rule_and_gives_messages_back(workflow: Path, tmp_path: Path,
                                                              root: Path) -> None:
    work = tmp_path / "work"
    b = Broker(root, create=True)
    b.publish("data_ready", "dataset 1", create=True)
    before = queue_files(root, "data_ready")
    proc = start(snakemake(workflow, work, "data.txt", root=root, timeout="none", count=2))
    try:
        wait_until(lambda: b.counts("data_ready")["work"] == 1, "the waiting rule to claim a message")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        out, _ = proc.communicate(timeout=30)  # stopped at once, not when a message or timeout came
    finally:
        finish(proc)
    assert proc.returncode != 0, out
    assert "interrupted by SIGINT" in out
    assert queue_files(root, "data_ready") == before
    assert not (work / "data.txt").exists()


def test_example_workflow_runs(tmp_path: Path, root: Path, snakemake_env: None) -> None:
    work = tmp_path / "work"
    announced = Broker(root, create=True).publish("incoming", {"path": "/data/run42"}, create=True)
    done = run(snakemake(EXAMPLE, work, root=root, queue="incoming", timeout=60))
    assert done.returncode == 0, done.stdout
    summary = json.loads((work / "results" / "summary.json").read_text())
    assert summary["data"] == {"path": "/data/run42"} and summary["message_id"] == announced.id
    assert Broker(root).counts("incoming") == {"ready": 0, "work": 0, "dead": 0}
    (end,) = events(root, "workflow_done")
    assert end["state"] == "COMPLETED" and end["workflow"] == "ddmq-snakemake-example"


# ------------------------------------------------ the helpers, without Snakemake
def test_wait_command_survives_snakemake_formatting_and_the_shell() -> None:
    cmd = wait_command("data_ready", "{output}", root="/shared/my root", regex=r"^run-\d{2}$",
                       fields={"status": 0, "name": "a b"}, count=2, timeout=90, peek=True, fmt="json",
                       create=False)
    formatted = cmd.format(output="out.json")  # what Snakemake's shell: does with braces
    assert shlex.split(formatted) == [
        ddmq_wait_executable(), "--root=/shared/my root", r"--regex=^run-\d{2}$", "--field=status=0",
        "--field=name=a b", "--count", "2", "--timeout", "90", "--peek", "--format", "json", "--no-create",
        "--output=out.json", "data_ready",
    ]
    assert wait_command("q").endswith(" --output={output:q} q")
    assert wait_command("q", None) == f"{shlex.quote(ddmq_wait_executable())} q"
    assert wait_command("-q", None, match="-x").endswith(" --match=-x -- -q")  # dashes are not options


def test_ddmq_wait_is_the_one_beside_this_python() -> None:
    assert ddmq_wait_executable() == str(BIN / "ddmq-wait")


def test_wait_for_writes_output_or_times_out(root: Path, tmp_path: Path) -> None:
    b = Broker(root, create=True)
    b.create_queue("q")
    out = tmp_path / "got.txt"
    with pytest.raises(WaitTimeout, match=rf"timed out after 0.3 s .* from 'q' \(root {root}\); .* not written"):
        wait_for(out, "q", root=root, timeout=0.3, interval=0.1)
    with pytest.raises(WaitTimeout, match=rf"^timed out after 0.3 s: queue 'qq' does not exist in {root} "):
        wait_for(out, "qq", root=root, timeout=0.3, interval=0.1)  # waited for, not created
    assert not out.exists() and b.list_queues() == ["q"]
    b.publish("q", {"status": 0}, create=True)
    wait_for([out], "q", root=root, fields={"status": 0}, timeout=10, interval=0.1)
    assert out.read_text() == '{"status": 0}\n'
    assert b.counts("q")["ready"] == 0
    with pytest.raises(UsageError, match="one file"):
        wait_for([out, out], "q", root=root)
    with pytest.raises(UsageError, match="fmt"):
        wait_for(out, "q", root=root, fmt="yaml")


def test_notify_events_and_messages(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notify("q", root=root, state="FAILED", run=3)
    # the queue creation rule: a notifier creates the queue, and says so
    assert capsys.readouterr().err == f"ddmq_hpc.snakemake.notify: created queue 'q' in {root}\n"
    notify("q", root=root, rule="align", event="custom")
    notify("q", {"k": 1}, root=root, extra="x")
    notify("q", "plain text", root=root)
    first, second, third, fourth = events(root, "q")
    assert first["event"] == "workflow_end" and first["state"] == "FAILED" and first["run"] == 3
    assert {"host", "user", "time"} <= first.keys()
    assert second["event"] == "custom" and second["rule"] == "align"
    assert third == {"k": 1, "extra": "x"} and fourth == "plain text"
    with pytest.raises(UsageError):
        notify("q", "plain text", root=root, extra="x")


def test_importing_the_helpers_does_not_import_ddmq() -> None:
    code = "import sys, ddmq_hpc.snakemake; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ddmq'))"
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_wait_for_does_not_follow_a_symlink_planted_at_a_temporary_name(root: Path, tmp_path: Path,
                                                                        mocker) -> None:
    """Another member of the group plants a symlink where the output's temporary file once went
    (``.NAME.ddmq-wait.PID``, PID the ``ddmq-wait`` child's): the rule must not write through it.
    A wrapper plants it at its own pid, which ``exec`` hands on to ``ddmq-wait``."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    outdir = tmp_path / "shared"
    outdir.mkdir()
    wrapper = tmp_path / "planting-ddmq-wait"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for arg; do case $arg in --output=*) out=${arg#--output=};; esac; done\n'
        f'ln -s {shlex.quote(str(victim))} "$(dirname "$out")/.$(basename "$out").ddmq-wait.$$" || exit 99\n'
        f'exec {shlex.quote(str(BIN / "ddmq-wait"))} "$@"\n')
    wrapper.chmod(0o755)
    mocker.patch("ddmq_hpc.snakemake.ddmq_wait_executable", return_value=str(wrapper))
    Broker(root, create=True).publish("q", "the event", create=True)
    wait_for(outdir / "data.txt", "q", root=root, timeout=10, interval=0.1)
    assert victim.read_text() == "precious\n", "the rule wrote through a planted symlink"
    assert not (outdir / "data.txt").is_symlink() and (outdir / "data.txt").read_text() == "the event\n"


def test_wait_for_refuses_bad_numbers_before_waiting(root: Path, tmp_path: Path) -> None:
    """In a child process: before the fix, a NaN timeout waited for ever."""
    code = f"""if True:
        from ddmq.errors import UsageError
        from ddmq_hpc.snakemake import wait_for
        for kwargs in ({{"timeout": float("nan")}}, {{"timeout": float("inf")}}, {{"timeout": -1}},
                       {{"interval": 1e10}}, {{"max_interval": float("inf")}}, {{"count": 0}}):
            try:
                wait_for({str(tmp_path / "never.txt")!r}, "q", root={str(root)!r}, **kwargs)
            except UsageError as exc:
                print("refused", exc)
            else:
                print("accepted", kwargs)
        """
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=30)
    finally:
        finish(child)  # and any ddmq-wait it left waiting
    assert child.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 6 and all(line.startswith("refused ") for line in lines), lines
    assert not (tmp_path / "never.txt").exists() and not root.exists()
