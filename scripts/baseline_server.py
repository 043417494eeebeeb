"""Minimal servers the product is measured against, in the same bench run.

Why: a figure alone says little on a shared 2-core box; beside "the least any aiohttp server
could do here" it says how much the product costs. Every handler writes frames built once by
``protocol.codec`` (the same bytes the product sends), so only the machinery differs.

- ``GET /sse?write=per|coalesced`` and ``GET /ws?write=per|coalesced``: subscribers. ``per``
  writes one frame per event (one ``write``/``send_frame`` each); ``coalesced`` joins what is
  queued into one write (the floor).
- ``POST /go`` ``{"events", "batch", "rate"}``: a producer offers ``events`` message chunks and
  a final ``done`` to every subscriber, in blocks of ``batch`` as fast as it can, or at ``rate``
  events/s on a fixed schedule (what is due when the loop gets to it goes out as one block),
  with ``ts`` stamped when each is made.
- ``GET /replay?events=N``: N pre-built frames in one write, then the response ends.
- ``GET /idle``: an SSE response held open with a ``: ping`` every ``--heartbeat`` seconds.
- ``--raw``: no aiohttp at all, a bare asyncio protocol answering SSE headers and holding the
  socket: the per-connection memory floor of the interpreter and the kernel.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from typing import Any

from aiohttp import WSMsgType, web

from protocol.codec import EncodedEvent
from protocol.events import Done, DoneData, MessageChunk, MessageChunkData

CONVERSATION = "c_baseline"
RUN = "r_0123456789abcdef"
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
WORDS = ("the", "agent", "streams", "each", "step", "as", "it", "happens", "so", "nothing")


def make_event(seq: int, done: bool = False, ts: int | None = None) -> EncodedEvent:
    """A message chunk (or the final done) shaped like the demo agent's."""
    stamp = int(time.time() * 1000) if ts is None else ts
    if done:
        return EncodedEvent.from_event(Done(
            seq=seq, conversation_id=CONVERSATION, run_id=RUN, agent="demo", ts=stamp,
            data=DoneData(status="completed", events=seq),
        ))
    return EncodedEvent.from_event(MessageChunk(
        seq=seq, conversation_id=CONVERSATION, run_id=RUN, agent="demo", ts=stamp,
        item_id="m_0123456789ab", data=MessageChunkData(delta=WORDS[seq % len(WORDS)] + " "),
    ))


class Block:
    """Events offered together, with their frames joined once for all subscribers."""

    __slots__ = ("events", "sse", "ws")

    def __init__(self, events: list[EncodedEvent]) -> None:
        self.events = events
        self.sse = b"".join([ev.sse for ev in events])
        self.ws = b"".join([ev.ws for ev in events])


class Subscriber:
    """A queue of blocks and the writer that empties it."""

    def __init__(self, coalesce: bool, transport: str) -> None:
        self.coalesce = coalesce
        self.transport = transport
        self.queue: deque[Block] = deque()
        self.wake = asyncio.Event()
        self.finished = False

    def offer(self, block: Block) -> None:
        self.queue.append(block)
        self.wake.set()


