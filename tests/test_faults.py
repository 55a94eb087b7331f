"""Faults at every step of every transition: SIGKILL, filesystem errors, a real full and read-only disk.

Each operation is first run once while :class:`crashpoint.Injector` numbers
the primitive calls it makes under the root (exclusive create, write, fsync,
close, rename, unlink, mkdir, rmdir, chmod, the listings and stats, and the
steps of ``shutil.rmtree``). Then, on a fresh copy of the same starting state
per step, it is run again and stopped exactly at that step:

- killed with SIGKILL in a forked child process (no Python cleanup runs:
  what is on disk is what a crashed node leaves behind) just before the step,
  which is also the instant just after the previous one, after the last step,
  and half-way through each write;
- or the step fails with ENOSPC, EIO, ESTALE, EACCES, EROFS or EDQUOT
  (installed with pytest-mock; close() only where it can fail, on a
  descriptor written through), or it succeeds but reports ENOENT/ESTALE (an
  NFS client whose reply was lost).

After each one the state is checked at once (no partial message visible,
every message in exactly one place, an operation that raised did not happen
and one that returned did), then recovered the way a cluster would: another
Broker waits out the leases, cleans, removes temporary leftovers once they are
old, and consumes everything. Every message must come out exactly once,
delivered or dead-lettered with a reason, and the queue must work afterwards.

The cases run in a directory on /dev/shm when there is one: an fsync costs
milliseconds on a disk, and what these tests check does not depend on the disk.
The last tests use a real 2 MiB tmpfs (root only): filled up until ENOSPC,
and remounted read-only. They skip without root or mount, unless
DDMQ_REQUIRE_FUSE=1 (CI) makes that a failure.
"""
from __future__ import annotations

import collections
import copy
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from click.testing import CliRunner

from ddmq import Broker, DdmqError, LeaseLost, PartlyPublished, StorageError
from ddmq.cli import cli
from ddmq.layout import WorkName, new_message_id, new_token, parse_ready, parse_work
from ddmq.message import CorruptMessage, decode
from tests.support.capability import need
from tests.support.crashpoint import ALL_STEPS, CRASH_STEPS, Call, Injector
from tests.support.queuefiles import queue_files, ready_entries, ready_files, ready_path, state_entries, state_files

Q = "q"
LEASE = 0.05  # leases taken in these tests: recovery waits them out
OLD = 7200.0  # backdating by this makes a leftover look abandoned (clean waits an hour)

# Files planted in a queue that are not messages, told apart by their content.
CORRUPT = b'{"format": 1, "id": "cut off in the midd'
FOREIGN = b"a file some user dropped into work/\n"
STRAY = b"a file some user dropped into ready/\n"
PLANTED = {CORRUPT: "<corrupt>", FOREIGN: "<foreign>", STRAY: "<stray>"}
HIDDEN_PREFIXES = (".create.", ".delete.", ".clock.", ".ddmq.yaml.")

ERRNOS = ["ENOSPC", "EIO", "ESTALE", "EACCES", "EROFS", "EDQUOT"]
REASON_WORDS = {
    errno.ENOSPC: ("no space left on device",),
    errno.EDQUOT: ("quota",),
    errno.EIO: ("i/o error", "input/output error"),
    errno.ESTALE: ("stale file handle",),
    errno.EACCES: ("permission denied",),
    errno.EROFS: ("read-only",),
    errno.ENOENT: ("no such file",),
}


# ------------------------------------------------------------- the scenarios
def rel(path: str | None, root: str) -> str:
    return os.path.relpath(path, root) if path else ""


def renamed(src: str, dst: str, not_suffix: str | None = None) -> Callable[[Call, str], bool]:
    """A rename from a path starting with ``src`` to one starting with ``dst`` (relative to the root)."""
    def match(c: Call, root: str) -> bool:
        return (c.prim == "rename" and rel(c.path, root).startswith(src) and rel(c.dst, root).startswith(dst)
                and not (not_suffix and c.dst.endswith(not_suffix)))
    match.__doc__ = f"rename {src}* -> {dst}*"
    return match


def step(prim: str, where: str = "", flags: int = 0) -> Callable[[Call, str], bool]:
    def match(c: Call, root: str) -> bool:
        return c.prim == prim and rel(c.path, root).startswith(where) and (c.flags or 0) & flags == flags
    match.__doc__ = f"{prim} {where}*"
    return match


def live(*bodies: str) -> dict[str, str]:
    return {b: "live" for b in bodies}


@dataclass
class Scenario:
    """One operation, the state it starts from, and where every message must end up."""

    name: str
    build: Callable[[Broker, Path], dict]  # makes the starting state; returns what op needs (held messages)
    op: Callable[[Broker, dict], Any]
    # queue -> {body: "live" | "dead:REASON"} (each exactly once), or None: the queue must not exist.
    # ``done``: how many of the operation's decisive steps happened (one, for all but a batch).
    expect: Callable[[bool], dict[str, dict[str, str] | None]]
    decisive: Callable[[Call, str], bool] | None = None
    # Raising means it did not happen; returning means it did (if claims(returned value)) or did not.
    contract: bool = False
    claims: Callable[[Any], bool] = lambda result: True
    # For a batch (several decisive steps): how many the outcome, returned or raised, says happened.
    reported: Callable[[Any, BaseException | None], int] | None = None
    # A consume that raises leaves nothing leased to nobody: a message hidden in work/ until its
    # lease expires (message_timeout, often hours) is not "consumable after the fault is removed".
    gives_back: bool = False
    steps: tuple[Callable[[Call, str], bool], ...] = ()  # must be among the crash points (coverage proof)
    check: Callable[[Path, dict, Any], list[str]] | None = None  # the returned value against the disk
    after: Callable[[Broker, bool], list[str]] | None = None  # extra checks after recovery

    def __str__(self) -> str:
        return self.name


