"""``ddmq doctor`` on real roots: the local disk, tmpfs, loop-mounted ext4 with and without a journal, sshfs.

Each check is made to find something by making it true on disk (a foreign
file, a lease left to expire, a root that is not setgid, a clock that is
off through libfaketime, a read-only or nearly full mount), and shown to
say ok otherwise, also to another member of a group-shared root. Mount-option
parsing, for filesystems this machine cannot mount (NFS), is tested on lines
in the format of proc(5).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from ddmq import Broker
from ddmq.doctor import OK, PROBLEM, WARNING, Finding, check_filesystem, diagnose
from ddmq.mounts import mount_of, parse_mountinfo, sshfs_listing_delay
from tests.support.capability import need
from tests.support.multiuser import GROUP, MEMBERS
from tests.test_clock import LIBFAKETIME
from tests.test_multiuser import as_user
from tests.test_shared_storage import CACHING, HARNESS, _unavailable



def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``ddmq doctor ARGS`` as a separate process."""
    return subprocess.run([sys.executable, "-m", "ddmq", "doctor", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def by_check(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


def only(findings: list[Finding], check: str) -> Finding:
    [finding] = by_check(findings, check)
    return finding


# ------------------------------------------------------------ the local disk
def test_a_fresh_root_is_healthy_but_for_what_its_filesystem_is(b: Broker, root: Path) -> None:
    b.create_queue("jobs")
    b.publish("jobs", "x")
    findings = diagnose(root)
    assert {f.check for f in findings} == {"filesystem", "space", "clock", "permissions", "queue"}
    assert all(f.severity == OK for f in findings if f.check != "filesystem"), findings
    assert all(f.fix == "" for f in findings if f.severity == OK)
    result = doctor("--root", str(root))
    healthy = all(f.severity == OK for f in findings)
    assert result.returncode == (0 if healthy else 1), result.stderr
    last = result.stdout.splitlines()[-1]
    assert last == "healthy" if healthy else last.endswith(("1 warning", "warnings"))
    assert result.stderr == ""


def test_json_output_is_one_parseable_list_of_findings(b: Broker, root: Path) -> None:
    b.create_queue("jobs")
    result = doctor("-f", "json", "--root", str(root), "jobs")
    rows = json.loads(result.stdout)
    assert {row["check"] for row in rows} >= {"filesystem", "space", "clock", "permissions", "queue"}
    assert all(set(row) == {"check", "severity", "found", "fix", "queue"} for row in rows)
    assert [row["queue"] for row in rows if row["check"] == "queue"] == ["jobs"]
    assert all(row["severity"] in (OK, WARNING, PROBLEM) for row in rows)


def test_unknown_queue_and_missing_root_are_one_line_and_exit_4(b: Broker, root: Path, tmp_path: Path) -> None:
    b.create_queue("jobs")
    result = doctor("--root", str(root), "jobs", "jbos")
    assert (result.returncode, result.stdout) == (4, "")
    assert result.stderr == f"ddmq: no queue 'jbos' in {root}\n"
    missing = tmp_path / "nowhere"
    result = doctor("--root", str(missing))
    assert result.returncode == 4 and len(result.stderr.splitlines()) == 1 and "does not exist" in result.stderr
    assert not missing.exists(), "doctor never makes a root"
    result = doctor("--root", str(root), "../etc")
    assert result.returncode == 2 and result.stderr.startswith("ddmq: invalid queue name")


def test_a_foreign_file_is_named_with_its_fix(b: Broker, root: Path) -> None:
    b.create_queue("jobs")
    (root / "jobs" / "ready" / "notes.txt").write_text("mine")
    finding = only(diagnose(root, ["jobs"]), "foreign files")
    assert finding.severity == WARNING and finding.queue == "jobs"
    assert "1 file ddmq did not write (ready/notes.txt)" in finding.found
    assert "ddmq clean jobs" in finding.fix
    assert (root / "jobs" / "ready" / "notes.txt").read_text() == "mine", "doctor changes nothing"


def test_a_link_in_place_of_a_state_directory_is_a_problem_not_a_traceback(b: Broker, root: Path,
                                                                            tmp_path: Path) -> None:
    b.create_queue("jobs")
    b.create_queue("other")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    shutil.rmtree(root / "jobs" / "work")
    (root / "jobs" / "work").symlink_to(elsewhere)
    result = doctor("--root", str(root))
    assert result.returncode == 1 and result.stderr == ""
    assert "PROBLEM  queue" in result.stdout and "refusing to use" in result.stdout
    assert "queue other: no foreign files" in result.stdout, "the other queues are still checked"
    assert os.listdir(elsewhere) == ["precious"]


def test_a_lease_left_expired_past_clean_interval_is_reported(b: Broker, root: Path) -> None:
    b.create_queue("jobs", clean_interval=0)
    b.publish("jobs", "x")
    b.consume("jobs", lease=0.01, ack=False)
    assert by_check(diagnose(root), "leases") == [], "within the clock tolerance a consumer may still requeue it"
    time.sleep(2.2)
    finding = only(diagnose(root), "leases")
    assert finding.severity == WARNING and "1 expired lease, the oldest 2 s ago" in finding.found
    assert finding.fix.startswith("ddmq clean jobs")
    b.clean("jobs")
    assert by_check(diagnose(root), "leases") == []


def test_dead_letters_are_counted_with_the_commands_that_deal_with_them(b: Broker, root: Path) -> None:
    b.create_queue("jobs")
    for body in ("a", "b"):
        b.publish("jobs", body)
    for m in b.consume("jobs", n=2, ack=False):
        b.nack(m, requeue=False)
    finding = only(diagnose(root), "dead letters")
    assert finding.found == "queue jobs: 2 dead letters", "the .reason files are not counted"
    assert "ddmq requeue jobs --dead" in finding.fix and "ddmq purge jobs --dead" in finding.fix


def test_a_group_mode_without_a_setgid_root_is_a_problem(b: Broker, root: Path) -> None:
    b.create_queue("shared", mode=0o660)
    root.chmod(0o755)
    finding = only(diagnose(root), "permissions")
    assert finding.severity == PROBLEM
    assert "mode 0660 (queue shared) gives group access" in finding.found and "not setgid" in finding.found
    assert "chmod 2770" in finding.fix
    root.chmod(0o2770)
    assert only(diagnose(root), "permissions").severity == OK


def test_a_queue_directory_of_another_group_is_a_problem(b: Broker, root: Path) -> None:
    need("root", None if os.geteuid() == 0 else "needs root to give a directory another group")
    root.chmod(0o2770)
    b.create_queue("shared", mode=0o660)
    os.chown(root / "shared" / "work", -1, os.stat(root).st_gid + 4321)
    [finding] = [f for f in diagnose(root) if f.check == "permissions" and f.queue == "shared"]
    assert finding.severity == PROBLEM and f"work is group {os.stat(root).st_gid + 4321}" in finding.found
    assert finding.fix.startswith("chgrp -R ")


def test_a_skewed_clock_is_measured_against_the_file_server(b: Broker, root: Path) -> None:
    need("faketime", None if LIBFAKETIME.exists() else f"{LIBFAKETIME} is missing (apt-get install faketime)")
    b.create_queue("jobs")
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "+600", "NO_FAKE_STAT": "1",
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    result = doctor("-f", "json", "--root", str(root), env=env)
    [clock] = [row for row in json.loads(result.stdout) if row["check"] == "clock"]
    assert clock["severity"] == WARNING, clock
    assert "this host's clock is 600." in clock["found"] or "this host's clock is 599." in clock["found"]
    assert "ahead of the file server's" in clock["found"] and "NTP" in clock["fix"]
    assert result.returncode == 1
    assert sorted(os.listdir(root)) == ["ddmq.yaml", "jobs"], "the clock probe is removed"
    assert only(diagnose(root), "clock").severity == OK


# ---------------------------------------------------------------- tmpfs
def test_a_root_on_dev_shm_is_reported_as_tmpfs(tmp_path: Path) -> None:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    root = Path("/dev/shm") / f"ddmq-doctor-{tmp_path.name}-{os.getpid()}"
    try:
        Broker(root, create=True).create_queue("q")
        finding = only(diagnose(root), "filesystem")
        if "tmpfs" not in finding.found:
            pytest.skip(f"/dev/shm is not a tmpfs here: {finding.found}")
        assert finding.severity == WARNING and "tmpfs" in finding.found and "/dev/shm" in finding.found
        assert "a reboot loses every message" in finding.found and "one node" in finding.fix
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------ mountinfo, as proc(5) writes it
PROC5_EXAMPLE = "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
NFS_DEFAULTS = ("101 27 0:52 / /shared rw,relatime shared:60 - nfs4 fs1:/export/shared rw,vers=4.2,"
                "rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,"
                "clientaddr=10.1.0.7,local_lock=none,addr=10.1.0.2")
NFS_ACTIMEO_1 = ("102 27 0:53 / /fast rw,relatime - nfs fs1:/export/fast rw,vers=3,rsize=65536,wsize=65536,"
                 "namlen=255,acregmin=1,acregmax=1,acdirmin=1,acdirmax=1,hard,proto=tcp,lookupcache=pos,"
                 "timeo=600,retrans=2,sec=sys,mountaddr=10.1.0.2,mountvers=3,mountport=20048,mountproto=udp,"
                 "local_lock=none,addr=10.1.0.2")
NFS_NOAC = ("103 27 0:54 / /noac rw,relatime - nfs4 fs1:/export/noac rw,sync,vers=4.1,rsize=1048576,"
            "wsize=1048576,namlen=255,acregmin=0,acregmax=0,acdirmin=0,acdirmax=0,hard,noac,proto=tcp,"
            "timeo=600,retrans=2,sec=sys,clientaddr=10.1.0.7,local_lock=none,addr=10.1.0.2")


def test_mountinfo_fields_and_escaped_paths() -> None:
    [m] = parse_mountinfo(PROC5_EXAMPLE)
    assert (m.device, m.mount_point, m.fstype, m.source) == ((98, 0), "/mnt2", "ext3", "/dev/root")
    assert (m.options, m.super_options) == (["rw", "noatime"], ["rw", "errors=continue"])
    assert m.option("errors") == "continue" and m.option("noatime") == "noatime" and m.option("vers") is None
    [spaced] = parse_mountinfo(r"40 27 0:30 / /scratch/my\040queues\134x rw - tmpfs tmp\040fs rw,size=4k")
    assert spaced.mount_point == "/scratch/my queues\\x" and spaced.source == "tmp fs"
    assert len(parse_mountinfo("garbage\n\n" + PROC5_EXAMPLE + "\n")) == 1, "a malformed line is skipped"


def test_the_mount_holding_a_path_is_the_longest_and_latest() -> None:
    mounts = parse_mountinfo("\n".join([
        "1 0 8:1 / / rw - ext4 /dev/sda1 rw",
        "2 1 0:20 / /dev/shm rw - tmpfs tmpfs rw",
        "3 1 0:21 / /dev/shm rw - tmpfs tmpfs rw,size=8k",  # mounted over the first
        "4 1 0:22 / /data rw - xfs /dev/sdb1 rw",
    ]))
    assert mount_of("/dev/shm/q", mounts).super_options == ["rw", "size=8k"]
    assert mount_of("/data2/q", mounts).mount_point == "/", "/data is not a prefix of /data2"
    assert mount_of("/data", mounts).fstype == "xfs"
    assert mount_of("/dev/shm/q", mounts, (0, 20)).super_options == ["rw"], "the device decides first"


def _filesystem(path: Path, line: str) -> Finding:
    mountpoint = line.split(" ")[4]
    return only(check_filesystem(str(path), line.replace(f" {mountpoint} ", f" {path} ", 1)), "filesystem")


def test_nfs_attribute_cache_options(tmp_path: Path) -> None:
    default = _filesystem(tmp_path, NFS_DEFAULTS)
    assert default.severity == WARNING
    assert "NFS 4.2 fs1:/export/shared" in default.found and "acdirmax=60 s, lookupcache=all" in default.found
    assert "can be 60 s old here" in default.found and "actimeo=1" in default.fix
    fast = _filesystem(tmp_path, NFS_ACTIMEO_1)
    assert fast.severity == OK and "acdirmax=1 s, lookupcache=pos" in fast.found
    noac = _filesystem(tmp_path, NFS_NOAC)
    assert noac.severity == OK and "noac" in noac.found


def test_lustre_gpfs_and_object_stores(tmp_path: Path) -> None:
    lustre = _filesystem(tmp_path, "60 27 0:60 / /lustre rw - lustre 10.0.0.1@o2ib:/scratch rw,flock")
    assert lustre.severity == OK and lustre.found.startswith("Lustre 10.0.0.1@o2ib:/scratch")
    gpfs = _filesystem(tmp_path, "61 27 0:61 / /gpfs rw - gpfs gpfs0 rw")
    assert gpfs.severity == OK and "GPFS" in gpfs.found
    s3 = _filesystem(tmp_path, "62 27 0:62 / /bucket rw - fuse.s3fs s3fs rw,user_id=0,group_id=0")
    assert s3.severity == PROBLEM and "rename is a copy" in s3.found


def test_sshfs_options_decide_the_listing_delay(tmp_path: Path) -> None:
    assert sshfs_listing_delay(["reconnect", "idmap=none"]) == 20
    assert sshfs_listing_delay(["dir_cache=no", "dcache_timeout=60"]) == 0
    assert sshfs_listing_delay(["dcache_timeout=3"]) == 3
    assert sshfs_listing_delay(["dcache_timeout=3", "dcache_dir_timeout=9"]) == 9
    assert sshfs_listing_delay(["cache=no"]) == 0, "sshfs 2's spelling"
    unseen = _filesystem(tmp_path, "70 27 0:70 / /remote rw - fuse.sshfs host:/x rw,user_id=0,group_id=0")
    assert unseen.severity == WARNING and "cache options cannot be seen" in unseen.found
    assert "dir_cache=no" in unseen.fix


# ------------------------------------------------------------- real mounts (root)
def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"mount {' '.join(args)}: {result.stderr.strip()}")


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    """Mount points made by a test; unmounted afterwards."""
    need("root", None if os.geteuid() == 0 and shutil.which("mount") else "needs root and mount(8)")
    made: list[Path] = []
    yield made
    for mnt in reversed(made):
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _ext4(tmp_path: Path, mounts: list[Path], name: str, *mkfs_options: str) -> Path:
    need("root", None if shutil.which("mkfs.ext4") else "no mkfs.ext4 (apt-get install e2fsprogs)")
    image, mnt = tmp_path / f"{name}.img", tmp_path / name
    with open(image, "wb") as file:
        file.truncate(256 << 20)  # sparse: enough not to be reported as nearly full
    subprocess.run(["mkfs.ext4", "-q", "-F", *mkfs_options, str(image)], check=True, capture_output=True)
    mnt.mkdir()
    _mount("-o", "loop", str(image), str(mnt))
    mounts.append(mnt)
    return mnt


def test_ext4_without_a_journal_is_told_from_one_with(tmp_path: Path, mounts: list[Path]) -> None:
    journaled = _ext4(tmp_path, mounts, "journaled") / "root"
    bare = _ext4(tmp_path, mounts, "bare", "-O", "^has_journal") / "root"
    for root in (journaled, bare):
        Broker(root, create=True).create_queue("q")
    ok = only(diagnose(journaled), "filesystem")
    assert ok.severity == OK and ok.found.startswith("local ext4 /dev/loop") and ok.found.endswith("with a journal")
    result = doctor("--root", str(journaled))
    assert (result.returncode, result.stdout.splitlines()[-1]) == (0, "healthy"), result.stdout
    warning = only(diagnose(bare), "filesystem")
    assert warning.severity == WARNING and "has no journal" in warning.found
    assert "tune2fs -O has_journal /dev/loop" in warning.fix


def test_a_read_only_or_nearly_full_mount_is_a_problem(tmp_path: Path, mounts: list[Path]) -> None:
    small = tmp_path / "small fs"  # a space in the path: escaped in mountinfo
    small.mkdir()
    _mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small))
    mounts.append(small)
    root = small / "root"
    Broker(root, create=True).create_queue("q")
    findings = diagnose(root)
    assert f"tmpfs tmpfs at {small}" in only(findings, "filesystem").found
    space = only(findings, "space")
    assert space.severity == PROBLEM and "publishing is about to fail" in space.found
    _mount("-o", "remount,ro", str(small))
    [read_only] = [f for f in diagnose(root) if f.check == "filesystem" and f.severity == PROBLEM]
    assert "mounted read-only" in read_only.found and "remount,rw" in read_only.fix


