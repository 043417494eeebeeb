"""The one writer every store shares: ordered units, committed in batches, then published.

Writes are queued in memory and committed by one task: one transaction per tick or per
``batch_max`` units, never one statement per event. Only after a batch commits are its
events handed to the commit listeners (the hub), so no client ever sees an event a crash
could take back, and a ``seq`` is never reused.

Failures are sorted, not retried blindly:

- *transient* (the disk is full, read-only, failing I/O, a lock): the batch stays queued and
  is retried with capped exponential backoff; the store reports itself unavailable, and once
  it has failed for ``fail_timeout`` seconds ``on_stalled`` fires once so the engine can end
  the open runs (their ``done`` commits when the disk comes back, or recovery writes it).
- *permanent* (the database refuses the data): the batch is split into its units and each is
  committed alone; a unit that fails is rejected, with every later queued unit of the same
  conversation (so no ``seq`` gap can ever be committed), and ``on_rejected`` tells the engine
  which conversations lost writes. Everyone else's writes go on.

The queue is bounded: above ``high_water`` units, producers wait in ``wait_for_room``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from app.store.faults import Faults
from app.store.ops import AppendEvent, Group, Op, Unit, ops_of
from protocol.codec import EncodedEvent

log = structlog.get_logger(__name__)

CommitListener = Callable[[list[EncodedEvent]], None]
ApplyBatch = Callable[[Sequence[Op]], Awaitable[None]]
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


class StoreUnavailable(Exception):
    """The store cannot take writes now (disk full, read-only, failing, or stalled)."""


class StoreRejected(Exception):
    """The database refused these writes for good; the conversation lost them."""


def is_permanent(exc: BaseException) -> bool:
    """Errors that retrying the same data cannot fix."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.InterfaceError | sqlite3.ProgrammingError):
        return True
    if isinstance(exc, sqlite3.DatabaseError | OSError | asyncio.TimeoutError):
        return False  # full, read-only, I/O error, locked, corrupt page: maybe not next time
    return isinstance(exc, ValueError | TypeError | KeyError | OverflowError)


