"""The ``ddmq`` command: every subcommand, every output format, every exit code.

Most cases go through click's CliRunner (fast, in-process); a few run the
installed ``ddmq`` script in a subprocess, end to end. Every CliRunner call
goes through :func:`ddmq_`, which fails the test if the command died with a
Python exception instead of a one-line message and an exit code.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import ddmq
from ddmq import Broker
from ddmq.cli import cli

DDMQ_SCRIPT = Path(sys.executable).parent / "ddmq"
SUBCOMMANDS = ["view", "create", "delete", "publish", "consume", "peek", "ack", "nack", "extend",
               "purge", "clean", "json", "show", "release", "requeue", "settings"]
HEX32 = re.compile(r"[0-9a-f]{32}\Z")
RECEIPT = re.compile(r"[0-9a-f]{32}\.[0-9a-f]{12}\Z")
MESSAGE_KEYS = {"id", "queue", "message", "priority", "published", "headers", "message_timeout",
                "requeue", "requeue_prio", "requeue_limit", "durable", "host", "pid", "requeues",
                "receipt", "lease_expires", "delivery_count"}


# ------------------------------------------------------------------- helpers
def _runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into stdout unless told not to
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


def ddmq_(*args: object, input: str | None = None, env: dict | None = None):
    """Run ``ddmq ARGS`` in-process; a Python exception escaping it fails the test."""
    result = _runner().invoke(cli, [str(a) for a in args], input=input, env=env, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(*result.exc_info))
        raise AssertionError(f"`ddmq {' '.join(map(str, args))}` crashed with a traceback:\n{tb}")
    return result


def ok(result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def fails(result, code: int, *fragments: str) -> str:
    """Exit ``code`` with exactly one line on stderr, ``ddmq: ...``, and no traceback."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {result.stderr!r}"
    assert lines[0].startswith("ddmq: "), lines
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def click_usage_error(result) -> None:
    """A command line click refuses: exit 2, one line ``ddmq: error: ...``, no usage summary, no hint."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddmq: error: "), result.stderr


def jout(result):
    return json.loads(ok(result))


def docs(text: str, parse) -> list:
    """Records of an output holding one or several results: a list, or one document per result."""
    try:
        whole = parse(text)
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return whole if isinstance(whole, list) else [whole]


def yaml_docs(text: str) -> list:
    found = [d for d in yaml.safe_load_all(text) if d is not None]
    if len(found) == 1 and isinstance(found[0], list):
        return found[0]
    return found


def receipts_of(result) -> list[str]:
    return [m["receipt"] for m in jout(result)]


def counts_of(rows: list[dict]) -> list[dict]:
    """``ddmq view`` rows less what is stuck (ages change from one call to the next): test_operator_cli.py."""
    return [{k: v for k, v in row.items() if k not in ("oldest_ready_age", "expired_leases")} for row in rows]


@pytest.fixture
def q(b: Broker, root: Path) -> str:
    """An empty queue named ``q`` in ``root``."""
    b.create_queue("q")
    return "q"


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


# ------------------------------------------------------------ help, version
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_group_help_lists_every_subcommand_and_exit_codes(flag):
    out = ok(ddmq_(flag))
    assert "Usage:" in out
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s", out, re.M), f"{name} missing from --help"
    assert "Exit codes" in out and "lease lost" in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_subcommand_help(name, flag, root):
    out = ok(ddmq_(name, flag))
    assert f" {name} [OPTIONS]" in out.splitlines()[0]
    assert "Exit codes" in out
    assert not root.exists()  # help touches nothing


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_version(flag, tmp_path):
    out = ok(ddmq_(flag))
    assert ddmq.__version__ in out and "ddmq" in out
    assert not (tmp_path / "home" / ".ddmq").exists()


def test_unknown_option_and_subcommand_are_usage_errors(root):
    click_usage_error(ddmq_("--root", root, "frobnicate"))
    click_usage_error(ddmq_("view", "--bogus"))
    click_usage_error(ddmq_("consume"))  # missing QUEUE
    click_usage_error(ddmq_("--format", "xml", "view"))


# -------------------------------------------------------------------- roots
def test_root_before_or_after_subcommand(root):
    ok(ddmq_("--root", root, "create", "before"))
    ok(ddmq_("create", "--root", root, "after"))
    ok(ddmq_("-r", root, "create", "short"))
    assert Broker(root).list_queues() == ["after", "before", "short"]
    assert [r["queue"] for r in jout(ddmq_("view", "-r", root, "-f", "json"))] == ["after", "before", "short"]
    assert [r["queue"] for r in jout(ddmq_("-f", "json", "-r", root, "view"))] == ["after", "before", "short"]


def test_subcommand_root_wins_over_group_root(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    ok(ddmq_("--root", one, "create", "--root", two, "q"))
    assert Broker(two).list_queues() == ["q"]
    assert not one.exists()


def test_ddmq_root_env_var(root, tmp_path):
    ok(ddmq_("create", "q", env={"DDMQ_ROOT": str(root)}))
    ok(ddmq_("publish", "q", "hello", env={"DDMQ_ROOT": str(root)}))
    assert ok(ddmq_("consume", "q", env={"DDMQ_ROOT": str(root)})) == "hello\n"
    assert not (tmp_path / "home" / ".ddmq").exists()
    # --root beats the environment
    other = tmp_path / "other"
    ok(ddmq_("--root", other, "create", "z", env={"DDMQ_ROOT": str(root)}))
    assert Broker(other).list_queues() == ["z"] and Broker(root).list_queues() == ["q"]


def test_default_root_is_created_in_home_on_first_use(tmp_path):
    default = tmp_path / "home" / ".ddmq"
    assert not default.exists()
    assert ok(ddmq_("view")) == ""
    assert (default / "ddmq.yaml").is_file()
    ok(ddmq_("publish", "-c", "q", "hi"))
    assert Broker(default).counts("q")["ready"] == 1


def test_missing_explicit_root_is_not_found_and_not_created(root):
    for args in (["view"], ["consume", "q"], ["peek", "q"], ["publish", "q", "x"], ["purge", "q"], ["clean"],
                 ["delete", "q"], ["ack", "q", "0" * 32]):
        fails(ddmq_("--root", root, *args), 4, "does not exist")
    assert not root.exists()


def test_missing_root_from_env_is_not_found_and_not_created(root):
    fails(ddmq_("view", env={"DDMQ_ROOT": str(root)}), 4, str(root))
    assert not root.exists()


def test_directory_that_is_not_a_root_is_refused(root):
    root.mkdir()
    (root / "data.txt").write_text("precious")
    fails(ddmq_("--root", root, "view"), 4, "not a ddmq root")
    fails(ddmq_("--root", root, "consume", "q"), 4, "not a ddmq root")
    assert tree(root) == {"data.txt"}


def test_root_that_is_a_file_is_a_usage_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    result = ddmq_("--root", f, "view")
    assert result.exit_code == 2
    assert f.read_text() == "x"


# --------------------------------------------------------------------- view
def test_view_empty_root(b, root):
    assert ok(ddmq_("-r", root, "view")) == ""
    assert jout(ddmq_("-r", root, "view", "-f", "json")) == []


def test_view_counts_in_every_format(b, root, q):
    for body in ("a", "b", "c"):
        b.publish(q, body)
    b.consume(q)                               # one in work
    b.nack(b.consume(q)[0], requeue=False)     # one dead
    b.create_queue("empty")
    rows = counts_of(jout(ddmq_("-r", root, "view", "-f", "json")))
    assert rows == [{"queue": "empty", "ready": 0, "work": 0, "dead": 0},
                    {"queue": "q", "ready": 1, "work": 1, "dead": 1}]
    assert counts_of(yaml.safe_load(ok(ddmq_("-r", root, "view", "-f", "yaml")))) == rows
    plain = ok(ddmq_("-r", root, "view")).splitlines()
    assert plain[0].split()[:4] == ["QUEUE", "READY", "WORK", "DEAD"]
    assert plain[2].split()[:4] == ["q", "1", "1", "1"]
    # named queues, comma separated or repeated
    assert [r["queue"] for r in jout(ddmq_("-r", root, "view", "q,empty", "-f", "json"))] == ["q", "empty"]
    assert [r["queue"] for r in jout(ddmq_("-r", root, "view", "q", "empty", "-f", "json"))] == ["q", "empty"]


def test_view_unknown_queue_is_not_found(b, root):
    fails(ddmq_("-r", root, "view", "nope"), 4, "nope")


# ------------------------------------------------------------------- create
def test_create_comma_lists_and_repeated_arguments(root):
    out = ok(ddmq_("-r", root, "create", "a,b", "c"))
    assert out == ""
    assert Broker(root).list_queues() == ["a", "b", "c"]
    rows = jout(ddmq_("-r", root, "create", "d,e", "-f", "json"))
    assert rows == [{"queue": "d", "created": True}, {"queue": "e", "created": True}]


def test_create_with_settings_options(root):
    ok(ddmq_("-r", root, "create", "q,r", "-p", "5", "--message-timeout", "30", "--no-requeue",
             "--requeue-prio", "2", "--requeue-limit", "3", "--no-durable"))
    b = Broker(root)
    for name in ("q", "r"):
        s = b.settings(name)
        assert (s["priority"], s["message_timeout"], s["requeue"], s["requeue_prio"], s["requeue_limit"],
                s["durable"]) == (5, 30, False, 2, 3, False)
    assert b.publish("q", "x").priority == 5
    assert Broker(root).settings("r")["priority"] == 5
    ok(ddmq_("-r", root, "create", "dflt"))
    assert b.settings("dflt")["priority"] == 999


def test_create_existing_queue(b, root, q):
    fails(ddmq_("-r", root, "create", "q"), 1, "already exists")
    ok(ddmq_("-r", root, "create", "q", "--exist-ok"))


def test_create_needs_a_name(root):
    click_usage_error(ddmq_("-r", root, "create"))
    fails(ddmq_("-r", root, "create", ","), 2)


@pytest.mark.parametrize("option, key", [(["-p", "1000000"], "priority"), (["--requeue-limit", "-1"], "requeue_limit"),
                                         (["--message-timeout", "0"], "message_timeout"),
                                         (["--requeue-prio", "-5"], "requeue_prio")])
def test_create_with_a_bad_setting_value_is_a_usage_error(root, option, key):
    """A bad option value is exit 2 (usage), not 1 (failure), and creates no queue."""
    fails(ddmq_("-r", root, "create", "q", *option), 2, key)
    assert Broker(root).list_queues() == []


# ------------------------------------------------------------------- delete
def test_delete_queues(b, root):
    for name in ("a", "b", "c"):
        b.create_queue(name)
    b.publish("a", "x")
    assert ok(ddmq_("-r", root, "delete", "a,b")) == ""
    assert b.list_queues() == ["c"]
    assert jout(ddmq_("-r", root, "delete", "c", "-f", "json")) == [{"queue": "c", "deleted": True}]
    assert b.list_queues() == []
    assert sorted(os.listdir(root)) == ["ddmq.yaml"]  # no hidden leftovers either


def test_delete_unknown_queue(b, root):
    fails(ddmq_("-r", root, "delete", "nope"), 4, "nope")


def test_delete_refuses_foreign_files_without_force(b, root, q):
    (root / "q" / "results.csv").write_text("precious")
    (root / "q" / "ready" / "notes.txt").write_text("precious")
    line = fails(ddmq_("-r", root, "delete", "q"), 1)
    assert "results.csv" in line and "ready/notes.txt" in line and "force" in line
    assert (root / "q" / "results.csv").read_text() == "precious"
    assert b.list_queues() == ["q"]
    ok(ddmq_("-r", root, "delete", "q", "--force"))
    assert b.list_queues() == [] and not (root / "q").exists()


def test_delete_force_does_not_follow_symlinks_out_of_the_root(b, root, q, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    os.symlink(outside, root / "q" / "link")
    os.symlink(outside / "keep.txt", root / "q" / "ready" / "link.msg")
    fails(ddmq_("-r", root, "delete", "q"), 1, "link")
    ok(ddmq_("-r", root, "delete", "q", "--force"))
    assert (outside / "keep.txt").read_text() == "keep"


# ------------------------------------------------------------------ publish
def test_publish_prints_ids_and_preserves_order(b, root, q):
    out = ok(ddmq_("-r", root, "publish", "q", "one", "two", "three"))
    ids = out.split()
    assert len(ids) == 3 and all(HEX32.match(i) for i in ids)
    got = b.consume(q, n=5)
    assert [m.message for m in got] == ["one", "two", "three"]
    assert [m.id for m in got] == ids


def test_publish_several_messages_keeps_order_on_a_coarse_clock(b, root, q, mocker):
    """Messages of one ``ddmq publish`` are delivered in the order given even if the clock does not tick."""
    mocker.patch("time.time_ns", return_value=1_700_000_000_000_000_000)
    bodies = ["m1", "m2", "m3", "m4", "m5", "m6"]
    ok(ddmq_("-r", root, "publish", "q", *bodies))
    mocker.stopall()
    assert [m.message for m in b.consume(q, n=10)] == bodies


def test_publish_json_output_keys(b, root, q):
    [row] = jout(ddmq_("-r", root, "publish", "q", "x", "-p", "7", "-f", "json"))
    assert set(row) == {"queue", "id", "priority"}
    assert row["queue"] == "q" and row["priority"] == 7 and HEX32.match(row["id"])
    [row] = yaml.safe_load(ok(ddmq_("-r", root, "publish", "q", "y", "-f", "yaml")))
    assert set(row) == {"queue", "id", "priority"} and row["priority"] == 999


def test_publish_several_messages_structured_output_is_parseable(b, root, q):
    out = ok(ddmq_("-r", root, "publish", "q", "a", "b", "-f", "json"))
    ids = [r["id"] for r in docs(out, json.loads)]
    assert len(set(ids)) == 2
    out = ok(ddmq_("-r", root, "publish", "q", "c", "d", "-f", "yaml"))
    rows = yaml_docs(out)
    assert len(rows) == 2 and len({r["id"] for r in rows}) == 2, out


def test_publish_json_bodies(b, root, q):
    ok(ddmq_("-r", root, "publish", "q", "--json", '{"a": [1, 2.5, null]}', "42", '"s"'))
    assert [m.message for m in b.consume(q, n=5)] == [{"a": [1, 2.5, None]}, 42, "s"]
    ok(ddmq_("-r", root, "publish", "q", "42"))
    assert b.consume(q)[0].message == "42"  # without --json a body is a string


def test_publish_invalid_json_publishes_nothing(b, root, q):
    fails(ddmq_("-r", root, "publish", "q", "--json", "[1, 2]", "{nope"), 2, "JSON")
    assert b.counts(q)["ready"] == 0


def test_publish_headers(b, root, q):
    ok(ddmq_("-r", root, "publish", "q", "x", "-H", "job=17", "--header", "url=http://h/?a=b"))
    assert b.consume(q)[0].headers == {"job": "17", "url": "http://h/?a=b"}


@pytest.mark.parametrize("bad", ["novalue", "=value"])
def test_publish_bad_header(b, root, q, bad):
    fails(ddmq_("-r", root, "publish", "q", "x", "-H", bad), 2, "header")
    assert b.counts(q)["ready"] == 0


def test_publish_from_stdin(b, root, q):
    ok(ddmq_("-r", root, "publish", "q", input="from stdin"))
    ok(ddmq_("-r", root, "publish", "q", "-", input="dash"))
    ok(ddmq_("-r", root, "publish", "q", "--json", "-", input='{"k": 1}'))
    assert [m.message for m in b.consume(q, n=5)] == ["from stdin", "dash", {"k": 1}]


def test_publish_create_flag(root):
    fails(ddmq_("-r", root, "publish", "q", "x"), 4)
    assert not root.exists()
    ok(ddmq_("-r", root, "publish", "-c", "q", "x"))
    ok(ddmq_("-r", root, "publish", "--create", "q", "y"))
    assert Broker(root).counts("q")["ready"] == 2


def test_publish_unknown_queue_is_not_found(b, root):
    fails(ddmq_("-r", root, "publish", "nope", "x"), 4, "nope")
    assert b.list_queues() == []


def test_publish_settings_options(b, root, q):
    ok(ddmq_("-r", root, "publish", "q", "x", "-p", "3", "--message-timeout", "12.5", "--no-requeue",
             "--requeue-prio", "4", "--requeue-limit", "2", "--no-durable"))
    m = b.consume(q)[0]
    assert (m.priority, m.message_timeout, m.requeue, m.requeue_prio, m.requeue_limit, m.durable) == (
        3, 12.5, False, 4, 2, False)


def test_publish_priority_order(b, root, q):
    ok(ddmq_("-r", root, "publish", "q", "low", "-p", "9"))
    ok(ddmq_("-r", root, "publish", "q", "high", "-p", "1"))
    assert ok(ddmq_("-r", root, "consume", "q", "-n", "2")) == "high\nlow\n"


@pytest.mark.parametrize("option", [["-p", "1000000"], ["--requeue-limit", "-1"], ["--message-timeout", "-3"]])
def test_publish_bad_setting_value_is_a_usage_error(b, root, q, option):
    fails(ddmq_("-r", root, "publish", "q", "x", *option), 2)
    assert b.counts(q)["ready"] == 0


def test_publish_non_numeric_option_is_a_usage_error(b, root, q):
    click_usage_error(ddmq_("-r", root, "publish", "q", "x", "-p", "high"))


# ------------------------------------------------------------------ consume
def test_consume_prints_body_and_acks(b, root, q):
    b.publish(q, "hello world")
    b.publish(q, {"k": [1, 2]})
    assert ok(ddmq_("-r", root, "consume", "q")) == "hello world\n"
    assert json.loads(ok(ddmq_("-r", root, "consume", "q"))) == {"k": [1, 2]}
    assert b.counts(q) == {"ready": 0, "work": 0, "dead": 0}


def test_consume_n(b, root, q):
    for i in range(3):
        b.publish(q, f"m{i}")
    assert ok(ddmq_("-r", root, "consume", "q", "-n", "2")) == "m0\nm1\n"
    assert ok(ddmq_("-r", root, "consume", "q", "-n", "5")) == "m2\n"  # fewer than n is fine
    click_usage_error(ddmq_("-r", root, "consume", "q", "-n", "0"))


@pytest.mark.parametrize("fmt", ["plain", "json", "yaml"])
def test_consume_empty_queue_exits_3(b, root, q, fmt):
    result = ddmq_("-r", root, "consume", "q", "-f", fmt)
    assert result.exit_code == 3
    assert len(result.stderr.splitlines()) <= 1 and "Traceback" not in result.output
    if fmt == "json":
        assert json.loads(result.stdout or "[]") == []
    if fmt == "plain":
        assert result.stdout == ""


def test_consume_unknown_queue(b, root):
    fails(ddmq_("-r", root, "consume", "nope"), 4, "nope")


def test_consume_json_and_yaml_output_keys(b, root, q):
    b.publish(q, "x", headers={"h": "v"})
    b.publish(q, "y")
    rows = jout(ddmq_("-r", root, "consume", "q", "-f", "json"))
    assert len(rows) == 1 and MESSAGE_KEYS <= set(rows[0])
    assert rows[0]["message"] == "x" and rows[0]["headers"] == {"h": "v"} and rows[0]["queue"] == "q"
    rows = yaml.safe_load(ok(ddmq_("-r", root, "consume", "q", "-f", "yaml")))
    assert isinstance(rows, list) and MESSAGE_KEYS <= set(rows[0]) and rows[0]["message"] == "y"


def test_consume_no_ack_then_ack_by_receipt(b, root, q):
    b.publish(q, "a")
    b.publish(q, "b")
    rows = jout(ddmq_("-r", root, "consume", "q", "-n", "2", "--no-ack", "-f", "json"))
    assert [r["message"] for r in rows] == ["a", "b"]
    assert all(RECEIPT.match(r["receipt"]) and r["lease_expires"] > time.time_ns() for r in rows)
    assert all(r["delivery_count"] == 1 for r in rows)
    assert b.counts(q) == {"ready": 0, "work": 2, "dead": 0}
    out = jout(ddmq_("-r", root, "ack", "q", rows[0]["receipt"], "-f", "json"))
    assert out == [{"receipt": rows[0]["receipt"], "acked": True}]
    assert ok(ddmq_("-r", root, "ack", "q", rows[1]["receipt"])) == ""
    assert b.counts(q) == {"ready": 0, "work": 0, "dead": 0}
    # acking again: the lease is gone
    fails(ddmq_("-r", root, "ack", "q", rows[0]["receipt"]), 5)


def test_ack_several_receipts_comma_separated(b, root, q):
    for body in "abc":
        b.publish(q, body)
    receipts = receipts_of(ddmq_("-r", root, "consume", "q", "-n", "3", "--no-ack", "-f", "json"))
    ok(ddmq_("-r", root, "ack", "q", ",".join(receipts[:2]), receipts[2]))
    assert b.counts(q)["work"] == 0


def test_plain_consume_without_ack_leaves_message_in_work(b, root, q):
    b.publish(q, "a")
    assert ok(ddmq_("-r", root, "consume", "q", "--no-ack")).endswith("\ta\n")  # RECEIPT<TAB>BODY
    assert b.counts(q) == {"ready": 0, "work": 1, "dead": 0}


def test_nack_requeues_by_receipt(b, root, q):
    b.publish(q, "a")
    [receipt] = receipts_of(ddmq_("-r", root, "consume", "q", "--no-ack", "-f", "json"))
    assert ok(ddmq_("-r", root, "nack", "q", receipt)) == "ready\n"
    assert b.counts(q) == {"ready": 1, "work": 0, "dead": 0}
    rows = jout(ddmq_("-r", root, "consume", "q", "--no-ack", "-f", "json"))
    assert rows[0]["requeues"] == 1 and rows[0]["delivery_count"] == 2 and rows[0]["priority"] == 0
    assert jout(ddmq_("-r", root, "nack", "q", rows[0]["receipt"], "-f", "json")) == [
        {"receipt": rows[0]["receipt"], "moved_to": "ready"}]
    fails(ddmq_("-r", root, "nack", "q", rows[0]["receipt"]), 5)


def test_nack_no_requeue_dead_letters_and_peek_dead_shows_it(b, root, q):
    b.publish(q, "poison")
    [receipt] = receipts_of(ddmq_("-r", root, "consume", "q", "--no-ack", "-f", "json"))
    assert ok(ddmq_("-r", root, "nack", "q", receipt, "--no-requeue")) == "dead\n"
    assert b.counts(q) == {"ready": 0, "work": 0, "dead": 1}
    assert "rejected" in ok(ddmq_("-r", root, "peek", "q", "--state", "dead"))  # a table: test_operator_cli.py
    rows = jout(ddmq_("-r", root, "peek", "q", "--state", "dead", "-f", "json"))
    assert rows[0]["message"] == "poison"
    dead = os.listdir(root / "q" / "dead")
    assert any("rejected" in n and not n.endswith(".reason") for n in dead)
    assert any(n.endswith(".reason") for n in dead)


def test_nack_respects_requeue_limit(b, root):
    b.create_queue("lim", requeue_limit=0)
    b.publish("lim", "x")
    [receipt] = receipts_of(ddmq_("-r", root, "consume", "lim", "--no-ack", "-f", "json"))
    assert ok(ddmq_("-r", root, "nack", "lim", receipt)) == "dead\n"


def test_extend_by_receipt(b, root, q):
    b.publish(q, "a")
    [row] = jout(ddmq_("-r", root, "consume", "q", "--no-ack", "--lease", "5", "-f", "json"))
    out = jout(ddmq_("-r", root, "extend", "q", row["receipt"], "--seconds", "1000", "-f", "json"))
    assert set(out) == {"receipt", "lease_expires"} and out["receipt"] == row["receipt"]
    assert out["lease_expires"] > row["lease_expires"] + 900 * 10**9
    assert ok(ddmq_("-r", root, "extend", "q", row["receipt"])) == ""  # default: the message timeout
    [held] = b.peek(q, state="work")
    assert abs(held.lease_expires - (time.time_ns() + 600 * 10**9)) < 60 * 10**9
    ok(ddmq_("-r", root, "ack", "q", row["receipt"]))  # the receipt survives extensions
    fails(ddmq_("-r", root, "extend", "q", row["receipt"]), 5)


@pytest.mark.parametrize("seconds", ["0", "-1", "nan"])
def test_extend_bad_seconds(b, root, q, seconds):
    b.publish(q, "a")
    [receipt] = receipts_of(ddmq_("-r", root, "consume", "q", "--no-ack", "-f", "json"))
    fails(ddmq_("-r", root, "extend", "q", receipt, "--seconds", seconds), 2)
    assert b.counts(q)["work"] == 1


@pytest.mark.parametrize("value", ["inf", "1e30"])
def test_lease_too_long_is_a_usage_error_not_a_crash(b, root, q, value):
    """--lease/--seconds of inf (or beyond the 20-digit expiry field) must be refused cleanly."""
    b.publish(q, "a")
    fails(ddmq_("-r", root, "consume", "q", "--lease", value, "--no-ack"), 2)
    assert b.counts(q) == {"ready": 1, "work": 0, "dead": 0}
    [receipt] = receipts_of(ddmq_("-r", root, "consume", "q", "--no-ack", "-f", "json"))
    fails(ddmq_("-r", root, "extend", "q", receipt, "--seconds", value), 2)
    assert b.counts(q)["work"] == 1


def test_long_lease_is_not_dead_lettered_by_clean(b, root, q):
    """A lease of ~6000 years (an expiry past the 20-digit field) must be refused or kept, never dead-lettered."""
    b.publish(q, "a")
    result = ddmq_("-r", root, "consume", "q", "--no-ack", "--lease", "2e11", "-f", "json")
    if result.exit_code == 2:  # refusing such a lease outright is acceptable too
        return
    [receipt] = receipts_of(result)
    ok(ddmq_("-r", root, "clean"))
    assert b.counts(q) == {"ready": 0, "work": 1, "dead": 0}
    ok(ddmq_("-r", root, "ack", "q", receipt))


@pytest.mark.parametrize("cmd", ["ack", "nack", "extend"])
@pytest.mark.parametrize("receipt", ["garbage", "../../etc/passwd", "0" * 32 + ".zz", ""])
def test_invalid_receipts_are_usage_errors(b, root, q, cmd, receipt):
    fails(ddmq_("-r", root, cmd, "q", receipt), 2, "receipt")


@pytest.mark.parametrize("cmd", ["ack", "nack", "extend"])
def test_unknown_receipt_is_lease_lost(b, root, q, cmd):
    fails(ddmq_("-r", root, cmd, "q", "0" * 32 + "." + "0" * 12), 5)


def test_expired_lease_requeued_by_clean_then_old_receipt_is_lost(b, root, q):
    b.publish(q, "a")
    [receipt] = receipts_of(ddmq_("-r", root, "consume", "q", "--no-ack", "--lease", "0.05", "-f", "json"))
    time.sleep(0.1)
    rows = jout(ddmq_("-r", root, "clean", "q", "-f", "json"))
    assert rows == [{"queue": "q", "requeued": 1, "dead_lettered": 0, "temp_removed": 0}]
    fails(ddmq_("-r", root, "ack", "q", receipt), 5, "no longer leased")
    assert b.counts(q)["ready"] == 1


# --------------------------------------------------------------------- peek
def test_peek_does_not_claim(b, root, q):
    for body in ("a", "b", "c"):
        b.publish(q, body)
    assert ok(ddmq_("-r", root, "peek", "q")) == "a\n"
    assert ok(ddmq_("-r", root, "peek", "q", "-n", "2")) == "a\nb\n"
    rows = jout(ddmq_("-r", root, "peek", "q", "-n", "9", "-f", "json"))
    assert [r["message"] for r in rows] == ["a", "b", "c"]
    assert all(MESSAGE_KEYS <= set(r) and r["receipt"] is None for r in rows)
    assert [r["message"] for r in yaml.safe_load(ok(ddmq_("-r", root, "peek", "q", "-n", "9", "-f", "yaml")))] == [
        "a", "b", "c"]
    assert b.counts(q) == {"ready": 3, "work": 0, "dead": 0}


def test_peek_work_state(b, root, q):
    b.publish(q, "held")
    b.consume(q)
    assert ok(ddmq_("-r", root, "peek", "q", "--state", "work")) == "held\n"
    assert ddmq_("-r", root, "peek", "q").exit_code == 3


def test_peek_empty_and_bad_state(b, root, q):
    result = ddmq_("-r", root, "peek", "q")
    assert result.exit_code == 3 and result.stdout == "" and "Traceback" not in result.output
    assert ddmq_("-r", root, "peek", "q", "--state", "dead").exit_code == 3
    click_usage_error(ddmq_("-r", root, "peek", "q", "--state", "tmp"))
    fails(ddmq_("-r", root, "peek", "nope"), 4)


# -------------------------------------------------------------------- purge
def test_purge_ready_and_dead(b, root, q):
    b.create_queue("r")
    for body in ("a", "b", "c"):
        b.publish(q, body)
    b.publish("r", "x")
    b.nack(b.consume(q)[0], requeue=False)
    assert ok(ddmq_("-r", root, "purge", "q,r")) == "q: 2\nr: 1\n"
    assert b.counts(q) == {"ready": 0, "work": 0, "dead": 1}
    assert jout(ddmq_("-r", root, "purge", "q", "--dead", "-f", "json")) == [{"queue": "q", "removed": 1}]
    assert os.listdir(root / "q" / "dead") == []  # the .reason sidecar went too
    assert yaml.safe_load(ok(ddmq_("-r", root, "purge", "q", "-f", "yaml"))) == [{"queue": "q", "removed": 0}]
    fails(ddmq_("-r", root, "purge", "nope"), 4)


# -------------------------------------------------------------------- clean
def test_clean_all_and_one(b, root, q):
    b.publish(q, "a")
    b.consume(q, lease=0.01)
    (root / "q" / "ready" / "stray.txt").write_text("x")
    time.sleep(0.05)
    plain = ok(ddmq_("-r", root, "clean")).splitlines()
    assert plain[0].split() == ["QUEUE", "REQUEUED", "DEAD_LETTERED", "TEMP_REMOVED"]
    assert plain[1].split() == ["*", "1", "1", "0"]
    rows = jout(ddmq_("-r", root, "clean", "q", "-f", "json"))
    assert rows == [{"queue": "q", "requeued": 0, "dead_lettered": 0, "temp_removed": 0}]
    assert b.counts(q) == {"ready": 1, "work": 0, "dead": 1}
    fails(ddmq_("-r", root, "clean", "nope"), 4)


# --------------------------------------------------------------------- json
def test_json_publish_consume_roundtrip(b, root, q):
    row = jout(ddmq_("-r", root, "json", '{"cmd": "publish", "queue": "q", "message": {"x": 1}, "priority": 4,'
                                       ' "headers": {"h": "v"}}'))
    assert set(row) == {"queue", "id", "priority"} and row["priority"] == 4
    rows = jout(ddmq_("-r", root, "json", '{"cmd": "consume", "queue": "q", "ack": false}'))
    assert rows[0]["message"] == {"x": 1} and rows[0]["headers"] == {"h": "v"} and RECEIPT.match(rows[0]["receipt"])
    out = jout(ddmq_("-r", root, "json", json.dumps({"cmd": "ack", "queue": "q", "receipts": [rows[0]["receipt"]]})))
    assert out == [{"receipt": rows[0]["receipt"], "acked": True}]
    assert b.counts(q) == {"ready": 0, "work": 0, "dead": 0}


def test_json_every_operation(b, root):
    def run(request):
        return jout(ddmq_("-r", root, "json", json.dumps(request)))

    assert run({"cmd": "create", "queues": "j,k", "priority": 3}) == [
        {"queue": "j", "created": True}, {"queue": "k", "created": True}]
    run({"cmd": "publish", "queue": "j", "message": "m1"})
    run({"cmd": "publish", "queue": "j", "message": "m2"})
    assert counts_of(run({"cmd": "view", "queues": ["j"]})) == [{"queue": "j", "ready": 2, "work": 0, "dead": 0}]
    assert [m["message"] for m in run({"cmd": "peek", "queue": "j", "n": 2})] == ["m1", "m2"]
    [m] = run({"cmd": "consume", "queue": "j", "ack": False, "lease": 30})
    assert run({"cmd": "extend", "queue": "j", "receipt": m["receipt"], "seconds": 60})["receipt"] == m["receipt"]
    assert run({"cmd": "nack", "queue": "j", "receipts": m["receipt"], "requeue": False}) == [
        {"receipt": m["receipt"], "moved_to": "dead"}]
    assert run({"cmd": "purge", "queues": "j", "dead": True}) == [{"queue": "j", "removed": 1}]
    assert run({"cmd": "clean"})[0]["queue"] == "*"
    assert run({"cmd": "delete", "queues": ["k"]}) == [{"queue": "k", "deleted": True}]
    assert b.list_queues() == ["j"]


def test_json_from_stdin_and_yaml_output(b, root, q):
    ok(ddmq_("-r", root, "json", "-", input='{"cmd": "publish", "queue": "q", "message": "s"}'))
    out = ok(ddmq_("-r", root, "json", "-f", "yaml", '{"cmd": "view"}'))
    assert counts_of(yaml.safe_load(out)) == [{"queue": "q", "ready": 1, "work": 0, "dead": 0}]


def test_json_consume_empty_exits_3(b, root, q):
    result = ddmq_("-r", root, "json", '{"cmd": "consume", "queue": "q"}')
    assert result.exit_code == 3 and json.loads(result.stdout) == []


@pytest.mark.parametrize("text", ["{nope", "", "[1, 2]", '"publish"', '{"queue": "q"}', '{"cmd": 5}'])
def test_json_malformed_request(b, root, text):
    fails(ddmq_("-r", root, "json", text), 2)


def test_json_unknown_cmd(b, root):
    line = fails(ddmq_("-r", root, "json", '{"cmd": "frobnicate"}'), 2, "frobnicate")
    assert "publish" in line  # lists the known ones


@pytest.mark.parametrize("request_", [
    {"cmd": "view", "bogus": 1},
    {"cmd": "consume", "queue": "q", "bogus": 1},
    {"cmd": "peek", "queue": "q", "bogus": 1},
    {"cmd": "ack", "queue": "q", "receipts": "x", "bogus": 1},
    {"cmd": "purge", "queues": "q", "bogus": 1},
    {"cmd": "publish", "queue": "q", "message": "m", "bogus": 1},
    {"cmd": "create", "queues": "new", "bogus": 1},
    {"cmd": "publish", "queue": "q", "message": "m", "root": "/tmp"},
    {"cmd": "publish", "queue": "q", "message": "m", "fmt": "yaml"},
    {"cmd": "create", "queues": "new", "name": "x"},
    {"cmd": "consume"},  # missing required key
], ids=lambda r: json.dumps(r, sort_keys=True)[:60])
def test_json_unknown_or_missing_keys_are_usage_errors(b, root, q, request_):
    fails(ddmq_("-r", root, "json", json.dumps(request_)), 2)
    assert b.list_queues() == ["q"] and b.counts(q)["ready"] == 0


@pytest.mark.parametrize("request_", [
    {"cmd": "create", "queues": "../evil"},
    {"cmd": "create", "queues": ["ok1", "a/b"]},
    {"cmd": "publish", "queue": "../../evil", "message": "x", "create": True},
    {"cmd": "publish", "queue": "/tmp/evil", "message": "x", "create": True},
    {"cmd": "consume", "queue": ".."},
    {"cmd": "peek", "queue": "q/../..", "state": "ready"},
    {"cmd": "peek", "queue": "q", "state": "../../.."},
    {"cmd": "view", "queues": ["."]},
    {"cmd": "purge", "queues": "..", "dead": True},
    {"cmd": "delete", "queues": "../root", "force": True},
    {"cmd": "ack", "queue": "q", "receipts": "../../ddmq.yaml"},
    {"cmd": "extend", "queue": "q", "receipt": "../x"},
    {"cmd": "clean", "queues": [".hidden"]},
    {"cmd": "publish", "queue": 5, "message": "x"},
    {"cmd": "view", "queues": [1]},
], ids=lambda r: json.dumps(r, sort_keys=True)[:60])
def test_json_path_traversal_is_refused(b, root, q, tmp_path, request_):
    before = tree(tmp_path)
    fails(ddmq_("-r", root, "json", json.dumps(request_)), 2)
    assert tree(tmp_path) == before


def test_json_bad_argument_values_are_usage_errors(b, root, q):
    for request_ in ({"cmd": "consume", "queue": "q", "n": 0}, {"cmd": "consume", "queue": "q", "n": "3"},
                     {"cmd": "consume", "queue": "q", "lease": -1}, {"cmd": "peek", "queue": "q", "n": True},
                     {"cmd": "publish", "queue": "q", "message": "m", "headers": "h"},
                     {"cmd": "publish", "queue": "q", "message": "m", "priority": "high"}):
        fails(ddmq_("-r", root, "json", json.dumps(request_)), 2)
    assert b.counts(q)["ready"] == 0


# ------------------------------------------------------- exit codes, stderr
def test_exit_code_1_failure_is_one_line(b, root, q):
    (root / "q" / "ddmq.yaml").write_text("priority: high\n")
    line = fails(ddmq_("-r", root, "publish", "q", "x"), 1)
    assert "ddmq.yaml" in line and "priority" in line


def test_invalid_queue_name_is_exit_2(b, root):
    for args in (["create", "../x"], ["publish", "a/b", "m"], ["consume", ".hidden"], ["peek", ".."],
                 ["purge", "a b"], ["view", "x" * 129], ["delete", ".."]):
        fails(ddmq_("-r", root, *args), 2, "invalid queue name")


# ----------------------------------------------------- the installed script
@pytest.fixture
def script() -> Path:
    assert DDMQ_SCRIPT.is_file(), (
        f"the ddmq command is not installed at {DDMQ_SCRIPT}: run `pip install -e .` (CI does)"
    )
    return DDMQ_SCRIPT


def run_script(script: Path, *args: object, input: str | None = None, env: dict | None = None,
               home: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "DDMQ_ROOT"}
    if home is not None:
        full_env["HOME"] = str(home)
    full_env.update(env or {})
    return subprocess.run([str(script), *map(str, args)], input=input, env=full_env, capture_output=True,
                          text=True, timeout=60)


def test_script_version_and_help(script):
    proc = run_script(script, "--version")
    assert proc.returncode == 0 and ddmq.__version__ in proc.stdout
    proc = run_script(script, "-h")
    assert proc.returncode == 0 and "Usage: ddmq" in proc.stdout


def test_script_end_to_end(script, root):
    assert run_script(script, "--root", root, "create", "jobs").returncode == 0
    proc = run_script(script, "--root", root, "publish", "jobs", input="payload from a pipe")
    assert proc.returncode == 0 and HEX32.match(proc.stdout.strip()), proc.stderr
    proc = run_script(script, "consume", "--root", root, "jobs", "--no-ack", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    [msg] = json.loads(proc.stdout)
    assert msg["message"] == "payload from a pipe"
    assert run_script(script, "--root", root, "ack", "jobs", msg["receipt"]).returncode == 0
    proc = run_script(script, "--root", root, "ack", "jobs", msg["receipt"])
    assert proc.returncode == 5 and len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr
    proc = run_script(script, "--root", root, "consume", "jobs")
    assert proc.returncode == 3 and proc.stdout == "" and "Traceback" not in proc.stderr


def test_script_errors_are_one_line(script, tmp_path):
    missing = tmp_path / "missing"
    proc = run_script(script, "--root", missing, "consume", "q")
    assert proc.returncode == 4
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("ddmq: ") and "Traceback" not in proc.stderr
    assert not missing.exists()
    proc = run_script(script, "--root", tmp_path / "r", "json", "{broken")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_script_env_root_default_root_and_json_stdin(script, tmp_path):
    home = tmp_path / "scripthome"
    home.mkdir()
    proc = run_script(script, "json", "-", home=home,
                      input='{"cmd": "publish", "queue": "q", "message": "hi", "create": true}')
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout)) == {"queue", "id", "priority"}
    assert (home / ".ddmq" / "q" / "ddmq.yaml").is_file()
    proc = run_script(script, "consume", "q", home=home, env={"DDMQ_ROOT": str(home / ".ddmq")})
    assert proc.returncode == 0 and proc.stdout == "hi\n", proc.stderr


def test_json_command_honours_a_format_given_before_it(b, root):
    b.create_queue("q")
    out = ok(ddmq_("-r", root, "-f", "yaml", "json", '{"cmd": "view"}'))
    assert counts_of(yaml.safe_load(out)) == [{"queue": "q", "ready": 0, "work": 0, "dead": 0}]
    assert not out.lstrip().startswith("[")  # YAML, not the JSON default
    assert counts_of(json.loads(ok(ddmq_("-r", root, "json", '{"cmd": "view"}')))) == [
        {"queue": "q", "ready": 0, "work": 0, "dead": 0}]


def test_create_exist_ok_with_other_settings_is_an_error(b, root):
    b.create_queue("q", message_timeout=60)
    ok(ddmq_("-r", root, "create", "q", "--exist-ok", "--message-timeout", "60"))
    ok(ddmq_("-r", root, "create", "q", "--exist-ok"))
    fails(ddmq_("-r", root, "create", "q", "--exist-ok", "--message-timeout", "5"), 1,
          "message_timeout", "60", "5")
    assert b.settings("q")["message_timeout"] == 60


# ------------------------------------------- conventions every command shares
COMMANDS = {"ddmq": "ddmq.cli:cli", "ddmq-notify": "ddmq_hpc.notify:command", "ddmq-wait": "ddmq_hpc.wait:command",
            "ddmq-template": "ddmq_hpc.template:command", "ddmq-dispatch": "ddmq_hpc.dispatch:command"}
LOGS = """
import sys
from importlib import import_module
from ddmq import console
module, name = sys.argv[1].split(":")
command = getattr(import_module(module), name)
# fails once the options are processed (a missing argument; for ddmq, a missing root): nothing else is said
args = sys.argv[2:] + (["--root", "/nonexistent/root", "view"] if module == "ddmq.cli" else [])
console.run(command, args)
print("logging imported" if "logging" in sys.modules else "logging not imported")
if "logging" in sys.modules:
    import logging

    logger = logging.getLogger("ddmq")
    logger.debug("a debug record")
    logger.info("an info record")
    logger.warning("a warning record")
