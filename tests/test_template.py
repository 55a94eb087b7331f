"""``ddmq-template``: what it writes into a job script, and what it refuses to write.

Running the scripts is tested in test_slurm.py (on a real SLURM) and
test_pbs.py; here the script's text, the values baked into it, and that the
command in it runs exactly as given.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddmq_hpc import template
from tests.support.jobscripts import BIN, events, job_env, run, write_script


def ddmq_template(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ddmq-template"), *args], capture_output=True, text=True, cwd=cwd)


def assignment(script: str, name: str) -> str:
    [line] = [line for line in script.splitlines() if line.startswith(f"{name}=")]
    return line.split("=", 1)[1].split("  #")[0]


def test_prints_a_ready_to_submit_slurm_script(tmp_path: Path) -> None:
    done = ddmq_template("slurm", "--queue", "done_q", "--job-name", "align", "--root", str(tmp_path / "r"),
                         "--time", "01:00:00", "--partition", "short", "--array", "1-3", "--output",
                         "logs/align-%A_%a.out", "--directive", "#SBATCH --mem=2G", "--", "my_command", "-x", "a b")
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert lines[:7] == ["#!/bin/bash", "#SBATCH --job-name=align", "#SBATCH --partition=short",
                         "#SBATCH --time=01:00:00", "#SBATCH --array=1-3", "#SBATCH --output=logs/align-%A_%a.out",
                         "#SBATCH --mem=2G"]
    assert lines[7].startswith("#")  # sbatch reads directives up to the first command
    assert assignment(done.stdout, "ddmq_queue") == "done_q"
    assert assignment(done.stdout, "ddmq_root") == str(tmp_path / "r")
    assert assignment(done.stdout, "ddmq_notify") == str(BIN / "ddmq-notify")
    assert assignment(done.stdout, "ddmq_time_limit") == "3600"
    assert lines[-1] == "ddmq_run my_command -x 'a b'"
    assert "#PBS" not in done.stdout and "@@" not in done.stdout
    subprocess.run(["bash", "-n"], input=done.stdout, text=True, check=True)


def test_the_root_is_written_in_as_an_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--root, else $DDMQ_ROOT, else ~/.ddmq: a job on another node must find the same one."""
    def root_of(*args: str) -> str:
        done = ddmq_template("slurm", "--queue", "q", *args, "--", "true", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return assignment(done.stdout, "ddmq_root")

    home = Path(str(tmp_path / "home"))  # HOME, as conftest sets it
    assert root_of() == str(home / ".ddmq")
    monkeypatch.setenv("DDMQ_ROOT", "~/shared-events")
    assert root_of() == str(home / "shared-events")
    assert root_of("--root", "rel/root") == str(tmp_path / "rel" / "root")
    assert root_of("--root", "/with space/r") == "'/with space/r'"


@pytest.mark.parametrize("scheduler, text, seconds", [
    ("slurm", "90", 5400),               # a bare number is minutes for SLURM...
    ("pbs", "90", 90),                   # ... and seconds for PBS
    ("slurm", "1:30", 90), ("pbs", "1:30", 90),
    ("slurm", "01:00:00", 3600), ("pbs", "01:00:00", 3600),
    ("slurm", "2-0", 172800), ("slurm", "1-02:03", 93780), ("slurm", "1-02:03:04", 93784),
    ("slurm", "0", None),                # no limit
])
def test_time_limits_as_the_scheduler_reads_them(scheduler: str, text: str, seconds: int | None) -> None:
    assert template.limit_seconds(scheduler, text) == seconds


def test_the_command_runs_exactly_as_given(tmp_path: Path) -> None:
    """Quoted for the shell: nothing in it is expanded, split or run."""
    tricky = ["a b", "it's", '"q"', "$HOME", "$(touch pwned)", "`touch pwned`", ";", "*", "\\", "two\nlines", ""]
    dump = "import json, sys; open('argv.json', 'w').write(json.dumps(sys.argv[1:]))"
    script = write_script(tmp_path / "job.sh", "slurm", [sys.executable, "-c", dump, *tricky], tmp_path / "root")
    done = run(script, job_env(tmp_path, {}), cwd=tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads((tmp_path / "argv.json").read_text()) == tricky
    assert not (tmp_path / "pwned").exists()
    [event] = events(tmp_path / "root")  # outside any scheduler it still reports
    assert (event["scheduler"], event["state"], event["status"]) == (None, "COMPLETED", 0)


@pytest.mark.parametrize("args, message", [
    (["slurm", "--queue", "../etc"], "invalid queue name '../etc'"),
    (["slurm", "--queue", "q", "--time", "1h"], "--time '1h': use minutes"),
    (["pbs", "--queue", "q", "--time", "1-00:00:00"], "--time '1-00:00:00': use seconds"),
    (["slurm", "--queue", "q", "--directive=--mem=1G"], "must be one line starting with '#SBATCH '"),
    (["slurm", "--queue", "q", "--directive", "#PBS -l mem=1gb"], "must be one line starting with '#SBATCH '"),
    (["pbs", "--queue", "q", "--directive", "#PBS -m ae\nrm -rf ~"], "must be one line starting with '#PBS '"),
    (["pbs", "--queue", "q", "--job-name", "two words"], "--job-name 'two words': must be one word"),
    (["pbs", "--queue", "q", "--output", "x\n#PBS -u root"], "--output 'x\\n#PBS -u root': must be one word"),
])
def test_what_it_refuses_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    done = ddmq_template(*args, "--", "true")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("ddmq-template: ") and message in done.stderr
    assert len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("args", [
    ["slurm", "--", "true"],                # no --queue
    ["slurm", "--queue", "q"],              # no command
    ["lsf", "--queue", "q", "--", "true"],  # no such template
])
def test_bad_usage_exits_2(args: list[str]) -> None:
    done = ddmq_template(*args)
    assert done.returncode == 2 and "error:" in done.stderr and done.stdout == ""


def test_warns_when_ddmq_notify_is_nowhere(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The script is still printed: the job looks for ddmq-notify in its PATH when it runs."""
    monkeypatch.setattr(template, "find_notify", lambda: None)
    template.main(["pbs", "--queue", "q", "--", "true"])
    out, err = capsys.readouterr()
    assert err == "ddmq-template: warning: ddmq-notify not found; the job will look for it in its PATH\n"
    assert assignment(out, "ddmq_notify") == "''"
