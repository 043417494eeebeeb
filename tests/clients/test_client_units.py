"""The client's I/O-free parts fed data: decoding (unknown types pass through), backoff
bounds, seq de-duplication. Plus a future server on a real socket sending a type this
client does not know."""

from __future__ import annotations

import random

import msgspec
import pytest
from aiohttp import web

from agentstream_client import (
    AgentstreamClient,
    Backoff,
    Done,
    MessageChunk,
    ProtocolError,
    UnknownEvent,
    event_type,
)
from agentstream_client._backoff import SeqTracker
from agentstream_client._events import decode, stored_count

ENV = {"conversation_id": "c", "run_id": "r", "agent": "demo", "ts": 1}


def raw(**fields: object) -> bytes:
    return msgspec.json.encode({**ENV, **fields})


def test_known_types_decode_to_protocol_structs() -> None:
    event = decode(raw(seq=3, type="message_chunk", item_id="m", data={"delta": "a"}))
    assert isinstance(event, MessageChunk) and event.data.delta == "a"
    assert stored_count(event) == 1
    merged = decode(raw(seq=9, type="message_chunk", data={"delta": "abc", "merged": 3}))
    assert stored_count(merged) == 3


def test_unknown_type_passes_through_with_its_data() -> None:
    event = decode(raw(seq=4, type="vision_frame", data={"px": [1, 2]}, extra=True))
    assert isinstance(event, UnknownEvent)
    assert (event.seq, event_type(event), event.data) == (4, "vision_frame", {"px": [1, 2]})


@pytest.mark.parametrize("body", [
    b"not json",
    raw(seq=1, type="done", data={"status": "exploded", "events": 1}),
    raw(seq=1, type="message_chunk", data={}),
    msgspec.json.encode({"type": "x"}),
])
def test_malformed_events_are_protocol_errors(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(body)


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    b = Backoff(initial=0.1, factor=2, cap=1.0, rng=random.Random(7))
    for attempt in range(200):
        ceiling = min(1.0, 0.1 * 2 ** attempt)
        samples = [b.delay(attempt) for _ in range(50)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling / 2  # spread over the whole range, not pinned at 0
        assert len(set(samples)) > 40  # jittered


def test_seq_tracker_drops_repeats_and_counts_merged() -> None:
    t = SeqTracker(after=5)
    assert not t.take(5) and not t.take(3)
    assert t.take(6) and t.take(9, stored=3) and not t.take(9)
    assert (t.last_seq, t.counted, t.duplicates) == (9, 4, 3)


async def test_a_future_server_type_reaches_the_caller() -> None:
    """A real socket serving what a newer server might: an unknown type and a repeat."""
    frames = [
        raw(seq=1, type="run_started", data={}),
        raw(seq=2, type="hologram", data={"x": 1}),
        raw(seq=2, type="hologram", data={"x": 1}),  # a repeat must not reach the caller
        raw(seq=3, type="done", data={"status": "completed", "events": 3}),
    ]

    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for f in frames:
            kind = msgspec.json.decode(f)["type"]
            await resp.write(b"id: %d\nevent: %s\ndata: %s\n\n"
                             % (msgspec.json.decode(f)["seq"], kind.encode(), f))
        return resp

    app = web.Application()
    app.router.add_get("/v1/runs/{run_id}/events", events)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with AgentstreamClient(f"http://127.0.0.1:{port}") as client:
            got = [e async for e in client.attach("r")]
    finally:
        await runner.cleanup()
    assert [event_type(e) for e in got] == ["run_started", "hologram", "done"]
    assert isinstance(got[1], UnknownEvent) and isinstance(got[2], Done)
