"""The operator's view of a queue: stats, every entry with its reason, one message by id, repair."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from ddmq import Broker, NotFound, QueueNotFound, UsageError
from tests.support.queuefiles import message_path


@pytest.fixture
def q(b: Broker) -> str:
    b.create_queue("q", requeue_limit=1, clean_interval=3600)
    return "q"


def dead_by_requeue_limit(b: Broker, q: str, body: str = "x") -> str:
    """A message nacked until its requeue limit (1) sends it to dead/."""
    msg = b.publish(q, body)
    b.nack(b.consume(q)[0])
    assert b.nack(b.consume(q)[0]) == "dead"
    return msg.id


def test_stats_show_the_oldest_ready_age_and_expired_leases(b: Broker, q: str) -> None:
    assert b.stats(q) == {"ready": 0, "work": 0, "dead": 0, "oldest_ready_age": None, "expired_leases": 0}
    b.publish(q, "old")
    time.sleep(0.2)
    b.publish(q, "new", priority=0)  # served first, but not the oldest
    b.publish(q, "leased")
    b.consume(q, lease=0.01)  # "new"
    time.sleep(0.05)
    found = b.stats(q)
    assert (found["ready"], found["work"], found["expired_leases"]) == (2, 1, 1)
    assert 0.2 <= found["oldest_ready_age"] < 10


def test_dead_letters_are_listed_with_reason_time_and_requeue_count(b: Broker, q: str, root: Path) -> None:
    message_id = dead_by_requeue_limit(b, q)
    (root / q / "ready" / "notes.txt").write_text("not a message")
    b.consume(q)  # dead-letters the foreign file
    entries = {e.reason: e for e in b.entries(q, "dead")}
    assert set(entries) == {"requeue-limit", "foreign"}
    limit = entries["requeue-limit"]
    assert (limit.id, limit.requeues, limit.detail) == (message_id, 1, "requeued 1 times")
    assert limit.message is not None and limit.message.message == "x" and limit.message.requeues == 1
    assert abs(limit.dead_at - time.time_ns()) < 60 * 10**9
    foreign = entries["foreign"]
    assert foreign.id is None and foreign.message is None and "not a ddmq" in foreign.detail + str(foreign.problem)


def test_peek_of_dead_letters_shows_the_requeue_count(b: Broker, q: str) -> None:
    dead_by_requeue_limit(b, q)
    [msg] = b.peek(q, state="dead")
    assert (msg.requeues, msg.delivery_count) == (1, 2)


def test_entries_include_files_that_are_not_messages(b: Broker, q: str, root: Path) -> None:
    b.publish(q, "fine")
    (root / q / "ready" / "notes.txt").write_text("not a message")
    good = b.publish(q, "to break")
    message_path(root / q / "ready", good.id).write_text("{broken")
    found = {e.id: e for e in b.entries(q, "ready")}
    assert len(found) == 3 and found[None].problem.startswith("not a ddmq ready name")
    assert "JSON" in found[good.id].problem and found[good.id].message is None


def test_show_finds_a_message_in_any_state(b: Broker, q: str) -> None:
    ready = b.publish(q, "r")
    assert b.show(q, ready.id).state == "ready"
    [held] = b.consume(q, lease=60)
    shown = b.show(q, held.id)
    assert (shown.state, shown.lease_expires, shown.message.message) == ("work", held.lease_expires, "r")
    b.nack(held, requeue=False)
    shown = b.show(q, held.id)
    assert (shown.state, shown.reason) == ("dead", "rejected")
    b.purge(q, dead=True)
    with pytest.raises(NotFound, match="no message"):
        b.show(q, held.id)
    with pytest.raises(UsageError, match="32 hex"):
        b.show(q, "../etc")


def test_requeue_dead_puts_dead_letters_back_with_a_fresh_count(b: Broker, q: str, root: Path) -> None:
    first = dead_by_requeue_limit(b, q, "first")
    second = dead_by_requeue_limit(b, q, "second")
    requeued, skipped = b.requeue_dead(q, [second])
    assert (requeued, skipped) == ([second], [])
    [back] = b.consume(q)
    assert (back.id, back.requeues) == (second, 0)
    b.ack(back)
    assert b.requeue_dead(q) == ([first], [])
    assert not list((root / q / "dead").iterdir())  # the .reason records went with them
    with pytest.raises(NotFound, match="not dead"):
        b.requeue_dead(q, [first])


def test_requeue_dead_skips_corrupt_and_foreign_files(b: Broker, q: str, root: Path) -> None:
    (root / q / "ready" / "notes.txt").write_text("not a message")
    broken = b.publish(q, "x")
    message_path(root / q / "ready", broken.id).write_text("{broken")
    b.consume(q)
    requeued, skipped = b.requeue_dead(q)
    assert requeued == [] and len(skipped) == 2
    assert b.requeue_dead(q, [broken.id]) == ([broken.id], [])  # asked for by id: requeued anyway


def test_an_operator_releases_a_lease_by_message_id(b: Broker, q: str) -> None:
    msg = b.publish(q, "x")
    b.consume(q, lease=3600)
    b.release(msg.id, q)
    [again] = b.consume(q)
    assert (again.id, again.requeues) == (msg.id, 0)


def test_settings_show_where_each_came_from_and_change_atomically(b: Broker, q: str, root: Path) -> None:
    (root / "ddmq.yaml").write_text("layout: 2\npriority: 5\n")
    sources = b.settings_sources(q)
    assert sources["priority"] == (5, str(root / "ddmq.yaml"))
    assert sources["requeue_limit"] == (1, str(root / q / "ddmq.yaml"))
    assert sources["durable"] == (True, "default")
    b.set_settings(q, message_timeout=5, unset=["requeue_limit"])
    assert b.settings(q)["message_timeout"] == 5 and b.settings(q)["requeue_limit"] is None
    assert b.settings_sources(q)["clean_interval"] == (3600, str(root / q / "ddmq.yaml"))
    assert not list((root / q / "tmp").iterdir())
    with pytest.raises(UsageError, match="unknown setting"):
        b.set_settings(q, unset=["nope"])
    with pytest.raises(UsageError, match="message_timeout"):
        b.set_settings(q, message_timeout=-1)
    with pytest.raises(QueueNotFound):
        b.set_settings("missing", priority=1)


def test_a_bare_id_that_is_nowhere_is_not_found_and_a_lost_lease_is_lease_lost(b: Broker, q: str) -> None:
    from ddmq import LeaseLost

    never = "0" * 32
    for operation in (b.ack, b.release, b.nack):
        with pytest.raises(NotFound, match="no message"):
            operation(never, q)
    msg = b.publish(q, "x")
    [held] = b.consume(q, lease=0.01)
    time.sleep(0.05)
    b.clean(q)  # requeued: the id is in ready/ again
    with pytest.raises(LeaseLost):
        b.ack(msg.id, q)
    with pytest.raises(LeaseLost):
        b.ack(held)
