"""A bare WebSocket client over an asyncio stream, for tests that must control reading.

Library clients read in the background; these tests need a peer that stops reading (so the
server's buffers back up) and later reads again, or never reads at all.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any


class RawWs:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, rcvbuf: int | None = None,
                      sndbuf: int | None = None, path: str = "/v1/ws") -> RawWs:
        sock = socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sndbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((
            f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    @staticmethod
    def frame(payload: bytes, opcode: int = 0x1) -> bytes:
        """A masked client frame (RFC 6455 5.2)."""
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return head + mask + masked

    def send(self, **msg: Any) -> None:
        self.writer.write(self.frame(json.dumps(msg).encode()))

    async def recv_frame(self, timeout: float = 10) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def recv(self, timeout: float = 10) -> dict[str, Any]:
        """The next JSON text frame (server pings are answered)."""
        while True:
            opcode, payload = await self.recv_frame(timeout)
            if opcode == 0x1:
                return dict(json.loads(payload))
            if opcode == 0x9:
                self.writer.write(self.frame(payload, opcode=0xA))
            if opcode == 0x8:
                raise ConnectionError(f"closed {payload[:2].hex()} {payload[2:]!r}")

    def close(self) -> None:
        self.writer.transport.abort()
