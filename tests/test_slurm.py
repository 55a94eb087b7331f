"""Jobs from ``ddmq-template slurm`` on a real SLURM, and the events they publish.

CI starts a one-node SLURM (tests/harness/start-slurm.sh) before pytest and
sets DDMQ_REQUIRE_SLURM=1: without SLURM these tests then fail, elsewhere they
are skipped. Each test has its own ddmq root under tmp_path (jobs run as the
submitter, root here, and inherit its environment, so they find the same
Python); events are received with ``ddmq-wait --field job_id=...`` as a user
would. Job ids restart at 1 when SLURM restarts, so nothing is keyed on them
across tests.

After the real tests, the rendered script runs under bash with a fake
``squeue``, to cover every answer the script may get on a TERM, and none.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from ddmq_hpc.template import render
from tests.support.jobscripts import (BIN, QUEUE, events, fake_command, job_env, start, terminate, wait_for_file,
                                      write_script)
from tests.support.slurm import final_state, job_info, scancel

EXAMPLE = Path(__file__).resolve().parent.parent / "workflow_examples" / "slurm"


def sbatch(script: str, workdir: Path) -> str:
    """Submit a job script from ``workdir``; its id."""
    path = workdir / f"job-{time.monotonic_ns()}.sh"
    path.write_text(script, encoding="utf-8")
    done = subprocess.run(["sbatch", "--parsable", str(path)], cwd=workdir, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, f"sbatch failed: {done.stderr}"
    return done.stdout.strip().split(";")[0]


def wait_events(root: Path, *fields: str, count: int = 1, timeout: float = 60,
                about: Path | None = None) -> list[dict[str, Any]]:
    """The events ``ddmq-wait --field ...`` receives; on a time-out, the job's output says why."""
    args = [str(BIN / "ddmq-wait"), QUEUE, "--root", str(root), "--count", str(count), "--timeout", str(timeout),
            "--interval", "0.5", "--max-interval", "2"]
    for field in fields:
        args += ["--field", field]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 30)
    if done.returncode != 0:
        outputs = "".join(f"\n--- {p.name}:\n{p.read_text()}" for p in sorted(about.glob("*.out"))) if about else ""
        squeue = subprocess.run(["squeue"], capture_output=True, text=True).stdout
        pytest.fail(f"ddmq-wait {' '.join(fields)}: {done.stderr.strip()}\nsqueue:\n{squeue}{outputs}")
    return [json.loads(line) for line in done.stdout.splitlines()]


