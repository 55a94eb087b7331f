"""ready/ as a tree (docs/protocol.md, "ready/ as a tree"), and the layout version in the root marker.

Real directories and real processes; pytest-mock only to pick publish
times (so that messages land in chosen slots without waiting minutes) and
to inject the one race a test is about.
"""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddmq import Broker
from ddmq import atomic as atomic_mod
from ddmq.errors import SettingsError, StorageError, UnknownLayout
from ddmq.layout import LAYOUT, SHARD_LEVELS, ready_name, shard_of
from ddmq.shards import SHARD_GRACE
from tests.support.queuefiles import ready_files, ready_path

SLOT_NS = 1 << 26
BAND_NS = 1 << 37
ERA_NS = 1 << 47


def tree(ready: Path) -> dict[int, list[str]]:
    """The directories of ready/'s tree by depth (1: eras, 2: bands, 3: slots)."""
    found: dict[int, list[str]] = {1: [], 2: [], 3: []}
    for path in ready.rglob("*"):
        if path.is_dir():
            found[len(path.relative_to(ready).parts)].append(str(path.relative_to(ready)))
    return found


@pytest.fixture
def b(tmp_path: Path) -> Broker:
    broker = Broker(tmp_path / "root", create=True)
    broker.create_queue("q")
    return broker


def publish_at(b: Broker, mocker, times: list[int], queue: str = "q", **kwargs) -> list[str]:
    """Publish one message per publish time given (ns), in that order; their ids."""
    clock = iter(times)
    mocker.patch("ddmq.transitions.publish_time", side_effect=lambda: next(clock))
    ids = [b.publish(queue, f"m{i}", **kwargs).id for i in range(len(times))]
    mocker.stopall()
    return ids


# ------------------------------------------------------------------ placement
def test_a_message_lies_in_the_slot_its_name_says(b: Broker) -> None:
    msg = b.publish("q", "x")
    ready = Path(b.root) / "q" / "ready"
    [path] = [p for p in ready.rglob("*.msg")]
    era, band, slot = path.relative_to(ready).parts[:SHARD_LEVELS]
    assert (era, band, slot) == shard_of(path.name) and msg.id in path.name
    assert era.startswith(f"{msg.priority:06d}.")


def test_order_holds_across_eras_bands_slots_and_priorities(b: Broker, mocker) -> None:
    now = time.time_ns()
    # published newest first, each in another slot, band or era; then one with a better priority
    times = [now - 2 * ERA_NS, now - 3 * BAND_NS, now - 5 * SLOT_NS, now - 10 * ERA_NS]
    ids = publish_at(b, mocker, sorted(times, reverse=True))
    [urgent] = publish_at(b, mocker, [now], priority=5)
    assert len(tree(Path(b.root) / "q" / "ready")[3]) == 5
    got = [m.id for m in b.consume("q", n=10, ack=True)]
    assert got == [urgent] + ids[::-1]


def test_the_head_is_found_by_listing_four_directories_however_many_slots(b: Broker, mocker) -> None:
    now = time.time_ns()
    publish_at(b, mocker, [now - 1000 * ERA_NS + i * BAND_NS for i in range(3)] +
               [now - i * SLOT_NS for i in range(1, 400)])
    opened = mocker.spy(atomic_mod, "open_dir")
    fresh = Broker(b.root)
    [msg] = fresh.consume("q", ack=True)
    assert msg.message == "m0"
    ready = os.path.join(b.root, "q", "ready")
    in_tree = [c.args[0].join(c.args[1]) for c in opened.call_args_list if c.args[0].path.startswith(ready)]
    path = shard_of(ready_name(msg.priority, msg.published, msg.id))
    assert in_tree == [os.path.join(ready, *path[:depth]) for depth in (1, 2, 3)], \
        "the first era, its first band, its first slot: nothing else of the 402 slots"


