"""``KEY=VALUE`` fields: how ``ddmq-wait`` matches the JSON objects ``ddmq-notify --field`` builds.

Values are compared as text (:func:`ddmq.console.body_text`), because they
usually come from the shell: a field ``status=0`` matches the JSON number 0
and the string "0" alike.
"""
from __future__ import annotations

from ddmq import UsageError
from ddmq.console import body_text

TYPE_CHECKING = False  # typing is for annotations only: it slows every job's start-up
if TYPE_CHECKING:
    from typing import Any, Mapping


def fields_match(body: Any, fields: Mapping[str, str]) -> bool:
    """True if ``body`` is a JSON object holding every field with that value."""
    if not isinstance(body, dict):
        return False
    return all(key in body and body_text(body[key]) == value for key, value in fields.items())


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
