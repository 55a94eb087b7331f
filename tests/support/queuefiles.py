"""What a queue holds on disk, as a test looks at it: ready/'s tree walked, messages planted where they belong."""
from __future__ import annotations

import os
from pathlib import Path

from ddmq.layout import SHARD_LEVELS, is_shard, shard_of


def ready_entries(ready: Path) -> list[Path]:
    """Every entry of ready/'s tree that is not one of its directories (messages, planted files), by name."""
    found: list[Path] = []

    def walk(directory: Path, level: int) -> None:
        for entry in os.scandir(directory):
            if level < SHARD_LEVELS and is_shard(level, entry.name) and entry.is_dir(follow_symlinks=False):
                walk(Path(entry.path), level + 1)
            else:
                found.append(Path(entry.path))

    walk(ready, 0)
    return sorted(found, key=lambda path: path.name)


def ready_files(ready: Path) -> list[str]:
    """The names of :func:`ready_entries`."""
    return [path.name for path in ready_entries(ready)]


def state_entries(queue: Path, state: str) -> list[Path]:
    """The entries of one state directory of a queue (ready/: its whole tree), by name."""
    if state == "ready":
        return ready_entries(queue / state)
    return sorted((queue / state).iterdir(), key=lambda path: path.name)


def state_files(queue: Path, state: str) -> list[str]:
    """The names of :func:`state_entries`."""
    return [path.name for path in state_entries(queue, state)]


def ready_path(ready: Path, name: str) -> Path:
    """Where the ready name ``name`` lies in ready/'s tree, its directories made: to plant a file there."""
    slot = ready.joinpath(*shard_of(name))
    slot.mkdir(parents=True, exist_ok=True)
    return slot / name


def queue_files(queue: Path, states: tuple[str, ...] = ("ready", "work", "dead", "tmp")) -> dict[str, list[str]]:
    """Every name in each state directory of a queue (ready/: its tree), hidden ones included."""
    return {state: state_files(queue, state) for state in states}


def message_path(ready: Path, msg_id: str) -> Path:
    """The file of the ready message ``msg_id`` in ready/'s tree (exactly one)."""
    [path] = [p for p in ready.rglob("*.msg") if msg_id in p.name]
    return path