# ------------------------------------------------------------------- removal
def test_a_consumer_removes_empty_closed_directories_and_keeps_open_ones(b: Broker, mocker) -> None:
    now = time.time_ns()
    old = now - int(SHARD_GRACE * 1e9) - ERA_NS
    publish_at(b, mocker, [old, old + SLOT_NS, now])
    ready = Path(b.root) / "q" / "ready"
    assert [m.message for m in b.consume("q", n=3, ack=True)] == ["m0", "m1", "m2"]
    assert b.consume("q") == []  # the next walk finds the old slots empty: removed
    left = tree(ready)
    assert left[3] == ["/".join(shard_of(ready_files_name(now)))], "only the current slot stays"
    assert ready_files(ready) == []


def ready_files_name(published: int) -> str:
    return f"{999:06d}.{published:020d}.{'0' * 32}.0.msg"


def test_clean_removes_empty_closed_directories(b: Broker, mocker) -> None:
    old = time.time_ns() - int(SHARD_GRACE * 1e9) - ERA_NS
    publish_at(b, mocker, [old])
    ready = Path(b.root) / "q" / "ready"
    [path] = ready.rglob("*.msg")
    path.unlink()  # as a purge or another consumer would
    b.clean("q")
    assert os.listdir(ready) == []


def test_a_slot_removed_under_a_publisher_is_made_again(b: Broker, mocker) -> None:
    b.publish("q", "first")  # the publisher now holds its slot open
    ready = Path(b.root) / "q" / "ready"
    [first] = ready.rglob("*.msg")
    first.unlink()
    real_rename = os.rename
    removed: list[Path] = []

    def rename(src, dst, *args, **kwargs):  # a consumer removes the empty slot just before the rename
        if not removed and str(dst).endswith(".msg"):
            slot = first.parent
            os.rmdir(slot)
            removed.append(slot)
        return real_rename(src, dst, *args, **kwargs)

    mocker.patch("ddmq.atomic.os.rename", side_effect=rename)
    b.publish("q", "second")
    mocker.stopall()
    assert removed and [m.message for m in b.consume("q", ack=True)] == ["second"]


def test_a_requeue_into_a_removed_slot_is_made_again(b: Broker) -> None:
    b.publish("q", "x")
    [msg] = b.consume("q")
    ready = Path(b.root) / "q" / "ready"
    for depth in (3, 2, 1):  # everything under ready/ removed while the message is held
        for directory in tree(ready)[depth]:
            os.rmdir(ready / directory)
    assert b.nack(msg) == "ready"
    assert [m.message for m in b.consume("q", ack=True)] == ["x"]


def test_a_slot_that_keeps_vanishing_is_one_storage_error_and_publishes_nothing(b: Broker, mocker) -> None:
    real_rename = os.rename

    def rename(src, dst, *args, dst_dir_fd=None, **kwargs):  # a consumer removes the slot every time first
        if str(dst).endswith(".msg"):
            os.rmdir(os.readlink(f"/proc/self/fd/{dst_dir_fd}"))
        return real_rename(src, dst, *args, dst_dir_fd=dst_dir_fd, **kwargs)

    mocker.patch("ddmq.atomic.os.rename", side_effect=rename)
    with pytest.raises(StorageError) as info:
        b.publish("q", "x")
    mocker.stopall()
    assert "was removed 8 times in a row" in str(info.value)
    assert os.listdir(Path(b.root) / "q" / "tmp") == [] and ready_files(Path(b.root) / "q" / "ready") == []


# ------------------------------------------------------ hostile co-tenants
def test_directories_get_readys_bits_whatever_the_umask(tmp_path: Path) -> None:
    b = Broker(tmp_path / "root", create=True)
    b.create_queue("shared", mode=0o660)
    old = os.umask(0o077)
    try:
        b.publish("shared", "x")
    finally:
        os.umask(old)
    ready = tmp_path / "root" / "shared" / "ready"
    want = stat.S_IMODE(ready.stat().st_mode)
    assert want == 0o2770
    for depth in (1, 2, 3):
        for directory in tree(ready)[depth]:
            assert stat.S_IMODE((ready / directory).stat().st_mode) == want, directory


