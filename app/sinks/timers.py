"""One timer wheel for every connection's heartbeat, lifetime and idle deadline.

Why: a task and a timer per connection (aiohttp-sse's ping task, a lifetime ``call_later``,
an ``asyncio.timeout`` per idle sleep) cost ~1.5 KiB per idle connection and a task switch
plus a timer-heap push per ping. Here each connection is one entry in one slot of a wheel;
one ``call_at`` handle per event loop ticks every ``RESOLUTION`` seconds while anything is
registered, and calls ``on_timer(now)`` on the entries whose slot came due. The wheel also
keeps ``now`` (the loop's clock at the last tick), a coarse clock the sinks read instead of
calling ``time.monotonic()`` on every delivery.

``Deadlines`` is the I/O-free part: given a policy and ``now`` it says what is due
(heartbeat, lifetime over, idle) and when to look again; tests feed it times.
"""

from __future__ import annotations

import asyncio
import enum
import math
import weakref
from typing import Protocol

# Seconds per wheel slot: deadlines fire up to this late. Coarse on purpose (heartbeats are
# seconds apart); fine enough for the sub-second timeouts tests use.
RESOLUTION = 0.05


class Timed(Protocol):
    """A wheel entry: called once its slot is due; it reschedules itself if it wants more.
    ``wheel_tick`` is the wheel's own note of where the entry sits (None: not scheduled),
    kept on the entry rather than in a second dict per wheel (memory per connection)."""

    wheel_tick: int | None

    def on_timer(self, now: float) -> None: ...


class Wheel:
    """Slots of entries keyed by tick number, and the one loop timer that empties them."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION) -> None:
        self.loop = loop
        self.resolution = resolution
        self.now = loop.time()
        self._slots: dict[int, dict[Timed, None]] = {}
        self._tick = self._tick_of(self.now)
        self._handle: asyncio.TimerHandle | None = None

    def _tick_of(self, when: float) -> int:
        return math.floor(when / self.resolution)

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._slots.values())

    def time(self) -> float:
        """The loop's clock now; also refreshes ``now``, which is only kept fresh while the
        wheel ticks (an idle wheel's ``now`` may be hours old)."""
        self.now = self.loop.time()
        return self.now

    def schedule(self, entry: Timed, when: float) -> None:
        """Call ``entry.on_timer`` at ``when`` (within one resolution); replaces a previous
        schedule of the same entry."""
        self.cancel(entry)
        if self._handle is None:
            # Idle (empty) until now: catch the clock and the tick up before the first slot.
            self._tick = max(self._tick, self._tick_of(self.time()))
        tick = max(self._tick + 1, math.ceil(when / self.resolution))
        self._slots.setdefault(tick, {})[entry] = None
        entry.wheel_tick = tick
        if self._handle is None:
            self._arm()

    def cancel(self, entry: Timed) -> None:
        tick = getattr(entry, "wheel_tick", None)
        if tick is None:
            return
        entry.wheel_tick = None
        slot = self._slots.get(tick)
        if slot is not None:
            slot.pop(entry, None)
            if not slot:
                del self._slots[tick]

    def _arm(self) -> None:
        self._handle = self.loop.call_at((self._tick + 1) * self.resolution, self._fire)

    def _fire(self) -> None:
        """Run every slot up to the current tick; keep ticking while anything is left."""
        self._handle = None
        self.now = self.loop.time()
        current = self._tick_of(self.now)
        if current - self._tick > len(self._slots):
            due = sorted(t for t in self._slots if t <= current)  # the loop was stalled
        else:
            due = [t for t in range(self._tick + 1, current + 1) if t in self._slots]
        self._tick = max(self._tick, current)
        for tick in due:
            for entry in self._slots.pop(tick, {}):
                if entry.wheel_tick == tick:
                    entry.wheel_tick = None
                    entry.on_timer(self.now)
        if self._slots:
            self._arm()


_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Wheel] = (
    weakref.WeakKeyDictionary()
)


def wheel() -> Wheel:
    """The running loop's wheel (made on first use; it ticks only while it has entries)."""
    loop = asyncio.get_running_loop()
    found = _wheels.get(loop)
    if found is None:
        found = _wheels[loop] = Wheel(loop)
    return found


class Due(enum.Flag):
    NOTHING = 0
    HEARTBEAT = enum.auto()
    LIFETIME = enum.auto()
    IDLE = enum.auto()


class Deadlines:
    """When a connection next needs a heartbeat, reaches its lifetime, or counts as idle.

    No I/O: ``due(now, last_delivery)`` says what came due and moves the marks; ``next``
    is when to be called again. ``0`` disables the lifetime or the idle timeout.
    """

    __slots__ = ("beat", "ends_at", "heartbeat", "idle", "next_beat")

    def __init__(self, now: float, heartbeat: float, lifetime: float, idle: float) -> None:
        self.heartbeat = heartbeat
        self.idle = idle
        self.next_beat = now + heartbeat
        self.ends_at = now + lifetime if lifetime > 0 else math.inf
        self.beat = heartbeat > 0

    def due(self, now: float, last_delivery: float) -> Due:
        out = Due.NOTHING
        if now >= self.ends_at:
            out |= Due.LIFETIME
            self.ends_at = math.inf  # said once
        if self.idle > 0 and now - last_delivery >= self.idle:
            out |= Due.IDLE
        if self.beat and now >= self.next_beat:
            out |= Due.HEARTBEAT
            self.next_beat = now + self.heartbeat
        return out

    def next(self, last_delivery: float) -> float:
        when = min(self.next_beat if self.beat else math.inf, self.ends_at)
        if self.idle > 0:
            when = min(when, last_delivery + self.idle)
        return when
