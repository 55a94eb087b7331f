"""The installed ``ddmq`` script, end to end, for ``publish`` and ``consume``: how each command line ends.

Each case runs the script in a fresh directory and checks its exit code, that
a failure is one line on stderr (``ddmq: ...``, or ``ddmq: error: ...`` for a
command line click refuses) and never a traceback, and what ended up in the
queues. (These cases once also compared a click-free fast path with click;
since issue 12 there is one command line, click's.)
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ddmq import Broker
from tests.support.processes import wait_blocked_on_pipe

DDMQ_SCRIPT = Path(sys.executable).parent / "ddmq"
HEX32 = re.compile(r"[0-9a-f]{32}")
VARYING = {"id", "published", "pid"}  # message fields that differ between two publishes
SLOW = {"yaml", "_yaml", "pathlib", "random", "dataclasses"}


def case(*argv: str, code: int = 0, setup: str = "queue", input: str | None = None,
         env: dict[str, str] | None = None, id: str):
    """``{root}`` in ``argv`` and ``env`` is the root's path; ``setup`` says what is there before."""
    return pytest.param(list(argv), code, setup, input, env or {}, id=id)


R = "{root}"
CASES = [
    case("--root", R, "publish", "q", "hello", id="root-before"),
    case("publish", "--root", R, "q", "hello", id="root-after"),
    case("-r", R, "-f", "json", "publish", "q", "hello", id="short-options-json"),
    case("publish", "q", "hello", "-r", R, "--format", "json", id="options-after-arguments"),
    case(f"--root={R}", "publish", "--format=json", "q", "a", "b", "c", id="equals-several-messages"),
    case("-f", "json", "-r", R + "-other", "publish", "-f", "plain", "--root", R, "q", "x",
         id="options-after-subcommand-win"),
    case("-r", R, "publish", "--json", "q", '{"a": [1, 2.5], "b": null}', '"text"', "3", "[]", id="json-bodies"),
    case("-r", R, "publish", "--json", "q", "{bad", code=2, id="bad-json"),
    case("-r", R, "publish", "q", "x", "-H", "a=1", "--header", "b=", "--header=c=d=e", id="headers"),
    case("-r", R, "publish", "q", "x", "-H", "novalue", code=2, id="bad-header"),
    case("-r", R, "publish", "q", "x", "-p", "5", "--message-timeout", "60", "--no-requeue", "--requeue-prio", "3",
         "--requeue-limit", "2", "--no-durable", id="settings"),
    case("-r", R, "publish", "q", "x", "--priority=7", "--message-timeout=1.5", "--requeue", "--durable",
         "--requeue-prio=1", "--requeue-limit=0", id="settings-equals"),
    case("-r", R, "publish", "q", "x", "-p", "-5", code=2, id="priority-out-of-range"),
    case("-r", R, "publish", "q", "x", "--message-timeout", "nan", code=2, id="timeout-nan"),
    case("-r", R, "publish", "q", "x", setup="settings", id="queue-settings-apply"),
    case("-r", R, "publish", "-c", "new", "x", id="create-queue"),
    case("-r", R, "publish", "--create", "new", "x", setup="none", id="create-root-and-queue"),
    case("-r", R, "publish", "missing", "x", code=4, id="missing-queue"),
    case("-r", R, "publish", "-c", "a/b", "x", code=2, setup="none", id="bad-name-creates-nothing"),
    case("-r", R + "/sub", "publish", "q", "x", code=4, setup="none", id="missing-root"),
    case("-r", R, "publish", "q", "héllo wörld ✓ 日本", id="unicode"),
    case("-r", R, "-f", "json", "publish", "--json", "q", '"日本"', id="unicode-json"),
    case("-r", R, "publish", "q", input="from stdin\n", id="stdin"),
    case("-r", R, "publish", "q", "-", "x", "-", input="piped\n\n", id="stdin-dashes"),
    case("-r", R, "-f", "yaml", "publish", "q", "x", id="yaml"),
    case("publish", "q", "x", env={"DDMQ_ROOT": R}, id="root-from-environment"),
    case("publish", "-c", "q", "x", setup="none", id="default-root"),
    case("-r", "", "publish", "-c", "q", "x", setup="none", id="empty-root-is-default"),
    case("-r", R + "/\x1b[31mred", "publish", "q", "x", code=4, setup="none", id="escape-sequence-in-error"),
    case("-r", R, "publish", "é", "x", code=2, env={"PYTHONIOENCODING": "ascii"}, id="non-ascii-on-ascii-stderr"),
    case("-r", R + "/dé", "publish", "q", "x", code=4, setup="none", env={"PYTHONIOENCODING": "ascii"},
         id="non-ascii-root-on-ascii-stderr"),
    # consume
    case("-r", R, "consume", "q", setup="messages", id="consume"),
    case("consume", "q", "-n", "5", "--root", R, setup="messages", id="consume-n-after"),
    case("-r", R, "-f", "json", "consume", "-n", "2", "q", setup="messages", id="consume-json"),
    case("-r", R, "consume", "--format=yaml", "q", "--lease", "30", setup="messages", id="consume-yaml-lease"),
    case("-r", R, "consume", "q", "--no-ack", "-f", "json", setup="messages", id="consume-no-ack"),
    case("-r", R, "consume", "q", "--lease", "nan", code=2, setup="messages", id="consume-lease-nan"),
    case("-r", R, "consume", "q", code=3, id="consume-empty"),
    case("-r", R, "-f", "json", "consume", "q", code=3, id="consume-empty-json"),
    case("-r", R, "consume", "missing", code=4, id="consume-missing-queue"),
    case("-r", R, "consume", "../q", code=2, id="consume-bad-name"),
    case("consume", "q", env={"DDMQ_ROOT": R}, setup="messages", id="consume-root-from-environment"),
    # refused or answered by click
    case("-r", R, "consume", "q", "-n", "0", code=2, setup="messages", id="consume-n-0"),
    case("-r", R, "consume", "q", "-n", "two", code=2, setup="messages", id="consume-n-not-int"),
    case("-r", R, "consume", "q", "extra", code=2, setup="messages", id="consume-extra-argument"),
    case("-r", R, "consume", code=2, id="consume-missing-queue-argument"),
    case("-r", R, "consume", "q", "--no-ack=1", code=2, id="consume-flag-with-value"),
    case("-r", R, "consume", "--help", id="consume-help"),
    case("--help", id="help"),
    case("-r", R, "publish", "--help", id="publish-help"),
    case("--version", id="version"),
    case("-r", R, "view", id="other-subcommand"),
    case("-r", R, "publish", "q", "x", "--bogus", code=2, id="unknown-option"),
    case("-r", R, "publish", "q", "x", "-p", "abc", code=2, id="bad-int"),
    case("-r", R, "publish", "q", "x", "--message-timeout", "soon", code=2, id="bad-float"),
    case("-r", R, "publish", "q", "x", "-p", code=2, id="missing-value"),
    case("-r", R, "publish", code=2, id="missing-queue-argument"),
    case("-r", R, "-f", "xml", "publish", "q", "x", code=2, id="bad-format"),
    case("-r", R, "publish", "q", "x", "--json=1", code=2, id="flag-with-value"),
    case("-r", R, "publish", "q", "x", "-cp", "5", id="bundled-short-options"),
    case("-r", R, "publish", "q", "x", "-p5", id="attached-short-value"),
    case("-r", R, "publish", "q", "x", "-p", "1", "-p", "2", id="repeated-option"),
    case("-r", R, "publish", "--", "q", "-x", id="double-dash"),
    case("-r", R, "publish", "q", "x", code=2, setup="file", id="root-is-a-file"),
    case("publish", "q", "x", env={"_DDMQ_COMPLETE": "bash_source"}, id="shell-completion"),
]


