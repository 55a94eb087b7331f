"""``ddmq-reconcile --scheduler pbs`` against real ``qstat -x -t -f -F json`` output.

No PBS server can be installed here: a stand-in ``qstat`` first in PATH
replays the real listings in tests/data/pbs/ (see its README for their
sources), with this test's job ids, owner and watch tag planted, and for
each way a job can end the ``job_state``/``substate``/``Exit_status`` that
OpenPBS sets then. The watch tag is taken from a script rendered by
``ddmq-template pbs``, as qsub would pass its ``#PBS -v`` to the server.
Everything else is real: the ``ddmq-reconcile`` process, the root, the queue.
"""
from __future__ import annotations

import copy
import json
import os
import pwd
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ddmq import Broker
from ddmq_hpc.jobevents import key_for, watch_tag
from tests.support.jobscripts import BIN, QUEUE, fake_command, write_script

DATA = Path(__file__).resolve().parent / "data" / "pbs"
FINISHED = json.loads((DATA / "openpbs-22.05-finished.json").read_text())
QUEUED = json.loads((DATA / "pbspro-2022-queued.json").read_text())
USER = pwd.getpwuid(os.getuid()).pw_name
SERVER = "pbs01"


def real_job(listing: dict[str, Any]) -> dict[str, Any]:
    """A copy of the one job in a real listing."""
    [job] = listing["Jobs"].values()
    return copy.deepcopy(job)


def pbs_time(seconds: float) -> str:
    """A time as qstat prints it (ctime(3), local time)."""
    return time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(seconds))


