"""The Python API, call by call, on a real directory."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import ddmq
from ddmq import atomic
from ddmq import Broker, broker
from ddmq.layout import new_message_id, parse_work
from ddmq.errors import (
    ForeignFiles, LeaseLost, NotARoot, QueueExists, QueueNotFound, RootNotFound, SettingsError,
    UsageError,
)
from tests.support.queuefiles import ready_files


def test_seed_example_works_as_written(tmp_path: Path) -> None:
    b = broker(str(tmp_path / "rootdir"), create=True)
    b.create_queue("queue_name")
    b.publish(queue="queue_name", message="Hello World!")
    msg = b.consume(queue="queue_name")
    assert isinstance(msg, list) and msg[0].message == "Hello World!"


def test_broker_is_the_module_and_makes_brokers(tmp_path: Path) -> None:
    """``ddmq.broker(root)`` (the seed's spelling) makes a Broker, and ``ddmq.broker`` is the module
    (it used to be the class, so ``import ddmq.broker; ddmq.broker.Broker`` failed)."""
    import importlib

    module = importlib.import_module("ddmq.broker")
    assert ddmq.broker is module and module.Broker is Broker and ddmq.Message is not None
    assert isinstance(broker(tmp_path / "r", create=True), Broker)


def test_root_is_created_only_when_asked(tmp_path: Path) -> None:
    with pytest.raises(RootNotFound):
        Broker(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotARoot):
        Broker(tmp_path / "plain")
    Broker(tmp_path / "plain", create=True)
    assert (tmp_path / "plain" / "ddmq.yaml").is_file()


def test_default_root_from_env_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DDMQ_ROOT", str(tmp_path / "envroot"))
    with pytest.raises(RootNotFound):
        Broker()
    monkeypatch.delenv("DDMQ_ROOT")
    b = Broker()
    assert b.root == tmp_path / "home" / ".ddmq" and (b.root / "ddmq.yaml").is_file()


def test_message_bodies_round_trip(b: Broker) -> None:
    bodies = ["text", "123", "", {"a": [1, 2, None]}, [1, "x"], 3.5, None, True, "ünïcødé ✓"]
    for body in bodies:
        b.publish("q", body, create=True)
    got = [m.message for m in b.consume("q", n=len(bodies), ack=True)]
    assert got == bodies
    assert isinstance(got[1], str)


def test_unserialisable_body_is_refused_and_leaves_nothing(b: Broker, root: Path) -> None:
    b.create_queue("q")
    with pytest.raises(UsageError):
        b.publish("q", {1, 2})
    with pytest.raises(UsageError):
        b.publish("q", float("nan"))
    circular: dict = {}
    circular["self"] = circular
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    for body in (circular, deep):
        with pytest.raises(UsageError, match="nested too deeply, or circular"):
            b.publish("q", body)
    assert ready_files(root / "q" / "ready") == [] and os.listdir(root / "q" / "tmp") == []


def test_payload_files_with_whitespace_around_are_still_messages(b: Broker, root: Path) -> None:
    """ddmq writes none, but a payload is JSON: a tool that re-indents one must not corrupt it."""
    b.publish("q", {"keep": [1, 2]}, create=True)
    [path] = (root / "q" / "ready").rglob("*.msg")
    path.write_text("\n  " + json.dumps(json.loads(path.read_text()), indent=2) + "\n")
    [got] = b.consume("q", ack=True)
    assert got.message == {"keep": [1, 2]}


def test_message_carries_metadata(b: Broker) -> None:
    sent = b.publish("q", "x", create=True, headers={"k": "v"}, priority=5, requeue_limit=2)
    [got] = b.consume("q")
    assert got.id == sent.id and got.queue == "q" and got.headers == {"k": "v"}
    assert got.priority == 5 and got.requeue_limit == 2 and got.host and got.pid == os.getpid()
    assert got.published == sent.published and got.delivery_count == 1
    assert got.receipt and got.lease_expires > time.time_ns()


def test_lease_file_name_carries_the_claim(b: Broker, root: Path) -> None:
    """The work/ name appended to the ready name reads back as the lease consume reports."""
    b.publish("q", "x", create=True, priority=7, requeue_prio=3)
    b.nack(b.consume("q")[0])  # requeued once, at priority 3: both are in the name
    [got] = b.consume("q", lease=60)
    [name] = os.listdir(root / "q" / "work")
    work = parse_work(name)
    assert work is not None and str(work) == name
    assert (work.id, work.priority, work.requeues, work.expires) == (got.id, 3, 1, got.lease_expires)
    assert got.priority == 3 and got.requeues == 1
    assert got.receipt == work.receipt and got.delivery_count == 2


def test_fifo_across_brokers_on_a_clock_that_does_not_tick(b: Broker, root: Path, mocker) -> None:
    """A script that makes a new Broker per message still publishes in order."""
    b.create_queue("q")
    mocker.patch("time.time_ns", return_value=1_700_000_000_000_000_000)
    for i in range(6):
        Broker(root).publish("q", i)
    mocker.stopall()
    assert [m.message for m in b.consume("q", n=10)] == list(range(6))


def test_priority_then_fifo(b: Broker) -> None:
    b.create_queue("q")
    for i, prio in enumerate([5, 1, 5, 10, 1, 9, 10, 100]):
        b.publish("q", f"{prio}-{i}", priority=prio)
    got = [m.message for m in b.consume("q", n=100, ack=True)]
    assert got == ["1-1", "1-4", "5-0", "5-2", "9-5", "10-3", "10-6", "100-7"]


def test_publish_needs_an_existing_queue_unless_create(b: Broker, root: Path) -> None:
    plain = Broker(root)
    with pytest.raises(QueueNotFound):
        plain.publish("nope", "x")
    with pytest.raises(QueueNotFound):
        plain.consume("nope")
    assert not (root / "nope").exists()
    plain.publish("nope", "x", create=True)
    assert b.counts("nope")["ready"] == 1


def test_a_broker_made_with_create_creates_missing_queues(b: Broker, root: Path) -> None:
    # The seed documented broker(root, create=True) as creating "both the root
    # directory and queue directories if they don't already exist".
    assert b.consume("fresh") == []
    b.publish("other", "x")
    assert b.list_queues() == ["fresh", "other"]


def test_the_seed_example_runs_verbatim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's Python example, word for word (the path made absolute under tmp_path)."""
    monkeypatch.chdir(tmp_path)
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        from ddmq import broker
        b = broker('/path/to/rootdir'.lstrip('/'), create=True)
        b.publish(queue='queue_name', message='Hello World!')
        msg = b.consume(queue='queue_name')
        print(msg[0].message)
    assert out.getvalue() == "Hello World!\n"


def test_create_list_delete_queues(b: Broker, root: Path) -> None:
    b.create_queue("a")
    b.create_queue("b.c", message_timeout=5)
    with pytest.raises(QueueExists):
        b.create_queue("a")
    b.create_queue("a", exist_ok=True)
    assert b.list_queues() == ["a", "b.c"]
    assert b.settings("b.c")["message_timeout"] == 5
    b.publish("a", "x")
    b.delete_queue("a")
    assert b.list_queues() == ["b.c"]
    assert [n for n in os.listdir(root) if n.startswith(".")] == []
    with pytest.raises(QueueNotFound):
        b.delete_queue("a")


def test_delete_refuses_foreign_files_unless_forced(b: Broker, root: Path) -> None:
    b.create_queue("q")
    (root / "q" / "results.csv").write_text("precious")
    with pytest.raises(ForeignFiles, match="results.csv"):
        b.delete_queue("q")
    assert (root / "q" / "results.csv").exists()
    b.delete_queue("q", force=True)
    assert not (root / "q").exists()


def test_counts_ack_nack_and_peek(b: Broker) -> None:
    b.create_queue("q")
    for i in range(3):
        b.publish("q", i)
    assert [m.message for m in b.peek("q", n=10)] == [0, 1, 2]
    first, second = b.consume("q", n=2)
    assert b.counts("q") == {"ready": 1, "work": 2, "dead": 0}
    assert [m.message for m in b.peek("q", n=10, state="work")] == [0, 1]
    b.ack(first)
    assert b.nack(second) == "ready"
    assert b.counts("q") == {"ready": 2, "work": 0, "dead": 0}
    again = b.consume("q")[0]
    assert again.message == 1 and again.delivery_count == 2 and again.priority == 0


def test_ack_twice_is_lease_lost(b: Broker) -> None:
    b.publish("q", "x", create=True)
    [m] = b.consume("q")
    receipt = m.receipt
    b.ack(m)
    with pytest.raises(LeaseLost):
        b.ack(receipt, queue="q")


def test_ack_by_receipt_string_from_another_broker(b: Broker, root: Path) -> None:
    b.publish("q", "x", create=True)
    [m] = b.consume("q")
    other = Broker(root)
    other.extend(m.receipt, 100, queue="q")
    other.ack(m.receipt, queue="q")
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 0}


