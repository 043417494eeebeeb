"""The sinks' shared timer wheel and the I/O-free deadlines, fed times by hand."""

from __future__ import annotations

import asyncio
import math

import pytest

from app.fanout.batch import Blob, http_chunk
from app.sinks.timers import Deadlines, Due, Wheel, wheel


def test_deadlines_say_heartbeat_lifetime_and_idle_once_due() -> None:
    d = Deadlines(now=100.0, heartbeat=15.0, lifetime=60.0, idle=20.0)
    assert d.due(110.0, last_delivery=105.0) == Due.NOTHING
    assert d.next(last_delivery=105.0) == 115.0  # the heartbeat comes first
    assert d.due(115.0, last_delivery=105.0) == Due.HEARTBEAT
    assert d.next(last_delivery=105.0) == 125.0  # idle (105 + 20) before the next beat
    assert d.due(125.0, last_delivery=105.0) == Due.IDLE
    assert d.due(125.0, last_delivery=124.0) == Due.NOTHING  # a delivery moved it
    got = d.due(160.0, last_delivery=150.0)
    assert got == Due.LIFETIME | Due.HEARTBEAT
    assert Due.LIFETIME not in d.due(200.0, last_delivery=199.0)  # said once


def test_deadlines_zero_disables_lifetime_and_idle() -> None:
    d = Deadlines(now=0.0, heartbeat=1.0, lifetime=0.0, idle=0.0)
    assert d.ends_at == math.inf
    assert d.due(10_000.0, last_delivery=0.0) == Due.HEARTBEAT
    assert d.next(last_delivery=0.0) == 10_001.0


def test_blob_http_chunk_is_built_once_and_shared() -> None:
    blob = Blob(b"id: 1\n\n", 1, 1, False)
    first = blob.http_chunk()
    assert first == b"7\r\nid: 1\n\n\r\n" == http_chunk(b"id: 1\n\n")
    assert blob.http_chunk() is first


class Entry:
    def __init__(self, name: str, fired: list[str], again: float | None = None) -> None:
        self.name = name
        self.fired = fired
        self.again = again
        self.wheel: Wheel | None = None

    def on_timer(self, now: float) -> None:
        self.fired.append(self.name)
        if self.again is not None and self.wheel is not None:
            self.wheel.schedule(self, now + self.again)
            self.again = None


async def wait_until(cond: object, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.01)


async def test_wheel_fires_in_deadline_order_reschedules_and_cancels() -> None:
    w = Wheel(asyncio.get_running_loop(), resolution=0.01)
    fired: list[str] = []
    now = w.loop.time()
    a, b, c = Entry("a", fired, again=0.02), Entry("b", fired), Entry("c", fired)
    a.wheel = w
    w.schedule(b, now + 0.05)
    w.schedule(a, now + 0.01)
    w.schedule(c, now + 0.03)
    w.cancel(c)
    w.schedule(b, now + 0.06)  # replaces the earlier schedule of b: fires once
    await wait_until(lambda: len(fired) >= 3 and not len(w))
    assert fired == ["a", "a", "b"]
    assert w._handle is None, "an empty wheel stops ticking"


async def test_wheel_is_one_per_loop_and_keeps_a_coarse_clock() -> None:
    w = wheel()
    assert wheel() is w
    fired: list[str] = []
    before = w.now
    w.schedule(Entry("x", fired), w.loop.time())
    await wait_until(lambda: fired == ["x"])
    assert w.now > before


class FakeLoop:
    """Only the two calls a wheel makes, on a clock the test moves."""

    def __init__(self) -> None:
        self.t = 0.0
        self.armed: list[float] = []

    def time(self) -> float:
        return self.t

    def call_at(self, when: float, callback: object) -> FakeHandle:
        self.armed.append(when)
        return FakeHandle()


class FakeHandle:
    def cancel(self) -> None:
        pass


def test_an_idle_wheel_catches_its_clock_up_before_taking_an_entry() -> None:
    """A wheel left empty for an hour must not date a new connection an hour back (its
    lifetime and idle deadlines would be over at once)."""
    loop = FakeLoop()
    w = Wheel(loop, resolution=0.05)  # type: ignore[arg-type]
    loop.t = 3600.0
    assert w.now == 0.0  # stale: nothing ticked
    assert w.time() == 3600.0 and w.now == 3600.0
    loop.t = 7200.0
    w.schedule(Entry("x", []), 7201.0)
    assert w.now == 7200.0
    assert loop.armed == [pytest.approx(7200.05)]  # the next tick, not one an hour ago
    d = Deadlines(w.now, heartbeat=15.0, lifetime=60.0, idle=30.0)
    assert d.due(w.now, last_delivery=w.now) == Due.NOTHING
