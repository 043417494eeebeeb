"""In-memory EventStore: the same writer and semantics as SQLite, no disk.

For tests and throwaway local runs (``--db :memory:``). Runs and conversations are kept as
the encoded snapshots the writer was given, so a read never aliases the engine's live state.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from app.store.base import EventStore
from app.store.ops import AppendEvent, ExpireConversations, Op, PutConversation, PutRun
from app.store.records import (
    UNFINISHED,
    ConversationRecord,
    RunRecord,
    decode_conversation,
    decode_run,
)
from protocol.codec import EncodedEvent


class MemoryEventStore(EventStore):
    path = ":memory:"

    async def _open(self) -> None:
        self._events: dict[str, list[EncodedEvent]] = {}
        self._runs: dict[str, PutRun] = {}
        self._conversations: dict[str, PutConversation] = {}
        self._expired: set[str] = set()

    async def _close(self) -> None:
        pass

    async def _apply(self, ops: Sequence[Op]) -> None:
        """All or nothing, like a transaction: check everything, then apply."""
        tails: dict[str, int] = {}
        for op in ops:
            if type(op) is AppendEvent:
                ev = op.event
                self.writer.faults.check_event(ev.body)
                log = self._events.get(ev.conversation_id)
                last = tails.get(ev.conversation_id, log[-1].seq if log else 0)
                if ev.seq <= last:
                    raise ValueError(f"duplicate seq {ev!r}")
                tails[ev.conversation_id] = ev.seq
        for op in ops:
            if type(op) is AppendEvent:
                self._events.setdefault(op.event.conversation_id, []).append(op.event)
            elif isinstance(op, PutRun):
                self._runs[op.run_id] = op
            elif isinstance(op, PutConversation):
                self._conversations[op.conversation_id] = op
            elif isinstance(op, ExpireConversations):
                op.deleted = self._expire(op.ids, op.cutoff)

    def _busy(self) -> set[str]:
        return {r.conversation_id for r in self._runs.values() if r.status in UNFINISHED}

    def _expire(self, ids: list[str], cutoff: int) -> list[str]:
        busy = self._busy()
        deleted = [cid for cid in ids if cid in self._conversations
                   and self._conversations[cid].updated_at < cutoff and cid not in busy]
        for cid in deleted:
            self._expired.add(cid)
            del self._conversations[cid]
            self._events.pop(cid, None)
            for rid in [r.run_id for r in self._runs.values() if r.conversation_id == cid]:
                del self._runs[rid]
                self._expired.add(rid)
        return deleted

    async def read_events(
        self,
        conversation_id: str,
        after: int,
        limit: int,
        run_id: str | None = None,
        until: int | None = None,
    ) -> list[EncodedEvent]:
        log = self._events.get(conversation_id, [])
        start = bisect.bisect_right(log, after, key=lambda e: e.seq)
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
        op = self._runs.get(run_id)
        return decode_run(op.body) if op is not None else None

    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None:
        op = self._conversations.get(conversation_id)
        return decode_conversation(op.body) if op is not None else None

    async def unfinished_runs(self) -> list[RunRecord]:
        return [decode_run(r.body) for r in self._runs.values() if r.status in UNFINISHED]

    async def run_events(self, run: RunRecord) -> tuple[int, EncodedEvent | None]:
        mine = [e for e in self._events.get(run.conversation_id, []) if e.run_id == run.run_id]
        done = next((e for e in reversed(mine) if e.type == "done"), None)
        return len(mine), done

    async def expirable(self, cutoff: int, limit: int) -> list[str]:
        busy = self._busy()
        return [cid for cid, c in self._conversations.items()
                if c.updated_at < cutoff and cid not in busy][:limit]

    async def is_expired(self, ident: str) -> bool:
        return ident in self._expired