class Jobs:
    """Submits rendered scripts for one test, and cancels what is left of them afterwards."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path
        self.root = tmp_path / "root"
        self.ids: list[str] = []

    def submit(self, command: list[str], **options: Any) -> str:
        options.setdefault("output", str(self.dir / "job-%j.out"))
        job_id = sbatch(render("slurm", command, QUEUE, root=self.root, **options), self.dir)
        self.ids.append(job_id)
        return job_id


@pytest.fixture
def jobs(slurm: None, tmp_path: Path) -> Iterator[Jobs]:
    j = Jobs(tmp_path)
    yield j
    if j.ids:
        scancel(*j.ids)


# ----------------------------------------------------------------- real SLURM
def test_exit_0_publishes_completed(jobs: Jobs) -> None:
    job_id = jobs.submit(["sh", "-c", "echo to-stdout; echo to-stderr >&2"], job_name="ddmq-ok")
    [event] = wait_events(jobs.root, f"job_id={job_id}", about=jobs.dir)
    assert (event["state"], event["status"]) == ("COMPLETED", 0)
    assert event["scheduler"] == "slurm" and event["job_name"] == "ddmq-ok"
    assert event["submit_dir"] == str(jobs.dir) and event["node"] and event["partition"]
    assert final_state(job_id) == ("COMPLETED", "0:0")
    assert (jobs.dir / f"job-{job_id}.out").read_text() == "to-stdout\nto-stderr\n"


def test_exit_3_publishes_failed_and_slurm_records_3(jobs: Jobs) -> None:
    job_id = jobs.submit(["sh", "-c", "exit 3"])
    [event] = wait_events(jobs.root, f"job_id={job_id}", about=jobs.dir)
    assert (event["state"], event["status"]) == ("FAILED", 3)
    assert final_state(job_id) == ("FAILED", "3:0")  # the notification did not change it
    assert (jobs.dir / f"job-{job_id}.out").read_text() == ""  # and said nothing


def test_scancel_publishes_cancelled(jobs: Jobs) -> None:
    job_id = jobs.submit(["sh", "-c", 'touch "started-$SLURM_JOB_ID" && exec sleep 600'])
    wait_for_file(jobs.dir / f"started-{job_id}", timeout=60)
    cancelled = time.monotonic()
    scancel(job_id)
    [event] = wait_events(jobs.root, f"job_id={job_id}", timeout=30, about=jobs.dir)
    assert time.monotonic() - cancelled < 10  # long before SLURM's KILL (KillWait 30 s)
    assert (event["state"], event["status"]) == ("CANCELLED", 143)
    assert final_state(job_id)[0] == "CANCELLED"


def test_time_limit_publishes_timeout(jobs: Jobs) -> None:
    """SLURM ends the job at its time limit, and the event says TIMEOUT.

    The smallest --time is a minute and slurmctld checks limits every 30 s, so
    a job would take 60-90 s to time out. Lowering the running job's limit to 0
    with ``scontrol update`` has slurmctld end it at its next check (0-30 s),
    through the same time-limit path: state TIMEOUT, reason TimeLimit. The
    script was rendered with 5 minutes, so only squeue's answer can tell it
    that this TERM is the time limit.
    """
    job_id = jobs.submit(["sh", "-c", 'touch "started-$SLURM_JOB_ID" && exec sleep 600'], time="00:05:00")
    wait_for_file(jobs.dir / f"started-{job_id}", timeout=60)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=0"], check=True, timeout=30)
    [event] = wait_events(jobs.root, f"job_id={job_id}", timeout=60, about=jobs.dir)
    out = (jobs.dir / f"job-{job_id}.out").read_text()
    assert (event["state"], event["status"]) == ("TIMEOUT", 143), (event, out, final_state(job_id))
    assert final_state(job_id)[0] == "TIMEOUT"
    assert "DUE TO TIME LIMIT" in (jobs.dir / f"job-{job_id}.out").read_text()


def test_array_publishes_one_event_per_task(jobs: Jobs) -> None:
    array_id = jobs.submit(["sh", "-c", 'echo "task $SLURM_ARRAY_TASK_ID"'], array="1-3",
                           output=str(jobs.dir / "array-%A_%a.out"))
    got = wait_events(jobs.root, f"array_job_id={array_id}", count=3, about=jobs.dir)
    assert sorted(e["array_task_id"] for e in got) == ["1", "2", "3"]
    assert len({e["job_id"] for e in got}) == 3
    assert all(e["state"] == "COMPLETED" for e in got)
    assert (jobs.dir / f"array-{array_id}_2.out").read_text() == "task 2\n"


def test_workflow_example_second_job_waits_for_the_first(jobs: Jobs) -> None:
    """workflow_examples/slurm/submit.sh: step 2 waits in its job for step 1's event."""
    env = {**os.environ, "DDMQ_ROOT": str(jobs.root), "QUEUE": QUEUE, "STEP1_SECONDS": "1"}
    submitted = subprocess.run([str(EXAMPLE / "submit.sh"), str(jobs.dir)], env=env, capture_output=True,
                               text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    first, second = submitted.stdout.split()
    jobs.ids += [first, second]
    [event] = wait_events(jobs.root, f"job_id={second}", about=jobs.dir)
    assert (event["state"], event["status"]) == ("COMPLETED", 0), (jobs.dir / f"step2-{second}.out").read_text()
    assert (jobs.dir / f"step2-{second}.out").read_text() == (
        f"step 1 (job {first}) completed: aligned by job {first} on {event['host']}\n")
    step1_event = json.loads((jobs.dir / "step1.event").read_text())
    assert (step1_event["job_id"], step1_event["state"]) == (first, "COMPLETED")
    assert events(jobs.root) == []  # step 2 took step 1's event, this test step 2's


# -------------------------------------- the TERM question, with a fake squeue
@pytest.mark.parametrize("answer, state", [
    ("TimeLimit|INVALID", "TIMEOUT"),     # what slurmctld says at the time limit (seen here)
    ("None|INVALID", "TIMEOUT"),          # past the limit: no time left
    ("None|0:00", "TIMEOUT"),
    ("None|9:55", "CANCELLED"),           # what it says after an scancel (seen here)
    ("None|1-00:00:00", "CANCELLED"),
    ("None|UNLIMITED", "CANCELLED"),
    ("NodeDown|UNLIMITED", "NODE_FAIL"),  # node set down while the job ran (seen here)
    ("NodeDown|9:55", "NODE_FAIL"),
])
def test_term_state_from_squeue(tmp_path: Path, answer: str, state: str) -> None:
    """The script asks ``squeue -j $SLURM_JOB_ID -o '%r|%L'`` (reason, time left) on TERM."""
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "squeue", f'echo "$@" > "{tmp_path}/squeue-args"; echo "{answer}"')
    assert run_and_terminate(tmp_path, bin_dir, time="01:00:00") == (state, 143)
    assert (tmp_path / "squeue-args").read_text().split() == ["-h", "-j", "77", "-o", "%r|%L"]


