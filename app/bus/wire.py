"""What travels on the bus, as MessagePack (compact, and bodies stay raw bytes).

An events message carries the already-encoded event bodies: a receiving node builds its
frames from the same bytes the owner stored, without re-encoding anything.
"""

from __future__ import annotations

import msgspec

from protocol.codec import EncodedEvent

# (conversation_id, seq, type, run_id, item_id, body)
Row = tuple[str, int, str, str | None, str | None, bytes]


class EventsMessage(msgspec.Struct, array_like=True):
    node: str
    rows: list[Row]


class Envelope(msgspec.Struct, array_like=True):
    """A command (``reply`` names the asking node) or its answer (``reply`` is None)."""

    id: str
    reply: str | None
    body: bytes


_events = msgspec.msgpack.Decoder(EventsMessage)
_envelope = msgspec.msgpack.Decoder(Envelope)
_encoder = msgspec.msgpack.Encoder()


def encode_events(node: str, events: list[EncodedEvent]) -> bytes:
    return _encoder.encode(EventsMessage(node, [
        (e.conversation_id, e.seq, e.type, e.run_id, e.item_id, e.body) for e in events]))


def decode_events(raw: bytes) -> tuple[str, list[EncodedEvent]]:
    msg = _events.decode(raw)
    return msg.node, [EncodedEvent(seq, typ, cid, rid, body, item)
                      for cid, seq, typ, rid, item, body in msg.rows]


def encode_envelope(env: Envelope) -> bytes:
    return _encoder.encode(env)


def decode_envelope(raw: bytes) -> Envelope:
    return _envelope.decode(raw)
