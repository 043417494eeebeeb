"""A minimal server speaking PROTOCOL.md whose run stream drops mid-run, so the remote
agent's Last-Event-ID resume and its once-only set-up can be observed from outside."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from protocol.codec import EncodedEvent
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

RUN_ID = "r_fake"
WORDS = ["one ", "two ", "three ", "four ", "five ", "six "]


def run_events() -> list[EncodedEvent]:
    common: dict[str, Any] = {
        "conversation_id": "c_fake", "run_id": RUN_ID, "agent": "demo", "ts": 1}
    events: list[EventBase] = [RunStarted(seq=1, **common)]
    for i, word in enumerate(WORDS):
        events.append(MessageChunk(seq=2 + i, item_id="m_1", data=MessageChunkData(delta=word),
                                   **common))
    n = len(events)
    events.append(Message(seq=n + 1, item_id="m_1", data=MessageData(text="".join(WORDS)),
                          **common))
    events.append(Done(seq=n + 2, data=DoneData(status="completed", events=n + 2),
                       **common))
    return [EncodedEvent.from_event(e) for e in events]


@dataclass
class FakeRemote:
    # Each stream response sends this many events, then drops the connection.
    per_connection: int = 3
    # The same for the POST /v1/runs stream (None: per_connection).
    start_per_connection: int | None = None
    agents_calls: int = 0
    last_event_ids: list[str | None] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/agents", self.agents)
        app.router.add_post("/v1/runs", self.start)
        app.router.add_get("/v1/runs/{run_id}/events", self.events)
        app.router.add_post("/v1/runs/{run_id}/cancel", self.cancel)
        return app

    async def agents(self, request: web.Request) -> web.Response:
        self.agents_calls += 1
        await asyncio.sleep(0.1)  # long enough for concurrent first runs to pile up
        return web.json_response({"agents": [{"name": "demo", "description": "fake"}]})

    async def start(self, request: web.Request) -> web.StreamResponse:
        first = self.per_connection if self.start_per_connection is None else (
            self.start_per_connection)
        return await self._stream(request, after=0, limit=first)

    async def events(self, request: web.Request) -> web.StreamResponse:
        last = request.headers.get("Last-Event-ID")
        self.last_event_ids.append(last)
        return await self._stream(request, after=int(last or 0), limit=self.per_connection)

    async def cancel(self, request: web.Request) -> web.Response:
        self.cancels.append(request.match_info["run_id"])
        return web.json_response({"status": "cancelled"})

    async def _stream(self, request: web.Request, after: int, limit: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        await resp.write(b"retry: 1000\n\n")
        pending = [e for e in run_events() if e.seq > after]
        for event in pending[:limit]:
            await resp.write(event.sse)
        if len(pending) > limit:
            await asyncio.sleep(0.01)
            assert request.transport is not None
            request.transport.abort()  # the network drops mid-run
            return resp
        await resp.write_eof()
        return resp
