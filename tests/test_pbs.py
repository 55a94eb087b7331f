"""The PBS job script from ``ddmq-template pbs``, run the way PBS runs it.

No PBS server can be installed here, so each test runs the rendered script
under bash, in the home directory, with the variables PBS Pro / Torque set
(PBS_JOBID, PBS_JOBNAME, PBS_O_WORKDIR, PBS_ARRAY_INDEX...), sends TERM to
the whole job as ``qdel`` and the walltime limit do, and answers the
script's ``qstat -f`` with a fake one.
"""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.jobscripts import (BIN, QUEUE, events, fake_command, job_env, run, start, terminate, terminate_job,
                                      wait_for_file, write_script)

EXAMPLE = Path(__file__).resolve().parent.parent / "workflow_examples" / "pbs"
TERM_BUDGET = 7  # ddmq_term_budget in templates/pbs.sh: PBS Pro kills 10 s after TERM


class PbsJob:
    """Where one PBS job runs: submit dir, home, ddmq root, and a bin dir of fake commands."""

    def __init__(self, tmp_path: Path):
        self.workdir = tmp_path / "submit"
        self.home = tmp_path / "home"
        self.root = tmp_path / "root"
        self.bin = tmp_path / "bin"
        self.script = tmp_path / "job.pbs"
        for d in (self.workdir, self.home, self.bin):
            d.mkdir(exist_ok=True)
        fake_command(self.bin, "qstat", "echo 'qstat: cannot connect to server' >&2; exit 1")

    def env(self, **variables: str) -> dict[str, str]:
        """What PBS sets for a job (overridden by ``variables``), fake commands first in PATH."""
        pbs = {"PBS_JOBID": "4711.pbs01", "PBS_JOBNAME": "assemble", "PBS_O_WORKDIR": str(self.workdir),
               "PBS_O_LOGNAME": "bob", "PBS_QUEUE": "workq", "PBS_ENVIRONMENT": "PBS_BATCH",
               "PBS_O_HOME": str(self.home)}
        return job_env(self.home, {**pbs, **variables}, self.bin)

    def qstat_walltime(self, walltime: str) -> None:
        """``qstat -f`` answers with this Resource_List.walltime, as PBS Pro and Torque print it."""
        fake_command(self.bin, "qstat", "\n".join([
            'echo "Job Id: $2"',
            'echo "    Job_Name = assemble"',
            'echo "    resources_used.walltime = 00:00:01"',
            f'echo "    Resource_List.walltime = {walltime}"',
            'echo "    Resource_List.ncpus = 1"',
        ]))


@pytest.fixture
def job(tmp_path: Path) -> PbsJob:
    return PbsJob(tmp_path)


def header(script: str) -> list[str]:
    """The lines qsub reads directives from: up to the first command."""
    lines = []
    for line in script.splitlines():
        if line.strip() and not line.startswith("#"):
            break
        lines.append(line)
    return lines


def test_directives_come_before_the_first_command(job) -> None:
    write_script(job.script, "pbs", ["python3", "assemble.py"], job.root, job_name="assemble", time="02:00:00",
                 partition="workq", array="1-3", output="/data/assemble.log",
                 extra_directives=["#PBS -l select=1:ncpus=4:mem=8gb", "#PBS -m ae"])
    text = job.script.read_text()
    head = header(text)
    assert head[0] == "#!/bin/bash"
    assert [line for line in head if line.startswith("#PBS")] == [
        "#PBS -S /bin/bash", "#PBS -N assemble", "#PBS -q workq", "#PBS -l walltime=02:00:00", "#PBS -J 1-3",
        "#PBS -o /data/assemble.log", "#PBS -j oe", "#PBS -l select=1:ncpus=4:mem=8gb", "#PBS -m ae",
        f"#PBS -v DDMQ_WATCH=ddmq:{QUEUE}@{job.root}",  # ddmq-reconcile's watch tag, last
    ]
    assert "#SBATCH" not in text
    assert text.rstrip().splitlines()[-1] == "ddmq_run python3 assemble.py"
    subprocess.run(["bash", "-n", str(job.script)], check=True)


def test_exit_0_publishes_completed_from_the_submit_dir(job) -> None:
    write_script(job.script, "pbs", ["sh", "-c", "pwd > where; echo working"], job.root, time="01:00:00")
    done = run(job.script, job.env(), cwd=job.home)  # PBS starts jobs in the home directory
    assert (done.returncode, done.stdout, done.stderr) == (0, "working\n", "")
    assert (job.workdir / "where").read_text().strip() == str(job.workdir)
    [event] = events(job.root)
    assert event["event"] == "job_end" and event["scheduler"] == "pbs"
    assert (event["state"], event["status"]) == ("COMPLETED", 0)
    assert event["job_id"] == "4711.pbs01" and event["job_name"] == "assemble" and event["user"] == "bob"
    assert event["submit_dir"] == str(job.workdir) and event["partition"] == "workq"


