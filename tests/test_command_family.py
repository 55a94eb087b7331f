"""The five commands are one family: the same options, exit codes, times and queue creation rule.

``ddmq``, ``ddmq-notify``, ``ddmq-wait``, ``ddmq-template`` and
``ddmq-dispatch`` are run here as installed scripts, each the way a user or
a batch job runs it. What they share is said in README ("One family") and
``docs/cli.md``, which this file also keeps current.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from ddmq import Broker
from ddmq_hpc import dispatch, notify, options, template, wait
from tests.support import clidoc

BIN = Path(sys.executable).parent
COMMANDS = clidoc.COMMANDS
HELPERS = {"ddmq-notify": notify.command, "ddmq-wait": wait.command, "ddmq-template": template.command,
           "ddmq-dispatch": dispatch.command}
# The one table of exit codes (ddmq.console): every code a command may list, whatever it means to it.
KNOWN_CODES = {0, 1, 2, 3, 4, 5, 124, 130, 141}
ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def run(*argv: object, env: dict[str, str] | None = None, stdin: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command, *args = (str(a) for a in argv)
    return subprocess.run([str(BIN / command), *args], env=env, input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)


def environ(root: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DDMQ_", "SLURM_", "PBS_"))}
    if root is not None:
        env["DDMQ_ROOT"] = str(root)
    env.update(extra)
    return env


def one_line(proc: subprocess.CompletedProcess[str], code: int, prog: str) -> str:
    """The single stderr line of a failed command, checked to be one line of ``prog``'s."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(f"{prog}: "), proc.stderr
    return proc.stderr


# ------------------------------------------------------------ the options
@pytest.mark.parametrize("command", COMMANDS)
def test_version_and_help_short_and_long(command: str) -> None:
    versions = {run(command, flag).stdout for flag in ("--version", "-V")}
    assert len(versions) == 1 and re.fullmatch(rf"{command}, version \S+\n", versions.pop())
    helps = {run(command, flag).stdout for flag in ("--help", "-h")}
    assert len(helps) == 1 and helps.pop().startswith(f"Usage: {command} ")


@pytest.mark.parametrize("command", COMMANDS)
def test_exit_codes_are_one_table(command: str) -> None:
    """Every command's help ends with an "Exit codes:" table laid out as ddmq's, of codes from one set."""
    text = run(command, "--help").stdout
    table = text[text.index("Exit codes:\n"):].splitlines()[1:]
    rows = [re.fullmatch(r"    (\d+) +\S.*", line) for line in table if not line.startswith("         ")]
    assert rows and all(rows), table
    codes = [int(row.group(1)) for row in rows if row]
    assert codes == sorted(codes) and codes[:3] == [0, 1, 2], codes
    assert set(codes) <= KNOWN_CODES, codes


@pytest.mark.parametrize("command", ["ddmq-notify", "ddmq-wait", "ddmq-dispatch"])
def test_root_from_short_option_and_from_ddmq_root(command: str, tmp_path: Path) -> None:
    """-r and $DDMQ_ROOT name the same root for every helper that uses one."""
    for root in (tmp_path / "by-option", tmp_path / "by-env"):
        Broker(root, create=True).publish("q", "hello", create=True)
    args = {"ddmq-notify": ["q", "event"], "ddmq-wait": ["q", "--peek", "--timeout", "5"],
            "ddmq-dispatch": ["q", "--handler", "true"]}[command]
    assert run(command, *args, "-r", tmp_path / "by-option", env=environ()).returncode == 0
    assert run(command, *args, env=environ(tmp_path / "by-env")).returncode == 0
    for root in (tmp_path / "by-option", tmp_path / "by-env"):
        ready = len(Broker(root).peek("q", n=10))
        assert ready == {"ddmq-notify": 2, "ddmq-wait": 1, "ddmq-dispatch": 0}[command], (root, ready)


def test_template_writes_the_root_from_short_option_or_ddmq_root(tmp_path: Path) -> None:
    by_option = run("ddmq-template", "slurm", "--queue", "q", "-r", tmp_path / "a", "--", "true",
                    env=environ(tmp_path / "b")).stdout
    by_env = run("ddmq-template", "slurm", "--queue", "q", "--", "true", env=environ(tmp_path / "b")).stdout
    assert str(tmp_path / "a") in by_option and str(tmp_path / "b") not in by_option
    assert str(tmp_path / "b") in by_env


def _numeric_options() -> list[tuple[str, str]]:
    return [(prog, param.opts[-1]) for prog, command in HELPERS.items() for param in command.params
            if isinstance(param, click.Option) and isinstance(param.type, options.Number)]


