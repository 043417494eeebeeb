"""A minimal server speaking PROTOCOL.md on a real port, with the failures a remote agent has
to survive injected on purpose: a run stream that drops mid-run, a start request that stalls
before its first event, a start request that dies after it arrived, an input endpoint that is
briefly unavailable. Everything it was sent is recorded so tests can check it from outside."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

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
    RequireUserInput,
    RequireUserInputData,
    RunStarted,
    UserInputReceived,
    UserInputReceivedData,
)

RUN_ID = "r_fake"
REQUEST_ID = "q_fake"
WORDS = ["one ", "two ", "three ", "four ", "five ", "six "]
COMMON: dict[str, Any] = {"conversation_id": "c_fake", "run_id": RUN_ID, "agent": "demo",
                          "ts": 1}

Hold = Literal["before_headers", "before_first_event"]


def run_events() -> list[EncodedEvent]:
    events: list[EventBase] = [RunStarted(seq=1, **COMMON)]
    for i, word in enumerate(WORDS):
        events.append(MessageChunk(seq=2 + i, item_id="m_1", data=MessageChunkData(delta=word),
                                   **COMMON))
    n = len(events)
    events.append(Message(seq=n + 1, item_id="m_1", data=MessageData(text="".join(WORDS)),
                          **COMMON))
    events.append(Done(seq=n + 2, data=DoneData(status="completed", events=n + 2),
                       **COMMON))
    return [EncodedEvent.from_event(e) for e in events]


def ask_events(answer: Any) -> list[EncodedEvent]:
    """A run that asks one question; the events after it exist once it was answered."""
    events: list[EventBase] = [
        RunStarted(seq=1, **COMMON),
        RequireUserInput(seq=2, data=RequireUserInputData(
            request_id=REQUEST_ID, prompt="Proceed?", choices=["yes", "no"]), **COMMON),
        UserInputReceived(seq=3, data=UserInputReceivedData(request_id=REQUEST_ID,
                                                            value=answer), **COMMON),
        Message(seq=4, item_id="m_1", data=MessageData(text=f"You answered: {answer}"),
                **COMMON),
        Done(seq=5, data=DoneData(status="completed", events=5), **COMMON),
    ]
    return [EncodedEvent.from_event(e) for e in events]


@dataclass
class FakeRemote:
    # Each stream response sends this many events, then drops the connection.
    per_connection: int = 3
    # The same for the POST /v1/runs stream (None: per_connection).
    start_per_connection: int | None = None
    # Stall the start request (after its body arrived) until ``release`` is set.
    hold_start: Hold | None = None
    # The start request arrives, then its connection dies without an answer.
    vanish_start: bool = False
    # The run asks a question (``ask_events``); the input endpoint answers 503 this many times.
    ask: bool = False
    input_failures: int = 0
    agents_calls: int = 0
    starts: list[dict[str, Any]] = field(default_factory=list)
    last_event_ids: list[str | None] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    inputs: list[dict[str, Any]] = field(default_factory=list)
    start_received: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    start_closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    answer: Any = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/agents", self.agents)
        app.router.add_post("/v1/runs", self.start)
        app.router.add_get("/v1/runs/{run_id}/events", self.events)
        app.router.add_post("/v1/runs/{run_id}/cancel", self.cancel)
        app.router.add_post("/v1/runs/{run_id}/input", self.input)
        return app

    def _events(self) -> list[EncodedEvent]:
        return ask_events(self.answer) if self.ask else run_events()

    async def agents(self, request: web.Request) -> web.Response:
        self.agents_calls += 1
        await asyncio.sleep(0.1)  # long enough for concurrent first runs to pile up
        return web.json_response({"agents": [{"name": "demo", "description": "fake"}]})

    async def start(self, request: web.Request) -> web.StreamResponse:
        self.starts.append(await request.json())
        self.start_received.set()
        if self.vanish_start:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        first = self.per_connection if self.start_per_connection is None else (
            self.start_per_connection)
        resp: web.StreamResponse | None = None
        try:
            if self.hold_start == "before_headers":
                await self._hold(request)
            resp = await self._open(request)
            if self.hold_start == "before_first_event":
                await self._hold(request)
        except ConnectionResetError:
            return resp or web.Response()
        return await self._stream(request, resp, after=0, limit=first)

    async def _hold(self, request: web.Request) -> None:
        """Wait for ``release``, noticing when the client closes the connection meanwhile."""
        while not self.release.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                self.start_closed_by_client.set()
                raise ConnectionResetError("the client went away")
            try:
                async with asyncio.timeout(0.01):
                    await self.release.wait()
            except TimeoutError:
                pass

    async def events(self, request: web.Request) -> web.StreamResponse:
        last = request.headers.get("Last-Event-ID")
        self.last_event_ids.append(last)
        resp = await self._open(request)
        return await self._stream(request, resp, after=int(last or 0),
                                  limit=self.per_connection)

    async def cancel(self, request: web.Request) -> web.Response:
        self.cancels.append(request.match_info["run_id"])
        return web.json_response({"status": "cancelled"})

    async def input(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.inputs.append(body)
        if len(self.inputs) <= self.input_failures:
            return web.json_response({"error": {"code": "unavailable", "message": "busy"}},
                                     status=503)
        if self.answered.is_set():
            return web.json_response(
                {"error": {"code": "input_already_answered", "message": "answered"}},
                status=409)
        self.answer = body["value"]
        self.answered.set()
        return web.json_response({"run_id": RUN_ID, "status": "running"})

    @staticmethod
    async def _open(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        await resp.write(b"retry: 1000\n\n: hello\n\n")
        return resp

    async def _stream(self, request: web.Request, resp: web.StreamResponse, after: int,
                      limit: int) -> web.StreamResponse:
        try:
            pending = [e for e in self._events() if e.seq > after]
            for event in pending[:limit]:
                if self.ask and event.seq > 2:
                    await self.answered.wait()
                    # Rebuilt: the events after the question carry the answer.
                    event = next(e for e in self._events() if e.seq == event.seq)
                await resp.write(event.sse)
            if len(pending) > limit:
                await asyncio.sleep(0.01)
                assert request.transport is not None
                request.transport.abort()  # the network drops mid-run
                return resp
            await resp.write_eof()
        except ConnectionResetError:
            pass
        return resp
