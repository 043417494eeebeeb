"""Recently published events, kept in memory so catch-ups rarely touch the store.

When many subscribers fall behind at once (a burst, a slow network), each would otherwise
read the same rows from SQLite and build its own frames. From here they share the very
``EncodedEvent`` objects the hub published, frames included. The cache is a byte-bounded
window per conversation: oldest events go first, across all conversations. It only ever holds
committed events, so it never disagrees with the store; a request older than its window
returns None and the caller reads the store.

Memory follows the byte budget: an evicted event is unreachable at once (its list slot is
cleared, and the slots are compacted when they are half the list), a forgotten or replaced
window lets go of all its events immediately, and ``event_cost`` charges what an event with
both frames built really holds (measured by tests/fanout/test_replay_cache.py).
"""

from __future__ import annotations

from collections import deque
from typing import cast

from protocol.codec import EncodedEvent

# Beside the body: the SSE and WebSocket frames (each about the body again), the object and
# its bytes headers, the window's list slot and the eviction queue's slot.
EVENT_OVERHEAD = 400


def event_cost(event: EncodedEvent) -> int:
    return 3 * len(event.body) + EVENT_OVERHEAD


class _Window:
    """One conversation's contiguous run of recent events (seq first..first+len-1)."""

    __slots__ = ("bytes", "conversation_id", "dead", "events", "start")

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        # Slots before ``start`` were evicted and hold None until the next compaction.
        self.events: list[EncodedEvent | None] = []
        self.start = 0
        self.bytes = 0
        self.dead = False  # forgotten or replaced: its entries in the eviction queue are void

    @property
    def first_seq(self) -> int:
        return cast(EncodedEvent, self.events[self.start]).seq

    @property
    def last_seq(self) -> int:
        return cast(EncodedEvent, self.events[-1]).seq

    def __len__(self) -> int:
        return len(self.events) - self.start

    def pop_oldest(self) -> int:
        """Evict the oldest event; returns its cost."""
        event = cast(EncodedEvent, self.events[self.start])
        self.events[self.start] = None
        self.start += 1
        if self.start * 2 >= len(self.events):
            del self.events[: self.start]
            self.start = 0
        cost = event_cost(event)
        self.bytes -= cost
        return cost

    def release(self) -> int:
        """Drop every event now; returns the bytes they were charged."""
        released = self.bytes
        self.events = []
        self.start = 0
        self.bytes = 0
        self.dead = True
        return released


class ReplayCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._windows: dict[str, _Window] = {}
        # One entry per cached event, in publish order: the window that holds it. Eviction
        # pops the globally oldest, which is always the oldest entry of its own window.
        self._order: deque[_Window] = deque()
        self._void = 0  # entries of dead windows still in ``_order``

    def add(self, events: list[EncodedEvent]) -> None:
        """Append a committed batch of one conversation (seqs contiguous after the last)."""
        if self.max_bytes <= 0 or not events:
            return
        conv = events[0].conversation_id
        window = self._windows.get(conv)
        if window is None or not len(window) or window.last_seq + 1 != events[0].seq:
            # First batch, or not contiguous (e.g. after ``forget``): a fresh window.
            if window is not None:
                self._release(window)
            window = self._windows[conv] = _Window(conv)
        window.events.extend(events)
        for event in events:
            cost = event_cost(event)
            window.bytes += cost
            self.bytes += cost
        self._order.extend([window] * len(events))
        self._evict()

    def _evict(self) -> None:
        order = self._order
        while self.bytes > self.max_bytes and order:
            window = order.popleft()
            if window.dead:
                self._void -= 1
                continue
            self.bytes -= window.pop_oldest()
            if not len(window) and self._windows.get(window.conversation_id) is window:
                del self._windows[window.conversation_id]
                window.dead = True

    def _release(self, window: _Window) -> None:
        """Let go of a window's events now; its queue entries become void, and the queue is
        rebuilt once void entries are half of it (so it cannot grow with forgotten ones)."""
        self._void += len(window)
        self.bytes -= window.release()
        if self._void * 2 > len(self._order):
            self._order = deque(w for w in self._order if not w.dead)
            self._void = 0

    def forget(self, conversation_id: str) -> None:
        window = self._windows.pop(conversation_id, None)
        if window is not None:
            self._release(window)

    def after(
        self, conversation_id: str, after: int, limit: int
    ) -> list[EncodedEvent] | None:
        """Up to ``limit`` cached events with ``seq > after``, or None if the window does not
        reach back to ``after + 1`` (then read the store)."""
        window = self._windows.get(conversation_id)
        if window is None or not len(window) or window.first_seq > after + 1:
            return None
        offset = window.start + (after + 1 - window.first_seq)
        return cast(list[EncodedEvent], window.events[offset: offset + limit])
