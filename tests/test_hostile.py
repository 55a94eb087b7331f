"""A hostile member of the group that shares a queue: what they can plant, and the safe outcome.

The setup is the README's: a root of mode 2770 owned by the group
``ddmqtest`` with ``mode: 0660`` in its ``ddmq.yaml``. A member (the
attacker) plants something -- a symbolic link in the place of a state
directory or of the queue itself, a FIFO or a link to /dev/zero as a
settings file, a YAML alias bomb, a message another member cannot read, a
message with an invalid value -- and another member (the victim), or root,
runs ordinary commands. Each test asserts the *safe* outcome:

- nothing outside the root changes (the target tree is snapshotted -- names,
  modes, owners, mtimes, contents -- before each step and compared after);
- no command hangs, and each fails, if it fails, with one line and no traceback;
- no message is lost, and one bad message does not block the queue.

Which error a refusing command gives (StorageError, SettingsError, exit 1)
is not asserted: refusing and skipping are both safe.

Steps that need two users run as real users with the system Python, as in
tests/test_multiuser.py, with its fixture from tests.support.multiuser
(accounts, a copy of the source, and the rule: skip without root unless
DDMQ_REQUIRE_ROOT=1). Tests that need only one user run as whoever runs the
suite.
"""
from __future__ import annotations

import os
import pwd
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import pytest

from ddmq import Broker, DdmqError
from tests.support.hostile import (MSG_ID, READY_LIKE, TMP_LIKE, WORK_LIKE, Tree, alias_bomb, changes, payload,
                                   plant_tree, snapshot)
from tests.support.multiuser import GROUP, MEMBERS, SYSTEM_PYTHON, user_env
from tests.support.queuefiles import message_path, ready_entries

ATTACKER, VICTIM = MEMBERS
TIMEOUT = 15.0  # a command still running after this long counts as hung, and is killed
MEMORY_LIMIT = 1 << 30  # RLIMIT_AS for commands fed a bottomless or exploding settings file


# ------------------------------------------------------------------ running commands
@dataclass
class Ran:
    what: str
    returncode: Optional[int]  # None: still running at the deadline (then killed)
    stdout: str
    stderr: str
    seconds: float

    @property
    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


@dataclass
class Started:
    what: str
    proc: subprocess.Popen
    started: float


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def start(argv: Sequence[object], user: Optional[str] = None, base: Optional[Path] = None,
          umask: Optional[int] = None, limit_memory: bool = False, what: Optional[str] = None) -> Started:
    """Start ``python ARGV`` as ``user`` (None: as this process, with this interpreter).

    The command runs in a session of its own, so that a hung one can be
    killed with everything it started (runuser and its child).
    """
    args = [str(a) for a in argv]
    if user is None:
        python, env = [sys.executable], dict(os.environ)
    else:
        assert base is not None
        python, env = [SYSTEM_PYTHON, "-S"], user_env(base)  # click: see `users`
    cmd = [*python, *args]
    if umask is not None:
        cmd = ["/bin/sh", "-c", f'umask {umask:03o} && exec "$0" "$@"', *cmd]
    if user is not None:
        cmd = [shutil.which("runuser") or "runuser", "-u", user, "--", *cmd]
    label = what or f"{user or 'self'}: {' '.join(args)}"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_limit_memory if limit_memory else None)
    return Started(label, proc, time.monotonic())


