"""Job scripts and workflow examples as a site really runs them (issue 11).

What a rendered job script keeps of the job (its stdin), which job names and
time limits it takes (those SLURM or PBS take), what it writes in (absolute
paths), whether the examples' READMEs say what the templates do, whether the
cron example fails loudly when it cannot submit, and what a completion event
says about where it came from. The same scripts on a real SLURM are at the end
of test_slurm.py.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ddmq import Broker
from ddmq.errors import UsageError
from ddmq_hpc import template
from ddmq_hpc.jobenv import completion_event
from tests.support.jobscripts import BIN, events, job_env, write_script

EXAMPLES = Path(__file__).resolve().parent.parent / "workflow_examples"
TEMPLATES = Path(template.__file__).parent / "templates"
README = Path(__file__).resolve().parent.parent / "README.md"
JOB_VARIABLES = {"slurm": {"SLURM_JOB_ID": "1"}, "pbs": {"PBS_JOBID": "1.pbs01"}}


def ddmq_template(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ddmq-template"), *args], capture_output=True, text=True, cwd=cwd)


def assignment(script: str, name: str) -> str:
    [line] = [line for line in script.splitlines() if line.startswith(f"{name}=")]
    return line.split("=", 1)[1].split("  #")[0]


# ------------------------------------------------------------- the job's stdin
@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_the_command_reads_the_jobs_stdin(tmp_path: Path, scheduler: str) -> None:
    """``#SBATCH --input=FILE`` (or a pipe into ``bash job.sh``) reaches the command, as under plain bash.

    bash gives a command started with ``&`` /dev/null as its stdin unless told otherwise.
    """
    script = write_script(tmp_path / "job.sh", scheduler, ["wc", "-c"], tmp_path / "root")
    env = job_env(tmp_path, {**JOB_VARIABLES[scheduler], "PBS_O_WORKDIR": str(tmp_path)})
    done = subprocess.run(["bash", str(script)], input="hello\n", env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "6", "")
    [event] = events(tmp_path / "root")
    assert (event["state"], event["status"]) == ("COMPLETED", 0)


# ------------------------------------------------- job names and time limits
@pytest.mark.parametrize("name, line", [
    ("align", "#SBATCH --job-name=align"),                  # as before: unquoted when it need not be
    ("my job", '#SBATCH --job-name="my job"'),
    ("it's \"odd\" #1 \\o/", '#SBATCH --job-name="it\'s \\"odd\\" #1 \\\\o/"'),
    ("", '#SBATCH --job-name=""'),
])
def test_any_job_name_sbatch_takes_is_written_so_sbatch_reads_it_back(name: str, line: str) -> None:
    """sbatch reads an ``#SBATCH`` line with its own tokenizer: quotes group, a backslash escapes
    the next character, an unquoted ``#`` starts a comment (checked against sbatch 22.05)."""
    done = ddmq_template("slurm", "--queue", "q", "--job-name", name, "--", "true")
    assert (done.returncode, done.stderr) == (0, "")
    assert line in done.stdout.splitlines()


@pytest.mark.parametrize("text", ["UNLIMITED", "unlimited", "INFINITE", "Infinite", "-1"])
def test_slurm_takes_an_unlimited_time(text: str) -> None:
    done = ddmq_template("slurm", "--queue", "q", "--time", text, "--", "true")
    assert (done.returncode, done.stderr) == (0, "")
    assert f"#SBATCH --time={text}" in done.stdout.splitlines()
    assert assignment(done.stdout, "ddmq_time_limit") == ""  # no limit to compare the run time with


@pytest.mark.parametrize("text, seconds", [("1:30.5", 91), ("90.4", 90), ("01:00:00.", 3600)])
def test_pbs_takes_fractions_of_a_second(text: str, seconds: int) -> None:
    """PBS Pro and Torque read walltime as [[hours:]minutes:]seconds[.fraction], rounded at .5."""
    assert template.limit_seconds("pbs", text) == seconds