class Writer:
    def __init__(
        self,
        apply: ApplyBatch,
        *,
        batch_max: int,
        high_water: int,
        low_water: int,
        stall_timeout: float,
        fail_timeout: float,
        faults: Faults,
        permanent: Callable[[BaseException], bool] = is_permanent,
    ) -> None:
        self._apply = apply
        # Which errors retrying cannot fix: each backend knows its driver's exceptions.
        self._permanent = permanent
        self.batch_max = batch_max
        self.high_water = high_water
        self.low_water = low_water
        self.stall_timeout = stall_timeout
        self.fail_timeout = fail_timeout
        self.faults = faults
        self._queue: list[Unit] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._enqueued = 0
        self._processed = 0
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.listeners: list[CommitListener] = []
        self.on_rejected: Callable[[set[str], BaseException], None] | None = None
        self.on_stalled: Callable[[StoreUnavailable], None] | None = None
        self.batch_observer: Callable[[int, float], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # Health: when the current run of failures began, and the last error seen.
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self._stall_reported = False
        self.rejected_units = 0

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="store-writer")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    async def stop(self, timeout: float) -> int:
        """Commit what is queued within ``timeout``, then stop; returns units left behind
        (never acknowledged to anyone, so losing them breaks no promise)."""
        if self._task is None:
            return 0
        started = time.monotonic()
        with contextlib.suppress(TimeoutError, StoreUnavailable):
            await self.flush(timeout)
        self._closing = True
        self._wake.set()
        left = len(self._queue)
        if left:
            self._task.cancel()
        try:
            async with asyncio.timeout(max(0.1, timeout - (time.monotonic() - started))):
                await asyncio.shield(self._task)
        except (asyncio.CancelledError, TimeoutError):
            self._task.cancel()
        self._task = None
        for _, fut in self._flush_waiters:
            if not fut.done():
                fut.set_exception(StoreUnavailable("the store closed"))
        self._fail_groups(self._queue, StoreUnavailable("the store closed"))
        self._queue.clear()
        return left

    # ---- producers ----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def healthy(self) -> bool:
        return self.failing_since is None

    def failing_for(self) -> float:
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    def enqueue(self, unit: Unit) -> None:
        if self._task is None or self._closing:
            raise StoreUnavailable("the store is not open")
        self._queue.append(unit)
        self._enqueued += 1
        if len(self._queue) >= self.high_water:
            self._room.clear()
        self._wake.set()

    @property
    def has_room(self) -> bool:
        return self._room.is_set()  # EventStore.has_room says why

    async def wait_for_room(self) -> None:
        if self._room.is_set():
            return
        try:
            async with asyncio.timeout(self.stall_timeout):
                await self._room.wait()
        except TimeoutError:
            raise StoreUnavailable(
                f"the store writer made no room within {self.stall_timeout}s"
            ) from None

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every unit queued before this call is committed or rejected."""
        target = self._enqueued
        if self._processed >= target:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append((target, fut))
        async with asyncio.timeout(timeout if timeout is not None else self.stall_timeout):
            await fut

    # ---- the loop -----------------------------------------------------------------------

    async def _loop(self) -> None:
        backoff = BACKOFF_FIRST
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._queue[: self.batch_max]
            started = time.perf_counter()
            try:
                self.faults.before_batch()
                await self._apply(ops_of(batch))
            except Exception as exc:
                if self._permanent(exc):
                    log.warning("store_batch_rejected_splitting", units=len(batch), error=str(exc))
                    if await self._commit_one_by_one(len(batch)):
                        backoff = BACKOFF_FIRST
                        continue
                else:
                    self._note_failure(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            backoff = BACKOFF_FIRST
            self._committed(len(batch), time.perf_counter() - started)

    def _committed(self, n: int, seconds: float) -> None:
        """The first ``n`` queued units are durable: release them, then publish."""
        units = self._queue[:n]
        del self._queue[:n]
        self._processed += n
        self._note_healthy()
        if self.batch_observer is not None:
            self.batch_observer(n, seconds)
        if len(self._queue) <= self.low_water:
            self._room.set()
        events = [op.event for op in ops_of(units) if type(op) is AppendEvent]
        if events:
            for listener in self.listeners:
                try:
                    listener(events)
                except Exception:
                    log.exception("commit_listener_failed")
        for unit in units:
            if type(unit) is Group and unit.committed is not None and not unit.committed.done():
                unit.committed.set_result(None)
        self._release_flush_waiters()

    async def _commit_one_by_one(self, n: int) -> bool:
        """Slow path after a permanent failure: each of the first ``n`` units alone.

        Returns True when all ``n`` were committed or rejected, False when a transient
        error stopped it (what is left stays queued and the loop retries later)."""
        for _ in range(n):
            unit = self._queue[0]
            started = time.perf_counter()
            try:
                await self._apply(ops_of([unit]))
            except Exception as exc:
                if not self._permanent(exc):
                    self._note_failure(exc)
                    return False
                self._reject(unit, exc)
                continue
            self._committed(1, time.perf_counter() - started)
        return True

    def _reject(self, unit: Unit, exc: BaseException) -> None:
        """Drop ``unit`` and every later unit of its conversation; tell the engine."""
        conversation = unit.conversation_id
        dropped = [unit]
        self._queue.pop(0)
        if conversation is not None:
            keep: list[Unit] = []
            for other in self._queue:
                (dropped if other.conversation_id == conversation else keep).append(other)
            self._queue = keep
        self.rejected_units += len(dropped)
        self._processed += len(dropped)
        log.error("store_units_rejected", conversation_id=conversation, units=len(dropped),
                  error=f"{type(exc).__name__}: {exc}")
        self._fail_groups(dropped, StoreRejected(str(exc)))
        if len(self._queue) <= self.low_water:
            self._room.set()
        self._release_flush_waiters()
        if conversation is not None and self.on_rejected is not None:
            self.on_rejected({conversation}, exc)

    @staticmethod
    def _fail_groups(units: list[Unit], exc: Exception) -> None:
        for unit in units:
            if type(unit) is Group and unit.committed is not None and not unit.committed.done():
                unit.committed.set_exception(exc)
                unit.committed.exception()  # retrieved: the waiter may have given up

    def _note_failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
            log.error("store_unavailable", error=f"{type(exc).__name__}: {exc}")
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not self._stall_reported and now - self.failing_since >= self.fail_timeout:
            self._stall_reported = True
            if self.on_stalled is not None:
                self.on_stalled(StoreUnavailable(f"the store is failing: {self.last_error}"))

    def _note_healthy(self) -> None:
        if self.failing_since is not None:
            log.info("store_recovered", after_seconds=round(self.failing_for(), 3))
        self.failing_since = None
        self._stall_reported = False

    def _release_flush_waiters(self) -> None:
        if not self._flush_waiters:
            return
        still = []
        for target, fut in self._flush_waiters:
            if self._processed >= target:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((target, fut))
        self._flush_waiters = still
