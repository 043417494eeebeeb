"""``DELETE /v1/conversations/{id}``: end the conversation's open runs, then delete it the
way retention does (fence, delete in one transaction that re-checks idleness, lift the fence),
so a later lookup answers ``410 conversation_expired`` exactly as after a sweep.

The race with a start: a run started between the cancels and the fence keeps the
conversation in use, so ``begin_expiry`` declines it; we then cancel again (bounded number of
rounds) and finally answer ``409 conversation_busy`` rather than delete under a live run.
"""

from __future__ import annotations

import asyncio

import structlog

from app.engine.conversations import Conversations
from app.engine.lifecycle import RunLifecycle
from app.errors import Conflict, Unavailable
from app.store.base import EventStore

log = structlog.get_logger(__name__)
ROUNDS = 3
# Far past any updated_at: "idle since before the cutoff" holds for every conversation.
NO_CUTOFF = 1 << 62


async def delete_conversation(
    store: EventStore, conversations: Conversations, runs: RunLifecycle,
    conversation_id: str, grace: float,
) -> list[str]:
    """Delete the conversation; returns the runs it cancelled first."""
    cancelled: list[str] = []
    for _ in range(ROUNDS):
        cancelled += await _end_runs(store, runs, conversation_id, grace)
        fenced = conversations.begin_expiry([conversation_id], protected=set())
        if fenced:
            break
    else:
        raise Conflict("conversation_busy",
                       f"conversation {conversation_id!r} kept starting runs; try again")
    deleted: list[str] = []
    try:
        deleted = await store.expire_conversations(fenced, NO_CUTOFF)
    finally:
        conversations.end_expiry(fenced, deleted)
    if not deleted:
        raise Conflict("conversation_busy", f"conversation {conversation_id!r} is in use")
    log.info("conversation_deleted", conversation_id=conversation_id, cancelled=cancelled)
    return cancelled


async def _end_runs(store: EventStore, runs: RunLifecycle, conversation_id: str,
                    grace: float) -> list[str]:
    """Cancel the open runs (and queued starts) of the conversation; wait for their ``done``
    to commit, within ``grace``."""
    active = [r for r in runs.active.values() if r.record.conversation_id == conversation_id]
    for run in active:
        runs.request_cancel(run.run_id, "conversation_deleted")
    tasks = [r.task for r in active if r.task is not None]
    try:
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        await store.flush(grace)
    except TimeoutError:
        raise Unavailable("store_unavailable", "the store did not commit in time") from None
    return [r.run_id for r in active]
