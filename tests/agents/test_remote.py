"""Remote agents: two real agentstream servers on two ports, one relaying the other's demo
agent; and a fake remote whose stream drops, for resume and once-only set-up."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app.agents.demo import DemoAgent
from app.agents.registry import AgentRegistry
from app.agents.remote import RemoteAgent, RemoteOptions
from app.state import STATE
from tests.agents.fake_remote import RUN_ID, WORDS, FakeRemote
from tests.conftest import LiveServer, ServerFactory, url
from tests.run_client import done_of, stream_run, types
from tests.sse_client import read_events


def remote_agent(base: str, name: str = "far", **options: Any) -> RemoteAgent:
    opts: dict[str, Any] = {"url": base, "remote_agent": "demo", "backoff": 0.02,
                            "retries": 2, "resume_retries": 3, "cancel_timeout": 2.0}
    opts.update(options)
    return RemoteAgent(name, RemoteOptions(**opts))


@pytest.fixture
async def far(start_server: ServerFactory, tmp_path: Path) -> LiveServer:
    return await start_server(db=tmp_path / "far.db")


@pytest.fixture
async def near(start_server: ServerFactory, far: LiveServer, tmp_path: Path) -> LiveServer:
    agents = AgentRegistry([DemoAgent(), remote_agent(far.make_url(""))])
    return await start_server(db=tmp_path / "near.db", agents=agents)


async def far_runs(far: LiveServer) -> list[dict[str, Any]]:
    """The runs the remote server stored, read from its SQLite file."""
    st = far.app[STATE]
    await st.store.flush(timeout=5)
    with sqlite3.connect(st.settings.db) as db:
        rows = db.execute("SELECT record FROM runs").fetchall()
    return [json.loads(r[0]) for r in rows]


async def wait_far_status(http: aiohttp.ClientSession, far: LiveServer, run_id: str,
                          status: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            async with http.get(url(far, f"/v1/runs/{run_id}")) as resp:
                info = dict(await resp.json())
            if info["status"] == status:
                return info
            await asyncio.sleep(0.05)


CONTENT_TYPES = {"reasoning_started", "reasoning", "reasoning_completed", "tool_call_started",
                 "tool_call_completed", "message_chunk", "message"}


def content(events: list[dict[str, Any]]) -> list[tuple[str, str | None, Any]]:
    return [(e["type"], e.get("item_id"), e["data"]) for e in events
            if e["type"] in CONTENT_TYPES]


async def test_remote_stream_is_relayed_event_for_event(
    near: LiveServer, far: LiveServer, http: aiohttp.ClientSession
) -> None:
    body = {"agent": "far", "input": {"text": "hi", "tokens": 8, "delay_ms": 1}}
    events = await stream_run(http, near, body)
    assert done_of(events)["status"] == "completed"
    assert {e["agent"] for e in events} == {"far"}
    [remote] = await far_runs(far)
    assert remote["status"] == "completed" and remote["agent"] == "demo"
    remote_events = await read_events(http, url(far, f"/v1/runs/{remote['run_id']}/events"))
    relayed = content(events)
    assert relayed == content(remote_events)
    assert [t for t, _, _ in relayed].count("message_chunk") == 8


async def test_remote_question_is_asked_here_and_the_answer_forwarded(
    near: LiveServer, far: LiveServer, http: aiohttp.ClientSession
) -> None:
    async def answer(event: dict[str, Any]) -> None:
        if event["type"] == "require_user_input":
            assert event["data"]["prompt"] == "Proceed?"
            assert event["data"]["choices"] == ["yes", "no"]
            async with http.post(url(near, f"/v1/runs/{event['run_id']}/input"),
                                 json={"request_id": event["data"]["request_id"],
                                       "value": "yes"}) as resp:
                assert resp.status == 200, await resp.text()

    body = {"agent": "far", "input": {"tokens": 2, "delay_ms": 1, "ask": "Proceed?",
                                      "choices": ["yes", "no"]}}
    events = await stream_run(http, near, body, on_event=answer)
    assert done_of(events)["status"] == "completed"
    got = types(events)
    assert got.count("require_user_input") == 1 and got.count("user_input_received") == 1
    assert events[-2]["data"]["text"] == "You answered: yes"
    [remote] = await far_runs(far)
    remote_events = await read_events(http, url(far, f"/v1/runs/{remote['run_id']}/events"))
    [received] = [e for e in remote_events if e["type"] == "user_input_received"]
    assert received["data"]["value"] == "yes"


async def test_local_cancel_cancels_the_remote_run(
    near: LiveServer, far: LiveServer, http: aiohttp.ClientSession
) -> None:
    chunks = 0

    async def cancel_after_three(event: dict[str, Any]) -> None:
        nonlocal chunks
        if event["type"] == "message_chunk":
            chunks += 1
            if chunks == 3:
                async with http.post(url(near, f"/v1/runs/{event['run_id']}/cancel")) as resp:
                    assert resp.status == 202

    body = {"agent": "far", "input": {"tokens": 2000, "delay_ms": 5, "reasoning": False}}
    events = await stream_run(http, near, body, on_event=cancel_after_three)
    assert done_of(events)["status"] == "cancelled"
    [remote] = await far_runs(far)
    info = await wait_far_status(http, far, remote["run_id"], "cancelled")
    assert info["events"] < 100  # it stopped long before its 2000 chunks


async def test_remote_failure_ends_the_local_run_with_the_remote_error(
    near: LiveServer, http: aiohttp.ClientSession
) -> None:
    events = await stream_run(http, near, {"agent": "far", "input": {"tokens": 1, "fail": True}})
    done = done_of(events)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "demo_failure"
    assert "asked to fail" in done["error"]["message"]


async def test_input_the_remote_refuses_fails_with_its_reason(
    near: LiveServer, http: aiohttp.ClientSession
) -> None:
    events = await stream_run(http, near, {"agent": "far", "input": {"tokens": "many"}})
    error = done_of(events)["error"]
    assert error["code"] == "remote_http_error"
    assert "422" in error["message"] and "invalid_input" in error["message"]


async def test_remote_that_is_down_fails_remote_unavailable(
    start_server: ServerFactory, http: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    agent = remote_agent(f"http://127.0.0.1:{unused_tcp_port}")
    server = await start_server(agents=AgentRegistry([agent]))
    error = done_of(await stream_run(http, server, {"agent": "far", "input": "hi"}))["error"]
    assert error["code"] == "remote_unavailable"
    assert "cannot connect" in error["message"]


async def test_remote_without_that_agent_fails_clearly(
    start_server: ServerFactory, far: LiveServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    agent = remote_agent(far.make_url(""), remote_agent="nope")
    server = await start_server(db=tmp_path / "near.db", agents=AgentRegistry([agent]))
    error = done_of(await stream_run(http, server, {"agent": "far", "input": "hi"}))["error"]
    assert error["code"] == "remote_agent_unknown"
    assert "'nope'" in error["message"] and "demo" in error["message"]


@pytest.fixture
async def fake_remote() -> AsyncIterator[tuple[FakeRemote, LiveServer]]:
    fake = FakeRemote()
    server = LiveServer(fake.app())
    await server.start()
    yield fake, server
    await server.close()


async def test_dropped_remote_stream_resumes_with_last_event_id_without_gap_or_duplicate(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake_remote: tuple[FakeRemote, LiveServer],
) -> None:
    fake, remote = fake_remote
    server = await start_server(agents=AgentRegistry([remote_agent(remote.make_url(""))]))
    events = await stream_run(http, server, {"agent": "far", "input": "go"})
    assert done_of(events)["status"] == "completed"
    assert [e["data"]["delta"] for e in events if e["type"] == "message_chunk"] == WORDS
    assert events[-2]["data"]["text"] == "".join(WORDS)
    # 3 events per connection: the resumes asked for what followed the last relayed seq.
    assert fake.last_event_ids == ["3", "6"]
    assert fake.cancels == []


async def test_concurrent_first_runs_set_up_the_remote_once(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake_remote: tuple[FakeRemote, LiveServer],
) -> None:
    fake, remote = fake_remote
    fake.per_connection = 100
    server = await start_server(agents=AgentRegistry([remote_agent(remote.make_url(""))]))
    runs = await asyncio.gather(*(stream_run(http, server, {"agent": "far", "input": "go"})
                                  for _ in range(5)))
    assert [done_of(r)["status"] for r in runs] == ["completed"] * 5
    assert fake.agents_calls == 1


async def test_remote_stream_lost_for_good_fails_and_cancels_the_remote_run(
    start_server: ServerFactory, http: aiohttp.ClientSession,
    fake_remote: tuple[FakeRemote, LiveServer],
) -> None:
    fake, remote = fake_remote
    fake.start_per_connection = 2
    fake.per_connection = 0  # every resume delivers nothing and drops again
    server = await start_server(agents=AgentRegistry([remote_agent(remote.make_url(""))]))
    error = done_of(await stream_run(http, server, {"agent": "far", "input": "go"}))["error"]
    assert error["code"] == "remote_disconnected"
    assert "3 attempts" in error["message"]
    assert fake.last_event_ids == ["2", "2", "2"]
    assert fake.cancels == [RUN_ID]