class Pbs:
    """A root with queue QUEUE, the watch tag its PBS scripts carry, and a ``qstat`` that replays a listing."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "root"
        Broker(self.root, create=True).create_queue(QUEUE)
        self.bin = tmp_path / "bin"
        self.calls = tmp_path / "qstat-calls"
        self.listing = tmp_path / "listing.json"
        script = write_script(tmp_path / "job.pbs", "pbs", ["true"], self.root)
        [self.tag] = re.findall(r"^#PBS -v DDMQ_WATCH=(\S+)$", script.read_text(), re.MULTILINE)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.replay()

    def replay(self, body: str | None = None) -> None:
        """``qstat`` logs its arguments and prints the listing (or runs ``body``); shell builtins only,
        so that a PATH of this bin directory alone holds no other scheduler command."""
        reply = body or f'while IFS= read -r line; do printf "%s\\n" "$line"; done < {shlex.quote(str(self.listing))}'
        fake_command(self.bin, "qstat", f'printf "%s\\n" "$*" >> {shlex.quote(str(self.calls))}\n{reply}')

    def add(self, job_id: str, *, state: str = "F", substate: int | None = 92, exit_status: Any = None,
            tag: str | None = None, owner: str = USER, ended: float | None = None) -> None:
        """A job in the listing: the real finished job (the real queued one for Q/R), re-planted."""
        job = real_job(QUEUED if state in "QRH" else FINISHED)
        job.pop("Exit_status", None)
        job.update(job_state=state, Job_Owner=f"{owner}@login01", server=SERVER)
        if substate is not None:
            job["substate"] = substate
        if exit_status is not None:
            job["Exit_status"] = exit_status
        if ended is not None:
            job["obittime"] = job["mtime"] = pbs_time(ended)
        if tag != "":
            job["Variable_List"]["DDMQ_WATCH"] = tag or self.tag
        self.jobs[job_id] = job
        listing = {**{k: v for k, v in FINISHED.items() if k != "Jobs"}, "Jobs": self.jobs}
        self.listing.write_text(json.dumps(listing, indent=1) + "\n")

    def reconcile(self, *args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PATH": path if path is not None else f"{self.bin}{os.pathsep}{os.environ['PATH']}"}
        return subprocess.run([str(BIN / "ddmq-reconcile"), QUEUE, "--root", str(self.root), "--grace", "0",
                               "--min-interval", "0", *args], env=env, capture_output=True, text=True, timeout=60)

    def qstat_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def ends(self) -> dict[str, dict[str, Any]]:
        """The terminal events in the queue, by job id; fails on a job with two."""
        events = [m.message for m in Broker(self.root).peek(QUEUE, n=1000)]
        by_id = {event["job_id"]: event for event in events}
        assert len(by_id) == len(events), events
        return by_id


@pytest.fixture
def pbs(tmp_path: Path) -> Pbs:
    return Pbs(tmp_path)


# How a job ended as OpenPBS records it -> the event's (state, status, signal).
ENDED = {
    "100": dict(substate=92, exit_status=0, expect=("COMPLETED", 0, None)),
    "101": dict(substate=93, exit_status=3, expect=("FAILED", 3, None)),
    "102": dict(substate=93, exit_status="-29", expect=("TIMEOUT", None, None)),  # as qstat prints it, a string
    "103": dict(substate=91, exit_status=None, expect=("CANCELLED", None, None)),  # qdel while queued
    "104": dict(substate=91, exit_status=271, expect=("CANCELLED", None, 15)),  # qdel while running
    "105": dict(substate=93, exit_status=265, expect=("FAILED", None, 9)),  # SIGKILL
    "106": dict(substate=93, exit_status=-27, expect=("OUT_OF_MEMORY", None, None)),  # JOB_EXEC_KILL_MEM
    "107": dict(substate=93, exit_status=None, expect=("NODE_FAIL", None, None)),  # its node went down
    "108": dict(substate=93, exit_status=-1, expect=("FAILED", None, None)),  # JOB_EXEC_FAIL1: could not start
}


def test_each_ended_watched_job_gets_one_event_with_the_schedulers_state(pbs: Pbs) -> None:
    ended = time.time() - 600
    for seq, case in ENDED.items():
        pbs.add(f"{seq}.{SERVER}", substate=case["substate"], exit_status=case["exit_status"], ended=ended)
    pbs.add(f"109[3].{SERVER}", state="X", substate=92, exit_status=0, ended=ended)  # subjob, array still running
    pbs.add(f"109[].{SERVER}", state="B", substate=None)  # the array itself: its subjobs are the jobs
    pbs.add(f"110.{SERVER}", state="R", substate=42)
    pbs.add(f"111.{SERVER}", state="Q", substate=10)
    pbs.add(f"112.{SERVER}", state="E", substate=50)  # exiting: its trap may yet speak
    pbs.add(f"113.{SERVER}", exit_status=0, ended=ended)  # its end already recorded
    pbs.add(f"114.{SERVER}", exit_status=0, ended=ended, tag=watch_tag("other", str(pbs.root)))
    pbs.add(f"115.{SERVER}", exit_status=0, ended=ended, owner="someone")
    pbs.add(f"116.{SERVER}", exit_status=0, ended=ended, tag="")  # not rendered by ddmq-template
    Broker(pbs.root).publish_job_end(QUEUE, key_for(f"113.{SERVER}"), {"event": "job_end", "state": "COMPLETED",
                                                                       "job_id": f"113.{SERVER}"})

    done = pbs.reconcile("--scheduler", "pbs")
    assert (done.returncode, done.stderr) == (0, ""), done
    assert pbs.qstat_calls() == ["-x -t -f -F json"]
    assert sorted(done.stdout.split("\n")[:-1]) == sorted(
        f"{key_for(job_id)} {event['state']} ({event['scheduler_state']})" for job_id, event in pbs.ends().items()
        if event.get("source") == "scheduler")
    ends = {job_id: event for job_id, event in pbs.ends().items() if event.get("source") == "scheduler"}
    assert set(ends) == {f"{seq}.{SERVER}" for seq in ENDED} | {f"109[3].{SERVER}"}
    for seq, case in ENDED.items():
        event = ends[f"{seq}.{SERVER}"]
        assert (event["state"], event["status"], event["signal"]) == case["expect"], event
        assert (event["event"], event["scheduler"], event["cluster"], event["user"]) == ("job_end", "pbs", SERVER,
                                                                                          USER)
        assert event["scheduler_state"].startswith("F ") and event["end_time"] is not None
    subjob = ends[f"109[3].{SERVER}"]
    assert (subjob["state"], subjob["array_job_id"], subjob["array_task_id"]) == ("COMPLETED", f"109[].{SERVER}",
                                                                                   "3")
    assert Broker(pbs.root).job_end(QUEUE, key_for(f"109[3].{SERVER}")) is not None  # the key jobstate reads
    assert Broker(pbs.root).job_end(QUEUE, f"{SERVER}.109_3") is not None

    again = pbs.reconcile("--scheduler", "pbs")
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert len(pbs.qstat_calls()) == 2 and len(pbs.ends()) == len(ENDED) + 2


def test_one_qstat_call_for_any_number_of_jobs(pbs: Pbs) -> None:
    for seq in range(500, 700):
        pbs.add(f"{seq}.{SERVER}", substate=93, exit_status=1, ended=time.time() - 60)
    done = pbs.reconcile("--scheduler", "pbs")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 200, done
    assert len(pbs.qstat_calls()) == 1 and len(pbs.ends()) == 200


def test_grace_and_window_leave_jobs_alone(pbs: Pbs) -> None:
    """Just ended: its own trap may yet speak. Ended before --window: not looked at."""
    pbs.add(f"1.{SERVER}", exit_status=0, ended=time.time() - 5)
    pbs.add(f"2.{SERVER}", exit_status=0, ended=time.time() - 7200)
    done = pbs.reconcile("--scheduler", "pbs", "--grace", "60", "--window", "3600")
    assert (done.returncode, done.stdout) == (0, ""), done
    assert pbs.ends() == {}


def test_without_scheduler_option_pbs_is_found_by_its_qstat(pbs: Pbs, tmp_path: Path) -> None:
    pbs.add(f"7.{SERVER}", substate=91, ended=time.time() - 60)
    done = pbs.reconcile(path=str(pbs.bin))  # no squeue in PATH: only the stand-in qstat
    assert done.returncode == 0 and done.stdout.startswith(f"{SERVER}.7 CANCELLED"), done
    empty = tmp_path / "empty"
    empty.mkdir()
    done = pbs.reconcile(path=str(empty))
    assert done.returncode == 1 and done.stdout == "", done
    assert len(done.stderr.splitlines()) == 1 and "neither squeue (SLURM) nor qstat (PBS)" in done.stderr


@pytest.mark.parametrize("body, fragment", [
    ('echo "qstat: cannot connect to server pbs01 (errno=15010)" >&2; exit 1',
     "qstat failed: qstat: cannot connect to server pbs01 (errno=15010)"),
    ('echo "Job Id: 1.pbs01"; echo "    job_state = F"', "qstat -F json printed no JSON"),
    ('echo "[1, 2]"', "JSON without a Jobs object"),
    ('echo \'{"Jobs": [1]}\'', "JSON without a Jobs object"),
], ids=["refused", "not-json", "not-an-object", "jobs-not-an-object"])
def test_a_qstat_that_fails_or_prints_garbage_is_one_line_and_exit_1(pbs: Pbs, body: str, fragment: str) -> None:
    pbs.replay(body)
    done = pbs.reconcile("--scheduler", "pbs")
    assert (done.returncode, done.stdout) == (1, ""), done
    assert len(done.stderr.splitlines()) == 1 and fragment in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and pbs.ends() == {}


def test_a_listing_with_no_jobs_is_not_an_error(pbs: Pbs) -> None:
    """What qstat prints when the server has no job to show: no Jobs object at all."""
    pbs.replay('echo \'{"timestamp":1665476097, "pbs_version":"22.05.11", "pbs_server":"725ccdf1a5fb"}\'')
    done = pbs.reconcile("--scheduler", "pbs")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_output_beyond_the_limit_is_refused_before_it_is_read(pbs: Pbs, monkeypatch: pytest.MonkeyPatch) -> None:
    from ddmq_hpc import scheduler

    pbs.add(f"1.{SERVER}", exit_status=0, ended=time.time() - 60)
    monkeypatch.setenv("PATH", f"{pbs.bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(scheduler, "PBS_OUTPUT_LIMIT", 1 << 10)  # fault injection: the listing is ~3 KB
    with pytest.raises(scheduler.SchedulerError, match="bytes, more than the 1,024 ddmq reads"):
        scheduler.pbs_jobs(USER, 3600)


# ------------------------------------------------------------- the watch tag in the job script
def directives(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#PBS -v")]


def test_a_root_qsub_could_not_read_is_percent_encoded_and_decoded_by_the_reconciler(tmp_path: Path) -> None:
    """qsub ends a directive at white space and splits -v at commas: neither may reach the line."""
    root = tmp_path / "my root, shared"
    script = write_script(tmp_path / "job.pbs", "pbs", ["true"], root).read_text()
    [line] = directives(script)
    assert line == "#PBS -v DDMQ_WATCH=" + f"ddmq:{QUEUE}@{root}".replace(" ", "%20").replace(",", "%2C")
    subprocess.run(["bash", "-n", "-c", script], check=True)
    (tmp_path / "other").mkdir()
    pbs = Pbs(tmp_path / "other")  # the same replay, with this root's encoded tag as qsub passes it
    pbs.add(f"5.{SERVER}", exit_status=0, ended=time.time() - 60, tag=line.partition("=")[2])
    assert pbs.reconcile("--scheduler", "pbs").stdout == ""  # another root's tag: not this queue's job
    pbs.root = root
    Broker(root, create=True).create_queue(QUEUE)
    done = pbs.reconcile("--scheduler", "pbs")
    assert done.stdout.startswith(f"{SERVER}.5 COMPLETED"), done


def test_the_tag_joins_a_variable_list_given_as_a_directive(tmp_path: Path) -> None:
    """qsub keeps the last '#PBS -v' of a script only: a second line would drop the user's variables."""
    script = write_script(tmp_path / "job.pbs", "pbs", ["true"], tmp_path / "root",
                          extra_directives=["#PBS -v INPUT=/data/x,MODE=fast", "#PBS -l select=1:ncpus=2"]).read_text()
    assert directives(script) == [f"#PBS -v INPUT=/data/x,MODE=fast,DDMQ_WATCH=ddmq:{QUEUE}@{tmp_path / 'root'}"]
