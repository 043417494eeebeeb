"""Start a run over SSE and read it to its ``done`` (answering questions on the way)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from tests.conftest import LiveServer, url
from tests.sse_client import iter_frames

OnEvent = Callable[[dict[str, Any]], Awaitable[None]]


async def stream_run(
    http: aiohttp.ClientSession,
    server: LiveServer,
    body: dict[str, Any],
    on_event: OnEvent | None = None,
    within: float = 10.0,
) -> list[dict[str, Any]]:
    """Every event of the run, ``run_started`` to ``done``; fails if ``done`` never comes."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(within), http.post(
        url(server, "/v1/runs"), json=body, headers={"Accept": "text/event-stream"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        async for frame in iter_frames(resp):
            if not frame.data:
                continue
            event = frame.json
            events.append(event)
            if on_event is not None:
                await on_event(event)
            if event["type"] == "done":
                break
    assert events and events[-1]["type"] == "done", events[-3:]
    return events


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def done_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's one ``done`` payload (asserts there is exactly one, and it is last)."""
    dones = [e for e in events if e["type"] == "done"]
    assert len(dones) == 1 and events[-1] is dones[0], types(events)
    assert dones[0]["data"]["events"] == len(events)
    return dict(dones[0]["data"])


async def conversation_events(
    http: aiohttp.ClientSession, server: LiveServer | str, conversation_id: str,
    settle: float = 0.3, within: float = 10.0,
) -> list[dict[str, Any]]:
    """The conversation's stored events: replay until nothing new came for ``settle`` s.
    ``server`` may be a base URL (a server in a subprocess)."""
    events: list[dict[str, Any]] = []
    path = f"/v1/conversations/{conversation_id}/events"
    address = server + path if isinstance(server, str) else url(server, path)
    async with asyncio.timeout(within), http.get(address) as resp:
        assert resp.status == 200, await resp.text()
        frames = iter_frames(resp)
        while True:
            try:
                async with asyncio.timeout(settle):
                    frame = await anext(frames)
            except (TimeoutError, StopAsyncIteration):
                break
            if frame.data:
                events.append(frame.json)
    return events
