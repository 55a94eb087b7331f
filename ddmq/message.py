"""A message: the immutable payload written at publish, plus the state read from its name.

The payload file is JSON, written once and never rewritten. What changes over
a message's life (current priority, requeue count, lease) comes from the file
name and is filled into the :class:`Message` when it is read.

Requires CPython: a message is encoded by the json module's C accelerator,
called directly (``json.encoder.c_make_encoder`` and ``c_encode_basestring``)
at a fraction of what ``json.dumps`` costs a publish. There is no fallback:
without them (PyPy, or a CPython built without ``_json``) importing ddmq
fails. Decoding also calls the decoder's ``scan_once`` directly, but that
one exists in pure Python too.
"""
from __future__ import annotations

import json

from .layout import MAX_PRIORITY, compiled

# Names for type annotations only: importing typing at run time costs a
# command-line tool several milliseconds of start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT_VERSION = 1
# Larger payloads are refused at publish and dead-lettered when found in a queue.
MAX_MESSAGE_BYTES = 64 << 20
# Deepest nesting of arrays and objects a body or the headers may have. Refused
# at publish and dead-lettered at claim, so that whatever was accepted can be
# delivered: Python's JSON encoder and decoder recurse once per level, and a
# body a few hundred levels deep would fail to print after it was claimed.
MAX_DEPTH = 64
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "id": str, "queue": str, "published": int, "priority": int, "message_timeout": (int, float),
    "requeue": bool, "requeue_prio": int, "durable": bool, "host": str, "pid": int, "headers": dict,
}


class CorruptMessage(ValueError):
    """A payload file that is not a ddmq message; the text says what is wrong."""


class Unreadable(CorruptMessage):
    """A message file this user is not allowed to read."""


_FIELDS = ("id", "queue", "message", "priority", "published", "message_timeout", "requeue", "requeue_prio",
           "requeue_limit", "durable", "host", "pid", "headers", "requeues", "receipt", "lease_expires")


class Lease:
    """One claim of a message: its name in ``work/``, until when, and the receipt that proves it.

    ``receipt`` and ``name`` are set only while this process holds the claim
    (after consume and extend); a message peeked in ``work/``, or one this
    process has acked or nacked, keeps only the expiry it was delivered with.
    """

    __slots__ = ("expires", "receipt", "name")

    def __init__(self, expires: int, receipt: str | None = None, name: str | None = None):
        self.expires = expires  # nanoseconds since the epoch, on the lease clock of the claimer
        self.receipt = receipt
        # The file name this consumer holds the message under in work/: ack,
        # nack, extend and release find the lease by it without a listing.
        self.name = name


