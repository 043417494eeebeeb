"""Shared steps of the schedule tests: create one, wait for firings, read the runs back."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiohttp

from tests.run_client import conversation_events

INTERVAL = 0.3
QUICK_DEMO = {"tokens": 1, "delay_ms": 0, "reasoning": False, "tool_call": False}


def now_ms() -> int:
    return int(time.time() * 1000)


async def create_schedule(http: aiohttp.ClientSession, base: str, **body: Any) -> dict[str, Any]:
    body.setdefault("agent", "demo")
    body.setdefault("input", QUICK_DEMO)
    body.setdefault("interval_seconds", INTERVAL)
    async with http.post(f"{base}/v1/schedules", json=body) as resp:
        assert resp.status == 201, await resp.text()
        return dict(await resp.json())


async def get_schedule(http: aiohttp.ClientSession, base: str, sid: str) -> dict[str, Any]:
    async with http.get(f"{base}/v1/schedules/{sid}") as resp:
        assert resp.status == 200, await resp.text()
        return dict(await resp.json())


async def wait_for(http: aiohttp.ClientSession, base: str, sid: str, field: str, at_least: int,
                   within: float = 5.0) -> dict[str, Any]:
    schedule: dict[str, Any] = {}
    try:
        async with asyncio.timeout(within):
            while True:
                schedule = await get_schedule(http, base, sid)
                if schedule.get(field, 0) >= at_least:
                    return schedule
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{field} < {at_least} after {within}s: {schedule}") from None


async def run_starts(http: aiohttp.ClientSession, base: str, conversation_id: str) -> list[int]:
    """When each run of the conversation started (server clock, ms), oldest first."""
    # The schedule keeps firing (every INTERVAL): settle well below it, after the replay burst.
    events = await conversation_events(http, base, conversation_id, settle=0.1)
    return [e["ts"] for e in events if e["type"] == "run_started"]


def assert_steady_after_restart(starts: list[int], down_ms: int, ready_ms: int,
                                until_ms: int) -> None:
    """Firings after a restart: the missed ones fold into one catch-up firing at start-up,
    then one per interval; never a burst (two firings closer than half an interval)."""
    ts = [t for t in starts if t > down_ms]
    assert ts, "no firing after the restart"
    gaps = [b - a for a, b in itertools.pairwise(ts)]
    interval_ms = INTERVAL * 1000
    assert all(g >= interval_ms / 2 for g in gaps), f"burst: gaps {gaps} ms"
    assert ts[0] <= ready_ms + interval_ms / 2, "the overdue firing waited for its next slot"
    expected = (until_ms - ts[0]) / interval_ms + 1
    assert expected - 1.5 <= len(ts) <= expected + 1, (len(ts), expected, gaps)
