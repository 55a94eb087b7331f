"""``snakemake --executor ddmq`` with the real Snakemake 9 on the real single-node SLURM.

One ``--keep-going`` run covers most of it, since the node runs two jobs at a
time: the example workflow (workflow_examples/snakemake-executor, its
Snakefile and its profile) plus a job that fails, a job killed with SIGKILL
(no trap runs: the reconciler must report it), and a job whose resources
must reach sbatch. Wrappers first in PATH count the scheduler queries. A second run is interrupted with SIGINT while its jobs sleep: they
must be cancelled, with one scancel. Each run has its own ddmq root under tmp_path.

Without SLURM these tests skip, or fail where DDMQ_REQUIRE_SLURM=1 (CI). The
resource mapping and the settings are also checked without a scheduler.
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ddmq import Broker
from ddmq_hpc.jobevents import key_for, local_cluster, watch_tag
from tests.support.jobscripts import fake_command
from tests.support.slurm import final_state, job_info, scancel

EXAMPLE = Path(__file__).resolve().parent.parent / "workflow_examples" / "snakemake-executor"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
QUEUE = "smk"
SUBMITTED = re.compile(r"Job (\d+) has been submitted as SLURM job (\d+) \(log: (.*)\)\.")


def counting_env(tmp_path: Path, *commands: str) -> dict[str, str]:
    """The test's environment, with wrappers first in PATH that log each call of ``commands``
    (to tmp_path/NAME.calls) before running the real one."""
    bin_dir = tmp_path / "bin"
    for name in commands:
        real = shutil.which(name)
        assert real is not None, f"{name} not found"
        fake_command(bin_dir, name, f'echo "$*" >> {tmp_path / f"{name}.calls"}\nexec {real} "$@"')
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def calls(tmp_path: Path, command: str) -> list[str]:
    log = tmp_path / f"{command}.calls"
    return log.read_text().splitlines() if log.exists() else []


def submitted(output: str) -> dict[str, tuple[str, str]]:
    """Snakemake job id -> (SLURM job id, log path), from what the executor says on submission."""
    return {m.group(1): (m.group(2), m.group(3)) for m in SUBMITTED.finditer(output)}


def our_jobs(root: Path) -> list[str]:
    """The SLURM jobs still known to the controller that carry this root's watch tag."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%k"], capture_output=True, text=True, timeout=30).stdout
    tag = watch_tag(QUEUE, str(root))
    return [line.split("|", 1)[0] for line in out.splitlines() if line.split("|", 1)[-1] == tag]


# The example workflow plus the cases the executor must report right.
TEST_RULES = r'''
include: "{example}/Snakefile"

rule everything:
    default_target: True
    input: rules.all.input, "fails.txt", "killed.txt", "resources.txt"

rule fails:
    output: "fails.txt"
    shell: "echo about to fail >&2; exit 3"

# SIGKILL to the batch shell, as the OOM killer would: no trap runs. (scancel
# --signal=KILL --full is a cancel to SLURM: TERM first, and the trap runs.)
rule killed:
    output: "killed.txt"
    shell: "scancel --batch --signal=KILL $SLURM_JOB_ID; sleep 120"

rule resources:
    output: "resources.txt"
    resources:
        runtime=7, mem_mb=300, cpus_per_task=1, slurm_partition="debug", slurm_account="root",
        nodes=1, tasks=1, slurm_extra="--nice=7"
    shell: "echo $SLURM_JOB_ID > {{output}}"
'''