def prepare(work: Path, setup: str) -> Path:
    """A fresh ``work`` directory holding the root (and the home) the case starts from."""
    shutil.rmtree(work, ignore_errors=True)
    (work / "home").mkdir(parents=True)
    root = work / "root"
    if setup == "queue":
        Broker(root, create=True).create_queue("q")
    elif setup == "settings":
        Broker(root, create=True).create_queue("q", priority=5, requeue=False, durable=False, requeue_limit=3)
    elif setup == "messages":
        b = Broker(root, create=True)
        for body, priority in (("first", 1), ({"b": [1, None], "a": "é"}, 1), ("日本 ✓", 5), ("\x1b[1mlast", 9)):
            b.publish("q", body, priority=priority, create=True, headers={"k": "v"})
    elif setup == "file":
        root.write_text("not a directory")
    return root


def queues(root: Path) -> object:
    """The messages in each queue of ``root``, less the fields that differ between two publishes."""
    if not root.is_dir():
        return root.read_text() if root.exists() else None
    b = Broker(root, create=False)
    return {q: [{k: v for k, v in m.to_dict().items() if k not in VARYING} for m in b.peek(q, n=100)]
            for q in b.list_queues()}


def run(work: Path, argv: list[str], input: str | None = None, env: dict[str, str] | None = None,
        python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    root = str(work / "root")
    full_env = {**os.environ, "HOME": str(work / "home")}
    full_env.update({k: v.replace(R, root) for k, v in (env or {}).items()})
    return subprocess.run([sys.executable, *python_flags, str(DDMQ_SCRIPT), *(a.replace(R, root) for a in argv)],
                          input=input, env=full_env, capture_output=True, text=True, errors="surrogateescape",
                          cwd=work, timeout=60)


def _imported_modules(importtime_stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.fixture
def script() -> Path:
    assert DDMQ_SCRIPT.is_file(), f"the ddmq command is not installed at {DDMQ_SCRIPT}: run `pip install -e .`"
    return DDMQ_SCRIPT


@pytest.mark.parametrize("argv, code, setup, input, env", CASES)
def test_how_a_command_line_ends(script, tmp_path, argv, code, setup, input, env):
    """The exit code; a failure is one line and changes nothing; a publish prints the ids it published."""
    work = tmp_path / "work"
    prepare(work, setup)
    before = {"root": queues(work / "root"), "default root": queues(work / "home" / ".ddmq")}
    proc = run(work, argv, input, env)
    after = {"root": queues(work / "root"), "default root": queues(work / "home" / ".ddmq")}
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    if code in (0, 3):
        assert proc.stderr == ""
    else:
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("ddmq: "), proc.stderr
        if code == 2 and "error: " in proc.stderr:  # refused by click: says what, names no usage or hint
            assert proc.stderr.startswith("ddmq: error: ") and "Usage:" not in proc.stderr
        assert after == before, "a command that failed changed the queues"
    if code == 0 and "publish" in argv and not {"--help", "--version"} & set(argv) and not env.get("_DDMQ_COMPLETE"):
        ids = set(HEX32.findall(proc.stdout))
        published = {m.id for where in ("root", "home/.ddmq") if (work / where).is_dir()
                     for q in Broker(work / where).list_queues() for m in Broker(work / where).peek(q, n=100)}
        assert ids and ids <= published, (proc.stdout, published)


@pytest.mark.parametrize("closed", ["stdout", "stderr"])
def test_reader_gone(script, tmp_path, closed):
    """``ddmq publish ... | true``: exit 141 (128 + SIGPIPE), nothing on stderr, nothing published."""
    root = prepare(tmp_path / "work", "queue")
    queue = "q" if closed == "stdout" else "missing"  # a missing queue is an error on stderr
    read, write = os.pipe()
    os.close(read)
    try:
        streams = {closed: write, "stdout" if closed == "stderr" else "stderr": subprocess.PIPE}
        proc = subprocess.run([str(script), "--root", str(root), "publish", queue, "x"], **streams, timeout=60)
    finally:
        os.close(write)
    assert proc.returncode == 141
    assert (proc.stdout or b"") + (proc.stderr or b"") == b""
    assert queues(root) == {"q": []}  # the ids could not be printed, so nothing was published


def test_ctrl_c(script, tmp_path):
    """Interrupted while reading the message from stdin: one line, exit 130, nothing published."""
    root = prepare(tmp_path / "work", "queue")
    proc = subprocess.Popen([str(script), "--root", str(root), "publish", "q"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_blocked_on_pipe(proc, "reading stdin", timeout=20)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert (proc.returncode, stdout, stderr, queues(root)) == (130, b"", b"ddmq: interrupted\n", {"q": []})


ECHO = """
import json, os, sys
which, err = sys.argv[1], sys.argv[2] == "stderr"
if which == "click":
    from functools import partial

    import click

    echo = partial(click.echo, color=True)  # ops.echo never strips escape sequences
else:
    from ddmq.console import echo
for text in json.loads(sys.argv[3]):
    for nl in (True, False):
        try:
            echo(text, err=err, nl=nl)
        except Exception as exc:
            os.write(2 if err else 1, f"<{type(exc).__name__}>".encode())
"""
TEXTS = ["plain", "héllo ✓ 日本", "\x1b[31mred\x1b[0m \x1b[1;2mbold\x1b]0;title\x07", "lone \udcff", ""]


def _echo_bytes(which: str, stream: str, env: dict[str, str], **streams) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ECHO, which, stream, json.dumps(TEXTS)], env={**os.environ, **env},
                          timeout=30, **streams)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
@pytest.mark.parametrize("env", [{}, {"PYTHONIOENCODING": "ascii"}, {"PYTHONIOENCODING": "latin-1"},
                                 {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}],
                         ids=["default", "ascii", "latin-1", "C-locale"])
def test_echo_writes_the_bytes_click_echo_does(env, stream):
    """console.echo replaces click.echo for every command: UTF-8 on an ASCII stream and unencodable
    characters handled the same, escape sequences kept (as click.echo(color=True) does)."""
    click_run, ops_run = (_echo_bytes(which, stream, env, capture_output=True) for which in ("click", "ops"))
    assert (ops_run.returncode, ops_run.stdout, ops_run.stderr) == (click_run.returncode, click_run.stdout,
                                                                    click_run.stderr)
    assert click_run.returncode == 0 and b"Traceback" not in click_run.stderr


def test_consumed_bodies_keep_escape_sequences_through_a_pipe(tmp_path):
    """click.echo strips them from output that is not a terminal; a body is data and must not change."""
    body = "\x1b[31mred\x1b[0m and \x1b]0;title\x07"
    root = tmp_path / "root"
    Broker(root, create=True).publish("q", body, create=True)
    proc = subprocess.run([str(DDMQ_SCRIPT), "--root", str(root), "consume", "q"], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (body + "\n").encode()


@pytest.mark.parametrize("command", ["publish", "consume"])
@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_publish_and_consume_import_neither_yaml_nor_slow_standard_modules(tmp_path, fmt, command):
    """Only click and the core: run without site, so an editable install's import hook does not count."""
    import click

    root = tmp_path / "root"
    Broker(root, create=True).publish("q", "waiting", create=True)
    argv = ["ddmq", "--root", str(root), "-f", fmt, command, "q", *(["lean"] if command == "publish" else [])]
    path = [str(Path(__file__).resolve().parent.parent), str(Path(click.__file__).parent.parent)]
    code = f"import sys; sys.path[:0] = {path!r}; sys.argv = {argv!r}; from ddmq.cli import main; main()"
    proc = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", code],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = _imported_modules(proc.stderr)
    assert {"ddmq.cli", "ddmq.ops", "ddmq.broker"} <= modules, proc.stderr[-2000:]
    assert sorted(m for m in modules if m.split(".")[0] in SLOW) == []
    left = ["waiting", "lean"] if command == "publish" else []
    assert [m.message for m in Broker(root).peek("q", n=5)] == left


def test_help_imports_no_operations():
    """A subcommand's help needs neither the operations nor YAML: they are imported when a subcommand runs."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "ddmq", "publish", "--help"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {"ddmq.ops", "yaml"} & _imported_modules(proc.stderr) == set()


def test_python_m_ddmq(tmp_path):
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    proc = subprocess.run([sys.executable, "-m", "ddmq", "--root", str(root), "-f", "json", "publish", "q", "via -m"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [row["queue"] for row in json.loads(proc.stdout)] == ["q"]
    proc = subprocess.run([sys.executable, "-m", "ddmq", "publish", "--help"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: ddmq publish [OPTIONS] QUEUE"), proc.stdout
