"""The schedules API over a real socket: CRUD, coded errors, firings as ordinary runs."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from app.agents.demo import DemoAgent
from app.agents.registry import AgentRegistry
from protocol.messages import AgentCard
from tests.conftest import LiveServer, ServerFactory, url
from tests.run_client import conversation_events
from tests.schedules.helpers import (
    INTERVAL,
    QUICK_DEMO,
    create_schedule,
    get_schedule,
    run_starts,
    wait_for,
)


@pytest.fixture
async def server(start_server: ServerFactory) -> LiveServer:
    return await start_server(schedule_min_interval=0.1)


async def test_create_list_get_delete(server: LiveServer, http: aiohttp.ClientSession) -> None:
    base = url(server, "")
    created = await create_schedule(http, base, interval_seconds=60, conversation_id="c_sched")
    sid = created["schedule_id"]
    assert created["agent"] == "demo" and created["input"] == QUICK_DEMO
    assert created["conversation_id"] == "c_sched" and created["interval_seconds"] == 60
    assert created["next_fire_at"] - created["created_at"] == 60_000
    other = await create_schedule(http, base, interval_seconds=90)
    assert other["conversation_id"].startswith("c_")
    async with http.get(url(server, "/v1/schedules")) as resp:
        assert resp.status == 200
        listed = [s["schedule_id"] for s in (await resp.json())["schedules"]]
    assert listed == [sid, other["schedule_id"]]
    assert await get_schedule(http, base, sid) == created
    async with http.delete(url(server, f"/v1/schedules/{sid}")) as resp:
        assert resp.status == 204
    for method in ("GET", "DELETE"):
        async with http.request(method, url(server, f"/v1/schedules/{sid}")) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "schedule_not_found"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"agent": "demo"}, 422, "invalid_field"),
        ({"agent": "demo", "interval_seconds": 0.05}, 422, "invalid_field"),
        ({"agent": "demo", "interval_seconds": -1}, 422, "invalid_field"),
        ({"agent": "demo", "interval_seconds": 1, "every": 2}, 422, "invalid_field"),
        ({"agent": "demo", "interval_seconds": 1, "conversation_id": "no spaces"}, 422,
         "invalid_field"),
        ({"agent": "nope", "interval_seconds": 1}, 422, "unknown_agent"),
        ({"agent": "demo", "interval_seconds": 1, "input": {"tokens": -1}}, 422, "invalid_input"),
        ("{not json", 400, "malformed_json"),
        ("", 400, "malformed_json"),
    ],
)
async def test_bad_create_is_a_coded_error(
    server: LiveServer, http: aiohttp.ClientSession, body: Any, status: int, code: str
) -> None:
    kwargs: dict[str, Any] = (
        {"data": body, "headers": {"Content-Type": "application/json"}}
        if isinstance(body, str) else {"json": body}
    )
    async with http.post(url(server, "/v1/schedules"), **kwargs) as resp:
        assert resp.status == status, await resp.text()
        assert (await resp.json())["error"]["code"] == code
    async with http.get(url(server, "/v1/schedules")) as resp:
        assert (await resp.json())["schedules"] == []


async def test_bad_schedule_id_is_422(server: LiveServer, http: aiohttp.ClientSession) -> None:
    async with http.get(url(server, "/v1/schedules/bad%20id")) as resp:
        assert resp.status == 422
        assert (await resp.json())["error"]["code"] == "invalid_id"


async def test_firings_are_ordinary_runs_in_the_conversation_until_deleted(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    base = url(server, "")
    created = await create_schedule(http, base)
    sid, cid = created["schedule_id"], created["conversation_id"]
    schedule = await wait_for(http, base, sid, "fires", 3)
    assert schedule["last_fire_at"] >= created["created_at"] + INTERVAL * 1000
    async with http.delete(url(server, f"/v1/schedules/{sid}")) as resp:
        assert resp.status == 204
    events = await conversation_events(http, server, cid)
    runs = {e["run_id"] for e in events if e["type"] == "run_started"}
    assert len(runs) >= 3
    for e in events:
        if e["type"] == "run_started":
            assert e["data"]["metadata"] == {"schedule_id": sid}
            assert e["data"]["input"] == QUICK_DEMO
    dones = [e for e in events if e["type"] == "done"]
    assert sorted(d["run_id"] for d in dones) == sorted(runs)
    assert {d["data"]["status"] for d in dones} == {"completed"}
    # Deleted: no more firings.
    count = len(runs)
    await asyncio.sleep(INTERVAL * 2.5)
    assert len(await run_starts(http, base, cid)) == count


async def test_failing_runs_do_not_stop_the_schedule(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    base = url(server, "")
    created = await create_schedule(http, base, input={**QUICK_DEMO, "fail": True})
    schedule = await wait_for(http, base, created["schedule_id"], "fires", 3)
    assert "last_error" not in schedule  # the runs failed, starting them did not
    # stop the firing first: the replay below settles only once the conversation is quiet
    async with http.delete(f"{base}/v1/schedules/{created['schedule_id']}") as resp:
        assert resp.status in (200, 204)
    events = await conversation_events(http, server, created["conversation_id"])
    statuses = [e["data"]["status"] for e in events if e["type"] == "done"]
    assert len(statuses) >= 3 and set(statuses) == {"failed"}


class OtherAgent(DemoAgent):
    card = AgentCard(name="other", description="a demo under another name")


async def test_firing_that_cannot_start_a_run_is_recorded_and_the_schedule_goes_on(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    """The agent vanished across a restart: start_run raises ApiError at each firing."""
    first = await start_server(schedule_min_interval=0.1,
                               agents=AgentRegistry([DemoAgent(), OtherAgent()]))
    created = await create_schedule(http, url(first, ""), agent="other")
    sid = created["schedule_id"]
    await first.close()
    second = await start_server(schedule_min_interval=0.1)
    base = url(second, "")
    schedule = await wait_for(http, base, sid, "failures", 3)
    assert schedule["last_error"]["code"] == "unknown_agent"
    assert schedule["next_fire_at"] > schedule["last_fire_at"]
    async with http.get(url(second, "/v1/schedules")) as resp:
        assert [s["schedule_id"] for s in (await resp.json())["schedules"]] == [sid]


async def test_a_firing_into_a_conversation_busy_with_another_run_is_refused(
    server: LiveServer, http: aiohttp.ClientSession
) -> None:
    """Firings go through the multitask policy like POST /v1/runs: while a client's run is
    active in the schedule's conversation, a firing (default ``reject``) is recorded as
    ``conversation_busy``, and no run ever runs beside another."""
    base = url(server, "")
    created = await create_schedule(http, base)
    sid, cid = created["schedule_id"], created["conversation_id"]
    await wait_for(http, base, sid, "fires", 1)
    slow = {"agent": "demo", "conversation_id": cid, "multitask": "enqueue",
            "input": {**QUICK_DEMO, "tokens": 15, "delay_ms": 100}}  # ~1.5 s
    async with http.post(f"{base}/v1/runs", json=slow) as resp:
        assert resp.status == 202, await resp.text()
    schedule = await wait_for(http, base, sid, "failures", 1)
    assert schedule["last_error"]["code"] == "conversation_busy"
    async with http.delete(f"{base}/v1/schedules/{sid}") as resp:
        assert resp.status in (200, 204)
    events = await conversation_events(http, server, cid, settle=1.0)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    open_runs: set[str] = set()
    for e in events:
        if e["type"] == "run_started":
            assert not open_runs, f"{e['run_id']} started beside {open_runs}"
            open_runs.add(e["run_id"])
        elif e["type"] == "done":
            mine = [x for x in events if x["run_id"] == e["run_id"]]
            assert mine[-1] is e and e["data"]["events"] == len(mine)
            open_runs.discard(e["run_id"])
    assert not open_runs
