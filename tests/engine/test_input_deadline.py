"""require_user_input deadlines: the default answer, or done {failed, input_timeout}."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.conftest import LiveServer, ServerFactory, url
from tests.helpers import check_run, post_run
from tests.sse_client import read_events


async def run_events(http: aiohttp.ClientSession, server: LiveServer,
                     inp: dict[str, Any]) -> list[dict[str, Any]]:
    """Start a demo run, read its stream to ``done``, and check the stream's promise."""
    run = await post_run(http, server, input=inp)
    events = await read_events(http, url(server, run["events_url"]))
    check_run(events, run["run_id"])
    return events


async def test_deadline_takes_the_agents_default(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    events = await run_events(http, server, {"tokens": 0, "ask": "ok?", "ask_timeout": 0.2,
                                             "ask_default": "no"})
    ask = next(e for e in events if e["type"] == "require_user_input")
    assert ask["data"]["has_default"] is True and ask["data"]["expires_at"] > ask["ts"]
    got = next(e for e in events if e["type"] == "user_input_received")
    assert got["data"] == {"request_id": ask["data"]["request_id"], "value": "no",
                           "source": "default"}
    assert events[-2]["data"]["text"] == "You answered: no"
    assert events[-1]["data"]["status"] == "completed"


async def test_deadline_without_default_fails_the_run(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    events = await run_events(http, server, {"tokens": 0, "ask": "ok?", "ask_timeout": 0.2})
    done = events[-1]
    assert done["data"]["status"] == "failed"
    assert done["data"]["error"]["code"] == "input_timeout"
    ask = next(e for e in events if e["type"] == "require_user_input")
    async with http.post(url(server, f"/v1/runs/{done['run_id']}/input"),
                         json={"request_id": ask["data"]["request_id"], "value": 1}) as r:
        assert r.status == 409


async def test_server_default_deadline_applies(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    server = await start_server(input_timeout=0.2)
    events = await run_events(http, server, {"tokens": 0, "ask": "ok?"})
    assert events[-1]["data"]["error"]["code"] == "input_timeout"