def test_bad_receipts_are_usage_errors(b: Broker) -> None:
    b.create_queue("q")
    for bad in ["../../etc/passwd", "x", "0" * 32 + ".zz", ""]:
        with pytest.raises(UsageError):
            b.ack(bad, queue="q")


def test_nack_without_requeue_dead_letters_with_reason(b: Broker, root: Path) -> None:
    b.publish("q", "x", create=True)
    [m] = b.consume("q")
    assert b.nack(m, requeue=False) == "dead"
    [dead] = b.peek("q", state="dead")
    assert dead.message == "x"
    names = os.listdir(root / "q" / "dead")
    reason = json.loads((root / "q" / "dead" / [n for n in names if n.endswith(".reason")][0]).read_text())
    assert reason["reason"] == "rejected" and any(".rejected." in n for n in names)


def test_requeue_limit_dead_letters(b: Broker) -> None:
    b.publish("q", "x", create=True, requeue_limit=2)
    for _ in range(2):
        assert b.nack(b.consume("q")[0]) == "ready"
    assert b.nack(b.consume("q")[0]) == "dead"
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 1}


def test_requeue_false_dead_letters_at_once(b: Broker) -> None:
    b.publish("q", "x", create=True, requeue=False)
    assert b.nack(b.consume("q")[0]) == "dead"


