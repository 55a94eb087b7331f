"""``KEY=VALUE`` fields: how ``ddmq-wait`` matches the JSON objects ``ddmq-notify --field`` builds.

Values are compared as text (:func:`ddmq.console.body_text`), because they
usually come from the shell: a field ``status=0`` matches the JSON number 0
and the string "0" alike.
"""
from __future__ import annotations

from ddmq.console import body_text

TYPE_CHECKING = False  # typing is for annotations only: it slows every job's start-up
if TYPE_CHECKING:
    from typing import Any, Mapping


def fields_match(body: Any, fields: Mapping[str, str]) -> bool:
    """True if ``body`` is a JSON object holding every field with that value."""
    if not isinstance(body, dict):
        return False
    return all(key in body and body_text(body[key]) == value for key, value in fields.items())
