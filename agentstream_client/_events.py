"""Decoding envelopes into the ``protocol`` structs; unknown types pass through.

A newer server may send event types this client does not know. They arrive as
``UnknownEvent`` (envelope fields plus the raw ``data``), never as an exception, so an old
client keeps working. A *known* type whose payload does not decode is a ``ProtocolError``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agentstream_client._exceptions import ProtocolError
from protocol.codec import decode_event
from protocol.events import EVENT_TYPES, Event


class UnknownEvent(msgspec.Struct, kw_only=True):
    """An event of a type this client does not know (a newer server)."""

    seq: int
    type: str
    conversation_id: str
    run_id: str | None = None
    agent: str | None = None
    ts: int = 0
    item_id: str | None = None
    data: Any = None


StreamEvent = Event | UnknownEvent


class _Envelope(msgspec.Struct):
    seq: int
    type: str
    conversation_id: str
    run_id: str | None = None
    agent: str | None = None
    ts: int = 0
    item_id: str | None = None
    data: Any = None


_envelope = msgspec.json.Decoder(_Envelope)


def decode(raw: bytes | str) -> StreamEvent:
    """One envelope's JSON to its typed event."""
    try:
        return decode_event(raw)
    except msgspec.ValidationError as exc:
        first_error: Exception = exc
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"an event is not valid JSON: {exc}") from None
    try:
        env = _envelope.decode(raw)
    except msgspec.ValidationError:
        raise ProtocolError(f"not an event envelope: {first_error}") from None
    if env.type in EVENT_TYPES:
        raise ProtocolError(f"invalid {env.type} event: {first_error}")
    return UnknownEvent(seq=env.seq, type=env.type, conversation_id=env.conversation_id,
                        run_id=env.run_id, agent=env.agent, ts=env.ts, item_id=env.item_id,
                        data=env.data)


def event_type(event: StreamEvent) -> str:
    if isinstance(event, UnknownEvent):
        return event.type
    tag: str = event.__struct_config__.tag  # type: ignore[assignment]
    return tag


def stored_count(event: StreamEvent) -> int:
    """How many stored events a frame carries: a catching-up server may merge chunks of one
    item into one frame (``data.merged``, PROTOCOL-NOTES.md)."""
    data = getattr(event, "data", None)
    merged = getattr(data, "merged", 1)
    return merged if isinstance(merged, int) and merged > 1 else 1
