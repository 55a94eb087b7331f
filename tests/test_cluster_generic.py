"""Snakemake's cluster-generic executor on a real SLURM, each job's end learnt from ddmq.

``workflow_examples/cluster-generic/`` is run as a user would run it: real
``snakemake`` 9 with ``snakemake-executor-plugin-cluster-generic``, its
profile unchanged, ``ddmq-sbatch`` in PATH, jobs on the running one-node
SLURM (CI starts it and sets DDMQ_REQUIRE_SLURM=1; elsewhere the SLURM test
skips without it). The workflow has jobs that depend on each other, one that
fails (``--keep-going``: the others finish, Snakemake reports that one) and
one whose batch shell is SIGKILLed, which publishes nothing: only
``ddmq-jobstate --reconcile`` in the profile can tell Snakemake it ended.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.support.slurm import events_by_job, scancel

BIN = Path(sys.executable).parent
EXAMPLE = Path(__file__).resolve().parent.parent / "workflow_examples" / "cluster-generic"
QUEUE = "snakemake"  # the profile's
# The profile's status command with the reconciler's times shortened from its
# minutes (hard kills are rare; the scheduler is asked once per 5 min) to seconds.
QUICK_RECONCILE = "ddmq-jobstate --queue snakemake --reconcile --reconcile-grace 5 --reconcile-interval 10"


def workflow(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the example to run in, and the environment a user would run it in."""
    workdir = tmp_path / "workflow"
    workdir.mkdir()
    shutil.copy(EXAMPLE / "Snakefile", workdir)
    shutil.copytree(EXAMPLE / "profile", workdir / "profile")
    env = dict(os.environ, DDMQ_ROOT=str(tmp_path / "root"),
               PATH=os.pathsep.join([str(EXAMPLE), str(BIN), os.environ["PATH"]]))
    return workdir, env


def test_a_workflow_with_a_failure_and_a_hard_kill(accounting: None, tmp_path: Path) -> None:
    assert QUICK_RECONCILE.split(" --reconcile-grace")[0] in (EXAMPLE / "profile" / "config.yaml").read_text()
    workdir, env = workflow(tmp_path)
    try:
        done = subprocess.run([str(BIN / "snakemake"), "--profile", "profile", "--keep-going",
                               "--cluster-generic-status-cmd", QUICK_RECONCILE, "--config", "fail=1", "kill=1"],
                              cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    finally:  # other helpers' jobs may hold the node: never leave ours behind
        log = "".join(p.read_text() for p in (workdir / ".snakemake" / "log").glob("*.log"))
        submitted = dict(re.findall(r"Submitted job (\d+) with external jobid '(\d+)'", log))
        scancel(*submitted.values())
    assert done.returncode == 1, done.stderr[-3000:]
    assert sorted(re.findall(r"Error in rule (\w+):", log)) == ["fails", "killed"], log
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log)
    assert sorted(finished) == ["make"] * 3 + ["process"] * 3 + ["summary"], log
    assert (workdir / "results" / "summary.txt").read_text() == "S1\nS2\nS3\n"
    assert not (workdir / "results" / "killed.txt").exists()

    by_job = events_by_job(tmp_path / "root", QUEUE)
    assert sorted(by_job) == sorted(submitted.values())
    assert all(len(ends) == 1 for ends in by_job.values()), by_job  # one end per job
    ends = {ends[0]["job_name"].removeprefix("smk-"): ends[0] for ends in by_job.values()}  # the profile's names
    assert (ends["fails"]["state"], ends["fails"].get("source")) == ("FAILED", None)  # its own trap said so
    assert (ends["killed"]["source"], ends["killed"]["state"], ends["killed"]["signal"]) == ("scheduler", "FAILED", 9)
    assert ends["summary"]["state"] == "COMPLETED" and "source" not in ends["summary"]

    # Resources reached sbatch through the submit command's format fields.
    asked = recorded_requests(",".join(by_job), {"smk-process", "smk-summary"})
    assert asked["smk-process"] == ("300M", "00:03:00")  # the rule's mem_mb and runtime
    assert asked["smk-summary"] == ("500M", "00:10:00")  # the profile's default resources


def recorded_requests(jobs: str, names: set[str]) -> dict[str, tuple[str, str]]:
    """``{job name: (ReqMem, Timelimit)}`` as accounting recorded them, once it has every name in ``names``.

    slurmctld sends a job's record to slurmdbd asynchronously, so the last
    job of a workflow can be missing from ``sacct`` for a few seconds after
    it ended (seen in CI): ask again for up to a minute.
    """
    deadline = time.monotonic() + 60
    while True:
        sacct = subprocess.run(["sacct", "-X", "-n", "-P", "-j", jobs, "-o", "JobID,JobName,ReqMem,Timelimit"],
                               capture_output=True, text=True, timeout=60, check=True).stdout
        asked = {name: (mem, limit) for _, name, mem, limit in (line.split("|") for line in sacct.splitlines())}
        if names <= asked.keys() or time.monotonic() > deadline:
            return asked
        time.sleep(1)


def test_the_submit_wrapper_refuses_what_it_cannot_submit(tmp_path: Path) -> None:
    """Usage errors are one line and exit 2, before anything is submitted."""
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\ntrue\n")
    env = {k: v for k, v in os.environ.items() if k != "DDMQ_QUEUE"}
    for args, fragment in [([str(script)], "no queue"), (["--queue", "q", str(tmp_path / "missing.sh")],
                                                          "not an executable job script"),
                           (["--queue", "q"], "usage: ddmq-sbatch")]:
        done = subprocess.run([str(EXAMPLE / "ddmq-sbatch"), *args], env=env, capture_output=True, text=True,
                              timeout=30)
        assert (done.returncode, done.stdout) == (2, ""), done
        assert len(done.stderr.splitlines()) == 1 and fragment in done.stderr, done.stderr

