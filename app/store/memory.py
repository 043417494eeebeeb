"""In-memory EventStore: the same batching writer and semantics as SQLite, no disk.

For unit tests and for throwaway local runs (``--db :memory:`` uses SQLite's own memory
database instead; this twin exists so engine tests need no file at all).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from app.store.base import (
    UNFINISHED,
    AppendEvent,
    ConversationRecord,
    EventStore,
    ExpireConversations,
    Op,
    PutConversation,
    PutRun,
    RunRecord,
)
from protocol.codec import EncodedEvent


class MemoryEventStore(EventStore):
    async def _open(self) -> None:
        self._events: dict[str, list[EncodedEvent]] = {}
        self._runs: dict[str, RunRecord] = {}
        self._conversations: dict[str, ConversationRecord] = {}
        self._expired: set[str] = set()

    async def _close(self) -> None:
        pass

    async def _write_batch(self, ops: Sequence[Op]) -> None:
        for op in ops:
            if isinstance(op, AppendEvent):
                log = self._events.setdefault(op.event.conversation_id, [])
                if log and log[-1].seq >= op.event.seq:
                    raise ValueError(f"duplicate seq {op.event!r}")
                log.append(op.event)
            elif isinstance(op, PutRun):
                self._runs[op.run.run_id] = op.run
            elif isinstance(op, PutConversation):
                self._conversations[op.conversation.conversation_id] = op.conversation
            elif isinstance(op, ExpireConversations):
                busy = {r.conversation_id for r in self._runs.values() if r.status in UNFINISHED}
                op.deleted = [
                    cid
                    for cid, c in self._conversations.items()
                    if c.updated_at < op.cutoff and cid not in busy
                ]
                for cid in op.deleted:
                    self._expired.add(cid)
                    self._conversations.pop(cid, None)
                    self._events.pop(cid, None)
                    for rid in [r.run_id for r in self._runs.values() if r.conversation_id == cid]:
                        del self._runs[rid]
                        self._expired.add(rid)

    async def read_events(
        self,
        conversation_id: str,
        after: int,
        limit: int,
        run_id: str | None = None,
        until: int | None = None,
    ) -> list[EncodedEvent]:
        log = self._events.get(conversation_id, [])
        start = bisect.bisect_right([e.seq for e in log], after)
        out: list[EncodedEvent] = []
        for ev in log[start:]:
            if until is not None and ev.seq > until:
                break
            if run_id is None or ev.run_id == run_id:
                out.append(ev)
                if len(out) >= limit:
                    break
        return out

    async def last_seq(self, conversation_id: str) -> int:
        log = self._events.get(conversation_id)
        return log[-1].seq if log else 0

    async def get_run(self, run_id: str) -> RunRecord | None:
        return self._runs.get(run_id)

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        return self._conversations.get(conversation_id)

    async def unfinished_runs(self) -> list[RunRecord]:
        return [r for r in self._runs.values() if r.status in UNFINISHED]

    async def count_run_events(self, run: RunRecord) -> int:
        log = self._events.get(run.conversation_id, [])
        return sum(1 for e in log if e.run_id == run.run_id)

    async def is_expired(self, ident: str) -> bool:
        return ident in self._expired