"""


def _logs(command: str, *args: str, env: dict | None = None) -> tuple[str, list[str]]:
    proc = subprocess.run([sys.executable, "-c", LOGS, COMMANDS[command], *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout.splitlines()[-1], [line for line in proc.stderr.splitlines() if "DDMQ_LOG" in line
                                          or line.endswith(" record")]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_verbose_shows_the_ddmq_logger_on_stderr(command):
    """-v: info, -vv: debug, one line each as PROG: message; without it logging is not even imported."""
    assert _logs(command) == ("logging not imported", [])
    assert _logs(command, "-v") == ("logging imported", [f"{command}: an info record", f"{command}: a warning record"])
    assert _logs(command, "-vv")[1] == [f"{command}: a debug record", f"{command}: an info record",
                                        f"{command}: a warning record"]
    assert _logs(command, "--verbose", "--verbose")[1][0] == f"{command}: a debug record"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_ddmq_log_sets_the_level_without_verbose(command):
    assert _logs(command, env={"DDMQ_LOG": "warning"})[1] == [f"{command}: a warning record"]
    assert len(_logs(command, env={"DDMQ_LOG": "DEBUG"})[1]) == 3
    imported, lines = _logs(command, env={"DDMQ_LOG": "loud"})
    assert imported == "logging not imported"
    assert lines == [f"{command}: warning: DDMQ_LOG='loud' ignored: use one of warning, info, debug"]


def test_verbose_before_and_after_the_subcommand_adds_one_handler():
    assert _logs("ddmq", "-v", "view", "-v")[1] == ["ddmq: an info record", "ddmq: a warning record"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_version_and_one_line_usage_errors(command):
    script = Path(sys.executable).parent / command
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == f"{command}, version {ddmq.__version__}\n", proc
    proc = subprocess.run([str(script), "--no-such-option"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"{command}: error: "), proc.stderr
    assert "--no-such-option" in proc.stderr


def test_options_that_mirror_settings_say_the_schema_defaults():
    from ddmq.settings import SCHEMA

    create_help = ok(ddmq_("create", "--help"))
    publish_help = ok(ddmq_("publish", "--help"))
    words = " ".join(create_help.split())
    for key, (default, _, _) in SCHEMA.items():
        option = "--" + key.replace("_", "-")
        assert option in create_help, option
        if isinstance(default, bool):
            assert f"(default: --{'' if default else 'no-'}{key.replace('_', '-')})" in words, key
        else:
            assert f"(default: {'none' if default is None else default})" in words, key
    assert "--clean-interval" not in publish_help and "--mode" not in publish_help  # queue-only settings


def test_a_handler_gets_the_body_as_ddmq_consume_prints_it(b, root, tmp_path):
    """DDMQ_MESSAGE (and the handler's stdin) is what ``ddmq consume`` prints, byte for byte."""
    body = {"zeta": [3, {"b": None, "a": "é"}], "alpha": 1.5}
    b.publish("printed", body, create=True)
    b.publish("handled", body, create=True)
    printed = subprocess.run([str(DDMQ_SCRIPT), "--root", str(root), "consume", "printed"], capture_output=True,
                             timeout=60)
    assert printed.returncode == 0, printed.stderr
    out = tmp_path / "handler.out"
    handler = (f"{sys.executable} -c \"import os, sys; open({str(out)!r}, 'wb').write("
               "os.environb[b'DDMQ_MESSAGE'] + b'|' + sys.stdin.buffer.read())\"")
    dispatch = Path(sys.executable).parent / "ddmq-dispatch"
    done = subprocess.run([str(dispatch), "handled", "--root", str(root), "--handler", handler], capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    environment, stdin = out.read_bytes().split(b"|")
    assert environment + b"\n" == stdin + b"\n" == printed.stdout