def _queue_ab(b: Broker, root: Path, **a_settings: Any) -> dict:
    b.create_queue(Q, clean_interval=3600)  # no clean of its own inside the operations under test
    b.publish(Q, "a", priority=1, **a_settings)
    b.publish(Q, "b", priority=2)
    b.clean(Q)
    return {}


def _queue_a(b: Broker, root: Path) -> dict:
    b.create_queue(Q, clean_interval=3600)
    b.publish(Q, "a")
    b.clean(Q)
    return {}


def _holding_a(b: Broker, root: Path, **a_settings: Any) -> dict:
    _queue_ab(b, root, **a_settings)
    [msg] = b.consume(Q, lease=LEASE)
    assert msg.message == "a"
    return {"msg": msg}


def _backdate(path: Path) -> None:
    os.utime(path, (time.time() - OLD,) * 2, follow_symlinks=False)


def _dirty(b: Broker, root: Path) -> dict:
    """Everything clean has to deal with: expired leases, foreign and corrupt files, old leftovers."""
    b.create_queue(Q, clean_interval=3600)
    b.publish(Q, "a")
    b.publish(Q, "c", requeue=False)
    b.publish(Q, "b")
    assert [m.message for m in b.consume(Q, n=2, lease=0.001)] == ["a", "c"]
    qdir = root / Q
    (qdir / "work" / "stray.bin").write_bytes(FOREIGN)
    expired = WorkName(999, time.time_ns(), new_message_id(), 0, time.time_ns() - 10**9, new_token())
    (qdir / "work" / str(expired)).write_bytes(CORRUPT)
    (qdir / "ready" / "+stray").write_bytes(STRAY)
    orphan = qdir / "tmp" / f"{new_message_id()}.tmp"
    orphan.write_bytes(b'{"format": 1, "id": "half')
    _backdate(orphan)
    (root / f".create.{new_token()}.x").mkdir()  # crashed creates and deletes, long ago
    doomed = root / f".delete.{new_token()}.y"
    doomed.mkdir()
    (doomed / "f").write_bytes(b"x")
    for hidden in root.glob(".*.*.[xy]"):
        _backdate(hidden)
    time.sleep(0.002)
    return {}


def _corrupt_first(b: Broker, root: Path) -> dict:
    b.create_queue(Q, clean_interval=3600)
    b.publish(Q, "b")
    b.clean(Q)
    ready_path(root / Q / "ready", f"000000.{time.time_ns():020d}.{new_message_id()}.0.msg").write_bytes(CORRUPT)
    return {}


def _stray_first(b: Broker, root: Path) -> dict:
    b.create_queue(Q, clean_interval=3600)
    b.publish(Q, "b")
    b.clean(Q)
    (root / Q / "ready" / "+stray").write_bytes(STRAY)  # sorts before every ready name
    return {}


def _two_queues(b: Broker, root: Path) -> dict:
    b.create_queue(Q, clean_interval=3600)
    b.publish(Q, "a")
    b.create_queue("gone", clean_interval=3600)
    b.publish("gone", "x")
    b.publish("gone", "y")
    b.consume("gone", lease=LEASE)  # one of them leased: work/ has a file too
    return {}


def _check_consumed(root: Path, ctx: dict, result: Any) -> list[str]:
    """What consume returned is leased in work/, and nothing else is."""
    leases = {(w.id, w.token) for n in os.listdir(root / Q / "work") if (w := parse_work(n))}
    returned = {tuple(m.receipt.split(".")) for m in result}
    if leases != returned:
        return [f"consume returned {[m.message for m in result]} but work/ holds {len(leases)} leases"]
    return []


def _check_extended(root: Path, ctx: dict, result: Any) -> list[str]:
    msg = ctx["msg"]
    names = [parse_work(n) for n in os.listdir(root / Q / "work")]
    if not any(w and w.id == msg.id and w.expires == result for w in names):
        return [f"extend returned {result} but no lease in work/ expires then: {os.listdir(root / Q / 'work')}"]
    return []


def _check_released(root: Path, ctx: dict, result: Any) -> list[str]:
    msg = ctx["msg"]
    names = [parse_ready(n) for n in ready_files(root / Q / "ready")]
    if not any(r and r.id == msg.id and r.requeues == msg.requeues and r.priority == msg.priority for r in names):
        return ["release returned but the message is not back in ready/ under its old name"]
    return []


def _check_nacked(root: Path, ctx: dict, result: Any) -> list[str]:
    state = {"ready": "ready", "dead": "dead"}[result]
    if not any(ctx["msg"].id in n for n in state_files(root / Q, state)):
        return [f"nack returned {result!r} but the message is not in {state}/"]
    return []


