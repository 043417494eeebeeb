"""A spec-following SSE client for tests: parses frames from a real socket, reconnects like
a browser EventSource (``Last-Event-ID``, ``retry``, stops on 204)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class SseFrame:
    id: str | None = None
    event: str = "message"
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.data))


async def iter_frames(resp: aiohttp.ClientResponse) -> AsyncIterator[SseFrame]:
    """Yield dispatched frames, comment lines between frames (as comment-only frames) and a
    trailing retry-only block, as they arrive."""
    frame = SseFrame()
    data_lines: list[str] = []
    touched = False
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        while True:
            idx = min((i for i in (buffer.find(b"\n"), buffer.find(b"\r")) if i >= 0), default=-1)
            if idx < 0:
                break
            line = buffer[:idx].decode()
            cut = idx + 1
            if buffer[idx:idx + 2] == b"\r\n":
                cut = idx + 2
            buffer = buffer[cut:]
            if line == "":
                if touched:
                    frame.data = "\n".join(data_lines)
                    yield frame
                frame, data_lines, touched = SseFrame(), [], False
                continue
            if line.startswith(":"):
                if not touched:
                    # a heartbeat between frames (sent with no blank line of its own)
                    yield SseFrame(comments=[line[1:].strip()])
                else:
                    frame.comments.append(line[1:].strip())
                continue
            touched = True
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                frame.id = value
            elif name == "event":
                frame.event = value
            elif name == "data":
                data_lines.append(value)
            elif name == "retry" and value.isdigit():
                frame.retry = int(value)
    if touched and not data_lines and frame.retry is not None:
        # A goodbye ``retry:`` ends the stream without a blank line; EventSource applies a
        # retry field when it parses the line, so report it.
        yield frame


async def read_events(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None,
    stop_after_done: bool = True,
) -> list[dict[str, Any]]:
    """Read one response to its end, returning the event envelopes."""
    out: list[dict[str, Any]] = []
    async with session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        async for frame in iter_frames(resp):
            if frame.data:
                out.append(frame.json)
                if stop_after_done and frame.event == "done":
                    break
    return out


class EventSource:
    """Reconnects with Last-Event-ID until the server answers 204 (what browsers do)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.last_id: str | None = None
        self.connects = 0
        self.events: list[dict[str, Any]] = []

    async def connect_once(self, max_events: int | None = None) -> int:
        """One connection; returns the HTTP status. Drops it after ``max_events``."""
        headers = {"Accept": "text/event-stream"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = self.last_id
        self.connects += 1
        got = 0
        async with self.session.get(self.url, headers=headers) as resp:
            if resp.status != 200:
                return resp.status
            async for frame in iter_frames(resp):
                if not frame.data:
                    continue
                self.events.append(frame.json)
                if frame.id is not None:
                    self.last_id = frame.id
                got += 1
                if max_events is not None and got >= max_events:
                    resp.close()  # the connection drops, as on a flaky network
                    break
        return 200
