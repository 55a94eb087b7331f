"""What a hostile co-tenant plants, and how to see that nothing outside the root changed.

Shared by the hostile co-tenant tests (tests/test_hostile.py) and the
torture run (benchmarks/torture.py): a tree of someone's files, planted
outside the root as the target of links; a snapshot of that tree (names,
modes, owners, mtimes, contents) to compare before and after; names ddmq's
grammar could have made, for files that are not ddmq's; a valid payload, so
that a client that followed a link would really deliver it; and a YAML
alias bomb for a settings file.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import time
from pathlib import Path
from typing import Optional

TWO_HOURS_AGO_NS = time.time_ns() - 2 * 3600 * 10**9  # older than anything housekeeping leaves alone


FIELDS = ("type", "mode", "uid", "gid", "mtime", "size", "content")


def snapshot(top: Path) -> dict[str, tuple]:
    """Every entry under ``top`` (itself included): type, mode, owner, mtime, size, content or link target."""
    tree: dict[str, tuple] = {}

    def visit(path: Path, rel: str) -> None:
        st = os.lstat(path)
        content: object = None
        if stat.S_ISREG(st.st_mode):
            content = path.read_bytes()
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(path)
        is_dir = stat.S_ISDIR(st.st_mode)
        tree[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                     st.st_mtime_ns, None if is_dir else st.st_size, content)
        if is_dir:
            for name in sorted(os.listdir(path)):
                visit(path / name, f"{rel}/{name}")

    visit(top, ".")
    return tree


def changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    found = []
    for rel in sorted(before.keys() | after.keys()):
        if rel not in after:
            found.append(f"removed {rel}")
        elif rel not in before:
            found.append(f"created {rel}")
        elif before[rel] != after[rel]:
            differ = [field for field, x, y in zip(FIELDS, before[rel], after[rel]) if x != y]
            found.append(f"changed {rel} ({', '.join(differ)})")
    return found


Tree = dict  # name -> bytes (a file) or Tree (a directory)

MSG_ID, LEASE_ID, TMP_ID = "b" * 32, "c" * 32, "e" * 32
READY_LIKE = f"000999.{TWO_HOURS_AGO_NS:020d}.{MSG_ID}.0.msg"
WORK_LIKE = f"000999.{TWO_HOURS_AGO_NS:020d}.{LEASE_ID}.0.{0:020d}.{'d' * 12}.msg"  # a lease long expired
TMP_LIKE = f"{TMP_ID}.tmp"


def payload(message_id: str, queue: str, body: str) -> bytes:
    """A valid payload, so that a client that follows a link would really deliver (and ack) it."""
    return json.dumps({
        "format": 1, "id": message_id, "queue": queue, "published": TWO_HOURS_AGO_NS, "priority": 999,
        "message_timeout": 600, "requeue": True, "requeue_prio": 0, "requeue_limit": None, "durable": True,
        "host": "victim-host", "pid": 1, "headers": {}, "message": body,
    }).encode()


def plant_tree(top: Path, tree: Tree, owner: Optional[str] = None, age_ns: int = TWO_HOURS_AGO_NS) -> None:
    """(Re)create ``top`` as exactly ``tree``: directories 0700, files 0600, owned by ``owner``, all old."""
    if top.is_symlink() or top.is_file():
        top.unlink()
    elif top.exists():
        shutil.rmtree(top)
    ids = pwd.getpwnam(owner)[2:4] if owner else None

    def make(path: Path, content: object) -> None:
        if isinstance(content, dict):
            path.mkdir(mode=0o700)
            for name, inner in content.items():
                make(path / name, inner)
        else:
            path.write_bytes(content)  # type: ignore[arg-type]
        path.chmod(0o700 if path.is_dir() else 0o600)
        if ids:
            os.chown(path, *ids)
        os.utime(path, ns=(age_ns, age_ns))  # after the children: their creation touched it

    make(top, tree)


def alias_bomb(levels: int = 9, width: int = 9) -> tuple[str, str]:
    """Two spellings of a "billion laughs" (width**levels strings from a few hundred bytes)."""
    names = [chr(ord("a") + i) for i in range(levels)]
    first = "[" + ",".join(['"lol"'] * width) + "]"
    chain = [f"&{names[0]} {first}"] + [
        f"&{name} [" + ",".join([f"*{prev}"] * width) + "]" for prev, name in zip(names, names[1:])]
    # Under a known key: its value is the whole chain (validated, and shown in the error, first).
    under_key = "priority: [" + ", ".join(chain) + "]\n"
    # As anchors of other keys, then `priority: *LAST` (the spelling).
    anchors = "".join(f"{name}: {link}\n" for name, link in zip(names, chain)) + f"priority: *{names[-1]}\n"
    return under_key, anchors
