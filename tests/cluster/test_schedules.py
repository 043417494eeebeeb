"""Schedules in a cluster (issue 14): stored in PostgreSQL, seen by every node, and each due
time fired once in the whole cluster (a compare-and-set on the row's ``next_fire_at``),
also when the node that created the schedule dies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.process import ServerProcess
from tests.services import PG_DSN, REDIS_URL, pg_schema, redis_prefix, schema_dsn


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def schedule_runs(http: aiohttp.ClientSession, base: str, conversation: str) -> list[Any]:
    page = await get_json(http, f"{base}/v1/runs?conversation_id={conversation}&limit=100")
    return list(page["runs"])


async def test_each_due_time_fires_once_across_nodes_and_survives_its_creator(
    tmp_path: Path,
) -> None:
    async with pg_schema() as schema, redis_prefix() as prefix:
        args = ["--store", schema_dsn(schema, PG_DSN), "--bus", REDIS_URL,
                "--cluster-name", prefix, "--lease-seconds", "2",
                "--schedule-min-interval", "0.5"]
        a, b = (ServerProcess(tmp_path / f"n{i}.db", *args) for i in range(2))
        await a.start()
        await b.start()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{a.base}/v1/schedules", json={
                        "agent": "demo", "interval_seconds": 0.5, "conversation_id": "tick",
                        "input": {"tokens": 1, "delay_ms": 0, "reasoning": False,
                                  "tool_call": False}}) as r:
                    assert r.status == 201, await r.text()
                    sid = (await r.json())["schedule_id"]
                # node B sees it (it reads the shared table)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    async with http.get(f"{b.base}/v1/schedules/{sid}") as r:
                        if r.status == 200:
                            break
                    await asyncio.sleep(0.1)
                assert r.status == 200
                started = time.monotonic()
                await asyncio.sleep(4)
                killed_ms = time.time() * 1000
                a.kill()  # the creator dies: B goes on firing
                await asyncio.sleep(4)
                elapsed = time.monotonic() - started
                runs = await schedule_runs(http, b.base, "tick")
                schedule = await get_json(http, f"{b.base}/v1/schedules/{sid}")
        finally:
            a.stop()
            b.stop()
    # every due time once: two nodes firing each would make about twice as many runs
    due_times = elapsed / 0.5
    assert 0.4 * due_times <= len(runs) <= 1.2 * due_times + 2, (len(runs), due_times)
    after_kill = [r for r in runs if r["created_at"] > killed_ms + 500]
    assert after_kill, "the surviving node fires the schedule its creator made"
    # the shared row counts each firing once, whichever node made it
    fired = sum(schedule.get(k, 0) for k in ("fires", "skipped", "failures"))
    assert fired >= len(after_kill) >= 1
