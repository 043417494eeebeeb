"""The compat endpoints start runs as POST /v1/runs does: through the conversation's multitask
policy. A second AG-UI run in a thread whose run is still going is refused (409
conversation_busy, our coded JSON), never started beside it. Real server, real socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from tests.conftest import LiveServer, url
from tests.sse_client import iter_frames


def ag_ui_body(thread: str, run: str, tokens: int, delay_ms: int) -> dict[str, Any]:
    return {"threadId": thread, "runId": run, "messages": [], "tools": [], "context": [],
            "state": None, "forwardedProps": {"input": {
                "text": "hi", "tokens": tokens, "delay_ms": delay_ms,
                "reasoning": False, "tool_call": False}}}


async def test_a_second_ag_ui_run_in_a_busy_thread_is_refused(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    endpoint = url(server, "/v1/ag-ui/demo")
    headers = {"Accept": "text/event-stream"}
    async with http.post(endpoint, json=ag_ui_body("t_busy", "first", 20, 50),
                         headers=headers) as first:
        assert first.status == 200, await first.text()
        frames = iter_frames(first)
        started = await asyncio.wait_for(anext(frames), 10)
        assert json.loads(started.data)["type"] == "RUN_STARTED"
        async with http.post(endpoint, json=ag_ui_body("t_busy", "second", 1, 0),
                             headers=headers) as second:
            assert second.status == 409
            assert (await second.json())["error"]["code"] == "conversation_busy"
        types = [json.loads(f.data)["type"] async for f in frames if f.data]
    assert types[-1] == "RUN_FINISHED"
    # The thread holds the first run only, whole: one done, contiguous seq.
    async with http.get(url(server, "/v1/conversations/t_busy/events"),
                        headers={"Accept": "application/json"}) as resp:
        assert resp.status == 200, await resp.text()
        page = await resp.json()
    events = page["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    runs = {e["run_id"] for e in events if e.get("run_id")}
    assert len(runs) == 1
    mine = [e for e in events if e.get("run_id") in runs]
    dones = [e for e in mine if e["type"] == "done"]
    assert len(dones) == 1 and mine[-1] is dones[0] and dones[0]["data"]["events"] == len(mine)
