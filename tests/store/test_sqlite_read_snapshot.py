"""Regression: concurrent catch-up reads on the SQLite reader must each see every commit
published before they started.

Bug (found by ``scripts/bench.py`` P6, 500 concurrent run streams): ``read_events`` ran its
SELECT and its ``fetchall`` as two hops to aiosqlite's thread. Another read queued between
the two joined the first one's still-open read transaction, so it saw an older snapshot than
the ``published`` seq its sink had sampled; the sink then marked the unseen events as read
and its stream had gaps. Fix: every read is one hop (``execute_fetchall``), so no statement
stays open across hops and each read starts its own snapshot.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.store.ops import AppendEvent
from app.store.sqlite import SqliteEventStore
from protocol.codec import EncodedEvent
from protocol.events import MessageChunk, MessageChunkData


def event(cid: str, seq: int) -> EncodedEvent:
    return EncodedEvent.from_event(MessageChunk(
        seq=seq, conversation_id=cid, run_id="r_1", agent="demo", ts=0, item_id="m_1",
        data=MessageChunkData(delta="x"),
    ))


async def test_read_after_commit_sees_it_while_other_reads_are_in_flight(tmp_path: Path) -> None:
    store = SqliteEventStore(tmp_path / "s.db")
    await store.open()
    try:
        for seq in range(1, 3001):
            store.enqueue(AppendEvent(event("big", seq), 0))
        await store.flush()
        stale: list[tuple[int, int]] = []

        async def reader() -> None:
            # Keeps the reader connection busy with large reads (their statements open).
            for _ in range(40):
                await store.read_events("big", 0, 3000)

        async def writer_then_read(cid: str) -> None:
            for seq in range(1, 41):
                store.enqueue(AppendEvent(event(cid, seq), 0))
                await store.flush()
                rows = await store.read_events(cid, seq - 1, 10)
                if not rows or rows[-1].seq != seq:
                    stale.append((seq, rows[-1].seq if rows else 0))

        await asyncio.gather(*(reader() for _ in range(4)),
                             *(writer_then_read(f"c{i}") for i in range(8)))
        assert not stale, f"reads missed committed events: {stale[:5]}"
    finally:
        await store.close()
