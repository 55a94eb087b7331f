"""A ``ddmq json`` request: a JSON object naming an operation and its arguments, checked before it runs.

Scripts that build their command as data get the same operations as the
command line, and the same one-line usage errors: the request must be an
object with a ``"cmd"`` key naming an operation of :data:`ddmq.ops.OPERATIONS`,
and every argument must have the JSON type the operation's signature says --
"false" is not false, 1 is not true, "5" and 5.0 are not 5.
"""
from __future__ import annotations

from .errors import UsageError

TYPE_CHECKING = False  # typing is for annotations only
if TYPE_CHECKING:
    from typing import Any, Callable


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def _finite(value: Any) -> bool:
    import math

    return math.isfinite(value)


# What an argument of a ``ddmq json`` command may be, by the name of a type in
# the annotations of the op_* functions (strings: ops has postponed annotations).
_JSON_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v), "a number"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "None": (lambda v: v is None, "null"),
    "Any": (lambda v: True, "any JSON value"),
}


def expected_types(annotation: Any) -> list[tuple[Callable[[Any], bool], str]]:
    """What a JSON value may be for a parameter annotated ``annotation`` (``"str | list[str] | None"``).

    Empty if the annotation names a type not in _JSON_TYPES: such an argument
    is refused, and a test checks that no operation has one.
    """
    import re

    if not isinstance(annotation, str):
        return []
    names = [re.sub(r"^dict\[.*\]$", "dict", name.strip()) for name in annotation.split("|")]
    return [_JSON_TYPES[name] for name in names] if all(name in _JSON_TYPES for name in names) else []


def _shown(value: Any) -> str:
    """A JSON value for an error message, cut short."""
    import json

    try:
        text = json.dumps(value, ensure_ascii=False)
    except RecursionError:  # nested deeper than Python's stack allows
        return "an object" if isinstance(value, dict) else "a list"
    return text if len(text) <= 40 else text[:37] + "..."


def _check_types(name: str, request: dict[str, Any]) -> None:
    """Every argument of the JSON request has the type the operation's signature says; else a usage error.

    JSON has booleans and numbers of its own: "false" is not false, 1 is not
    true, "5" and 5.0 are not 5.
    """
    import inspect

    from .ops import OPERATIONS

    params = inspect.signature(OPERATIONS[name]).parameters
    for key, value in request.items():
        param = params.get(key)
        if param is None or param.kind is param.VAR_KEYWORD:
            continue  # create's queue settings: checked by the settings schema
        accepted = expected_types(param.annotation)
        if not any(check(value) for check, _ in accepted):
            kinds = [what for _, what in accepted] or ["(unchecked)"]
            expected = " or ".join([", ".join(kinds[:-1]), kinds[-1]] if len(kinds) > 1 else kinds)
            raise UsageError(f'{name}: "{key}" must be {expected}, not {_shown(value)}')


def parse_request(text: str) -> tuple[str, dict[str, Any]]:
    """The operation's name and its arguments from ``text``; UsageError if it is not a valid request."""
    import inspect
    import json

    from .ops import OPERATIONS

    try:
        request = json.JSONDecoder(parse_constant=_not_json).decode(text)
    except RecursionError:
        raise UsageError("not valid JSON: nested too deeply") from None
    except ValueError as exc:
        raise UsageError(f"not valid JSON: {exc}") from None
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise UsageError('expected a JSON object with a "cmd" key')
    name = request.pop("cmd")
    if name not in OPERATIONS:
        raise UsageError(f"unknown cmd {name!r}; one of: {', '.join(OPERATIONS)}")
    try:
        inspect.signature(OPERATIONS[name]).bind(None, **request)
    except TypeError as exc:
        raise UsageError(f"{name}: {exc}") from None
    _check_types(name, request)
    return name, request
