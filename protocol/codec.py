"""Codecs: an event becomes its JSON bytes, SSE frame and WebSocket frame exactly once.

``EncodedEvent`` is what the engine fans out: the same object (and so the same bytes) goes
to every sink. Frames are built lazily and cached, so a transport nobody uses costs nothing.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from protocol.events import Event, EventBase

_encoder = msgspec.json.Encoder()
_event_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)

WS_EVENT_PREFIX = b'{"type":"event","event":'


def encode_event(event: EventBase) -> bytes:
    """The envelope's one-line JSON bytes (msgspec never emits a raw newline)."""
    return _encoder.encode(event)


def decode_event(raw: bytes | str) -> Event:
    """Parse an envelope; raises ``msgspec.ValidationError``/``DecodeError`` with its reason."""
    return _event_decoder.decode(raw)


def encode_json(obj: Any) -> bytes:
    return _encoder.encode(obj)


def sse_frame(seq: int, event_type: str, body: bytes) -> bytes:
    """One SSE frame: ``id``, ``event`` and the envelope as ``data``, ended by a blank line."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event_type.encode(), body)


def sse_comment(text: str) -> bytes:
    return b": " + text.encode() + b"\n\n"


def sse_retry(ms: int) -> bytes:
    return b"retry: %d\n\n" % ms


def ws_event_payload(body: bytes) -> bytes:
    """The text payload ``{"type":"event","event":<envelope>}`` around the same body bytes."""
    return WS_EVENT_PREFIX + body + b"}"


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed, final WebSocket text frame (server to client, RFC 6455 5.2).

    Pre-building frames lets a sink write many of them in one transport write.
    """
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


class EncodedEvent:
    """An event encoded once: its JSON body plus lazily built, cached transport frames."""

    __slots__ = ("_sse", "_ws", "body", "conversation_id", "item_id", "run_id", "seq", "type")

    def __init__(
        self,
        seq: int,
        type: str,
        conversation_id: str,
        run_id: str | None,
        body: bytes,
        item_id: str | None = None,
    ) -> None:
        self.seq = seq
        self.type = type
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.body = body
        self.item_id = item_id
        self._sse: bytes | None = None
        self._ws: bytes | None = None

    @classmethod
    def from_event(cls, event: EventBase) -> EncodedEvent:
        tag: str = event.__struct_config__.tag  # type: ignore[assignment]
        return cls(
            event.seq, tag, event.conversation_id, event.run_id, encode_event(event), event.item_id
        )

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = sse_frame(self.seq, self.type, self.body)
        return self._sse

    @property
    def ws(self) -> bytes:
        if self._ws is None:
            self._ws = ws_text_frame(ws_event_payload(self.body))
        return self._ws

    def __repr__(self) -> str:
        return f"EncodedEvent({self.conversation_id}#{self.seq} {self.type})"