def test_a_workflow_with_a_failure_and_a_hard_kill(accounting: None, tmp_path: Path) -> None:
    """Every job's end reaches Snakemake from the queue; the failed and the killed job are the only errors."""
    workdir, root = tmp_path / "work", tmp_path / "root"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(TEST_RULES.format(example=EXAMPLE))
    started = time.monotonic()
    done = subprocess.run(
        [*SNAKEMAKE, "--workflow-profile", str(EXAMPLE), "--keep-going", "--ddmq-root", str(root),
         "--ddmq-queue", QUEUE, "--ddmq-grace", "3", "--ddmq-reconcile-interval", "5"],
        cwd=workdir, env=counting_env(tmp_path, "sacct", "squeue"), capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    output = done.stdout + done.stderr
    jobs = submitted(output)
    try:
        assert done.returncode == 1, output  # --keep-going: the run goes on, and fails at the end
        assert "Traceback" not in output
        errors = re.findall(r"Error in rule (\w+):\n\s+message: .*\n\s+jobid: (\d+)", output)
        assert sorted(rule for rule, _ in errors) == ["fails", "killed"], output
        assert (workdir / "results" / "report.txt").read_text().count("\n") == 4
        assert (workdir / "resources.txt").is_file()
        assert len(jobs) == 4 + 4 + 1 + 3  # make_sample, count_words, report; fails, killed, resources

        # The failed job: its trap's event (status 1: that of the Snakemake that ran the rule), and its log.
        fails_id = dict(errors)["fails"]
        slurm_id, log = jobs[fails_id]
        assert f"SLURM job {slurm_id} ended FAILED, exit status 1, on " in output
        assert "about to fail" in Path(log).read_text()
        assert log in output.split("Error in rule fails:", 1)[1]
        # The killed job: no trap ran; the reconciler's one sacct query found it.
        assert "reported by the scheduler" in output.split("Error in rule killed", 1)[1].split("Error in rule", 1)[0]

        # One terminal event per job, read back by its key; none from the scheduler but the killed job's.
        b = Broker(root)
        cluster = local_cluster()
        ends = {sm: b.job_end(QUEUE, key_for(sid, cluster)) for sm, (sid, _) in jobs.items()}
        assert all(end is not None for end in ends.values()), ends
        sources = {sm: end.message.get("source") for sm, end in ends.items() if end is not None}
        assert [sm for sm, source in sources.items() if source == "scheduler"] == [dict(errors)["killed"]]
        assert len(b.job_ends(QUEUE)) == len(jobs)

        # Resources reached sbatch (the controller keeps the job for MinJobAge, 300 s).
        info = job_info((workdir / "resources.txt").read_text().strip())
        assert (info["TimeLimit"], info["Partition"], info["Account"], info["Nice"]) == ("00:07:00", "debug",
                                                                                          "root", "7")
        assert (info["MinMemoryNode"], info["NumCPUs"], info["NumNodes"], info["NumTasks"]) == ("300M", "1", "1",
                                                                                                 "1")

        # The scheduler was asked far less than once per job per round: sacct at most once per
        # reconcile interval, and only while a job was silent.
        assert 1 <= len(calls(tmp_path, "sacct")) <= wall / 5 + 1, calls(tmp_path, "sacct")
        assert calls(tmp_path, "squeue") == []

        # Snakemake noticed each job's end within about a status round (1 s) of its publication.
        delays = [noticed - end.published / 1e9 for sm, end in ends.items()
                  if end is not None and (noticed := finished_at(output, sm)) is not None]
        assert len(delays) >= 9 and statistics.median(delays) <= 2.5, delays
    finally:
        left = our_jobs(root)
        if left:
            scancel(*left)


def finished_at(output: str, jobid: str) -> float | None:
    """When Snakemake logged ``Finished jobid: N`` (its timestamp line before it, whole seconds; local time)."""
    m = re.search(r"\[(\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4})\]\nFinished jobid: " + jobid + r" ", output)
    if m is None:
        return None
    # Snakemake's timestamps have whole seconds: the end of that second is the latest it can have been.
    return datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y").timestamp() + 1.0


def test_an_interrupted_run_cancels_its_jobs(accounting: None, tmp_path: Path) -> None:
    """SIGINT to Snakemake (Ctrl-C) while its jobs sleep: one scancel, and every job ends CANCELLED."""
    workdir, root = tmp_path / "work", tmp_path / "root"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(
        'rule all:\n    input: expand("slept.{i}", i=range(3))\n'
        'rule sleep:\n    output: "slept.{i}"\n    resources: runtime=5, mem_mb=400\n'
        '    shell: "sleep 300; touch {output}"\n')
    log = tmp_path / "snakemake.out"
    with open(log, "w") as out:
        proc = subprocess.Popen([*SNAKEMAKE, "--executor", "ddmq", "-j", "3", "--ddmq-root", str(root),
                                 "--ddmq-queue", QUEUE], cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                env=counting_env(tmp_path, "scancel"))
    try:
        deadline = time.monotonic() + 180
        while len(submitted(log.read_text())) < 3 or not running(our_jobs(root)):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        jobs = [sid for sid, _ in submitted(log.read_text()).values()]
        time.sleep(2)  # the running jobs' commands have started
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) != 0
        assert calls(tmp_path, "scancel") == [" ".join(sorted(jobs))]  # one scancel for all of them
        states = {sid: final_state(sid, 60)[0] for sid in jobs}
        assert set(states.values()) == {"CANCELLED"}, (states, log.read_text())
        assert our_jobs(root) == []
        # A job that was running published its own CANCELLED event from its trap.
        b = Broker(root)
        events = [b.job_end(QUEUE, key_for(sid, local_cluster())) for sid in jobs]
        assert any(e is not None and e.message["state"] == "CANCELLED" for e in events), events
    finally:
        if proc.poll() is None:
            proc.kill()
        left = our_jobs(root)
        if left:
            scancel(*left)


