"""Fan-out hub: committed events go, as shared bytes, to every subscriber of their conversation.

The store calls ``publish`` after each committed batch. Events are grouped per conversation
into a ``Batch`` (see batch.py) and handed to each ``Subscriber``. The hub knows nothing of
sinks or sockets: a subscriber is anything with a ``conversation_id`` and ``deliver(batch)``,
so the arrows point one way (sinks -> fanout, engine -> fanout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from app.fanout.batch import Batch
from app.fanout.replay_cache import ReplayCache
from protocol.codec import EncodedEvent


class Subscriber(Protocol):
    """What the hub delivers to: called synchronously, in commit order, once per batch."""

    conversation_id: str

    def deliver(self, batch: Batch) -> None: ...


class Hub:
    def __init__(self, replay_cache_bytes: int = 64 * 1024 * 1024) -> None:
        self._subs: dict[str, set[Subscriber]] = {}
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

    def add(self, sub: Subscriber) -> None:
        self._subs.setdefault(sub.conversation_id, set()).add(sub)

    def remove(self, sub: Subscriber) -> None:
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
            sub.deliver(batch)
