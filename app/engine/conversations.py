"""Live conversation state: one seq counter per conversation, loaded once, bounded.

The cache is an LRU of ``Conversation`` objects. Loading is single-flight (concurrent
lookups of an unloaded id share one store read), so a conversation never has two counters.
Retention goes through ``begin_expiry``/``end_expiry``: an id being expired is fenced (a
lookup waits for the deletion to commit, then sees the truth), and an id in use (a run,
writes not yet committed, a load in flight, a protected schedule) is never offered for
deletion; a subscriber does not keep an idle conversation (it just sees no more events).
That closes the race in which a run started in an idle conversation while the sweep deleted
it, and the next start loaded a second counter (duplicate seq).

In a cluster only the owning node numbers (``peers``). Another node keeps a *follower*
entry: its seq is re-read from the store on every lookup, and it seeds the hub's published
mark only while nobody here subscribes (with a subscriber, the bus relay alone moves the
mark, so no live subscriber can be skipped past events it has not been given).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Iterable

from app.engine.peers import LocalPeers, Peers
from app.engine.state import Conversation
from app.fanout.hub import Hub
from app.store.base import EventStore


class Conversations:
    def __init__(
        self, store: EventStore, hub: Hub, *, max_in_memory: int, idle_seconds: float,
        peers: Peers | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.peers: Peers = peers if peers is not None else LocalPeers()
        self.max_in_memory = max_in_memory
        self.idle_seconds = idle_seconds
        self._live: OrderedDict[str, Conversation] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Conversation | None]] = {}
        self._expiring: dict[str, asyncio.Future[None]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def cached(self, conversation_id: str) -> Conversation | None:
        return self._live.get(conversation_id)

    async def get(self, conversation_id: str) -> Conversation | None:
        """The live state of a stored conversation, or None if it does not exist."""
        fence = self._expiring.get(conversation_id)
        if fence is not None:
            await asyncio.shield(fence)
        conv = self._live.get(conversation_id)
        if conv is not None and conv.follower:
            if self.peers.owns(conversation_id):
                self._live.pop(conversation_id, None)  # owned now: load a real counter
                conv = None
            else:
                await self._refresh(conv)
        if conv is not None:
            conv.used_at = time.monotonic()
            self._live.move_to_end(conversation_id)
            return conv
        pending = self._loading.get(conversation_id)
        if pending is not None:
            return await asyncio.shield(pending)
        return await self._load(conversation_id)

    async def _load(self, conversation_id: str) -> Conversation | None:
        fut: asyncio.Future[Conversation | None] = asyncio.get_running_loop().create_future()
        self._loading[conversation_id] = fut
        try:
            record = await self.store.get_conversation(conversation_id)
            conv = None
            if record is not None:
                seq = await self.store.last_seq(conversation_id)
                conv = Conversation(record, seq, follower=not self.peers.owns(conversation_id))
                self.add(conv)
                if conv.follower:
                    self._seed_follower(conversation_id, seq)
                else:
                    self.hub.note_committed(conversation_id, seq)
            fut.set_result(conv)
            return conv
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: other waiters get it through the shield
            raise
        finally:
            del self._loading[conversation_id]

    async def _refresh(self, conv: Conversation) -> None:
        cid = conv.record.conversation_id
        conv.seq = max(conv.seq, await self.store.last_seq(cid))
        self._seed_follower(cid, conv.seq)

    def _seed_follower(self, cid: str, seq: int) -> None:
        """Move a follower's published mark to the store's, while nobody here listens. The
        replay window goes too: it stopped where the bus stopped feeding it, and a window
        that does not reach the mark would make a catch-up skip the events in between."""
        if seq > self.hub.accepted_seq(cid) and not self.hub.has_subscribers(cid):
            self.hub.forget(cid)
            self.hub.note_committed(cid, seq)

    def add(self, conv: Conversation) -> None:
        """Keep live state, evicting idle conversations beyond the bound (oldest first)."""
        self._live[conv.record.conversation_id] = conv
        excess = len(self._live) - self.max_in_memory
        if excess <= 0:
            return
        now = time.monotonic()
        for cid, old in list(itertools.islice(self._live.items(), excess + 64)):
            if excess <= 0:
                break
            if old is not conv and self._idle(cid, old) and now - old.used_at >= self.idle_seconds:
                del self._live[cid]
                self.hub.forget(cid)
                excess -= 1

    def _idle(self, conversation_id: str, conv: Conversation) -> bool:
        """No run, no subscriber, every assigned seq committed (the store is the truth)."""
        if conv.follower:
            return not self.hub.has_subscribers(conversation_id)
        return (conv.active_runs == 0 and not self.hub.has_subscribers(conversation_id)
                and self.hub.published_seq(conversation_id) >= conv.seq)

    def mark_broken(self, conversation_id: str) -> Conversation | None:
        """The store rejected writes of this conversation: drop the counter (its later seqs
        were never stored) so the next lookup reloads the committed truth."""
        conv = self._live.pop(conversation_id, None)
        if conv is not None:
            conv.broken = True
        return conv

    # ---- retention ----------------------------------------------------------------------

    def begin_expiry(self, candidates: Iterable[str], protected: set[str]) -> list[str]:
        """Fence the candidates that may go; returns them. Synchronous, so nothing can start
        using one between this check and the fence."""
        chosen = []
        loop = asyncio.get_running_loop()
        for cid in candidates:
            if cid in protected or cid in self._loading or cid in self._expiring:
                continue
            conv = self._live.get(cid)
            if conv is not None and (
                conv.active_runs or self.hub.published_seq(cid) < conv.seq
            ):
                continue  # a run, or writes not yet committed: in use
            self._live.pop(cid, None)
            self._expiring[cid] = loop.create_future()
            chosen.append(cid)
        return chosen

    def deleted_elsewhere(self, conversation_id: str) -> None:
        """Cluster mode: the owning node deleted this conversation; drop the follower entry
        kept here (a later lookup reads the store: 410)."""
        conv = self._live.get(conversation_id)
        if conv is not None and conv.follower:
            self._live.pop(conversation_id, None)
            self.hub.forget(conversation_id)

    def end_expiry(self, fenced: list[str], deleted: list[str]) -> None:
        self.peers.forget(deleted)
        for cid in deleted:
            self.hub.forget(cid)
        for cid in fenced:
            fence = self._expiring.pop(cid, None)
            if fence is not None and not fence.done():
                fence.set_result(None)
