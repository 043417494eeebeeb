"""Fan-out hub: committed events go, as shared bytes, to every subscribed sink.

The store calls ``publish`` after each committed batch. Events are grouped per
conversation into a ``Batch``, whose transport blobs (all its SSE frames joined, all its
WebSocket frames joined, per run filter) are built once on first use and then offered, as the
same ``bytes`` object, to every subscriber: one encode per event, one join per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

from app.engine.replay_cache import ReplayCache
from protocol.codec import EncodedEvent

if TYPE_CHECKING:
    from app.sinks.base import Subscription

Transport = Literal["sse", "ws"]


class Blob:
    """Joined frames for one subscriber view of a batch."""

    __slots__ = ("count", "data", "done_run", "last_seq")

    def __init__(self, data: bytes, count: int, last_seq: int, done_run: bool) -> None:
        self.data = data
        self.count = count
        self.last_seq = last_seq
        # True when the view holds the ``done`` of the filtered run.
        self.done_run = done_run


def frames_of(events: list[EncodedEvent], transport: Transport) -> bytes:
    if transport == "sse":
        return b"".join([e.sse for e in events])
    return b"".join([e.ws for e in events])


def make_blob(
    events: list[EncodedEvent], transport: Transport, run_id: str | None, last_seq: int
) -> Blob:
    if run_id is not None:
        events = [e for e in events if e.run_id == run_id]
    done = run_id is not None and any(e.type == "done" for e in events)
    return Blob(frames_of(events, transport), len(events), last_seq, done)


class Batch:
    """Consecutive committed events of one conversation."""

    __slots__ = ("_blobs", "conversation_id", "events", "first_seq", "last_seq")

    def __init__(self, conversation_id: str, events: list[EncodedEvent]) -> None:
        self.conversation_id = conversation_id
        self.events = events
        self.first_seq = events[0].seq
        self.last_seq = events[-1].seq
        self._blobs: dict[tuple[Transport, str | None], Blob] = {}

    def blob(self, transport: Transport, run_id: str | None, after: int) -> Blob:
        """Frames of events with ``seq > after`` (of ``run_id`` if given)."""
        if after >= self.first_seq:
            # Rare: a subscriber that just caught up past the start of this batch.
            return make_blob(
                [e for e in self.events if e.seq > after], transport, run_id, self.last_seq
            )
        key = (transport, run_id)
        blob = self._blobs.get(key)
        if blob is None:
            blob = self._blobs[key] = make_blob(self.events, transport, run_id, self.last_seq)
        return blob


class Hub:
    def __init__(self, replay_cache_bytes: int = 64 * 1024 * 1024) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        self._published: dict[str, int] = {}
        self.on_published: Callable[[int], None] | None = None
        # Recent committed events, shared by catching-up sinks (see replay_cache.py).
        self.recent = ReplayCache(replay_cache_bytes)

    def published_seq(self, conversation_id: str) -> int:
        """Highest seq of the conversation already published (so already committed)."""
        return self._published.get(conversation_id, 0)

    def note_committed(self, conversation_id: str, seq: int) -> None:
        """Seed the published mark for a conversation loaded from the store."""
        if seq > self._published.get(conversation_id, 0):
            self._published[conversation_id] = seq

    def forget(self, conversation_id: str) -> None:
        self._published.pop(conversation_id, None)
        self.recent.forget(conversation_id)

    def add(self, sub: Subscription) -> None:
        self._subs.setdefault(sub.conversation_id, set()).add(sub)

    def remove(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.conversation_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.conversation_id]

    def has_subscribers(self, conversation_id: str) -> bool:
        return conversation_id in self._subs

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def publish(self, events: list[EncodedEvent]) -> None:
        """Called by the store after a commit; events are in commit (so seq) order."""
        start = 0
        n = len(events)
        while start < n:
            conv = events[start].conversation_id
            end = start + 1
            while end < n and events[end].conversation_id == conv:
                end += 1
            self._publish_batch(Batch(conv, events[start:end]))
            start = end
        if self.on_published is not None:
            self.on_published(n)

    def _publish_batch(self, batch: Batch) -> None:
        self._published[batch.conversation_id] = batch.last_seq
        self.recent.add(batch.events)
        subs = self._subs.get(batch.conversation_id)
        if not subs:
            return
        for sub in list(subs):
            sub.sink.offer(sub, batch)