@pytest.mark.parametrize("args, message, why", [
    # what the scheduler itself refuses (sbatch 22.05 says "Invalid --time specification")
    (["slurm", "--time", "1:2:3:4"], "--time '1:2:3:4': use minutes", "SLURM reads no other"),
    (["slurm", "--time", "-5"], "--time '-5': use minutes", "SLURM reads no other"),
    (["pbs", "--time", "UNLIMITED"], "--time 'UNLIMITED': use seconds", "PBS reads no other"),
    (["pbs", "--job-name", "my job"], "--job-name 'my job': must be one word", "ends a #PBS value at white space"),
    # what cannot be written into the script safely
    (["slurm", "--job-name", "a\nb"], "--job-name 'a\\nb'", "a line break cannot be written into an #SBATCH line"),
    (["slurm", "--output", "a\rb"], "--output 'a\\rb'", "a line break cannot be written into an #SBATCH line"),
    (["pbs", "--output", "it's"], "--output \"it's\"", "so they cannot be written in safely"),
])
def test_refusals_say_whether_the_scheduler_or_the_script_is_why(args: list[str], message: str, why: str) -> None:
    scheduler, *options = args
    done = ddmq_template(scheduler, "--queue", "q", *options, "--", "true")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"ddmq-template: {message}") and done.stderr.endswith(f"{why}\n"), done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_a_nul_is_refused_for_the_script_s_sake() -> None:
    """No command line can carry a NUL, but the Python API can."""
    with pytest.raises(UsageError, match="--job-name 'a\\\\x00b': a NUL cannot be written into an #SBATCH line"):
        template.render("slurm", ["true"], "q", root="/r", job_name="a\0b")


