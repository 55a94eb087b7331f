"""The payload codec: what encode writes, decode reads back, by its fast path or the full decoder.

decode reads the envelope encode writes field by field and falls back to the
full JSON decoder for anything else. The two must never disagree: on every
text, either both raise CorruptMessage or both return equal messages.
"""
from __future__ import annotations

import json
import random
import string

import pytest

from ddmq import message as codec
from ddmq.layout import new_message_id
from ddmq.message import CorruptMessage, Message, decode, encode

BODIES = [
    "plain", "", "quote \" and backslash \\ and newline \n", "ünïcødé ✓ \u2028", 0, -7, 2**70, 1.5, -0.0, 1e300,
    True, False, None, [], {}, [1, [2, [3]]], {"b": 1, "a": {"nested": [None, "x"]}}, {"message": "}, \"x\": 1"},
]


def message(rng: random.Random, body: object = "x") -> Message:
    return Message(
        new_message_id(), rng.choice(["q", "a-b_c.d", "Q" * 128]), body, rng.randint(0, 999_999),
        rng.randint(0, 2**63), rng.choice([600, 1, 0.5, 1e9, 1e-3, 123.25]), rng.random() < 0.5,
        rng.randint(0, 999_999), rng.choice([None, 0, 3, 10**12]), rng.random() < 0.5,
        rng.choice(["node17", "host.example.org", "nœud-✓"]), rng.randint(1, 2**22),
        rng.choice([{}, {"k": "v"}, {"z": [1, 2], "a": {"b": None}}]),
    )


def full_decode(text: str) -> Message:
    return codec._decode_any(text)


def same_outcome(text: str) -> None:
    """decode (fast path first) and the full decoder agree on ``text``."""
    try:
        expected: Message | None = full_decode(text)
    except CorruptMessage:
        expected = None
    try:
        got: Message | None = decode(text.encode("utf-8", "surrogatepass"))
    except CorruptMessage:
        got = None
    assert repr(got) == repr(expected), text  # repr: NaN is not equal to itself, and 1 == 1.0


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_what_encode_writes_decodes_to_the_same_message_by_the_fast_path(body: object) -> None:
    rng = random.Random(7)
    for _ in range(20):
        msg = message(rng, body)
        data = encode(msg)
        assert codec._decode_envelope(data.decode()) == msg  # not through the full decoder
        assert decode(data) == msg == full_decode(data.decode())
        assert json.loads(data)["message"] == json.loads(json.dumps(body))  # plain JSON, body included


def test_every_single_character_change_is_read_the_same_by_both_paths() -> None:
    """Digits, quotes, braces, escapes, whitespace and letters dropped in anywhere in a payload."""
    rng = random.Random(11)
    alphabet = string.digits + string.ascii_letters + ' "\\{}[],:.-+\x00\x1f'
    for _ in range(60):
        text = encode(message(rng, rng.choice(BODIES))).decode()
        for _ in range(40):
            at = rng.randrange(len(text))
            same_outcome(text[:at] + rng.choice(alphabet) + text[at + 1:])  # replaced
            same_outcome(text[:at] + rng.choice(alphabet) + text[at:])  # inserted
            same_outcome(text[:at] + text[at + 1:])  # deleted


@pytest.mark.parametrize("change", [
    ('"priority": 5', '"priority": 05'),             # leading zero: not JSON
    ('"priority": 5', '"priority": 5.0'),            # a float where an int belongs
    ('"priority": 5', '"priority": true'),
    ('"message_timeout": 600', '"message_timeout": 6e2'),  # a float, read as one
    ('"message_timeout": 600', '"message_timeout": 600.0'),
    ('"requeue": true', '"requeue": 1'),
    ('"requeue_limit": null', '"requeue_limit": 3'),
    ('"requeue_limit": null', '"requeue_limit": -3'),
    ('"host": "node17"', '"host": "node\\u0031\\u0037"'),  # an escape: the full decoder reads it
    ('"host": "node17"', '"host": "node\t17"'),      # a raw control character: not JSON
    ('"headers": {}', '"headers": []'),
    ('"headers": {}', '"headers": {"k": "v", "k": "w"}'),
    ('"format": 1', '"format": 2'),
    ('"message": "hi"}', '"message": "hi", "id": "0123"}'),  # a later duplicate key wins
    ('"message": "hi"}', '"message": "hi"} '),       # whitespace after: still a message
    ('{"format"', ' {"format"'),
    ('"message": "hi"}', '"message": "hi"}{}'),      # trailing data: corrupt
    ('"message": "hi"}', '"message": NaN}'),         # what json itself accepts, both accept
])
def test_hand_made_variants_are_read_the_same_by_both_paths(change: tuple[str, str]) -> None:
    msg = Message(new_message_id(), "q", "hi", 5, 1795783320231913000, 600, True, 0, None, False, "node17", 42, {})
    text = encode(msg).decode()
    old, new = change
    assert old in text
    same_outcome(text.replace(old, new, 1))


def test_payloads_written_by_earlier_versions_are_still_messages() -> None:
    """Before the template, payloads were a dict dumped with sorted keys."""
    written = (
        '{"durable": false, "format": 1, "headers": {"k": "v"}, "host": "node17", '
        '"id": "0123456789abcdef0123456789abcdef", "message": {"a": 1}, "message_timeout": 600, '
        '"pid": 4242, "priority": 999, "published": 1795764572488935700, "queue": "q", "requeue": true, '
        '"requeue_limit": null, "requeue_prio": 0}'
    )
    msg = decode(written.encode())
    assert (msg.id, msg.message, msg.headers, msg.priority, msg.requeue_limit) == (
        "0123456789abcdef0123456789abcdef", {"a": 1}, {"k": "v"}, 999, None)


def test_bodies_json_cannot_hold_are_refused_by_encode() -> None:
    rng = random.Random(3)
    for body in (float("nan"), float("inf"), {1, 2}, object(), b"bytes", "\udc80"):
        with pytest.raises(TypeError, match="JSON|serializable"):
            encode(message(rng, body))