def finish(started: Started, deadline: Optional[float] = None) -> Ran:
    """Wait for a started command until ``deadline`` (monotonic; default TIMEOUT after its start)."""
    deadline = started.started + TIMEOUT if deadline is None else deadline
    try:
        out, err = started.proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
        code: Optional[int] = started.proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(started.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = started.proc.communicate()
        code = None
    return Ran(started.what, code, out, err, time.monotonic() - started.started)


def run(argv: Sequence[object], **kwargs) -> Ran:
    return finish(start(argv, **kwargs))


def run_all(commands: Sequence[Started]) -> list[Ran]:
    """Wait for commands started together: a hang costs TIMEOUT once, not once per command."""
    deadline = max(s.started for s in commands) + TIMEOUT
    return [finish(s, deadline) for s in commands]


def untidy(ran: Ran) -> list[str]:
    """What is wrong with how a command ended: a hang, a traceback, more than one line of error."""
    problems = []
    if ran.returncode is None:
        problems.append(f"{ran.what}: still running after {TIMEOUT:.0f} s (hung; killed)")
    if "Traceback" in ran.stderr:
        tail = ran.stderr_lines[-1] if ran.stderr_lines else ""
        problems.append(f"{ran.what}: traceback ({tail})")
    elif len(ran.stderr_lines) > 1:
        problems.append(f"{ran.what}: {len(ran.stderr_lines)} lines on stderr, not one: {ran.stderr_lines[:3]}")
    return problems


def must_succeed(ran: Ran) -> Ran:
    assert ran.returncode == 0, f"setup step failed: {ran.what}: exit {ran.returncode}: {ran.stderr}"
    return ran


# ------------------------------------------------------------------ trees outside the root
# The victim's private directory: plain files, files whose names ddmq's
# grammar could have produced in every state directory, and a subdirectory,
# all two hours old (older than anything housekeeping leaves alone).
PRIVATE: Tree = {
    "notes.txt": b"the victim's notes\n",
    READY_LIKE: payload(MSG_ID, "q", "the victim's own file"),
    WORK_LIKE: b"not a payload",
    TMP_LIKE: b"named like a temporary file of a publish",
    "old": {"thesis.tex": b"\\documentclass{article}\n", "deeper": {"data.csv": b"1,2,3\n"}},
}


def fake_queue(queue: str) -> Tree:
    """A directory that looks like a queue, with something of the victim's in every state directory."""
    return {
        "ddmq.yaml": b"# looks like a ddmq queue\n",
        "clean.stamp": b"",
        "ready": {READY_LIKE: payload(MSG_ID, queue, "the victim's own file"), "notes.txt": b"notes\n"},
        "work": {WORK_LIKE: b"not a payload", "notes.txt": b"notes\n"},
        "dead": {"notes.txt": b"notes\n", "old": {"data.csv": b"1,2,3\n"}},
        "tmp": {TMP_LIKE: b"temporary", "notes.txt": b"notes\n", "old": {"data.csv": b"1,2,3\n"}},
    }


# ------------------------------------------------------------------ a group-shared root
@pytest.fixture(scope="module")
def users(shared: Path) -> Path:
    """The multi-user ``shared`` base, plus click beside the ddmq copy (the system Python has none)."""
    import click

    dest = shared / "src" / "click"
    if not dest.exists():
        shutil.copytree(Path(click.__file__).parent, dest, ignore=shutil.ignore_patterns("__pycache__"))
        for path in [dest, *dest.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    homes = shared / "homes"
    homes.mkdir(exist_ok=True)
    homes.chmod(0o755)
    return shared


@dataclass
class Site:
    """One test's group-shared root (README setup), and a private directory of the victim's outside it."""

    base: Path
    root: Path
    private: Path

    def ddmq(self, user: Optional[str], *args: object, **kwargs) -> Ran:
        """The ``ddmq`` command as ``user`` (None: root, with this interpreter and this checkout)."""
        what = f"{user or 'root'}: ddmq {' '.join(map(str, args))}"
        return run(["-m", "ddmq", "--root", self.root, *args], user=user, base=self.base, what=what, **kwargs)

    def python(self, user: str, code: str) -> Ran:
        return run(["-c", code], user=user, base=self.base)

    def queue(self, name: str) -> Path:
        return self.root / name


@pytest.fixture
def site(users: Path) -> Iterator[Site]:
    root = Path(tempfile.mkdtemp(prefix="root-", dir=users))
    shutil.chown(root, group=GROUP)
    root.chmod(0o2770)
    Broker(root, create=True)
    (root / "ddmq.yaml").write_text("layout: 2\nmode: 0660\n")
    private = Path(tempfile.mkdtemp(prefix=f"{VICTIM}-", dir=users / "homes"))
    try:
        yield Site(users, root, private)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(private, ignore_errors=True)


def swap_for_link(site: Site, queue: str, state: str, target: Path) -> None:
    """As the attacker: move QUEUE/STATE aside and put a link to ``target`` in its place."""
    q = site.queue(queue)
    real, aside = str(q / state), str(q / f".{state}.aside")
    must_succeed(site.python(ATTACKER, f"import os; os.rename({real!r}, {aside!r}); os.symlink({str(target)!r}, {real!r})"))
    assert (q / state).is_symlink()


Step = tuple  # (user or None for root, ddmq arguments...)


def steps_leave_outside_alone(site: Site, target: Path, tree: Tree, steps: Sequence[Step],
                              before_each: Callable[[], None] = lambda: None) -> None:
    """Run each step on a freshly planted ``target``; each must leave it exactly as it was.

    All steps run, so that the failure lists every operation that reached
    outside the root, not only the first.
    """
    problems = []
    for user, *args in steps:
        plant_tree(target, tree, owner=VICTIM)
        before_each()
        before = snapshot(target)
        ran = site.ddmq(user, *args)
        changed = changes(before, snapshot(target))
        if changed:
            shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
            problems.append(f"{ran.what}: outside the root: {shown}")
        problems += untidy(ran)
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ a. QUEUE/tmp -> link
def test_tmp_replaced_by_a_link_housekeeping_deletes_nothing_outside(site: Site) -> None:
    """Housekeeping removes old files in tmp/; through a link it removed the victim's.

    As root, `ddmq clean` deleted files in a mode-700 directory the attacker
    could not even list.
    """
    must_succeed(site.ddmq(VICTIM, "create", "qa", "--clean-interval", "0"))
    must_succeed(site.ddmq(VICTIM, "publish", "qa", "one", "two", "three"))
    swap_for_link(site, "qa", "tmp", site.private)
    steps_leave_outside_alone(site, site.private, PRIVATE, [
        (VICTIM, "consume", "qa"),   # clean_interval 0: every consume does housekeeping
        (VICTIM, "clean", "qa"),
        (VICTIM, "clean"),
        (None, "consume", "qa"),
        (None, "clean", "qa"),
        (None, "clean"),
    ])


# ------------------------------------------------------------------ b. QUEUE/ready -> link
def test_ready_replaced_by_a_link_purge_consume_publish_stay_inside(site: Site) -> None:
    must_succeed(site.ddmq(VICTIM, "create", "qb"))
    must_succeed(site.ddmq(VICTIM, "publish", "qb", "one"))
    swap_for_link(site, "qb", "ready", site.private)
    steps_leave_outside_alone(site, site.private, PRIVATE, [
        (VICTIM, "purge", "qb"),
        (None, "purge", "qb"),
        (VICTIM, "consume", "qb"),
        (VICTIM, "publish", "qb", "into the link"),
        (VICTIM, "clean", "qb"),
        (None, "clean"),
    ])


# ------------------------------------------------------------------ c. QUEUE/work -> link
def test_work_replaced_by_a_link_consume_moves_nothing_of_the_victims(site: Site) -> None:
    """A victim's consume must not move the victim's own files (in the target) into dead/ or anywhere."""
    must_succeed(site.ddmq(VICTIM, "create", "qc", "--clean-interval", "0"))
    must_succeed(site.ddmq(VICTIM, "publish", "qc", *[f"m{i}" for i in range(8)]))
    swap_for_link(site, "qc", "work", site.private)
    steps_leave_outside_alone(site, site.private, PRIVATE, [
        (VICTIM, "consume", "qc"),
        (VICTIM, "consume", "qc", "--no-ack"),
        (VICTIM, "clean", "qc"),
        (None, "consume", "qc"),
        (None, "clean"),
    ])
    assert not [n for n in os.listdir(site.queue("qc") / "dead") if any(v in n for v in PRIVATE)]


# ------------------------------------------------------------------ d. QUEUE/dead -> link
def test_dead_replaced_by_a_link_dead_lettering_and_purge_stay_inside(site: Site) -> None:
    must_succeed(site.ddmq(VICTIM, "create", "qd", "--clean-interval", "0"))
    ready = site.queue("qd") / "ready"
    swap_for_link(site, "qd", "dead", site.private)

    def foreign_file() -> None:  # something to dead-letter, planted by the attacker
        junk = ready / "junk.txt"
        if not junk.exists():
            junk.write_text("not a message")
            os.chown(junk, pwd.getpwnam(ATTACKER).pw_uid, -1)

    steps_leave_outside_alone(site, site.private, PRIVATE, [
        (VICTIM, "consume", "qd"),  # dead-letters junk.txt
        (VICTIM, "purge", "qd", "--dead"),
        (None, "purge", "qd", "--dead"),
        (VICTIM, "clean", "qd"),
        (None, "clean"),
    ], before_each=foreign_file)


# ------------------------------------------------------------------ e. ROOT/QUEUE -> link
def test_queue_replaced_by_a_link_operations_stay_inside_the_root(site: Site) -> None:
    """ROOT/qe is a link to a directory of the victim's that looks like a queue."""
    link = site.queue("qe")
    must_succeed(site.python(ATTACKER, f"import os; os.symlink({str(site.private)!r}, {str(link)!r})"))
    attacker = pwd.getpwnam(ATTACKER)

    def relink() -> None:  # a delete may have renamed the link away
        if not link.is_symlink():
            os.symlink(site.private, link)
            os.lchown(link, attacker.pw_uid, attacker.pw_gid)

    steps_leave_outside_alone(site, site.private, fake_queue("qe"), [
        (VICTIM, "publish", "qe", "into the link"),
        (VICTIM, "consume", "qe"),
        (VICTIM, "consume", "qe", "--no-ack"),
        (VICTIM, "purge", "qe"),
        (VICTIM, "purge", "qe", "--dead"),
        (VICTIM, "clean", "qe"),
        (VICTIM, "clean"),
        (VICTIM, "delete", "qe", "--force"),
        (None, "consume", "qe"),
        (None, "purge", "qe"),
        (None, "clean"),
        (None, "delete", "qe", "--force"),
    ], before_each=relink)


# ------------------------------------------------------------------ f. create_queue's staging directory
@pytest.mark.parametrize("swap", ["none", "link-to-private", "attackers-dir"])
def test_create_queue_never_chmods_what_was_swapped_for_its_staging_dir(
        swap: str, tmp_path: Path, mocker, request: pytest.FixtureRequest) -> None:
    """Right after the mkdir of ``.create.TOKEN.QUEUE`` a member swaps it for something else.

    ``link-to-private``: a link to the victim's own private (0700) directory,
    which a mkdir-then-chmod-by-path made group-readable and filled.
    ``attackers-dir``: a directory the attacker owns, which the victim must
    not chmod (run as root, the victim being root). ``none`` is the control:
    the hook itself must not break create_queue.
    """
    attacker = None
    if swap == "attackers-dir":
        request.getfixturevalue("shared")  # root and the accounts, or skip/fail by its rule
        attacker = pwd.getpwnam(ATTACKER)
    root = tmp_path / "root"
    b = Broker(root, create=True)
    (root / "ddmq.yaml").write_text("layout: 2\nmode: 0660\n")
    private = tmp_path / "private"
    plant_tree(private, PRIVATE)
    before = snapshot(private)
    real_mkdir = os.mkdir
    swapped: dict[str, object] = {}  # what the hook did: the name it swapped, the attacker's directory

    def mkdir_then_swap(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        # The core may make the staging directory by absolute path, or by name relative to dir_fd.
        dir_fd = kwargs.get("dir_fd")
        name = os.fsdecode(path)
        if swap == "none" or swapped or not os.path.basename(name).startswith(".create."):
            return
        aside = os.path.join(os.path.dirname(name), ".attacker-aside")
        os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        if swap == "link-to-private":
            os.symlink(private, name, dir_fd=dir_fd)
        else:
            real_mkdir(name, 0o755, dir_fd=dir_fd)
            os.chown(name, attacker.pw_uid, attacker.pw_gid, dir_fd=dir_fd)
            os.chmod(name, 0o755, dir_fd=dir_fd)
            theirs = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            swapped["theirs"] = (theirs.st_dev, theirs.st_ino)
        swapped["name"] = name

    mocker.patch.object(os, "mkdir", side_effect=mkdir_then_swap)
    try:
        b.create_queue("qf")
        created = True
    except DdmqError:
        created = False
    mocker.stopall()

    if swap == "none":
        assert created, "create_queue failed without any swap: the hook itself broke it"
    else:
        assert swapped, "the hook never saw the mkdir of a .create. directory: update it to how the core makes it"
    assert stat.S_IMODE(private.stat().st_mode) == 0o700, "the victim's private directory was chmodded"
    assert changes(before, snapshot(private)) == [], "the victim's private directory was changed"
    if swap == "attackers-dir":
        for name in os.listdir(root):  # wherever the attacker's directory is now, if it was not removed
            st = os.lstat(root / name)
            if (st.st_dev, st.st_ino) == swapped["theirs"]:
                assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, attacker.pw_uid), \
                    f"the attacker's directory ({name}) was chmodded: {oct(st.st_mode)}, uid {st.st_uid}"
                assert name != "qf", "the attacker's directory became the queue"
    if created:  # then a proper queue of this process's own, in the root
        qdir = root / "qf"
        st = os.lstat(qdir)
        assert stat.S_ISDIR(st.st_mode), "the queue is not a directory of its own (a link?)"
        assert st.st_uid == os.geteuid(), "the queue directory belongs to someone else"
        assert stat.S_IMODE(st.st_mode) & 0o777 == 0o770
        for state in ("ready", "work", "dead", "tmp"):
            assert stat.S_ISDIR(os.lstat(qdir / state).st_mode)
        assert stat.S_ISREG(os.lstat(qdir / "ddmq.yaml").st_mode)
        b.publish("qf", "works")
        assert [m.message for m in b.consume("qf", ack=True)] == ["works"]


# ------------------------------------------------------------------ g, h, i. settings files
@pytest.fixture
def one_queue(tmp_path: Path) -> Path:
    """A root with queue ``q`` holding one message (this user; no other users needed)."""
    root = tmp_path / "root"
    b = Broker(root, create=True)
    b.create_queue("q")
    b.publish("q", "waiting")
    return root


def settings_file(root: Path, where: str) -> Path:
    return root / "ddmq.yaml" if where == "root" else root / "q" / "ddmq.yaml"


def clients(root: Path, limit_memory: bool = False, dispatch: bool = True) -> list[Started]:
    """publish, consume (and ddmq-dispatch), started at once."""
    common = dict(limit_memory=limit_memory)
    started = [
        start(["-m", "ddmq", "--root", root, "publish", "q", "hello"], what="ddmq publish", **common),
        start(["-m", "ddmq", "--root", root, "consume", "q"], what="ddmq consume", **common),
    ]
    if dispatch:
        started.append(start(["-m", "ddmq_hpc.dispatch", "q", "--root", root, "--handler", "true",
                              "--max-seconds", "5"], what="ddmq-dispatch", **common))
    return started


@pytest.mark.parametrize("where", ["queue", "root"])
def test_a_fifo_as_settings_file_blocks_no_client(one_queue: Path, where: str) -> None:
    path = settings_file(one_queue, where)
    path.unlink()
    os.mkfifo(path, 0o666)
    problems = [p for ran in run_all(clients(one_queue)) for p in untidy(ran)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("where", ["queue", "root"])
def test_settings_file_linked_to_dev_zero_is_not_read_forever(one_queue: Path, where: str) -> None:
    path = settings_file(one_queue, where)
    path.unlink()
    path.symlink_to("/dev/zero")
    problems = [p for ran in run_all(clients(one_queue, limit_memory=True, dispatch=False)) for p in untidy(ran)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("spelling", [0, 1], ids=["under-a-known-key", "anchors-then-alias"])
def test_yaml_alias_bomb_in_settings_fails_fast(one_queue: Path, spelling: int) -> None:
    text = alias_bomb()[spelling]
    assert len(text.encode()) < 1024
    settings_file(one_queue, "queue").write_text(text)
    problems = []
    for ran in run_all(clients(one_queue, limit_memory=True, dispatch=False)):
        problems += untidy(ran)
        if ran.returncode is not None:
            if ran.seconds > 5:
                problems.append(f"{ran.what}: took {ran.seconds:.1f} s")
            if ran.returncode != 1 or "ddmq.yaml" not in ran.stderr:
                problems.append(f"{ran.what}: exit {ran.returncode}, not a settings error naming the file: "
                                f"{ran.stderr_lines[-1:] or ran.stdout[:80]}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ j. a message another member cannot read
def test_message_another_member_cannot_read_is_dead_lettered_not_blocking(site: Site) -> None:
    """A queue without ``mode``; a member whose umask is 077 publishes a 0600 file among good ones."""
    must_succeed(site.python(ATTACKER, f"import os; os.umask(0o007); from ddmq import Broker; "
                                       f"Broker({str(site.root)!r}).create_queue('qj', mode=None)"))
    must_succeed(site.ddmq(ATTACKER, "publish", "qj", "good one", umask=0o007))
    must_succeed(site.ddmq(ATTACKER, "publish", "qj", "private one", umask=0o077))
    must_succeed(site.ddmq(ATTACKER, "publish", "qj", "good two", umask=0o007))
    ready = site.queue("qj") / "ready"
    modes = sorted(stat.S_IMODE(p.stat().st_mode) for p in ready_entries(ready))
    assert modes == [0o600, 0o660, 0o660], "setup: one unreadable message between two readable ones"
    [private_id] = [p.name.split(".")[2] for p in ready_entries(ready) if stat.S_IMODE(p.stat().st_mode) == 0o600]

    ran = site.ddmq(VICTIM, "consume", "qj", "-n", "3")
    assert not untidy(ran), untidy(ran)
    assert (ran.returncode, ran.stdout.splitlines()) == (0, ["good one", "good two"]), ran.stderr
    dead = sorted(os.listdir(site.queue("qj") / "dead"))
    letters = [n for n in dead if not n.endswith(".reason")]
    assert len(letters) == 1 and private_id in letters[0], dead
    assert letters[0].split(".")[2], "the dead letter's name has a reason"
    assert letters[0] + ".reason" in dead, "the dead letter has a .reason record"
    assert Broker(site.root).counts("qj") == {"ready": 0, "work": 0, "dead": 1}
    again = site.ddmq(VICTIM, "consume", "qj")
    assert (again.returncode, again.stdout) == (3, ""), again.stderr


# ------------------------------------------------------------------ k. a payload with an invalid value
@pytest.mark.parametrize("value", ["-1", "NaN", "2e9"])
def test_planted_payload_with_invalid_value_is_dead_lettered(tmp_path: Path, value: str) -> None:
    root = tmp_path / "root"
    b = Broker(root, create=True)
    b.create_queue("q")
    ids = [b.publish("q", f"m{i}").id for i in range(5)]
    bad = message_path(root / "q" / "ready", ids[2])
    text = bad.read_text()
    edited = re.sub(r'"message_timeout": *600\b', f'"message_timeout": {value}', text)
    assert edited != text, "setup: the payload's message_timeout was found and changed"
    bad.write_text(edited)  # a planted copy of a real message, under its valid name

    ran = run(["-m", "ddmq", "--root", root, "consume", "q", "-n", "5"], what="ddmq consume -n 5")
    assert not untidy(ran), untidy(ran)
    assert (ran.returncode, ran.stdout.splitlines()) == (0, ["m0", "m1", "m3", "m4"]), ran.stderr
    dead = os.listdir(root / "q" / "dead")
    letters = [n for n in dead if not n.endswith(".reason")]
    assert len(letters) == 1 and ids[2] in letters[0], dead
    assert letters[0] + ".reason" in dead, "the dead letter has a .reason record"
    assert b.counts("q") == {"ready": 0, "work": 0, "dead": 1}


# ------------------------------------------------------------------ l. a shard of QUEUE/jobs -> link
JOB_END_STEPS = {
    "publish a job end": "b.publish_job_end('ql', KEY, 'ended')",
    "look a job end up": "b.job_end('ql', KEY)",
    "list the job ends": "b.job_ends('ql')",
}


def test_job_end_shard_replaced_by_a_link_nothing_is_recorded_outside(site: Site) -> None:
    """Before any job of its shard ends, a member puts a link to the victim's directory where the shard goes.

    Followed, the victim's publish would hard-link the record into their own
    directory and its lookups would read from there.
    """
    from ddmq.layout import job_shard

    key = "cluster.4242"
    must_succeed(site.ddmq(VICTIM, "create", "ql"))
    shard = site.queue("ql") / "jobs" / job_shard(key)
    must_succeed(site.python(ATTACKER, f"import os; os.symlink({str(site.private)!r}, {str(shard)!r})"))
    problems = []
    for what, call in JOB_END_STEPS.items():
        plant_tree(site.private, PRIVATE, owner=VICTIM)
        before = snapshot(site.private)
        ran = site.python(VICTIM, f"import sys\nfrom ddmq import Broker, DdmqError\nKEY = {key!r}\n"
                                  f"b = Broker({str(site.root)!r})\ntry:\n    {call}\n"
                                  f"except DdmqError as exc:\n    sys.exit(str(exc))\n")
        changed = changes(before, snapshot(site.private))
        if changed:
            problems.append(f"{what}: outside the root: {'; '.join(changed[:6])}")
        if ran.returncode != 1 or "refusing to use" not in ran.stderr:
            problems.append(f"{what}: not refused (exit {ran.returncode}): {ran.stderr.strip()}")
        problems += untidy(ran)
    assert not problems, "\n".join(problems)
    assert not os.listdir(site.queue("ql") / "tmp") and Broker(site.root).counts("ql")["ready"] == 0
    steps_leave_outside_alone(site, site.private, PRIVATE, [
        (VICTIM, "clean", "ql"),
        (VICTIM, "delete", "ql"),  # refused: the link is not ddmq's
        (None, "delete", "ql", "--force"),
    ])