def _recreate(queue: str, **settings: Any) -> Callable[[Broker, bool], list[str]]:
    def after(b: Broker, done: bool) -> list[str]:
        if queue not in b.list_queues():
            b.create_queue(queue, **settings)  # nothing a crash left may stand in the way
        got = b.settings(queue)
        return [f"queue {queue} has settings {got}"] if any(got[k] != v for k, v in settings.items()) else []
    return after


BATCH = ("n1", "n2", "n3")


def _published_count(result: Any, exc: BaseException | None) -> int:
    """How many messages of a batch publish_many says are in the queue: all, PartlyPublished's count, or none."""
    if exc is None:
        return len(result)
    return exc.published if isinstance(exc, PartlyPublished) else 0


def _check_batch(root: Path, ctx: dict, result: Any) -> list[str]:
    ready = {parse_ready(n).id for n in ready_files(root / Q / "ready") if parse_ready(n)}
    return [f"publish_many returned {m.id} ({m.message}), which is not in ready/" for m in result if m.id not in ready]


TO_READY = renamed("q/work/", "q/ready/")
TO_DEAD = renamed("q/", "q/dead/", not_suffix=".reason")
EXCL = os.O_CREAT | os.O_EXCL

SCENARIOS = [
    Scenario(
        "publish", _queue_ab, lambda b, c: b.publish(Q, "new"),
        lambda done: {Q: live("a", "b", *(["new"] if done else []))},
        decisive=renamed("q/tmp/", "q/ready/"), contract=True,
        steps=(step("open", "q/tmp/", EXCL), step("write", "q/tmp/"), step("fsync", "q/tmp/"),
               renamed("q/tmp/", "q/ready/"), step("fsync", "q/ready"))),
    Scenario(
        "publish_many", _queue_ab, lambda b, c: b.publish_many(Q, list(BATCH)),
        lambda done: {Q: live("a", "b", *BATCH[:done])},
        decisive=renamed("q/tmp/", "q/ready/"), reported=_published_count, check=_check_batch,
        steps=(step("open", "q/tmp/", EXCL), step("write", "q/tmp/"), step("syncfs", "q/tmp"),
               renamed("q/tmp/", "q/ready/"), step("fsync", "q/ready"))),
    Scenario(
        "consume", _queue_a, lambda b, c: b.consume(Q, lease=LEASE), lambda done: {Q: live("a")},
        gives_back=True, steps=(renamed("q/ready/", "q/work/"), step("read", "q/work/")), check=_check_consumed),
    Scenario(
        "consume+ack", _queue_a, lambda b, c: b.consume(Q, lease=LEASE, ack=True),
        lambda done: {Q: live(*([] if done else ["a"]))},
        decisive=step("unlink", "q/work/"), contract=True, claims=bool, gives_back=True,  # []: lost the race
        steps=(renamed("q/ready/", "q/work/"), step("read", "q/work/"), step("unlink", "q/work/"))),
    Scenario(
        "ack", _holding_a, lambda b, c: b.ack(c["msg"]), lambda done: {Q: live("b", *([] if done else ["a"]))},
        decisive=step("unlink", "q/work/"), contract=True, steps=(step("unlink", "q/work/"),)),
    Scenario(
        "nack", _holding_a, lambda b, c: b.nack(c["msg"]), lambda done: {Q: live("a", "b")},
        decisive=TO_READY, contract=True, steps=(TO_READY,), check=_check_nacked),
    Scenario(
        "nack-reject", _holding_a, lambda b, c: b.nack(c["msg"], requeue=False),
        lambda done: {Q: {"a": "dead:rejected", "b": "live"} if done else live("a", "b")},
        decisive=TO_DEAD, contract=True, check=_check_nacked,
        steps=(TO_DEAD, step("open", "q/tmp/", EXCL), step("write", "q/tmp/"),
               renamed("q/tmp/", "q/dead/"))),
    Scenario(
        "nack-limit", lambda b, r: _holding_a(b, r, requeue_limit=0), lambda b, c: b.nack(c["msg"]),
        lambda done: {Q: {"a": "dead:requeue-limit", "b": "live"}},
        decisive=TO_DEAD, contract=True, steps=(TO_DEAD,), check=_check_nacked),
    Scenario(
        "release", _holding_a, lambda b, c: b.release(c["msg"]), lambda done: {Q: live("a", "b")},
        decisive=TO_READY, contract=True, steps=(TO_READY,), check=_check_released),
    Scenario(
        "extend", _holding_a, lambda b, c: b.extend(c["msg"], LEASE), lambda done: {Q: live("a", "b")},
        decisive=renamed("q/work/", "q/work/"), contract=True, steps=(renamed("q/work/", "q/work/"),),
        check=_check_extended),
    Scenario(
        "clean", _dirty, lambda b, c: b.clean(),
        lambda done: {Q: {"a": "live", "b": "live", "c": "dead:expired", "<corrupt>": "dead:corrupt",
                          "<foreign>": "dead:foreign", "<stray>": "dead:foreign"}},
        steps=(renamed("q/tmp/.stamp.", "q/clean.stamp"), TO_READY, renamed("q/work/", "q/dead/"),
               renamed("q/ready/", "q/dead/"), step("unlink", "q/tmp/"), step("rmdir", ".create."),
               step("rmdir", ".delete."))),
    Scenario(
        "dead-letter-corrupt", _corrupt_first, lambda b, c: b.consume(Q, lease=LEASE),
        lambda done: {Q: {"<corrupt>": "dead:corrupt", "b": "live"}},
        steps=(renamed("q/ready/", "q/work/"), step("read", "q/work/"), renamed("q/work/", "q/dead/"),
               renamed("q/tmp/", "q/dead/"))),
    Scenario(
        "dead-letter-foreign", _stray_first, lambda b, c: b.consume(Q, lease=LEASE),
        lambda done: {Q: {"<stray>": "dead:foreign", "b": "live"}},
        steps=(renamed("q/ready/+stray", "q/dead/"), renamed("q/tmp/", "q/dead/"))),
    Scenario(
        "create_queue", _queue_ab, lambda b, c: b.create_queue("new", priority=5),
        lambda done: {Q: live("a", "b"), "new": {} if done else None},
        decisive=renamed(".create.", "new"), contract=True, after=_recreate("new", priority=5),
        steps=(step("mkdir", ".create."), step("open", ".create.", EXCL), step("fsync", ".create."),
               renamed(".create.", "new"))),
    Scenario(
        "delete_queue", _two_queues, lambda b, c: b.delete_queue("gone"),
        lambda done: {Q: live("a"), "gone": None if done else live("x", "y")},
        decisive=renamed("gone", ".delete."), contract=True, after=_recreate("gone"),
        steps=(renamed("gone", ".delete."), step("unlink", ".delete."), step("rmdir", ".delete."))),
]