def running(job_ids: list[str]) -> bool:
    return any(job_info(j).get("JobState") == "RUNNING" for j in job_ids)


def test_a_refused_submission_is_one_line(accounting: None, tmp_path: Path) -> None:
    """sbatch's refusal ends the run with a one-line WorkflowError naming the rule and sbatch's reason."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(
        'rule bad:\n    output: "x"\n    resources: slurm_partition="no-such-partition"\n'
        '    shell: "touch {output}"\n')
    done = subprocess.run([*SNAKEMAKE, "--executor", "ddmq", "-j", "1", "--ddmq-root", str(tmp_path / "root")],
                          cwd=workdir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert re.search(r"rule bad \(job \d+\): sbatch refused the job: sbatch: error: .*[Pp]artition",
                     done.stderr), done.stderr
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------ without a scheduler
# No PBS server can be installed here: this qsub runs the script at once, in
# the background and in a session of its own, with the variables PBS sets
# (the submitter's environment too, as qsub -V asks); qdel sends TERM to
# that session, as PBS does on a delete.
FAKE_QSUB = r"""#!/bin/bash
echo "$*" >> "$PBS_FAKE/qsub.calls"
script=${@: -1}
n=$(( $(cat "$PBS_FAKE/counter" 2>/dev/null || echo 0) + 1 ))
echo $n > "$PBS_FAKE/counter"
cp "$script" "$PBS_FAKE/$n.sh"
out=$(sed -n 's/^#PBS -o //p' "$script")
PBS_JOBID=$n.pbs01 PBS_JOBNAME=$(sed -n 's/^#PBS -N //p' "$script") PBS_O_WORKDIR=$PWD \
    PBS_ENVIRONMENT=PBS_BATCH setsid bash "$PBS_FAKE/$n.sh" > "$out" 2>&1 < /dev/null &
