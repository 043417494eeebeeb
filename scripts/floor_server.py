"""The lean floor for the many-runs scenario: the essential work of agentstream, nothing else.

Why: "M runs x T tokens at R ev/s, one SSE subscriber each, persistence on" costs the product
some microseconds per event; this server says how few a lean implementation needs on the same
box, in the same bench run, with the same client. It does exactly the essential work:

- ``POST /v1/runs`` (the demo agent's JSON body) starts a run and streams it as SSE, like the
  product's; the run paces ``tokens`` message chunks ``delay_ms`` apart on a fixed schedule
  (chunk k due at start + k * delay), framed by ``run_started``, a ``message`` and ``done``
  (``done.data.events`` counts the run's events, as the product's does);
- every event is encoded once (``protocol.codec.EncodedEvent``, the product's bytes);
- one writer group-commits whatever is queued to SQLite (WAL, synchronous=NORMAL, one
  ``executemany`` per batch on its own thread) and only then publishes: per run, the batch's
  frames are joined once and handed to that run's subscriber;
- a subscriber writes its whole backlog in one write.

No auth, no metrics, no logging, no recovery, no replay: the floor, not a product.

    python scripts/floor_server.py --port 8090 --db /tmp/floor.db
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import itertools
import sqlite3
import time
from typing import Any

from aiohttp import web

from protocol.codec import EncodedEvent, sse_retry
from protocol.events import (
    Done,
    DoneData,
    EventBase,
    Message,
    MessageChunk,
    MessageChunkData,
    MessageData,
    RunStarted,
)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, run_id TEXT, type TEXT NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (conversation_id, seq)
);
"""
WORDS = ("the", "agent", "streams", "each", "step", "as", "it", "happens", "so", "nothing")


class Subscriber:
    """One run's stream: committed frames waiting for its writer, and the wake-up."""

    __slots__ = ("done", "pending", "wake")

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.wake = asyncio.Event()
        self.done = False


class GroupCommit:
    """Queue encoded events; one task commits all queued at once, then publishes them."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        self.queue: list[tuple[EncodedEvent, Subscriber]] = []
        self.wake = asyncio.Event()

    def append(self, event: EncodedEvent, sub: Subscriber) -> None:
        self.queue.append((event, sub))
        self.wake.set()

    def _commit(self, rows: list[tuple[Any, ...]]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT INTO events VALUES (?,?,?,?,?)", rows)
        self.db.execute("COMMIT")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            batch, self.queue = self.queue, []
            rows = [(e.conversation_id, e.seq, e.run_id, e.type, e.body) for e, _ in batch]
            await loop.run_in_executor(self.thread, self._commit, rows)
            self._publish(batch)

    @staticmethod
    def _publish(batch: list[tuple[EncodedEvent, Subscriber]]) -> None:
        """Per subscriber, the batch's frames joined once; then one wake-up each."""
        for sub, group in itertools.groupby(batch, key=lambda pair: pair[1]):
            events = [e for e, _ in group]
            sub.pending.append(events[0].sse if len(events) == 1
                               else b"".join([e.sse for e in events]))
            if events[-1].type == "done":
                sub.done = True  # the stream ends once this is written
            sub.wake.set()


class Floor:
    def __init__(self, db: str) -> None:
        self.db_path = db
        self.counter = itertools.count(1)
        self.writer: GroupCommit | None = None

    async def start(self, app: web.Application) -> Any:
        self.writer = GroupCommit(self.db_path)
        task = asyncio.create_task(self.writer.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def run(self, request: web.Request) -> web.StreamResponse:
        spec = (await request.json()).get("input") or {}
        tokens = int(spec.get("tokens", 20))
        delay = float(spec.get("delay_ms", 20.0)) / 1000.0
        n = next(self.counter)
        conv, run = f"c_floor{n:012d}", f"r_floor{n:012d}"
        sub = Subscriber()
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        await resp.write(sse_retry(1000))
        producer = asyncio.create_task(self._produce(conv, run, tokens, delay, sub))
        try:
            while not sub.done or sub.pending:
                if not sub.pending:
                    sub.wake.clear()
                    await sub.wake.wait()
                    continue
                data, sub.pending = sub.pending, []
                await resp.write(data[0] if len(data) == 1 else b"".join(data))
        except (ConnectionError, RuntimeError):
            pass
        finally:
            producer.cancel()
        return resp

    async def _produce(self, conv: str, run: str, tokens: int, delay: float,
                       sub: Subscriber) -> None:
        assert self.writer is not None
        writer, seq, ts = self.writer, 0, 0

        def emit(event: EventBase) -> None:
            writer.append(EncodedEvent.from_event(event), sub)

        def ids() -> dict[str, Any]:
            nonlocal seq, ts
            seq += 1
            ts = int(time.time() * 1000)
            return {"seq": seq, "conversation_id": conv, "run_id": run, "agent": "demo",
                    "ts": ts}

        emit(RunStarted(**ids()))
        loop = asyncio.get_running_loop()
        due = loop.time()
        for i in range(tokens):
            if delay:
                due += delay
                await asyncio.sleep(max(0.0, due - loop.time()))
            emit(MessageChunk(**ids(), item_id="m_0123456789ab",
                              data=MessageChunkData(delta=WORDS[i % len(WORDS)] + " ")))
        emit(Message(**ids(), item_id="m_0123456789ab", data=MessageData(text="floor")))
        emit(Done(**ids(), data=DoneData(status="completed", events=seq)))

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--uvloop", action="store_true",
                        help="serve on uvloop, as agentstream does by default")
    args = parser.parse_args()
    floor = Floor(args.db)
    app = web.Application()
    app.cleanup_ctx.append(floor.start)
    app.router.add_post("/v1/runs", floor.run)
    app.router.add_get("/healthz", floor.healthz)
    loop = None
    if args.uvloop:
        import uvloop
        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