def test_a_link_planted_as_an_era_is_dead_lettered_and_never_followed(b: Broker, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "0000" / "0000").mkdir(parents=True)
    name = ready_files_name(0)
    (outside / "0000" / "0000" / name).write_text("someone's file")
    ready = Path(b.root) / "q" / "ready"
    os.symlink(outside, ready / "000000.000000")
    b.publish("q", "real")
    assert [m.message for m in b.consume("q", ack=True)] == ["real"]
    assert (outside / "0000" / "0000" / name).read_text() == "someone's file"
    assert not (ready / "000000.000000").exists() and b.counts("q")["dead"] == 1


def test_a_message_name_in_a_slot_not_its_own_is_foreign(b: Broker) -> None:
    b.publish("q", "real")
    ready = Path(b.root) / "q" / "ready"
    [real] = ready.rglob("*.msg")
    stray = ready_files_name(time.time_ns() - 3 * ERA_NS)  # belongs three eras back
    (real.parent / stray).write_text("moved here by hand")
    assert [m.message for m in b.consume("q", n=2, ack=True)] == ["real"]
    [dead] = b.entries("q", "dead")
    assert dead.reason == "foreign" and stray in dead.name


def test_a_planted_file_is_read_back_where_ready_path_puts_it(b: Broker) -> None:
    """The test helper plants where the protocol looks (a guard for the tests that use it)."""
    msg = b.publish("q", "x")
    ready = Path(b.root) / "q" / "ready"
    [path] = ready.rglob("*.msg")
    assert ready_path(ready, path.name) == path and msg.id in path.name


# ------------------------------------------------------------ layout version
def test_a_new_root_marker_names_the_layout(b: Broker) -> None:
    assert f"layout: {LAYOUT}\n" in (Path(b.root) / "ddmq.yaml").read_text()


@pytest.mark.parametrize("marker, says", [
    ("priority: 5\n", "has no 'layout:' line"),
    ("", "has no 'layout:' line"),
    ("layout: 1\n", "says layout: 1"),
    ("layout: 3\npriority: 5\n", "says layout: 3"),
])
def test_a_root_of_another_layout_is_refused_in_one_line(tmp_path: Path, marker: str, says: str) -> None:
    root = tmp_path / "root"
    Broker(root, create=True).create_queue("q")
    (root / "ddmq.yaml").write_text(marker)
    with pytest.raises(UnknownLayout, match=says):
        Broker(root)
    out = subprocess.run([sys.executable, "-m", "ddmq", "-r", str(root), "publish", "q", "x"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert out.returncode == 1 and out.stdout == ""
    [line] = out.stderr.splitlines()
    assert says in line and "ddmq.yaml" in line


def test_layout_with_settings_in_the_root_marker_is_read_by_yaml(tmp_path: Path) -> None:
    root = tmp_path / "root"
    Broker(root, create=True)
    (root / "ddmq.yaml").write_text(f"priority: 7\nlayout: {LAYOUT}\n")
    b = Broker(root)
    assert b.publish("q", "x", create=True).priority == 7


def test_layout_in_a_queue_marker_is_refused(b: Broker) -> None:
    (Path(b.root) / "q" / "ddmq.yaml").write_text(f"layout: {LAYOUT}\n")
    with pytest.raises(SettingsError, match="belongs in the root's ddmq.yaml only"):
        b.publish("q", "x")


def test_dir_bits_come_from_what_was_opened(tmp_path: Path) -> None:
    """make_dir_like takes its bits from the model directory's descriptor, not a path."""
    model = tmp_path / "model"
    model.mkdir()
    model.chmod(0o750)
    parent = atomic_mod.open_root(str(tmp_path))
    made = atomic_mod.make_dir_like(parent, "made", atomic_mod.open_dir(parent, "model"))
    assert stat.S_IMODE(os.fstat(made.fd).st_mode) == 0o750