# ------------------------------------------------------------------ sshfs (FUSE)
@pytest.fixture(scope="module", params=["default-cache", "no-cache"])
def sshfs_mount(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    reason = _unavailable()
    need("fuse", reason and f"the sshfs harness cannot run: {reason}")
    state = tmp_path_factory.mktemp(f"doctor-sshfs-{request.param}")
    env = {**os.environ, "SSHFS_OPTS": CACHING[request.param]}
    subprocess.run([str(HARNESS / "mount-shared.sh"), str(state)], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        yield request.param, state / "mnt-a"
    finally:
        subprocess.run([str(HARNESS / "umount-shared.sh"), str(state)], env={**os.environ, "PURGE": "1"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_doctor_on_sshfs_reports_its_directory_cache(sshfs_mount: tuple[str, Path]) -> None:
    caching, mnt = sshfs_mount
    root = mnt / "root"
    Broker(root, create=True).create_queue("q")
    finding = only(diagnose(root), "filesystem")
    assert finding.found.startswith("fuse.sshfs shared-storage:") and f"at {mnt}" in finding.found
    if caching == "default-cache":
        assert finding.severity == WARNING and "directory cache 20 s" in finding.found
        assert "dir_cache=no" in finding.fix
    else:
        assert finding.severity == OK and "directory cache off" in finding.found
    assert only(diagnose(root), "clock").severity == OK, "the file server is this host"


# ------------------------------------------------------------- a group-shared root (real users)
# The users run Debian's Python, which has no click: the checks are run through the API.
DIAGNOSE = ("import json\nfrom ddmq.doctor import diagnose\n"
            "print(json.dumps([f.as_dict() for f in diagnose(b.root, ['team'])]))")


def test_another_member_finds_a_well_shared_root_healthy(shared: Path) -> None:  # noqa: F811
    made = as_user(MEMBERS[0], shared, "b.create_queue('team'); b.publish('team', 'x')")
    assert made.returncode == 0, made.stderr
    member = as_user(MEMBERS[1], shared, DIAGNOSE)
    assert member.returncode == 0, member.stderr
    rows = {row["check"]: row for row in json.loads(member.stdout)}
    assert rows["permissions"]["severity"] == OK, rows["permissions"]
    assert f"is group {GROUP}, setgid, 2770; mode 0660" in rows["permissions"]["found"]
    assert rows["clock"]["severity"] == OK and rows["queue"]["severity"] == OK