# ------------------------------------------------------------------- checks
def visible_queues(root: Path) -> list[str]:
    return [n for n in os.listdir(root) if not n.startswith(".") and n != "ddmq.yaml"]


def label(data: bytes) -> str:
    if data in PLANTED:
        return PLANTED[data]
    try:
        return str(decode(data).message)
    except CorruptMessage:
        return f"<garbage {data[:40]!r}>"


def instant_problems(root: Path, sc: Scenario, done: int) -> list[str]:
    """Right after the fault: only complete queues and complete messages are visible, each once."""
    problems = []
    found: dict[str, collections.Counter] = {}
    for q in visible_queues(root):
        qdir = root / q
        missing = [e for e in ("ddmq.yaml", "ready", "work", "dead", "tmp") if not os.path.lexists(qdir / e)]
        if missing:
            problems.append(f"an incomplete queue {q!r} is visible (missing {missing})")
            continue
        labels: collections.Counter = collections.Counter()
        for state, parse in (("ready", parse_ready), ("work", parse_work), ("dead", None)):
            for path in state_entries(qdir, state):
                name = path.name
                if name.startswith("."):
                    continue
                data = path.read_bytes()
                if state == "dead" and name.endswith(".reason"):
                    try:
                        json.loads(data)
                    except ValueError:
                        problems.append(f"a partial .reason file is visible: {name}: {data[:60]!r}")
                    continue
                if data not in PLANTED:
                    try:
                        msg = decode(data)
                    except CorruptMessage as exc:
                        problems.append(f"a partial message is visible in {q}/{state}/{name}: {exc}")
                        continue
                    if parse is not None and (parse(name) is None or parse(name).id != msg.id):
                        problems.append(f"{q}/{state}/{name} is not the name of message {msg.id}")
                labels[label(data)] += 1
        found[q] = labels
    for q, exp in sc.expect(done).items():
        if exp is None:
            if q in found or os.path.lexists(root / q):
                problems.append(f"queue {q!r} exists although the operation did not create it / deleted it")
        elif q not in found:
            problems.append(f"queue {q!r} is missing")
        elif found[q] != collections.Counter(list(exp)):
            problems.append(f"{q}: ready/work/dead hold {dict(found[q])}, expected each of {sorted(exp)} once")
    return problems


def outcome_problems(sc: Scenario, inj: Injector, result: Any, exc: BaseException | None, code: int) -> list[str]:
    """The operation returned, or raised a DdmqError saying what and why; and it did what it said."""
    problems = []
    if inj.fired is None:
        problems.append("the fault was never injected: the operation took another path than when counted")
    if exc is not None and not isinstance(exc, DdmqError):
        tb = traceback.extract_tb(exc.__traceback__)
        origin = next((f for f in reversed(tb) if "/ddmq/" in f.filename), tb[-1] if tb else None)
        problems.append(f"raised a bare {type(exc).__name__}: {exc!r}"
                        + (f" from {Path(origin.filename).name}:{origin.lineno} {origin.line}" if origin else ""))
    if isinstance(exc, StorageError) and inj.fired is not None:
        text = str(exc)
        named = set()
        for p in (inj.fired.path, inj.fired.dst):
            if p:
                named |= {p, os.path.dirname(p)}
                m = re.match(r"\.(?:create|delete)\.[0-9a-f]{12}\.(.+)", rel(p, inj.root).split(os.sep)[0])
                if m:
                    named.add(os.path.join(inj.root, m[1]))  # the queue being created or deleted
        if not any(p in text for p in named):
            problems.append(f"StorageError {text!r} does not name the failing path {inj.fired.rel(inj.root)}")
        if not any(w in text.lower() for w in REASON_WORDS[code]):
            problems.append(f"StorageError {text!r} does not say {REASON_WORDS[code][0]!r}")
        if "\n" in text:
            problems.append(f"StorageError is not one line: {text!r}")
    if sc.reported is not None and sc.decisive is not None:
        happened = sum(c.performed and sc.decisive(c, inj.root) for c in inj.calls)
        said = sc.reported(result, exc)
        if said != happened:
            problems.append(f"{'returned' if exc is None else f'raised {type(exc).__name__}({exc})'}, which says "
                            f"{said} happened, but {happened} did: a retry would lose or duplicate messages")
    elif sc.contract and sc.decisive is not None:
        done = inj.performed(lambda c: sc.decisive(c, inj.root))
        if exc is None and sc.claims(result) and not done:
            problems.append(f"returned {result!r} although its decisive step did not happen")
        if exc is None and not sc.claims(result) and done:
            problems.append(f"returned {result!r} although its decisive step happened")
        if exc is not None and done and not (isinstance(exc, LeaseLost) and inj.fired and inj.fired.prim == "unlink"):
            # (LeaseLost after an ack whose unlink reply was lost is what the protocol says: the
            # consumer must not assume its ack took effect. A rename's reply is checked, rule 4.)
            problems.append(f"raised {type(exc).__name__}({exc}) although it happened: the caller will retry "
                            "and the operation is done twice")
    return problems