@pytest.mark.parametrize("command, option", _numeric_options())
def test_a_negative_number_is_a_usage_error(command: str, option: str, tmp_path: Path) -> None:
    """As timeout(1) says: --timeout -1 is invalid, not "time out at once" (nor are -1 s, -1 messages).

    Only exit statuses (ddmq-notify --status) may be negative; for them the
    bound is a C int's.
    """
    low = "-3000000000" if option == "--status" else "-1"
    args = {"ddmq-notify": ["q", "x"], "ddmq-wait": ["q"], "ddmq-dispatch": ["q", "--handler", "true"]}[command]
    proc = run(command, *args, f"{option}={low}", env=environ(tmp_path / "root"))
    assert option in one_line(proc, 2, command)
    assert not (tmp_path / "root").exists(), "a usage error must do nothing"


# ------------------------------------------------------------ ddmq-wait's output
def test_wait_formats_are_plain_and_json_as_for_ddmq_and_body_still_works(tmp_path: Path) -> None:
    b = Broker(tmp_path, create=True)
    b.create_queue("q")
    text = run("ddmq-wait", "--help").stdout
    assert "[plain|json]" in text and "body" not in text.split("--format", 1)[1].split("\n  -", 1)[0]
    for fmt in ("plain", "body"):  # body: plain's old name, in job scripts written before 1.0
        b.publish("q", {"job_id": 1})
        assert run("ddmq-wait", "q", "-r", tmp_path, "-f", fmt, "--timeout", "5").stdout == '{"job_id": 1}\n'
    b.publish("q", "line")
    shown = json.loads(run("ddmq-wait", "q", "-r", tmp_path, "--format", "json", "--timeout", "5").stdout)
    assert shown["message"] == "line"
    proc = run("ddmq-wait", "q", "-r", tmp_path, "-f", "yaml")
    assert "--format" in one_line(proc, 2, "ddmq-wait")


def test_wait_null_ends_each_message_with_nul(tmp_path: Path) -> None:
    """A body may hold newlines: -0 makes several messages unambiguous (for xargs -0)."""
    b = Broker(tmp_path, create=True)
    b.publish("q", "two\nlines", create=True, priority=1)
    b.publish("q", "one", priority=2)
    proc = run("ddmq-wait", "q", "-r", tmp_path, "--count", "2", "-0", "--timeout", "5")
    assert proc.returncode == 0 and proc.stdout == "two\nlines\0one\0"
    b.publish("q", "again")
    proc = run("ddmq-wait", "q", "-r", tmp_path, "--null", "-f", "json", "--timeout", "5")
    assert proc.stdout.endswith("}\0") and json.loads(proc.stdout[:-1])["message"] == "again"


# ------------------------------------------------------------ times
def test_times_people_read_are_iso_8601_utc(tmp_path: Path) -> None:
    """In a time zone far from UTC, the job event, the dispatch reply and its log line all say UTC."""
    env = environ(tmp_path / "root", TZ="Asia/Kolkata")
    assert run("ddmq-notify", "events", env=env).returncode == 0
    b = Broker(tmp_path / "root")
    (event,) = [m.message for m in b.consume("events", n=5)]
    b.create_queue("requests")
    b.create_queue("replies")
    b.publish("requests", "work")
    before = time.time()
    done = run("ddmq-dispatch", "requests", "--handler", "true", "--reply-queue", "replies",
               "--log-file", tmp_path / "log", env=env)
    assert done.returncode == 0, done.stderr
    (reply,) = [m.message for m in b.consume("replies", n=5)]
    stamp = (tmp_path / "log").read_text().split()[0]
    utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before))
    for when in (event["time"], reply["time"], stamp):
        assert re.fullmatch(ISO_UTC, when) and utc[:13] <= when, (when, utc)
    assert isinstance(reply["handler_seconds"], float) and "seconds" not in reply


# ------------------------------------------------------------ creating queues
def test_notify_creates_a_missing_queue_and_says_so_once(tmp_path: Path) -> None:
    """A job's end must not be lost to a queue nobody made yet; a mistyped name shows in the job's stderr."""
    env = environ(tmp_path / "root")
    first = run("ddmq-notify", "done_q", "first", env=env)
    assert first.returncode == 0 and first.stderr == f"ddmq-notify: created queue 'done_q' in {tmp_path / 'root'}\n"
    second = run("ddmq-notify", "done_q", "second", env=env)
    assert second.returncode == 0 and second.stderr == ""
    assert [m.message for m in Broker(tmp_path / "root").peek("done_q", n=5)] == ["first", "second"]


