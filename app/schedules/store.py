"""Schedules in SQLite: their own table and connection in the event store's database file.

Kept apart from the EventStore's batching writer on purpose: a schedule changes once per
firing, so one small autocommit statement each is plenty, and the event write path stays
untouched. WAL (set by the event store) lets both connections work side by side;
``busy_timeout`` covers the moments both want to write.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

import aiosqlite
import msgspec

from protocol.schedules import Schedule

SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    record BLOB NOT NULL
);
"""
_decoder = msgspec.json.Decoder(Schedule)
_encoder = msgspec.json.Encoder()


class Schedules(Protocol):
    """What the scheduler needs of a schedule store (this SQLite one, or PostgreSQL's in
    ``pg_store.py`` when nodes share a deployment)."""

    shared: bool

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def load(self) -> list[Schedule]: ...
    async def insert(self, schedule: Schedule) -> None: ...
    async def update(self, schedule: Schedule) -> None: ...
    async def delete(self, schedule_id: str) -> None: ...
    async def claim(self, schedule_id: str, due: int, next_due: int) -> bool: ...


class ScheduleStore:
    # One process per database file: nobody else fires these schedules.
    shared = False

    def __init__(self, path: str | Path, op_timeout: float = 10.0) -> None:
        self.path = str(path)
        self.op_timeout = op_timeout
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        async with asyncio.timeout(self.op_timeout):
            db = await aiosqlite.connect(self.path, isolation_level=None)
            try:
                await db.execute("PRAGMA busy_timeout=5000")
                await db.executescript(SCHEMA)
            except BaseException:
                await db.close()
                raise
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    @property
    def _conn(self) -> aiosqlite.Connection:
        assert self._db is not None, "schedule store is not open"
        return self._db

    async def load(self) -> list[Schedule]:
        async with asyncio.timeout(self.op_timeout), self._conn.execute(
            "SELECT record FROM schedules"
        ) as cur:
            rows = await cur.fetchall()
        return [_decoder.decode(row[0]) for row in rows]

    async def insert(self, schedule: Schedule) -> None:
        async with asyncio.timeout(self.op_timeout):
            await self._conn.execute("INSERT INTO schedules VALUES (?, ?)",
                                     (schedule.schedule_id, _encoder.encode(schedule)))

    async def update(self, schedule: Schedule) -> None:
        """Save a firing's outcome; a schedule deleted meanwhile stays deleted."""
        async with asyncio.timeout(self.op_timeout):
            await self._conn.execute("UPDATE schedules SET record = ? WHERE id = ?",
                                     (_encoder.encode(schedule), schedule.schedule_id))

    async def delete(self, schedule_id: str) -> None:
        async with asyncio.timeout(self.op_timeout):
            await self._conn.execute("DELETE FROM schedules WHERE id = ?", (schedule_id,))

    async def claim(self, schedule_id: str, due: int, next_due: int) -> bool:
        """A single process owns its file (the store's lock): every firing is its own."""
        return True
