"""``KEY=VALUE`` fields: how ``ddmq-notify`` builds JSON objects and ``ddmq-wait`` matches them.

Values are compared as text, because they usually come from the shell: a
field ``status=0`` matches the JSON number 0 and the string "0" alike.
"""
from __future__ import annotations

import json
TYPE_CHECKING = False  # typing is for annotations only: it slows every job's start-up
if TYPE_CHECKING:
    from typing import Any, Iterable, Mapping

from ddmq.errors import UsageError


def parse_fields(pairs: Iterable[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"invalid field {pair!r}: use KEY=VALUE")
        fields[key] = value
    return fields


def add_fields(event: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, Any]:
    """``event`` with ``fields`` added; a field that would replace one of the event's own is an error.

    Waiters match on the event's own fields (``job_id``, ``state``,
    ``cluster``...): a field that silently replaced one would make the event
    lie about its job. Only the fields the event has are its own, so outside
    a job, where there is no job id, a field may give one.
    """
    taken = next((key for key in fields if key in event), None)
    if taken is not None:
        raise UsageError(f"field {taken!r} is one of the completion event's own "
                         f"({', '.join(event)}): give yours another name")
    return {**event, **fields}


def as_text(value: Any) -> str:
    """A body or field value as a person (or a shell script) would write it."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def fields_match(body: Any, fields: Mapping[str, str]) -> bool:
    """True if ``body`` is a JSON object holding every field with that value."""
    if not isinstance(body, dict):
        return False
    return all(key in body and as_text(body[key]) == value for key, value in fields.items())
