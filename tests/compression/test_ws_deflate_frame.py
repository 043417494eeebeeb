"""The permessage-deflate frame builder and the shared compressed batch view, fed bytes."""

from __future__ import annotations

import random
import struct
import zlib

from app.fanout.batch import Batch, frames_of
from protocol.codec import (
    EncodedEvent,
    ws_deflate_batch,
    ws_deflate_frame,
    ws_deflate_payload,
    ws_text_frame,
)
from tests.compression.deflate_client import inflate


def parse(frame: bytes) -> tuple[int, bytes]:
    """(first byte, payload) of one unmasked server frame; asserts nothing is left over."""
    n = frame[1] & 0x7F
    start = 2
    if n == 126:
        (n,) = struct.unpack("!H", frame[2:4])
        start = 4
    elif n == 127:
        (n,) = struct.unpack("!Q", frame[2:10])
        start = 10
    assert frame[1] & 0x80 == 0, "server frames are not masked"
    assert len(frame) == start + n
    return frame[0], frame[start:]


def event(seq: int, text: str = "hello world " * 20) -> EncodedEvent:
    body = b'{"seq":%d,"type":"token","data":{"text":"%s"}}' % (seq, text.encode())
    return EncodedEvent(seq, "token", "c1", "r1", body)


def test_a_compressible_payload_is_one_final_rsv1_text_frame_that_inflates_alone() -> None:
    payload = b'{"type":"event","event":' + b'{"text":"abcabcabc"}' * 50 + b"}"
    first, body = parse(ws_deflate_frame(payload))
    assert first == 0xC1  # FIN, RSV1, text
    assert len(body) < len(payload)
    assert not body.endswith(b"\x00\x00\xff\xff")  # the tail is stripped (RFC 7692 7.2.1)
    assert inflate(body) == payload


def test_messages_are_independent_so_any_decompressor_state_reads_them() -> None:
    """No context takeover: each frame inflates with a fresh decompressor, and also with one
    kept across messages (a client that did not ask for ``server_no_context_takeover``)."""
    payloads = [b"same words again and again " * k for k in (5, 6, 7)]
    bodies = [parse(ws_deflate_frame(p))[1] for p in payloads]
    assert [inflate(b) for b in bodies] == payloads
    kept = zlib.decompressobj(-15)
    assert [kept.decompress(b + b"\x00\x00\xff\xff") for b in bodies] == payloads


def test_a_payload_that_does_not_shrink_goes_as_a_plain_frame() -> None:
    payload = b'{"a":1}'
    assert ws_deflate_frame(payload) == ws_text_frame(payload)
    first, body = parse(ws_deflate_frame(payload))
    assert first == 0x81 and body == payload


def test_large_payloads_use_the_long_length_forms() -> None:
    rng = random.Random(7)
    for size, length_byte in ((400, 126), (300_000, 127)):
        # hex digits: about half the size after Huffman coding, so past each length form
        payload = bytes(rng.choice(b"0123456789abcdef") for _ in range(size))
        frame = ws_deflate_frame(payload)
        first, body = parse(frame)
        assert first == 0xC1 and frame[1] == length_byte
        assert inflate(body) == payload
    incompressible = ws_deflate_payload(b"")
    assert inflate(incompressible) == b""


def test_the_event_frame_is_built_once_and_cached() -> None:
    e = event(1)
    frame = e.ws_deflate
    assert frame is e.ws_deflate
    first, body = parse(frame)
    assert first == 0xC1
    assert inflate(body) == b'{"type":"event","event":' + e.body + b"}"


def test_the_compressed_batch_view_is_built_once_and_shared() -> None:
    events = [event(1), event(2), event(3)]
    batch = Batch("c1", events)
    blob = batch.blob("ws_deflate", None, 0)
    assert blob is batch.blob("ws_deflate", None, 0)
    assert blob.data == frames_of(events, "ws_deflate") == b"".join(e.ws_deflate for e in events)
    assert blob.count == 3 and blob.last_seq == 3
    plain = batch.blob("ws", None, 0)
    assert plain is not blob and len(blob.data) < len(plain.data)


def test_a_batch_stream_inflates_with_a_kept_decompressor_and_is_smaller() -> None:
    payloads = [b'{"type":"event","event":{"seq":%d,"conversation_id":"conv-1","run_id":'
                b'"run-1","type":"token","data":{"text":"word %d"}}}' % (i, i) for i in range(20)]
    data = ws_deflate_batch(payloads)
    frames, rest = [], data
    while rest:
        n = rest[1] & 0x7F
        assert n < 126
        frames.append(rest[:2 + n])
        rest = rest[2 + n:]
    kept = zlib.decompressobj(-15)
    got = []
    for frame in frames:
        first, body = parse(frame)
        assert first == 0xC1  # every message compressed, even the first
        got.append(kept.decompress(body + b"\x00\x00\xff\xff"))
    assert got == payloads
    alone = sum(len(ws_deflate_frame(p)) for p in payloads)
    assert len(data) < alone / 2  # later events refer back to earlier ones


def test_the_batch_view_is_shared_and_a_single_event_uses_its_cached_frame() -> None:
    events = [event(1), event(2)]
    batch = Batch("c1", events)
    blob = batch.blob("ws_deflate_batch", None, 0)
    assert blob is batch.blob("ws_deflate_batch", None, 0)
    assert blob.count == 2
    one = Batch("c1", [event(3)])
    assert one.blob("ws_deflate_batch", None, 0).data is one.events[0].ws_deflate
