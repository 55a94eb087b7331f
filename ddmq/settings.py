"""Settings: built-in defaults < root ``ddmq.yaml`` < queue ``ddmq.yaml`` < per-call arguments.

Files are read with YAML's safe loader only, and every key and value is
checked, so that a typo in a settings file is reported with the file and the
key instead of silently changing behaviour. PyYAML is imported only when a
file has real content: the command-line tools run at the end of every batch
job and their start-up time matters.
"""
from __future__ import annotations

import re
import stat

from .atomic import NOT_A_FILE_ERRNOS, read_file
from .errors import SettingsError, storage_error
from .layout import MAX_PRIORITY

# Names for type annotations only: importing typing at run time costs a
# command-line tool several milliseconds of start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping

    from .atomic import Dir


# Longest lease or interval: lease expiries must fit the fixed-width time field
# of a file name, and nobody means a lease of more than a few years.
MAX_SECONDS = 1e9
# A settings file is a few lines; anything larger was not written for ddmq.
MAX_SETTINGS_BYTES = 64 << 10
# Shortest lease: one of a nanosecond would expire before its rename returned.
MIN_SECONDS = 0.001


def _number(positive: bool) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok and (value >= MIN_SECONDS if positive else value >= 0) and value <= MAX_SECONDS
    return check


def _whole(low: int, high: int | None = None) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        return ok and (high is None or value <= high)
    return check


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


# key: (default, validator, what a valid value looks like)
SCHEMA: dict[str, tuple[Any, Callable[[Any], bool], str]] = {
    "message_timeout": (600, _number(positive=True), "a number of seconds from 0.001 to 1e9"),
    "priority": (999, _whole(0, MAX_PRIORITY), f"a whole number from 0 to {MAX_PRIORITY}"),
    "requeue": (True, _boolean, "true or false"),
    "requeue_prio": (0, _whole(0, MAX_PRIORITY), f"a whole number from 0 to {MAX_PRIORITY}"),
    "requeue_limit": (None, _optional(_whole(0)), "a whole number >= 0, or null for no limit"),
    "durable": (True, _boolean, "true or false"),
    "clean_interval": (30, _number(positive=False), "a number of seconds from 0 to 1e9"),
    "mode": (None, _optional(_whole(0, 0o777)),
             "octal permission bits for the queue's files, like 0660 (or null: the umask decides)"),
}
DEFAULTS: dict[str, Any] = {key: spec[0] for key, spec in SCHEMA.items()}
# Not a setting: the root marker's on-disk layout version (ddmq.layout.LAYOUT),
# which ddmq.root checks. On a line of its own, it is read without YAML, so a
# root marker that holds nothing else costs a command no YAML import.
LAYOUT_KEY = "layout"
_LAYOUT_LINE = re.compile(r"^layout:[ \t]*([0-9]+)[ \t]*$", re.MULTILINE | re.ASCII)


