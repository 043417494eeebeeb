"""Ending runs a process did not end itself, deciding from what is committed.

``recover`` at startup (runs a previous process left open) and ``end_orphans`` in a cluster
(runs of conversations this node just took over from a dead node). Both trust the stored
events over the stored row: a committed ``done`` wins over a row that says "running"
(older files), and only a run without one gets ``done {interrupted}``, counted from its
stored events.
"""

from __future__ import annotations

from collections.abc import Container

import structlog

from app.engine.run_writes import RunWrites
from app.store.ops import PutRun
from app.store.records import RunRecord
from protocol.codec import EncodedEvent, decode_event
from protocol.events import Done
from protocol.messages import ErrorDetail

log = structlog.get_logger(__name__)


async def recover(writes: RunWrites) -> int:
    """End runs a previous process left open; returns how many it found."""
    store = writes.store
    records = await store.unfinished_runs()
    for record in records:
        count, done = await store.run_events(record)
        if done is not None:
            _catch_up_row(writes, record, count, done)
            continue
        if record.status == "queued" and count == 0:
            await writes.end_unstarted(record, "interrupted", ErrorDetail(
                "server_restarted", "the server stopped while this run was queued"))
            continue
        await writes.write_done_reloaded(record, "interrupted", ErrorDetail(
            "server_restarted", "the server stopped while this run was open"))
        log.info("run_interrupted", run_id=record.run_id, events=count + 1)
    await store.flush()
    return len(records)


async def end_orphans(writes: RunWrites, conversation_ids: set[str],
                      active: Container[str]) -> int:
    """End ``interrupted`` the open runs of conversations this node just took over from
    a dead node (their runs died with it); returns how many."""
    orphans = [r for r in await writes.store.unfinished_runs()
               if r.conversation_id in conversation_ids and r.run_id not in active]
    for record in orphans:
        await writes.write_done_reloaded(record, "interrupted", ErrorDetail(
            "node_lost", "the server running this run stopped; another one ended it"))
        log.info("run_interrupted_node_lost", run_id=record.run_id)
    await writes.store.flush()
    return len(orphans)


def _catch_up_row(writes: RunWrites, record: RunRecord, count: int,
                  done: EncodedEvent) -> None:
    """A committed ``done`` wins over a row that says the run is open (older files)."""
    event = decode_event(done.body)
    assert isinstance(event, Done)
    record.status = event.data.status
    record.events = count
    record.done_seq = done.seq
    record.ended_at = event.ts
    record.pending_input = None
    writes.store.enqueue(PutRun.of(record))