class Message:
    """One message as a consumer or a peek sees it.

    A plain class, not a dataclass: importing dataclasses (and with it
    inspect) costs more than the rest of a ``ddmq-notify`` run.
    """

    def __init__(self, id: str, queue: str, message: Any, priority: int, published: int,
                 message_timeout: float, requeue: bool, requeue_prio: int, requeue_limit: int | None,
                 durable: bool, host: str, pid: int, headers: dict[str, Any] | None = None,
                 requeues: int = 0, receipt: str | None = None, lease_expires: int | None = None):
        self.id = id
        self.queue = queue
        self.message = message
        self.priority = priority
        self.published = published  # nanoseconds since the epoch, on the publisher's clock
        self.message_timeout = message_timeout
        self.requeue = requeue
        self.requeue_prio = requeue_prio
        self.requeue_limit = requeue_limit
        self.durable = durable
        self.host = host
        self.pid = pid
        self.headers = {} if headers is None else headers
        # State, from the file name:
        self.requeues = requeues
        self.lease: Lease | None = None if lease_expires is None else Lease(lease_expires, receipt)

    @property
    def receipt(self) -> str | None:
        """What ack, nack, extend and release need, while this consumer holds the lease."""
        return self.lease.receipt if self.lease is not None else None

    @property
    def lease_expires(self) -> int | None:
        """When the lease it was delivered under expires (ns since the epoch), if it was claimed."""
        return self.lease.expires if self.lease is not None else None

    def settled(self) -> None:
        """Acked or nacked: the lease is no longer this consumer's, but the message was delivered."""
        if self.lease is not None:
            self.lease = Lease(self.lease.expires)

    def unclaimed(self) -> None:
        """Released: as if it had never been claimed."""
        self.lease = None

    def __repr__(self) -> str:
        return "Message(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in _FIELDS) + ")"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in _FIELDS)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    @property
    def delivery_count(self) -> int:
        """How many times the message has been claimed, a current claim included."""
        return self.requeues + (1 if self.lease_expires is not None else 0)

    def to_dict(self) -> dict[str, Any]:
        """Everything, for JSON/YAML output; stable keys."""
        import copy  # deferred: only output needs it, and it imports weakref

        data = {k: copy.deepcopy(getattr(self, k)) for k in _FIELDS}
        data["delivery_count"] = self.delivery_count
        return data


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if arrays and objects nest deeper than ``limit`` in ``value`` (or it is circular).

    Iterative, so that checking cannot itself run out of stack.
    """
    if not isinstance(value, (dict, list, tuple)):
        return False
    stack = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        seen += 1
        if seen > MAX_MESSAGE_BYTES:  # only a circular structure has more containers than bytes
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_body(text: str, what: str = "message") -> Any:
    """Parse a JSON body given by a user (``--json``, ``ddmq json``, ``ddmq-notify --json``).

    Raises UsageError, never a traceback: for text that is not strict JSON
    (NaN and Infinity included) and for nesting deeper than MAX_DEPTH, so that
    what is accepted here can always be published and delivered.
    """
    from .errors import UsageError

    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise UsageError(f"{what}: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise UsageError(f"{what}: not valid JSON: {exc}") from None
    if too_deep(value):
        raise UsageError(f"{what}: nested deeper than {MAX_DEPTH} levels")
    return value


def _unserialisable(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


# Made once: json.dumps with non-default options builds a new encoder per call,
# and JSONEncoder.encode builds a new C encoder (and a closure) per call too.
# This is the C encoder JSONEncoder(ensure_ascii=False, sort_keys=True,
# allow_nan=False, check_circular=False) makes; a circular body ends in a
# RecursionError, as one nested too deeply always did.
# c_make_encoder, c_encode_basestring and scan_once are CPython's C accelerators
# (module _json), absent from the type stubs: see the module docstring.
_C_ENCODER = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _unserialisable, json.encoder.c_encode_basestring,  # type: ignore[attr-defined]
    None, ": ", ", ", True, False, False)
_QUOTE = json.encoder.c_encode_basestring  # type: ignore[attr-defined]
# NaN and Infinity are Python's extensions to JSON, which other readers refuse:
# in a payload they make it corrupt, in a user's --json a usage error.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_SCAN = _DECODER.scan_once  # type: ignore[attr-defined]

# The envelope is written from this template, the body last, and read back
# by _ENVELOPE and the JSON scanner (see decode): encoding it as a dict took
# about 40 k instructions, a third of a publish, for fields whose types are
# known. Any other JSON object with these fields, in any order, is read as a
# message too, through the full decoder.
_TEMPLATE = (
    '{"format": %d, "id": %s, "queue": %s, "published": %d, "priority": %d, "message_timeout": %s, '
    '"requeue": %s, "requeue_prio": %d, "requeue_limit": %s, "durable": %s, "host": %s, "pid": %d, '
    '"headers": %s, "message": %s}'
)
_INT = r"(-?(?:0|[1-9][0-9]*))"
_ENVELOPE = (
    rf'\{{"format": {FORMAT_VERSION}, "id": "([^"\\\x00-\x1f]*)", "queue": "([^"\\\x00-\x1f]*)", '
    rf'"published": {_INT}, "priority": {_INT}, '
    r'"message_timeout": (-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?), "requeue": (true|false), '
    rf'"requeue_prio": {_INT}, "requeue_limit": (null|-?(?:0|[1-9][0-9]*)), "durable": (true|false), '
    rf'"host": "([^"\\\x00-\x1f]*)", "pid": {_INT}, "headers": '
)


def _json(value: Any) -> str:
    return _QUOTE(value) if type(value) is str else "".join(_C_ENCODER(value, 0))


def _number(value: int | float) -> str:
    """A settings-validated number (int or finite float), as JSON writes it."""
    return float.__repr__(value) if isinstance(value, float) else int.__repr__(value)


def encode(message: Message) -> bytes:
    """Serialise the payload; raises TypeError for bodies JSON cannot hold.

    The fields other than the body and the headers come from validated
    settings and from publish itself, so their types are known. A body or
    headers nested deeper than MAX_DEPTH are refused (see MAX_DEPTH).
    """
    m = message
    if (type(m.message) is not str and too_deep(m.message)) or (m.headers and too_deep(m.headers)):
        raise TypeError(f"message is not JSON-serialisable: nested too deeply, or circular (at most {MAX_DEPTH} levels)")
    limit = m.requeue_limit
    try:
        return (_TEMPLATE % (
            FORMAT_VERSION, _QUOTE(m.id), _QUOTE(m.queue), m.published, m.priority, _number(m.message_timeout),
            "true" if m.requeue else "false", m.requeue_prio, "null" if limit is None else int.__repr__(limit),
            "true" if m.durable else "false", _QUOTE(m.host), m.pid,
            _json(m.headers) if m.headers else "{}", _json(m.message),
        )).encode()
    except ValueError as exc:
        raise TypeError(f"message is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise TypeError("message is not JSON-serialisable: nested too deeply, or circular") from None


def decode(data: bytes) -> Message:
    """Parse a payload file, checking it is a complete ddmq message."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptMessage(f"not a JSON message: {exc}") from None
    try:
        msg = _decode_envelope(text)
    except (ValueError, StopIteration):
        msg = None
    except RecursionError:
        raise CorruptMessage("not a JSON message: nested too deeply") from None
    return msg if msg is not None else _decode_any(text)