# --------------------------------------------------------- absolute paths
def test_notify_is_written_in_as_an_absolute_path(tmp_path: Path) -> None:
    """The job runs elsewhere (SLURM: the submit directory; PBS: the home directory)."""
    def notify_of(notify: str) -> str:
        done = ddmq_template("slurm", "--queue", "q", "--notify", notify, "--", "true", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return assignment(done.stdout, "ddmq_notify")

    assert notify_of("./bin/ddmq-notify") == str(tmp_path / "bin" / "ddmq-notify")
    assert notify_of("../venv/bin/ddmq-notify") == str(tmp_path.parent / "venv" / "bin" / "ddmq-notify")
    assert notify_of("/opt/ddmq/bin/ddmq-notify") == "/opt/ddmq/bin/ddmq-notify"
    assert notify_of("ddmq-notify") == "ddmq-notify"  # a bare name is looked up in the job's PATH, as bash would


# ------------------------------------------------ the docs say what the code does
def template_number(name: str, variable: str) -> int:
    [value] = re.findall(rf"^{variable}=(\d+)", (TEMPLATES / name).read_text(), re.MULTILINE)
    return int(value)


def test_the_slurm_example_readme_says_what_the_template_does() -> None:
    text = " ".join((EXAMPLES / "slurm" / "README.md").read_text().split())
    script = (TEMPLATES / "slurm.sh").read_text()
    [squeue_bound] = re.findall(r"ddmq_bounded (\d+) squeue", script)
    assert f"If squeue does not answer within {squeue_bound} s" in text
    assert f"within {template_number('common.sh', 'ddmq_slack')} s of that limit" in text
    assert f"ends within {template_number('slurm.sh', 'ddmq_term_budget')} s" in text
    assert f"up to {squeue_bound} s for squeue, {template_number('slurm.sh', 'ddmq_grace')} s for the command" in text


def test_the_pbs_example_readme_says_what_the_template_does() -> None:
    text = " ".join((EXAMPLES / "pbs" / "README.md").read_text().split())
    assert f"publishes within {template_number('pbs.sh', 'ddmq_term_budget')} s of the TERM" in text
    assert f"less {template_number('common.sh', 'ddmq_slack')} s" in text


# ------------------------------------------------------------ the cron example
def test_the_cron_example_fails_loudly_when_it_cannot_submit(b: Broker, root: Path, tmp_path: Path) -> None:
    """Under cron's PATH, without sbatch: the run exits non-zero, says why in a line (cron mails
    it), and the request stays queued for a run that can submit it."""
    b.create_queue("submit-requests", requeue_limit=3)
    request = b.publish("submit-requests", {"command": "python train.py"})
    no_sbatch = tmp_path / "bin"  # python3 for the handler, as in /usr/bin, but no sbatch
    no_sbatch.mkdir()
    (no_sbatch / "python3").symlink_to(shutil.which("python3", path="/usr/bin:/bin") or sys.executable)
    env = {"HOME": str(tmp_path), "PATH": str(no_sbatch), "DDMQ_ROOT": str(root)}
    done = subprocess.run([str(BIN / "ddmq-dispatch"), "submit-requests", "--handler",
                           str(EXAMPLES / "cron" / "submit_handler.py")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and done.stdout == ""
    [line] = done.stderr.splitlines()
    assert request.id in line and "requeued" in line
    assert "submit_handler: sbatch not found in PATH" in line
    assert b.counts("submit-requests") == {"ready": 1, "work": 0, "dead": 0}


def test_the_submit_handler_dry_runs_only_when_asked(tmp_path: Path) -> None:
    handler = str(EXAMPLES / "cron" / "submit_handler.py")
    request = json.dumps({"command": "python train.py"})
    env = {"PATH": str(tmp_path / "none"), "DDMQ_MESSAGE_ID": "0" * 32}
    nowhere = subprocess.run([sys.executable, handler], input=request, env=env, capture_output=True, text=True,
                             timeout=30)
    assert nowhere.returncode == 127 and nowhere.stdout == ""
    assert nowhere.stderr.startswith("submit_handler: sbatch not found in PATH") and nowhere.stderr.count("\n") == 1
    dry = subprocess.run([sys.executable, handler], input=request, env={**env, "DRY_RUN": "1"},
                         capture_output=True, text=True, timeout=30)
    assert (dry.returncode, dry.stderr) == (0, "")
    assert dry.stdout.startswith("would run: sbatch --parsable ")


def test_the_crontab_sets_path() -> None:
    """cron's PATH is /usr/bin:/bin: sites install SLURM elsewhere (/opt/slurm/bin, /usr/local/bin)."""
    lines = (EXAMPLES / "cron" / "crontab.example").read_text().splitlines()
    [path] = [line.split("=", 1)[1] for line in lines if line.startswith("PATH=")]
    assert "/usr/local/bin" in path.split(":") and "$" not in path  # cron does not expand variables


# ------------------------------------------------------------------ events
@pytest.mark.parametrize("variables, cluster", [
    ({"SLURM_JOB_ID": "7", "SLURM_CLUSTER_NAME": "hpc2"}, "hpc2"),
    ({"PBS_JOBID": "123.pbs01"}, "pbs01"),                                   # PBS Pro, OpenPBS
    ({"PBS_JOBID": "88[2].server.example.org"}, "server.example.org"),      # an array subjob
    ({"PBS_JOBID": "1399.login01", "PBS_O_SERVER": "login01"}, "login01"),  # Torque
    ({"PBS_JOBID": "1399.login01", "PBS_SERVER": "elsewhere"}, "login01"),  # the job id says which
    ({"PBS_JOBID": "1399", "PBS_SERVER": "pbs02"}, "pbs02"),
    ({"PBS_JOBID": "1399", "PBS_O_SERVER": "pbs03"}, "pbs03"),
])
def test_events_carry_the_cluster_name(variables: dict[str, str], cluster: str) -> None:
    """Two clusters can share a root, and job ids repeat from one cluster to the next."""
    assert completion_event(0, env=variables)["cluster"] == cluster


@pytest.mark.parametrize("variables", [{}, {"SLURM_JOB_ID": "7"}, {"PBS_JOBID": "1399"}])
def test_no_cluster_name_when_none_is_known(variables: dict[str, str]) -> None:
    assert "cluster" not in completion_event(0, env=variables)


def test_the_rendered_script_publishes_the_cluster_name(tmp_path: Path) -> None:
    script = write_script(tmp_path / "job.sh", "slurm", ["true"], tmp_path / "root")
    env = job_env(tmp_path, {"SLURM_JOB_ID": "5", "SLURM_CLUSTER_NAME": "hpc2"})
    subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, check=True, timeout=30)
    [event] = events(tmp_path / "root")
    assert (event["job_id"], event["cluster"]) == ("5", "hpc2")


@pytest.mark.parametrize("field, variables", [
    ("job_id=x", {"SLURM_JOB_ID": "5"}),
    ("cluster=x", {"SLURM_JOB_ID": "5", "SLURM_CLUSTER_NAME": "hpc2"}),
    ("state=OK", {}),                      # built in everywhere, even outside a job
    ("host=elsewhere", {"PBS_JOBID": "1.pbs01"}),
])
def test_a_field_cannot_replace_one_of_the_event_s_own(tmp_path: Path, field: str,
                                                       variables: dict[str, str]) -> None:
    root = tmp_path / "root"
    env = job_env(tmp_path, {**variables, "DDMQ_ROOT": str(root)})
    done = subprocess.run([str(BIN / "ddmq-notify"), "q", "--field", field], env=env, capture_output=True,
                          text=True, timeout=30)
    key = field.split("=")[0]
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith(f"ddmq-notify: field {key!r} is one of the completion event's own (event, ")
    assert len(done.stderr.splitlines()) == 1
    assert not (root / "q").exists()  # nothing was published


def test_a_field_the_event_does_not_have_is_added(tmp_path: Path) -> None:
    """Outside a job there is no job_id: a field may supply one (tests/test_shared_storage.py does)."""
    root = tmp_path / "root"
    env = job_env(tmp_path, {"DDMQ_ROOT": str(root)})
    subprocess.run([str(BIN / "ddmq-notify"), "q", "--field", "job_id=7", "--field", "sample=S1"], env=env,
                   check=True, timeout=30)
    [body] = [m.message for m in Broker(root).peek("q")]
    assert (body["job_id"], body["sample"], body["scheduler"]) == ("7", "S1", None)
