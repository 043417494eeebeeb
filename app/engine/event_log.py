"""Numbering: an event gets its conversation ``seq`` only once it is sure to be stored.

The event is encoded with the next seq *before* the counter moves: a payload msgspec cannot
encode raises ``InvalidEvent`` and leaves no gap. Numbering is synchronous, so seq order is
queue order is commit order.
"""

from __future__ import annotations

import msgspec

from app.clock import now_ms
from app.engine.state import Conversation
from app.store.ops import AppendEvent
from protocol.codec import EncodedEvent
from protocol.events import EventBase


class InvalidEvent(Exception):
    """An agent's payload cannot be encoded; no seq was taken for it."""


class BrokenConversation(Exception):
    """The store rejected this conversation's writes; it must be reloaded first."""


def number_event(
    conv: Conversation,
    cls: type[EventBase],
    data: msgspec.Struct,
    run_id: str | None,
    agent: str | None,
    item_id: str | None = None,
    thread_id: str | None = None,
    task_id: str | None = None,
) -> AppendEvent:
    """Build, encode (once) and number one event; the caller queues the returned op at once."""
    if conv.broken or conv.follower:
        raise BrokenConversation(conv.record.conversation_id)
    ts = now_ms()
    event = cls(  # type: ignore[call-arg]
        seq=conv.seq + 1,
        conversation_id=conv.public_id,
        run_id=run_id,
        agent=agent,
        ts=ts,
        item_id=item_id,
        thread_id=thread_id,
        task_id=task_id,
        data=data,
    )
    try:
        encoded = EncodedEvent.from_event(event, conv.record.conversation_id)
    except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
        raise InvalidEvent(f"{type(exc).__name__}: {exc}") from None
    conv.seq += 1
    return AppendEvent(encoded, ts)
