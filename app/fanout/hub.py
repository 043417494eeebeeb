"""Fan-out hub: committed events go, as shared bytes, to every subscriber of their conversation.

The store's commit listener calls ``publish(events)`` after each committed batch; that is the
hub's one entry point. ``publish`` only queues the batch and returns, and the fan-out runs in
the next step of the event loop (``flush``). Why:

- **Commit and fan-out are decoupled.** The store's writer goes straight on to its next
  commit (on its own thread) while this batch is being written to sockets; it no longer waits
  for the previous batch's delivery. The queue is bounded in events (``max_pending``): past
  it, ``publish`` delivers at once, so a fan-out slower than the store pushes back on it.
- **One batch per conversation per flush.** Commits interleave many runs; grouping all the
  events of a flush by conversation (order kept inside each) makes a ``Batch`` per
  conversation, so a subscriber gets one write per flush instead of one per event.
- **Measured once per flush**: ``agentstream_fanout_seconds``, publish to fan-out done (the
  server's own share of publish -> receive; bench P2 reports it).
- **Marks move with delivery.** A conversation's published mark, the replay cache and the
  subscribers advance together, in one synchronous step per batch, so a catching-up sink that
  reads the mark and the cache sees them agree (see sinks/base.py ``read_page``).

The hub knows nothing of sinks or sockets: a subscriber is anything with a
``conversation_id`` and ``deliver(batch)``, so the arrows point one way (sinks -> fanout,
engine -> fanout).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from app import metrics
from app.fanout.batch import Batch
from app.fanout.replay_cache import ReplayCache
from protocol.codec import EncodedEvent

log = structlog.get_logger(__name__)

# A flush that cost more than this (seconds) spaces the next one by its own cost, capped
# below: see ``Hub.publish``.
COALESCE_AFTER = 0.001
COALESCE_MAX = 0.025

# Events a hub holds for its next flush before ``publish`` delivers them itself: below
# the sinks' default queue bound (10,000), so one flush's batch fits a busy sink's queue.
MAX_PENDING_EVENTS = 8_000

# Most events in one ``Batch``: a conversation's share of a flush is cut into batches of at
# most this many. Why: one commit can hold ``store_batch`` (20,000) events of a single run,
# and a sink never writes a batch over its own queue bound directly (a reader that stops
# would hold it whole in its transport buffer), so an uncut 20,000-event batch overflowed
# every subscriber of a fast run into catch-up paging (P1 on uvloop: 100 of 100 sinks).
# Cut, a reader that keeps up takes piece after piece directly, and a stalled one holds at
# most one piece beyond its bound.
MAX_BATCH_EVENTS = 4_096


class Subscriber(Protocol):
    """What the hub delivers to: called synchronously, in commit order, once per batch."""

    conversation_id: str

    def deliver(self, batch: Batch) -> None: ...


def by_conversation(chunks: list[list[EncodedEvent]]) -> list[list[EncodedEvent]]:
    """The events of consecutive commits, grouped per conversation in commit (so seq)
    order: one dict step per event, to save a write per event per subscriber."""
    groups: dict[str, list[EncodedEvent]] = {}
    for events in chunks:
        for event in events:
            group = groups.get(event.conversation_id)
            if group is None:
                groups[event.conversation_id] = [event]
            else:
                group.append(event)
    return list(groups.values())


class Hub:
    def __init__(
        self, replay_cache_bytes: int = 64 * 1024 * 1024, max_pending: int = MAX_PENDING_EVENTS
    ) -> None:
        self._subs: dict[str, set[Subscriber]] = {}
        self._published: dict[str, int] = {}
        self.on_published: Callable[[int], None] | None = None
        # Recent committed events, shared by catching-up sinks (see replay_cache.py).
        self.recent = ReplayCache(replay_cache_bytes)
        self.max_pending = max_pending
        self._pending: list[list[EncodedEvent]] = []
        self._pending_events = 0
        self._scheduled: asyncio.Handle | None = None
        self._first_publish = 0.0  # perf_counter() of the oldest pending publish
        self._last_cost = 0.0  # seconds the last flush took

    def published_seq(self, conversation_id: str) -> int:
        """Highest seq of the conversation already published (so already committed)."""
        return self._published.get(conversation_id, 0)

    def accepted_seq(self, conversation_id: str) -> int:
        """Highest seq of the conversation given to ``publish``, delivered or still queued
        for the next flush (``published_seq`` moves only when it is delivered): what a
        caller that publishes and then reads on (the cluster's gap guard) compares with.
        Found by scanning the bounded queue from its newest end, so ``publish`` (the hot
        path, one node or many) pays nothing for it."""
        for events in reversed(self._pending):
            for event in reversed(events):
                if event.conversation_id == conversation_id:
                    return max(event.seq, self._published.get(conversation_id, 0))
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

    def conversations(self) -> list[str]:
        """Conversations with at least one subscriber here (the cluster bus resyncs them)."""
        return list(self._subs)

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())

    @property
    def pending_events(self) -> int:
        """Committed events waiting for the next flush."""
        return self._pending_events

    def publish(self, events: list[EncodedEvent]) -> None:
        """Called by the store after a commit; events are in commit (so seq) order.

        Queues them for the next loop step and returns. Delivers at once when no loop is
        running (a script or test driving the hub by hand) or when the queue is full."""
        if not events:
            return
        if not self._pending:
            self._first_publish = time.perf_counter()
        self._pending.append(events)
        self._pending_events += len(events)
        if self._pending_events >= self.max_pending:
            self.flush()
            return
        if self._scheduled is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            # Decoupled commits come faster than a costly fan-out: flushing each at once
            # would send one or two events per write per subscriber (P2 produced 70/s of
            # 200). After a flush that cost more than COALESCE_AFTER, the next waits as long
            # as it cost (at most COALESCE_MAX), so what commits meanwhile goes out in the
            # same writes: the batching the old serial commit -> fan-out did implicitly.
            cost = self._last_cost
            self._scheduled = (loop.call_later(min(cost, COALESCE_MAX), self.flush)
                               if cost > COALESCE_AFTER else loop.call_soon(self.flush))

    def flush(self) -> None:
        """Deliver everything published so far: one ``Batch`` per conversation."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        chunks, n = self._pending, self._pending_events
        if not chunks:
            return
        self._pending, self._pending_events = [], 0
        started = time.perf_counter()
        for events in by_conversation(chunks):
            if len(events) <= MAX_BATCH_EVENTS:
                self._publish_batch(Batch(events[0].conversation_id, events))
                continue
            for start in range(0, len(events), MAX_BATCH_EVENTS):
                piece = events[start:start + MAX_BATCH_EVENTS]
                self._publish_batch(Batch(piece[0].conversation_id, piece))
        done = time.perf_counter()
        self._last_cost = done - started
        metrics.FANOUT_SECONDS.observe(done - self._first_publish)
        if self.on_published is not None:
            self.on_published(n)

    def _publish_batch(self, batch: Batch) -> None:
        cid = batch.conversation_id
        mark = self._published.get(cid, 0)
        if batch.events[0].seq <= mark:
            # The mark moved past a queued batch meanwhile (a follower seeded from the
            # store): never deliver a seq twice.
            fresh = [e for e in batch.events if e.seq > mark]
            if not fresh:
                return
            batch = Batch(cid, fresh)
        self._published[cid] = batch.last_seq
        self.recent.add(batch.events)
        subs = self._subs.get(batch.conversation_id)
        if not subs:
            return
        # A copy: a delivery may end a subscription (its run's done). One subscriber's bug
        # must not cost the others their batch (the writer guarded its listeners so).
        for sub in list(subs) if len(subs) > 1 else tuple(subs):
            try:
                sub.deliver(batch)
            except Exception:
                log.exception("fanout_failed", conversation_id=batch.conversation_id)
