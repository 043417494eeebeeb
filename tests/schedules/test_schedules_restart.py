"""Schedules survive restarts on the same database file: a clean stop and a SIGKILL of
``python -m app``. Missed firings fold into one; the cadence resumes without a burst."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ServerFactory, url
from tests.schedules.helpers import (
    INTERVAL,
    assert_steady_after_restart,
    create_schedule,
    now_ms,
    run_starts,
    wait_for,
)

DOWN_FOR = 1.0  # about three intervals missed
WATCH_FOR = 1.3


async def test_schedule_keeps_its_cadence_across_a_clean_restart(
    start_server: ServerFactory, http: aiohttp.ClientSession
) -> None:
    first = await start_server(schedule_min_interval=0.1)
    created = await create_schedule(http, url(first, ""))
    await wait_for(http, url(first, ""), created["schedule_id"], "fires", 1)
    await first.close()
    down = now_ms()
    await asyncio.sleep(DOWN_FOR)
    second = await start_server(schedule_min_interval=0.1)
    ready = now_ms()
    await asyncio.sleep(WATCH_FOR)
    starts = await run_starts(http, url(second, ""), created["conversation_id"])
    assert_steady_after_restart(starts, down, ready, now_ms())


Spawn = Callable[[], Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
async def spawn(tmp_path: Path, unused_tcp_port: int) -> AsyncIterator[Spawn]:
    """Start ``python -m app`` on one port and db file; wait until it is ready."""
    procs: list[asyncio.subprocess.Process] = []
    base = f"http://127.0.0.1:{unused_tcp_port}"

    async def start() -> asyncio.subprocess.Process:
        log_path = tmp_path / f"server{len(procs)}.log"
        log = log_path.open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "app", "--port", str(unused_tcp_port),
            "--db", str(tmp_path / "agentstream.db"), "--schedule-min-interval", "0.1",
            "--log-level", "warning", stdout=log, stderr=log,
        )
        log.close()
        procs.append(proc)
        async with aiohttp.ClientSession() as http, asyncio.timeout(15):
            while True:
                assert proc.returncode is None, log_path.read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(base + "/readyz") as resp:
                        if resp.status == 200:
                            return proc
                await asyncio.sleep(0.05)

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await proc.wait()


async def test_schedule_survives_sigkill_without_a_burst(
    spawn: Spawn, http: aiohttp.ClientSession, unused_tcp_port: int
) -> None:
    base = f"http://127.0.0.1:{unused_tcp_port}"
    proc = await spawn()
    created = await create_schedule(http, base)
    sid, cid = created["schedule_id"], created["conversation_id"]
    await wait_for(http, base, sid, "fires", 2)
    proc.send_signal(signal.SIGKILL)
    async with asyncio.timeout(5):
        await proc.wait()
    down = now_ms()
    await asyncio.sleep(DOWN_FOR)
    await spawn()
    ready = now_ms()
    await asyncio.sleep(WATCH_FOR)
    starts = await run_starts(http, base, cid)
    assert len([t for t in starts if t <= down]) >= 2, "the firings before the kill are kept"
    assert_steady_after_restart(starts, down, ready, now_ms())
    async with http.get(f"{base}/v1/schedules/{sid}") as resp:
        schedule = await resp.json()
    assert schedule["fires"] >= 2 + 2
    assert schedule["next_fire_at"] - schedule["last_fire_at"] <= INTERVAL * 1000 + 1
