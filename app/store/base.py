"""The EventStore interface and the batching writer every implementation shares.

The store is the source of truth. Writes are ordered operations (event appends, run and
conversation upserts) queued in memory and committed in batches by one writer task: one
transaction per tick or per ``batch_max`` operations, never one statement per event. Only
after a batch is committed are its events handed to the commit listener (the hub), so no
client ever sees an event a crash could take back, and a ``seq`` is never reused.

The queue is bounded: above ``high_water`` pending operations, producers wait in
``wait_for_room`` until the writer has brought it under ``low_water``.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import structlog

from protocol.codec import EncodedEvent
from protocol.messages import ErrorDetail, PendingInput

log = structlog.get_logger(__name__)


class StoreUnavailable(Exception):
    """The writer could not make room in time (disk stalled or failing)."""


class RunRecord(msgspec.Struct, omit_defaults=True):
    run_id: str
    conversation_id: str
    agent: str
    status: str
    created_at: int
    input: Any = None
    on_disconnect: str = "continue"
    metadata: dict[str, Any] | None = None
    owner: str | None = None
    first_seq: int = 0
    started_at: int | None = None
    ended_at: int | None = None
    events: int = 0
    done_seq: int | None = None
    error: ErrorDetail | None = None
    pending_input: PendingInput | None = None
    # Request ids already answered, so a late answer is told so even after the run ended.
    answered: list[str] = msgspec.field(default_factory=list)


class ConversationRecord(msgspec.Struct, omit_defaults=True):
    conversation_id: str
    created_at: int
    updated_at: int
    owner: str | None = None
    metadata: dict[str, Any] | None = None


class AppendEvent(msgspec.Struct):
    event: EncodedEvent
    ts: int


class PutRun(msgspec.Struct):
    run: RunRecord


class PutConversation(msgspec.Struct):
    conversation: ConversationRecord


class ExpireConversations(msgspec.Struct):
    """Drop conversations idle since before ``cutoff`` ms that have no unfinished run.

    Runs inside a writer batch so it is ordered with every other write; the backend fills
    ``deleted`` with the ids it removed."""

    cutoff: int
    deleted: list[str] = msgspec.field(default_factory=list)


Op = AppendEvent | PutRun | PutConversation | ExpireConversations
CommitListener = Callable[[list[EncodedEvent]], None]


def now_ms() -> int:
    return int(time.time() * 1000)


class EventStore(ABC):
    """Ordered, batched persistence of events, runs and conversations."""

    def __init__(
        self,
        *,
        batch_max: int = 2000,
        high_water: int = 20_000,
        low_water: int = 5_000,
        stall_timeout: float = 30.0,
    ) -> None:
        self.batch_max = batch_max
        self.high_water = high_water
        self.low_water = low_water
        self.stall_timeout = stall_timeout
        self._queue: list[Op] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._enqueued = 0
        self._committed = 0
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._listeners: list[CommitListener] = []
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.healthy = True
        # Observed by metrics: (ops in last batch, seconds it took)
        self.batch_observer: Callable[[int, float], None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        await self._open()
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Commit everything queued, stop the writer, release the backend."""
        if self._writer is None:
            return
        await self.flush()
        self._closing = True
        self._wake.set()
        await self._writer
        self._writer = None
        await self._close()

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    # ---- writing ------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def wait_for_room(self) -> None:
        """Backpressure for producers: wait while the queue is above its high-water mark."""
        if self._room.is_set():
            return
        try:
            async with asyncio.timeout(self.stall_timeout):
                await self._room.wait()
        except TimeoutError:
            raise StoreUnavailable(
                f"store writer made no room within {self.stall_timeout}s"
            ) from None

    def enqueue(self, op: Op) -> None:
        """Queue one operation; ordering across all operations is kept."""
        if self._writer is None or self._closing:
            raise StoreUnavailable("store is not open")
        self._queue.append(op)
        self._enqueued += 1
        if len(self._queue) >= self.high_water:
            self._room.clear()
        self._wake.set()

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every operation queued before this call is committed."""
        target = self._enqueued
        if self._committed >= target:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append((target, fut))
        async with asyncio.timeout(timeout if timeout is not None else self.stall_timeout):
            await fut

    async def _write_loop(self) -> None:
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
                await self._write_batch(batch)
            except Exception:
                # Keep the batch queued and retry: losing acknowledged writes is not an option.
                self.healthy = False
                log.exception("store_batch_failed", ops=len(batch))
                await asyncio.sleep(0.5)
                continue
            self.healthy = True
            del self._queue[: len(batch)]
            self._committed += len(batch)
            if self.batch_observer is not None:
                self.batch_observer(len(batch), time.perf_counter() - started)
            if len(self._queue) <= self.low_water:
                self._room.set()
            events = [op.event for op in batch if type(op) is AppendEvent]
            if events:
                for listener in self._listeners:
                    try:
                        listener(events)
                    except Exception:
                        log.exception("commit_listener_failed")
            self._release_flush_waiters()

    def _release_flush_waiters(self) -> None:
        if not self._flush_waiters:
            return
        still = []
        for target, fut in self._flush_waiters:
            if self._committed >= target:
                if not fut.done():
                    fut.set_result(None)
            else:
                still.append((target, fut))
        self._flush_waiters = still

    # ---- backend ------------------------------------------------------------------------

    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _write_batch(self, ops: Sequence[Op]) -> None:
        """Apply the operations, in order, in one transaction."""

    @abstractmethod
    async def read_events(
        self,
        conversation_id: str,
        after: int,
        limit: int,
        run_id: str | None = None,
        until: int | None = None,
    ) -> list[EncodedEvent]:
        """Committed events with ``after < seq [<= until]``, optionally of one run, by seq."""

    @abstractmethod
    async def last_seq(self, conversation_id: str) -> int:
        """Highest committed seq of the conversation, 0 if it has none."""

    @abstractmethod
    async def get_run(self, run_id: str) -> RunRecord | None: ...

    @abstractmethod
    async def get_conversation(self, conversation_id: str) -> ConversationRecord | None: ...

    @abstractmethod
    async def unfinished_runs(self) -> list[RunRecord]:
        """Runs a previous process left queued, running or waiting for input."""

    @abstractmethod
    async def count_run_events(self, run: RunRecord) -> int: ...

    @abstractmethod
    async def is_expired(self, ident: str) -> bool:
        """True if a conversation or run of this id was removed by retention."""

    async def expire_conversations(self, cutoff: int) -> list[str]:
        """Drop conversations (runs and events too) idle since before ``cutoff`` ms and with
        no unfinished run; returns their ids."""
        await self.wait_for_room()
        op = ExpireConversations(cutoff)
        self.enqueue(op)
        await self.flush()
        return op.deleted

    async def ping(self) -> bool:
        """Readiness: the backend answers and the writer is not failing."""
        return self._writer is not None and not self._writer.done() and self.healthy


UNFINISHED = ("queued", "running", "waiting_input")
