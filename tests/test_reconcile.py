"""``ddmq-reconcile``: jobs killed too hard to speak still end with exactly one event.

Against the real single-node SLURM that CI starts with accounting
(tests/harness/start-slurm.sh, SLURM_ACCOUNTING=slurmdbd): jobs rendered by
``ddmq-template`` are killed for real -- SIGKILL to the whole job, over their
``--mem``, their node set down, cancelled while held, unable to start -- and
the reconciler, run twice and then twice at once, must leave exactly one
terminal event per job with the right state. A ``sacct`` wrapper first in
PATH counts the scheduler queries: one per run, none when not due.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from ddmq import Broker
from ddmq_hpc.jobevents import key_for
from ddmq_hpc.scheduler import slurm_state
from tests.support.crontab import cron_entry
from tests.support.jobscripts import BIN, QUEUE, fake_command, wait_for_file
from tests.support.slurm import REAL_SACCT, events_by_job, scancel
from tests.test_slurm import Jobs

EXAMPLES = Path(__file__).resolve().parent.parent / "workflow_examples" / "reconcile"


@pytest.fixture
def jobs(accounting: None, tmp_path: Path) -> Iterator[Jobs]:
    j = Jobs(tmp_path)
    yield j
    if j.ids:
        scancel(*j.ids)


def counting_sacct(tmp_path: Path, fail: bool = False) -> tuple[dict[str, str], Path]:
    """An environment whose ``sacct`` logs each call (and runs the real one, or fails as without accounting)."""
    log = tmp_path / "sacct-calls"
    bin_dir = tmp_path / "bin"
    answer = ('echo "sacct: error: Slurm accounting storage is disabled" >&2; exit 1' if fail
              else f'exec {REAL_SACCT} "$@"')
    fake_command(bin_dir, "sacct", f'echo "$*" >> "{log}"\n{answer}')
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}, log


def reconcile(root: Path, env: dict[str, str], *options: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(BIN / "ddmq-reconcile"), QUEUE, "--root", str(root), *options], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done
    return done


def ended(job_ids: list[str], timeout: float = 60) -> dict[str, str]:
    """SLURM's final state of each job (as sacct says it; ``ID_[1-3]`` for a pending array), waiting until all
    have ended."""
    deadline = time.monotonic() + timeout
    selection = ",".join(sorted({job.partition("_")[0] for job in job_ids}))
    while True:
        out = subprocess.run([REAL_SACCT, "-n", "-X", "-P", "-j", selection, "--format=JobID,State"],
                             capture_output=True, text=True, timeout=30).stdout
        states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
        if all(slurm_state(states.get(j, "")) for j in job_ids):
            return states
        assert time.monotonic() < deadline, f"jobs not ended after {timeout} s: {states}"
        time.sleep(0.5)


def jobstate(root: Path, job_id: str) -> str:
    done = subprocess.run([str(BIN / "ddmq-jobstate"), "--queue", QUEUE, "--root", str(root), job_id],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_every_hard_kill_ends_with_exactly_one_event(jobs: Jobs, tmp_path: Path) -> None:
    """SIGKILL, over --mem, cancelled while held, unable to start; and jobs that speak for themselves.

    ``scancel --signal=KILL --full`` is a cancel to SLURM (TERM, then KILL
    after KillWait): the trap runs and says CANCELLED. ``scancel --batch
    --signal=KILL`` kills the batch shell outright, as the OOM killer would:
    nothing runs, and only the scheduler can tell.
    """
    started = 'touch "started-$SLURM_JOB_ID" && exec sleep 600'
    killed = jobs.submit(["sh", "-c", started])
    cancelled = jobs.submit(["sh", "-c", started])
    hog = jobs.submit(["python3", "-c", "import time; b = bytearray(400 << 20); b[::4096] = b'x' * (len(b) >> 12);"
                                        " time.sleep(30)"],
                      extra_directives=["#SBATCH --mem=50M"])
    held = jobs.submit(["true"], extra_directives=["#SBATCH --hold"])
    unstartable = jobs.submit(["true"], output="/nonexistent/ddmq-test/out-%j")
    fine = jobs.submit(["true"])
    scancel(held)
    for job in (killed, cancelled):
        wait_for_file(jobs.dir / f"started-{job}", timeout=60)
    subprocess.run(["scancel", "--batch", "--signal=KILL", killed], check=True, timeout=30)
    subprocess.run(["scancel", "--signal=KILL", "--full", cancelled], check=True, timeout=30)
    everyone = [killed, cancelled, hog, held, unstartable, fine]
    states = ended(everyone)
    assert [slurm_state(states[j]) for j in (killed, cancelled, held, unstartable, fine)] == [
        "FAILED", "CANCELLED", "CANCELLED", "FAILED", "COMPLETED"], states

    # SLURM says CANCELLED at the scancel, while the trap is still publishing: wait for the jobs' own events.
    deadline = time.monotonic() + 30
    while not {cancelled, fine} <= set(before := events_by_job(jobs.root)):
        assert time.monotonic() < deadline, before
        time.sleep(0.2)
    assert not {killed, held, unstartable} & set(before)  # nothing ran a trap
    assert [e["state"] for e in before[fine]] == ["COMPLETED"]
    assert [e["state"] for e in before[cancelled]] == ["CANCELLED"]

    env, calls = counting_sacct(tmp_path)
    assert reconcile(jobs.root, env, "--grace", "3600", "--min-interval", "0").stdout == ""  # too recent
    first = reconcile(jobs.root, env, "--grace", "0", "--min-interval", "0")
    assert reconcile(jobs.root, env, "--grace", "0", "--min-interval", "0").stdout == ""
    racing = [subprocess.Popen([str(BIN / "ddmq-reconcile"), QUEUE, "--root", str(jobs.root), "--grace", "0",
                                "--min-interval", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(2)]
    assert [p.communicate(timeout=120) + (p.returncode,) for p in racing] == [("", "", 0)] * 2
    assert len(calls.read_text().splitlines()) == 5  # one query per run, whatever the number of jobs

    got = events_by_job(jobs.root)
    assert {job: len(events) for job, events in got.items()} == dict.fromkeys(everyone, 1)
    by_scheduler = {job: events[0] for job, events in got.items() if events[0].get("source") == "scheduler"}
    assert {killed, held, unstartable} <= set(by_scheduler)
    assert (by_scheduler[killed]["state"], by_scheduler[killed]["signal"]) == ("FAILED", 9)
    assert (by_scheduler[held]["state"], by_scheduler[held]["scheduler_state"]) == ("CANCELLED", "CANCELLED by 0")
    assert by_scheduler[unstartable]["state"] == "FAILED"
    # Over --mem: SLURM's OverMemoryKill SIGKILLs the job (no cgroups here: OUT_OF_MEMORY on sites with them).
    [hog_event] = got[hog]
    assert hog_event["state"] in ("FAILED", "OUT_OF_MEMORY"), hog_event
    if hog_event.get("source") == "scheduler":
        assert hog_event["signal"] == 9
    assert got[fine][0].get("source") is None and got[cancelled][0].get("source") is None  # not doubled
    for event in by_scheduler.values():
        assert event["cluster"] and event["job_id"] and event["scheduler"] == "slurm"
    printed = sorted(line.split()[0] for line in first.stdout.splitlines())
    assert printed == sorted(key_for(job, by_scheduler[job]["cluster"]) for job in by_scheduler)
    assert [jobstate(jobs.root, j) for j in everyone] == ["failed"] * 5 + ["success"]


def test_a_node_that_goes_down_under_a_job(jobs: Jobs, tmp_path: Path) -> None:
    """``scontrol update nodename=... state=down``: NODE_FAIL, one event, whoever says it.

    The controller ends the job at once, while the trap on the node may still
    be publishing: the reconciler and the trap race, and either may win.
    """
    node = socket.gethostname().split(".")[0]
    Broker(jobs.root, create=True).create_queue(QUEUE)
    job = jobs.submit(["sh", "-c", 'touch "started-$SLURM_JOB_ID" && exec sleep 600'],
                      extra_directives=["#SBATCH --no-requeue"])
    wait_for_file(jobs.dir / f"started-{job}", timeout=60)
    try:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=down", "reason=ddmq-test"], check=True,
                       timeout=30)
        states = ended([job])
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True, timeout=30)
    assert states[job] == "NODE_FAIL"
    env, _ = counting_sacct(tmp_path)
    reconcile(jobs.root, env, "--grace", "0", "--min-interval", "0")
    reconcile(jobs.root, env, "--grace", "0", "--min-interval", "0")
    [event] = events_by_job(jobs.root)[job]
    assert event["state"] == "NODE_FAIL", event  # the scheduler's, or the trap's (squeue: Reason=NodeDown)
    deadline = time.monotonic() + 30
    while subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True,
                         timeout=30).stdout.strip() not in ("idle", "mixed", "allocated"):
        assert time.monotonic() < deadline, "the node did not come back"
        time.sleep(0.5)


def test_the_scheduler_is_asked_at_most_once_per_min_interval(jobs: Jobs, tmp_path: Path) -> None:
    env, calls = counting_sacct(tmp_path)
    Broker(jobs.root, create=True).create_queue(QUEUE)
    reconcile(jobs.root, env, "--min-interval", "3600")
    reconcile(jobs.root, env, "--min-interval", "3600")  # another node, a minute later: not due
    assert len(calls.read_text().splitlines()) == 1
    assert (jobs.root / QUEUE / "jobs" / ".reconciled").is_file()
    Broker(jobs.root).delete_queue(QUEUE)  # the stamp is not a foreign file


def test_without_accounting_squeue_is_asked(jobs: Jobs, tmp_path: Path) -> None:
    """sacct refuses (no slurmdbd): the controller still knows a job for MinJobAge after it ended."""
    Broker(jobs.root, create=True).create_queue(QUEUE)
    held = jobs.submit(["true"], extra_directives=["#SBATCH --hold"])
    scancel(held)
    ended([held])
    env, calls = counting_sacct(tmp_path, fail=True)
    out = reconcile(jobs.root, env, "--grace", "0", "--min-interval", "0").stdout
    assert len(calls.read_text().splitlines()) == 1 and "CANCELLED" in out
    [event] = events_by_job(jobs.root)[held]
    assert (event["state"], event["source"], event["status"]) == ("CANCELLED", "scheduler", None)


def test_one_line_errors(tmp_path: Path) -> None:
    root = tmp_path / "root"
    Broker(root, create=True).create_queue(QUEUE)
    bin_dir = tmp_path / "bin"
    fake_command(bin_dir, "sacct", 'echo "sacct: error: Problem talking to the database" >&2; exit 1')
    fake_command(bin_dir, "squeue", 'echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for args, code, fragment in [
        ([QUEUE, "--min-interval", "0"], 1, "Unable to contact slurm controller"),
        (["missing"], 4, "missing"),
        ([QUEUE, "--grace", "-1"], 2, "--grace"),
    ]:
        done = subprocess.run([str(BIN / "ddmq-reconcile"), *args, "--root", str(root)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stdout) == (code, ""), done
        assert len(done.stderr.splitlines()) == 1 and fragment in done.stderr, done.stderr


def test_a_second_notify_of_one_job_publishes_nothing(tmp_path: Path) -> None:
    """The trap and an epilogue both run ddmq-notify: one event; the second says so and exits 0."""
    root = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "PBS_", "DDMQ_"))}
    env.update(SLURM_JOB_ID="61", SLURM_CLUSTER_NAME="c", DDMQ_ROOT=str(root))
    Broker(root, create=True).create_queue(QUEUE)
    runs = [subprocess.run([str(BIN / "ddmq-notify"), QUEUE, "--status", str(status)], env=env,
                           capture_output=True, text=True, timeout=60) for status in (137, 0)]
    assert [(r.returncode, r.stdout) for r in runs] == [(0, ""), (0, "")]
    assert runs[0].stderr == ""
    assert runs[1].stderr == f"ddmq-notify: the end of job c.61 is already recorded in {QUEUE!r}: not published again\n"
    assert [m.message["status"] for m in Broker(root).peek(QUEUE, n=10)] == [137]


# ---------------------------------------------------- workflow_examples/reconcile
def cron_command(example: Path, root: Path) -> tuple[list[str], str]:
    """The variable lines and the one command of a crontab/scrontab example, with this test's paths."""
    return cron_entry(example, {"/shared/ddmq": str(root), "/path/to/venv/bin": str(BIN), "--grace 120": "--grace 0"})


