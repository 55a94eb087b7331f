"""Stop a ddmq operation exactly between two filesystem steps.

An :class:`Injector` wraps the primitives every ddmq state change is made of
(``os.open``/``read``/``write``/``fsync``/``close``/``rename``/``unlink``/
``syncfs`` (ddmq's one call outside ``os``, in :mod:`ddmq.atomic`)/
``rmdir``/``mkdir``/``utime``/``chmod``/``fchmod``, the listing and stat
calls, and the built-in ``open``; ``shutil.rmtree`` is seen step by step through the ``os`` calls it
makes). It numbers, in order, the calls that touch a path under one root and
belong to a selection, and at call number ``at`` (or the first call a
predicate accepts) it fires, ``before`` the real call (which is then skipped)
or ``after`` it:

- ``action="kill"``: ``os.kill(os.getpid(), SIGKILL)``. The process dies
  exactly there, with no Python cleanup (no ``finally``, no ``except``).
  ``mid`` (for ``write`` only) writes half of the data first: a short write.
- ``action=ERRNO``: raises ``OSError(ERRNO)`` as the filesystem would.
  ``after`` means "the call happened but its reply was an error", as for an
  NFS client whose rename reply was lost. A failing ``close`` still frees the
  descriptor, as on Linux.

Run once without ``at`` to learn how many steps an operation makes
(``Injector.calls``), then once per step number: every step is covered
without listing the steps by hand.

As a script, it runs one ``ddmq`` command under an injector:

    python -m tests.support.crashpoint ROOT SELECTION STEP WHEN [ACTION] -- DDMQ-ARGS...
    python -m tests.support.crashpoint ROOT SELECTION list -- DDMQ-ARGS...   # print the numbered steps

SELECTION is ``crash`` (the steps that change or read files) or ``all``
(every call, stats and listings included); STEP is a step number or
``PRIM:PATH`` (the first call of that primitive on a path, relative to ROOT,
starting with PATH, e.g. ``rename:q/tmp/``); WHEN is ``before`` or ``after``;
ACTION is ``kill`` (default) or an errno name such as ``ENOSPC``.
"""
from __future__ import annotations

import builtins
import errno as errno_module
import io
import os
import signal
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Union

from ddmq import atomic

# name -> (module, attribute); "fopen" is the built-in open (also io.open, used by pathlib).
PRIMITIVES: dict[str, tuple[Any, str]] = {
    "open": (os, "open"), "read": (os, "read"), "write": (os, "write"), "fsync": (os, "fsync"),
    "close": (os, "close"), "rename": (os, "rename"), "unlink": (os, "unlink"), "rmdir": (os, "rmdir"),
    "mkdir": (os, "mkdir"), "utime": (os, "utime"), "stat": (os, "stat"), "lstat": (os, "lstat"),
    "listdir": (os, "listdir"), "scandir": (os, "scandir"), "fopen": (builtins, "open"),
    "chmod": (os, "chmod"), "fchmod": (os, "fchmod"), "fstat": (os, "fstat"),
    "syncfs": (atomic, "syncfs_fd"),  # a batch publish's one barrier (os has no syncfs)
    # Not used by ddmq today; wrapped so that a change to them is still seen as a step.
    "replace": (os, "replace"), "remove": (os, "remove"), "link": (os, "link"), "symlink": (os, "symlink"),
    "truncate": (os, "truncate"), "ftruncate": (os, "ftruncate"),
}
_ALIASES = {"fopen": [(io, "open")]}
# Steps that change a file, or read one (a crash "after reading"); stats and listings change nothing.
# (The built-in open counts as a crash step only when it opens for writing; "fopen-r" adds read opens.)
CRASH_STEPS = frozenset({"open", "read", "write", "fsync", "syncfs", "close", "rename", "unlink", "rmdir", "mkdir", "utime",
                         "chmod", "fchmod", "fopen", "replace", "remove", "link", "symlink", "truncate",
                         "ftruncate"})
ALL_STEPS = frozenset(PRIMITIVES) | {"fopen-r"}
_WRITE_MODES = set("wax+")