echo $! > "$PBS_FAKE/$n.pid"
echo $n.pbs01
"""
FAKE_QDEL = r"""#!/bin/bash
echo "$*" >> "$PBS_FAKE/qdel.calls"
for id; do kill -TERM -- -"$(cat "$PBS_FAKE/${id%%.*}.pid")"; done
"""


@pytest.fixture
def fake_pbs(tmp_path: Path) -> dict[str, str]:
    """The environment with the stand-in qsub and qdel first in PATH; they keep their state in tmp_path/pbs."""
    fake = tmp_path / "pbs"
    (fake / "bin").mkdir(parents=True)
    for name, body in (("qsub", FAKE_QSUB), ("qdel", FAKE_QDEL)):
        (fake / "bin" / name).write_text(body)
        (fake / "bin" / name).chmod(0o755)
    (tmp_path / "work").mkdir()
    return {**os.environ, "PBS_FAKE": str(fake), "PATH": f"{fake / 'bin'}{os.pathsep}{os.environ['PATH']}"}


def test_pbs_jobs_report_their_ends_through_the_queue(fake_pbs: dict[str, str], tmp_path: Path) -> None:
    """--ddmq-scheduler pbs: qsub -V with PBS directives, and each job's end read from its record."""
    fake, workdir, root = tmp_path / "pbs", tmp_path / "work", tmp_path / "root"
    (workdir / "Snakefile").write_text(
        'rule all:\n    input: "b.txt", "c.txt"\n'
        'rule a:\n    output: "a.txt"\n    resources: runtime=65, mem_mb=400, pbs_queue="workq"\n'
        '    shell: "echo $PBS_JOBID > {output}"\n'
        'rule b:\n    input: "a.txt"\n    output: "b.txt"\n    shell: "cat {input} > {output}"\n'
        'rule c:\n    output: "c.txt"\n    shell: "echo c went wrong >&2; exit 2"\n')
    done = subprocess.run([*SNAKEMAKE, "--executor", "ddmq", "-j", "2", "--keep-going", "--ddmq-scheduler", "pbs",
                           "--ddmq-root", str(root), "--ddmq-queue", QUEUE], cwd=workdir, env=fake_pbs,
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert re.findall(r"Error in rule (\w+):", output) == ["c"], output
    assert re.search(r"PBS job \d+\.pbs01 ended FAILED, exit status 1, on ", output), output
    assert (workdir / "b.txt").read_text() == (workdir / "a.txt").read_text() != ""
    calls = (fake / "qsub.calls").read_text().splitlines()
    assert len(calls) == 3 and all(call.startswith("-V ") for call in calls), calls
    [script_a] = [text for text in map(Path.read_text, fake.glob("*.sh")) if "#PBS -N snakejob.a." in text]
    assert "#PBS -l walltime=1:05:00" in script_a and "#PBS -q workq" in script_a
    assert "#PBS -l select=1:ncpus=1:mem=400mb" in script_a
    ends = Broker(root).job_ends(QUEUE)
    assert sorted(ends) == ["pbs01.1", "pbs01.2", "pbs01.3"]
    assert "c went wrong" in "".join(p.read_text() for p in (workdir / ".snakemake" / "ddmq_logs").rglob("*.log"))


def test_a_job_id_whose_end_is_already_recorded_is_refused(fake_pbs: dict[str, str], tmp_path: Path) -> None:
    """A reused job id (the scheduler restarted) must not be taken for the earlier job's end: the run stops,
    saying why, and the job is deleted."""
    from ddmq_hpc.snakemake_executor import REUSED_ID_SLACK

    workdir, root = tmp_path / "work", tmp_path / "root"
    Broker(root, create=True).publish_job_end(QUEUE, "pbs01.1", {"event": "job_end", "state": "COMPLETED"},
                                              create=True)
    time.sleep(REUSED_ID_SLACK + 0.5)
    (workdir / "Snakefile").write_text('rule a:\n    output: "a.txt"\n    shell: "sleep 60; touch {output}"\n')
    done = subprocess.run([*SNAKEMAKE, "--executor", "ddmq", "-j", "1", "--ddmq-scheduler", "pbs", "--ddmq-root",
                           str(root), "--ddmq-queue", QUEUE], cwd=workdir, env=fake_pbs, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert f"rule a (job 0): queue '{QUEUE}' already holds the end of an earlier job 1.pbs01" in done.stderr, \
        done.stderr
    assert (tmp_path / "pbs" / "qdel.calls").read_text() == "1.pbs01\n"


def test_importing_ddmq_does_not_import_snakemake() -> None:
    """The commands run at the end of every job: Snakemake's import time must not be theirs."""
    code = ("import sys, ddmq, ddmq_hpc, ddmq_hpc.template, ddmq_hpc.reconcile; "
            "print(sorted(m for m in sys.modules if m.startswith('snakemake')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_every_setting_has_a_default_and_help(tmp_path: Path) -> None:
    """``snakemake --executor ddmq -j N`` needs no option: Snakemake lists each with its help."""
    from snakemake_executor_plugin_ddmq import ExecutorSettings

    settings = ExecutorSettings()
    assert (settings.queue, settings.root, settings.scheduler) == ("snakemake", None, "slurm")
    done = subprocess.run([*SNAKEMAKE, "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    for option in ("--ddmq-queue", "--ddmq-root", "--ddmq-scheduler", "--ddmq-reconcile-interval",
                   "--ddmq-grace", "--ddmq-status-interval"):
        assert option in done.stdout


@pytest.mark.parametrize(("option", "said"), [
    ("--ddmq-grace=-1", "--ddmq-grace must be 0 or more seconds (and finite), not -1.0"),
    ("--ddmq-status-interval=0", "--ddmq-status-interval must be 0.01 or more seconds (and finite), not 0.0"),
    ("--ddmq-queue=bad/name", "ddmq executor: invalid queue name 'bad/name'"),
])
def test_a_bad_setting_is_one_line(tmp_path: Path, option: str, said: str) -> None:
    (tmp_path / "Snakefile").write_text('rule a:\n    output: "a"\n    shell: "touch {output}"\n')
    done = subprocess.run([*SNAKEMAKE, "--executor", "ddmq", "-j", "1", option], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and said in done.stderr and "Traceback" not in done.stderr, done.stderr


def resources(**values: Any) -> dict[str, Any]:
    return values


def test_resources_map_to_sbatch_options_as_the_slurm_plugin_maps_them() -> None:
    from ddmq_hpc.snakemake_executor import slurm_request

    request = slurm_request(resources(runtime=90, mem_mb=2000, slurm_partition="long", slurm_account="lab",
                                      constraint="avx2", qos="high", nodes=2, tasks=4, gpu=1, gpu_model="a100",
                                      slurm_extra="--exclusive --mail-type='END'"), threads=8)
    assert (request.time, request.partition) == ("90", "long")
    assert request.directives == [
        "#SBATCH --mem=2000M", "#SBATCH --cpus-per-task=8", "#SBATCH --ntasks=4", "#SBATCH --nodes=2",
        "#SBATCH --gpus=a100:1", "#SBATCH --account=lab", "#SBATCH --constraint=avx2", "#SBATCH --qos=high"]
    assert request.arguments == ["--exclusive", "--mail-type=END"]
    # mem_mb_per_cpu wins over mem_mb; cpus_per_task over threads, and below 0 asks for none.
    request = slurm_request(resources(mem_mb=1000, mem_mb_per_cpu=100, cpus_per_task=-1), threads=4)
    assert request.directives == ["#SBATCH --mem-per-cpu=100M", "#SBATCH --ntasks=1"]
    assert slurm_request(resources(), threads=1).time is None


@pytest.mark.parametrize("extra", ["--comment=mine", "--wrap 'ls'", "--array=1-3", "-a 1-3"])
def test_slurm_extra_cannot_take_what_the_executor_relies_on(extra: str) -> None:
    from snakemake_interface_common.exceptions import WorkflowError

    from ddmq_hpc.snakemake_executor import slurm_request

    with pytest.raises(WorkflowError, match="cannot be given"):
        slurm_request(resources(slurm_extra=extra), threads=1)


def test_resources_map_to_pbs_select() -> None:
    from ddmq_hpc.snakemake_executor import pbs_request

    request = pbs_request(resources(runtime=125, mem_mb_per_cpu=500, pbs_queue="workq", pbs_account="lab",
                                    nodes=1, pbs_extra="-m e"), threads=4)
    assert (request.time, request.partition) == ("2:05:00", "workq")
    assert request.directives == ["#PBS -l select=1:ncpus=4:mem=2000mb", "#PBS -A lab"]
    assert request.arguments == ["-m", "e"]
