"""``ddmq-jobstate``: a job's state in one lookup, and the job key every publisher of its end rebuilds.

The end of a job is published by ``ddmq-notify`` as a batch job runs it (the
template's trap), here run with the variables SLURM or PBS set; ``ddmq-jobstate``
then answers from the job's end record, as Snakemake's
``--cluster-generic-status-cmd`` runs it: one word on stdout, exit status 0.
The cost test counts system calls with strace at 10 and 100 000 messages.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ddmq import Broker, UsageError
from ddmq_hpc.jobevents import event_key, key_for, local_cluster, parse_job_id, watch_tag
from tests.support.jobscripts import fake_command
from tests.support.queuefiles import ready_files

BIN = Path(sys.executable).parent
SCHEDULER_PREFIXES = ("SLURM", "PBS_", "DDMQ_")


def job_env(tmp_path: Path, root: Path, **variables: str) -> dict[str, str]:
    """A batch job's environment: the scheduler's ``variables``, none inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_PREFIXES)}
    env.update(HOME=str(tmp_path / "home"), DDMQ_ROOT=str(root), SLURM_CONF=str(tmp_path / "no-slurm.conf"))
    env.update(variables)
    return env


def notify(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ddmq-notify"), "done", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def jobstate(env: dict[str, str], *args: str) -> str:
    """What ddmq-jobstate prints; it must exit 0 and say nothing on stderr, as Snakemake expects."""
    done = subprocess.run([str(BIN / "ddmq-jobstate"), "--queue", "done", *args], env=env, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stderr) == (0, ""), done
    return done.stdout


# --------------------------------------------------------------- job keys
@pytest.mark.parametrize("job_id, parsed", [
    ("1234", (None, "1234")),
    ("1234_7", (None, "1234_7")),           # SLURM array task, as squeue/sacct print it
    ("1234.pbs01", ("pbs01", "1234")),      # PBS names its server
    ("88[7].pbs01.example.org", ("pbs01.example.org", "88_7")),
    ("88[7]", (None, "88_7")),
])
def test_job_ids_as_schedulers_print_them(job_id: str, parsed: tuple[str | None, str]) -> None:
    assert parse_job_id(job_id) == parsed


@pytest.mark.parametrize("job_id", ["", "12a", "1234_[1-3]", "../x", "1234 5", "-1"])
def test_what_is_not_one_job_is_refused(job_id: str) -> None:
    with pytest.raises(UsageError):
        parse_job_id(job_id)


def test_a_key_names_the_cluster_so_two_clusters_on_one_root_do_not_collide() -> None:
    assert key_for("1234", "Alpha") != key_for("1234", "beta")
    assert key_for("1234", "Alpha") == key_for("1234", "alpha")  # SLURM keeps ClusterName in lower case
    assert key_for("88[7].pbs01", "ignored") == key_for("88_7", "pbs01")


def test_the_event_of_a_job_and_its_id_make_the_same_key() -> None:
    event = {"event": "job_end", "scheduler": "slurm", "state": "FAILED", "cluster": "c1", "job_id": "1300",
             "array_job_id": "1293", "array_task_id": "7"}
    assert event_key(event) == key_for("1293_7", "c1")  # the task as the user knows it, not its own id
    assert event_key({**event, "state": None}) is None  # "got this far" is not an end


def test_the_local_cluster_from_the_job_or_slurm_conf(tmp_path: Path) -> None:
    conf = tmp_path / "slurm.conf"
    conf.write_text("# ClusterName=commented\nSlurmctldHost=x\n  clustername = MyCluster # site name\n")
    assert local_cluster({"SLURM_CLUSTER_NAME": "InJob", "SLURM_CONF": str(conf)}) == "injob"
    assert local_cluster({"SLURM_CONF": str(conf)}) == "mycluster"
    assert local_cluster({"SLURM_CONF": str(tmp_path / "missing")}) is None


# ------------------------------------------------------------ ddmq-jobstate
def test_running_until_the_job_publishes_its_end_then_success(tmp_path: Path) -> None:
    root = tmp_path / "root"
    in_job = job_env(tmp_path, root, SLURM_JOB_ID="1234", SLURM_CLUSTER_NAME="Alpha")
    assert notify(in_job, "--field", "step=started").returncode == 0  # no --status: not an end
    login = job_env(tmp_path, root, SLURM_CLUSTER_NAME="alpha")
    assert jobstate(login, "1234") == "running\n"
    assert notify(in_job, "--status", "0").returncode == 0
    assert jobstate(login, "1234") == "success\n"
    assert jobstate(login, "1234") == "success\n"  # asking takes nothing away
    assert len(Broker(root).peek("done", n=10)) == 2
    other_cluster = job_env(tmp_path, root, SLURM_CLUSTER_NAME="beta")
    assert jobstate(other_cluster, "1234") == "running\n"  # job 1234 of another cluster


@pytest.mark.parametrize("args", [["--status", "3"], ["--status", "143", "--state", "CANCELLED"],
                                  ["--status", "143", "--state", "TIMEOUT"]])
def test_any_end_but_completed_is_failed(tmp_path: Path, args: list[str]) -> None:
    root = tmp_path / "root"
    assert notify(job_env(tmp_path, root, SLURM_JOB_ID="9", SLURM_CLUSTER_NAME="c"), *args).returncode == 0
    assert jobstate(job_env(tmp_path, root), "9", "--cluster", "c") == "failed\n"


def test_array_tasks_and_pbs_jobs_are_addressed_as_the_scheduler_prints_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    task = job_env(tmp_path, root, SLURM_JOB_ID="1300", SLURM_ARRAY_JOB_ID="1293", SLURM_ARRAY_TASK_ID="7",
                   SLURM_CLUSTER_NAME="c")
    assert notify(task, "--status", "0").returncode == 0
    pbs = job_env(tmp_path, root, PBS_JOBID="88[2].pbs01", PBS_ARRAY_ID="88[].pbs01", PBS_ARRAY_INDEX="2")
    assert notify(pbs, "--status", "1").returncode == 0
    login = job_env(tmp_path, root, SLURM_CLUSTER_NAME="c")
    assert [jobstate(login, j) for j in ("1293_7", "1293_6", "1300", "88[2].pbs01", "88[3].pbs01")] == [
        "success\n", "running\n", "running\n", "failed\n", "running\n"]


def test_the_cluster_from_slurm_conf_on_a_login_node(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert notify(job_env(tmp_path, root, SLURM_JOB_ID="5", SLURM_CLUSTER_NAME="site"), "--status", "0").returncode == 0
    (tmp_path / "slurm.conf").write_text("ClusterName=SITE\n")
    assert jobstate({**job_env(tmp_path, root), "SLURM_CONF": str(tmp_path / "slurm.conf")}, "5") == "success\n"


def test_errors_are_one_line_with_an_exit_code(tmp_path: Path) -> None:
    root = tmp_path / "root"
    env = job_env(tmp_path, root)
    for args, code, fragment in [
        (["5"], 2, "cannot tell which cluster job 5 ran on"),
        (["5_[1-3]", "--cluster", "c"], 2, "not a job id"),
        (["5", "--cluster", "c"], 4, "root"),
    ]:
        done = subprocess.run([str(BIN / "ddmq-jobstate"), "--queue", "done", *args], env=env,
                              capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout) == (code, ""), done
        assert len(done.stderr.splitlines()) == 1 and fragment in done.stderr, done.stderr


# --------------------------------------------------------- --reconcile
def fake_sacct(bin_dir: Path, calls: Path, answer: str) -> None:
    """A ``sacct`` first in PATH that logs each call to ``calls`` and prints ``answer`` (exit 1 if empty)."""
    for name in ("sacct", "squeue"):  # squeue: the reconciler's fallback without accounting
        reply = f"printf '%s\\n' {shlex.quote(answer)}" if answer else f"echo '{name}: refused' >&2; exit 1"
        fake_command(bin_dir, name, f"echo {name} >> {shlex.quote(str(calls))}\n{reply}")


def test_reconcile_answers_failed_for_a_job_killed_too_hard_to_speak(tmp_path: Path) -> None:
    """The scheduler is asked for a job with no end, at most once per interval, never for one with an end."""
    root = tmp_path / "root"
    assert notify(job_env(tmp_path, root, SLURM_JOB_ID="40", SLURM_CLUSTER_NAME="c"), "--status", "0").returncode == 0
    calls = tmp_path / "calls"
    killed = f"41|41|FAILED|0:9|c|2026-12-04T07:00:00|root|align|{watch_tag('done', str(root))}"
    fake_sacct(tmp_path / "bin", calls, killed)
    env = {**job_env(tmp_path, root), "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    ask = ["--cluster", "c", "--reconcile", "--reconcile-grace", "0", "--reconcile-interval", "600"]
    assert jobstate(env, "40", *ask) == "success\n"
    assert not calls.exists()  # an end recorded: the scheduler is not asked
    assert jobstate(env, "41", *ask) == "failed\n"
    assert calls.read_text() == "sacct\n"
    [end] = [m.message for m in Broker(root).peek("done", n=10) if m.message.get("job_id") == "41"]
    assert (end["source"], end["state"], end["signal"]) == ("scheduler", "FAILED", 9)
    assert [jobstate(env, "42", *ask) for _ in range(5)] == ["running\n"] * 5  # a round of status calls...
    assert calls.read_text() == "sacct\n"  # ... asks nothing more within the interval
    assert jobstate(env, "42", "--cluster", "c") == "running\n"


def test_reconcile_with_a_scheduler_that_cannot_be_asked_warns_and_answers(tmp_path: Path) -> None:
    """An error instead of a word would end the workflow: the answer is the queue's, the reason on stderr."""
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("done")
    fake_sacct(tmp_path / "bin", tmp_path / "calls", "")
    env = {**job_env(tmp_path, root), "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(BIN / "ddmq-jobstate"), "--queue", "done", "--cluster", "c", "--reconcile", "7"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "running\n"), done
    assert len(done.stderr.splitlines()) == 1 and "sacct: refused" in done.stderr, done.stderr


# ------------------------------------------------------------------- cost
FS_CALLS = ("open", "openat", "stat", "lstat", "fstat", "newfstatat", "statx", "getdents64", "read", "readlink",
            "access", "faccessat2")


def syscalls(env: dict[str, str], cwd: Path, *args: str) -> dict[str, int]:
    """``strace -c -f`` counts of the filesystem system calls of one ``ddmq-jobstate`` run."""
    done = subprocess.run(["strace", "-f", "-c", "-o", str(cwd / "strace.out"), str(BIN / "ddmq-jobstate"),
                           "--queue", "done", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    counts = {}
    for line in (cwd / "strace.out").read_text().splitlines():
        m = re.match(r"\s*[0-9.]+\s+[0-9.]+\s+[0-9]+\s+([0-9]+)\s+(?:[0-9]+\s+)?(\w+)$", line)
        if m and m.group(2) in FS_CALLS:
            counts[m.group(2)] = int(m.group(1))
    return counts


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_the_same_system_calls_at_10_and_100_000_messages(tmp_path: Path) -> None:
    """The answer is one lookup of the end record: the length of the queue does not matter."""
    root = tmp_path / "root"
    env = job_env(tmp_path, root, SLURM_CLUSTER_NAME="c")
    b = Broker(root, create=True)
    b.publish_many("done", range(9), create=True)
    assert notify(job_env(tmp_path, root, SLURM_JOB_ID="77", SLURM_CLUSTER_NAME="c"), "--status", "0").returncode == 0
    small = {job: syscalls(env, tmp_path, job) for job in ("77", "78")}
    b.publish_many("done", range(100_000 - 10), durable=False)  # fsync each: minutes, and beside the point
    assert len(ready_files(root / "done" / "ready")) == 100_000
    large = {job: syscalls(env, tmp_path, job) for job in ("77", "78")}
    assert large == small, (small, large)
    assert small["77"]["getdents64"] == small["78"]["getdents64"]  # no listing for the answer
    print("ddmq-jobstate filesystem system calls (10 and 100 000 messages):", small)
