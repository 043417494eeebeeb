"""In-memory EventStore: the same writer and semantics as SQLite, no disk.

For tests and throwaway local runs (``--db :memory:``). Runs and conversations are kept as
the encoded snapshots the writer was given, so a read never aliases the engine's live state.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import msgspec

from app.ids import scoped
from app.store.base import EventStore
from app.store.ops import (
    AppendEvent,
    ExpireConversations,
    Op,
    PutConversation,
    PutIdempotency,
    PutOutbox,
    PutRun,
    UpdateOutbox,
    UseAnswerToken,
)
from app.store.records import (
    UNFINISHED,
    AnswerToken,
    ConversationQuery,
    ConversationRecord,
    IdempotencyRecord,
    OutboxEntry,
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
        self._keys: dict[tuple[str, str], IdempotencyRecord] = {}
        self._outbox: dict[str, OutboxEntry] = {}
        self._tokens: dict[str, AnswerToken] = {}

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
            elif type(op) is PutIdempotency and (op.record.scope, op.record.key) in self._keys:
                raise ValueError(f"idempotency key {op.record.key!r} is taken")
        for op in ops:
            if type(op) is AppendEvent:
                self._events.setdefault(op.event.conversation_id, []).append(op.event)
            elif isinstance(op, PutRun):
                self._runs[op.run_id] = op
            elif isinstance(op, PutConversation):
                self._conversations[op.conversation_id] = op
            elif isinstance(op, PutIdempotency):
                self._keys[(op.record.scope, op.record.key)] = op.record
            elif isinstance(op, PutOutbox):
                self._outbox.setdefault(op.entry.delivery_id, op.entry)
                if op.token is not None:
                    self._tokens[op.token.token_hash] = op.token
            elif isinstance(op, UpdateOutbox):
                entry = self._outbox.get(op.delivery_id)
                if entry is not None:
                    self._outbox[op.delivery_id] = msgspec.structs.replace(
                        entry, status=op.status, attempts=op.attempts, next_at=op.next_at,
                        last_error=op.last_error)
            elif isinstance(op, UseAnswerToken):
                op.used = self._tokens.pop(op.token_hash, None) is not None
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
            owner = self._conversations.pop(cid).owner
            self._events.pop(cid, None)
            for rid in [r.run_id for r in self._runs.values() if r.conversation_id == cid]:
                del self._runs[rid]
                self._expired.add(scoped(owner, rid))  # see SqliteStore._expire
            for k in [k for k, v in self._keys.items() if v.conversation_id == cid]:
                del self._keys[k]
            for d in [d for d, e in self._outbox.items() if e.conversation_id == cid]:
                del self._outbox[d]
            for t in [t for t, v in self._tokens.items() if v.conversation_id == cid]:
                del self._tokens[t]
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

    async def list_conversations(self, query: ConversationQuery) -> list[ConversationRecord]:
        rows = sorted((decode_conversation(c.body) for c in self._conversations.values()),
                      key=lambda c: (c.created_at, c.conversation_id), reverse=True)
        out: list[ConversationRecord] = []
        for conv in rows:
            if len(out) >= query.limit:
                break
            if query.owner is not None and conv.owner != query.owner:
                continue
            if query.before is not None and (conv.created_at, conv.conversation_id) >= \
                    query.before:
                continue
            if self._matches(conv.conversation_id, query):
                out.append(conv)
        return out

    def _matches(self, conversation_id: str, query: ConversationQuery) -> bool:
        runs = sorted((decode_run(r.body) for r in self._runs.values()
                       if r.conversation_id == conversation_id), key=lambda r: r.first_seq)
        if query.status is not None and (not runs or runs[-1].status != query.status):
            return False
        if query.agent is None and not query.metadata:
            return True
        return any((query.agent is None or r.agent == query.agent)
                   and all(_text((r.metadata or {}).get(k)) == v
                           for k, v in query.metadata.items())
                   for r in runs)

    async def list_runs(
        self, conversation_id: str, after_first_seq: int, limit: int
    ) -> list[RunRecord]:
        runs = sorted((decode_run(r.body) for r in self._runs.values()
                       if r.conversation_id == conversation_id), key=lambda r: r.first_seq)
        return [r for r in runs if r.first_seq > after_first_seq][:limit]

    async def get_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None:
        return self._keys.get((scope, key))

    async def due_outbox(self, now: int, limit: int) -> list[OutboxEntry]:
        due = [e for e in self._outbox.values() if e.status == "pending" and e.next_at <= now]
        return sorted(due, key=lambda e: (e.next_at, e.delivery_id))[:limit]

    async def get_outbox(self, delivery_id: str) -> OutboxEntry | None:
        return self._outbox.get(delivery_id)

    async def get_answer_token(self, token_hash: str) -> AnswerToken | None:
        return self._tokens.get(token_hash)


def _text(value: object) -> str | None:
    """A metadata scalar as its JSON text, as PostgreSQL's ``->>`` and the SQLite store's
    filter give it (``true``, ``false``, numbers as written)."""
    if value is None or isinstance(value, dict | list):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
