"""Fold consecutive chunk events of one item into one frame, for catching-up sinks.

Only ``message_chunk``, ``reasoning`` and ``tool_call_arguments`` merge, and only with
neighbours of the same type, run and item; the merged frame keeps the last chunk's seq (so
resume ids stay exact) and says in ``data.merged`` how many stored events it carries.
Control events pass untouched.
"""

from __future__ import annotations

import msgspec

from protocol.codec import EncodedEvent, decode_event
from protocol.events import MERGEABLE_TYPES, MessageChunk, Reasoning, ToolCallArguments


def _same_item(a: EncodedEvent, b: EncodedEvent) -> bool:
    return (
        a.type == b.type
        and a.type in MERGEABLE_TYPES
        and a.item_id is not None
        and a.item_id == b.item_id
        and a.run_id == b.run_id
    )


def _fold(group: list[EncodedEvent]) -> EncodedEvent:
    parsed = [decode_event(e.body) for e in group]
    last = parsed[-1]
    assert isinstance(last, MessageChunk | Reasoning | ToolCallArguments)
    count = 0
    parts: list[str] = []
    for ev in parsed:
        assert isinstance(ev, MessageChunk | Reasoning | ToolCallArguments)
        parts.append(ev.data.delta)
        count += ev.data.merged
    data = msgspec.structs.replace(last.data, delta="".join(parts), merged=count)
    key = group[-1].conversation_id  # the store key (app/ids.py), not the public id
    return EncodedEvent.from_event(msgspec.structs.replace(last, data=data), key)


def merge_chunks(events: list[EncodedEvent]) -> list[EncodedEvent]:
    out: list[EncodedEvent] = []
    i, n = 0, len(events)
    while i < n:
        j = i + 1
        while j < n and _same_item(events[i], events[j]):
            j += 1
        out.append(events[i] if j == i + 1 else _fold(events[i:j]))
        i = j
    return out
