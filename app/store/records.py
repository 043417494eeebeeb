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


class ConversationRecord(msgspec.Struct, omit_defaults=True):
    conversation_id: str
    created_at: int
    updated_at: int
    owner: str | None = None
    metadata: dict[str, Any] | None = None


_encoder = msgspec.json.Encoder()
_run_decoder = msgspec.json.Decoder(RunRecord)
_conversation_decoder = msgspec.json.Decoder(ConversationRecord)


def encode_record(record: RunRecord | ConversationRecord) -> bytes:
    return _encoder.encode(record)


def decode_run(raw: bytes) -> RunRecord:
    return _run_decoder.decode(raw)


def decode_conversation(raw: bytes) -> ConversationRecord:
    return _conversation_decoder.decode(raw)
