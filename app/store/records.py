"""The durable shapes of runs and conversations (what the store keeps beside the events)."""

from __future__ import annotations

from typing import Any

import msgspec

from protocol.messages import ErrorDetail, PendingInput

UNFINISHED = ("queued", "running", "waiting_input")


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
    # Where this run's webhooks go (else the deployment's ``--webhook-url``, if any).
    webhook_url: str | None = None


class ConversationRecord(msgspec.Struct, omit_defaults=True):
    conversation_id: str
    created_at: int
    updated_at: int
    owner: str | None = None
    metadata: dict[str, Any] | None = None


class ConversationQuery(msgspec.Struct, frozen=True):
    """One page of ``GET /v1/conversations``: newest created first, keyset-paginated.

    A conversation matches ``agent`` / ``metadata`` when one of its runs does, and
    ``status`` when its latest run (by first seq) has that status."""

    owner: str | None  # None: every owner (a server without auth)
    limit: int
    # Keyset: only conversations strictly older than (created_at, id).
    before: tuple[int, str] | None = None
    agent: str | None = None
    status: str | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class IdempotencyRecord(msgspec.Struct, frozen=True):
    """An ``Idempotency-Key`` taken by a start: the key's owner scope, the request's
    fingerprint (to refuse a reused key with a different body) and the run it made."""

    scope: str
    key: str
    fingerprint: str
    run_id: str
    conversation_id: str
    created_at: int


class OutboxEntry(msgspec.Struct, frozen=True):
    """One webhook delivery: committed with the event it reports, sent until a 2xx (or
    ``max_attempts``). ``delivery_id`` is stable (``<run_id>.<seq>``), so a redelivery after a
    crash between the POST and its bookkeeping carries the same id."""

    delivery_id: str
    conversation_id: str
    url: str
    body: bytes
    created_at: int
    next_at: int
    attempts: int = 0
    status: str = "pending"  # pending | delivered | failed
    last_error: str | None = None


class AnswerToken(msgspec.Struct, frozen=True):
    """A one-time capability to answer one question (the webhook's answer link); only its
    SHA-256 is stored."""

    token_hash: str
    run_id: str
    request_id: str
    conversation_id: str
    expires_at: int


_encoder = msgspec.json.Encoder()
_run_decoder = msgspec.json.Decoder(RunRecord)
_conversation_decoder = msgspec.json.Decoder(ConversationRecord)


def encode_record(record: RunRecord | ConversationRecord) -> bytes:
    return _encoder.encode(record)


def decode_run(raw: bytes) -> RunRecord:
    return _run_decoder.decode(raw)


def decode_conversation(raw: bytes) -> ConversationRecord:
    return _conversation_decoder.decode(raw)
