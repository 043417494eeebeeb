"""Recently published events, kept in memory so catch-ups rarely touch the store.

When many subscribers fall behind at once (a burst, a slow network), each would otherwise
read the same rows from SQLite and build its own frames. From here they share the very
``EncodedEvent`` objects the hub published, frames included. The cache is a byte-bounded
window per conversation: oldest events go first, across all conversations. It only ever holds
committed events, so it never disagrees with the store; a request older than its window
returns None and the caller reads the store.
"""

from __future__ import annotations

from collections import deque

from protocol.codec import EncodedEvent

# Rough per-event overhead beside the body: the cached SSE frame, object headers.
EVENT_OVERHEAD = 200


def event_cost(event: EncodedEvent) -> int:
    return 2 * len(event.body) + EVENT_OVERHEAD


class _Window:
    """One conversation's contiguous run of recent events (seq first..first+len-1)."""

    __slots__ = ("conversation_id", "events", "start")

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.events: list[EncodedEvent] = []
        self.start = 0  # index of the oldest live entry (entries before it were evicted)

    @property
    def first_seq(self) -> int:
        return self.events[self.start].seq

    def __len__(self) -> int:
        return len(self.events) - self.start

    def pop_oldest(self) -> None:
        self.start += 1
        if self.start > 1024 and self.start * 2 > len(self.events):
            del self.events[: self.start]
            self.start = 0


class ReplayCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._windows: dict[str, _Window] = {}
        # Every cached event in publish order, as (its window, its cost): eviction pops the
        # globally oldest, which is always the oldest entry of its own window.
        self._order: deque[tuple[_Window, int]] = deque()

    def add(self, events: list[EncodedEvent]) -> None:
        """Append a committed batch of one conversation (seqs contiguous after the last)."""
        if self.max_bytes <= 0 or not events:
            return
        conv = events[0].conversation_id
        window = self._windows.get(conv)
        if window is None or window.events[-1].seq + 1 != events[0].seq:
            # First batch, or not contiguous (e.g. after ``forget``): a fresh window; the
            # old one's entries age out of ``_order`` harmlessly.
            window = self._windows[conv] = _Window(conv)
        window.events.extend(events)
        for ev in events:
            cost = event_cost(ev)
            self.bytes += cost
            self._order.append((window, cost))
        while self.bytes > self.max_bytes and self._order:
            window_, cost = self._order.popleft()
            self.bytes -= cost
            window_.pop_oldest()
            if not len(window_) and self._windows.get(window_.conversation_id) is window_:
                del self._windows[window_.conversation_id]

    def forget(self, conversation_id: str) -> None:
        self._windows.pop(conversation_id, None)

    def after(
        self, conversation_id: str, after: int, limit: int
    ) -> list[EncodedEvent] | None:
        """Up to ``limit`` cached events with ``seq > after``, or None if the window does not
        reach back to ``after + 1`` (then read the store)."""
        window = self._windows.get(conversation_id)
        if window is None or not len(window) or window.first_seq > after + 1:
            return None
        offset = window.start + (after + 1 - window.first_seq)
        return window.events[offset: offset + limit]