def test_expired_lease_is_requeued_by_clean(b: Broker) -> None:
    b.publish("q", "x", create=True, requeue_prio=3)
    [m] = b.consume("q", lease=0.05)
    time.sleep(0.1)
    report = b.clean("q")
    assert report.requeued == 1
    with pytest.raises(LeaseLost):
        b.ack(m)
    [again] = b.consume("q")
    assert again.id == m.id and again.delivery_count == 2 and again.priority == 3


def test_live_lease_is_not_requeued(b: Broker) -> None:
    b.publish("q", "x", create=True)
    [m] = b.consume("q", lease=60)
    assert b.clean("q").requeued == 0
    b.ack(m)


def test_extend_keeps_a_lease_alive(b: Broker) -> None:
    b.publish("q", "x", create=True)
    [m] = b.consume("q", lease=0.2)
    b.extend(m, 60)
    time.sleep(0.3)
    assert b.clean("q").requeued == 0
    b.ack(m)


def test_extend_after_requeue_is_lease_lost(b: Broker) -> None:
    b.publish("q", "x", create=True)
    [m] = b.consume("q", lease=0.01)
    time.sleep(0.05)
    b.clean("q")
    with pytest.raises(LeaseLost):
        b.extend(m, 10)


def test_per_message_timeout_sets_the_lease(b: Broker) -> None:
    b.create_queue("q", message_timeout=600)
    b.publish("q", "x", message_timeout=0.05)
    [m] = b.consume("q")
    assert m.lease_expires < time.time_ns() + 1e9
    time.sleep(0.1)
    assert b.clean("q").requeued == 1


def test_consumers_clean_at_most_every_clean_interval(b: Broker, root: Path) -> None:
    b.create_queue("q", clean_interval=3600)
    b.consume("q")  # stamps the queue
    (root / "q" / "work" / "notes.txt").write_text("only a clean pass dead-letters this")
    assert b.consume("q") == []
    assert b.counts("q")["dead"] == 0  # the first consume stamped the queue; no clean pass yet
    os.utime(root / "q" / "clean.stamp", (0, 0))
    # A client reads the stamp only when the queue can be due, and other clients
    # only make it newer; a stamp made old by hand is seen by a new client.
    assert Broker(root).consume("q") == []
    assert b.counts("q")["dead"] == 1


def test_consume_that_finds_nothing_ready_requeues_expired_leases(b: Broker) -> None:
    """Without waiting for the next clean pass (clean_interval): a lease of 2 s used to come back after 24 s."""
    b.create_queue("q", clean_interval=3600)
    b.publish("q", "x")
    b.consume("q", lease=0.01)
    time.sleep(0.05)
    [again] = b.consume("q")
    assert again.message == "x" and again.requeues == 1