class Baseline:
    def __init__(self, heartbeat: float) -> None:
        self.heartbeat = heartbeat
        self.subs: set[Subscriber] = set()
        self.producer: asyncio.Task[None] | None = None

    # ---- subscribers ------------------------------------------------------------------

    async def sse(self, request: web.Request) -> web.StreamResponse:
        sub = Subscriber(request.query.get("write") != "per", "sse")
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        await resp.write(b"retry: 1000\n\n")
        await self._serve(sub, resp.write)
        return resp

    async def ws(self, request: web.Request) -> web.StreamResponse:
        sub = Subscriber(request.query.get("write") != "per", "ws")
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        writer = ws._writer  # the frames are pre-built: write them raw, many per call
        assert writer is not None

        async def write_raw(data: bytes) -> None:
            writer.transport.write(data)
            if writer.transport.get_write_buffer_size() > 64 * 1024:
                await writer.protocol._drain_helper()

        async def write(data: bytes) -> None:
            if sub.coalesce:
                await write_raw(data)
            else:
                await ws.send_frame(data, WSMsgType.TEXT)

        reader = asyncio.create_task(self._read_ws(ws))
        try:
            if sub.coalesce:
                await self._serve(sub, write_raw)
            else:
                await self._serve(sub, write, payload=True)
        finally:
            reader.cancel()
        await ws.close()
        return ws

    async def _read_ws(self, ws: web.WebSocketResponse) -> None:
        async for _ in ws:  # subscribe messages: everyone gets everything here
            pass

    async def _serve(self, sub: Subscriber, write: Any, payload: bool = False) -> None:
        self.subs.add(sub)
        try:
            while not sub.finished:
                if not sub.queue:
                    sub.wake.clear()
                    await sub.wake.wait()
                    continue
                blocks = list(sub.queue)
                sub.queue.clear()
                events = [ev for block in blocks for ev in block.events]
                if sub.coalesce:
                    blobs = [b.sse if sub.transport == "sse" else b.ws for b in blocks]
                    await write(blobs[0] if len(blobs) == 1 else b"".join(blobs))
                elif payload:
                    for ev in events:
                        await write(b'{"type":"event","event":' + ev.body + b"}")
                else:
                    for ev in events:
                        await write(ev.sse)
                if events[-1].type == "done":
                    sub.finished = True
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self.subs.discard(sub)

    # ---- producer ---------------------------------------------------------------------

    async def go(self, request: web.Request) -> web.Response:
        spec = await request.json()
        events, batch, rate = int(spec["events"]), int(spec.get("batch", 2000)), spec.get("rate")
        self.producer = asyncio.create_task(self._produce(events, batch, rate))
        return web.json_response({"subscribers": len(self.subs)}, status=202)

    async def _produce(self, events: int, batch: int, rate: float | None) -> None:
        subs = list(self.subs)
        if rate:
            # Open loop, like tokens arriving from an upstream model: event k is due at
            # start + k/rate; whatever is due when the loop gets here goes out as one block.
            interval = 1.0 / float(rate)
            start = time.monotonic()
            seq = 0
            while seq < events:
                due_now = min(events, int((time.monotonic() - start) / interval) + 1)
                if due_now > seq:
                    block = Block([make_event(k, done=k == events)
                                   for k in range(seq + 1, due_now + 1)])
                    seq = due_now
                    for sub in subs:
                        sub.offer(block)
                await asyncio.sleep(max(0.0, start + seq * interval - time.monotonic()))
            return
        ts = int(time.time() * 1000)
        all_events = [make_event(seq, seq == events, ts) for seq in range(1, events + 1)]
        for start in range(0, events, batch):
            block = Block(all_events[start:start + batch])
            for sub in subs:
                sub.offer(block)
            await asyncio.sleep(0)

    # ---- replay and idle --------------------------------------------------------------

    async def replay(self, request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("events", "10000"))
        frames = self._replay_cache.get(n)
        if frames is None:
            ts = int(time.time() * 1000)
            frames = b"".join(make_event(s, s == n, ts).sse for s in range(1, n + 1))
            self._replay_cache[n] = frames
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        await resp.write(b"retry: 1000\n\n")
        await resp.write(frames)
        await resp.write_eof()
        return resp

    _replay_cache: dict[int, bytes] = {}

    async def idle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        await resp.write(b"retry: 1000\n\n")
        try:
            while True:
                await asyncio.sleep(self.heartbeat)
                await resp.write(b": ping\n\n")
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


class RawHold(asyncio.Protocol):
    """Answer any request with SSE headers and hold the socket: no framework at all."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.head = b""

    def data_received(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        assert isinstance(self.transport, asyncio.Transport)
        if self.head.startswith(b"GET /healthz"):
            body = b'{"status":"ok"}'
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                                 % (len(body), body))
            self.transport.close()
            return
        self.head = b""
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Cache-Control: no-cache\r\n\r\nretry: 1000\n\n")


async def serve_raw(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RawHold, "127.0.0.1", port, backlog=128)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--heartbeat", type=float, default=15.0)
    parser.add_argument("--raw", action="store_true", help="bare asyncio holder (memory floor)")
    args = parser.parse_args()
    if args.raw:
        asyncio.run(serve_raw(args.port))
        return
    base = Baseline(args.heartbeat)
    app = web.Application()
    app.router.add_get("/sse", base.sse)
    app.router.add_get("/ws", base.ws)
    app.router.add_post("/go", base.go)
    app.router.add_get("/replay", base.replay)
    app.router.add_get("/idle", base.idle)
    app.router.add_get("/healthz", base.healthz)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