def test_wait_waits_for_a_missing_queue_says_so_once_and_does_not_create_it(tmp_path: Path) -> None:
    """The waiter of a workflow often starts before any job made the queue: it waits, and says it does."""
    root = tmp_path / "root"
    env = environ(root)
    waiter = subprocess.Popen([str(BIN / "ddmq-wait"), "done_q", "--interval", "0.05", "--max-interval", "0.1",
                               "--timeout", "60"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        time.sleep(1.5)  # many polls
        assert waiter.poll() is None and not root.exists(), "the waiter must wait, not create"
        assert run("ddmq-notify", "done_q", "the end", env=env).returncode == 0
        out, err = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
        waiter.wait()
    assert waiter.returncode == 0 and out == "the end\n"
    assert err == f"ddmq-wait: ddmq root {root} does not exist (yet): waiting for it\n"


def test_wait_on_a_mistyped_queue_says_so_and_times_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("done_q")
    proc = run("ddmq-wait", "dnoe_q", "--timeout", "0.5", "--interval", "0.05", env=environ(root))
    assert proc.returncode == 124 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"ddmq-wait: queue 'dnoe_q' does not exist (yet) in {root}: waiting for it",
                                        f"ddmq-wait: timed out after 0.5 s: queue 'dnoe_q' does not exist in {root}"]
    assert Broker(root).list_queues() == ["done_q"]


def test_wait_create_makes_the_queue_and_no_create_fails_at_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    one_line(run("ddmq-wait", "q", "--no-create", "--timeout", "30", env=environ(root)), 4, "ddmq-wait")
    proc = run("ddmq-wait", "q", "--create", "--timeout", "0", env=environ(root))
    assert proc.returncode == 124 and "0 of 1" in proc.stderr
    assert Broker(root).list_queues() == ["q"]


@pytest.mark.parametrize("command, args", [
    ("ddmq", ["publish", "nope", "x"]),
    ("ddmq-dispatch", ["nope", "--handler", "true"]),
    ("ddmq-notify", ["nope", "x", "--no-create"]),
    ("ddmq-wait", ["nope", "--no-create"]),
])
def test_a_missing_queue_is_exit_4_wherever_it_is_refused(command: str, args: list[str], tmp_path: Path) -> None:
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("other")
    assert "'nope'" in one_line(run(command, *args, env=environ(root)), 4, command)
    assert Broker(root).list_queues() == ["other"]


# ------------------------------------------------------------ output that cannot be written
def test_template_on_a_full_disk_is_one_line_and_exit_1(tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        proc = subprocess.run([str(BIN / "ddmq-template"), "slurm", "--queue", "q", "--", "true"], stdout=full,
                              stderr=subprocess.PIPE, text=True, env=environ(tmp_path), check=False)
    assert proc.returncode == 1 and proc.stderr == "ddmq-template: cannot write the script: no space left on device\n"


# ------------------------------------------------------------ completion and the reference
@pytest.mark.parametrize("command", COMMANDS)
def test_shell_completion(command: str) -> None:
    """The completion script documented in docs/cli.md is produced, and it completes the options."""
    variable = clidoc.completion_variable(command)
    script = run(command, env=environ(**{variable: "bash_source"}))
    function = "_" + command.replace("-", "_") + "_completion"
    assert script.returncode == 0 and f"complete -o nosort -F {function} {command}" in script.stdout
    words = run(command, env=environ(**{variable: "bash_complete", "COMP_WORDS": f"{command} --vers",
                                        "COMP_CWORD": "1"}))
    assert words.stdout.split() == ["plain,--version"]
    assert f"{variable}=bash_source {command}" in clidoc.DOC.read_text()


def test_cli_reference_is_what_the_commands_say() -> None:
    """docs/cli.md cannot drift: regenerate it with `python -m tests.support.clidoc`."""
    expected = clidoc.render()
    assert clidoc.DOC.read_text(encoding="utf-8") == expected, \
        f"docs/cli.md is out of date: run `{clidoc.REGENERATE}`"
    subs = clidoc.subcommands(clidoc.help_text("ddmq"))
    assert {"publish", "consume", "doctor"} <= set(subs)
    headings = re.findall(r"^#+ (ddmq.*)$", expected, re.M)
    assert headings == ["ddmq", *(f"ddmq {s}" for s in subs), *COMMANDS[1:]]
