"""A fake OpenAI-compatible upstream on a real port, serving realistic Chat Completions
streams and the broken ones. The request's ``model`` picks the behaviour."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

API_KEY = "test-key"
REASONING = ["Let me ", "think: ", "h\u00e9 says \u4e16\u754c."]
CONTENT = ["Hel", "lo, ", "w\u00f6rld ", "\U0001f600", "!"]
TOOL_ARGS = ['{"ci', 'ty": "Par', 'is", "unit', '": "c"}']


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta if delta is not None else {},
                     "finish_reason": finish}],
    }


def frame(obj: Any, eol: bytes = b"\n") -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + eol + eol


def full_stream(eol: bytes = b"\n") -> list[bytes]:
    """Reasoning, content, two tool calls with fragmented arguments, heartbeats, [DONE]."""
    frames = [b": OPENROUTER PROCESSING" + eol + eol,
              frame(chunk({"role": "assistant", "content": ""}), eol)]
    frames += [frame(chunk({"reasoning_content": r}), eol) for r in REASONING]
    frames += [frame(chunk({"content": c}), eol) for c in CONTENT]
    frames.append(b": keep-alive" + eol + eol)
    frames.append(frame(chunk({"tool_calls": [
        {"index": 0, "id": "call_a", "type": "function",
         "function": {"name": "get_weather", "arguments": ""}}]}), eol))
    frames += [frame(chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}), eol)
               for a in TOOL_ARGS]
    frames.append(frame(chunk({"tool_calls": [
        {"index": 1, "id": "call_b", "type": "function",
         "function": {"name": "get_time", "arguments": "{}"}}]}), eol))
    frames.append(frame(chunk({}, finish="tool_calls"), eol))
    frames.append(frame({"id": "chatcmpl-1", "choices": [], "usage": {"total_tokens": 9}}, eol))
    frames.append(b"data: [DONE]" + eol + eol)
    return frames


def heartbeat_stream() -> list[bytes]:
    """Content between the keep-alives relays really send: Spring's ``data:heartbeat`` (JD
    Genie), named ping events, empty data, a bare ``keep-alive``, comments."""
    beats = [b"data:heartbeat\n\n", b"event: ping\ndata: heartbeat\n\n", b"data:\n\n",
             b"data: keep-alive\n\n", b"event: heartbeat\ndata: {\"ts\": 1}\n\n",
             b": ping\n\n"]
    frames: list[bytes] = []
    for beat, content in zip(beats, CONTENT, strict=False):
        frames += [beat, frame(chunk({"content": content}))]
    frames += [frame(chunk({"content": c})) for c in CONTENT[len(beats):]]
    frames += [b"data: heartbeat\n\n", frame(chunk({}, finish="stop")), b"data: [DONE]\n\n"]
    return frames


@dataclass
class FakeOpenAI:
    requests: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    slow_seconds: float = 3.0
    # "heartbeat-wait": keep-alives every this many seconds for ``slow_seconds``.
    beat_every: float = 0.05

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        return app

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        return resp

    async def _write_split(self, resp: web.StreamResponse, data: bytes) -> None:
        """Write in two pieces cut mid-way (inside a UTF-8 sequence when there is one)."""
        cut = next((i for i, b in enumerate(data) if b >= 0x80), len(data) // 2) + 1
        await resp.write(data[:cut])
        await asyncio.sleep(0.002)
        await resp.write(data[cut:])

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except ConnectionResetError:
            # The client stops reading at finish_reason and may close before [DONE].
            return web.Response()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"body": body, "auth": request.headers.get("Authorization")})
        model = body["model"]
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response(
                {"error": {"message": "Incorrect API key provided", "type": "auth",
                           "code": "invalid_api_key"}}, status=401)
        if model == "http500":
            return web.json_response(
                {"error": {"message": "The server had an error while processing your request.",
                           "type": "server_error"}}, status=500)
        if model == "not-sse":
            return web.json_response({"object": "chat.completion", "choices": []})
        if model == "vanish":
            # The request arrived (the upstream may be generating), then the connection dies.
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if model == "slow":
            try:
                async with asyncio.timeout(self.slow_seconds):
                    await self.release.wait()
            except TimeoutError:
                pass
            return web.Response(status=504)
        resp = await self._stream(request)
        if model == "ok":
            for data in full_stream():
                await self._write_split(resp, data)
        elif model == "heartbeats":
            for data in heartbeat_stream():
                await resp.write(data)
        elif model == "heartbeat-wait":
            # Only keep-alives for longer than the relay's idle timeout, then the answer.
            await resp.write(frame(chunk({"content": "thinking"})))
            loop = asyncio.get_running_loop()
            until = loop.time() + self.slow_seconds
            while loop.time() < until:
                await resp.write(b"data: heartbeat\n\n")
                await asyncio.sleep(self.beat_every)
            await resp.write(frame(chunk({"content": " done"}, finish="stop")))
        elif model == "error-named":
            await resp.write(frame(chunk({"content": "partial"})))
            await resp.write(b'event: error\ndata: {"error": {"message": "Upstream overloaded",'
                             b' "code": 529}}\n\n')
        elif model == "crlf":
            await resp.write(b"".join(full_stream(b"\r\n")))
        elif model == "garbage":
            await resp.write(frame(chunk({"content": "ok so far"})))
            await resp.write(b"data: <html><body>502 Bad Gateway</body></html>\n\n")
            await asyncio.sleep(0.05)
        elif model == "drop":
            for c in CONTENT[:3]:
                await resp.write(frame(chunk({"content": c})))
            await asyncio.sleep(0.02)
            assert request.transport is not None
            request.transport.abort()
            return resp
        elif model == "error-event":
            await resp.write(frame(chunk({"content": "partial"})))
            await resp.write(frame({"error": {"message": "Rate limit reached for requests",
                                              "type": "requests", "code": "rate_limit"}}))
        elif model == "idle":
            await resp.write(frame(chunk({"content": "then silence"})))
            try:
                async with asyncio.timeout(self.slow_seconds):
                    await self.release.wait()
            except TimeoutError:
                pass
        elif model == "length":
            # Arguments before the name, then a token-limit stop and no [DONE].
            await resp.write(frame(chunk({"tool_calls": [
                {"index": 0, "function": {"arguments": '{"q": 1}'}}]})))
            await resp.write(frame(chunk({"tool_calls": [
                {"index": 0, "id": "call_x", "function": {"name": "search"}}]})))
            await resp.write(frame(chunk({"content": "trunc"}, finish="length")))
        elif model == "eof":
            await resp.write(frame(chunk({"content": "cut"})))
        await resp.write_eof()
        return resp
