"""Issue 10 item 16: after ``unsubscribe`` or a re-``subscribe`` on a WebSocket whose queue
is backed up, the dropped subscription's queued events must not be written.

A raw client stops reading while a run floods its subscription, so the server's sink queues
live events behind a full transport; then it unsubscribes (or re-subscribes with ``after``)
and reads again. Everything after the ``ack`` must belong to the current subscription only.
"""

from __future__ import annotations

import socket
from typing import Any

import aiohttp

from app.sinks.ws import WsSink
from app.state import STATE
from tests.conftest import LiveServer, ServerFactory
from tests.helpers import eventually, post_run
from tests.sinks.raw_ws import RawWs

# Many committed batches, so live events queue behind a stalled socket: with one batch the
# size of the whole flood, it would be one direct write and nothing would ever queue.
STORE_BATCH = 500


async def backed_up_subscriber(
    server: LiveServer, http: aiohttp.ClientSession
) -> tuple[RawWs, WsSink, dict[str, Any], int]:
    """A socket subscribed to a conversation that a run floods while the socket reads
    nothing, once its sink has live events queued. Returns (socket, sink, run, last seq the
    client read)."""
    st = server.app[STATE]
    first = await post_run(http, server, input={"tokens": 0, "reasoning": False,
                                                 "tool_call": False})
    conversation = first["conversation_id"]
    ws = await RawWs.connect(server.host, server.port, rcvbuf=4096)
    ws.send(type="subscribe", ref="s", conversation_id=conversation)
    assert (await ws.recv())["type"] == "ack"
    events = []
    while not events or events[-1]["type"] != "done":
        frame = await ws.recv()
        events.append(frame["event"])
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert events[-1]["data"]["events"] == sum(e["run_id"] == first["run_id"] for e in events)
    (sink,) = [s for s in st.sinks if isinstance(s, WsSink)]
    sock = sink.wire._transport.get_extra_info("socket")  # type: ignore[union-attr]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
    flood = await post_run(http, server, conversation_id=conversation,
                            input={"tokens": 20_000, "delay_ms": 0, "reasoning": False,
                                   "tool_call": False})
    await eventually(lambda: sink.delivery.queue.events > 500)
    return ws, sink, flood, seqs[-1]


async def read_until(ws: RawWs, pred: Any) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await ws.recv()
        frames.append(frame)
        if pred(frame):
            return frames


async def test_unsubscribe_drops_queued_stale_events(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(heartbeat=60, write_timeout=60, store_batch=STORE_BATCH,
                                queue_events=10_000_000,
                                queue_bytes=1024 * 1024 * 1024)
    ws, sink, flood, _ = await backed_up_subscriber(server, http)
    try:
        ws.send(type="unsubscribe", ref="u", conversation_id=flood["conversation_id"])
        before = await read_until(ws, lambda f: f.get("ref") == "u")
        assert before[-1]["type"] == "ack"
        ws.send(type="ping", ref="p")
        after = await read_until(ws, lambda f: f["type"] == "pong")
        stale = [f["event"]["seq"] for f in after if f["type"] == "event"]
        assert stale == [], f"{len(stale)} events written after the unsubscribe ack"
        assert not sink.delivery.cursors and sink.delivery.queue.events == 0
        seqs = [f["event"]["seq"] for f in before if f["type"] == "event"]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "in order, no gap before"
    finally:
        ws.close()


async def test_resubscribe_after_does_not_replay_stale_queued_events(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(heartbeat=60, write_timeout=60, store_batch=STORE_BATCH,
                                queue_events=10_000_000,
                                queue_bytes=1024 * 1024 * 1024)
    ws, _sink, flood, last_read = await backed_up_subscriber(server, http)
    try:
        ws.send(type="subscribe", ref="again", conversation_id=flood["conversation_id"],
                after=last_read)
        await read_until(ws, lambda f: f.get("ref") == "again")
        after = await read_until(ws, lambda f: f["type"] == "event"
                                 and f["event"]["type"] == "done")
        events = [f["event"] for f in after if f["type"] == "event"]
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(last_read + 1, last_read + 1 + len(seqs))), (
            "after the ack: the new subscription only, from after+1, no gap, no duplicate")
        flood_events = [e for e in events if e["run_id"] == flood["run_id"]]
        assert sum(e["type"] == "done" for e in events) == 1
        assert flood_events[-1]["data"]["events"] == len(flood_events)
    finally:
        ws.close()
