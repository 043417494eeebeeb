"""A bare WebSocket client that sees frame bits: which frames had RSV1 (compressed), what the
handshake negotiated, and that can send a deflate bomb. Library clients hide all three."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import zlib
from typing import Any

TAIL = b"\x00\x00\xff\xff"


def inflate(payload: bytes) -> bytes:
    """One message with a fresh decompressor: proves it was compressed on its own."""
    d = zlib.decompressobj(-15)
    return d.decompress(payload + TAIL)


def deflate(payload: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


class Frame:
    """One frame; ``text`` is its message inflated the way the handshake said: with the
    connection's kept decompressor, or (``server_no_context_takeover``) a fresh one."""

    __slots__ = ("opcode", "payload", "rsv1", "text")

    def __init__(self, opcode: int, rsv1: bool, payload: bytes, text: bytes) -> None:
        self.opcode = opcode
        self.rsv1 = rsv1
        self.payload = payload
        self.text = text

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.text))


class DeflateClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 extensions: str | None) -> None:
        self.reader = reader
        self.writer = writer
        self.extensions = extensions  # the server's Sec-WebSocket-Extensions, if any
        self.no_takeover = extensions is not None and "server_no_context_takeover" in extensions
        self.inflater = zlib.decompressobj(-15)  # kept across messages (context takeover)

    @classmethod
    async def connect(cls, host: str, port: int, offer: str | None) -> DeflateClient:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        ext = f"Sec-WebSocket-Extensions: {offer}\r\n" if offer else ""
        writer.write((
            "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        found = None
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                found = value.strip()
        return cls(reader, writer, found)

    def send_frame(self, payload: bytes, first_byte: int = 0x81) -> None:
        """A masked client frame; ``first_byte`` 0xC1 for a compressed text message."""
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", first_byte, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", first_byte, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", first_byte, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    def send(self, compressed: bool = False, **msg: Any) -> None:
        raw = json.dumps(msg).encode()
        if compressed:
            self.send_frame(deflate(raw), 0xC1)
        else:
            self.send_frame(raw)

    async def recv_frame(self, timeout: float = 10) -> Frame:
        """The next frame; pings are answered (and returned, so tests can see them)."""
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(n)
        assert b0 & 0x80, "fragmented frames are not expected from this server"
        text = payload
        if b0 & 0x40:
            text = (inflate(payload) if self.no_takeover
                    else self.inflater.decompress(payload + TAIL))
        frame = Frame(b0 & 0x0F, bool(b0 & 0x40), payload, text)
        if frame.opcode == 0x9:
            self.send_frame(frame.payload, 0x8A)
        return frame

    async def messages_until_done(self, run_id: str) -> tuple[list[Frame], list[dict[str, Any]]]:
        """Text frames up to this run's ``done`` event: the frames, and the events."""
        frames: list[Frame] = []
        events: list[dict[str, Any]] = []
        while True:
            frame = await self.recv_frame()
            assert frame.opcode != 0x8, frame.payload
            if frame.opcode != 0x1:
                continue
            frames.append(frame)
            msg = frame.json()
            if msg["type"] == "event":
                events.append(msg["event"])
                if msg["event"]["type"] == "done" and msg["event"]["run_id"] == run_id:
                    return frames, events

    def close(self) -> None:
        self.writer.transport.abort()