def test_exit_3_publishes_failed_and_the_job_still_exits_3(job) -> None:
    write_script(job.script, "pbs", ["sh", "-c", "echo broken >&2; exit 3"], job.root)
    done = run(job.script, job.env(), cwd=job.home)
    assert (done.returncode, done.stderr) == (3, "broken\n")
    [event] = events(job.root)
    assert (event["state"], event["status"]) == ("FAILED", 3)


@pytest.mark.parametrize("whole_job, script_after", [(True, 0), (False, 0), (True, 0.3)],
                         ids=["qdel", "term-to-script-only", "script-termed-last"])
def test_qdel_publishes_cancelled_at_once(job, whole_job: bool, script_after: float) -> None:
    """qdel TERMs every process of the job; a TERM to the script alone is passed on to the command.

    The script's own TERM may come after its command has died of its TERM and
    the script has begun to exit (seen under SLURM): still CANCELLED.
    """
    job.qstat_walltime("01:00:00")
    write_script(job.script, "pbs", ["sh", "-c", "touch started && exec sleep 60"], job.root)
    proc = start(job.script, job.env(), cwd=job.home)
    wait_for_file(job.workdir / "started")
    done, took = terminate(proc, whole_job=whole_job, script_after=script_after)
    assert done.returncode == 143 and done.stderr == ""
    assert took < TERM_BUDGET  # well before PBS's KILL
    [event] = events(job.root)
    assert (event["state"], event["status"]) == ("CANCELLED", 143)


@pytest.mark.parametrize("qstat, rendered, after, state", [
    ("00:00:11", "01:00:00", 1.1, "TIMEOUT"),   # qstat's limit wins (the job may have been qalter'ed)
    ("01:00:00", "00:00:11", 1.1, "CANCELLED"),
    (None, "00:00:11", 1.1, "TIMEOUT"),         # qstat does not answer: the limit it was rendered with
    (None, "00:00:12", 0, "CANCELLED"),         # ... not reached yet
    (None, None, 1.1, "CANCELLED"),             # no limit known: a TERM is a cancellation
])
def test_term_at_the_walltime_is_timeout(job, qstat: str | None, rendered: str | None, after: float,
                                         state: str) -> None:
    """A TERM once the script has run for the walltime less 10 s means TIMEOUT.

    PBS ends a job at (or, as MoM polls, after) its walltime; the slack covers
    the time between the job's start and the script's. So with an 11 s limit
    a TERM after 1 s is a time-out, with 12 s a TERM at once is not.
    """
    if qstat is not None:
        job.qstat_walltime(qstat)
    write_script(job.script, "pbs", ["sh", "-c", "touch started && exec sleep 60"], job.root, time=rendered)
    proc = start(job.script, job.env(), cwd=job.home)
    wait_for_file(job.workdir / "started")
    time.sleep(after)
    done, _ = terminate(proc)
    assert done.returncode == 143
    [event] = events(job.root)
    assert (event["state"], event["status"]) == (state, 143)


def test_array_subjobs_publish_one_event_each(job) -> None:
    write_script(job.script, "pbs", ["sh", "-c", 'echo "part $PBS_ARRAY_INDEX" > "part$PBS_ARRAY_INDEX"'],
                 job.root, array="1-3")
    for index in ("1", "2", "3"):
        env = job.env(PBS_JOBID=f"4711[{index}].pbs01", PBS_ARRAY_ID="4711[].pbs01", PBS_ARRAY_INDEX=index)
        assert run(job.script, env, cwd=job.home).returncode == 0
    got = events(job.root)
    assert sorted(e["array_task_id"] for e in got) == ["1", "2", "3"]
    assert {e["array_job_id"] for e in got} == {"4711[].pbs01"}
    assert sorted(e["job_id"] for e in got) == ["4711[1].pbs01", "4711[2].pbs01", "4711[3].pbs01"]
    assert (job.workdir / "part2").read_text() == "part 2\n"


@pytest.mark.parametrize("status", [0, 3])
def test_a_failed_publish_is_one_line_and_keeps_the_status(job, status: int) -> None:
    job.root.write_text("not a directory")
    write_script(job.script, "pbs", ["sh", "-c", f"exit {status}"], job.root)
    done = run(job.script, job.env(), cwd=job.home)
    assert done.returncode == status
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"ddmq-notify: could not publish to '{QUEUE}'")


