"""The Cylc 8 xtrigger ``ddmq_message``: a task waits for a message on a ddmq queue.

In a workflow (``flow.cylc``)::

    [scheduling]
        [[xtriggers]]
            upstream_done = ddmq_message(queue=cylc_events, field_workflow=upstream, field_point=%(point)s):PT10S
        [[graph]]
            P1 = "@upstream_done => process"

Cylc finds it through the ``cylc.xtriggers`` entry point (pyproject.toml).
It is not called ``ddmq``: Cylc first imports a module of the xtrigger's
name from ``sys.path``, and that would be the ``ddmq`` package itself.

Why the arguments look as they do: Cylc does not parse a Python call. It
splits the text between the parentheses at commas outside quotes, reads each
value as an int, float, True/False/None if it can and as a string otherwise
(quotes removed; unquoted, ``#`` starts a comment), and fills in its
``%(point)s``-style templates in strings before each call. A dict literal
would reach the function as a string, or cut in pieces at its commas. So each
field to match is a keyword of its own, ``field_NAME=VALUE``, and the only
other keywords are ``match``, ``regex`` and ``root``: :func:`validate`
refuses any other, so a misspelt keyword fails ``cylc validate`` instead of
becoming a field that no message has.

Cylc runs the function in a fresh process every interval until it returns
``(True, results)``. It only peeks (one listing of the queue, the matching
message read): the message stays, so every cycle point, every workflow and
every later run can see the same event. Cylc gives each result to the
dependent tasks as an environment variable ``<label>_<key>``.
"""
from __future__ import annotations

import re
from typing import Any

from ddmq import Broker, DdmqError, Message, NotARoot, QueueNotFound, RootNotFound, UsageError, check_queue_name
from ddmq.console import body_text, say

from .retry import is_transient
from .wait import absence, matcher

NAME = "ddmq_message"
FIELD_PREFIX = "field_"
# The keywords ddmq_message takes besides queue and field_NAME (Cylc's own
# "sequential" is taken out before validate sees the fields, and before a call).
_OPTIONS = ("match", "regex", "root")
# Body fields whose names can follow "<label>_field_" in an environment variable's name.
_ENV_KEY = re.compile(r"[A-Za-z0-9_]+")
# A value longer than this (in UTF-8) is not passed to the tasks: each
# environment variable must fit in 128 KiB (MAX_ARG_STRLEN) or no program in
# the job could be started. The task still gets the message id (``ddmq show``).
MAX_VALUE_BYTES = 65536
# A Cylc template (%(point)s), a literal % (%%), or a stray %, which Cylc's
# "value % templates" would fail on or fill in wrongly when it calls the xtrigger.
_TEMPLATE = re.compile(r"%(?:(%)|\((\w+)\)s|)")


def ddmq_message(queue: str, *, match: Any = None, regex: Any = None, root: str | None = None,
                 **fields: Any) -> tuple[bool, dict[str, str]]:
    """Whether a message on ``queue`` matches; if so, what the dependent tasks get of it.

    ``match``: the exact body text; ``regex``: searched in the body text;
    ``field_NAME=VALUE``: the body is a JSON object whose field NAME has the
    text VALUE. All given must hold (as ``ddmq-wait --match/--regex/--field``:
    text as :func:`ddmq.console.body_text` writes it, so Cylc's ``field_x=1``,
    read as the number 1, matches both 1 and "1"). The root is ``root``,
    else ``$DDMQ_ROOT``, else ``~/.ddmq``.

    A missing root or queue, or a transient filesystem error, is "not yet"
    (said on stderr, which Cylc logs at debug level): the workflow that
    publishes to it may not have run yet. Bad arguments raise UsageError,
    which Cylc reports in the workflow log.

    Results: ``message_id``, ``message`` (the body as text) and, for a JSON
    object body, ``field_NAME`` for each field whose name can be part of an
    environment variable's (nested values as JSON), each written so that the
    task's job script gives back exactly this text (see :func:`for_job_script`).
    """
    wanted = matcher(_text("match", match), _text("regex", regex, number=False), _fields(fields))
    check_queue_name(queue)
    try:
        with Broker(_text("root", root, number=False), create=False) as b:
            found = b.peek(queue, n=1, match=wanted)
    except (QueueNotFound, RootNotFound, NotARoot) as exc:
        say(NAME, absence(exc, queue, root).format(" (yet)") + ": not satisfied")
        return False, {}
    except DdmqError as exc:
        if not is_transient(exc):
            raise
        say(NAME, f"{exc}: not satisfied, tried again at the next call")
        return False, {}
    return (True, results(found[0])) if found else (False, {})


