"""Fuzzing the JSON decoders (issue 11): whatever the bytes, ``decode_command`` and
``decode_json`` return a value or raise ``msgspec.DecodeError`` (``ValidationError`` is one),
never RecursionError, UnicodeError or anything else; ``parse_position`` takes ASCII digits
only. Short by design (a few hundred examples, no deadline); CI runs it with the suite."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api.common import parse_position
from protocol.messages import MAX_JSON_DEPTH, Command, decode_command, decode_json

# FUZZ_EXAMPLES=5000 for a long local run (then examples are random, not derandomized).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(max_examples=EXAMPLES or 60, deadline=None, derandomize=EXAMPLES is None,
                suppress_health_check=[HealthCheck.too_slow])
COMMAND_TYPES = ["start", "subscribe", "unsubscribe", "input", "cancel", "ping", "refresh",
                 "bogus", ""]
FIELDS = ["type", "ref", "agent", "input", "conversation_id", "run_id", "request_id", "value",
          "after", "start_ref", "token", "on_disconnect", "metadata", "surprise"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)
commands = st.fixed_dictionaries(
    {"type": st.sampled_from(COMMAND_TYPES)},
    optional={f: json_values for f in FIELDS if f != "type"},
)


def deep(depth: int, opener: str) -> str:
    closer = {"[": "]", "{": "}"}[opener]
    if opener == "[":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + closer * depth


def mutate(text: str, data: st.DataObject) -> bytes:
    """Encode, then cut or splice in a random byte: truncation, bad UTF-8, stray brackets."""
    raw = text.encode("utf-8", "surrogatepass")
    if raw and data.draw(st.booleans()):
        at = data.draw(st.integers(0, len(raw)))
        raw = raw[:at] + data.draw(st.binary(max_size=3)) + raw[at + 1:]
    return raw


COMMAND_CLASSES = Command.__args__  # type: ignore[attr-defined]


def assert_decodes_or_decode_error(raw: bytes | str) -> None:
    """Any other exception (RecursionError, UnicodeError, ...) fails the example."""
    with contextlib.suppress(msgspec.DecodeError):
        assert isinstance(decode_command(raw), COMMAND_CLASSES)
    with contextlib.suppress(msgspec.DecodeError):
        decode_json(raw)


@FUZZ
@given(st.binary(max_size=200))
def test_fuzz_decoders_on_random_bytes(raw: bytes) -> None:
    assert_decodes_or_decode_error(raw)


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_decoders_on_random_text(raw: str) -> None:
    assert_decodes_or_decode_error(raw)


@FUZZ
@given(commands, st.data())
def test_fuzz_decode_command_on_command_shaped_json(cmd: dict[str, Any],
                                                    data: st.DataObject) -> None:
    text = msgspec.json.encode(cmd).decode()
    assert_decodes_or_decode_error(text)
    assert_decodes_or_decode_error(mutate(text, data))


@FUZZ
@given(st.integers(1, 20_000), st.sampled_from(["[", "{"]), st.booleans(), st.booleans())
def test_fuzz_deep_nesting_is_a_decode_error(depth: int, opener: str, inside: bool,
                                             as_bytes: bool) -> None:
    """Issue 11 item 4: thousands of levels raised RecursionError in the decoder."""
    doc = deep(depth, opener)
    if inside:
        doc = '{"type":"start","agent":"demo","input":' + doc + "}"
    raw: bytes | str = doc.encode() if as_bytes else doc
    levels = depth + inside
    for decode in (decode_command, decode_json):
        try:
            decode(raw)
        except msgspec.DecodeError as exc:
            if levels > MAX_JSON_DEPTH:
                assert "nested too deeply" in str(exc)
        else:
            assert levels <= MAX_JSON_DEPTH


@FUZZ
@given(st.text(max_size=25))
def test_fuzz_positions_are_ascii_digits_only(raw: str) -> None:
    got = parse_position(raw)
    if raw.isascii() and raw.isdigit() and len(raw) <= 18:
        assert got == int(raw)
    else:
        assert got is None


@FUZZ
@given(st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=6))
def test_fuzz_unicode_digits_are_not_positions(raw: str) -> None:
    assert parse_position(raw) is None or raw.isascii()
