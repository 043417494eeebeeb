"""Retention: delete finished conversations idle longer than the retention period.

Two phases, so a sweep can never race a run that starts in an idle conversation: read the
candidates from the store, fence the ones not in use (``Conversations.begin_expiry``: a
lookup of a fenced id waits), delete them in one writer transaction that re-checks idleness,
then lift the fences. Conversations a schedule still uses are protected: a schedule whose
interval is longer than the retention period keeps its conversation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from app.engine.engine import Engine

log = structlog.get_logger(__name__)
SWEEP_LIMIT = 1000


async def sweep(engine: Engine, cutoff: int, protected: set[str]) -> list[str]:
    """One pass; returns the ids deleted."""
    candidates = await engine.store.expirable(cutoff, SWEEP_LIMIT)
    fenced = engine.conversations.begin_expiry(candidates, protected)
    deleted: list[str] = []
    try:
        if fenced:
            deleted = await engine.store.expire_conversations(fenced, cutoff)
    finally:
        engine.conversations.end_expiry(fenced, deleted)
    return deleted


async def retention_loop(
    engine: Engine, retention: float, interval: float, protected: Callable[[], set[str]]
) -> None:
    """Sweep every ``interval`` seconds until cancelled; a failed pass is logged, not fatal."""
    while True:
        await asyncio.sleep(interval)
        try:
            cutoff = int((time.time() - retention) * 1000)
            deleted = await sweep(engine, cutoff, protected())
            if deleted:
                log.info("conversations_expired", count=len(deleted))
        except Exception:
            log.exception("retention_sweep_failed")
