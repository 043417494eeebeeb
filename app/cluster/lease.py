"""This node's lease, and the reaper that ends other nodes' leases.

The lease is a row in ``nodes`` whose ``expires_at`` (database clock, so node clocks never
matter) the heartbeat pushes ``lease`` seconds ahead every ``lease / 3``. Every node also
reaps every ``reap_interval``: a node whose lease ran out is declared dead and its
conversations move to the reaper in the same statement (sql.REAP), then ``on_taken`` ends
their open runs. A heartbeat that finds its own row declared dead means this node was
fenced (it paused or lost the database for longer than its lease): ``on_fenced`` fires once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from app.cluster import sql

log = structlog.get_logger(__name__)
DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class NodeLease:
    def __init__(self, pool: Any, node_id: str, lease: float, *,
                 on_taken: Callable[[list[str]], Awaitable[None]],
                 on_fenced: Callable[[], None]) -> None:
        self.pool = pool
        self.node_id = node_id
        self.lease = lease
        self.reap_interval = min(0.5, lease / 4)
        self.on_taken = on_taken
        self.on_fenced = on_fenced
        self.fenced = False
        self.renewed = True  # the last heartbeat reached the database

    async def register(self) -> None:
        await self.pool.execute(sql.REGISTER, self.node_id, self.lease)
        log.info("node_registered", node_id=self.node_id, lease_seconds=self.lease)

    async def run(self) -> None:
        """Heartbeat and reaper, until cancelled (owned by the cluster's TaskGroup)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._heartbeat_loop(), name="node-heartbeat")
            tg.create_task(self._reap_loop(), name="node-reaper")

    async def _heartbeat_loop(self) -> None:
        while not self.fenced:
            await asyncio.sleep(self.lease / 3)
            try:
                async with asyncio.timeout(self.lease / 3):
                    row = await self.pool.fetchval(sql.HEARTBEAT, self.node_id, self.lease)
            except DB_ERRORS as exc:
                self.renewed = False
                log.warning("node_heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            self.renewed = True
            if row is None:
                self.fenced = True
                log.critical("node_fenced", node_id=self.node_id,
                             hint="its lease was taken; it stops writing and exits")
                self.on_fenced()

    async def _reap_loop(self) -> None:
        while not self.fenced:
            await asyncio.sleep(self.reap_interval)
            try:
                await self.reap_once()
            except DB_ERRORS as exc:
                log.warning("node_reap_failed", error=f"{type(exc).__name__}: {exc}")

    async def reap_once(self) -> list[str]:
        async with asyncio.timeout(max(1.0, self.lease / 3)):
            rows = await self.pool.fetch(sql.REAP, self.node_id)
        taken = [r[0] for r in rows]
        if taken:
            log.warning("node_conversations_taken_over", conversations=len(taken))
            await self.on_taken(taken)
        return taken

    async def leave(self) -> None:
        """A clean stop: give back every conversation and mark this node gone."""
        async with asyncio.timeout(3), self.pool.acquire() as conn, conn.transaction():
            await conn.execute(sql.RELEASE, self.node_id)
            await conn.execute(sql.LEAVE, self.node_id)
            await conn.execute(sql.FORGET_OLD_NODES)