def results(msg: Message) -> dict[str, str]:
    """What the dependent tasks get of ``msg``, keyed by the names Cylc puts after ``<label>_``."""
    values = {"message_id": msg.id, "message": body_text(msg.message)}
    if isinstance(msg.message, dict):
        for key, value in msg.message.items():
            if _ENV_KEY.fullmatch(key):
                values[FIELD_PREFIX + key] = body_text(value)
    passed = {key: for_job_script(text) for key, text in values.items()}
    too_long = [key for key, text in passed.items() if len(text.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES]
    if too_long:
        say(NAME, f"message {msg.id}: {', '.join(too_long)} longer than {MAX_VALUE_BYTES} bytes, not passed "
                  f"to the tasks (their environment could not hold it): read it with ddmq show {msg.queue} {msg.id}")
    return {key: text for key, text in passed.items() if key not in too_long}


def for_job_script(text: str) -> str:
    """``text`` written so that a Cylc job script's environment gives it back exactly.

    A result becomes a line ``NAME="VALUE"`` in the job script, and on its
    way there Cylc strips and dedents the value, unquotes one that starts
    with a quote, and leaves one that starts with ``~`` outside the double
    quotes. A message is written by whoever can publish to the queue, so
    unescaped, ``$(...)`` or a ``"`` in a field would run commands in the
    task. So: ``\\ $ ` "`` are escaped; a value that starts with white space,
    ``~`` or ``'`` starts with a backslash-newline (which the shell removes
    inside double quotes); one that ends with white space ends with ``""``;
    and a line of only blanks (which dedent would empty) starts with ``""``.
    """
    escaped = re.sub(r'([\\$`"])', r"\\\1", text)
    escaped = re.sub(r"(?m)^(?=[ \t]+$)", '""', escaped)
    if text[:1].isspace() or text[:1] in ("~", "'"):
        escaped = "\\\n" + escaped
    if text[-1:].isspace():
        escaped += '""'
    return escaped


def validate(args: dict[str, Any]) -> None:
    """Check the arguments of a ``ddmq_message`` xtrigger at ``cylc validate`` (and ``cylc play``).

    ``args`` is what Cylc bound to the function's signature, templates not
    filled in yet: every keyword must be known, every value of a type Cylc
    can pass, the queue name valid once templates are filled in, the regex
    compilable, and a literal ``%`` written ``%%``. Raises Cylc's
    WorkflowConfigError, which it reports in one line.
    """
    from cylc.flow.exceptions import WorkflowConfigError

    try:
        _check(args)
    except UsageError as exc:
        raise WorkflowConfigError(f"{NAME}: {exc}") from None


def _check(args: dict[str, Any]) -> None:
    text = {key: _text(key, args.get(key), number=key == "match") for key in ("queue", *_OPTIONS)}
    text.update(_fields(args.get("fields", {})))
    filled = {key: _fill_templates(key, value) for key, value in text.items() if value is not None}
    check_queue_name(filled.get("queue"))
    if "regex" in filled:
        try:
            re.compile(filled["regex"])
        except re.error as exc:
            raise UsageError(f"regex={text['regex']!r}: {exc}") from None


def _fill_templates(key: str, value: str) -> str:
    """``value`` with each Cylc template filled in with a sample; UsageError for a stray %."""
    def fill(found: re.Match[str]) -> str:
        if found[1]:
            return "%"
        if found[2]:
            return "x"
        raise UsageError(f"{key}={value!r}: a literal % is written %% (Cylc fills in %(name)s templates)")
    return _TEMPLATE.sub(fill, value)


def _fields(fields: dict[str, Any]) -> dict[str, str]:
    """``field_NAME=VALUE`` keywords as the ``{NAME: text}`` that :func:`ddmq_hpc.fields.fields_match` takes."""
    matched: dict[str, str] = {}
    for key, value in fields.items():
        if not key.startswith(FIELD_PREFIX) or key == FIELD_PREFIX:
            raise UsageError(f"unknown argument {key!r}: {NAME} takes queue, {', '.join(_OPTIONS)} "
                             "and field_NAME=VALUE (a body field to match)")
        matched[key[len(FIELD_PREFIX):]] = body_text(value)
    return matched


def _text(key: str, value: Any, number: bool = True) -> str | None:
    """An argument that must be text; Cylc reads ``7`` or ``True`` as a number or bool.

    Where a body is compared (``match``), such a value is compared as its
    JSON text, as a field is; a name (queue, root) or a regex must be text.
    """
    if value is None or isinstance(value, str):
        return value
    if number and isinstance(value, (bool, int, float)):
        return body_text(value)
    raise UsageError(f"{key}={value!r} is not text: quote it ({key}=\"{value}\")")