def wait_for_leases(roots: list[Path]) -> None:
    latest = 0
    for root in roots:
        for q in visible_queues(root):
            for name in os.listdir(root / q / "work"):
                work = parse_work(name)
                if work is not None:
                    latest = max(latest, work.expires)
    delay = latest / 1e9 - time.time() + 0.005
    if delay > 0:
        time.sleep(delay)


def leftovers(root: Path) -> list[Path]:
    found = [root / n for n in os.listdir(root) if n.startswith(HIDDEN_PREFIXES)]
    for q in visible_queues(root):
        found += [root / q / "tmp" / n for n in os.listdir(root / q / "tmp")]
    return found


def recover(root: Path, sc: Scenario, done: int) -> list[str]:
    """Another client cleans up after the fault (leases already expired); everything comes out once."""
    problems = []
    b = Broker(root)
    now = time.time()
    fresh = [p for p in leftovers(root) if os.lstat(p).st_mtime > now - 600]
    b.clean()
    for p in fresh:
        if not os.path.lexists(p):
            problems.append(f"clean removed {rel(str(p), str(root))}, which was not old yet")
    for q in visible_queues(root):
        held = os.listdir(root / q / "work")
        if held:
            problems.append(f"{q}/work/ not empty after the leases expired and clean ran: {held}")
    for p in leftovers(root):
        _backdate(p)
    b.clean()
    rest = leftovers(root)
    if rest:
        problems.append(f"clean left old temporary entries: {[rel(str(p), str(root)) for p in rest]}")

    expected = sc.expect(done)
    visible = set(visible_queues(root))
    if visible - set(expected):
        problems.append(f"unexpected queues {visible - set(expected)}")
    for q, exp in expected.items():
        if exp is None:
            if q in visible:
                problems.append(f"queue {q!r} exists after recovery")
            continue
        if q not in visible:
            problems.append(f"queue {q!r} is gone after recovery")
            continue
        delivered: collections.Counter = collections.Counter()
        while True:
            got = b.consume(q, n=100, ack=True)
            if not got:
                break
            delivered.update(str(m.message) for m in got)
        dead: collections.Counter = collections.Counter()
        names = os.listdir(root / q / "dead")
        for name in names:
            path = root / q / "dead" / name
            reason = name.split(".")[2] if name.count(".") >= 3 else "<no reason>"
            if name.endswith(".reason"):
                record = json.loads(path.read_bytes())
                if name[:-len(".reason")] not in names or record.get("reason") != reason:
                    problems.append(f"{q}/dead/{name} does not describe a dead letter beside it")
                continue
            dead[(label(path.read_bytes()), reason)] += 1
        want_live = collections.Counter(k for k, v in exp.items() if v == "live")
        want_dead = collections.Counter((k, v[5:]) for k, v in exp.items() if v.startswith("dead:"))
        if delivered != want_live:
            problems.append(f"{q}: delivered {dict(delivered)}, expected {dict(want_live)} (each exactly once)")
        if dead != want_dead:
            problems.append(f"{q}: dead letters {dict(dead)}, expected {dict(want_dead)}")
    if sc.after is not None:
        problems += sc.after(b, done)
    for q in b.list_queues():  # fully usable afterwards
        b.publish(q, "probe")
        got = [m.message for m in b.consume(q, n=10, ack=True)]
        if got != ["probe"] or b.counts(q)["ready"] + b.counts(q)["work"] != 0:
            problems.append(f"{q} is not usable after recovery: consumed {got}, counts {b.counts(q)}")
    return problems


# ------------------------------------------------------------------ running
@pytest.fixture
def work_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the copies of the starting state go: /dev/shm if usable (fast), else tmp_path."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)):
        yield tmp_path
        return
    base = Path(tempfile.mkdtemp(prefix="ddmq-faults-", dir=shm))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Template:
    root: Path
    ctx: dict
    cases: list[Path] = field(default_factory=list)

    def copy(self, name: str) -> Path:
        """A copy of the starting state. Files are hard links: ddmq never changes a file in place
        (payloads are immutable, the clean stamp is replaced by a rename), so copies cannot interfere."""
        dst = self.root.parent / name
        shutil.copytree(self.root, dst, symlinks=True, copy_function=os.link)
        self.cases.append(dst)
        return dst


