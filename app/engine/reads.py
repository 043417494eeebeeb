"""The read side of the engine: lists, pages and a run's assembled output.

Everything here reads committed rows and events through the store's interface; the API
reaches it only through ``Engine`` (which also owns lookups and their owner scoping), so
there is one way in for every read.
"""

from __future__ import annotations

from app.store.base import EventStore
from app.store.records import ConversationQuery, ConversationRecord, RunRecord
from protocol.codec import EncodedEvent, decode_event
from protocol.output import OutputBuilder, RunOutput

# A run's output is assembled from at most this many events (``output.truncated`` past it):
# a read must not hold a whole pathological run in memory.
MAX_OUTPUT_EVENTS = 200_000
OUTPUT_PAGE = 2_000


class Reads:
    def __init__(self, store: EventStore) -> None:
        self.store = store

    async def conversations(self, query: ConversationQuery) -> list[ConversationRecord]:
        return await self.store.list_conversations(query)

    async def runs(self, conversation_id: str, after_first_seq: int,
                   limit: int) -> list[RunRecord]:
        return await self.store.list_runs(conversation_id, after_first_seq, limit)

    async def events(self, conversation_id: str, after: int, limit: int,
                     run_id: str | None = None) -> list[EncodedEvent]:
        return await self.store.read_events(conversation_id, after, limit, run_id=run_id)

    async def output(self, record: RunRecord) -> RunOutput:
        """Feed the run's committed events, page by page, to the pure ``OutputBuilder``."""
        builder = OutputBuilder()
        after, seen = max(record.first_seq - 1, 0), 0
        while True:
            page = await self.store.read_events(record.conversation_id, after, OUTPUT_PAGE,
                                                run_id=record.run_id)
            for ev in page:
                builder.feed(decode_event(ev.body))
            seen += len(page)
            if len(page) < OUTPUT_PAGE or (page and page[-1].type == "done"):
                break
            if seen >= MAX_OUTPUT_EVENTS:
                builder.truncated = True
                break
            after = page[-1].seq
        return builder.output()
