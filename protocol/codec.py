"""Codecs: an event becomes its JSON bytes, SSE frame and WebSocket frame exactly once.

``EncodedEvent`` is what the engine fans out: the same object (and so the same bytes) goes
to every sink. Frames are built lazily and cached, so a transport nobody uses costs nothing.
"""

from __future__ import annotations

import struct
import threading
import zlib
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
    """A comment line with no blank line after it: a blank line would end an empty event,
    which parsers that keep the last id between events (httpx-sse) dispatch as a phantom
    event. Comments are ignored wherever they fall, so the next frame's blank line ends it."""
    return b": " + text.encode() + b"\n"


def sse_retry(ms: int) -> bytes:
    """The ``retry:`` field without a blank line of its own: EventSource applies it when the
    line is parsed, and it joins the next event's frame instead of making an empty one."""
    return b"retry: %d\n" % ms


def ws_event_payload(body: bytes) -> bytes:
    """The text payload ``{"type":"event","event":<envelope>}`` around the same body bytes."""
    return WS_EVENT_PREFIX + body + b"}"


def ws_text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed, final WebSocket text frame (server to client, RFC 6455 5.2).

    Pre-building frames lets a sink write many of them in one transport write.
    """
    return ws_frame(payload, 0x81)


# RFC 7692 7.2.1: a message compressed with a sync (or full) flush ends with these four
# bytes, which the sender removes and the receiver appends back before inflating.
DEFLATE_TAIL = b"\x00\x00\xff\xff"
# The LZ77 window our frames assume (``server_max_window_bits``): with a full flush per
# message no back-reference reaches past the message itself, see ``ws_deflate_frame``.
DEFLATE_WINDOW_BITS = 15
_deflaters = threading.local()


def _deflater() -> Any:
    """This thread's raw-deflate compressor, kept across messages: ``Z_FULL_FLUSH`` after
    each message resets its history, so reusing it costs no ``deflateInit`` per frame and
    still makes every message independent. Per thread: a ``compress`` and its ``flush``
    must not interleave with another thread's."""
    found = getattr(_deflaters, "c", None)
    if found is None:
        found = _deflaters.c = zlib.compressobj(
            zlib.Z_BEST_SPEED, zlib.DEFLATED, -DEFLATE_WINDOW_BITS)
    return found


def ws_deflate_payload(payload: bytes) -> bytes:
    """``payload`` as one permessage-deflate message body (RFC 7692 7.2.1), compressed
    alone: no context takeover, so the same bytes are valid on every socket that
    negotiated the extension, whatever its takeover parameters."""
    c = _deflater()
    out: bytes = c.compress(payload) + c.flush(zlib.Z_FULL_FLUSH)
    return out[:-4] if out.endswith(DEFLATE_TAIL) else out


def ws_frame(payload: bytes, first_byte: int) -> bytes:
    """An unmasked, final frame with the given first byte (FIN, RSV bits, opcode)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first_byte, n)
    elif n < 65536:
        header = struct.pack("!BBH", first_byte, 126, n)
    else:
        header = struct.pack("!BBQ", first_byte, 127, n)
    return header + payload


def ws_deflate_frame(payload: bytes) -> bytes:
    """A compressed text frame (FIN, RSV1, text: ``0xC1``), or the plain frame when
    compressing does not make it smaller: RFC 7692 lets each message choose (RSV1 unset
    means uncompressed), so tiny events are not inflated by the deflate overhead."""
    deflated = ws_deflate_payload(payload)
    if len(deflated) >= len(payload):
        return ws_text_frame(payload)
    return ws_frame(deflated, 0xC1)


def ws_deflate_batch(payloads: list[bytes]) -> bytes:
    """Consecutive messages as one deflate stream, each ended by a sync flush: every message
    may refer back to the ones before it in the batch (context takeover), which is where the
    ratio of repeated keys and ids comes from. A fresh compressor: nothing before the first
    message is referred to, so the batch is valid whatever the peer received earlier.

    Valid only for a peer that keeps its inflate context between messages (it did not
    negotiate ``server_no_context_takeover``) and gets these frames back to back (one
    transport write; plain frames between batches do not matter, they never enter the
    window). Every message is compressed, even one that does not shrink: a plain frame
    would leave the peer's window behind the compressor's."""
    c = zlib.compressobj(zlib.Z_BEST_SPEED, zlib.DEFLATED, -DEFLATE_WINDOW_BITS)
    frames = []
    for payload in payloads:
        out: bytes = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
        frames.append(ws_frame(out[:-4] if out.endswith(DEFLATE_TAIL) else out, 0xC1))
    return b"".join(frames)


class EncodedEvent(msgspec.Struct, gc=False):
    """An event encoded once: its JSON body plus lazily built, cached transport frames.

    ``gc=False``: the replay cache and the store's queue hold tens of thousands of these;
    as ordinary objects every full collection walked them all (20-70 ms pauses of the event
    loop under a fast run, the tail of scripts/fairness.py). They hold only bytes, str and
    int, so they can never be part of a reference cycle and need no tracking.
    """

    seq: int
    type: str
    conversation_id: str
    run_id: str | None
    body: bytes
    item_id: str | None = None
    _sse: bytes | None = None
    _ws: bytes | None = None
    _wsd: bytes | None = None

    @classmethod
    def from_event(cls, event: EventBase, key: str | None = None) -> EncodedEvent:
        """``key``: where the event is stored and routed, when that differs from the id
        the wire shows (the service scopes conversation ids per owner)."""
        tag: str = event.__struct_config__.tag  # type: ignore[assignment]
        return cls(
            event.seq, tag, key or event.conversation_id, event.run_id, encode_event(event),
            event.item_id,
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

    @property
    def ws_deflate(self) -> bytes:
        """The event's permessage-deflate frame, compressed once and shared by every socket
        that negotiated the extension (built only if one did)."""
        if self._wsd is None:
            self._wsd = ws_deflate_frame(ws_event_payload(self.body))
        return self._wsd

    def __repr__(self) -> str:
        return f"EncodedEvent({self.conversation_id}#{self.seq} {self.type})"
