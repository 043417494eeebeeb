"""The gap guard between the bus and the local hub: the hub only ever sees contiguous seqs.

Bus messages are doorbells: they can be lost (a Redis restart, a reconnect, a dropped
publish), duplicated by a resync, or arrive after this node already read further from the
store. The relay compares every batch with the hub's published mark for its conversation:

- events at or below the mark are dropped (duplicates);
- a batch that starts right after the mark is published at once (the common case, in the
  same synchronous step, so local commits reach local subscribers exactly as before);
- a batch that starts further on (a gap) is held, and the missing events are read from the
  store (the truth) and published first, in order; held events then follow.

A conversation with no local subscriber needs no gap filling: its remote batches are
dropped (nobody here is listening) and its local batches are published as they come (the
hub starts a fresh replay window; a later subscriber catches up from the store).

Held events are bounded in bytes: past the bound they are dropped and the fill simply reads
further from the store (they are committed there). A fill that cannot read (the store is
down) retries with backoff while anyone is subscribed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import structlog

from app.fanout.hub import Hub
from protocol.codec import EncodedEvent

log = structlog.get_logger(__name__)
ReadEvents = Callable[[str, int, int], Awaitable[list[EncodedEvent]]]
FILL_BACKOFF_MAX = 2.0


def split(events: list[EncodedEvent]) -> Iterator[list[EncodedEvent]]:
    """Runs of one conversation with consecutive seqs (a committed batch is grouped this
    way; merged bus messages may have a hole where one was lost)."""
    start, n = 0, len(events)
    while start < n:
        cid = events[start].conversation_id
        end = start + 1
        while (end < n and events[end].conversation_id == cid
               and events[end].seq == events[end - 1].seq + 1):
            end += 1
        yield events[start:end]
        start = end


class Relay:
    def __init__(self, hub: Hub, read: ReadEvents, *, page: int = 1000,
                 hold_bytes: int = 8 * 1024 * 1024) -> None:
        self.hub = hub
        self.read = read
        self.page = page
        self.hold_bytes = hold_bytes
        self._held: dict[str, list[EncodedEvent]] = {}
        self._held_bytes = 0
        self._fills: dict[str, asyncio.Task[None]] = {}
        self.fills = 0  # gap fills started (a metric, and what tests look at)

    # ---- entry points ---------------------------------------------------------------------

    def local(self, events: list[EncodedEvent]) -> None:
        """This node's committed events (the store's commit listener)."""
        for part in split(events):
            self._offer(part, local=True)

    def remote(self, events: list[EncodedEvent]) -> None:
        """Another node's committed events, from the bus."""
        for part in split(events):
            self._offer(part, local=False)

    def behind(self, conversation_id: str, last_seq: int) -> None:
        """The store says the conversation reached ``last_seq`` (a resync): fill if needed."""
        if (last_seq > self.hub.accepted_seq(conversation_id)
                and self.hub.has_subscribers(conversation_id)):
            self._start_fill(conversation_id)

    async def sync(self, conversation_id: str) -> None:
        """Publish everything the store holds for the conversation (before this node starts
        numbering into it: the hub's mark must be the store's)."""
        task = self._fills.get(conversation_id) or self._start_fill(conversation_id, force=True)
        await asyncio.shield(task)

    async def close(self) -> None:
        tasks = list(self._fills.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- the guard ------------------------------------------------------------------------

    def _offer(self, events: list[EncodedEvent], *, local: bool) -> None:
        cid = events[0].conversation_id
        if cid in self._fills:
            self._hold(cid, events)
            return
        mark = self.hub.accepted_seq(cid)
        if events[-1].seq <= mark:
            return  # all had already
        if events[0].seq <= mark:
            events = [e for e in events if e.seq > mark]
        if events[0].seq == mark + 1 or not self.hub.has_subscribers(cid):
            if local or self.hub.has_subscribers(cid):
                self.hub.publish(events)
            return
        self._hold(cid, events)
        self._start_fill(cid)

    def _hold(self, cid: str, events: list[EncodedEvent]) -> None:
        size = sum(len(e.body) for e in events)
        if self._held_bytes + size > self.hold_bytes:
            return  # committed, so the fill reads them from the store instead
        self._held.setdefault(cid, []).extend(events)
        self._held_bytes += size

    def _start_fill(self, cid: str, force: bool = False) -> asyncio.Task[None]:
        task = self._fills.get(cid)
        if task is None:
            self.fills += 1
            task = asyncio.create_task(self._fill(cid, force), name=f"relay-fill:{cid}")
            self._fills[cid] = task
        return task

    async def _fill(self, cid: str, force: bool) -> None:
        """Read what the hub missed from the store, publish it, then what was held.
        Owned by ``self._fills`` (cancelled in ``close``)."""
        backoff = 0.05
        try:
            while force or self.hub.has_subscribers(cid):
                try:
                    page = await self.read(cid, self.hub.accepted_seq(cid), self.page)
                except Exception as exc:
                    log.warning("relay_fill_failed", conversation_id=cid, error=str(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, FILL_BACKOFF_MAX)
                    continue
                if page:
                    self.hub.publish(page)
                    continue
                if self._drain_held(cid):
                    return
                await asyncio.sleep(backoff)  # a hole not readable yet: do not spin
                backoff = min(backoff * 2, FILL_BACKOFF_MAX)
        finally:
            self._release(cid)
            self._fills.pop(cid, None)

    def _drain_held(self, cid: str) -> bool:
        """Publish the held events that now follow the mark without a hole; True when none
        is left over (else the rest stays held and the store is read again)."""
        mark = self.hub.accepted_seq(cid)
        by_seq = {e.seq: e for e in self._release(cid) if e.seq > mark}
        run: list[EncodedEvent] = []
        while (nxt := by_seq.pop(mark + 1 + len(run), None)) is not None:
            run.append(nxt)
        if run:
            self.hub.publish(run)
        if not by_seq:
            return True
        self._hold(cid, [by_seq[s] for s in sorted(by_seq)])
        return False

    def _release(self, cid: str) -> list[EncodedEvent]:
        held = self._held.pop(cid, [])
        self._held_bytes -= sum(len(e.body) for e in held)
        return held
