"""Helpers every test file shares: start a run, wait for a condition, check the promise.

One copy of each (they were copied into several files): ``post_run`` starts a run the way a
JSON client does, ``eventually`` polls a condition with a deadline (never a bare sleep),
``poll`` does the same for a condition that needs I/O (a request), and
``check_run`` asserts what every streaming test must: exactly one ``done``, last; contiguous
``seq``; ``done.data.events`` equal to the run's events.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

from tests.conftest import LiveServer, url

T = TypeVar("T")


async def post_run(http: aiohttp.ClientSession, server: LiveServer,
                   headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    """``POST /v1/runs`` (agent ``demo`` unless given); asserts the 202 and returns its body."""
    body.setdefault("agent", "demo")
    async with http.post(url(server, "/v1/runs"), json=body, headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        return dict(await resp.json())


async def slow_reader(server: LiveServer, request: bytes) -> socket.socket:
    """A raw client that sends ``request`` and then reads nothing, with a 4 KiB receive
    buffer: the server soon waits for it to drain (stalled and reset-peer tests)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (server.host, server.port))
    await loop.sock_sendall(sock, request)
    return sock


async def eventually(cond: Callable[[], Any], seconds: float = 20,
                     what: str = "condition") -> None:
    """Poll ``cond`` every 10 ms until it is true; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached in {seconds}s"
        await asyncio.sleep(0.01)


async def poll(fetch: Callable[[], Awaitable[T]], until: Callable[[T], bool],
               seconds: float = 20, what: str = "condition", interval: float = 0.01) -> T:
    """Call ``fetch`` until ``until`` holds for its value and return that value; fail after
    ``seconds`` with the last value seen."""
    deadline = time.monotonic() + seconds
    while True:
        value = await fetch()
        if until(value):
            return value
        assert time.monotonic() < deadline, f"{what} not reached in {seconds}s: {value!r}"
        await asyncio.sleep(interval)


def assert_contiguous(events: list[dict[str, Any]]) -> None:
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def check_run(events: list[dict[str, Any]], run_id: str) -> dict[str, Any]:
    """The promise for one run in a stream; returns its ``done`` event."""
    assert_contiguous(events)
    mine = [e for e in events if e["run_id"] == run_id]
    dones = [e for e in mine if e["type"] == "done"]
    assert len(dones) == 1 and mine[-1] is dones[0], [e["type"] for e in mine[-3:]]
    assert dones[0]["data"]["events"] == len(mine), (dones[0]["data"], len(mine))
    return dones[0]
