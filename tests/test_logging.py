"""The ``ddmq`` logger speaks on the rare paths a person debugging a cluster needs to see."""
from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import pytest

from ddmq import Broker


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="ddmq")
    return caplog


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ddmq" and r.levelno == level]


def test_library_prints_nothing_by_itself() -> None:
    from ddmq.log import logger

    assert any(isinstance(h, logging.NullHandler) for h in logger().handlers)


def test_dead_lettering_is_logged_with_the_reason(b: Broker, root: Path, records: pytest.LogCaptureFixture) -> None:
    b.create_queue("q")
    (root / "q" / "ready" / "notes.txt").write_text("mine")
    assert b.consume("q") == []
    [line] = messages(records, logging.WARNING)
    assert "dead-lettered" in line and "ready/notes.txt" in line and "foreign" in line


def test_expired_lease_requeue_is_logged(b: Broker, records: pytest.LogCaptureFixture) -> None:
    b.create_queue("q")
    b.publish("q", "x")
    b.consume("q", lease=0.001)
    time.sleep(0.01)
    assert b.clean("q").requeued == 1
    [line] = messages(records, logging.INFO)
    assert "requeued" in line and "lease expired" in line


def test_lost_race_is_logged_at_debug(root: Path, records: pytest.LogCaptureFixture) -> None:
    first, second = Broker(root, create=True), Broker(root)
    first.create_queue("q")
    first.publish("q", "a")
    first.publish("q", "b")
    assert [m.message for m in first.consume("q")] == ["a"]  # its listing still holds b
    assert [m.message for m in second.consume("q")] == ["b"]
    assert first.consume("q") == []
    assert any("lost race" in line for line in messages(records, logging.DEBUG))


def test_clock_correction_is_logged(b: Broker, records: pytest.LogCaptureFixture, mocker) -> None:
    import ddmq.clock as clock

    real = time.time_ns
    mocker.patch.object(clock.time, "time_ns", side_effect=lambda: real() - 30 * 10**9)  # this host 30 s behind
    b.create_queue("q")
    b.publish("q", "x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        b.consume("q")
    [line] = messages(records, logging.WARNING)
    assert "clock correction" in line and "by -30.0 s" in line