def test_consume_looks_for_expired_leases_at_most_once_a_second(b: Broker) -> None:
    from ddmq.housekeeping import EXPIRY_CHECK_EVERY

    b.create_queue("q", clean_interval=3600)
    assert b.consume("q") == []  # looked, found none
    b.publish("q", "x")
    b.consume("q", lease=0.01)
    time.sleep(0.05)
    assert b.consume("q") == []  # looked less than a second ago
    time.sleep(EXPIRY_CHECK_EVERY)
    assert [m.message for m in b.consume("q")] == ["x"]


def test_purge(b: Broker) -> None:
    b.create_queue("q")
    for i in range(4):
        b.publish("q", i)
    b.nack(b.consume("q")[0], requeue=False)
    assert b.purge("q") == 3
    assert b.purge("q", dead=True) == 1
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 0}


def test_clean_removes_only_old_temp_files(b: Broker, root: Path) -> None:
    b.create_queue("q")
    tmp = root / "q" / "tmp"
    old, new = tmp / f"{new_message_id()}.tmp", tmp / f"{new_message_id()}.tmp"
    old.write_text("half")
    new.write_text("half")
    os.utime(old, (time.time() - 7200,) * 2)
    assert b.clean().temp_removed == 1
    assert not old.exists() and new.exists()


def test_clean_removes_only_names_ddmq_makes(b: Broker, root: Path) -> None:
    # A member's own file in tmp/, and a directory: not ddmq's, so not clean's to remove.
    b.create_queue("q")
    tmp = root / "q" / "tmp"
    (tmp / "notes.txt").write_text("mine")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "f").write_text("mine")
    for path in (tmp / "notes.txt", tmp / "sub" / "f", tmp / "sub"):
        os.utime(path, (time.time() - 7200,) * 2)
    assert b.clean().temp_removed == 0
    assert (tmp / "notes.txt").read_text() == "mine" and (tmp / "sub" / "f").read_text() == "mine"


def test_settings_layering(b: Broker, root: Path) -> None:
    (root / "ddmq.yaml").write_text("layout: 2\npriority: 7\nmessage_timeout: 30\n")
    b.create_queue("q")
    (root / "q" / "ddmq.yaml").write_text("message_timeout: 5\n")
    assert b.settings("q")["priority"] == 7 and b.settings("q")["message_timeout"] == 5
    m = b.publish("q", "x", priority=2)
    assert m.priority == 2 and m.message_timeout == 5


def test_settings_errors_name_file_and_key(b: Broker, root: Path) -> None:
    b.create_queue("q")
    (root / "q" / "ddmq.yaml").write_text("message_timout: 5\n")
    with pytest.raises(SettingsError, match=r"q/ddmq.yaml.*message_timout"):
        b.publish("q", "x")
    (root / "q" / "ddmq.yaml").write_text("priority: high\n")
    with pytest.raises(SettingsError, match="'priority'"):
        b.publish("q", "x")
    with pytest.raises(SettingsError):
        b.create_queue("r", durable="yes")


def test_a_running_client_sees_settings_edits_within_settings_max_age(b: Broker, root: Path) -> None:
    from ddmq.queuedir import SETTINGS_MAX_AGE

    b.create_queue("q")
    assert b.publish("q", "before").priority == 999
    (root / "q" / "ddmq.yaml").write_text("priority: 5\n")
    time.sleep(SETTINGS_MAX_AGE + 0.05)
    assert b.publish("q", "after").priority == 5


def test_a_queue_deleted_by_another_client_is_not_found_at_once(root: Path) -> None:
    # Both clients have the queue's settings (and the consumer a listing)
    # cached when it is deleted: the failing operation itself must tell.
    Broker(root, create=True)
    consumer, publisher = Broker(root), Broker(root)
    publisher.publish("q", "one", create=True)
    publisher.publish("q", "two")
    assert [m.message for m in consumer.consume("q")] == ["one"]
    Broker(root).delete_queue("q", force=True)
    with pytest.raises(QueueNotFound):
        consumer.consume("q")
    with pytest.raises(QueueNotFound):
        publisher.publish("q", "three")
    assert not (root / "q").exists()


def test_large_messages_round_trip(b: Broker) -> None:
    body = "x" * (3 << 20) + "end"  # read in growing chunks, not one 64 KiB read
    b.publish("q", body, create=True)
    [m] = b.consume("q")
    assert m.message == body


def test_two_brokers_share_a_queue(root: Path) -> None:
    a, c = Broker(root, create=True), Broker(root)
    a.publish("q", "from a", create=True)
    [m] = c.consume("q")
    assert m.message == "from a"
    assert a.consume("q") == []


