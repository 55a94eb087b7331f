"""A message: the immutable payload written at publish, plus the state read from its name.

The payload file is JSON, written once and never rewritten. What changes over
a message's life (current priority, requeue count, lease) comes from the file
name and is filled into the :class:`Message` when it is read.
"""
from __future__ import annotations

import json

# Names for type annotations only: importing typing at run time costs a
# command-line tool several milliseconds of start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FORMAT_VERSION = 1
# Larger payloads are refused at publish and dead-lettered when found in a queue.
MAX_MESSAGE_BYTES = 64 << 20
_REQUIRED = {
    "id": str, "queue": str, "published": int, "priority": int, "message_timeout": (int, float),
    "requeue": bool, "requeue_prio": int, "durable": bool, "host": str, "pid": int, "headers": dict,
}


class CorruptMessage(ValueError):
    """A payload file that is not a ddmq message; the text says what is wrong."""


_FIELDS = ("id", "queue", "message", "priority", "published", "message_timeout", "requeue", "requeue_prio",
           "requeue_limit", "durable", "host", "pid", "headers", "requeues", "receipt", "lease_expires")


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
        self.receipt = receipt  # set while this consumer holds the lease
        self.lease_expires = lease_expires  # nanoseconds since the epoch

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

    def payload(self) -> dict[str, Any]:
        """The immutable part, as written to disk (built by hand: ``asdict`` deep-copies the body)."""
        return {
            "format": FORMAT_VERSION, "id": self.id, "queue": self.queue, "message": self.message,
            "priority": self.priority, "published": self.published, "message_timeout": self.message_timeout,
            "requeue": self.requeue, "requeue_prio": self.requeue_prio, "requeue_limit": self.requeue_limit,
            "durable": self.durable, "host": self.host, "pid": self.pid, "headers": self.headers,
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, for JSON/YAML output; stable keys."""
        import copy  # deferred: only output needs it, and it imports weakref

        data = {k: copy.deepcopy(getattr(self, k)) for k in _FIELDS}
        data["delivery_count"] = self.delivery_count
        return data


# Made once: json.dumps with non-default options builds a new encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, allow_nan=False)


def encode(message: Message) -> bytes:
    """Serialise the payload; raises TypeError for bodies JSON cannot hold."""
    try:
        return _ENCODER.encode(message.payload()).encode()
    except ValueError as exc:
        raise TypeError(f"message is not JSON-serialisable: {exc}") from None


def decode(data: bytes) -> Message:
    """Parse a payload file, checking it is a complete ddmq message."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptMessage(f"not a JSON message: {exc}") from None
    if not isinstance(raw, dict):
        raise CorruptMessage("payload is not a JSON object")
    if raw.get("format") != FORMAT_VERSION:
        raise CorruptMessage(f"unknown format {raw.get('format')!r}")
    get = raw.get
    # One chained test for the common case (every message read pays for it);
    # the loop below only runs to name what is wrong. ``type() is`` keeps
    # booleans out of the int fields, as json.loads gives exact types.
    timeout_type, limit = type(get("message_timeout")), get("requeue_limit")
    if not (
        type(get("id")) is str and type(get("queue")) is str and type(get("published")) is int
        and type(get("priority")) is int and (timeout_type is int or timeout_type is float)
        and type(get("requeue")) is bool and type(get("requeue_prio")) is int
        and type(get("durable")) is bool and type(get("host")) is str and type(get("pid")) is int
        and type(get("headers")) is dict and (limit is None or type(limit) is int) and "message" in raw
    ):
        raise CorruptMessage(_what_is_wrong(raw))
    return Message(
        id=raw["id"], queue=raw["queue"], message=raw["message"], priority=raw["priority"],
        published=raw["published"], message_timeout=raw["message_timeout"],
        requeue=raw["requeue"], requeue_prio=raw["requeue_prio"], requeue_limit=limit,
        durable=raw["durable"], host=raw["host"], pid=raw["pid"], headers=raw["headers"],
    )


def _what_is_wrong(raw: dict[str, Any]) -> str:
    for key, kind in _REQUIRED.items():
        if not isinstance(raw.get(key), kind) or (kind is int and isinstance(raw[key], bool)):
            return f"field {key!r} missing or of the wrong type"
    if "message" not in raw:
        return "field 'message' missing"
    return "field 'requeue_limit' of the wrong type"
