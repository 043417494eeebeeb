"""Protocol types and codecs, fed objects and bytes only (no I/O)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from protocol.codec import EncodedEvent, decode_event, encode_event, sse_frame, ws_text_frame
from protocol.events import EVENT_CLASSES, ErrorDetail
from protocol.messages import CancelCommand, StartCommand, SubscribeCommand, decode_command

SAMPLE_DATA: dict[str, dict[str, Any]] = {
    "conversation_started": {},
    "run_started": {"input": {"text": "hi"}, "on_disconnect": "cancel"},
    "require_user_input": {"request_id": "q_1", "prompt": "Proceed?", "choices": ["y", "n"],
                           "expires_at": 1},
    "user_input_received": {"request_id": "q_1", "value": "y"},
    "run_cancelling": {"reason": "requested"},
    "done": {"status": "failed", "events": 3, "error": {"code": "x", "message": "y"}},
    "message_chunk": {"delta": "Hel\nlo \u00e9"},
    "message": {"text": "Hello"},
    "reasoning_started": {},
    "reasoning": {"delta": "hmm"},
    "reasoning_completed": {"text": "hmm"},
    "tool_call_started": {"name": "lookup", "arguments": {"q": 1}},
    "tool_call_arguments": {"delta": "{\"q\": 1", "merged": 2},
    "tool_call_completed": {"name": "lookup", "result": [1, 2]},
    "component_generator": {"component_type": "chart", "payload": {"a": 1}},
    "notify": {"message": "hi", "level": "warning"},
    "task_started": {"title": "t"},
    "task_completed": {"result": 1},
    "task_failed": {"error": {"code": "c", "message": "m"}},
    "task_cancelled": {},
}


def envelope(event_type: str, seq: int = 17) -> dict[str, Any]:
    return {"seq": seq, "conversation_id": "c_1", "run_id": "r_1", "agent": "demo",
            "type": event_type, "ts": 1763725000123, "item_id": "m_1",
            "data": SAMPLE_DATA[event_type]}


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLE_DATA) == set(EVENT_CLASSES)


@pytest.mark.parametrize("event_type", sorted(SAMPLE_DATA))
def test_every_type_round_trips(event_type: str) -> None:
    raw = json.dumps(envelope(event_type)).encode()
    event = decode_event(raw)
    assert type(event) is EVENT_CLASSES[event_type]
    again = decode_event(encode_event(event))
    assert again == event
    out = json.loads(encode_event(event))
    assert out["type"] == event_type and out["seq"] == 17 and out["run_id"] == "r_1"


def test_envelope_json_is_one_line_even_with_newlines_in_text() -> None:
    body = encode_event(decode_event(json.dumps(envelope("message_chunk")).encode()))
    assert b"\n" not in body and b"\r" not in body


def test_sse_frame_bytes() -> None:
    assert sse_frame(5, "done", b"{}") == b"id: 5\nevent: done\ndata: {}\n\n"


def test_encoded_event_frames_are_built_once_and_share_the_body() -> None:
    enc = EncodedEvent.from_event(decode_event(json.dumps(envelope("message")).encode()))
    assert enc.sse is enc.sse and enc.ws is enc.ws
    assert enc.sse.endswith(enc.body + b"\n\n")
    assert enc.body in enc.ws
    assert json.loads(enc.ws[4:] if enc.ws[1] == 126 else enc.ws[2:])["event"]["seq"] == 17


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_ws_frame_header_lengths(size: int) -> None:
    frame = ws_text_frame(b"x" * size)
    assert frame[0] == 0x81
    if size < 126:
        assert frame[1] == size and len(frame) == size + 2
    elif size < 65536:
        assert frame[1] == 126 and int.from_bytes(frame[2:4], "big") == size
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10], "big") == size


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{", "truncated"),
        (b"{]", "malformed"),
        (b"[]", "Expected `object`"),
        (b'{"type":"nope","seq":1}', "Invalid value 'nope'"),
        (json.dumps({**envelope("done"), "seq": "x"}).encode(), "Expected `int`"),
        (json.dumps({**envelope("done"), "data": {"status": "weird", "events": 1}}).encode(),
         "Invalid enum value 'weird'"),
    ],
)
def test_malformed_events_are_rejected_with_msgspec_message(raw: bytes, fragment: str) -> None:
    with pytest.raises((msgspec.DecodeError, msgspec.ValidationError)) as info:
        decode_event(raw)
    assert fragment in str(info.value)


def test_commands_decode_and_reject() -> None:
    cmd = decode_command(b'{"type":"start","agent":"demo","input":"hi","ref":"a"}')
    assert isinstance(cmd, StartCommand) and cmd.ref == "a"
    sub = decode_command(b'{"type":"subscribe","conversation_id":"c_1","after":3}')
    assert isinstance(sub, SubscribeCommand) and sub.after == 3
    assert isinstance(decode_command(b'{"type":"cancel","run_id":"r_1"}'), CancelCommand)
    for bad, fragment in [
        (b'{"type":"subscribe","conversation_id":"bad id!"}', "matching regex"),
        (b'{"type":"subscribe","after":-1,"conversation_id":"c"}', ">= 0"),
        (b'{"type":"start"}', "missing required field `agent`"),
        (b'{"type":"start","agent":"demo","bogus":1}', "unknown field `bogus`"),
        (b'{"agent":"demo"}', "missing required field `type`"),
    ]:
        with pytest.raises(msgspec.ValidationError) as info:
            decode_command(bad)
        assert fragment in str(info.value)


def test_error_info_struct() -> None:
    assert msgspec.json.encode(ErrorDetail("a", "b")) == b'{"code":"a","message":"b"}'