def test_term_state_of_a_job_already_ended_with_its_node(tmp_path: Path) -> None:
    """Killed with its node, the job is NODE_FAIL at once: squeue shows it only with --states=all."""
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "squeue", f'echo "$@" >> "{tmp_path}/squeue-args"\n'
                                    'case "$*" in *--states=all*) echo "NodeDown|UNLIMITED" ;; esac')
    assert run_and_terminate(tmp_path, bin_dir) == ("NODE_FAIL", 143)
    assert (tmp_path / "squeue-args").read_text().splitlines() == ["-h -j 77 -o %r|%L",
                                                                   "-h -j 77 --states=all -o %r|%L"]


@pytest.mark.parametrize("rendered, after, state", [
    ("0:11", 1.1, "TIMEOUT"),      # run for the limit (11 s) less 10 s of slack
    ("0:12", 0, "CANCELLED"),
    (None, 1.1, "CANCELLED"),
])
def test_term_state_without_squeue(tmp_path: Path, rendered: str | None, after: float, state: str) -> None:
    """squeue does not answer: the script compares its run time with the limit it was rendered with."""
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "squeue", "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1")
    assert run_and_terminate(tmp_path, bin_dir, time=rendered, after=after) == (state, 143)


def run_and_terminate(tmp_path: Path, bin_dir: Path, after: float = 0, **options: Any) -> tuple[str, int]:
    """Run the rendered script as SLURM job 77 would run, TERM it after ``after`` s; (state, status)."""
    root = tmp_path / "root"
    script = write_script(tmp_path / "job.sh", "slurm", ["sh", "-c", "touch started && exec sleep 60"], root,
                          **options)
    env = job_env(tmp_path, {"SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "fake", "SLURM_SUBMIT_DIR": str(tmp_path)},
                  bin_dir)
    proc = start(script, env, cwd=tmp_path)
    wait_for_file(tmp_path / "started")
    time.sleep(after)
    done, took = terminate(proc)
    assert done.returncode == 143 and done.stderr == ""
    assert took < 25  # ddmq_term_budget, within SLURM's KillWait of 30 s
    [event] = events(root)
    assert event["job_id"] == "77"
    return event["state"], event["status"]



# ------------------------------- issue 11: what a real sbatch makes of a script
def cluster_name() -> str:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    [name] = [line.split("=", 1)[1].strip() for line in out.splitlines() if line.startswith("ClusterName ")]
    return name


def test_a_job_reads_its_input_and_says_which_cluster_ran_it(jobs: Jobs) -> None:
    """``#SBATCH --input`` reaches the command; the event carries SLURM's ClusterName."""
    (jobs.dir / "in.txt").write_text("hello\n")
    job_id = jobs.submit(["wc", "-c"], extra_directives=[f"#SBATCH --input={jobs.dir / 'in.txt'}"])
    [event] = wait_events(jobs.root, f"job_id={job_id}", about=jobs.dir)
    assert (event["state"], event["cluster"]) == ("COMPLETED", cluster_name())
    assert (jobs.dir / f"job-{job_id}.out").read_text().strip() == "6"


def test_sbatch_reads_back_any_job_name_and_an_unlimited_time(jobs: Jobs) -> None:
    name = "it's \"my\" job #1 \\o/"
    job_id = jobs.submit(["true"], job_name=name, time="UNLIMITED")
    [event] = wait_events(jobs.root, f"job_id={job_id}", about=jobs.dir)
    assert (event["state"], event["job_name"]) == ("COMPLETED", name)
    assert job_info(job_id)["TimeLimit"] == "UNLIMITED"
