"""``ClusterNode``: one process's membership of a cluster, wired and run in one place.

Built synchronously with the app (the engine needs its bus and peers at construction),
started after the store opened, closed after the store flushed its last writes:

    start:  pool -> register the lease -> bus (subscribe, resync) -> heartbeat + reaper
    close:  heartbeat + reaper stop -> give back conversations, leave -> bus -> pool
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from typing import Any

import structlog

from app.bus.redis import RedisBus
from app.bus.relay import Relay
from app.cluster.commands import execute
from app.cluster.lease import NodeLease
from app.cluster.peers import ClusterPeers
from app.engine.engine import Engine
from app.fanout.hub import Hub
from app.store.postgres import PostgresEventStore

log = structlog.get_logger(__name__)


class ClusterNode:
    def __init__(self, store: PostgresEventStore, hub: Hub, bus_url: str, *,
                 lease: float, forward_timeout: float, prefix: str = "agentstream") -> None:
        self.node_id = "n_" + secrets.token_hex(6)
        self.store = store
        store.fence_node = self.node_id
        store.idle_tx_timeout = lease / 2
        self.lease_seconds = lease
        self.bus = RedisBus(bus_url, self.node_id, Relay(hub, store.read_events),
                            store.last_seqs, hub.conversations, prefix=prefix)
        self.peers = ClusterPeers(None, self.bus, self.node_id,
                                  forward_timeout=forward_timeout, on_acquired=self._acquired)
        self.engine: Engine | None = None
        self.lease: NodeLease | None = None
        self._pool: Any = None
        self._task: asyncio.Task[None] | None = None

    def attach(self, engine: Engine) -> None:
        self.engine = engine
        self.bus.on_request = lambda raw: execute(engine, raw)

    @property
    def healthy(self) -> bool:
        return (self.bus.healthy and self.lease is not None and self.lease.renewed
                and not self.lease.fenced)

    async def start(self) -> None:
        self._pool = await self.store.create_pool(2)
        self.peers.pool = self._pool
        self.lease = NodeLease(self._pool, self.node_id, self.lease_seconds,
                               on_taken=self.peers.adopt, on_fenced=self._fenced)
        await self.lease.register()
        await self.bus.start()
        self._task = asyncio.create_task(self.lease.run(), name="node-lease")
        log.info("cluster_node_started", node_id=self.node_id)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.lease is not None and not self.lease.fenced:
            try:
                await self.lease.leave()
            except Exception as exc:  # the lease then runs out and a survivor reaps us
                log.warning("node_leave_failed", error=f"{type(exc).__name__}: {exc}")
        await self.bus.close()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await self._pool.close()

    async def _acquired(self, conversation_ids: list[str]) -> None:
        """New conversations of ours: end the runs their previous owner left open."""
        assert self.engine is not None
        try:
            await self.engine.runs.end_orphans(set(conversation_ids))
        except Exception as exc:  # retried by the next acquisition or restart recovery
            log.error("orphan_runs_not_ended", error=f"{type(exc).__name__}: {exc}")

    def _fenced(self) -> None:
        """Another node owns our conversations now: stop taking work and exit (a
        supervisor restarts us as a new node). Our late writes are refused anyway."""
        if self.engine is not None:
            self.engine.runs.accepting = False
        os.kill(os.getpid(), signal.SIGTERM)