def template(sc: Scenario, base: Path) -> Template:
    root = base / "template"
    b = Broker(root, create=True)
    return Template(root, sc.build(b, root))


def count_steps(sc: Scenario, tpl: Template, select: frozenset[str]) -> tuple[list[Call], str]:
    root = tpl.copy("counted")
    tpl.cases.pop()
    b = Broker(root)
    inj = Injector(root, select)
    with inj.installed():
        sc.op(b, copy.deepcopy(tpl.ctx))
    assert inj.calls, f"{sc.name} made no filesystem call under the root"
    return inj.calls, inj.root


def run_killed(root: Path, sc: Scenario, ctx: dict, at: int, when: str) -> int:
    """Run the operation in a forked child that SIGKILLs itself at step ``at``; its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            b = Broker(root)
            with Injector(root, CRASH_STEPS, at=at, when=when).installed():
                sc.op(b, ctx)
            os._exit(0)
        except BaseException:  # noqa: BLE001
            try:
                (root.parent / f"{root.name}.child-error").write_text(traceback.format_exc())
            finally:
                os._exit(1)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("sc", SCENARIOS, ids=str)
def test_sigkill_at_every_step(sc: Scenario, work_dir: Path) -> None:
    tpl = template(sc, work_dir)
    calls, croot = count_steps(sc, tpl, CRASH_STEPS)
    shown = [f"{i}: {c.rel(croot)}" for i, c in enumerate(calls)]
    for must in sc.steps:
        assert any(must(c, croot) for c in calls), f"{sc.name} no longer makes the step {must.__doc__}: {shown}"
    decisive = [i for i, c in enumerate(calls) if sc.decisive and sc.decisive(c, croot)]
    assert bool(decisive) == (sc.decisive is not None), f"decisive step not found in {shown}"

    # Every call that changes the disk is a numbered step, so "after step i" and "before step
    # i+1" are the same instant for every other process: kill before each step, after the last
    # one, and in the middle of each write (a short write).
    points = [(i, "before") for i in range(len(calls))] + [(len(calls) - 1, "after")]
    points += [(i, "mid") for i, c in enumerate(calls) if c.prim == "write"]
    cases = []
    for i, when in points:
        root = tpl.copy(f"{i}-{when}")
        status = run_killed(root, sc, tpl.ctx, i, when)
        where = f"kill {when} {shown[i]}"
        problems = []
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            err = root.parent / f"{root.name}.child-error"
            problems.append(f"not killed there (status {status}): "
                            f"{err.read_text() if err.exists() else 'it finished first'}")
        done = sum(d < i or (d == i and when != "before") for d in decisive)
        problems += instant_problems(root, sc, done)
        cases.append((where, root, done, problems))
    wait_for_leases(tpl.cases)
    failures = []
    for where, root, done, problems in cases:
        failures += [f"{where}: {p}" for p in problems + recover(root, sc, done)]
    assert not failures, f"{len(failures)} problems in {sc.name}:\n" + "\n".join(failures)


def can_fail(c: Call) -> bool:
    """close(2) reports an error only for a file written through the descriptor (a deferred
    write-back error on NFS); closing a read-only or directory descriptor does not fail."""
    return not (c.prim == "close" and (c.flags or 0) & os.O_ACCMODE == os.O_RDONLY)


def run_faults(sc: Scenario, tmp_path: Path, mocker: Any, code: int, when: str,
               which: Callable[[Call], bool] = can_fail) -> list[str]:
    """Fail each step ``which`` accepts (``before``: instead of it; ``after``: it happened) with ``code``."""
    tpl = template(sc, tmp_path)
    calls, croot = count_steps(sc, tpl, ALL_STEPS)
    cases = []
    for i, call in enumerate(calls):
        if not which(call):
            continue
        root = tpl.copy(f"{i}")
        b = Broker(root)
        ctx = copy.deepcopy(tpl.ctx)
        inj = Injector(root, ALL_STEPS, at=i, when=when, action=code)
        result, exc = None, None
        before = set(leftovers(root))
        leased = set(os.listdir(root / Q / "work"))
        with inj.installed(mocker):
            try:
                result = sc.op(b, ctx)
            except Exception as e:  # noqa: BLE001 - judged below
                exc = e
        problems = outcome_problems(sc, inj, result, exc, code)
        if exc is not None and sc.gives_back and set(os.listdir(root / Q / "work")) - leased:
            problems.append(f"raised {type(exc).__name__}({exc}) but left the message it claimed leased in "
                            "work/, hidden from every consumer until the lease expires")
        for p in set(leftovers(root)) - before:  # a failed step cleans up after itself
            # (unless the fault hit that very removal, which is best effort: clean does it later)
            removing = inj.fired and (inj.fired.prim in ("unlink", "rmdir") or p.name.startswith(".delete."))
            if not (removing and (inj.fired.path + os.sep).startswith(str(p) + os.sep)):
                problems.append(f"left {rel(str(p), str(root))} behind")
        done = sum(c.performed and sc.decisive(c, inj.root) for c in inj.calls) if sc.decisive else 0
        problems += instant_problems(root, sc, done)
        if exc is None and sc.check is not None:
            problems += sc.check(root, ctx, result)
        where = f"{errno.errorcode[code]} {when} {i}: {call.rel(croot)} ({type(exc).__name__ if exc else 'returned'})"
        cases.append((where, root, done, problems))
    assert cases, "no step to fail"
    wait_for_leases(tpl.cases)
    failures = []
    for where, root, done, problems in cases:
        failures += [f"{where}: {p}" for p in problems + recover(root, sc, done)]
    return failures


@pytest.mark.parametrize("err", ERRNOS)
@pytest.mark.parametrize("sc", SCENARIOS, ids=str)
def test_storage_error_at_every_step(sc: Scenario, err: str, work_dir: Path, mocker: Any) -> None:
    failures = run_faults(sc, work_dir, mocker, getattr(errno, err), "before")
    assert not failures, f"{len(failures)} problems in {sc.name} with {err}:\n" + "\n".join(failures)


@pytest.mark.parametrize("err", ["ENOENT", "ESTALE"])
@pytest.mark.parametrize("sc", SCENARIOS, ids=str)
def test_lost_reply_after_rename_or_unlink(sc: Scenario, err: str, work_dir: Path, mocker: Any) -> None:
    """An NFS client whose reply was lost sees ENOENT/ESTALE for a rename or unlink that happened.

    Protocol rule 4: ddmq then checks the destination and counts the rename
    as won, so an operation that raises did not happen and one that returns did.
    """
    failures = run_faults(sc, work_dir, mocker, getattr(errno, err), "after",
                          lambda c: c.prim in ("rename", "unlink") and ".delete." not in c.path)
    assert not failures, f"{len(failures)} problems in {sc.name} with {err} after the call:\n" + "\n".join(failures)


def test_eacces_on_rename_is_a_lost_race_only_if_the_directories_are_writable(b: Broker, root: Path,
                                                                              mocker: Any) -> None:
    b.publish(Q, "a", create=True)
    first = Injector(root, ALL_STEPS, at=renamed("q/ready/", "q/work/"), action=errno.EACCES)
    with first.installed(mocker):
        assert b.consume(Q, lease=LEASE) == []  # writable: someone else got it (sshfs says EACCES)
    assert first.fired is not None and b.counts(Q) == {"ready": 1, "work": 0, "dead": 0}
    mocker.patch("os.access", return_value=False)  # as for a user without write permission
    second = Injector(root, ALL_STEPS, at=renamed("q/ready/", "q/work/"), action=errno.EACCES)
    with second.installed(mocker), pytest.raises(StorageError, match="permission denied") as info:
        Broker(root).consume(Q, lease=LEASE)
    assert str(root / Q / "ready") in str(info.value) and second.fired is not None
    mocker.stopall()
    assert [m.message for m in Broker(root).consume(Q, ack=True)] == ["a"]


# ---------------------------------------------------------------- the CLI
def _runner() -> CliRunner:
    try:  # click < 8.2 mixes stderr into stdout unless told not to
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


CLI_CASES = [
    (["publish", Q, "hello"], step("write", "q/tmp/"), "ENOSPC"),
    (["consume", Q], step("read", "q/work/"), "EIO"),
    (["ack", Q, "{receipt}"], step("unlink", "q/work/"), "EROFS"),
    (["nack", Q, "{receipt}"], TO_READY, "EDQUOT"),
    (["extend", Q, "{receipt}", "--seconds", "60"], renamed("q/work/", "q/work/"), "EIO"),
    (["create", "new"], step("mkdir", ".create."), "EACCES"),
    (["delete", Q], step("listdir", "q"), "EIO"),
    (["clean"], step("open", "q/tmp/.stamp.", EXCL), "EDQUOT"),
    (["publish", Q, "hello"], step("close", "q/tmp/"), "EIO"),  # a write-back error reported by close
]


@pytest.mark.parametrize("args,where,err", CLI_CASES, ids=[f"{a[0]}-{e}" for a, _, e in CLI_CASES])
def test_cli_prints_one_line_for_a_storage_error(args: list[str], where: Callable, err: str, b: Broker,
                                                 root: Path, mocker: Any) -> None:
    b.create_queue(Q, clean_interval=3600)
    for body in ("a", "b"):
        b.publish(Q, body)
    b.clean(Q)
    [held] = b.consume(Q, lease=60)
    code = getattr(errno, err)
    inj = Injector(root, ALL_STEPS, at=where, action=code)
    with inj.installed(mocker):
        result = _runner().invoke(cli, ["-r", str(root), *(a.format(receipt=held.receipt) for a in args)])
    assert inj.fired is not None, "the fault was not injected"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        "".join(traceback.format_exception(*result.exc_info)))
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    [line] = result.stderr.splitlines()
    assert line.startswith("ddmq: cannot ") and str(root) in line, line
    assert any(w in line.lower() for w in REASON_WORDS[code]), line
    counts = Broker(root).counts(Q)
    assert counts["ready"] + counts["work"] == 2 and counts["dead"] == 0, counts


def test_killed_ddmq_commands_recover(root: Path, b: Broker) -> None:
    """The real ``ddmq`` command, killed mid-publish (before the rename) and mid-consume (after the read)."""
    b.create_queue(Q, clean_interval=3600)
    b.publish(Q, "a")
    b.clean(Q)

    def killed(step: str, when: str, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "tests.support.crashpoint", str(root), "crash", step, when,
                               "--", "-r", str(root), *args], capture_output=True, text=True)
        assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stdout, proc.stderr)
        return proc.stdout

    # publish prints the new id before the message becomes visible (so output that
    # cannot be written publishes nothing): killed in between, it printed the id of
    # a message that was never published, and died; consume prints nothing it has not read.
    printed = killed("rename:q/tmp/", "before", "publish", Q, "new")
    [orphan] = os.listdir(root / Q / "tmp")  # written, never renamed
    assert orphan.endswith(".tmp") and json.loads((root / Q / "tmp" / orphan).read_bytes())["message"] == "new"
    assert printed in ("", orphan[:-len(".tmp")] + "\n"), printed
    assert [parse_ready(n) is not None for n in ready_files(root / Q / "ready")] == [True]
    assert killed("read:q/work/", "after", "consume", Q, "--no-ack", "--lease", "0.2") == ""
    assert Broker(root).counts(Q) == {"ready": 0, "work": 1, "dead": 0}
    time.sleep(0.25)
    b2 = Broker(root)
    b2.clean(Q)
    assert os.listdir(root / Q / "tmp") == [orphan]  # not old yet
    for p in leftovers(root):
        _backdate(p)
    b2.clean()
    assert leftovers(root) == []
    [m] = b2.consume(Q, ack=True)
    assert m.message == "a" and m.delivery_count == 2
    assert b2.consume(Q) == []


# ------------------------------------------------------- a real full disk
def _mount_failure() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount command"
    return None


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    reason = _mount_failure()
    if reason is None:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            reason = f"cannot mount a tmpfs: {proc.stderr.strip()}"
    need("fuse", reason and f"the full/read-only disk tests cannot run: {reason}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _remount(mnt: Path, how: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{how}", str(mnt)], check=True, capture_output=True)


def test_full_disk(small_fs: Path) -> None:
    root = small_fs / "root"
    b = Broker(root, create=True)
    b.create_queue(Q, clean_interval=3600)
    big = "x" * 150_000
    published = []
    with pytest.raises(StorageError) as info:
        for i in range(100):
            b.publish(Q, f"{i}:{big}")
            published.append(i)
    assert 5 < len(published) < 20, published
    assert info.value.errno == errno.ENOSPC and "no space left on device" in str(info.value), info.value
    assert str(root / Q) in str(info.value)
    assert os.listdir(root / Q / "tmp") == []  # the partial file was removed
    ready = ready_entries(root / Q / "ready")
    assert len(ready) == len(published)
    for path in ready:  # nothing partial visible
        assert decode(path.read_bytes()).id == parse_ready(path.name).id
    # consuming works on the full disk and frees space; then publishing works again
    freed = [int(m.message.split(":")[0]) for m in b.consume(Q, n=2, ack=True)]
    assert freed == published[:2]
    b.publish(Q, f"again:{big}")
    rest = [m.message.split(":")[0] for m in Broker(root).consume(Q, n=100, ack=True)]
    assert rest == [str(i) for i in published[2:]] + ["again"]
    assert Broker(root).counts(Q) == {"ready": 0, "work": 0, "dead": 0}


def test_read_only_filesystem(small_fs: Path) -> None:
    root = small_fs / "root"
    b = Broker(root, create=True)
    b.create_queue(Q)
    for body in ("a", "b", "c"):
        b.publish(Q, body)
    [held] = b.consume(Q, lease=60)
    before = queue_files(root / Q)
    wording = []  # checked last, so that a wording problem does not hide the rest
    _remount(small_fs, "ro")
    try:
        fresh = Broker(root)
        for what, call in [("publish", lambda: fresh.publish(Q, "d")), ("consume", lambda: fresh.consume(Q)),
                           ("consume", lambda: b.consume(Q)), ("ack", lambda: b.ack(held)),
                           ("nack", lambda: b.nack(held)), ("extend", lambda: b.extend(held, 60))]:
            with pytest.raises(StorageError) as info:
                call()
            text = str(info.value)
            assert info.value.errno == errno.EROFS and str(root) in text, (what, text)
            if "read-only file system" not in text.lower():
                wording.append(f"{what}: {text}")
        env = {k: v for k, v in os.environ.items() if k != "DDMQ_ROOT"}
        proc = subprocess.run([str(Path(sys.executable).parent / "ddmq"), "-r", str(root), "publish", Q, "d"],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith("ddmq: cannot ") and "Traceback" not in proc.stderr, proc.stderr
        if "read-only file system" not in proc.stderr.lower():
            wording.append(f"ddmq publish: {proc.stderr.strip()}")
    finally:
        _remount(small_fs, "rw")
    assert queue_files(root / Q) == before
    b.ack(held)
    assert sorted(m.message for m in Broker(root).consume(Q, n=10, ack=True)) == ["b", "c"]
    b.publish(Q, "d")
    assert [m.message for m in b.consume(Q, ack=True)] == ["d"]
    assert not wording, "the reason should read 'Read-only file system' (strerror(EROFS)):\n" + "\n".join(wording)