@dataclass
class Call:
    """One primitive call on a path under the root."""

    prim: str
    path: str  # absolute; for fd-based calls the path the fd was opened with
    dst: str | None = None  # rename destination
    mode: str | None = None  # built-in open mode
    flags: int | None = None  # os.open flags (for fd-based calls: those the fd was opened with)
    performed: bool = False  # the real call was made (and returned or raised by itself)

    def rel(self, root: str) -> str:
        def short(p: str) -> str:
            r = os.path.relpath(p, root)
            head, _, name = r.rpartition("/")
            if len(name) > 24:  # message names are long: keep the state directory and the shape
                name = name[:10] + "…" + name[-8:]
            return f"{head}/{name}" if head else name

        text = f"{self.prim} {short(self.path)}"
        if self.dst is not None:
            text += f" -> {short(self.dst)}"
        if self.mode is not None:
            text += f" [{self.mode}]"
        return text

    def changes(self) -> bool:
        return self.prim != "fopen" or bool(_WRITE_MODES & set(self.mode or ""))


# A step number, or a predicate (call, root) -> bool: the first call it accepts.
Trigger = Union[int, Callable[[Call, str], bool], None]


class Injector:
    """Numbers the calls under ``root`` and fires at one of them (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, select: frozenset[str] = CRASH_STEPS, at: Trigger = None,
                 when: str = "before", action: str | int = "kill"):
        assert when in ("before", "after", "mid"), when
        self.root = os.path.realpath(os.fspath(root))
        self.select = select
        self.at = at
        self.when = when
        self.action = action
        self.calls: list[Call] = []
        self.fired: Call | None = None
        self._fds: dict[int, tuple[str, int]] = {}  # fd -> (path, open flags)
        self._real: dict[str, Any] = {name: getattr(mod, attr) for name, (mod, attr) in PRIMITIVES.items()}

    # ------------------------------------------------------------ installing
    def wrappers(self) -> list[tuple[Any, str, Any]]:
        """(module, attribute, wrapper) for every primitive, for any patching tool."""
        out = []
        for name, (mod, attr) in PRIMITIVES.items():
            wrapper = self._wrap(name, self._real[name])
            out.append((mod, attr, wrapper))
            for amod, aattr in _ALIASES.get(name, []):
                out.append((amod, aattr, wrapper))
        return out

    @contextmanager
    def installed(self, mocker: Any = None) -> Iterator["Injector"]:
        """Patch the primitives for the duration: with pytest-mock's ``mocker`` if given, else setattr."""
        patches = self.wrappers()
        if mocker is not None:
            mocks = [mocker.patch.object(mod, attr, wrapper) for mod, attr, wrapper in patches]
            try:
                yield self
            finally:
                for mock in mocks:
                    mocker.stop(mock)
            return
        saved = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in patches]
        for mod, attr, wrapper in patches:
            setattr(mod, attr, wrapper)
        try:
            yield self
        finally:
            for mod, attr, original in saved:
                setattr(mod, attr, original)

    # --------------------------------------------------------------- paths
    def _under(self, path: str | None) -> bool:
        return path is not None and (path == self.root or path.startswith(self.root + os.sep))

    def _opened(self, fd: int) -> tuple[str, int] | None:
        """(path, flags) of a descriptor: from its open if seen, else (opened before) from /proc."""
        opened = self._fds.get(fd)
        if opened is None:
            try:
                opened = (os.readlink(f"/proc/self/fd/{fd}"), 0)
            except OSError:
                return None
        return opened

    def _resolve(self, path: Any, dir_fd: int | None = None) -> str | None:
        if isinstance(path, int):
            opened = self._opened(path)
            return opened[0] if opened else None
        try:
            p = os.fsdecode(os.fspath(path))
        except TypeError:
            return None
        if not os.path.isabs(p):
            if dir_fd is not None:
                opened = self._opened(dir_fd)
                if opened is None:
                    return None
                base = opened[0]
            else:
                base = os.getcwd()
            p = os.path.join(base, p)
        return os.path.normpath(p)

    def _describe(self, prim: str, args: tuple, kwargs: dict) -> Call | None:
        if prim in ("read", "write", "fsync", "syncfs", "close", "fchmod", "fstat", "ftruncate"):
            opened = self._opened(args[0]) if args else None
            if prim == "close" and (opened is None or args[0] not in self._fds
                                    or opened[1] & getattr(os, "O_DIRECTORY", 0)):
                # Closing a directory changes nothing and cannot fail, and ddmq closes
                # the directories a Broker held whenever it is garbage-collected: a
                # step at a moment no operation decides, so not a step.
                return None
            return Call(prim, opened[0], flags=opened[1]) if opened else None
        if prim in ("listdir", "scandir"):
            target = args[0] if args else kwargs.get("path", ".")
            path = self._resolve(target)
        elif prim == "fopen":
            target = args[0] if args else kwargs.get("file")
            mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
            path = self._resolve(target)
            return Call(prim, path, mode=mode) if self._under(path) else None
        elif prim in ("rename", "replace", "link", "symlink"):
            path = self._resolve(args[0], kwargs.get("src_dir_fd"))
            dst = self._resolve(args[1], kwargs.get("dst_dir_fd"))
            return Call(prim, path, dst=dst) if self._under(path) or self._under(dst) else None
        elif prim == "open":
            target = args[0] if args else kwargs.get("path")
            flags = args[1] if len(args) > 1 else kwargs.get("flags", 0)
            path = self._resolve(target, kwargs.get("dir_fd"))
            return Call(prim, path, flags=flags) if self._under(path) else None
        else:
            target = args[0] if args else kwargs.get("path")
            path = self._resolve(target, kwargs.get("dir_fd"))
        return Call(prim, path) if self._under(path) else None

    # ------------------------------------------------------------- wrapping
    def _selected(self, call: Call) -> bool:
        if call.prim not in self.select:
            return False
        return call.changes() or "fopen-r" in self.select

    def _triggered(self, index: int, call: Call) -> bool:
        if self.fired is not None or self.at is None:
            return False
        if isinstance(self.at, int):
            return index == self.at
        return bool(self.at(call, self.root))

    def _fire(self, call: Call) -> None:
        self.fired = call
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
            os._exit(99)  # not reached: SIGKILL to oneself is delivered before kill() returns
        code = self.action if isinstance(self.action, int) else getattr(errno_module, self.action)
        raise OSError(code, os.strerror(code), call.path)

    def _wrap(self, prim: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            call = self._describe(prim, args, kwargs)
            if call is None or not self._selected(call):
                result = real(*args, **kwargs)
                self._track(prim, args, call, result)
                return result
            index = len(self.calls)
            self.calls.append(call)
            fire = self._triggered(index, call)
            if fire and self.when == "mid" and prim == "write":
                data = bytes(args[1])
                call.performed = True
                real(args[0], data[:max(1, len(data) // 2)])  # a short write, then the fault
                self._fire(call)
            if fire and self.when == "before":
                if prim == "close" and self.action != "kill":
                    real(*args, **kwargs)  # a failing close(2) still frees the descriptor on Linux
                    self._fds.pop(args[0], None)
                    call.performed = True
                self._fire(call)
            call.performed = True
            result = real(*args, **kwargs)
            self._track(prim, args, call, result)
            if fire:
                self._fire(call)
            return result

        wrapper.__wrapped__ = real  # type: ignore[attr-defined]
        return wrapper

    def _track(self, prim: str, args: tuple, call: Call | None, result: Any) -> None:
        if prim == "open" and call is not None and isinstance(result, int):
            self._fds[result] = (call.path, call.flags or 0)
        elif prim == "close" and args:
            self._fds.pop(args[0], None)

    def performed(self, predicate: Callable[[Call], bool]) -> bool:
        """Whether a call the predicate accepts was really made (and not skipped by a fault)."""
        return any(c.performed and predicate(c) for c in self.calls)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    split = argv.index("--")
    head, ddmq_args = argv[:split], argv[split + 1:]
    root, selection, index = head[0], head[1], head[2]
    select = CRASH_STEPS if selection == "crash" else ALL_STEPS
    from ddmq.cli import cli

    if index == "list":
        injector = Injector(root, select)
        with injector.installed():
            try:
                cli.main(ddmq_args, prog_name="ddmq", standalone_mode=False)
            except BaseException as exc:  # noqa: BLE001 - report whatever ended the command
                print(f"# ended by {exc!r}", file=sys.stderr)
        for i, call in enumerate(injector.calls):
            print(i, call.rel(injector.root))
        return 0
    when = head[3]
    action: str | int = head[4] if len(head) > 4 else "kill"
    at: Trigger
    if index.isdigit():
        at = int(index)
    else:
        prim, _, prefix = index.partition(":")
        at = lambda call, top: call.prim == prim and os.path.relpath(call.path, top).startswith(prefix)  # noqa: E731
    injector = Injector(root, select, at=at, when=when, action=action)
    with injector.installed():
        cli.main(ddmq_args, prog_name="ddmq")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
