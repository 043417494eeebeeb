"""``ClusterPeers``: the engine's ``Peers`` on PostgreSQL ownership rows and the bus.

``owned`` caches the conversations this node owns. The cache cannot go stale in the
dangerous direction: ownership only leaves a node when the node is declared dead, and a
dead node is fenced in the commit transaction (app/store/postgres.py) and exits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from app.bus.base import Bus, NodeUnreachable
from app.cluster import sql
from app.cluster.commands import decode_answer, encode_command
from app.cluster.lease import DB_ERRORS
from app.errors import Unavailable

log = structlog.get_logger(__name__)


class ClusterPeers:
    def __init__(self, pool: Any, bus: Bus, node_id: str, *, forward_timeout: float,
                 on_acquired: Callable[[list[str]], Awaitable[None]]) -> None:
        self.pool = pool
        self.bus = bus
        self.node_id = node_id
        self.forward_timeout = forward_timeout
        self.on_acquired = on_acquired
        self.owned: set[str] = set()
        # Conversations being adopted now: set before the first await, done when adopted.
        self._adopting: dict[str, asyncio.Future[None]] = {}

    def owns(self, conversation_id: str) -> bool:
        return conversation_id in self.owned

    async def acquire(self, conversation_id: str) -> str | None:
        # Concurrent acquisitions of one conversation wait for the adoption in progress
        # (claim, hub sync, orphans ended) instead of adopting it again: a second
        # ``end_orphans`` racing a run started after the first would end that run twice.
        while (pending := self._adopting.get(conversation_id)) is not None:
            await asyncio.shield(pending)
        if conversation_id in self.owned:
            return None
        fence = self._adopting[conversation_id] = asyncio.get_running_loop().create_future()
        try:
            try:
                mine = await self.pool.fetchval(sql.CLAIM, conversation_id, self.node_id)
                owner = mine or await self.pool.fetchval(sql.OWNER, conversation_id)
            except DB_ERRORS as exc:
                raise Unavailable("store_unavailable",
                                  f"PostgreSQL is unreachable: {type(exc).__name__}") from None
            if owner != self.node_id:
                return str(owner) if owner is not None else None
            await self._adopt([conversation_id])
            return None
        finally:
            del self._adopting[conversation_id]
            fence.set_result(None)

    async def adopt(self, conversation_ids: list[str]) -> None:
        """Conversations the reaper moved to this node (see ``_adopt``); those adopted
        already, or being adopted by an ``acquire``, are left to it."""
        loop = asyncio.get_running_loop()
        fresh = [c for c in dict.fromkeys(conversation_ids)
                 if c not in self.owned and c not in self._adopting]
        fences = {c: loop.create_future() for c in fresh}
        self._adopting.update(fences)
        try:
            if fresh:
                await self._adopt(fresh)
        finally:
            for cid, fence in fences.items():
                del self._adopting[cid]
                fence.set_result(None)

    async def _adopt(self, conversation_ids: list[str]) -> None:
        """Conversations that just became ours: bring the hub up to the store first (so
        the first event numbered here follows what subscribers already have), then own
        them, then end what the previous owner left open."""
        for cid in conversation_ids:
            await self.bus.sync(cid)
            self.owned.add(cid)
        await self.on_acquired(conversation_ids)

    def forget(self, conversation_ids: list[str]) -> None:
        """Retention deleted these (their ownership rows went with them)."""
        self.owned.difference_update(conversation_ids)

    async def owner_of(self, conversation_id: str) -> str | None:
        if conversation_id in self.owned:
            return self.node_id
        try:
            owner = await self.pool.fetchval(sql.LIVE_OWNER, conversation_id)
        except DB_ERRORS as exc:
            raise Unavailable("store_unavailable",
                              f"PostgreSQL is unreachable: {type(exc).__name__}") from None
        return str(owner) if owner is not None else None

    async def forward(self, node_id: str, op: str, args: dict[str, Any]) -> Any:
        try:
            raw = await self.bus.request(node_id, encode_command(op, args),
                                         self.forward_timeout)
        except NodeUnreachable as exc:
            log.warning("forward_failed", node_id=node_id, op=op, error=str(exc))
            raise Unavailable("node_unavailable", str(exc)) from None
        return decode_answer(raw)
