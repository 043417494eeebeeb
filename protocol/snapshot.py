"""Snapshot on join: a conversation's (or run's) stored events folded to one event per item.

Pure (no I/O): ``SnapshotBuilder`` is fed stored events in seq order and ``events()`` returns
what a joining client is sent before the live stream, in seq order:

- a **completed** message, reasoning block or tool call is its completion event alone
  (``message``, ``reasoning_completed`` with the full ``text``, ``tool_call_completed``);
- an **open** one is its opening event (``reasoning_started`` / ``tool_call_started``; a
  message has none) plus one merged delta (``message_chunk`` / ``reasoning`` /
  ``tool_call_arguments``) holding everything so far, with ``merged`` = how many stored
  deltas it folds and the seq of the last of them;
- every other event (lifecycle, questions and answers, notices, components, tasks) and any
  event without an ``item_id`` passes unchanged.

Every output event keeps a stored seq and the last output event is the last event fed, so a
client resuming with ``Last-Event-ID`` after a snapshot continues exactly where it ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from protocol.codec import EncodedEvent, decode_event
from protocol.events import ReasoningCompleted

# delta type -> (opening type or None, completion type)
ITEM_KINDS: dict[str, tuple[str | None, str]] = {
    "message_chunk": (None, "message"),
    "reasoning": ("reasoning_started", "reasoning_completed"),
    "tool_call_arguments": ("tool_call_started", "tool_call_completed"),
}
_OPENING = {opening: delta for delta, (opening, _) in ITEM_KINDS.items() if opening}
_COMPLETION = {done: delta for delta, (_, done) in ITEM_KINDS.items()}


@dataclass
class _Item:
    kind: str  # the delta type
    opening: EncodedEvent | None = None
    deltas: list[EncodedEvent] = field(default_factory=list)


class SnapshotBuilder:
    def __init__(self) -> None:
        self._out: list[EncodedEvent] = []
        self._open: dict[tuple[str | None, str], _Item] = {}
        self.last_seq = 0

    def feed(self, ev: EncodedEvent) -> None:
        self.last_seq = ev.seq
        if ev.item_id is None:
            self._out.append(ev)
            return
        key = (ev.run_id, ev.item_id)
        if ev.type in _OPENING:
            self._open[key] = _Item(_OPENING[ev.type], opening=ev)
        elif ev.type in ITEM_KINDS:
            self._open.setdefault(key, _Item(ev.type)).deltas.append(ev)
        elif ev.type in _COMPLETION:
            item = self._open.pop(key, None)
            self._out.append(self._completed(ev, item))
        else:
            self._out.append(ev)

    @staticmethod
    def _completed(ev: EncodedEvent, item: _Item | None) -> EncodedEvent:
        """A completion event; a ``reasoning_completed`` without text gets its deltas'."""
        if ev.type != "reasoning_completed" or item is None or not item.deltas:
            return ev
        event = decode_event(ev.body)
        assert isinstance(event, ReasoningCompleted)
        if event.data.text is not None:
            return ev
        text = "".join(_delta(d) for d in item.deltas)
        return EncodedEvent.from_event(msgspec.structs.replace(
            event, data=msgspec.structs.replace(event.data, text=text)))

    def events(self) -> list[EncodedEvent]:
        """Everything fed so far, folded, in seq order."""
        out = list(self._out)
        for item in self._open.values():
            if item.opening is not None:
                out.append(item.opening)
            if item.deltas:
                out.append(merge_deltas(item.deltas))
        out.sort(key=lambda e: e.seq)
        return out


def _delta(ev: EncodedEvent) -> str:
    data = decode_event(ev.body).data
    return str(getattr(data, "delta", ""))


def merge_deltas(deltas: list[EncodedEvent]) -> EncodedEvent:
    """Deltas of one item as one event: the last one's envelope, the joined text, and
    ``merged`` = the stored deltas it carries."""
    if len(deltas) == 1:
        return deltas[0]
    parsed = [decode_event(d.body) for d in deltas]
    last = parsed[-1]
    text = "".join(getattr(p.data, "delta", "") for p in parsed)
    count = sum(int(getattr(p.data, "merged", 1)) for p in parsed)
    data = msgspec.structs.replace(last.data, delta=text, merged=count)
    return EncodedEvent.from_event(msgspec.structs.replace(last, data=data))


def snapshot(events: list[EncodedEvent]) -> list[EncodedEvent]:
    builder = SnapshotBuilder()
    for ev in events:
        builder.feed(ev)
    return builder.events()
