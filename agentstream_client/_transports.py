"""SSE and WebSocket behind one small interface: ``start`` a run, ``connect`` to a run's or
a conversation's events after a seq. A connection is an async generator of raw envelope
JSON; it ends when the server ends the stream and raises ``TransportError``/``APIError``
when it fails. Resuming, de-duplication and backoff live above (``_stream.py``), so both
transports behave the same.

Each stream owns its own connection (one WebSocket per run handle or subscription): the
handle that iterates is the only reader, so no background task or queue is needed.
Answers and cancels always go over HTTP (``_http.py``), so calling them inside the
``async for`` body cannot deadlock on a socket nobody reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp
import msgspec

from agentstream_client._exceptions import (
    AgentstreamError,
    HandshakeTimeout,
    ProtocolError,
    TransportError,
)
from agentstream_client._http import Http, ws_error
from protocol.sse_parser import SseParser, SseProtocolError

TargetKind = Literal["run", "conversation"]
Raw = bytes | str


class StreamFinished(Exception):
    """The server has nothing more for this stream: a 204 for a run whose ``done`` is at
    or below the seq we resume after."""


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    id: str


@dataclass(frozen=True)
class Started:
    run_id: str
    conversation_id: str


class Transport(Protocol):
    async def start(self, body: dict[str, Any]) -> tuple[Started, AsyncGenerator[Raw, None] | None]:
        """Start a run; maybe with its first connection already open (WebSocket)."""
        ...

    def connect(self, target: Target, after: int) -> AsyncGenerator[Raw, None]:
        """One connection to ``target``'s events with seq above ``after``."""
        ...


class SseTransport:
    """``POST /v1/runs`` (202), then ``GET …/events`` with ``Last-Event-ID``."""

    def __init__(self, http: Http) -> None:
        self.http = http

    async def start(self, body: dict[str, Any]) -> tuple[Started, AsyncGenerator[Raw, None] | None]:
        reply = await self.http.post_json("/v1/runs", body, expect=(202,))
        return Started(str(reply["run_id"]), str(reply["conversation_id"])), None

    async def connect(self, target: Target, after: int) -> AsyncGenerator[Raw, None]:
        path = (f"/v1/runs/{target.id}/events" if target.kind == "run"
                else f"/v1/conversations/{target.id}/events")
        headers = {"Accept": "text/event-stream"}
        if after > 0:
            headers["Last-Event-ID"] = str(after)
        async with self.http.stream(path, headers) as resp:
            if resp is None:  # 204: the run's done was already delivered
                raise StreamFinished(target.id)
            parser = SseParser()
            try:
                async for chunk in resp.content.iter_any():
                    for event in parser.feed(chunk):
                        yield event.data
            except SseProtocolError as exc:
                raise ProtocolError(str(exc)) from None
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                raise TransportError(f"stream lost: {exc!r}") from None


class _Frame(msgspec.Struct):
    type: str
    event: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    ref: str | None = None
    run_id: str | None = None
    conversation_id: str | None = None
    code: str = ""
    message: str = ""


_frame = msgspec.json.Decoder(_Frame)


class WsTransport:
    """``GET /v1/ws``: ``start`` or ``subscribe {after}``, then event frames."""

    def __init__(self, http: Http) -> None:
        self.http = http
        self._refs = itertools.count(1)

    async def start(self, body: dict[str, Any]) -> tuple[Started, AsyncGenerator[Raw, None] | None]:
        gen = self._session({"type": "start", **body})
        try:
            ack = await anext(gen)
        except BaseException:
            await gen.aclose()
            raise
        assert isinstance(ack, _Frame)
        if ack.run_id is None or ack.conversation_id is None:
            await gen.aclose()
            raise ProtocolError("the start ack has no run_id/conversation_id")
        return Started(ack.run_id, ack.conversation_id), _events_only(gen)

    async def connect(self, target: Target, after: int) -> AsyncGenerator[Raw, None]:
        command: dict[str, Any] = {"type": "subscribe", "after": after}
        command["run_id" if target.kind == "run" else "conversation_id"] = target.id
        gen = self._session(command)
        async with contextlib.aclosing(gen):
            await anext(gen)  # the ack
            async for item in _events_only(gen):
                yield item

    async def _session(self, command: dict[str, Any]) -> AsyncGenerator[_Frame | Raw, None]:
        """Open a socket, send ``command``, yield its ack, then each event's raw envelope
        until the socket closes. The reader stops after a run's ``done`` and closes it."""
        ref = f"c{next(self._refs)}"
        async with self.http.websocket() as ws:
            try:
                await ws.send_str(msgspec.json.encode({**command, "ref": ref}).decode())
                async with asyncio.timeout(self.http.handshake_timeout):
                    ack = await self._until_ack(ws, ref)
            except TimeoutError:
                raise HandshakeTimeout("no ack within the handshake timeout") from None
            yield ack
            while True:
                frame = await self._next(ws)
                if frame.type == "event" and len(frame.event):
                    yield bytes(frame.event)
                elif frame.type == "error":
                    raise ws_error(frame.code, frame.message)

    async def _until_ack(self, ws: aiohttp.ClientWebSocketResponse, ref: str) -> _Frame:
        while True:
            frame = await self._next(ws)
            if frame.ref == ref and frame.type == "ack":
                return frame
            if frame.ref == ref and frame.type == "error":
                raise ws_error(frame.code, frame.message)

    @staticmethod
    async def _next(ws: aiohttp.ClientWebSocketResponse) -> _Frame:
        try:
            msg = await ws.receive()
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            raise TransportError(f"websocket lost: {exc!r}") from None
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            try:
                return _frame.decode(msg.data)
            except msgspec.DecodeError as exc:
                raise ProtocolError(f"bad websocket frame: {exc}") from None
        raise TransportError(f"websocket closed ({ws.close_code}, {msg.extra!r})")


async def _events_only(gen: AsyncGenerator[_Frame | Raw, None]) -> AsyncGenerator[Raw, None]:
    async with contextlib.aclosing(gen):
        async for item in gen:
            if isinstance(item, _Frame):
                raise AgentstreamError("unexpected second ack")
            yield item