def test_consumer_sees_new_higher_priority_within_listing_age(b: Broker) -> None:
    from ddmq.queuedir import LISTING_MAX_AGE

    b.create_queue("q")
    for i in range(5):
        b.publish("q", f"low{i}", priority=500)
    assert b.consume("q")[0].message == "low0"
    Broker(b.root).publish("q", "urgent", priority=0)
    time.sleep(LISTING_MAX_AGE + 0.05)
    assert b.consume("q")[0].message == "urgent"


def _settle(directory: Path) -> None:
    """Make a directory and those under it look untouched for a minute (as an idle queue's ready/ is)."""
    old = time.time() - 60
    for path in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        os.utime(path, (old, old))


def test_idle_waiter_stats_ready_instead_of_listing_it(b: Broker, root: Path, mocker) -> None:
    b.create_queue("q")
    for i in range(50):
        b.publish("q", {"job": i})
    never = lambda m: False  # noqa: E731
    waiter = Broker(root)
    _settle(root / "q" / "ready")
    assert waiter.consume("q", match=never) == []  # lists once, reads each payload once
    listings = mocker.spy(atomic, "listdir")
    for _ in range(3):
        assert waiter.consume("q", match=never) == []
    assert [c.args[0] for c in listings.call_args_list if c.args[0].path.endswith("ready")] == []
    # Anything entering ready/ changes its mtime: the next poll lists again and finds it.
    b.publish("q", {"job": "wanted"})
    assert [m.message for m in waiter.consume("q", match=lambda m: m.message["job"] == "wanted")] == [
        {"job": "wanted"}]


def test_recently_changed_ready_is_listed_on_every_poll(b: Broker, root: Path, mocker) -> None:
    # A change in the same timestamp tick as the one before leaves the mtime as
    # it was, so a directory changed within SETTLED_AFTER proves nothing.
    b.create_queue("q")
    b.publish("q", "x")
    never = lambda m: False  # noqa: E731
    assert b.consume("q", match=never) == []
    listings = mocker.spy(atomic, "listdir")
    assert b.consume("q", match=never) == [] and b.consume("q", match=never) == []
    assert len([c for c in listings.call_args_list if c.args[0].path.endswith("ready")]) == 2


def test_a_listing_filtered_for_one_predicate_is_not_trusted_for_another(b: Broker, root: Path) -> None:
    b.create_queue("q")
    b.publish("q", "x")
    _settle(root / "q" / "ready")
    assert b.consume("q", match=lambda m: False) == []
    assert [m.message for m in b.consume("q")] == ["x"]


def test_consume_with_match_leaves_others_undisturbed(b: Broker, root: Path, mocker) -> None:
    b.create_queue("q")
    for i in range(5):
        b.publish("q", {"job": i})
    wanted = lambda m: m.message["job"] == 3  # noqa: E731
    [m] = b.consume("q", match=wanted, ack=True)
    assert m.message == {"job": 3}
    assert b.counts("q") == {"ready": 4, "work": 0, "dead": 0}
    assert b.consume("q", match=wanted) == []  # reads job 4, the one not yet looked at
    reads = mocker.spy(atomic, "read_file")
    assert b.consume("q", match=wanted) == [] and b.peek("q", n=9, match=wanted) == []
    assert reads.call_count == 0, "rejected payloads are never read twice by one predicate"
    assert [m.message["job"] for m in b.peek("q", n=9, match=lambda m: m.message["job"] > 1)] == [2, 4]


def test_release_restores_the_message_unchanged(b: Broker) -> None:
    b.publish("q", "a", create=True, priority=7, requeue_limit=0)
    b.publish("q", "b", priority=8)
    [m] = b.consume("q")
    b.release(m)
    with pytest.raises(LeaseLost):
        b.ack(m.id, queue="q")
    [again] = b.consume("q")
    assert again.message == "a" and again.priority == 7 and again.delivery_count == 1