@pytest.mark.parametrize("example", ["crontab.example", "scrontab.example"])
def test_the_cron_examples_publish_the_event_of_a_killed_job(jobs: Jobs, tmp_path: Path, example: str) -> None:
    """The example's line, run with cron's bare environment (PATH=/usr/bin:/bin), after a SIGKILL."""
    Broker(jobs.root, create=True).create_queue(QUEUE)
    killed = jobs.submit(["sh", "-c", 'touch "started-$SLURM_JOB_ID" && exec sleep 600'])
    wait_for_file(jobs.dir / f"started-{killed}", timeout=60)
    subprocess.run(["scancel", "--batch", "--signal=KILL", killed], check=True, timeout=30)
    ended([killed])
    assignments, command = cron_command(EXAMPLES / example, jobs.root)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = ["HOME=" + str(home), "PATH=/usr/bin:/bin", "SHELL=/bin/sh", "LOGNAME=root", *assignments]
    done = subprocess.run(["env", "-i", *env, "/bin/sh", "-c", command], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, start_new_session=True, timeout=120)
    cluster = events_by_job(jobs.root)[killed][0]["cluster"]
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{cluster}.{killed} FAILED (FAILED)\n", "")
    assert jobstate(jobs.root, killed) == "failed"


def test_an_array_cancelled_while_pending_gets_one_event_per_task(jobs: Jobs, tmp_path: Path) -> None:
    """sacct shows a pending array as one row, ``ID_[1-3]``: each task gets its event, by its own id.

    For a second or two after the scancel, sacct shows the row as ``ID``, as if
    it were one job; the reconciler's --grace (120 s by default) is what
    keeps it from speaking for the array then, so this test waits instead.
    """
    Broker(jobs.root, create=True).create_queue(QUEUE)
    array = jobs.submit(["true"], array="1-3", extra_directives=["#SBATCH --hold"])
    scancel(array)
    ended([f"{array}_[1-3]"])
    env, _ = counting_sacct(tmp_path)
    reconcile(jobs.root, env, "--grace", "0", "--min-interval", "0")
    got = events_by_job(jobs.root)
    assert sorted(got) == [f"{array}_{task}" for task in (1, 2, 3)]
    assert all(e["array_job_id"] == array and e["state"] == "CANCELLED" for [e] in got.values())
    assert [jobstate(jobs.root, f"{array}_{task}") for task in (1, 2, 3, 4)] == ["failed"] * 3 + ["running"]


def test_a_waiter_with_reconcile_gets_the_end_of_a_job_killed_hard(jobs: Jobs) -> None:
    """ddmq-wait --reconcile: the waiter itself asks the scheduler, instead of running into its timeout."""
    Broker(jobs.root, create=True).create_queue(QUEUE)
    killed = jobs.submit(["sh", "-c", 'touch "started-$SLURM_JOB_ID" && exec sleep 600'])
    wait_for_file(jobs.dir / f"started-{killed}", timeout=60)
    subprocess.run(["scancel", "--batch", "--signal=KILL", killed], check=True, timeout=30)
    ended([killed])
    waited = subprocess.run([str(BIN / "ddmq-wait"), QUEUE, "--root", str(jobs.root), "--field", f"job_id={killed}",
                             "--reconcile", "--reconcile-grace", "0", "--timeout", "90", "-f", "json"],
                            capture_output=True, text=True, timeout=120)
    assert waited.returncode == 0, waited.stderr
    event = __import__("json").loads(waited.stdout)["message"]
    assert (event["state"], event["source"], event["signal"]) == ("FAILED", "scheduler", 9)
