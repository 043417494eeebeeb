"""Schedules in PostgreSQL, shared by every node of a cluster.

The same interface as the SQLite ``ScheduleStore`` plus two things a cluster needs:

- ``shared``: other nodes create and delete schedules too, so the scheduler reloads the
  table now and then instead of trusting its memory;
- ``claim``: a firing is claimed by moving the row's ``next_fire_at`` from the due time
  every node saw to the next one, in one ``UPDATE ... WHERE next_fire_at = <due>``. Exactly
  one node's update matches; the others learn that the due time was taken and skip it. So
  each due time fires once in the cluster, whichever nodes are up.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import msgspec

from protocol.schedules import Schedule

_decoder = msgspec.json.Decoder(Schedule)
_encoder = msgspec.json.Encoder()


class PoolSource(Protocol):
    async def create_pool(self, size: int) -> Any: ...


class PgScheduleStore:
    shared = True

    def __init__(self, source: PoolSource, op_timeout: float = 10.0) -> None:
        self.source = source
        self.op_timeout = op_timeout
        self._pool: Any = None

    async def open(self) -> None:
        """The table is made by the store's migrations (version 4); this opens a pool."""
        async with asyncio.timeout(self.op_timeout):
            self._pool = await self.source.create_pool(2)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            async with asyncio.timeout(self.op_timeout):
                await pool.close()

    async def load(self) -> list[Schedule]:
        async with asyncio.timeout(self.op_timeout):
            rows = await self._pool.fetch("SELECT record, next_fire_at FROM schedules")
        # the column is the truth for the next firing (claims move it, not the record)
        return [msgspec.structs.replace(_decoder.decode(bytes(r[0])), next_fire_at=r[1])
                for r in rows]

    async def insert(self, schedule: Schedule) -> None:
        async with asyncio.timeout(self.op_timeout):
            await self._pool.execute("INSERT INTO schedules VALUES ($1, $2, $3)",
                                     schedule.schedule_id, _encoder.encode(schedule),
                                     schedule.next_fire_at)

    async def update(self, schedule: Schedule) -> None:
        """Save a firing's outcome (counters, last run); the claim already moved the time."""
        async with asyncio.timeout(self.op_timeout):
            await self._pool.execute("UPDATE schedules SET record = $2 WHERE id = $1",
                                     schedule.schedule_id, _encoder.encode(schedule))

    async def delete(self, schedule_id: str) -> None:
        async with asyncio.timeout(self.op_timeout):
            await self._pool.execute("DELETE FROM schedules WHERE id = $1", schedule_id)

    async def claim(self, schedule_id: str, due: int, next_due: int) -> bool:
        """True if this node takes the firing due at ``due`` (and moved it to ``next_due``)."""
        async with asyncio.timeout(self.op_timeout):
            status: str = await self._pool.execute(
                "UPDATE schedules SET next_fire_at = $3 WHERE id = $1 AND next_fire_at = $2",
                schedule_id, due, next_due)
        return status == "UPDATE 1"
