"""Leases and the reaper on a real PostgreSQL, with no server around them: a node frozen in
the middle of a commit cannot block its own takeover, and each dead node is reaped once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from app.cluster.lease import NodeLease
from app.store.postgres import PostgresEventStore
from tests.services import PG_DSN, pg_schema


@pytest.fixture
async def store() -> AsyncIterator[PostgresEventStore]:
    async with pg_schema() as schema:
        s = PostgresEventStore(PG_DSN, schema=schema)
        s.idle_tx_timeout = 0.5
        await s.open()
        yield s
        await s.close()


def lease_of(pool: Any, node: str, taken: list[list[str]]) -> NodeLease:
    async def on_taken(cids: list[str]) -> None:
        taken.append(cids)

    return NodeLease(pool, node, 1.0, on_taken=on_taken, on_fenced=lambda: None)


async def test_a_node_frozen_inside_a_commit_is_still_taken_over(
    store: PostgresEventStore,
) -> None:
    pool = await store.create_pool(2)
    taken: list[list[str]] = []
    zombie, reaper = lease_of(pool, "n_zombie", []), lease_of(pool, "n_reaper", taken)
    await zombie.register()
    await reaper.register()
    await pool.execute("INSERT INTO conversation_owners VALUES ('c1', 'n_zombie')")
    frozen = await store.connect()  # the zombie's writer, stopped between statements
    tx = frozen.transaction()
    await tx.start()
    await frozen.fetch("SELECT * FROM conversation_owners WHERE conversation_id = 'c1' "
                       "FOR SHARE")
    await asyncio.sleep(1.1)  # the zombie's lease runs out
    await pool.execute("UPDATE nodes SET expires_at = now() + interval '1 hour' "
                       "WHERE node_id = 'n_reaper'")
    got: list[str] = []
    for _ in range(20):  # the reaper's loop: it may time out while the lock is held
        try:
            got = await reaper.reap_once()
        except TimeoutError:
            continue
        if got:
            break
    assert got == ["c1"] and taken == [["c1"]]
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await frozen.execute("SELECT 1")  # PostgreSQL ended the frozen transaction
    await frozen.close()
    assert await pool.fetchval("SELECT dead FROM nodes WHERE node_id='n_zombie'") is True
    # Reaped once: a second reaper finds nothing left to take.
    other = lease_of(pool, "n_other", [])
    await other.register()
    assert await other.reap_once() == []
    await pool.close()


async def test_a_reaper_whose_own_lease_ran_out_takes_nothing(
    store: PostgresEventStore,
) -> None:
    pool = await store.create_pool(2)
    a, b = lease_of(pool, "n_a", []), lease_of(pool, "n_b", [])
    await a.register()
    await b.register()
    await pool.execute("INSERT INTO conversation_owners VALUES ('c', 'n_a')")
    await asyncio.sleep(1.1)  # both expired: b must not act as a survivor
    assert await b.reap_once() == []
    assert await pool.fetchval("SELECT node_id FROM conversation_owners") == "n_a"
    await pool.close()