def test_ids_and_tokens_never_repeat_across_threads_or_a_fork() -> None:
    """They are cut from a pool of random bytes: a forked child must not reuse its parent's."""
    import threading

    from ddmq.layout import new_message_id, new_token

    for _ in range(20):  # the parent has some left over from its last batch
        new_message_id(), new_token()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, (new_message_id() + new_token()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 44).decode()
    os.close(read), os.close(write)
    assert len(child) == 44 and child[:32] != new_message_id() and child[32:] != new_token()

    got: list[list[str]] = [[] for _ in range(8)]

    def take(into: list[str]) -> None:
        for _ in range(3000):
            into.append(new_message_id())
            into.append(new_token())

    threads = [threading.Thread(target=take, args=(into,)) for into in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [x for into in got for x in into]
    assert len(set(every)) == len(every) == 8 * 6000


def test_a_forked_child_publishes_under_its_own_pid(b: Broker) -> None:
    b.publish("q", "parent", create=True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            Broker(b.root).publish("q", "child")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    got = {m.message: m.pid for m in b.consume("q", n=2, ack=True)}
    assert got == {"parent": os.getpid(), "child": pid}


def _delete_and_recreate(root: str, seconds: float) -> None:
    other = Broker(root)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            other.delete_queue("q", force=True)
        except ddmq.QueueNotFound:
            pass
        other.create_queue("q", exist_ok=True)


def test_create_exist_ok_never_says_exists_while_another_client_deletes(b: Broker, root: Path) -> None:
    """create_queue(exist_ok=True) racing a delete made the queue again or found it; never QueueExists."""
    import multiprocessing

    b.create_queue("q")
    racer = multiprocessing.get_context("fork").Process(target=_delete_and_recreate, args=(str(root), 3.0))
    racer.start()
    false_exists = 0
    try:
        while racer.is_alive():
            try:
                Broker(root).create_queue("q", exist_ok=True)
            except ddmq.QueueExists:
                false_exists += 1
            except ddmq.StorageError:
                pass  # the other client's rename or removal in progress under our feet
    finally:
        racer.join()
    assert false_exists == 0


def test_clean_of_the_root_cleans_every_queue_it_can(b: Broker, root: Path, tmp_path: Path) -> None:
    # A member replaced one queue's tmp/ by a link: that queue is refused, the others still cleaned.
    b.create_queue("broken")
    b.create_queue("fine")
    b.publish("fine", "x")
    b.consume("fine", lease=0.01)
    time.sleep(0.05)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.rename(root / "broken" / "tmp", root / "broken" / ".tmp.aside")
    os.symlink(elsewhere, root / "broken" / "tmp")
    with pytest.raises(ddmq.StorageError, match="refusing to use"):
        Broker(root).clean()
    assert b.counts("fine") == {"ready": 1, "work": 0, "dead": 0}


def test_a_message_belongs_to_the_queue_it_lies_in_whatever_its_payload_says(b: Broker, root: Path) -> None:
    # A payload planted (or a queue directory renamed) with another queue's name in it:
    # ack, nack and release find the message where it was claimed, so it is never stranded in work/.
    b.create_queue("q")
    b.create_queue("other")
    b.publish("q", "x")
    [path] = (root / "q" / "ready").rglob("*.msg")
    path.write_text(path.read_text().replace('"queue": "q"', '"queue": "other"'))
    [peeked] = b.peek("q")
    assert peeked.queue == "q"
    [msg] = b.consume("q")
    assert msg.queue == "q"
    b.ack(msg)
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 0}


def test_settings_object_has_exactly_the_schema_keys_typed() -> None:
    """Settings is built from the one schema: a key added to SCHEMA without an attribute (or the reverse) fails here."""
    from ddmq.settings import DEFAULTS, SCHEMA, Settings

    assert Settings.__slots__ == tuple(SCHEMA)
    assert set(Settings.__annotations__) == set(SCHEMA)
    settings = Settings(DEFAULTS)
    assert settings.as_dict() == DEFAULTS
    assert settings.overridden({"priority": 3}).priority == 3 and settings.priority == DEFAULTS["priority"]
    with pytest.raises(AttributeError):
        settings.message_timout  # noqa: B018 - a typo is an error, not a silent default


def test_lease_fields_live_on_the_lease(b: Broker) -> None:
    """ack and nack end the lease but keep what was delivered; release undoes the claim."""
    b.create_queue("q")
    for end, (receipt, expires, count) in ((b.ack, (None, True, 1)), (b.nack, (None, True, 1)),
                                           (b.release, (None, False, 0))):
        b.publish("q", "x")
        [msg] = b.consume("q")
        assert msg.receipt is not None and msg.lease is not None and msg.lease.name is not None
        end(msg)
        assert (msg.receipt, msg.lease_expires is not None, msg.delivery_count) == (receipt, expires, count)
        b.purge("q")
