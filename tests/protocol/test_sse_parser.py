"""The incremental SSE parser, driven by bytes only: every split point gives the same events."""

from __future__ import annotations

import pytest

from protocol.sse_parser import SseEvent, SseParser, SseProtocolError

STREAM = (
    "\ufeff: comment at the very start\r\n"
    "retry: 1500\r\n"
    "\r\n"
    "id: 1\r\n"
    "event: message_chunk\r\n"
    'data: {"delta":"h\u00e9llo \u4e16\u754c \U0001f600"}\r\n'
    "\r\n"
    ": ping\n"
    "\n"
    "data: line one\r"
    "data:line two\r"
    "data:  kept space\r"
    "\r"
    "id: 2\n"
    "event: done\n"
    "unknown: field\n"
    "data\n"
    "\n"
    "data: [DONE]\n"
    "\n"
    "data: cut off by the end of the stream\n"
).encode()

EXPECTED = [
    SseEvent("message_chunk", '{"delta":"h\u00e9llo \u4e16\u754c \U0001f600"}', "1", None),
    SseEvent("message", "line one\nline two\n kept space", None, None),
    SseEvent("done", "", "2", None),
    SseEvent("message", "[DONE]", None, None),
]


def parse(chunks: list[bytes]) -> tuple[list[SseEvent], SseParser]:
    parser = SseParser()
    out: list[SseEvent] = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out, parser


def test_whole_stream() -> None:
    events, parser = parse([STREAM])
    assert events == EXPECTED
    assert parser.retry == 1500
    assert parser.last_event_id == "2"
    assert parser.comments == 2


def test_split_at_every_position_gives_the_same_events() -> None:
    """Covers CRLF split between reads and UTF-8 sequences split mid-character."""
    for cut in range(len(STREAM) + 1):
        events, _ = parse([STREAM[:cut], STREAM[cut:]])
        assert events == EXPECTED, f"split at byte {cut}"


def test_split_at_every_pair_of_positions() -> None:
    n = len(STREAM)
    for a in range(0, n, 3):
        for b in range(a, n, 7):
            events, _ = parse([STREAM[:a], STREAM[a:b], STREAM[b:]])
            assert events == EXPECTED, f"split at {a} and {b}"


def test_byte_by_byte() -> None:
    events, _ = parse([bytes([b]) for b in STREAM])
    assert events == EXPECTED


def test_cr_then_empty_read_then_lf_is_one_line_end() -> None:
    events, _ = parse([b"data: a\r", b"", b"\n\r", b"", b"\n"])
    assert events == [SseEvent(data="a")]


def test_openai_style_frames() -> None:
    raw = b'data: {"a":1}\n\ndata: {"a":2}\n\n: keep-alive\n\ndata: [DONE]\n\n'
    events, _ = parse([raw])
    assert [e.data for e in events] == ['{"a":1}', '{"a":2}', "[DONE]"]


def test_line_over_the_limit_is_an_error() -> None:
    parser = SseParser(max_line=16)
    parser.feed(b"data: 0123456789")
    with pytest.raises(SseProtocolError):
        parser.feed(b"abcdef")
