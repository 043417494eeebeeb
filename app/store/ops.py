"""The operations the store writer commits, each an immutable snapshot taken when queued.

A queued operation never refers to live, mutable state: a run row is encoded the moment it is
queued, so a batch always persists the state the engine had *at that point in the order*,
never a later one (a live record encoded at commit time could persist ``completed`` before
the ``done`` event exists). ``Group`` keeps operations that must land together (a run's
``done`` and its final row) in one transaction: the writer never cuts a batch inside one.
"""

from __future__ import annotations

import asyncio

import msgspec

from app.store.records import (
    AnswerToken,
    ConversationRecord,
    IdempotencyRecord,
    OutboxEntry,
    RunRecord,
    encode_record,
)
from protocol.codec import EncodedEvent


class AppendEvent(msgspec.Struct, frozen=True, gc=False):  # see EncodedEvent
    event: EncodedEvent
    ts: int

    @property
    def conversation_id(self) -> str:
        return self.event.conversation_id


class PutRun(msgspec.Struct, frozen=True):
    run_id: str
    conversation_id: str
    status: str
    body: bytes

    @classmethod
    def of(cls, record: RunRecord) -> PutRun:
        return cls(record.run_id, record.conversation_id, record.status, encode_record(record))


class PutConversation(msgspec.Struct, frozen=True):
    conversation_id: str
    owner: str | None
    created_at: int
    updated_at: int
    body: bytes

    @classmethod
    def of(cls, record: ConversationRecord) -> PutConversation:
        return cls(record.conversation_id, record.owner, record.created_at, record.updated_at,
                   encode_record(record))


class PutIdempotency(msgspec.Struct, frozen=True):
    """Remember an ``Idempotency-Key``: committed in the same group as the run's start, so a
    key never points at a run that was not stored (and a stored start always has its key).
    Deleted with its conversation (retention, ``DELETE``)."""

    record: IdempotencyRecord

    @property
    def conversation_id(self) -> str:
        return self.record.conversation_id


class PutOutbox(msgspec.Struct, frozen=True):
    """Queue a webhook delivery (and its answer token) in the event's own transaction, so a
    committed ``done`` / ``require_user_input`` always has its delivery: a restart loses
    none. Deleted with its conversation."""

    entry: OutboxEntry
    token: AnswerToken | None = None

    @property
    def conversation_id(self) -> str:
        return self.entry.conversation_id


class UpdateOutbox(msgspec.Struct, frozen=True):
    """A delivery attempt's outcome: delivered, failed for good, or retry at ``next_at``."""

    delivery_id: str
    status: str
    attempts: int
    next_at: int
    last_error: str | None = None

    @property
    def conversation_id(self) -> None:
        return None


class UseAnswerToken(msgspec.Struct):
    """Take a one-time answer token: deleted inside the transaction; ``used`` says whether
    this op was the one that took it (a second use finds nothing)."""

    token_hash: str
    used: bool = False

    @property
    def conversation_id(self) -> None:
        return None


class ExpireConversations(msgspec.Struct):
    """Drop the named conversations if, inside the transaction, they are still idle since
    before ``cutoff`` ms and have no unfinished run; the backend fills ``deleted``."""

    ids: list[str]
    cutoff: int
    deleted: list[str] = msgspec.field(default_factory=list)

    @property
    def conversation_id(self) -> None:
        return None


Op = (AppendEvent | PutRun | PutConversation | PutIdempotency | PutOutbox | UpdateOutbox
      | UseAnswerToken | ExpireConversations)


class Group:
    """Operations that commit in one transaction or not at all, in order.

    ``committed`` (if asked for) resolves when the group is durable, or fails with the
    store's error if the group was rejected: acknowledgements to clients wait on it.
    """

    __slots__ = ("committed", "conversation_id", "ops")

    def __init__(self, ops: list[Op], *, notify: bool = False) -> None:
        self.ops = ops
        self.conversation_id = next(
            (op.conversation_id for op in ops if op.conversation_id is not None), None
        )
        self.committed: asyncio.Future[None] | None = (
            asyncio.get_running_loop().create_future() if notify else None
        )


Unit = Op | Group
"""What the writer's queue holds: a batch is cut only between units."""


def ops_of(units: list[Unit]) -> list[Op]:
    out: list[Op] = []
    for unit in units:
        if type(unit) is Group:
            out.extend(unit.ops)
        else:
            out.append(unit)  # type: ignore[arg-type]
    return out