class Settings:
    """A queue's effective settings: one typed attribute per key of SCHEMA.

    Built only from validated values, so every attribute holds a value its
    validator accepted; a mistyped name is an AttributeError, where a
    mistyped dict key was a silent KeyError at best. A plain slots class, not
    a dataclass: importing dataclasses costs a command-line run more than its
    work.
    """

    __slots__ = ("message_timeout", "priority", "requeue", "requeue_prio", "requeue_limit", "durable",
                 "clean_interval", "mode")
    message_timeout: float
    priority: int
    requeue: bool
    requeue_prio: int
    requeue_limit: int | None
    durable: bool
    clean_interval: float
    mode: int | None

    def __init__(self, values: Mapping[str, Any]) -> None:
        """``values``: one validated value per key of SCHEMA."""
        for key in self.__slots__:
            setattr(self, key, values[key])

    def overridden(self, changes: Mapping[str, Any]) -> Settings:
        """These settings with ``changes`` (validated values for some keys) applied."""
        return Settings({**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__slots__}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable slots

    def __repr__(self) -> str:
        return f"Settings({self.as_dict()!r})"


def _octal(value: Any) -> Any:
    """``mode`` may be written as an octal string ("0660", "0o660"); YAML reads 0660 as octal itself."""
    if isinstance(value, str):
        try:
            return int(value, 8)
        except ValueError:
            return value
    return value


_CONVERT: dict[str, Callable[[Any], Any]] = {"mode": _octal}


def validate(values: Mapping[str, Any], source: str,
             error: type[SettingsError] = SettingsError) -> dict[str, Any]:
    """Check keys and types; ``source`` names where the values came from.

    ``error`` is SettingsError for files and InvalidSetting for arguments, so
    the command line reports a bad option as a usage error.
    """
    result = {}
    for key, value in values.items():
        if key == LAYOUT_KEY:  # checked by the root (ddmq.root), refused in a queue's file (merged)
            result[key] = value
            continue
        if key not in SCHEMA:
            known = ", ".join(SCHEMA)
            raise error(f"{source}: unknown setting {_shown(key)} (known: {known})")
        _, check, expected = SCHEMA[key]
        converted = _CONVERT.get(key, lambda v: v)(value)
        if not check(converted):
            raise error(f"{source}: setting {key!r} must be {expected}, not {_shown(value)}")
        result[key] = converted
    return result


def _has_content(text: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def _shown(value: Any) -> str:
    """A value for an error message, cut short: a settings file is written by anyone in the group."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_loader: Any = None


def _yaml_loader() -> Any:
    """YAML's safe loader without aliases: ``*name`` is refused.

    No setting needs an alias, and a few hundred bytes of nested aliases (a
    "billion laughs") expand to gigabytes in a safe loader too.
    """
    global _loader
    if _loader is None:
        import yaml  # deferred: see module docstring

        class NoAliasLoader(yaml.SafeLoader):
            def compose_node(self, parent: Any, index: Any) -> Any:
                if self.check_event(yaml.AliasEvent):
                    mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                    raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in ddmq settings",
                                                      mark)
                return super().compose_node(parent, index)

        _loader = NoAliasLoader
    return _loader


def load_file(directory: Dir, name: str) -> dict[str, Any]:
    """Read and validate one settings file; a missing or empty file means no overrides.

    Read like a message: without following a link, without blocking on a
    FIFO, and at most MAX_SETTINGS_BYTES of it.
    """
    path = directory.join(name)
    try:
        data = read_file(directory, name, MAX_SETTINGS_BYTES)
    except OSError as exc:
        if exc.errno in NOT_A_FILE_ERRNOS:
            raise SettingsError(f"{path}: not a regular file (a link, FIFO or device is in its place)") from None
        raise storage_error("read", path, exc) from None
    if data is None:
        return {}
    if len(data) > MAX_SETTINGS_BYTES:
        raise SettingsError(f"{path}: larger than {MAX_SETTINGS_BYTES // 1024} KiB; not a ddmq settings file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not UTF-8 text") from None
    layout = _LAYOUT_LINE.search(text)
    if layout is not None and not _has_content(text[:layout.start()] + text[layout.end():]):
        return {LAYOUT_KEY: int(layout[1])}
    if not _has_content(text):
        return {}
    import yaml

    try:
        loaded = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader, without aliases
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from None
    except RecursionError:
        raise SettingsError(f"{path}: nested too deeply") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise SettingsError(f"{path}: expected a mapping of setting: value, got {type(loaded).__name__}")
    return validate(loaded, path)


def dump_value(key: str, value: Any) -> Any:
    """A setting as a person writes it: ``mode`` in octal."""
    return f"0{value:o}" if key == "mode" and value is not None else value


def dump(values: Mapping[str, Any], layout: int | None = None) -> str:
    """YAML text for a settings file, with a header saying what it is; a root's with its ``layout`` line."""
    import yaml

    header = (
        "# ddmq settings. Keys: " + ", ".join(SCHEMA) + "\n"
        "# Root file: defaults for every queue; queue file: overrides for that queue.\n"
    )
    if layout is not None:
        header += f"# The on-disk layout of this root's queues; ddmq refuses a layout it does not know.\n" \
                  f"{LAYOUT_KEY}: {layout}\n"
    shown = {k: dump_value(k, v) for k, v in values.items()}
    body = yaml.safe_dump(shown, default_flow_style=False, sort_keys=True) if values else ""
    return header + body


class SettingsCache:
    """Merged settings per file chain, re-read only when a file's stat changes.

    A long-running consumer must see edits to ``ddmq.yaml``; a stat per use is
    cheap, a YAML parse per message is not. Files are named by an open
    directory and a name in it (see :class:`ddmq.atomic.Dir`).
    """

    def __init__(self) -> None:
        self._files: dict[str, tuple[tuple[int, int, int] | None, dict[str, Any]]] = {}

    def values_in(self, directory: Dir, name: str, required: bool = False) -> dict[str, Any]:
        """The validated settings one file sets (``{}`` for a missing or empty file unless ``required``)."""
        path = directory.join(name)
        try:
            st = directory.lstat(name)
            if not stat.S_ISREG(st.st_mode):
                raise SettingsError(f"{path}: not a regular file (a link, FIFO or device is in its place)")
            key: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except (FileNotFoundError, NotADirectoryError) as exc:
            if required:
                raise
            if not isinstance(exc, FileNotFoundError):
                raise storage_error("read", path, exc) from None
            key = None
        except OSError as exc:
            raise storage_error("read", path, exc) from None
        cached = self._files.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        values = {} if key is None else load_file(directory, name)
        self._files[path] = (key, values)
        return values

    def merged(self, *files: tuple[Dir, str], required: bool = False) -> dict[str, Any]:
        """Defaults overridden by each file in turn.

        With ``required``, a missing last file raises FileNotFoundError (or
        NotADirectoryError) instead of meaning "no overrides": a queue's
        settings file is its marker.
        """
        result = dict(DEFAULTS)
        last = len(files) - 1
        for i, (directory, name) in enumerate(files):
            values = self.values_in(directory, name, required and i == last)
            if LAYOUT_KEY in values:
                if i:
                    raise SettingsError(f"{directory.join(name)}: '{LAYOUT_KEY}' belongs in the root's "
                                        "ddmq.yaml only")
                values = {k: v for k, v in values.items() if k != LAYOUT_KEY}
            result.update(values)
        return result