def test_ddmq_notify_is_looked_up_in_path_when_not_where_it_was(job, tmp_path: Path) -> None:
    write_script(job.script, "pbs", ["true"], job.root, notify=str(tmp_path / "moved" / "ddmq-notify"))
    done = run(job.script, job.env(), cwd=job.home)  # BIN is in PATH
    assert (done.returncode, done.stderr) == (0, "")
    assert events(job.root)[0]["state"] == "COMPLETED"
    env = job.env(PATH=f"{job.bin}:/usr/bin:/bin")  # nowhere: one line, status kept
    done = run(job.script, env, cwd=job.home)
    assert done.returncode == 0
    assert len(done.stderr.splitlines()) == 1 and "ddmq-notify" in done.stderr


def test_a_hanging_qstat_and_ddmq_notify_cannot_outlast_the_kill_delay(job) -> None:
    """Both are cut off so that the whole TERM path ends before PBS Pro's KILL (10 s)."""
    fake_command(job.bin, "qstat", "exec sleep 60")
    notify = fake_command(job.bin, "ddmq-notify", 'echo "$@" > "$HOME/notify-args"; exec sleep 60')
    write_script(job.script, "pbs", ["sh", "-c", "touch started && exec sleep 60"], job.root, notify=str(notify))
    proc = start(job.script, job.env(), cwd=job.home)
    wait_for_file(job.workdir / "started")
    done, took = terminate(proc)
    assert done.returncode == 143
    assert took < TERM_BUDGET + 1.5
    assert done.stderr == "ddmq-notify: could not publish to 'done' (exit status 137)\n"
    args = (job.home / "notify-args").read_text().split()
    assert args[:2] == [QUEUE, "--root"] and args[args.index("--state") + 1] == "CANCELLED"
    assert int(args[args.index("--timeout") + 1]) <= TERM_BUDGET


def test_a_term_while_the_event_is_published_does_not_stop_it(job) -> None:
    """The command ended just before the walltime, whose TERM comes while ddmq-notify runs."""
    notify = fake_command(job.bin, "ddmq-notify",
                          'touch "$HOME/publishing"; sleep 1; echo "$@" > "$HOME/published"')
    write_script(job.script, "pbs", ["true"], job.root, notify=str(notify))
    proc = start(job.script, job.env(), cwd=job.home)
    wait_for_file(job.home / "publishing")
    terminate_job(proc)
    assert proc.wait(timeout=10) == 0
    args = (job.home / "published").read_text().split()
    assert args[args.index("--status") + 1] == "0" and "--state" not in args


# ------------------------------------------------------------- workflow example
EXAMPLE_COMMAND = [
    "pbs", "--queue", "assembled", "--root", "/shared/project/ddmq",
    "--notify", "/shared/project/venv/bin/ddmq-notify", "--job-name", "assemble", "--time", "02:00:00",
    "--array", "1-3", "--directive", "#PBS -l select=1:ncpus=4:mem=8gb", "--", "python3", "assemble.py",
]


def test_the_pbs_example_is_what_ddmq_template_renders() -> None:
    """workflow_examples/pbs/assemble.pbs is the output of the command its README gives."""
    rendered = subprocess.run([str(BIN / "ddmq-template"), *EXAMPLE_COMMAND], capture_output=True, text=True,
                              check=True).stdout
    assert (EXAMPLE / "assemble.pbs").read_text() == rendered
    readme = " ".join((EXAMPLE / "README.md").read_text().replace("\\\n", " ").split())
    assert "ddmq-template " + " ".join(
        f"'{a}'" if " " in a else a for a in EXAMPLE_COMMAND) + " > assemble.pbs" in readme


def test_the_pbs_example_runs_as_three_subjobs(job) -> None:
    """Run assemble.pbs as PBS would run its three subjobs (with the root moved to this test's)."""
    text = (EXAMPLE / "assemble.pbs").read_text()
    text, n = re.subn(r"(?m)^ddmq_root=.*$", f"ddmq_root={job.root}", text)
    assert n == 1
    job.script.write_text(text)
    (job.workdir / "assemble.py").write_text(
        "import os\nopen('chunk%s.done' % os.environ['PBS_ARRAY_INDEX'], 'w').close()\n")
    for index in ("1", "2", "3"):
        env = job.env(PBS_JOBID=f"88[{index}].pbs01", PBS_ARRAY_ID="88[].pbs01", PBS_ARRAY_INDEX=index)
        done = run(job.script, env, cwd=job.home)
        assert (done.returncode, done.stderr) == (0, "")
    assert sorted(p.name for p in job.workdir.glob("chunk*.done")) == ["chunk1.done", "chunk2.done",
                                                                       "chunk3.done"]
    waited = subprocess.run([str(BIN / "ddmq-wait"), "assembled", "--root", str(job.root), "--count", "3",
                             "--field", "array_job_id=88[].pbs01", "--timeout", "10"],
                            capture_output=True, text=True)
    assert waited.returncode == 0 and len(waited.stdout.splitlines()) == 3