def _usable(msg: Message) -> Message:
    """``msg`` if its values are ones publish could have written, else CorruptMessage.

    Checked at claim by both decoding paths, so a planted or hand-edited file
    is dead-lettered with the reason instead of failing every consumer that
    reaches it.
    """
    problem = _invalid_value(msg)
    if problem:
        raise CorruptMessage(problem)
    return msg


def _invalid_value(msg: Message) -> str | None:
    """What makes a well-typed payload unusable, if anything: a value publish would have refused."""
    from .settings import MAX_SECONDS, MIN_SECONDS

    timeout = msg.message_timeout
    if not MIN_SECONDS <= timeout <= MAX_SECONDS:  # False for NaN too
        return f"message_timeout out of range ({MIN_SECONDS:g} to {MAX_SECONDS:g} seconds)"
    if not 0 <= msg.priority <= MAX_PRIORITY or not 0 <= msg.requeue_prio <= MAX_PRIORITY:
        return f"priority out of range (0 to {MAX_PRIORITY})"
    if msg.requeue_limit is not None and msg.requeue_limit < 0:
        return "requeue_limit is negative"
    if (type(msg.message) is not str and too_deep(msg.message)) or too_deep(msg.headers):
        return f"nested deeper than {MAX_DEPTH} levels"
    return None


def _decode_envelope(text: str) -> Message | None:
    """What encode wrote, field by field; None for anything else (see _decode_any).

    Accepts exactly what the full decoder would read from the same text, with
    the same values: every field is matched as strict JSON (no leading zeros,
    no escapes in the plain strings), body and headers by the JSON scanner
    itself, and the body must end the object.
    """
    m = compiled(_ENVELOPE).match(text)  # on first use: ddmq-notify never reads a message
    if m is None:
        return None
    at = m.end()
    if text.startswith("{}", at):
        headers: Any = {}
        at += 2
    else:
        headers, at = _SCAN(text, at)
        if type(headers) is not dict:
            return None
    if not text.startswith(', "message": ', at):
        return None
    body, at = _SCAN(text, at + 13)
    if at != len(text) - 1 or text[at] != "}":
        return None
    (msg_id, queue, published, priority, timeout, requeue, requeue_prio, limit, durable, host,
     pid) = m.groups()
    return _usable(Message(
        msg_id, queue, body, int(priority), int(published),
        float(timeout) if "." in timeout or "e" in timeout or "E" in timeout else int(timeout),
        requeue == "true", int(requeue_prio), None if limit == "null" else int(limit), durable == "true",
        host, int(pid), headers,
    ))


def _decode_any(text: str) -> Message:
    """Any JSON object with the message's fields, checked one by one."""
    try:
        raw = _DECODER.decode(text)
    except ValueError as exc:
        raise CorruptMessage(f"not a JSON message: {exc}") from None
    except RecursionError:
        raise CorruptMessage("not a JSON message: nested too deeply") from None
    if not isinstance(raw, dict):
        raise CorruptMessage("payload is not a JSON object")
    # One chained test; _what_is_wrong only runs to name the problem. ``type()
    # is`` keeps booleans out of the int fields, as json gives exact types.
    limit = raw.get("requeue_limit")
    try:
        timeout_type = type(raw["message_timeout"])
        valid = (
            raw["format"] == FORMAT_VERSION and type(raw["id"]) is str and type(raw["queue"]) is str
            and type(raw["published"]) is int and type(raw["priority"]) is int
            and (timeout_type is int or timeout_type is float) and type(raw["requeue"]) is bool
            and type(raw["requeue_prio"]) is int and type(raw["durable"]) is bool
            and type(raw["host"]) is str and type(raw["pid"]) is int and type(raw["headers"]) is dict
            and (limit is None or type(limit) is int) and "message" in raw
        )
    except KeyError:
        valid = False
    if not valid:
        raise CorruptMessage(_what_is_wrong(raw))
    return _usable(Message(raw["id"], raw["queue"], raw["message"], raw["priority"], raw["published"],
                           raw["message_timeout"], raw["requeue"], raw["requeue_prio"], limit, raw["durable"],
                           raw["host"], raw["pid"], raw["headers"]))


def _what_is_wrong(raw: dict[str, Any]) -> str:
    if raw.get("format") != FORMAT_VERSION:
        return f"unknown format {raw.get('format')!r}"
    for key, kind in _REQUIRED.items():
        if not isinstance(raw.get(key), kind) or (kind is int and isinstance(raw[key], bool)):
            return f"field {key!r} missing or of the wrong type"
    if "message" not in raw:
        return "field 'message' missing"
    return "field 'requeue_limit' of the wrong type"
