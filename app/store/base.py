"""The EventStore interface: the source of truth behind the engine.

A store is two halves. Writes go through one shared ``Writer`` (writer.py: batching,
commit-then-publish, failure handling); a backend only implements ``_apply`` (one
transaction for a list of operations) and the reads. ``MemoryEventStore`` is the twin used
where no file is wanted; ``SqliteEventStore`` is the embedded default.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from app.store.faults import Faults
from app.store.ops import ExpireConversations, Group, Op, Unit
from app.store.records import (
    AnswerToken,
    ConversationQuery,
    ConversationRecord,
    IdempotencyRecord,
    OutboxEntry,
    RunRecord,
)
from app.store.writer import CommitListener, StoreUnavailable, Writer, is_permanent
from protocol.codec import EncodedEvent


class StoreLocked(Exception):
    """Another process holds this database: one process per database file."""


class EventStore(ABC):
    """Ordered, batched persistence of events, runs and conversations."""

    def __init__(
        self,
        *,
        batch_max: int = 2000,
        high_water: int = 20_000,
        low_water: int = 5_000,
        stall_timeout: float = 30.0,
        fail_timeout: float = 10.0,
        faults: Faults | None = None,
    ) -> None:
        self.writer = Writer(
            self._apply, batch_max=batch_max, high_water=high_water, low_water=low_water,
            stall_timeout=stall_timeout, fail_timeout=fail_timeout,
            faults=faults if faults is not None else Faults.from_env(),
            permanent=self.is_permanent,
        )

    def is_permanent(self, exc: BaseException) -> bool:
        """Whether retrying the same batch cannot help (the writer then isolates it)."""
        return is_permanent(exc)

    # ---- lifecycle ----------------------------------------------------------------------

    def take_lock(self) -> None:
        """Claim the database for this process (raise ``StoreLocked`` if another has it);
        ``open`` does it too. A store without a file has nothing to claim."""

    async def open(self) -> None:
        await self._open()
        self.writer.start()

    async def close(self, timeout: float = 30.0) -> int:
        """Commit what is queued (within ``timeout``), stop the writer, release the backend.
        Returns how many queued units could not be committed."""
        left = await self.writer.stop(timeout)
        await self._close()
        return left

    def add_commit_listener(self, listener: CommitListener) -> None:
        self.writer.listeners.append(listener)

    @property
    def batch_observer(self) -> Callable[[int, float], None] | None:
        return self.writer.batch_observer

    @batch_observer.setter
    def batch_observer(self, observer: Callable[[int, float], None] | None) -> None:
        self.writer.batch_observer = observer

    # ---- writing (see writer.py) --------------------------------------------------------

    @property
    def pending(self) -> int:
        return self.writer.pending

    @property
    def healthy(self) -> bool:
        return self.writer.healthy

    def enqueue(self, unit: Unit) -> None:
        self.writer.enqueue(unit)

    def has_room(self) -> bool:
        """Synchronous: False when ``wait_for_room`` would wait (producer backpressure).
        The per-event hot path (``RunWrites.emit``) checks this and awaits only when the
        writer's queue is above its high mark, saving two coroutines per event."""
        return self.writer.has_room

    async def wait_for_room(self) -> None:
        await self.writer.wait_for_room()

    async def flush(self, timeout: float | None = None) -> None:
        await self.writer.flush(timeout)

    def check_available(self) -> None:
        """Raise ``StoreUnavailable`` when new work should be refused."""
        if not self.writer.running:
            raise StoreUnavailable("the store is not open")
        if not self.writer.healthy:
            raise StoreUnavailable(f"the store cannot write: {self.writer.last_error}")

    async def expire_conversations(self, ids: list[str], cutoff: int) -> list[str]:
        """Delete these conversations (runs and events too) if, when the transaction runs,
        they are still idle since before ``cutoff`` ms with no unfinished run."""
        await self.wait_for_room()
        op = ExpireConversations(ids, cutoff)
        group = Group([op], notify=True)
        self.enqueue(group)
        assert group.committed is not None
        await group.committed
        return op.deleted

    async def ping(self) -> bool:
        """Readiness: the writer runs and its last batch committed."""
        return self.writer.running and self.writer.healthy

    # ---- backend ------------------------------------------------------------------------

    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _close(self) -> None: ...

    @abstractmethod
    async def _apply(self, ops: Sequence[Op]) -> None:
        """Apply the operations, in order, in one transaction (all or nothing)."""

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
        """Runs whose committed row is queued, running or waiting for input."""

    @abstractmethod
    async def run_events(self, run: RunRecord) -> tuple[int, EncodedEvent | None]:
        """How many committed events the run has, and its committed ``done`` if any."""

    async def _counted(self, run: RunRecord, count: int | None,
                       done_seq: int | None) -> tuple[int, EncodedEvent | None]:
        """``run_events`` from the SQL stores' one count query: read the ``done`` by seq."""
        if done_seq is None:
            return int(count or 0), None
        done = await self.read_events(run.conversation_id, done_seq - 1, 1)
        return int(count or 0), done[0] if done else None

    @abstractmethod
    async def expirable(self, cutoff: int, limit: int) -> list[str]:
        """Conversations idle since before ``cutoff`` with no unfinished run (candidates)."""

    @abstractmethod
    async def is_expired(self, ident: str) -> bool:
        """True if a conversation or run of this id was removed by retention."""

    @abstractmethod
    async def list_conversations(self, query: ConversationQuery) -> list[ConversationRecord]:
        """A page of conversations, newest created first (see ``ConversationQuery``)."""

    @abstractmethod
    async def list_runs(
        self, conversation_id: str, after_first_seq: int, limit: int
    ) -> list[RunRecord]:
        """The conversation's runs with ``first_seq > after_first_seq``, in start order."""

    @abstractmethod
    async def get_idempotency(self, scope: str, key: str) -> IdempotencyRecord | None:
        """The committed start that took this key in this scope, if any."""

    @abstractmethod
    async def due_outbox(self, now: int, limit: int) -> list[OutboxEntry]:
        """Pending webhook deliveries with ``next_at <= now``, oldest due first."""

    @abstractmethod
    async def get_outbox(self, delivery_id: str) -> OutboxEntry | None: ...

    @abstractmethod
    async def get_answer_token(self, token_hash: str) -> AnswerToken | None: ...

    async def apply_now(self, op: Op) -> None:
        """Queue one operation and wait for its commit (bookkeeping outside any run)."""
        group = Group([op], notify=True)
        self.enqueue(group)
        assert group.committed is not None
        await group.committed


__all__ = ["EventStore", "StoreLocked", "StoreUnavailable"]
